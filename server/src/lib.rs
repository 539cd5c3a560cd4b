//! The `kefu` application: the command line (`cli`), the HTTP API (`http`), models by name
//! (`models`), the knowledge base at run time (`knowledge`, `ingest`, `evaluate`), generation
//! (`generator`) and its hot-swap (`serving`), and the embedded training worker
//! (`supervise`). `main.rs` only parses arguments and calls [`cli::run`]. The training loop
//! itself lives in the `trainer` crate.

pub mod answering;
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
pub mod time;

/// The `kefu` program: applies the configuration file, parses the command line and runs the
/// command; a failure is printed as `error: …` with exit status 1. The `kefu` binary (and the
/// end-to-end tests' copy of it) is this function.
pub fn main() -> std::process::ExitCode {
    // Arguments that are not UTF-8 are clap's to refuse with a clear message; here they only
    // need to be looked through for `--home`.
    let raw: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match crate::config::load(&crate::config::location(&raw)) {
        Ok(settings) => crate::config::apply(&settings),
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let args = <crate::cli::Cli as clap::Parser>::parse();
    match crate::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
