//! Local settings of `tcp-integration run`: everything that does not come from ThingsBoard.
//!
//! Layers, later wins: built-in defaults ← TOML file (`--config FILE`) ← environment ← flags.
//! Each layer is a [`SettingsFile`] of optional values (the TOML shape; env and flags are read
//! into the same shape), the layers are overlaid field by field, and [`Settings::load`] checks
//! the result into the runtime [`Settings`] (`Duration`s, enums, checked ranges).
//!
//! Invariants:
//! * A [`Settings`] value is complete and in range; an error names the TOML key, flag and
//!   environment variable of the bad value, the value and what is allowed.
//! * Unknown TOML keys are refused (a typo must not silently fall back to a default).
//! * The secret is a [`Secret`]: it never appears in `Debug`/`Display` output, hence never in logs.
//! * The defaults live in [`SettingsFile::defaults`]; `default.toml` (printed by
//!   `--print-default-config`) is the commented copy users start from, and a test proves the two
//!   are equal.
//! * An empty environment variable counts as unset (container templates often write `VAR=`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::integration::ClientConfig;

/// The commented default configuration printed by `run --print-default-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

/// Placeholder of the reference remote integration's configuration for the routing key.
pub const ROUTING_KEY_PLACEHOLDER: &str = "PUT_YOUR_ROUTING_KEY_HERE";
/// Placeholder of the reference remote integration's configuration for the secret.
pub const SECRET_PLACEHOLDER: &str = "PUT_YOUR_SECRET_HERE";

/// Smallest HTTP/2 keepalive ping interval Edge accepts: its gRPC server answers more frequent
/// pings with a `too_many_pings` GOAWAY (contract §2.1, `permitKeepAliveTime` 300 s).
pub const RPC_KEEP_ALIVE_MIN: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Keys: one place that names every setting in all three spellings.

/// How one setting is spelled in the TOML file, on the command line and in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingKey {
    /// `section.key` in the TOML file.
    pub toml: &'static str,
    /// The `run` flag, if the setting has one.
    pub flag: Option<&'static str>,
    /// Environment variables, first set one wins.
    pub env: &'static [&'static str],
}

impl fmt::Display for SettingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.toml)?;
        let mut spellings = Vec::new();
        if let Some(flag) = self.flag {
            spellings.push(format!("flag {flag}"));
        }
        if !self.env.is_empty() {
            spellings.push(format!("env {}", self.env.join(" or ")));
        }
        if !spellings.is_empty() {
            write!(f, " ({})", spellings.join(", "))?;
        }
        Ok(())
    }
}

/// Every setting, in the order of `default.toml`: `NAME: toml key, flag, [environment]`.
pub mod keys {
    use super::SettingKey;

    /// Declares one `SettingKey` constant per row, and `ALL` listing them.
    macro_rules! setting_keys {
        ($($name:ident: $toml:literal, $flag:expr, [$($env:literal),*];)+) => {
            $(pub const $name: SettingKey =
                SettingKey { toml: $toml, flag: $flag, env: &[$($env),*] };)+
            /// Every key, for documentation checks.
            pub const ALL: &[SettingKey] = &[$($name),+];
        };
    }

    setting_keys! {
        RPC_HOST:                "rpc.host",                     Some("--rpc-host"),                ["RPC_HOST", "PRC_HOST"];
        RPC_PORT:                "rpc.port",                     Some("--rpc-port"),                ["RPC_PORT"];
        RPC_SSL:                 "rpc.ssl",                      Some("--rpc-ssl"),                 ["RPC_SSL_ENABLED"];
        RPC_SSL_CERT:            "rpc.ssl_cert",                 Some("--rpc-ssl-cert"),            ["RPC_SSL_CERT"];
        RPC_CLIENT_ID:           "rpc.client_id",                Some("--client-id"),               ["RPC_CLIENT_ID"];
        RPC_SERVICE_PORT:        "rpc.service_port",             None,                              ["HTTP_BIND_PORT"];
        RPC_KEEP_ALIVE_SECS:     "rpc.keep_alive_secs",          None,                              ["RPC_KEEP_ALIVE_TIME_SEC"];
        RPC_RECONNECT_BASE_MS:   "rpc.reconnect_base_ms",        Some("--reconnect-base-ms"),       ["TCPI_RECONNECT_BASE_MS"];
        RPC_ACK_TIMEOUT_MS:      "rpc.ack_timeout_ms",           Some("--ack-timeout-ms"),          ["TCPI_ACK_TIMEOUT_MS"];
        ROUTING_KEY:             "integration.routing_key",      Some("--routing-key"),             ["INTEGRATION_ROUTING_KEY"];
        SECRET:                  "integration.secret",           Some("--secret"),                  ["INTEGRATION_SECRET"];
        NR_SHARDS:               "shards.nr_shards",             Some("--nr-shards"),               ["TCPI_NR_SHARDS"];
        SHARD_CORES:             "shards.shard_cores",           Some("--shard-cores"),             ["TCPI_SHARD_CORES"];
        UPLINK_CORE:             "shards.uplink_core",           Some("--uplink-core"),             ["TCPI_UPLINK_CORE"];
        RING_DEPTH:              "shards.ring_depth",            Some("--ring-depth"),              ["TCPI_RING_DEPTH"];
        BIND_ADDRESS:            "socket.bind_address",          Some("--bind-address"),            ["TCPI_BIND_ADDRESS"];
        SO_BACKLOG:              "socket.so_backlog",            Some("--so-backlog"),              ["TCPI_SO_BACKLOG"];
        SO_RCVBUF_KIB:           "socket.so_rcvbuf_kib",         Some("--so-rcvbuf-kib"),           ["TCPI_SO_RCVBUF_KIB"];
        SO_SNDBUF_KIB:           "socket.so_sndbuf_kib",         Some("--so-sndbuf-kib"),           ["TCPI_SO_SNDBUF_KIB"];
        KEEPALIVE:               "socket.keepalive",             Some("--keepalive"),               ["TCPI_KEEPALIVE"];
        NODELAY:                 "socket.nodelay",               Some("--nodelay"),                 ["TCPI_NODELAY"];
        MAX_CONNECTIONS:         "socket.max_connections",       Some("--max-connections"),         ["TCPI_MAX_CONNECTIONS"];
        IDLE_TIMEOUT_SECS:       "socket.idle_timeout_secs",     Some("--idle-timeout-secs"),       ["TCPI_IDLE_TIMEOUT_SECS"];
        BATCH_MAX_RECORDS:       "uplink.batch_max_records",     Some("--batch-max-records"),       ["TCPI_BATCH_MAX_RECORDS"];
        BATCH_MAX_BYTES:         "uplink.batch_max_bytes",       Some("--batch-max-bytes"),         ["TCPI_BATCH_MAX_BYTES"];
        BATCH_LINGER_MS:         "uplink.batch_linger_ms",       Some("--batch-linger-ms"),         ["TCPI_BATCH_LINGER_MS"];
        INFLIGHT_BATCHES:        "uplink.inflight_batches",      Some("--inflight-batches"),        ["TCPI_INFLIGHT_BATCHES"];
        SHARD_CHANNEL_RECORDS:   "uplink.shard_channel_records", Some("--shard-channel-records"),   ["TCPI_SHARD_CHANNEL_RECORDS"];
        DOWNLINK_INBOX:          "downlink.inbox",               Some("--downlink-inbox"),          ["TCPI_DOWNLINK_INBOX"];
        DOWNLINK_HOLD_MAX:       "downlink.hold_max",            Some("--downlink-hold-max"),       ["TCPI_DOWNLINK_HOLD_MAX"];
        DOWNLINK_HOLD_SECS:      "downlink.hold_secs",           Some("--downlink-hold-secs"),      ["TCPI_DOWNLINK_HOLD_SECS"];
        DOWNLINK_SUFFIX:         "downlink.suffix",              Some("--downlink-suffix"),         ["TCPI_DOWNLINK_SUFFIX"];
        SCRIPT_TIMEOUT_MS:       "script.timeout_ms",            Some("--script-timeout-ms"),       ["TCPI_SCRIPT_TIMEOUT_MS"];
        SCRIPT_MEMORY_MIB:       "script.memory_mib",            Some("--script-memory-mib"),       ["TCPI_SCRIPT_MEMORY_MIB"];
        SPOOL_DIR:               "spool.dir",                    Some("--spool-dir"),               ["TCPI_SPOOL_DIR"];
        SPOOL_FSYNC:             "spool.fsync",                  Some("--spool-fsync"),             ["TCPI_SPOOL_FSYNC"];
        SPOOL_FSYNC_INTERVAL_MS: "spool.fsync_interval_ms",      Some("--spool-fsync-interval-ms"), ["TCPI_SPOOL_FSYNC_INTERVAL_MS"];
        SPOOL_MAX_BYTES:         "spool.max_bytes",              Some("--spool-max-bytes"),         ["TCPI_SPOOL_MAX_BYTES"];
        SPOOL_FULL_POLICY:       "spool.full_policy",            Some("--spool-full-policy"),       ["TCPI_SPOOL_FULL_POLICY"];
        STATISTICS_ENABLED:      "statistics.enabled",           Some("--statistics-enabled"),      ["INTEGRATION_STATISTICS_ENABLED"];
        STATISTICS_PERSIST_FREQUENCY_MS: "statistics.persist_frequency_ms", Some("--statistics-persist-frequency-ms"), ["INTEGRATION_STATISTICS_PERSIST_FREQUENCY"];
        METRICS_LISTEN:          "metrics.listen",               Some("--metrics-listen"),          ["TCPI_METRICS_LISTEN"];
        LOG_LEVEL:               "log.level",                    Some("--log-level"),               ["TCPI_LOG_LEVEL", "RUST_LOG"];
    }
}

