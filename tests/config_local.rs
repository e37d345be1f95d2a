//! Local settings: defaults ← TOML file ← environment ← flags, each layer overriding the one
//! before; unknown TOML keys refused; bad values named with key, value and allowed range;
//! missing credentials refused with what to set; the secret never printed.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::Parser;
use tcp_integration::config::integration::ClientConfig;
use tcp_integration::config::local::{
    DEFAULT_CONFIG_TOML, DownlinkSuffix, FsyncPolicy, RunArgs, Secret, Settings, SettingsError,
    SettingsFile, SpoolFullPolicy, keys,
};
use tcp_integration::framing::FramingSpec;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    run: RunArgs,
}

fn args(flags: &[&str]) -> RunArgs {
    let argv = std::iter::once("run").chain(flags.iter().copied());
    Cmd::try_parse_from(argv).unwrap().run
}

/// Credentials so that loading gets past the credential check.
const CREDS: &[(&str, &str)] = &[
    ("INTEGRATION_ROUTING_KEY", "rk-1"),
    ("INTEGRATION_SECRET", "s3cr3t-value"),
];

fn load(flags: &[&str], env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let vars: HashMap<String, String> = CREDS
        .iter()
        .chain(env.iter())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load(&args(flags), &|name| vars.get(name).cloned())
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

const FILE_LAYER: &str = r#"
[rpc]
host = "file-host"
[uplink]
batch_max_records = 100
[socket]
nodelay = false
[downlink]
suffix = "crlf"
"#;

#[test]
fn defaults_apply_when_nothing_is_set() {
    let s = load(&[], &[]).unwrap();
    assert_eq!(s.rpc.host, "localhost");
    assert_eq!(s.rpc.port, 9090);
    assert!(!s.rpc.ssl);
    assert_eq!(s.rpc.keep_alive, Some(Duration::from_secs(300)));
    assert_eq!(s.rpc.reconnect_base, Duration::from_millis(3000));
    assert_eq!(s.rpc.ack_timeout, Duration::from_millis(10_000));
    assert_eq!(s.rpc.service_id(), "[remote:8082]");
    assert_eq!(s.shards.nr_shards, None);
    assert_eq!(s.shards.ring_depth, 4096);
    assert_eq!(s.socket.bind_address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(s.socket.tcp_nodelay, None);
    assert_eq!(s.socket.max_connections, 100_000);
    assert_eq!(s.socket.idle_timeout, None);
    assert_eq!(s.uplink.batch_max_records, 500);
    assert_eq!(s.uplink.batch_max_bytes, 1 << 20);
    assert_eq!(s.uplink.batch_linger, Duration::from_millis(5));
    assert_eq!(s.uplink.inflight_batches, 8);
    assert_eq!(s.uplink.shard_channel_records, 8192);
    assert_eq!(s.downlink.inbox_capacity, 1024);
    assert_eq!(s.downlink.hold_max, 100);
    assert_eq!(s.downlink.hold_max_age, Duration::from_secs(3600));
    assert_eq!(s.downlink.suffix, DownlinkSuffix::Lf);
    assert_eq!(s.script.timeout, Duration::from_millis(100));
    assert_eq!(s.script.memory_limit_bytes, 64 << 20);
    assert_eq!(s.spool.dir.to_str(), Some("./spool"));
    assert_eq!(
        s.spool.fsync,
        FsyncPolicy::Interval(Duration::from_millis(1000))
    );
    assert_eq!(s.spool.max_bytes, 1 << 30);
    assert_eq!(s.spool.full_policy, SpoolFullPolicy::Backpressure);
    assert_eq!(s.metrics_listen, None);
    assert_eq!(s.log_level, "info");
    assert!(s.warnings.is_empty());
}

#[test]
fn file_overrides_defaults() {
    let file = config_file(FILE_LAYER);
    let s = load(&["--config", file.path().to_str().unwrap()], &[]).unwrap();
    assert_eq!(s.rpc.host, "file-host");
    assert_eq!(s.uplink.batch_max_records, 100);
    assert_eq!(s.socket.tcp_nodelay, Some(false));
    assert_eq!(s.downlink.suffix, DownlinkSuffix::Crlf);
    // Keys the file does not set keep their defaults.
    assert_eq!(s.rpc.port, 9090);
}

#[test]
fn env_overrides_file() {
    let file = config_file(FILE_LAYER);
    let s = load(
        &["--config", file.path().to_str().unwrap()],
        &[
            ("RPC_HOST", "env-host"),
            ("TCPI_BATCH_MAX_RECORDS", "200"),
            ("TCPI_NODELAY", "true"),
            ("TCPI_DOWNLINK_SUFFIX", "none"),
        ],
    )
    .unwrap();
    assert_eq!(s.rpc.host, "env-host");
    assert_eq!(s.uplink.batch_max_records, 200);
    assert_eq!(s.socket.tcp_nodelay, Some(true));
    assert_eq!(s.downlink.suffix, DownlinkSuffix::None);
}

#[test]
fn flags_override_env_and_file() {
    let file = config_file(FILE_LAYER);
    let s = load(
        &[
            "--config",
            file.path().to_str().unwrap(),
            "--rpc-host",
            "flag-host",
            "--batch-max-records",
            "300",
            "--nodelay",
            "false",
            "--downlink-suffix",
            "lf",
            "--routing-key",
            "rk-flag",
            "--secret",
            "secret-flag",
        ],
        &[
            ("RPC_HOST", "env-host"),
            ("TCPI_BATCH_MAX_RECORDS", "200"),
            ("TCPI_NODELAY", "true"),
            ("TCPI_DOWNLINK_SUFFIX", "none"),
        ],
    )
    .unwrap();
    assert_eq!(s.rpc.host, "flag-host");
    assert_eq!(s.uplink.batch_max_records, 300);
    assert_eq!(s.socket.tcp_nodelay, Some(false));
    assert_eq!(s.downlink.suffix, DownlinkSuffix::Lf);
    assert_eq!(s.rpc.routing_key, "rk-flag");
    assert_eq!(s.rpc.secret.expose(), "secret-flag");
}

#[test]
fn thingsboard_environment_variables_are_read() {
    let s = load(
        &[],
        &[
            ("RPC_HOST", "edge.example"),
            ("RPC_PORT", "19090"),
            ("RPC_SSL_ENABLED", "true"),
            ("RPC_SSL_CERT", "/etc/ca.pem"),
            ("RPC_CLIENT_ID", "plant-7"),
            ("HTTP_BIND_PORT", "8090"),
            ("RPC_KEEP_ALIVE_TIME_SEC", "600"),
        ],
    )
    .unwrap();
    assert_eq!(s.rpc.routing_key, "rk-1");
    assert_eq!(s.rpc.secret.expose(), "s3cr3t-value");
    assert_eq!(s.rpc.endpoint_uri(), "https://edge.example:19090");
    assert_eq!(
        s.rpc.ssl_cert.as_deref().and_then(|p| p.to_str()),
        Some("/etc/ca.pem")
    );
    assert_eq!(s.rpc.service_id(), "[plant-7:8090]");
    assert_eq!(s.rpc.keep_alive, Some(Duration::from_secs(600)));
}

#[test]
fn docs_typo_prc_host_is_accepted_and_rpc_host_wins() {
    assert_eq!(
        load(&[], &[("PRC_HOST", "typo-host")]).unwrap().rpc.host,
        "typo-host"
    );
    let both = load(
        &[],
        &[("PRC_HOST", "typo-host"), ("RPC_HOST", "right-host")],
    )
    .unwrap();
    assert_eq!(both.rpc.host, "right-host");
}

#[test]
fn empty_environment_variable_counts_as_unset() {
    let s = load(&[], &[("RPC_HOST", ""), ("TCPI_BATCH_MAX_RECORDS", "")]).unwrap();
    assert_eq!(s.rpc.host, "localhost");
    assert_eq!(s.uplink.batch_max_records, 500);
}

#[test]
fn log_level_from_tcpi_then_rust_log_then_flag() {
    assert_eq!(
        load(&[], &[("RUST_LOG", "debug")]).unwrap().log_level,
        "debug"
    );
    let env = [("RUST_LOG", "debug"), ("TCPI_LOG_LEVEL", "warn")];
    assert_eq!(load(&[], &env).unwrap().log_level, "warn");
    assert_eq!(
        load(&["--log-level", "trace"], &env).unwrap().log_level,
        "trace"
    );
}

#[test]
fn rpc_ssl_flag_alone_means_true() {
    assert!(load(&["--rpc-ssl"], &[]).unwrap().rpc.ssl);
    assert!(
        !load(&["--rpc-ssl", "false"], &[("RPC_SSL_ENABLED", "true")])
            .unwrap()
            .rpc
            .ssl
    );
}

#[test]
fn unknown_toml_keys_are_refused() {
    let file = config_file("[uplink]\nbatch_max_record = 10\n");
    let err = load(&["--config", file.path().to_str().unwrap()], &[]).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SettingsError::Toml { .. }), "{message}");
    assert!(
        message.contains("unknown field `batch_max_record`"),
        "{message}"
    );
    assert!(message.contains(file.path().to_str().unwrap()), "{message}");

    let file = config_file("[uplinks]\nbatch_max_records = 10\n");
    let message = load(&["--config", file.path().to_str().unwrap()], &[])
        .unwrap_err()
        .to_string();
    assert!(message.contains("unknown field `uplinks`"), "{message}");
}

