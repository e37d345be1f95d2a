//! `tcp-integration demo`: the Edge emulator and the integration in one process, set up as the
//! user guide's example (TEXT handler on port 10560, the docs' decoder, the `JSON.stringify(msg)`
//! encoder; `--example json|binary` for the other two). Every record (and integration statistics
//! message) the emulator receives is printed as a readable line; its admin API accepts downlinks.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use crate::config::local::{RunArgs, Settings};
use crate::edge_sim::definition::IntegrationDefinition;
use crate::edge_sim::record::{EntityKind, Record, StatisticsRecord, TypedValue};
use crate::edge_sim::{EXAMPLE_BINARY_JSON, EXAMPLE_JSON_JSON, EXAMPLE_TEXT_JSON, EdgeSim};
use crate::server::{Server, ServerOptions};

/// The user guide's three setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Example {
    /// TEXT handler, line separator, max frame 128 bytes.
    Text,
    /// JSON handler.
    Json,
    /// BINARY handler: length byte at offset 4, 5 header bytes stripped.
    Binary,
}

impl Example {
    /// The integration definition (as `edge-sim --integration` reads it).
    pub fn definition_json(self) -> &'static str {
        match self {
            Example::Text => EXAMPLE_TEXT_JSON,
            Example::Json => EXAMPLE_JSON_JSON,
            Example::Binary => EXAMPLE_BINARY_JSON,
        }
    }
}

/// Flags of `tcp-integration demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Which of the user guide's setups to serve (all on device port 10560).
    #[arg(long, value_enum, default_value_t = Example::Text)]
    pub example: Example,
    /// Address of the emulator's HTTP admin API (`POST /downlink`, `GET /devices`, ...).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub http: SocketAddr,
    /// Address of the emulator's integration RPC (gRPC); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub rpc_listen: SocketAddr,
    /// Spool directory; default: a fresh directory under the system temp dir, removed at exit.
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Also append every received record to this file as JSON lines (edge-sim's format).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Number of shards.
    #[arg(long, default_value_t = 1)]
    pub nr_shards: usize,
}

/// Parses the default `run` flags (no flag given), for building settings programmatically.
#[derive(Debug, Parser)]
struct DefaultRunArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// Builds `run` settings pointing at an emulator, with the given extra `TCPI_*`/`RPC_*`
/// variables; everything else takes its default.
pub fn settings_for(
    rpc: SocketAddr,
    definition: &IntegrationDefinition,
    extra: &[(&str, String)],
) -> anyhow::Result<Settings> {
    let args = DefaultRunArgs::parse_from(["tcp-integration"]).run;
    let env = |name: &str| -> Option<String> {
        match name {
            "RPC_HOST" => Some(rpc.ip().to_string()),
            "RPC_PORT" => Some(rpc.port().to_string()),
            "INTEGRATION_ROUTING_KEY" => Some(definition.routing_key.clone()),
            "INTEGRATION_SECRET" => Some(definition.secret.clone()),
            _ => extra
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone()),
        }
    };
    Ok(Settings::load(&args, &env)?)
}

