//! The `walflow` program built inside the test crate, so integration tests can run it as a child
//! process via `CARGO_BIN_EXE_walflow-under-test` (and kill it with SIGKILL) without a separate build step.

fn main() -> std::process::ExitCode {
    walflow::cli::main()
}
