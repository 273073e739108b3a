//! The `cartridge` binary: telemetry, then the command line. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// The server allocates per request from several threads at once (tokio's workers, the
/// database threads); glibc's allocator spent a tenth of the checkout benchmark's CPU.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CARTRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    cartridge_host::cli::run(cartridge_host::cli::Cli::parse()).await
}