// ---------------------------------------------------------------------------------------------
// Small value types.

/// A credential. `Debug` and `Display` print `***`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret text, for the one place that sends it (the gRPC connect request).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A list of CPU core numbers, written `0,1,2` on the command line and `[0, 1, 2]` in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct CoreList(pub Vec<u64>);

impl FromStr for CoreList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(|part| {
                part.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("`{part}` is not a core number"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(CoreList)
    }
}

/// Bytes written after each encoded downlink on the device socket. ThingsBoard writes LF.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DownlinkSuffix {
    None,
    #[default]
    Lf,
    Crlf,
}

impl DownlinkSuffix {
    pub fn bytes(self) -> &'static [u8] {
        match self {
            DownlinkSuffix::None => b"",
            DownlinkSuffix::Lf => b"\n",
            DownlinkSuffix::Crlf => b"\r\n",
        }
    }
}

/// When the spool fsyncs appended records (as written in the settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpoolFsyncMode {
    Every,
    #[default]
    Interval,
    Never,
}

/// When the spool fsyncs appended records (validated, with the interval).
pub use crate::uplink::spool::FsyncPolicy;

/// What the spool does when it reaches `spool.max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SpoolFullPolicy {
    #[default]
    /// Stop accepting records (shards stop reading sockets) until Edge acknowledges.
    Backpressure,
    /// Drop the oldest unacknowledged records (counted and logged).
    DropOldest,
}

fn value_enum<T: clap::ValueEnum>(s: &str) -> Option<T> {
    T::from_str(s, true).ok()
}

