//! The `tcp-integration` binary: parses the command line and calls into the library.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tcp-integration", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a ThingsBoard Edge emulator (IntegrationTransport gRPC + HTTP admin API).
    EdgeSim(tcp_integration::edge_sim::EdgeSimArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::EdgeSim(args) => runtime.block_on(tcp_integration::edge_sim::run(args)),
    }
}
