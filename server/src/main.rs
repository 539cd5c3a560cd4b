//! The `kefu` binary: parses the command line and hands off to [`server::cli::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    match server::config::load(&server::config::location(&raw)) {
        Ok(settings) => server::config::apply(&settings),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    let args = server::cli::Cli::parse();
    match server::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
