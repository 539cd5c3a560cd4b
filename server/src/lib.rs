//! The `kefu` application: the command line (`cli`), the HTTP API (`http`), models by name
//! (`models`), the knowledge base at run time (`knowledge`, `ingest`, `evaluate`), generation
//! (`generator`) and its hot-swap (`serving`), and the embedded training worker
//! (`supervise`). `main.rs` only parses arguments and calls [`cli::run`]. The training loop
//! itself lives in the `trainer` crate.

pub mod auth;
pub mod cli;
pub mod config;
pub mod evaluate;
pub mod generator;
pub mod http;
pub mod ingest;
pub mod knowledge;
pub mod logging;
pub mod models;
pub mod serving;
pub mod supervise;
pub mod testing;
