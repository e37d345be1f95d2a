//! edge-sim's HTTP admin API driven over real HTTP/1.1: downlinks posted to `/downlink` reach
//! the connected client with the posted fields, `PUT /integration` reaches it as update
//! messages, and `/devices`, `/uplinks`, `/health` report what was received.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tcp_integration::edge_sim::{EXAMPLE_TEXT_JSON, EdgeSim, EdgeSimHandle, IntegrationDefinition};
use tcp_integration::proto::integration::{DeviceUplinkDataProto, UplinkMsg};
use tcp_integration::proto::transport::{
    KeyValueProto, KeyValueType, PostTelemetryMsg, TsKvListProto,
};
use tcp_integration::uplink::session::{self, SessionConfig, SessionEvent, SessionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;

/// Guard against a hung test; never a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn definition() -> IntegrationDefinition {
    IntegrationDefinition::from_json_str(EXAMPLE_TEXT_JSON).expect("example definition")
}

async fn start_sim() -> EdgeSimHandle {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    EdgeSim::start(definition(), any, Some(any), None)
        .await
        .expect("edge-sim starts")
}

async fn next_event(rx: &mut Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("event before the hang guard")
        .expect("session alive")
}

async fn connect(sim: &EdgeSimHandle) -> (SessionHandle, Receiver<SessionEvent>) {
    let def = definition();
    let mut cfg = SessionConfig::new(
        format!("http://{}", sim.grpc_addr()),
        def.routing_key,
        def.secret,
    );
    cfg.reconnect_base = Duration::from_millis(20);
    let (handle, mut rx) = session::spawn(cfg);
    assert!(matches!(
        next_event(&mut rx).await,
        SessionEvent::Connected(_)
    ));
    (handle, rx)
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut response))
        .await
        .expect("response before the hang guard")
        .expect("read");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("header end");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn posted_downlink_arrives_with_the_posted_fields() {
    let sim = start_sim().await;
    let admin = sim.http_addr().expect("admin API");
    let (_handle, mut rx) = connect(&sim).await;
    let (status, body) = http(
        admin,
        "POST",
        "/downlink",
        Some(r#"{"deviceName":"SN-002","deviceType":"thermometer","msgType":"ATTRIBUTES_UPDATED","data":{"firmware":"1.2.3"},"metadata":{"scope":"SHARED_SCOPE","retries":3}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent_id = json(&body)["id"].as_str().expect("id").to_owned();

    let SessionEvent::Downlink(d) = next_event(&mut rx).await else {
        panic!("expected a downlink");
    };
    assert_eq!(d.device_name, "SN-002");
    assert_eq!(d.device_type, "thermometer");
    let tb = d.tb_msg_proto.expect("tbMsgProto");
    assert_eq!(tb.id, sent_id);
    assert_eq!(tb.id.len(), 36);
    assert_eq!(tb.r#type, "ATTRIBUTES_UPDATED");
    assert_eq!(tb.entity_type, "DEVICE");
    assert_eq!(tb.data_type, 0);
    assert_eq!(tb.data, r#"{"firmware":"1.2.3"}"#);
    assert!(tb.ts > 0);
    let meta = tb.meta_data.expect("metadata").data;
    assert_eq!(meta.get("scope").map(String::as_str), Some("SHARED_SCOPE"));
    assert_eq!(meta.get("retries").map(String::as_str), Some("3"));
    assert_eq!(meta.len(), 2);

    // A string `data` is sent as that string; msgType defaults to ATTRIBUTES_UPDATED.
    let (status, _) = http(
        admin,
        "POST",
        "/downlink",
        Some(r#"{"deviceName":"SN-002","data":"raw text"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let SessionEvent::Downlink(d) = next_event(&mut rx).await else {
        panic!("expected a downlink");
    };
    let tb = d.tb_msg_proto.expect("tbMsgProto");
    assert_eq!(
        (tb.r#type.as_str(), tb.data.as_str()),
        ("ATTRIBUTES_UPDATED", "raw text")
    );
    assert_eq!(d.device_type, "default");
    sim.shutdown().await;
}

#[tokio::test]
async fn downlink_without_a_session_is_503() {
    let sim = start_sim().await;
    let admin = sim.http_addr().expect("admin API");
    let (status, body) = http(
        admin,
        "POST",
        "/downlink",
        Some(r#"{"deviceName":"SN-002","data":{}}"#),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(json(&body)["error"], "no integration session is connected");
    let (status, body) = http(admin, "GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({"status":"ok","connected":false,"records":0})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn put_integration_pushes_integration_and_converter_updates() {
    let sim = start_sim().await;
    let admin = sim.http_addr().expect("admin API");
    let (_handle, mut rx) = connect(&sim).await;

    // 1. Only the uplink decoder changes: one ConverterUpdateMsg, no IntegrationUpdateMsg.
    let mut def = definition();
    def.uplink_converter.configuration["decoder"] = serde_json::json!("return {deviceName: 'x'};");
    let (status, body) = http(
        admin,
        "PUT",
        "/integration",
        Some(&serde_json::to_string(&def).expect("json")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"integrationUpdate": false, "converterUpdates": [def.uplink_converter.name], "delivered": true})
    );
    let SessionEvent::ConverterUpdate(conv) = next_event(&mut rx).await else {
        panic!("expected a converter update");
    };
    assert_eq!(conv.name, def.uplink_converter.name);
    let conv_cfg: serde_json::Value = serde_json::from_str(&conv.configuration).expect("JSON");
    assert_eq!(conv_cfg["decoder"], "return {deviceName: 'x'};");

    // 2. Port and enabled change: one IntegrationUpdateMsg with the new configuration.
    def.configuration["clientConfiguration"]["port"] = serde_json::json!(10561);
    def.enabled = false;
    let (status, body) = http(
        admin,
        "PUT",
        "/integration",
        Some(&serde_json::to_string(&def).expect("json")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["integrationUpdate"], true);
    let SessionEvent::IntegrationUpdate(cfg) = next_event(&mut rx).await else {
        panic!("expected an integration update");
    };
    assert!(!cfg.enabled);
    let cfg_json: serde_json::Value = serde_json::from_str(&cfg.configuration).expect("JSON");
    assert_eq!(cfg_json["clientConfiguration"]["port"], 10561);
    assert_eq!(
        cfg.uplink_converter.expect("uplink").configuration,
        conv.configuration
    );

    // 3. An invalid definition is refused and changes nothing.
    let (status, body) = http(
        admin,
        "PUT",
        "/integration",
        Some(r#"{"name":"x","type":"TCP","routingKey":"k","secret":"","configuration":{},"uplinkConverter":{"name":"u","configuration":{}}}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .expect("error")
            .contains("`secret`")
    );
    assert_eq!(sim.definition(), def);
    sim.shutdown().await;
}

#[tokio::test]
async fn devices_and_uplinks_report_what_was_received() {
    let sim = start_sim().await;
    let admin = sim.http_addr().expect("admin API");
    let (handle, mut rx) = connect(&sim).await;
    let uplink = |ts: i64, temperature: f64, humidity: Option<i64>| {
        let mut kv = vec![KeyValueProto {
            key: "temperature".into(),
            r#type: KeyValueType::DoubleV as i32,
            double_v: temperature,
            ..Default::default()
        }];
        if let Some(h) = humidity {
            kv.push(KeyValueProto {
                key: "humidity".into(),
                r#type: KeyValueType::LongV as i32,
                long_v: h,
                ..Default::default()
            });
        }
        Bytes::from(
            UplinkMsg {
                device_data: vec![DeviceUplinkDataProto {
                    device_name: "SN-002".into(),
                    device_type: "default".into(),
                    post_telemetry_msg: Some(PostTelemetryMsg {
                        ts_kv_list: vec![TsKvListProto { ts, kv }],
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    handle
        .send_uplink(uplink(2000, 25.7, Some(69)))
        .expect("connected");
    // Older timestamp: not the latest value.
    handle
        .send_uplink(uplink(1000, 20.0, None))
        .expect("connected");
    for _ in 0..2 {
        assert!(matches!(
            next_event(&mut rx).await,
            SessionEvent::UplinkAck { success: true, .. }
        ));
    }

    let (status, body) = http(admin, "GET", "/devices/SN-002/telemetry", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({
            "temperature": {"ts": 2000, "type": "DOUBLE_V", "value": 25.7},
            "humidity": {"ts": 2000, "type": "LONG_V", "value": 69}
        })
    );
    let (status, body) = http(admin, "GET", "/devices", None).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["SN-002"]["type"], "default");
    assert_eq!(
        json(&body)["SN-002"]["telemetry"]["temperature"]["value"],
        25.7
    );
    let (status, _) = http(admin, "GET", "/devices/nope/telemetry", None).await;
    assert_eq!(status, 404);

    let (status, body) = http(admin, "GET", "/uplinks?after=1", None).await;
    assert_eq!(status, 200);
    let records = json(&body);
    let records = records.as_array().expect("array");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["seq"], 2);
    assert_eq!(
        records[0]["telemetry"],
        serde_json::json!([{"ts": 1000, "values": {"temperature": {"DOUBLE_V": 20.0}}}])
    );
    let (_, body) = http(admin, "GET", "/uplinks", None).await;
    let all: Vec<String> = json(&body)
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r.to_string())
        .collect();
    let from_handle: Vec<String> = sim
        .records()
        .iter()
        .map(|r| serde_json::to_value(r).expect("json").to_string())
        .collect();
    assert_eq!(all, from_handle);
    let (_, body) = http(admin, "GET", "/health", None).await;
    assert_eq!(
        json(&body),
        serde_json::json!({"status":"ok","connected":true,"records":2})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn statistics_are_acknowledged_recorded_apart_and_listed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record_path = dir.path().join("records.jsonl");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sim = EdgeSim::start(definition(), any, Some(any), Some(record_path.clone()))
        .await
        .expect("edge-sim starts");
    let admin = sim.http_addr().expect("admin API");
    let (handle, mut rx) = connect(&sim).await;
    let stats = |ts: i64, messages: u64, state| {
        tcp_integration::uplink::statistics::encode_statistics_uplink(
            &tcp_integration::uplink::statistics::PeriodStatistics {
                messages_count: messages,
                errors_count: 1,
                state,
            },
            ts,
        )
    };
    use tcp_integration::uplink::statistics::LifecycleState;
    handle
        .send_uplink(stats(1000, 4, LifecycleState::Started))
        .expect("connected");
    handle
        .send_uplink(stats(2000, 0, LifecycleState::Stopped))
        .expect("connected");
    for _ in 0..2 {
        assert!(matches!(
            next_event(&mut rx).await,
            SessionEvent::UplinkAck { success: true, .. }
        ));
    }
    assert!(sim.records().is_empty(), "statistics are not records");
    let got = sim.statistics();
    assert_eq!(
        got.iter()
            .map(|s| (s.seq, s.messages_count(), s.errors_count(), s.state()))
            .collect::<Vec<_>>(),
        vec![
            (1, Some(4), Some(1), Some("STARTED")),
            (2, Some(0), Some(1), Some("STOPPED"))
        ]
    );

    let (status, body) = http(admin, "GET", "/statistics?after=1", None).await;
    assert_eq!(status, 200);
    let listed = json(&body);
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["kind"], "statistics");
    assert_eq!(listed[0]["seq"], 2);
    assert_eq!(
        listed[0]["telemetry"],
        serde_json::json!([{"ts": 2000, "values": {
            "messagesCount": {"LONG_V": 0},
            "errorsCount": {"LONG_V": 1},
            "state": {"STRING_V": "STOPPED"}
        }}])
    );
    let (_, body) = http(admin, "GET", "/statistics", None).await;
    assert_eq!(json(&body).as_array().expect("array").len(), 2);

    let lines: Vec<String> = std::fs::read_to_string(&record_path)
        .expect("record file")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        got.iter().map(|s| s.to_json_line()).collect::<Vec<_>>()
    );
    sim.shutdown().await;
}
