//! The `kefu` application: command line, model catalog and fetching. `main.rs` only parses
//! arguments and calls [`cli::run`].

pub mod access;
pub mod admin;
pub mod answer;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod evaluate;
pub mod export;
pub mod fetch;
pub mod gate;
pub mod generator;
pub mod http;
pub mod ingest;
pub mod knowledge;
pub mod pages;
pub mod registry;
pub mod testing;
pub mod train;
pub mod worker;
