//! The `walflow` program built inside the test crate, so integration tests can run it as a child
//! process via `CARGO_BIN_EXE_walflow-under-test` (and kill it with SIGKILL) without a separate build step.
//! It is the same program as `walflow`, allocator included: memory bounds measured on it hold
//! for the real binary.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    walflow::cli::main()
}