fn value_enum_names<T: clap::ValueEnum>() -> String {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Layer shape: the TOML file (and env/flags read into the same shape).

/// One layer of settings, shaped like the TOML file; `None` = not set in this layer.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsFile {
    pub rpc: RpcFile,
    pub integration: IntegrationFile,
    pub shards: ShardsFile,
    pub socket: SocketFile,
    pub uplink: UplinkFile,
    pub downlink: DownlinkFile,
    pub script: ScriptFile,
    pub spool: SpoolFile,
    pub statistics: StatisticsFile,
    pub metrics: MetricsFile,
    pub log: LogFile,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcFile {
    pub host: Option<String>,
    pub port: Option<u64>,
    pub ssl: Option<bool>,
    pub ssl_cert: Option<PathBuf>,
    pub client_id: Option<String>,
    pub service_port: Option<u64>,
    pub keep_alive_secs: Option<u64>,
    pub reconnect_base_ms: Option<u64>,
    pub ack_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrationFile {
    pub routing_key: Option<String>,
    pub secret: Option<Secret>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsFile {
    pub nr_shards: Option<u64>,
    pub shard_cores: Option<CoreList>,
    pub uplink_core: Option<u64>,
    pub ring_depth: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketFile {
    pub bind_address: Option<String>,
    pub so_backlog: Option<u64>,
    pub so_rcvbuf_kib: Option<u64>,
    pub so_sndbuf_kib: Option<u64>,
    pub keepalive: Option<bool>,
    pub nodelay: Option<bool>,
    pub max_connections: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkFile {
    pub batch_max_records: Option<u64>,
    pub batch_max_bytes: Option<u64>,
    pub batch_linger_ms: Option<u64>,
    pub inflight_batches: Option<u64>,
    pub shard_channel_records: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownlinkFile {
    pub inbox: Option<u64>,
    pub hold_max: Option<u64>,
    pub hold_secs: Option<u64>,
    pub suffix: Option<DownlinkSuffix>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptFile {
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolFile {
    pub dir: Option<PathBuf>,
    pub fsync: Option<SpoolFsyncMode>,
    pub fsync_interval_ms: Option<u64>,
    pub max_bytes: Option<u64>,
    pub full_policy: Option<SpoolFullPolicy>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatisticsFile {
    pub enabled: Option<bool>,
    pub persist_frequency_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsFile {
    /// `""` = no metrics endpoint.
    pub listen: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<String>,
}

/// Copies every field that is set in `$top` over `$base`.
macro_rules! overlay_fields {
    ($base:expr, $top:expr; $($field:ident),+ $(,)?) => {
        $( if $top.$field.is_some() { $base.$field = $top.$field; } )+
    };
}

impl SettingsFile {
    /// The built-in defaults: every setting that has a default is `Some`. `default.toml` must
    /// parse to exactly this value (tested).
    pub fn defaults() -> SettingsFile {
        SettingsFile {
            rpc: RpcFile {
                host: Some("localhost".to_owned()),
                port: Some(9090),
                ssl: Some(false),
                ssl_cert: None,
                client_id: Some("remote".to_owned()),
                service_port: Some(8082),
                keep_alive_secs: Some(300),
                reconnect_base_ms: Some(3000),
                ack_timeout_ms: Some(10_000),
            },
            integration: IntegrationFile {
                routing_key: Some(ROUTING_KEY_PLACEHOLDER.to_owned()),
                secret: Some(Secret::new(SECRET_PLACEHOLDER)),
            },
            shards: ShardsFile {
                nr_shards: None,
                shard_cores: None,
                uplink_core: None,
                ring_depth: Some(4096),
            },
            socket: SocketFile {
                bind_address: Some("0.0.0.0".to_owned()),
                so_backlog: None,
                so_rcvbuf_kib: None,
                so_sndbuf_kib: None,
                keepalive: None,
                nodelay: None,
                max_connections: Some(100_000),
                idle_timeout_secs: Some(0),
            },
            uplink: UplinkFile {
                batch_max_records: Some(500),
                batch_max_bytes: Some(1 << 20),
                batch_linger_ms: Some(5),
                inflight_batches: Some(8),
                shard_channel_records: Some(8192),
            },
            downlink: DownlinkFile {
                inbox: Some(1024),
                hold_max: Some(100),
                hold_secs: Some(3600),
                suffix: Some(DownlinkSuffix::Lf),
            },
            script: ScriptFile {
                timeout_ms: Some(100),
                memory_mib: Some(64),
            },
            spool: SpoolFile {
                dir: Some(PathBuf::from("./spool")),
                fsync: Some(SpoolFsyncMode::Interval),
                fsync_interval_ms: Some(1000),
                max_bytes: Some(1 << 30),
                full_policy: Some(SpoolFullPolicy::Backpressure),
            },
            // ThingsBoard's remote integration defaults: enabled, every hour.
            statistics: StatisticsFile {
                enabled: Some(true),
                persist_frequency_ms: Some(3_600_000),
            },
            metrics: MetricsFile {
                listen: Some(String::new()),
            },
            log: LogFile {
                level: Some("info".to_owned()),
            },
        }
    }

    /// Parses a TOML settings file; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<SettingsFile, toml::de::Error> {
        toml::from_str(text)
    }

    /// `self` with every value set in `top` replaced by `top`'s.
    pub fn overlay(mut self, top: SettingsFile) -> SettingsFile {
        overlay_fields!(self.rpc, top.rpc; host, port, ssl, ssl_cert, client_id, service_port,
            keep_alive_secs, reconnect_base_ms, ack_timeout_ms);
        overlay_fields!(self.integration, top.integration; routing_key, secret);
        overlay_fields!(self.shards, top.shards; nr_shards, shard_cores, uplink_core, ring_depth);
        overlay_fields!(self.socket, top.socket; bind_address, so_backlog, so_rcvbuf_kib,
            so_sndbuf_kib, keepalive, nodelay, max_connections, idle_timeout_secs);
        overlay_fields!(self.uplink, top.uplink; batch_max_records, batch_max_bytes,
            batch_linger_ms, inflight_batches, shard_channel_records);
        overlay_fields!(self.downlink, top.downlink; inbox, hold_max, hold_secs, suffix);
        overlay_fields!(self.script, top.script; timeout_ms, memory_mib);
        overlay_fields!(self.spool, top.spool; dir, fsync, fsync_interval_ms, max_bytes,
            full_policy);
        overlay_fields!(self.statistics, top.statistics; enabled, persist_frequency_ms);
        overlay_fields!(self.metrics, top.metrics; listen);
        overlay_fields!(self.log, top.log; level);
        self
    }

    /// The environment layer. `env` returns a variable's value (injected so tests need not
    /// touch the process environment).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<SettingsFile, SettingsError> {
        use keys::*;
        let e = EnvReader { env };
        Ok(SettingsFile {
            rpc: RpcFile {
                host: e.text(&RPC_HOST),
                port: e.int(&RPC_PORT)?,
                ssl: e.boolean(&RPC_SSL)?,
                ssl_cert: e.text(&RPC_SSL_CERT).map(PathBuf::from),
                client_id: e.text(&RPC_CLIENT_ID),
                service_port: e.int(&RPC_SERVICE_PORT)?,
                keep_alive_secs: e.int(&RPC_KEEP_ALIVE_SECS)?,
                reconnect_base_ms: e.int(&RPC_RECONNECT_BASE_MS)?,
                ack_timeout_ms: e.int(&RPC_ACK_TIMEOUT_MS)?,
            },
            integration: IntegrationFile {
                routing_key: e.text(&ROUTING_KEY),
                secret: e.text(&SECRET).map(Secret),
            },
            shards: ShardsFile {
                nr_shards: e.int(&NR_SHARDS)?,
                shard_cores: e.parsed(&SHARD_CORES, "a comma-separated list of core numbers")?,
                uplink_core: e.int(&UPLINK_CORE)?,
                ring_depth: e.int(&RING_DEPTH)?,
            },
            socket: SocketFile {
                bind_address: e.text(&BIND_ADDRESS),
                so_backlog: e.int(&SO_BACKLOG)?,
                so_rcvbuf_kib: e.int(&SO_RCVBUF_KIB)?,
                so_sndbuf_kib: e.int(&SO_SNDBUF_KIB)?,
                keepalive: e.boolean(&KEEPALIVE)?,
                nodelay: e.boolean(&NODELAY)?,
                max_connections: e.int(&MAX_CONNECTIONS)?,
                idle_timeout_secs: e.int(&IDLE_TIMEOUT_SECS)?,
            },
            uplink: UplinkFile {
                batch_max_records: e.int(&BATCH_MAX_RECORDS)?,
                batch_max_bytes: e.int(&BATCH_MAX_BYTES)?,
                batch_linger_ms: e.int(&BATCH_LINGER_MS)?,
                inflight_batches: e.int(&INFLIGHT_BATCHES)?,
                shard_channel_records: e.int(&SHARD_CHANNEL_RECORDS)?,
            },
            downlink: DownlinkFile {
                inbox: e.int(&DOWNLINK_INBOX)?,
                hold_max: e.int(&DOWNLINK_HOLD_MAX)?,
                hold_secs: e.int(&DOWNLINK_HOLD_SECS)?,
                suffix: e.choice(&DOWNLINK_SUFFIX)?,
            },
            script: ScriptFile {
                timeout_ms: e.int(&SCRIPT_TIMEOUT_MS)?,
                memory_mib: e.int(&SCRIPT_MEMORY_MIB)?,
            },
            spool: SpoolFile {
                dir: e.text(&SPOOL_DIR).map(PathBuf::from),
                fsync: e.choice(&SPOOL_FSYNC)?,
                fsync_interval_ms: e.int(&SPOOL_FSYNC_INTERVAL_MS)?,
                max_bytes: e.int(&SPOOL_MAX_BYTES)?,
                full_policy: e.choice(&SPOOL_FULL_POLICY)?,
            },
            statistics: StatisticsFile {
                enabled: e.boolean(&STATISTICS_ENABLED)?,
                persist_frequency_ms: e.int(&STATISTICS_PERSIST_FREQUENCY_MS)?,
            },
            metrics: MetricsFile {
                listen: e.text(&METRICS_LISTEN),
            },
            log: LogFile {
                level: e.text(&LOG_LEVEL),
            },
        })
    }

    /// The command-line layer.
    pub fn from_args(args: &RunArgs) -> SettingsFile {
        let a = args.clone();
        SettingsFile {
            rpc: RpcFile {
                host: a.rpc_host,
                port: a.rpc_port,
                ssl: a.rpc_ssl,
                ssl_cert: a.rpc_ssl_cert,
                client_id: a.client_id,
                service_port: None,
                keep_alive_secs: None,
                reconnect_base_ms: a.reconnect_base_ms,
                ack_timeout_ms: a.ack_timeout_ms,
            },
            integration: IntegrationFile {
                routing_key: a.routing_key,
                secret: a.secret,
            },
            shards: ShardsFile {
                nr_shards: a.nr_shards,
                shard_cores: a.shard_cores,
                uplink_core: a.uplink_core,
                ring_depth: a.ring_depth,
            },
            socket: SocketFile {
                bind_address: a.bind_address,
                so_backlog: a.so_backlog,
                so_rcvbuf_kib: a.so_rcvbuf_kib,
                so_sndbuf_kib: a.so_sndbuf_kib,
                keepalive: a.keepalive,
                nodelay: a.nodelay,
                max_connections: a.max_connections,
                idle_timeout_secs: a.idle_timeout_secs,
            },
            uplink: UplinkFile {
                batch_max_records: a.batch_max_records,
                batch_max_bytes: a.batch_max_bytes,
                batch_linger_ms: a.batch_linger_ms,
                inflight_batches: a.inflight_batches,
                shard_channel_records: a.shard_channel_records,
            },
            downlink: DownlinkFile {
                inbox: a.downlink_inbox,
                hold_max: a.downlink_hold_max,
                hold_secs: a.downlink_hold_secs,
                suffix: a.downlink_suffix,
            },
            script: ScriptFile {
                timeout_ms: a.script_timeout_ms,
                memory_mib: a.script_memory_mib,
            },
            spool: SpoolFile {
                dir: a.spool_dir,
                fsync: a.spool_fsync,
                fsync_interval_ms: a.spool_fsync_interval_ms,
                max_bytes: a.spool_max_bytes,
                full_policy: a.spool_full_policy,
            },
            statistics: StatisticsFile {
                enabled: a.statistics_enabled,
                persist_frequency_ms: a.statistics_persist_frequency_ms,
            },
            metrics: MetricsFile {
                listen: a.metrics_listen,
            },
            log: LogFile { level: a.log_level },
        }
    }
}

/// Reads typed values from the injected environment; errors name the variable.
struct EnvReader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl EnvReader<'_> {
    /// The first non-empty variable of `key`, with its name.
    fn raw(&self, key: &SettingKey) -> Option<(&'static str, String)> {
        key.env
            .iter()
            .find_map(|var| (self.env)(var).filter(|v| !v.is_empty()).map(|v| (*var, v)))
    }

    fn text(&self, key: &SettingKey) -> Option<String> {
        self.raw(key).map(|(_, v)| v)
    }

    fn parsed<T: FromStr>(
        &self,
        key: &SettingKey,
        expected: &str,
    ) -> Result<Option<T>, SettingsError> {
        self.raw(key)
            .map(|(var, v)| {
                v.trim().parse::<T>().map_err(|_| SettingsError::Env {
                    var,
                    value: v.clone(),
                    expected: expected.to_owned(),
                })
            })
            .transpose()
    }

    fn int(&self, key: &SettingKey) -> Result<Option<u64>, SettingsError> {
        self.parsed(key, "a non-negative integer")
    }

    fn boolean(&self, key: &SettingKey) -> Result<Option<bool>, SettingsError> {
        self.raw(key)
            .map(|(var, v)| {
                parse_bool(&v).ok_or_else(|| SettingsError::Env {
                    var,
                    value: v.clone(),
                    expected: "true or false".to_owned(),
                })
            })
            .transpose()
    }

    fn choice<T: clap::ValueEnum>(&self, key: &SettingKey) -> Result<Option<T>, SettingsError> {
        self.raw(key)
            .map(|(var, v)| {
                value_enum::<T>(v.trim()).ok_or_else(|| SettingsError::Env {
                    var,
                    value: v.clone(),
                    expected: format!("one of {}", value_enum_names::<T>()),
                })
            })
            .transpose()
    }
}

/// Booleans as Spring and clap's "boolish" parser read them.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Command line.

/// `tcp-integration run`: serve devices for one ThingsBoard remote TCP integration.
///
/// Settings are taken, later winning, from: built-in defaults, the TOML file given with
/// --config, environment variables (the ones ThingsBoard's own remote integration reads, plus
/// TCPI_* for our knobs), and these flags. Only the integration key and secret must be set.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML settings file (see --print-default-config for every key). Unknown keys are errors.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the commented default settings file and exit.
    #[arg(long)]
    pub print_default_config: bool,

    /// Integration key (routing key) from the integration's page in ThingsBoard.
    /// Required. [env: INTEGRATION_ROUTING_KEY]
    #[arg(long, value_name = "KEY", help_heading = "ThingsBoard Edge connection")]
    pub routing_key: Option<String>,

    /// Integration secret from the integration's page in ThingsBoard. Required; never logged.
    /// [env: INTEGRATION_SECRET]
    #[arg(
        long,
        value_name = "SECRET",
        help_heading = "ThingsBoard Edge connection"
    )]
    pub secret: Option<Secret>,

    /// Host of ThingsBoard Edge (or the PE server) serving integration RPC.
    /// [default: localhost] [env: RPC_HOST, PRC_HOST]
    #[arg(
        long,
        value_name = "HOST",
        help_heading = "ThingsBoard Edge connection"
    )]
    pub rpc_host: Option<String>,

    /// Integration RPC port of Edge (INTEGRATIONS_RPC_PORT on the Edge side).
    /// [default: 9090] [env: RPC_PORT]
    #[arg(
        long,
        value_name = "PORT",
        help_heading = "ThingsBoard Edge connection"
    )]
    pub rpc_port: Option<u64>,

    /// Use TLS to Edge (`--rpc-ssl` alone means true). [default: false] [env: RPC_SSL_ENABLED]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "ThingsBoard Edge connection"
    )]
    pub rpc_ssl: Option<bool>,

    /// PEM certificate(s) to trust for TLS to Edge; unset = the system trust store.
    /// [env: RPC_SSL_CERT]
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "ThingsBoard Edge connection"
    )]
    pub rpc_ssl_cert: Option<PathBuf>,

    /// Client id; this instance reports itself to ThingsBoard as `[CLIENT_ID:8082]` (port from
    /// HTTP_BIND_PORT). Give each instance its own. [default: remote] [env: RPC_CLIENT_ID]
    #[arg(long, value_name = "ID", help_heading = "ThingsBoard Edge connection")]
    pub client_id: Option<String>,

    /// Wait after a lost connection before reconnecting to Edge, ms.
    /// [default: 3000] [env: TCPI_RECONNECT_BASE_MS]
    #[arg(long, value_name = "MS", help_heading = "ThingsBoard Edge connection")]
    pub reconnect_base_ms: Option<u64>,

    /// Time Edge has to acknowledge a batch before the connection is considered broken, ms.
    /// [default: 10000] [env: TCPI_ACK_TIMEOUT_MS]
    #[arg(long, value_name = "MS", help_heading = "ThingsBoard Edge connection")]
    pub ack_timeout_ms: Option<u64>,

    /// Number of shards (pinned device-serving threads).
    /// [default: all cores but the uplink core, at least 1] [env: TCPI_NR_SHARDS]
    #[arg(long, value_name = "N", help_heading = "Threads and placement")]
    pub nr_shards: Option<u64>,

    /// Cores to pin the shards to, e.g. `0,1` (one shard per listed core).
    /// [default: chosen automatically] [env: TCPI_SHARD_CORES]
    #[arg(long, value_name = "LIST", help_heading = "Threads and placement")]
    pub shard_cores: Option<CoreList>,

    /// Core to pin the uplink (Edge connection) thread to.
    /// [default: a core of its own when there is one to spare] [env: TCPI_UPLINK_CORE]
    #[arg(long, value_name = "N", help_heading = "Threads and placement")]
    pub uplink_core: Option<u64>,

    /// io_uring submission queue depth of each shard. [default: 4096] [env: TCPI_RING_DEPTH]
    #[arg(long, value_name = "N", help_heading = "Threads and placement")]
    pub ring_depth: Option<u64>,

    /// Local address the device listener binds to (the port comes from the integration).
    /// [default: 0.0.0.0] [env: TCPI_BIND_ADDRESS]
    #[arg(long, value_name = "IP", help_heading = "Device sockets")]
    pub bind_address: Option<String>,

    /// Listen backlog; overrides the integration's soBacklogOption. [env: TCPI_SO_BACKLOG]
    #[arg(long, value_name = "N", help_heading = "Device sockets")]
    pub so_backlog: Option<u64>,

    /// Receive buffer per device socket, KiB; overrides the integration's soRcvBuf.
    /// [env: TCPI_SO_RCVBUF_KIB]
    #[arg(long, value_name = "KIB", help_heading = "Device sockets")]
    pub so_rcvbuf_kib: Option<u64>,

    /// Send buffer per device socket, KiB; overrides the integration's soSndBuf.
    /// [env: TCPI_SO_SNDBUF_KIB]
    #[arg(long, value_name = "KIB", help_heading = "Device sockets")]
    pub so_sndbuf_kib: Option<u64>,

    /// SO_KEEPALIVE on device sockets; overrides the integration's soKeepaliveOption.
    /// [env: TCPI_KEEPALIVE]
    #[arg(
        long,
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Device sockets"
    )]
    pub keepalive: Option<bool>,

    /// TCP_NODELAY (no Nagle delay) on device sockets; overrides the integration's tcpNoDelay.
    /// [env: TCPI_NODELAY]
    #[arg(
        long,
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Device sockets"
    )]
    pub nodelay: Option<bool>,

    /// Most device connections this process holds; further ones are refused (counted).
    /// [default: 100000] [env: TCPI_MAX_CONNECTIONS]
    #[arg(long, value_name = "N", help_heading = "Device sockets")]
    pub max_connections: Option<u64>,

    /// Close a device connection that sent nothing for this long, s; 0 = never.
    /// [default: 0] [env: TCPI_IDLE_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS", help_heading = "Device sockets")]
    pub idle_timeout_secs: Option<u64>,

    /// Most records in one batch (UplinkMsg) sent to Edge.
    /// [default: 500] [env: TCPI_BATCH_MAX_RECORDS]
    #[arg(long, value_name = "N", help_heading = "Uplink to Edge")]
    pub batch_max_records: Option<u64>,

    /// Most encoded bytes in one batch; stays below gRPC's 4 MiB message limit.
    /// [default: 1048576] [env: TCPI_BATCH_MAX_BYTES]
    #[arg(long, value_name = "BYTES", help_heading = "Uplink to Edge")]
    pub batch_max_bytes: Option<u64>,

    /// How long a partly filled batch waits for more records, ms.
    /// [default: 5] [env: TCPI_BATCH_LINGER_MS]
    #[arg(long, value_name = "MS", help_heading = "Uplink to Edge")]
    pub batch_linger_ms: Option<u64>,

    /// Batches sent to Edge and not yet acknowledged. [default: 8] [env: TCPI_INFLIGHT_BATCHES]
    #[arg(long, value_name = "N", help_heading = "Uplink to Edge")]
    pub inflight_batches: Option<u64>,

    /// Capacity of each shard → uplink channel, records; when full, shards stop reading sockets.
    /// [default: 8192] [env: TCPI_SHARD_CHANNEL_RECORDS]
    #[arg(long, value_name = "N", help_heading = "Uplink to Edge")]
    pub shard_channel_records: Option<u64>,

    /// Capacity of each shard's downlink inbox, messages. [default: 1024] [env: TCPI_DOWNLINK_INBOX]
    #[arg(long, value_name = "N", help_heading = "Downlinks")]
    pub downlink_inbox: Option<u64>,

    /// Downlinks held per offline device until its next uplink; older ones are dropped (counted).
    /// [default: 100] [env: TCPI_DOWNLINK_HOLD_MAX]
    #[arg(long, value_name = "N", help_heading = "Downlinks")]
    pub downlink_hold_max: Option<u64>,

    /// How long a held downlink waits for its device, s. [default: 3600] [env: TCPI_DOWNLINK_HOLD_SECS]
    #[arg(long, value_name = "SECS", help_heading = "Downlinks")]
    pub downlink_hold_secs: Option<u64>,

    /// Bytes written after each downlink on the device socket (ThingsBoard writes LF).
    /// [default: lf] [env: TCPI_DOWNLINK_SUFFIX]
    #[arg(long, value_name = "SUFFIX", help_heading = "Downlinks")]
    pub downlink_suffix: Option<DownlinkSuffix>,

    /// Longest run of one converter call before it is interrupted, ms.
    /// [default: 100] [env: TCPI_SCRIPT_TIMEOUT_MS]
    #[arg(long, value_name = "MS", help_heading = "Converter scripts")]
    pub script_timeout_ms: Option<u64>,

    /// Memory limit of each shard's script runtime, MiB. [default: 64] [env: TCPI_SCRIPT_MEMORY_MIB]
    #[arg(long, value_name = "MIB", help_heading = "Converter scripts")]
    pub script_memory_mib: Option<u64>,

    /// Directory of the durable uplink spool (records wait here while Edge is unreachable).
    /// [default: ./spool] [env: TCPI_SPOOL_DIR]
    #[arg(long, value_name = "DIR", help_heading = "Spool")]
    pub spool_dir: Option<PathBuf>,

    /// When the spool fsyncs: every record, at an interval, or never (kernel decides).
    /// [default: interval] [env: TCPI_SPOOL_FSYNC]
    #[arg(long, value_name = "MODE", help_heading = "Spool")]
    pub spool_fsync: Option<SpoolFsyncMode>,

    /// Fsync interval for `--spool-fsync interval`, ms.
    /// [default: 1000] [env: TCPI_SPOOL_FSYNC_INTERVAL_MS]
    #[arg(long, value_name = "MS", help_heading = "Spool")]
    pub spool_fsync_interval_ms: Option<u64>,

    /// Largest spool size on disk, bytes. [default: 1073741824] [env: TCPI_SPOOL_MAX_BYTES]
    #[arg(long, value_name = "BYTES", help_heading = "Spool")]
    pub spool_max_bytes: Option<u64>,

    /// What a full spool does: stop reading devices, or drop the oldest records (counted).
    /// [default: backpressure] [env: TCPI_SPOOL_FULL_POLICY]
    #[arg(long, value_name = "POLICY", help_heading = "Spool")]
    pub spool_full_policy: Option<SpoolFullPolicy>,

    /// Send the integration's statistics (converted frames, errors, lifecycle state) to
    /// ThingsBoard, shown on the integration's page. [default: true]
    /// [env: INTEGRATION_STATISTICS_ENABLED]
    #[arg(
        long,
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Statistics"
    )]
    pub statistics_enabled: Option<bool>,

    /// Statistics period, ms (at least 100). [default: 3600000]
    /// [env: INTEGRATION_STATISTICS_PERSIST_FREQUENCY]
    #[arg(long, value_name = "MS", help_heading = "Statistics")]
    pub statistics_persist_frequency_ms: Option<u64>,

    /// Address for the Prometheus metrics endpoint, e.g. 127.0.0.1:9100; empty = off.
    /// [default: off] [env: TCPI_METRICS_LISTEN]
    #[arg(long, value_name = "ADDR", help_heading = "Observability")]
    pub metrics_listen: Option<String>,

    /// Log filter: a level (error, warn, info, debug, trace) or a tracing filter such as
    /// `info,tcp_integration::uplink=debug`. [default: info] [env: TCPI_LOG_LEVEL, RUST_LOG]
    #[arg(long, value_name = "FILTER", help_heading = "Observability")]
    pub log_level: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated runtime settings.

