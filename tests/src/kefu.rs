//! The `kefu` program built inside the end-to-end tests' package, so that cargo builds it (with
//! the workspace's features, fresh) before the tests run: the same one line as
//! `server/src/main.rs`.

fn main() -> std::process::ExitCode {
    server::main()
}