#[test]
fn unreadable_config_file_is_named() {
    let err = load(&["--config", "/nonexistent/tcpi.toml"], &[]).unwrap_err();
    assert!(matches!(err, SettingsError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read config file /nonexistent/tcpi.toml")
    );
}

fn load_no_creds(flags: &[&str], env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load(&args(flags), &|name| vars.get(name).cloned())
}

#[test]
fn missing_credentials_say_what_to_set() {
    let err = load_no_creds(&[], &[]).unwrap_err();
    assert!(matches!(
        &err,
        SettingsError::MissingCredentials(missing) if missing == &[keys::ROUTING_KEY, keys::SECRET]
    ));
    let message = err.to_string();
    for needed in [
        "INTEGRATION_ROUTING_KEY",
        "--routing-key",
        "INTEGRATION_SECRET",
        "--secret",
    ] {
        assert!(message.contains(needed), "{needed} not in {message}");
    }
}

#[test]
fn placeholder_credentials_are_refused() {
    let err = load_no_creds(
        &[],
        &[
            ("INTEGRATION_ROUTING_KEY", "PUT_YOUR_ROUTING_KEY_HERE"),
            ("INTEGRATION_SECRET", "real"),
        ],
    )
    .unwrap_err();
    assert!(matches!(
        &err,
        SettingsError::MissingCredentials(missing) if missing == &[keys::ROUTING_KEY]
    ));
    let err = load_no_creds(
        &["--routing-key", "rk", "--secret", "PUT_YOUR_SECRET_HERE"],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot start: the integration secret is not set: set the environment variable \
         INTEGRATION_SECRET or pass --secret (or `integration.secret` in the --config file). \
         Copy the values from the integration's page in ThingsBoard (\"Integration key\" and \
         \"Integration secret\")."
    );
}

#[test]
fn secret_is_never_printed() {
    let s = load(&["--secret", "hunter2-xyz"], &[]).unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("hunter2-xyz"), "{debug}");
    assert!(debug.contains("secret: ***"), "{debug}");
    assert_eq!(format!("{}", s.rpc.secret), "***");
    assert_eq!(format!("{:?}", Secret::new("hunter2-xyz")), "***");
    let run_args = format!("{:?}", args(&["--secret", "hunter2-xyz"]));
    assert!(!run_args.contains("hunter2-xyz"), "{run_args}");
    let file = SettingsFile::from_toml("[integration]\nsecret = \"hunter2-xyz\"\n").unwrap();
    assert!(!format!("{file:?}").contains("hunter2-xyz"));
}

