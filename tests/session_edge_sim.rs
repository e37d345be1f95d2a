//! The client session (`uplink::session`) against edge-sim on 127.0.0.1:0: the contract's
//! CONNECT answers, configuration delivery, typed uplink records, ack pausing, session
//! replacement and reconnecting by itself after edge-sim restarts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tcp_integration::edge_sim::{
    DownlinkRequest, EXAMPLE_TEXT_JSON, EdgeSim, EdgeSimHandle, IntegrationDefinition, Record,
};
use tcp_integration::proto::integration::{
    AssetUplinkDataProto, ConnectResponseCode, DeviceUplinkDataProto, UplinkMsg,
};
use tcp_integration::proto::transport::{
    KeyValueProto, KeyValueType, PostAttributeMsg, PostTelemetryMsg, TsKvListProto,
};
use tcp_integration::uplink::session::{self, SessionConfig, SessionEvent, SessionHandle};
use tokio::sync::mpsc::Receiver;

/// Guard against a hung test; never a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn definition() -> IntegrationDefinition {
    IntegrationDefinition::from_json_str(EXAMPLE_TEXT_JSON).expect("example definition")
}

async fn start_sim(record: Option<std::path::PathBuf>) -> EdgeSimHandle {
    EdgeSim::start(
        definition(),
        "127.0.0.1:0".parse().expect("addr"),
        None,
        record,
    )
    .await
    .expect("edge-sim starts")
}

fn config(addr: SocketAddr, routing_key: &str, secret: &str) -> SessionConfig {
    let mut cfg = SessionConfig::new(format!("http://{addr}"), routing_key, secret);
    cfg.reconnect_base = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(100);
    cfg
}

async fn next_event(rx: &mut Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("event before the hang guard")
        .expect("session alive")
}

async fn connect_ok(addr: SocketAddr) -> (SessionHandle, Receiver<SessionEvent>) {
    let def = definition();
    let (handle, mut rx) = session::spawn(config(addr, &def.routing_key, &def.secret));
    match next_event(&mut rx).await {
        SessionEvent::Connected(_) => {}
        other => panic!("expected Connected, got {other:?}"),
    }
    (handle, rx)
}

fn kv(key: &str, ty: KeyValueType) -> KeyValueProto {
    KeyValueProto {
        key: key.into(),
        r#type: ty as i32,
        ..Default::default()
    }
}

fn device(name: &str, temperature: f64) -> DeviceUplinkDataProto {
    DeviceUplinkDataProto {
        device_name: name.into(),
        device_type: "default".into(),
        post_telemetry_msg: Some(PostTelemetryMsg {
            ts_kv_list: vec![TsKvListProto {
                ts: 1000,
                kv: vec![KeyValueProto {
                    double_v: temperature,
                    ..kv("temperature", KeyValueType::DoubleV)
                }],
            }],
        }),
        ..Default::default()
    }
}

fn uplink_bytes(devices: Vec<DeviceUplinkDataProto>) -> Bytes {
    Bytes::from(
        UplinkMsg {
            device_data: devices,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

async fn wait_records(sim: &EdgeSimHandle, n: usize) -> Vec<Record> {
    let mut sub = sim.subscribe();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let records = sim.records();
            if records.len() >= n {
                return records;
            }
            let _ = sub.recv().await;
        }
    })
    .await
    .expect("records before the hang guard")
}

