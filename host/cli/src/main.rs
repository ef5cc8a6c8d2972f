//! The `walflow` binary; everything lives in the library so tests can build the same program.

/// mimalloc instead of the system allocator: every event is a handful of short-lived
/// allocations (values, rows, topics) made on one thread and freed on another, where glibc's
/// malloc spent a third of the plugin chain's time (`walflow-bench plugin-chain`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    walflow::cli::main()
}