/// Runs the demo until Ctrl-C.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let definition = IntegrationDefinition::from_json_str(args.example.definition_json())
        .context("built-in example definition")?;
    let temp_spool = args.spool_dir.is_none();
    let spool_dir = args.spool_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tcp-integration-demo-{}", std::process::id()))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let edge = runtime.block_on(EdgeSim::start(
        definition.clone(),
        args.rpc_listen,
        Some(args.http),
        args.record.clone(),
    ))?;
    let settings = settings_for(
        edge.grpc_addr(),
        &definition,
        &[
            ("TCPI_SPOOL_DIR", spool_dir.display().to_string()),
            ("TCPI_NR_SHARDS", args.nr_shards.to_string()),
            ("TCPI_BATCH_LINGER_MS", "1".to_owned()),
        ],
    )?;
    let server = Server::start(ServerOptions::from_settings(&settings))?;
    let port = definition
        .configuration
        .pointer("/clientConfiguration/port")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(10560);
    println!(
        "tcp-integration demo ({:?} example): devices connect to TCP port {port}; \
         admin API on http://{} (POST /downlink, GET /devices). Ctrl-C stops.",
        args.example,
        edge.http_addr()
            .map_or_else(|| args.http.to_string(), |a| a.to_string()),
    );
    let mut records = edge.subscribe();
    let mut statistics = edge.subscribe_statistics();
    let outcome = runtime.block_on(async {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break anyhow::Ok(()),
                record = records.recv() => match record {
                    Ok(record) => println!("{}", describe_record(&record)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("({n} records not shown: the terminal is slower than the devices)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break Ok(()),
                },
                stat = statistics.recv() => match stat {
                    Ok(stat) => println!("{}", describe_statistics(&stat)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("({n} statistics messages not shown)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break Ok(()),
                },
            }
        }
    });
    server.shutdown()?;
    runtime.block_on(edge.shutdown());
    if temp_spool {
        let _ = std::fs::remove_dir_all(&spool_dir);
    }
    outcome
}

/// One readable line per record: entity, name, type, typed telemetry and attributes.
pub fn describe_record(record: &Record) -> String {
    let mut line = String::new();
    let entity = match record.entity {
        EntityKind::Device => "device",
        EntityKind::Asset => "asset",
    };
    let _ = write!(
        line,
        "{entity} {} (type {})",
        record.name, record.entity_type
    );
    for entry in &record.telemetry {
        let _ = write!(line, " telemetry@{}:", entry.ts);
        for (key, value) in &entry.values.0 {
            let _ = write!(line, " {key}={}", describe_value(value));
        }
    }
    if !record.attributes.0.is_empty() {
        line.push_str(" attributes:");
        for (key, value) in &record.attributes.0 {
            let _ = write!(line, " {key}={}", describe_value(value));
        }
    }
    line
}

/// One readable line per integration statistics message.
pub fn describe_statistics(stat: &StatisticsRecord) -> String {
    let mut line = String::from("integration statistics");
    for entry in &stat.telemetry {
        let _ = write!(line, " @{}:", entry.ts);
        for (key, value) in &entry.values.0 {
            let _ = write!(line, " {key}={}", describe_value(value));
        }
    }
    line
}

fn describe_value(value: &TypedValue) -> String {
    match value {
        TypedValue::Boolean(b) => format!("{b} (BOOLEAN)"),
        TypedValue::Long(v) => format!("{v} (LONG)"),
        TypedValue::Double(v) => format!("{v} (DOUBLE)"),
        TypedValue::String(s) => format!("{s:?} (STRING)"),
        TypedValue::Json(s) => format!("{s} (JSON)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge_sim::record::{KvList, TsEntry};

    #[test]
    fn record_line_shows_types() {
        let record = Record {
            seq: 1,
            recv_ms: 0,
            entity: EntityKind::Device,
            name: "SN-002".into(),
            entity_type: "default".into(),
            label: String::new(),
            customer: String::new(),
            group: String::new(),
            telemetry: vec![TsEntry {
                ts: 1700000000000,
                values: KvList(vec![
                    ("temperature".into(), TypedValue::Double(25.7)),
                    ("humidity".into(), TypedValue::Long(69)),
                ]),
            }],
            attributes: KvList(vec![("fw".into(), TypedValue::String("1.2".into()))]),
        };
        assert_eq!(
            describe_record(&record),
            "device SN-002 (type default) telemetry@1700000000000: temperature=25.7 (DOUBLE) \
             humidity=69 (LONG) attributes: fw=\"1.2\" (STRING)"
        );
    }

    #[test]
    fn statistics_line_shows_counts_and_state() {
        let stat = StatisticsRecord {
            seq: 1,
            recv_ms: 0,
            telemetry: vec![TsEntry {
                ts: 1700000000000,
                values: KvList(vec![
                    ("messagesCount".into(), TypedValue::Long(12)),
                    ("errorsCount".into(), TypedValue::Long(1)),
                    ("state".into(), TypedValue::String("STARTED".into())),
                ]),
            }],
        };
        assert_eq!(
            describe_statistics(&stat),
            "integration statistics @1700000000000: messagesCount=12 (LONG) \
             errorsCount=1 (LONG) state=\"STARTED\" (STRING)"
        );
    }

    #[test]
    fn every_example_definition_parses() {
        for example in [Example::Text, Example::Json, Example::Binary] {
            let def = IntegrationDefinition::from_json_str(example.definition_json()).unwrap();
            assert_eq!(def.integration_type, "TCP");
        }
    }
}
