//! `tcp-loadgen`: simulated devices and an embedded Edge sink for measuring tcp-integration.
//!
//! The device side and the sink arrive with the load-generator issue; until then this binary
//! only describes itself.

use clap::Parser;

/// Load generator for tcp-integration (devices + embedded ThingsBoard Edge sink).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    Ok(())
}
