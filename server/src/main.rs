//! The `kefu` binary: parses the command line and hands off to [`server::cli::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Arguments that are not UTF-8 are clap's to refuse with a clear message; here they only
    // need to be looked through for `--home`.
    let raw: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
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