/// Validated settings of `run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rpc: RpcSettings,
    pub shards: ShardSettings,
    pub socket: SocketSettings,
    pub uplink: UplinkSettings,
    pub downlink: DownlinkSettings,
    pub script: ScriptSettings,
    pub spool: SpoolSettings,
    pub statistics: StatisticsSettings,
    /// Metrics endpoint; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    /// A `tracing_subscriber::EnvFilter` directive (checked to parse).
    pub log_level: String,
    /// Values that were adjusted while loading, for `main` to log once logging is up.
    pub warnings: Vec<String>,
}

/// The gRPC session to Edge.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcSettings {
    pub host: String,
    pub port: u16,
    pub ssl: bool,
    /// Trust anchor for TLS; `None` = system trust store.
    pub ssl_cert: Option<PathBuf>,
    pub client_id: String,
    /// The port part of the service id (the reference client uses its HTTP port, 8082).
    pub service_port: u16,
    /// HTTP/2 keepalive ping interval; `None` = no pings. Never below [`RPC_KEEP_ALIVE_MIN`].
    pub keep_alive: Option<Duration>,
    pub reconnect_base: Duration,
    pub ack_timeout: Duration,
    pub routing_key: String,
    pub secret: Secret,
}

impl RpcSettings {
    /// `ConnectRequestMsg.serviceId`: `[client_id:port]`, as the reference client builds it.
    pub fn service_id(&self) -> String {
        format!("[{}:{}]", self.client_id, self.service_port)
    }

