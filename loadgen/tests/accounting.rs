//! Proves the load generator's accounting end to end without the real server: a test
//! "forwarder" plays the integration (gRPC client of the sink + TCP listener for the devices,
//! parsing TEXT frames itself) and drops or duplicates chosen frames; the report must show
//! exactly that loss / duplication, ordered non-zero latencies, downlink round trips, and a
//! JSON file holding every field documented in `loadgen/README.md`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcp_integration::proto::integration::{
    ConnectRequestMsg, ConnectResponseCode, DeviceUplinkDataProto, IntegrationConfigurationProto,
    MessageType, RequestMsg, UplinkMsg, integration_transport_client::IntegrationTransportClient,
};
use tcp_integration::proto::transport::{
    KeyValueProto, KeyValueType, PostTelemetryMsg, TsKvListProto,
};
use tcp_loadgen::devices::{FleetConfig, Schedule};
use tcp_loadgen::edge_config::IntegrationSettings;
use tcp_loadgen::frames::{Format, parse_text_record};
use tcp_loadgen::report::Report;
use tcp_loadgen::run::{RunOptions, run};
use tcp_loadgen::sink::{Sink, SinkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const ROUTING_KEY: &str = "rk-test";
const SECRET: &str = "secret-test";

/// Which frames the forwarder tampers with, by (device name, seq).
#[derive(Default, Clone)]
struct FaultPlan {
    drop: HashSet<(String, u64)>,
    duplicate: HashSet<(String, u64)>,
}

struct Forwarder {
    device_addr: SocketAddr,
    configuration: IntegrationConfigurationProto,
}

fn long_kv(key: &str, value: u64) -> KeyValueProto {
    KeyValueProto {
        key: key.into(),
        r#type: KeyValueType::LongV as i32,
        long_v: value as i64,
        ..Default::default()
    }
}

fn uplink_request(device_name: &str, seq: u64, sent_us: u64) -> RequestMsg {
    RequestMsg {
        message_type: MessageType::UplinkRpcMessage as i32,
        connect_request_msg: None,
        uplink_msg: Some(UplinkMsg {
            device_data: vec![DeviceUplinkDataProto {
                device_name: device_name.into(),
                device_type: "default".into(),
                post_telemetry_msg: Some(PostTelemetryMsg {
                    ts_kv_list: vec![TsKvListProto {
                        ts: 1,
                        kv: vec![
                            long_kv("seq", seq),
                            long_kv("sent_us", sent_us),
                            KeyValueProto {
                                key: "temperature".into(),
                                r#type: KeyValueType::DoubleV as i32,
                                double_v: 25.7,
                                ..Default::default()
                            },
                        ],
                    }],
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// Connects to the sink like an integration and relays TEXT frames from devices as uplinks.
async fn start_forwarder(
    sink_addr: SocketAddr,
    secret: &str,
    plan: FaultPlan,
) -> Result<Forwarder, String> {
    let mut client = IntegrationTransportClient::connect(format!("http://{sink_addr}"))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<RequestMsg>(1024);
    tx.send(RequestMsg {
        message_type: MessageType::ConnectRpcMessage as i32,
        connect_request_msg: Some(ConnectRequestMsg {
            integration_routing_key: ROUTING_KEY.into(),
            integration_secret: secret.into(),
            service_id: "[test:0]".into(),
        }),
        uplink_msg: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut responses = client
        .handle_msgs(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let first = responses
        .message()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no reply")?;
    let connect = first
        .connect_response_msg
        .ok_or("first reply is not a ConnectResponseMsg")?;
    if connect.response_code != ConnectResponseCode::Accepted as i32 {
        return Err(connect.error_msg);
    }
    let configuration = connect.configuration.ok_or("no configuration")?;

    // Device name → that device's socket writer, for downlinks.
    let writers: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>> = Arc::default();
    let downlink_writers = writers.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = responses.message().await {
            let Some(data) = msg.downlink_msg.and_then(|d| d.device_data) else {
                continue;
            };
            let body = data.tb_msg_proto.map(|m| m.data).unwrap_or_default();
            let writer = downlink_writers
                .lock()
                .unwrap()
                .get(&data.device_name)
                .cloned();
            if let Some(writer) = writer {
                // The docs' encoder: JSON.stringify(msg) + LF.
                let _ = writer.send(format!("{body}\n").into_bytes());
            }
        }
    });

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let device_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            let plan = plan.clone();
            let writers = writers.clone();
            tokio::spawn(async move {
                let (mut reader, mut writer) = socket.into_split();
                let (down_tx, mut down_rx) = mpsc::unbounded_channel::<Vec<u8>>();
                tokio::spawn(async move {
                    while let Some(bytes) = down_rx.recv().await {
                        if writer.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match reader.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let mut consumed = 0;
                    while let Some(lf) = buf[consumed..].iter().position(|&b| b == b'\n') {
                        let frame = buf[consumed..consumed + lf].to_vec();
                        consumed += lf + 1;
                        let Some(rec) = parse_text_record(&frame) else {
                            continue;
                        };
                        writers
                            .lock()
                            .unwrap()
                            .entry(rec.device_name.to_string())
                            .or_insert_with(|| down_tx.clone());
                        let key = (rec.device_name.to_string(), rec.seq);
                        if plan.drop.contains(&key) {
                            continue;
                        }
                        let copies = if plan.duplicate.contains(&key) { 2 } else { 1 };
                        for _ in 0..copies {
                            if tx
                                .send(uplink_request(rec.device_name, rec.seq, rec.sent_us))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    buf.drain(..consumed);
                }
            });
        }
    });
    Ok(Forwarder {
        device_addr,
        configuration,
    })
}

async fn start_sink() -> Sink {
    Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        SinkConfig {
            routing_key: ROUTING_KEY.into(),
            secret: SECRET.into(),
            integration: IntegrationSettings {
                format: Format::Text,
                device_port: 10560,
                so_backlog: 128,
                routing_key: ROUTING_KEY.into(),
            },
        },
    )
    .await
    .unwrap()
}

fn options(
    target: SocketAddr,
    connections: u64,
    downlink_rate: f64,
    server_pid: Option<u32>,
) -> RunOptions {
    RunOptions {
        fleet: FleetConfig {
            first_index: 0,
            connections,
            name_prefix: "SN-".into(),
            format: Format::Text,
            target,
            source_ips: vec![],
            schedule: Schedule::Rate {
                per_connection_fps: 200.0,
            },
            connect_rate: 0.0,
            read_downlinks: downlink_rate > 0.0,
        },
        procs: 1,
        threads: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(600),
        drain: Duration::from_millis(500),
        downlink_rate,
        server_pid,
        integration_wait: Duration::from_secs(10),
        progress: false,
        sink_outage: None,
    }
}

async fn run_with(
    plan: FaultPlan,
    connections: u64,
    downlink_rate: f64,
    server_pid: Option<u32>,
) -> Report {
    let sink = start_sink().await;
    let forwarder = start_forwarder(sink.local_addr(), SECRET, plan)
        .await
        .unwrap();
    let report = run(
        &options(
            forwarder.device_addr,
            connections,
            downlink_rate,
            server_pid,
        ),
        Some(&sink),
    )
    .await
    .unwrap();
    sink.shutdown().await;
    report
}

fn plan(drop: &[(&str, u64)], duplicate: &[(&str, u64)]) -> FaultPlan {
    FaultPlan {
        drop: drop.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        duplicate: duplicate.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_has_no_loss_and_ordered_latency() {
    let report = run_with(FaultPlan::default(), 3, 0.0, None).await;
    let loss = report.loss.clone().unwrap();
    assert!(loss.sent > 100, "sent {}", loss.sent);
    assert_eq!(loss.lost, 0);
    assert_eq!(loss.duplicates, 0);
    assert_eq!(loss.unexpected, 0);
    assert_eq!(loss.distinct, loss.sent);
    assert_eq!(report.records_received, loss.sent);
    assert_eq!(report.connections_established, 3);
    assert_eq!(report.uplink_msgs, report.records_received);
    let l = &report.latency;
    assert!(l.count > 0);
    assert!(l.min_us > 0, "{l:?}");
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us, "{l:?}");
    assert!(report.delivered_in_window > 0 && report.delivered_fps > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_record_is_reported_lost() {
    let report = run_with(plan(&[("SN-000002", 3)], &[]), 3, 0.0, None).await;
    let loss = report.loss.unwrap();
    assert_eq!(loss.lost, 1, "{loss:?}");
    assert_eq!(loss.devices_with_loss, 1);
    assert_eq!(loss.duplicates, 0);
    assert_eq!(loss.distinct, loss.sent - 1);
    assert_eq!(report.records_received, loss.sent - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_record_is_reported_duplicate() {
    let report = run_with(
        plan(&[], &[("SN-000001", 5), ("SN-000003", 0)]),
        3,
        0.0,
        None,
    )
    .await;
    let loss = report.loss.unwrap();
    assert_eq!(loss.duplicates, 2, "{loss:?}");
    assert_eq!(loss.devices_with_duplicates, 2);
    assert_eq!(loss.lost, 0);
    assert_eq!(report.records_received, loss.sent + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() {
    let sink = start_sink().await;
    let err = start_forwarder(sink.local_addr(), "wrong", FaultPlan::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err, "Failed to validate the integration!");
    assert_eq!(sink.sessions_rejected(), 1);
    assert_eq!(sink.sessions_accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_receives_the_text_configuration() {
    let sink = start_sink().await;
    let fwd = start_forwarder(sink.local_addr(), SECRET, FaultPlan::default())
        .await
        .unwrap();
    assert_eq!(fwd.configuration.r#type, "TCP");
    let cfg: serde_json::Value = serde_json::from_str(&fwd.configuration.configuration).unwrap();
    assert_eq!(
        cfg["clientConfiguration"]["handlerConfiguration"]["handlerType"],
        "TEXT"
    );
    assert_eq!(cfg["clientConfiguration"]["port"], 10560);
}

/// Field paths documented in the README's field table (`| \`path\` | … |` rows).
fn documented_fields() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## JSON report fields")
        .expect("README has a JSON field section");
    readme[start..]
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(path, _)| path.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_holds_every_documented_field() {
    let report = run_with(FaultPlan::default(), 2, 100.0, Some(std::process::id())).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    let fields = documented_fields();
    assert!(fields.len() > 40, "only {} documented fields", fields.len());
    // No --sink-outage here: that block is null; tests/edge_outage.rs checks its fields.
    assert!(parsed["outage"].is_null(), "{}", parsed["outage"]);
    for path in fields.iter().filter(|f| !f.starts_with("outage.")) {
        let mut value = &parsed;
        for part in path.split('.') {
            value = value
                .get(part)
                .unwrap_or_else(|| panic!("JSON report lacks documented field {path}"));
        }
    }
    // And the other way round: every top-level JSON key is documented.
    for key in parsed.as_object().unwrap().keys() {
        assert!(
            fields.iter().any(|f| f == key),
            "field {key} is not documented"
        );
    }
    // Integers survive the file exactly (floats may differ in the last bit through serde_json).
    let back: Report = serde_json::from_value(parsed).unwrap();
    assert_eq!(back.loss, report.loss);
    assert_eq!(back.sent_frames, report.sent_frames);
    assert_eq!(back.latency.p99_us, report.latency.p99_us);
    assert_eq!(back.latency.curve.len(), report.latency.curve.len());

    let downlink = report.downlink.unwrap();
    assert!(downlink.sent > 10, "{downlink:?}");
    assert_eq!(downlink.received, downlink.sent, "{downlink:?}");
    assert!(downlink.rtt.min_us > 0);
    assert!(
        downlink.rtt.p50_us <= downlink.rtt.p99_us && downlink.rtt.p99_us <= downlink.rtt.max_us
    );
    let server = report.server.unwrap();
    assert_eq!(server.pid, std::process::id());
    assert!(server.peak_rss_kib >= server.rss_after_kib && server.rss_after_kib > 0);
}
