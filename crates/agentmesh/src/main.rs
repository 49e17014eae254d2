//! The stock `agentmesh` binary: the command line with the built-in tools.

use std::process::ExitCode;

/// mimalloc rather than glibc malloc: allocation-heavy gRPC and JSON work
/// runs markedly faster with it (bench/RESULTS.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    agentmesh::Agentmesh::new().main()
}
