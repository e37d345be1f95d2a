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
    // Integration point: the server module replaces this line with
    // `tcp_integration::server::run(settings)`.
    Ok(())
}
