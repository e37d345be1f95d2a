//! The `tcp-integration` binary: parses the command line, sets up logging, loads settings and
//! calls into the library. Nothing here is needed by tests of the library.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tcp_integration::config::local::{DEFAULT_CONFIG_TOML, RunArgs, Settings};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Run(args) => run(&args),
        Command::EdgeSim(args) => edge_sim(args),
        Command::Demo(args) => {
            init_default_logging();
            tcp_integration::demo::run(args)
        }
        Command::TestConverter(args) => {
            let mut stdout = std::io::stdout().lock();
            tcp_integration::convert::run_test_converter(&args, &mut stdout)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message is the interface here (it says what to change); no backtrace.
            eprintln!("tcp-integration: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging for the subcommands without settings: RUST_LOG, else `info`, to stderr.
fn init_default_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn edge_sim(args: tcp_integration::edge_sim::EdgeSimArgs) -> anyhow::Result<()> {
    init_default_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tcp_integration::edge_sim::run(args))
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return Ok(());
    }
    let settings = Settings::load(args, &|name| std::env::var(name).ok())?;
    // `log_level` already folds in --log-level, TCPI_LOG_LEVEL and RUST_LOG (in that order) and
    // was checked to parse.
    let filter = EnvFilter::builder()
        .parse(&settings.log_level)
        .context("log filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        endpoint = %settings.rpc.endpoint_uri(),
        service_id = %settings.rpc.service_id(),
        "effective settings (secret masked): {settings:?}"
    );
    tcp_integration::server::run(tcp_integration::server::ServerOptions::from_settings(
        &settings,
    ))
}