    /// The gRPC endpoint URI (`http://` = h2c, `https://` = TLS).
    pub fn endpoint_uri(&self) -> String {
        let scheme = if self.ssl { "https" } else { "http" };
        // An IPv6 literal needs brackets in a URI (`http://[::1]:9090`).
        if self.host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Threads and their placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSettings {
    /// `None` = all cores but the uplink core, at least 1.
    pub nr_shards: Option<usize>,
    /// One core per shard; `None` = chosen by the runtime. When set, its length is `nr_shards`.
    pub shard_cores: Option<Vec<usize>>,
    /// `None` = a core of its own when there is one to spare.
    pub uplink_core: Option<usize>,
    pub ring_depth: u32,
}

/// Device-facing listener and sockets. The `Option` options override the integration's
/// `clientConfiguration` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    pub bind_address: IpAddr,
    pub so_backlog: Option<u32>,
    pub so_rcvbuf_kib: Option<u32>,
    pub so_sndbuf_kib: Option<u32>,
    pub so_keepalive: Option<bool>,
    pub tcp_nodelay: Option<bool>,
    pub max_connections: usize,
    /// `None` = connections never time out.
    pub idle_timeout: Option<Duration>,
}

impl SocketSettings {
    /// The integration's client configuration with the local overrides applied.
    pub fn apply_to(&self, client: &ClientConfig) -> ClientConfig {
        ClientConfig {
            so_backlog: self.so_backlog.unwrap_or(client.so_backlog),
            so_rcvbuf_kib: self.so_rcvbuf_kib.unwrap_or(client.so_rcvbuf_kib),
            so_sndbuf_kib: self.so_sndbuf_kib.unwrap_or(client.so_sndbuf_kib),
            so_keepalive: self.so_keepalive.unwrap_or(client.so_keepalive),
            tcp_nodelay: self.tcp_nodelay.unwrap_or(client.tcp_nodelay),
            ..client.clone()
        }
    }
}

/// Batching towards Edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub batch_linger: Duration,
    pub inflight_batches: usize,
    pub shard_channel_records: usize,
}