#[test]
fn short_keepalive_is_raised_to_300_with_a_warning() {
    let s = load(&[], &[("RPC_KEEP_ALIVE_TIME_SEC", "30")]).unwrap();
    assert_eq!(s.rpc.keep_alive, Some(Duration::from_secs(300)));
    assert_eq!(
        s.warnings,
        vec![
            "`rpc.keep_alive_secs` (env RPC_KEEP_ALIVE_TIME_SEC) = 30 is below the 300 s Edge \
             accepts (it closes connections that ping more often); using 300 s"
                .to_owned()
        ]
    );
    let off = load(&[], &[("RPC_KEEP_ALIVE_TIME_SEC", "0")]).unwrap();
    assert_eq!(off.rpc.keep_alive, None);
    assert!(off.warnings.is_empty());
}

fn invalid_message(flags: &[&str], env: &[(&str, &str)]) -> String {
    let err = load(flags, env).unwrap_err();
    assert!(matches!(err, SettingsError::Invalid { .. }), "{err}");
    err.to_string()
}

#[test]
fn out_of_range_values_name_key_value_and_range() {
    assert_eq!(
        invalid_message(&["--batch-max-records", "0"], &[]),
        "invalid setting `uplink.batch_max_records` (flag --batch-max-records, \
         env TCPI_BATCH_MAX_RECORDS): 0; allowed: 1..=100000"
    );
    assert_eq!(
        invalid_message(&[], &[("RPC_PORT", "70000")]),
        "invalid setting `rpc.port` (flag --rpc-port, env RPC_PORT): 70000; allowed: 1..=65535"
    );
    assert_eq!(
        invalid_message(&["--batch-max-bytes", "5000000"], &[]),
        "invalid setting `uplink.batch_max_bytes` (flag --batch-max-bytes, \
         env TCPI_BATCH_MAX_BYTES): 5000000; allowed: 1024..=4000000"
    );
    assert_eq!(
        invalid_message(&["--so-rcvbuf-kib", "0"], &[]),
        "invalid setting `socket.so_rcvbuf_kib` (flag --so-rcvbuf-kib, env TCPI_SO_RCVBUF_KIB): \
         0; allowed: 1..=65535"
    );
    assert_eq!(
        invalid_message(&["--bind-address", "localhost"], &[]),
        "invalid setting `socket.bind_address` (flag --bind-address, env TCPI_BIND_ADDRESS): \
         \"localhost\"; allowed: an IPv4 or IPv6 address"
    );
    assert_eq!(
        invalid_message(&["--metrics-listen", "9100"], &[]),
        "invalid setting `metrics.listen` (flag --metrics-listen, env TCPI_METRICS_LISTEN): \
         \"9100\"; allowed: IP:PORT (e.g. 127.0.0.1:9100), or empty for no metrics endpoint"
    );
    assert!(
        invalid_message(&["--log-level", "info,=[bad"], &[]).starts_with(
            "invalid setting `log.level` (flag --log-level, env TCPI_LOG_LEVEL or RUST_LOG): \
         \"info,=[bad\""
        )
    );
    let file = config_file("[spool]\nmax_bytes = 10\n");
    let err = load(&["--config", file.path().to_str().unwrap()], &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid setting `spool.max_bytes` (flag --spool-max-bytes, env TCPI_SPOOL_MAX_BYTES): \
         10; allowed: 4096..=1125899906842624"
    );
}

