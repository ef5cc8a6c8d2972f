//! The `walflow` binary; everything lives in the library so tests can build the same program.

fn main() -> std::process::ExitCode {
    walflow::cli::main()
}