/// Downlink routing and delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkSettings {
    pub inbox_capacity: usize,
    pub hold_max: usize,
    pub hold_max_age: Duration,
    pub suffix: DownlinkSuffix,
}

/// Converter script limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSettings {
    pub timeout: Duration,
    pub memory_limit_bytes: usize,
}

/// The durable uplink spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub max_bytes: u64,
    pub full_policy: SpoolFullPolicy,
}

/// Integration statistics sent to ThingsBoard (contract §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatisticsSettings {
    pub enabled: bool,
    /// Length of one statistics period.
    pub persist_frequency: Duration,
}

/// Why settings could not be loaded. The operator recovers by changing what the message names.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("environment variable {var} = {value:?} is not valid; expected {expected}")]
    Env {
        var: &'static str,
        value: String,
        expected: String,
    },
    #[error("invalid setting {key}: {value}; allowed: {allowed}")]
    Invalid {
        key: SettingKey,
        value: String,
        allowed: String,
    },
    #[error("{}", missing_credentials_message(.0))]
    MissingCredentials(Vec<SettingKey>),
}

fn missing_credentials_message(missing: &[SettingKey]) -> String {
    let what = missing
        .iter()
        .map(|k| {
            let name = if *k == keys::SECRET {
                "integration secret"
            } else {
                "integration key (routing key)"
            };
            let env = k.env.first().copied().unwrap_or_default();
            let flag = k.flag.unwrap_or_default();
            format!(
                "the {name} is not set: set the environment variable {env} or pass {flag} \
                 (or `{}` in the --config file)",
                k.toml
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "cannot start: {what}. Copy the values from the integration's page in ThingsBoard \
         (\"Integration key\" and \"Integration secret\")."
    )
}

impl Settings {
    /// Loads the settings of `run`: defaults ← `--config` file ← `env` ← flags.
    pub fn load(
        args: &RunArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => SettingsFile::default(),
        };
        let merged = SettingsFile::defaults()
            .overlay(file)
            .overlay(SettingsFile::from_env(env)?)
            .overlay(SettingsFile::from_args(args));
        Settings::resolve(merged)
    }

    /// Checks a complete layer (normally defaults with the other layers on top).
    pub fn resolve(layer: SettingsFile) -> Result<Settings, SettingsError> {
        use keys::*;
        let d = SettingsFile::defaults();
        let mut warnings = Vec::new();

        let routing_key = layer.integration.routing_key.unwrap_or_default();
        let secret = layer.integration.secret.unwrap_or_else(|| Secret::new(""));
        let mut missing = Vec::new();
        if routing_key.trim().is_empty() || routing_key == ROUTING_KEY_PLACEHOLDER {
            missing.push(ROUTING_KEY);
        }
        if secret.expose().trim().is_empty() || secret.expose() == SECRET_PLACEHOLDER {
            missing.push(SECRET);
        }
        if !missing.is_empty() {
            return Err(SettingsError::MissingCredentials(missing));
        }

        let r = layer.rpc;
        let host = or_default(r.host, d.rpc.host);
        if host.trim().is_empty() {
            return Err(invalid(RPC_HOST, "\"\"", "a host name or IP address"));
        }
        let client_id = or_default(r.client_id, d.rpc.client_id);
        if client_id.trim().is_empty() {
            return Err(invalid(RPC_CLIENT_ID, "\"\"", "a non-empty name"));
        }
        let keep_alive_secs = or_default(r.keep_alive_secs, d.rpc.keep_alive_secs);
        let keep_alive = match keep_alive_secs {
            0 => None,
            secs if secs < RPC_KEEP_ALIVE_MIN.as_secs() => {
                // Raised rather than refused: a shorter interval can only get the session
                // closed by Edge, and the user's intent ("ping often") is served best by the
                // most frequent interval Edge accepts.
                warnings.push(format!(
                    "{RPC_KEEP_ALIVE_SECS} = {secs} is below the {} s Edge accepts \
                     (it closes connections that ping more often); using {} s",
                    RPC_KEEP_ALIVE_MIN.as_secs(),
                    RPC_KEEP_ALIVE_MIN.as_secs()
                ));
                Some(RPC_KEEP_ALIVE_MIN)
            }
            secs => Some(Duration::from_secs(in_range(
                RPC_KEEP_ALIVE_SECS,
                secs,
                0,
                86_400,
            )?)),
        };
        let rpc = RpcSettings {
            host,
            port: in_range(RPC_PORT, or_default(r.port, d.rpc.port), 1, 65535)? as u16,
            ssl: or_default(r.ssl, d.rpc.ssl),
            ssl_cert: r.ssl_cert.filter(|p| !p.as_os_str().is_empty()),
            client_id,
            service_port: in_range(
                RPC_SERVICE_PORT,
                or_default(r.service_port, d.rpc.service_port),
                1,
                65535,
            )? as u16,
            keep_alive,
            reconnect_base: millis(
                RPC_RECONNECT_BASE_MS,
                or_default(r.reconnect_base_ms, d.rpc.reconnect_base_ms),
                100,
                600_000,
            )?,
            ack_timeout: millis(
                RPC_ACK_TIMEOUT_MS,
                or_default(r.ack_timeout_ms, d.rpc.ack_timeout_ms),
                100,
                3_600_000,
            )?,
            routing_key,
            secret,
        };

        let s = layer.shards;
        let mut nr_shards = s
            .nr_shards
            .map(|n| in_range(NR_SHARDS, n, 1, 1024).map(|n| n as usize))
            .transpose()?;
        let shard_cores = match s.shard_cores {
            None => None,
            Some(CoreList(cores)) => {
                let shown = cores
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let mut sorted = cores.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if cores.is_empty()
                    || sorted.len() != cores.len()
                    || cores.iter().any(|&c| c > 1023)
                {
                    return Err(invalid(
                        SHARD_CORES,
                        &format!("[{shown}]"),
                        "a non-empty list of distinct core numbers 0..=1023",
                    ));
                }
                match nr_shards {
                    Some(n) if n != cores.len() => {
                        return Err(invalid(
                            NR_SHARDS,
                            &n.to_string(),
                            &format!(
                                "{} (one shard per core listed in {SHARD_CORES} = {shown}), \
                                 or leave it unset",
                                cores.len()
                            ),
                        ));
                    }
                    _ => nr_shards = Some(cores.len()),
                }
                Some(cores.into_iter().map(|c| c as usize).collect())
            }
        };
        let shards = ShardSettings {
            nr_shards,
            shard_cores,
            uplink_core: s
                .uplink_core
                .map(|c| in_range(UPLINK_CORE, c, 0, 1023).map(|c| c as usize))
                .transpose()?,
            ring_depth: in_range(
                RING_DEPTH,
                or_default(s.ring_depth, d.shards.ring_depth),
                8,
                32_768,
            )? as u32,
        };

        let k = layer.socket;
        let bind_text = or_default(k.bind_address, d.socket.bind_address);
        let bind_address = bind_text.trim().parse::<IpAddr>().map_err(|_| {
            invalid(
                BIND_ADDRESS,
                &format!("{bind_text:?}"),
                "an IPv4 or IPv6 address",
            )
        })?;
        let kib = |key, v: Option<u64>| {
            v.map(|v| in_range(key, v, 1, 65535).map(|v| v as u32))
                .transpose()
        };
        let idle_secs = in_range(
            IDLE_TIMEOUT_SECS,
            or_default(k.idle_timeout_secs, d.socket.idle_timeout_secs),
            0,
            604_800,
        )?;
        let socket = SocketSettings {
            bind_address,
            so_backlog: kib(SO_BACKLOG, k.so_backlog)?,
            so_rcvbuf_kib: kib(SO_RCVBUF_KIB, k.so_rcvbuf_kib)?,
            so_sndbuf_kib: kib(SO_SNDBUF_KIB, k.so_sndbuf_kib)?,
            so_keepalive: k.keepalive,
            tcp_nodelay: k.nodelay,
            max_connections: in_range(
                MAX_CONNECTIONS,
                or_default(k.max_connections, d.socket.max_connections),
                1,
                10_000_000,
            )? as usize,
            idle_timeout: (idle_secs > 0).then(|| Duration::from_secs(idle_secs)),
        };

        let u = layer.uplink;
        let uplink = UplinkSettings {
            batch_max_records: in_range(
                BATCH_MAX_RECORDS,
                or_default(u.batch_max_records, d.uplink.batch_max_records),
                1,
                100_000,
            )? as usize,
            // gRPC's default message limit is 4 MiB; keep headroom for the envelope.
            batch_max_bytes: in_range(
                BATCH_MAX_BYTES,
                or_default(u.batch_max_bytes, d.uplink.batch_max_bytes),
                1024,
                4_000_000,
            )? as usize,
            batch_linger: millis(
                BATCH_LINGER_MS,
                or_default(u.batch_linger_ms, d.uplink.batch_linger_ms),
                0,
                10_000,
            )?,
            inflight_batches: in_range(
                INFLIGHT_BATCHES,
                or_default(u.inflight_batches, d.uplink.inflight_batches),
                1,
                1024,
            )? as usize,
            shard_channel_records: in_range(
                SHARD_CHANNEL_RECORDS,
                or_default(u.shard_channel_records, d.uplink.shard_channel_records),
                1,
                1 << 24,
            )? as usize,
        };

        let w = layer.downlink;
        let downlink = DownlinkSettings {
            inbox_capacity: in_range(
                DOWNLINK_INBOX,
                or_default(w.inbox, d.downlink.inbox),
                1,
                1 << 20,
            )? as usize,
            hold_max: in_range(
                DOWNLINK_HOLD_MAX,
                or_default(w.hold_max, d.downlink.hold_max),
                0,
                1_000_000,
            )? as usize,
            hold_max_age: Duration::from_secs(in_range(
                DOWNLINK_HOLD_SECS,
                or_default(w.hold_secs, d.downlink.hold_secs),
                1,
                2_592_000,
            )?),
            suffix: or_default(w.suffix, d.downlink.suffix),
        };

        let c = layer.script;
        let script = ScriptSettings {
            timeout: millis(
                SCRIPT_TIMEOUT_MS,
                or_default(c.timeout_ms, d.script.timeout_ms),
                1,
                60_000,
            )?,
            memory_limit_bytes: (in_range(
                SCRIPT_MEMORY_MIB,
                or_default(c.memory_mib, d.script.memory_mib),
                1,
                4096,
            )? as usize)
                << 20,
        };

        let p = layer.spool;
        let dir = or_default(p.dir, d.spool.dir);
        if dir.as_os_str().is_empty() {
            return Err(invalid(SPOOL_DIR, "\"\"", "a directory path"));
        }
        let interval = millis(
            SPOOL_FSYNC_INTERVAL_MS,
            or_default(p.fsync_interval_ms, d.spool.fsync_interval_ms),
            1,
            60_000,
        )?;
        let spool = SpoolSettings {
            dir,
            fsync: match or_default(p.fsync, d.spool.fsync) {
                SpoolFsyncMode::Every => FsyncPolicy::Every,
                SpoolFsyncMode::Interval => FsyncPolicy::Interval(interval),
                SpoolFsyncMode::Never => FsyncPolicy::Never,
            },
            max_bytes: in_range(
                SPOOL_MAX_BYTES,
                or_default(p.max_bytes, d.spool.max_bytes),
                // Small spools are legitimate on constrained gateways and in tests; below a
                // few KiB not even one batch fits.
                1 << 12,
                1 << 50,
            )?,
            full_policy: or_default(p.full_policy, d.spool.full_policy),
        };

        let t = layer.statistics;
        let statistics = StatisticsSettings {
            enabled: or_default(t.enabled, d.statistics.enabled),
            // Not more often than the uplink core's timer looks (100 ms); at most 30 days.
            persist_frequency: millis(
                STATISTICS_PERSIST_FREQUENCY_MS,
                or_default(t.persist_frequency_ms, d.statistics.persist_frequency_ms),
                100,
                2_592_000_000,
            )?,
        };

        let listen = or_default(layer.metrics.listen, d.metrics.listen);
        let metrics_listen = if listen.trim().is_empty() {
            None
        } else {
            Some(listen.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    METRICS_LISTEN,
                    &format!("{listen:?}"),
                    "IP:PORT (e.g. 127.0.0.1:9100), or empty for no metrics endpoint",
                )
            })?)
        };

        let log_level = or_default(layer.log.level, d.log.level);
        if tracing_subscriber::EnvFilter::builder()
            .parse(&log_level)
            .is_err()
        {
            return Err(invalid(
                LOG_LEVEL,
                &format!("{log_level:?}"),
                "error, warn, info, debug, trace, or a tracing filter such as \
                 `info,tcp_integration=debug`",
            ));
        }

        Ok(Settings {
            rpc,
            shards,
            socket,
            uplink,
            downlink,
            script,
            spool,
            statistics,
            metrics_listen,
            log_level,
            warnings,
        })
    }
}

fn read_file(path: &Path) -> Result<SettingsFile, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
        path: path.to_owned(),
        source,
    })?;
    SettingsFile::from_toml(&text).map_err(|e| SettingsError::Toml {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `value`, or the built-in default. Every defaulted key is `Some` in [`SettingsFile::defaults`];
/// the fallback to `T::default()` is never taken and keeps this free of panics.
fn or_default<T: Default>(value: Option<T>, default: Option<T>) -> T {
    value.or(default).unwrap_or_default()
}

fn invalid(key: SettingKey, value: &str, allowed: &str) -> SettingsError {
    SettingsError::Invalid {
        key,
        value: value.to_owned(),
        allowed: allowed.to_owned(),
    }
}

fn in_range(key: SettingKey, value: u64, min: u64, max: u64) -> Result<u64, SettingsError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(key, &value.to_string(), &format!("{min}..={max}")))
    }
}

fn millis(key: SettingKey, value: u64, min: u64, max: u64) -> Result<Duration, SettingsError> {
    in_range(key, value, min, max).map(Duration::from_millis)
}