#[test]
fn unparsable_environment_values_name_the_variable() {
    let err = load(&[], &[("TCPI_NR_SHARDS", "two")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable TCPI_NR_SHARDS = \"two\" is not valid; expected a non-negative \
         integer"
    );
    let err = load(&[], &[("TCPI_SPOOL_FSYNC", "sometimes")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable TCPI_SPOOL_FSYNC = \"sometimes\" is not valid; expected one of \
         every, interval, never"
    );
    let err = load(&[], &[("RPC_SSL_ENABLED", "maybe")]).unwrap_err();
    assert!(
        err.to_string().contains("RPC_SSL_ENABLED = \"maybe\""),
        "{err}"
    );
}

#[test]
fn shard_cores_set_the_shard_count_and_must_agree_with_nr_shards() {
    let s = load(&["--shard-cores", "0,1", "--uplink-core", "2"], &[]).unwrap();
    assert_eq!(s.shards.shard_cores, Some(vec![0, 1]));
    assert_eq!(s.shards.nr_shards, Some(2));
    assert_eq!(s.shards.uplink_core, Some(2));
    let s = load(
        &[],
        &[("TCPI_SHARD_CORES", "3, 5"), ("TCPI_NR_SHARDS", "2")],
    )
    .unwrap();
    assert_eq!(s.shards.shard_cores, Some(vec![3, 5]));
    assert!(
        invalid_message(&["--shard-cores", "0,1", "--nr-shards", "3"], &[])
            .starts_with("invalid setting `shards.nr_shards` (flag --nr-shards, env TCPI_NR_SHARDS): 3; allowed: 2")
    );
    assert_eq!(
        invalid_message(&["--shard-cores", "1,1"], &[]),
        "invalid setting `shards.shard_cores` (flag --shard-cores, env TCPI_SHARD_CORES): [1,1]; \
         allowed: a non-empty list of distinct core numbers 0..=1023"
    );
    let file = config_file("[shards]\nshard_cores = [4, 6, 7]\n");
    let s = load(&["--config", file.path().to_str().unwrap()], &[]).unwrap();
    assert_eq!(s.shards.shard_cores, Some(vec![4, 6, 7]));
    assert_eq!(s.shards.nr_shards, Some(3));
}

#[test]
fn fsync_modes_and_full_policy() {
    let s = load(
        &[
            "--spool-fsync",
            "every",
            "--spool-full-policy",
            "drop-oldest",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(s.spool.fsync, FsyncPolicy::Every);
    assert_eq!(s.spool.full_policy, SpoolFullPolicy::DropOldest);
    let s = load(&[], &[("TCPI_SPOOL_FSYNC_INTERVAL_MS", "250")]).unwrap();
    assert_eq!(
        s.spool.fsync,
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    let s = load(&["--spool-fsync", "never"], &[]).unwrap();
    assert_eq!(s.spool.fsync, FsyncPolicy::Never);
}

#[test]
fn socket_overrides_replace_only_what_is_set() {
    let client = ClientConfig {
        port: 10560,
        so_backlog: 128,
        so_rcvbuf_kib: 64,
        so_sndbuf_kib: 64,
        so_keepalive: false,
        tcp_nodelay: true,
        cache_size: 1000,
        cache_ttl: Duration::from_secs(86_400),
        framing: FramingSpec::Json,
    };
    let none = load(&[], &[]).unwrap();
    assert_eq!(none.socket.apply_to(&client), client);
    let s = load(
        &[
            "--so-backlog",
            "4096",
            "--so-sndbuf-kib",
            "256",
            "--keepalive",
            "true",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        s.socket.apply_to(&client),
        ClientConfig {
            so_backlog: 4096,
            so_sndbuf_kib: 256,
            so_keepalive: true,
            ..client.clone()
        }
    );
}

#[test]
fn default_toml_is_exactly_the_builtin_defaults() {
    assert_eq!(
        SettingsFile::from_toml(DEFAULT_CONFIG_TOML).unwrap(),
        SettingsFile::defaults()
    );
}

#[test]
fn loading_the_default_toml_changes_nothing() {
    let file = config_file(DEFAULT_CONFIG_TOML);
    assert_eq!(
        load(&["--config", file.path().to_str().unwrap()], &[]).unwrap(),
        load(&[], &[]).unwrap()
    );
}

#[test]
fn default_toml_mentions_every_key_flag_and_env_var() {
    for key in keys::ALL {
        let (section, name) = key.toml.split_once('.').unwrap();
        assert!(
            DEFAULT_CONFIG_TOML.contains(&format!("[{section}]")),
            "{section}"
        );
        assert!(
            DEFAULT_CONFIG_TOML.contains(&format!("\n{name} = "))
                || DEFAULT_CONFIG_TOML.contains(&format!("\n# {name} = ")),
            "{}",
            key.toml
        );
        for var in key.env {
            assert!(DEFAULT_CONFIG_TOML.contains(var), "{var}");
        }
        if let Some(flag) = key.flag {
            assert!(DEFAULT_CONFIG_TOML.contains(flag), "{flag}");
        }
    }
}

#[test]
fn configuration_doc_mentions_every_key_flag_and_env_var() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for key in keys::ALL {
        assert!(doc.contains(&format!("`{}`", key.toml)), "{}", key.toml);
        for var in key.env {
            assert!(doc.contains(var), "{var}");
        }
        if let Some(flag) = key.flag {
            assert!(doc.contains(&format!("`{flag}")), "{flag}");
        }
    }
}

/// A sample value for every key: (TOML key, text for env and flag, TOML literal).
const SAMPLES: &[(&str, &str, &str)] = &[
    ("rpc.host", "edge.example", "\"edge.example\""),
    ("rpc.port", "19090", "19090"),
    ("rpc.ssl", "true", "true"),
    ("rpc.ssl_cert", "/etc/ca.pem", "\"/etc/ca.pem\""),
    ("rpc.client_id", "plant-7", "\"plant-7\""),
    ("rpc.service_port", "8090", "8090"),
    ("rpc.keep_alive_secs", "600", "600"),
    ("rpc.reconnect_base_ms", "500", "500"),
    ("rpc.ack_timeout_ms", "2000", "2000"),
    ("integration.routing_key", "rk-9", "\"rk-9\""),
    ("integration.secret", "sec-9", "\"sec-9\""),
    ("shards.nr_shards", "3", "3"),
    ("shards.shard_cores", "1,2", "[1, 2]"),
    ("shards.uplink_core", "0", "0"),
    ("shards.ring_depth", "256", "256"),
    ("socket.bind_address", "127.0.0.1", "\"127.0.0.1\""),
    ("socket.so_backlog", "4096", "4096"),
    ("socket.so_rcvbuf_kib", "256", "256"),
    ("socket.so_sndbuf_kib", "128", "128"),
    ("socket.keepalive", "true", "true"),
    ("socket.nodelay", "false", "false"),
    ("socket.max_connections", "5000", "5000"),
    ("socket.idle_timeout_secs", "60", "60"),
    ("uplink.batch_max_records", "50", "50"),
    ("uplink.batch_max_bytes", "65536", "65536"),
    ("uplink.batch_linger_ms", "2", "2"),
    ("uplink.inflight_batches", "4", "4"),
    ("uplink.shard_channel_records", "1024", "1024"),
    ("downlink.inbox", "64", "64"),
    ("downlink.hold_max", "10", "10"),
    ("downlink.hold_secs", "60", "60"),
    ("downlink.suffix", "crlf", "\"crlf\""),
    ("script.timeout_ms", "50", "50"),
    ("script.memory_mib", "32", "32"),
    ("spool.dir", "/var/spool/tcpi", "\"/var/spool/tcpi\""),
    ("spool.fsync", "every", "\"every\""),
    ("spool.fsync_interval_ms", "200", "200"),
    ("spool.max_bytes", "2097152", "2097152"),
    ("spool.full_policy", "drop-oldest", "\"drop-oldest\""),
    ("statistics.enabled", "false", "false"),
    ("statistics.persist_frequency_ms", "60000", "60000"),
    ("metrics.listen", "127.0.0.1:9100", "\"127.0.0.1:9100\""),
    ("log.level", "debug", "\"debug\""),
];

/// Every key's TOML spelling, environment variable(s) and flag set the same field.
#[test]
fn toml_env_and_flag_spellings_set_the_same_field() {
    assert_eq!(SAMPLES.len(), keys::ALL.len());
    for key in keys::ALL {
        let (_, text, literal) = SAMPLES
            .iter()
            .find(|(toml, _, _)| *toml == key.toml)
            .unwrap_or_else(|| panic!("no sample for {}", key.toml));
        let (section, name) = key.toml.split_once('.').unwrap();
        let from_toml =
            SettingsFile::from_toml(&format!("[{section}]\n{name} = {literal}\n")).unwrap();
        assert_ne!(from_toml, SettingsFile::default(), "{}", key.toml);
        for var in key.env {
            let from_env =
                SettingsFile::from_env(&|name| (name == *var).then(|| text.to_string())).unwrap();
            assert_eq!(from_env, from_toml, "env {var}");
        }
        if let Some(flag) = key.flag {
            let from_flag = SettingsFile::from_args(&args(&[flag, text]));
            assert_eq!(from_flag, from_toml, "flag {flag}");
        }
    }
}

#[test]
fn ipv6_edge_host_is_bracketed_in_the_endpoint_uri() {
    let s = load(&[], &[("RPC_HOST", "::1"), ("RPC_PORT", "9090")]).unwrap();
    assert_eq!(s.rpc.endpoint_uri(), "http://[::1]:9090");
    assert!(
        s.rpc
            .endpoint_uri()
            .parse::<tonic::transport::Uri>()
            .is_ok(),
        "a valid URI"
    );
    let s = load(&[], &[("RPC_HOST", "10.0.0.7")]).unwrap();
    assert_eq!(s.rpc.endpoint_uri(), "http://10.0.0.7:9090");
}

#[test]
fn statistics_default_to_thingsboards_and_take_its_variables() {
    let s = load(&[], &[]).unwrap();
    assert!(s.statistics.enabled);
    assert_eq!(s.statistics.persist_frequency, Duration::from_secs(3600));
    let s = load(
        &[],
        &[
            ("INTEGRATION_STATISTICS_ENABLED", "false"),
            ("INTEGRATION_STATISTICS_PERSIST_FREQUENCY", "60000"),
        ],
    )
    .unwrap();
    assert!(!s.statistics.enabled);
    assert_eq!(s.statistics.persist_frequency, Duration::from_secs(60));
    // The flag wins over the environment.
    let s = load(
        &["--statistics-persist-frequency-ms", "250"],
        &[("INTEGRATION_STATISTICS_PERSIST_FREQUENCY", "60000")],
    )
    .unwrap();
    assert_eq!(s.statistics.persist_frequency, Duration::from_millis(250));
    assert_eq!(
        invalid_message(&[], &[("INTEGRATION_STATISTICS_PERSIST_FREQUENCY", "99")]),
        "invalid setting `statistics.persist_frequency_ms` (flag --statistics-persist-frequency-ms, \
         env INTEGRATION_STATISTICS_PERSIST_FREQUENCY): 99; allowed: 100..=2592000000"
    );
}
