//! The `kefu` application: command line, model catalog and fetching. `main.rs` only parses
//! arguments and calls [`cli::run`].

pub mod catalog;
pub mod cli;
pub mod fetch;
pub mod ingest;
pub mod testing;
