//! `kefu serve` end to end over HTTP: the real binary on port 0 with the real default models,
//! on SQLite and on PostgreSQL. A Debian FAQ question is answered with streamed tokens and a
//! citation of the right chapter, the answer is stored with what it was served, feedback is
//! recorded, the OpenAI-compatible API answers (stream and not), and every bad input gets a
//! 4xx with a JSON `code` while nothing stored changes.

mod abstention;
mod access;
mod alongside;
mod answers;
mod corrections;
mod faults;
mod hardening;
mod jobs;
mod live;
mod proxy;
mod sites;
mod support;
mod swap;
mod trust;
