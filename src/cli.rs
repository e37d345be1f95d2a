//! The command line of the `tcp-integration` binary: one subcommand per process role. Each
//! subcommand's flags are a `clap::Args` struct owned by the module that uses them, so this file
//! only names the roles.

use clap::{Parser, Subcommand};
use tcp_integration::config::local::RunArgs;

/// A fast, wire-compatible replacement for ThingsBoard's remote TCP integration.
///
/// Devices connect over TCP and send TEXT, JSON or BINARY frames; each frame goes through the
/// integration's uplink converter and the results are sent to ThingsBoard Edge over its
/// integration RPC. Downlinks come back through the downlink converter onto the device socket.
#[derive(Debug, Parser)]
#[command(name = "tcp-integration", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the remote TCP integration: connect to ThingsBoard Edge with the integration key and
    /// secret, receive the integration's configuration and converters, serve devices.
    ///
    /// Settings are taken, later winning, from: built-in defaults, the TOML file given with
    /// --config, environment variables (those of ThingsBoard's own remote integration:
    /// RPC_HOST, RPC_PORT, INTEGRATION_ROUTING_KEY, INTEGRATION_SECRET, RPC_SSL_ENABLED,
    /// RPC_SSL_CERT, RPC_CLIENT_ID, RPC_KEEP_ALIVE_TIME_SEC; plus TCPI_* for our own knobs), and
    /// the flags below. Only the integration key and secret must be given, e.g.
    ///
    ///   tcp-integration run --rpc-host edge.local --routing-key KEY --secret SECRET
    ///
    /// `tcp-integration run --print-default-config > tcpi.toml` writes every setting with its
    /// default and meaning.
    Run(RunArgs),

    /// Run a ThingsBoard Edge emulator: the integration RPC (gRPC) with one integration
    /// definition, an HTTP admin API for downlinks and updates, and a record of every uplink.
    /// Use it to try converters and settings without a ThingsBoard Edge.
    EdgeSim(tcp_integration::edge_sim::EdgeSimArgs),

    /// The emulator and the integration in one process, set up as the user guide's example
    /// (TEXT on device port 10560; --example json|binary for the others). Then send the
    /// guide's uplinks, e.g.
    ///
    ///   echo -e 'SN-002,default,temperature,25.7\nSN-002,default,humidity,69' | nc -q1 -w1 127.0.0.1 10560
    ///
    /// and a downlink with `curl -XPOST 127.0.0.1:8081/downlink -d '{"deviceName":"SN-002","data":{"firmware":"1.2.3"}}'`.
    Demo(tcp_integration::demo::DemoArgs),
    /// Run a converter script on a payload and print the typed result or a clear error
    /// (ThingsBoard's "Test decoder function" on the command line).
    TestConverter(tcp_integration::convert::TestConverterArgs),
}
