//! The `kefu` binary: [`server::main`] applies the configuration file, parses the command line
//! and runs the command.

fn main() -> std::process::ExitCode {
    server::main()
}