#[tokio::test]
async fn wrong_secret_is_rejected_and_retried() {
    let sim = start_sim(None).await;
    let def = definition();
    let (_handle, mut rx) = session::spawn(config(sim.grpc_addr(), &def.routing_key, "wrong"));
    let expected = SessionEvent::Rejected {
        code: ConnectResponseCode::BadCredentials,
        error_msg: "Failed to validate the integration!".into(),
    };
    assert_eq!(next_event(&mut rx).await, expected);
    // It retries by itself and gets the same answer again.
    assert_eq!(next_event(&mut rx).await, expected);
    assert!(!sim.is_connected());
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_routing_key_is_rejected_with_the_key() {
    let sim = start_sim(None).await;
    let (_handle, mut rx) = session::spawn(config(sim.grpc_addr(), "no-such-key", "whatever"));
    assert_eq!(
        next_event(&mut rx).await,
        SessionEvent::Rejected {
            code: ConnectResponseCode::BadCredentials,
            error_msg: "Failed to find the integration! Routing key: no-such-key".into(),
        }
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn right_pair_receives_configuration_and_both_converters() {
    let sim = start_sim(None).await;
    let def = definition();
    let (handle, mut rx) = session::spawn(config(sim.grpc_addr(), &def.routing_key, &def.secret));
    let SessionEvent::Connected(cfg) = next_event(&mut rx).await else {
        panic!("expected Connected");
    };
    assert!(handle.is_connected());
    assert_eq!(cfg.name, "TCP integration (TEXT)");
    assert_eq!(cfg.r#type, "TCP");
    assert_eq!(cfg.routing_key, def.routing_key);
    assert!(cfg.enabled);
    let configuration: serde_json::Value =
        serde_json::from_str(&cfg.configuration).expect("configuration is JSON text");
    assert_eq!(configuration, def.configuration);
    assert_eq!(
        configuration["clientConfiguration"]["handlerConfiguration"]["handlerType"],
        "TEXT"
    );
    assert_eq!(configuration["clientConfiguration"]["port"], 10560);

    let up = cfg.uplink_converter.expect("uplink converter");
    let down = cfg.downlink_converter.expect("downlink converter");
    assert_eq!(up.name, def.uplink_converter.name);
    let up_cfg: serde_json::Value = serde_json::from_str(&up.configuration).expect("JSON");
    assert_eq!(up_cfg, def.uplink_converter.configuration);
    assert!(
        up_cfg["decoder"]
            .as_str()
            .expect("decoder")
            .contains("deviceName")
    );
    let down_def = def
        .downlink_converter
        .expect("example has a downlink converter");
    assert_eq!(down.name, down_def.name);
    let down_cfg: serde_json::Value = serde_json::from_str(&down.configuration).expect("JSON");
    assert_eq!(down_cfg, down_def.configuration);
    assert!(
        down_cfg["encoder"]
            .as_str()
            .expect("encoder")
            .contains("data: JSON.stringify(msg)")
    );
    assert_ne!(
        (up.converter_id_msb, up.converter_id_lsb),
        (down.converter_id_msb, down.converter_id_lsb)
    );
    assert_ne!((cfg.integration_id_msb, cfg.integration_id_lsb), (0, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn uplinks_are_recorded_as_typed_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record_path = dir.path().join("records.jsonl");
    let sim = start_sim(Some(record_path.clone())).await;
    let (handle, mut rx) = connect_ok(sim.grpc_addr()).await;

    let first = DeviceUplinkDataProto {
        device_name: "SN-002".into(),
        device_type: "default".into(),
        device_label: "Lab sensor".into(),
        customer_name: "Customer A".into(),
        group_name: "Sensors".into(),
        post_telemetry_msg: Some(PostTelemetryMsg {
            ts_kv_list: vec![TsKvListProto {
                ts: 1_700_000_000_000,
                kv: vec![
                    KeyValueProto {
                        double_v: 25.7,
                        ..kv("temperature", KeyValueType::DoubleV)
                    },
                    KeyValueProto {
                        long_v: 69,
                        ..kv("humidity", KeyValueType::LongV)
                    },
                ],
            }],
        }),
        post_attributes_msg: Some(PostAttributeMsg {
            kv: vec![
                KeyValueProto {
                    string_v: "1.0".into(),
                    ..kv("fw", KeyValueType::StringV)
                },
                KeyValueProto {
                    bool_v: true,
                    ..kv("on", KeyValueType::BooleanV)
                },
                KeyValueProto {
                    json_v: r#"{"a":[1,2]}"#.into(),
                    ..kv("cfg", KeyValueType::JsonV)
                },
            ],
            shared: false,
        }),
    };
    handle
        .send_uplink(uplink_bytes(vec![first]))
        .expect("connected");
    let second = UplinkMsg {
        device_data: vec![device("SN-003", -1.5)],
        asset_data: vec![AssetUplinkDataProto {
            asset_name: "Building 1".into(),
            asset_type: "building".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    handle
        .send_uplink(Bytes::from(second.encode_to_vec()))
        .expect("connected");
    for _ in 0..2 {
        assert_eq!(
            next_event(&mut rx).await,
            SessionEvent::UplinkAck {
                success: true,
                error_msg: String::new()
            }
        );
    }

    let text = std::fs::read_to_string(&record_path).expect("record file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let recv_ms = |line: &str| -> i64 {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        v["recv_ms"].as_i64().expect("recv_ms")
    };
    let expected = [
        format!(
            r#"{{"seq":1,"recv_ms":{},"entity":"DEVICE","name":"SN-002","type":"default","label":"Lab sensor","customer":"Customer A","group":"Sensors","telemetry":[{{"ts":1700000000000,"values":{{"temperature":{{"DOUBLE_V":25.7}},"humidity":{{"LONG_V":69}}}}}}],"attributes":{{"fw":{{"STRING_V":"1.0"}},"on":{{"BOOLEAN_V":true}},"cfg":{{"JSON_V":"{{\"a\":[1,2]}}"}}}}}}"#,
            recv_ms(lines[0])
        ),
        format!(
            r#"{{"seq":2,"recv_ms":{},"entity":"DEVICE","name":"SN-003","type":"default","label":"","customer":"","group":"","telemetry":[{{"ts":1000,"values":{{"temperature":{{"DOUBLE_V":-1.5}}}}}}],"attributes":{{}}}}"#,
            recv_ms(lines[1])
        ),
        format!(
            r#"{{"seq":3,"recv_ms":{},"entity":"ASSET","name":"Building 1","type":"building","label":"","customer":"","group":"","telemetry":[],"attributes":{{}}}}"#,
            recv_ms(lines[2])
        ),
    ];
    for (line, want) in lines.iter().zip(&expected) {
        assert_eq!(line, want);
    }
    let records: Vec<String> = sim.records().iter().map(Record::to_json_line).collect();
    assert_eq!(records, expected);
    sim.shutdown().await;
}

#[tokio::test]
async fn paused_acks_are_held_and_released_in_order() {
    let sim = start_sim(None).await;
    let (handle, mut rx) = connect_ok(sim.grpc_addr()).await;
    sim.set_ack_paused(true);
    for i in 0..4 {
        handle
            .send_uplink(uplink_bytes(vec![device(&format!("D{i}"), f64::from(i))]))
            .expect("connected");
        if i == 2 {
            // Once record 3 is in, the emulator has decided the first two acks.
            wait_records(&sim, 3).await;
        }
    }
    wait_records(&sim, 4).await;
    // Uplink 3's ack is decided before uplink 4 is read, so all of 1..3 were held; a downlink
    // queued now must overtake them.
    sim.post_downlink(&DownlinkRequest {
        device_name: "D0".into(),
        device_type: None,
        msg_type: None,
        data: Some(serde_json::json!({"firmware": "2.0"})),
        metadata: Default::default(),
    })
    .expect("session connected");
    sim.set_ack_paused(false);
    match next_event(&mut rx).await {
        SessionEvent::Downlink(d) => assert_eq!(d.device_name, "D0"),
        other => panic!("expected the downlink before any ack, got {other:?}"),
    }
    for _ in 0..4 {
        assert!(matches!(
            next_event(&mut rx).await,
            SessionEvent::UplinkAck { success: true, .. }
        ));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn newest_session_receives_downlinks() {
    let sim = start_sim(None).await;
    let (old, mut old_rx) = connect_ok(sim.grpc_addr()).await;
    let (_new, mut new_rx) = connect_ok(sim.grpc_addr()).await;
    sim.post_downlink(&DownlinkRequest {
        device_name: "SN-002".into(),
        device_type: None,
        msg_type: Some("RPC_CALL_FROM_SERVER_TO_DEVICE".into()),
        data: Some(serde_json::json!("reboot")),
        metadata: Default::default(),
    })
    .expect("connected");
    match next_event(&mut new_rx).await {
        SessionEvent::Downlink(d) => {
            let tb = d.tb_msg_proto.expect("tbMsgProto");
            assert_eq!(tb.r#type, "RPC_CALL_FROM_SERVER_TO_DEVICE");
            assert_eq!(tb.data, "reboot");
        }
        other => panic!("expected a downlink, got {other:?}"),
    }
    // The old stream still works for uplinks; had it received the downlink, that would have
    // come before this ack.
    old.send_uplink(uplink_bytes(vec![device("SN-002", 1.0)]))
        .expect("old stream is still open");
    assert!(matches!(
        next_event(&mut old_rx).await,
        SessionEvent::UplinkAck { success: true, .. }
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn session_reconnects_after_edge_sim_restart() {
    let sim = start_sim(None).await;
    let addr = sim.grpc_addr();
    let (handle, mut rx) = connect_ok(addr).await;
    sim.shutdown().await;
    match next_event(&mut rx).await {
        SessionEvent::Disconnected { reason } => assert!(!reason.is_empty()),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(
        handle.send_uplink(uplink_bytes(vec![device("SN-002", 1.0)])),
        Err(session::SessionError::NotConnected)
    );

    let sim = EdgeSim::start(definition(), addr, None, None)
        .await
        .expect("restart on the same port");
    match next_event(&mut rx).await {
        SessionEvent::Connected(cfg) => assert_eq!(cfg.name, "TCP integration (TEXT)"),
        other => panic!("expected Connected, got {other:?}"),
    }
    handle
        .send_uplink(uplink_bytes(vec![device("SN-002", 25.7)]))
        .expect("connected again");
    assert!(matches!(
        next_event(&mut rx).await,
        SessionEvent::UplinkAck { success: true, .. }
    ));
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, "SN-002");
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_the_session() {
    let sim = start_sim(None).await;
    let (handle, mut rx) = connect_ok(sim.grpc_addr()).await;
    handle.shutdown();
    // The task ends and drops its sender: the event stream closes.
    let end = tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("closed before the hang guard");
    assert_eq!(end, None);
    assert_eq!(
        handle.send_uplink(Bytes::new()),
        Err(session::SessionError::Shutdown)
    );
    sim.shutdown().await;
}

/// A reconnect request with no live stream (here: the second of two back-to-back requests, made
/// after the first already ended the stream) is not kept for later: the next accepted stream
/// stays up and acknowledges uplinks, and a later request restarts it. (`session_reconnect.rs`
/// shows the stale request is not acted on at all.)
#[tokio::test]
async fn a_reconnect_request_without_a_live_stream_does_not_drop_the_next_one() {
    let sim = start_sim(None).await;
    let (handle, mut rx) = connect_ok(sim.grpc_addr()).await;
    handle.reconnect();
    handle.reconnect();
    match next_event(&mut rx).await {
        SessionEvent::Connected(_) => {}
        other => panic!("expected the new stream's Connected, got {other:?}"),
    }
    // The owner may have a request in flight for the old stream when the new one is accepted.
    handle
        .send_uplink(uplink_bytes(vec![device("SN-R", 21.5)]))
        .expect("the new stream takes uplinks");
    assert_eq!(
        next_event(&mut rx).await,
        SessionEvent::UplinkAck {
            success: true,
            error_msg: String::new(),
        }
    );
    assert_eq!(wait_records(&sim, 1).await[0].name, "SN-R");
    // A reconnect of the live stream still works.
    handle.reconnect();
    assert!(matches!(
        next_event(&mut rx).await,
        SessionEvent::Connected(_)
    ));
    sim.shutdown().await;
}
