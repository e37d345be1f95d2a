//! edge-sim's reject mode over its real interfaces: a rule set with `PUT /reject` answers the
//! matching uplinks with `UplinkResponseMsg{success=false, errorMsg}` in acknowledgement order
//! (also while acks are paused), does not record them, counts them, ends after `count`, and
//! `GET`/`DELETE /reject` read and clear it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tcp_integration::edge_sim::{EXAMPLE_TEXT_JSON, EdgeSim, EdgeSimHandle, IntegrationDefinition};
use tcp_integration::proto::integration::{DeviceUplinkDataProto, UplinkMsg};
use tcp_integration::uplink::session::{self, SessionConfig, SessionEvent, SessionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;

/// Guard against a hung test; never a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn definition() -> IntegrationDefinition {
    IntegrationDefinition::from_json_str(EXAMPLE_TEXT_JSON).unwrap()
}

async fn next_event(rx: &mut Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("event before the hang guard")
        .expect("session alive")
}

/// The next uplink acknowledgement as (success, errorMsg).
async fn next_ack(rx: &mut Receiver<SessionEvent>) -> (bool, String) {
    loop {
        if let SessionEvent::UplinkAck { success, error_msg } = next_event(rx).await {
            return (success, error_msg);
        }
    }
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

fn uplink(devices: &[&str]) -> Bytes {
    UplinkMsg {
        device_data: devices
            .iter()
            .map(|d| DeviceUplinkDataProto {
                device_name: (*d).to_owned(),
                device_type: "default".to_owned(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// One HTTP/1.1 request with `Connection: close`; returns status and the JSON body (axum
/// answers these small bodies with a Content-Length, not chunked).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(rest).unwrap())
}

fn names(sim: &EdgeSimHandle) -> Vec<String> {
    sim.records().into_iter().map(|r| r.name).collect()
}

#[tokio::test]
async fn reject_rule_answers_success_false_in_order_and_records_nothing() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = EdgeSim::start(definition(), any, Some(any), None)
        .await
        .unwrap();
    let admin = sim.http_addr().unwrap();
    let (handle, mut rx) = connect(&sim).await;

    let (status, body) = http(
        admin,
        "PUT",
        "/reject",
        r#"{"deviceName":"SN-BAD","count":2,"errorMsg":"Rate limit exceeded"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"rule":{"deviceName":"SN-BAD","count":2,"errorMsg":"Rate limit exceeded"},"rejectedUplinks":0})
    );

    handle.send_uplink(uplink(&["SN-GOOD"])).unwrap();
    assert_eq!(next_ack(&mut rx).await, (true, String::new()));
    // The whole uplink is rejected when it carries the device.
    handle.send_uplink(uplink(&["SN-GOOD", "SN-BAD"])).unwrap();
    assert_eq!(
        next_ack(&mut rx).await,
        (false, "Rate limit exceeded".to_owned())
    );
    assert_eq!(names(&sim), vec!["SN-GOOD"]);
    let (_, body) = http(admin, "GET", "/reject", "").await;
    assert_eq!(body["rule"]["count"], 1);
    assert_eq!(body["rejectedUplinks"], 1);

    // While acks are paused, a rejection keeps its place in the acknowledgement order.
    sim.set_ack_paused(true);
    handle.send_uplink(uplink(&["SN-BAD"])).unwrap();
    handle.send_uplink(uplink(&["SN-BAD"])).unwrap();
    tokio::time::timeout(HANG_GUARD, async {
        while sim.records().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    sim.set_ack_paused(false);
    assert_eq!(
        next_ack(&mut rx).await,
        (false, "Rate limit exceeded".to_owned())
    );
    assert_eq!(next_ack(&mut rx).await, (true, String::new()));
    assert_eq!(names(&sim), vec!["SN-GOOD", "SN-BAD"]);
    assert_eq!(sim.rejected_uplinks(), 2);
    assert_eq!(sim.reject_rule(), None, "the counted rule ended");

    // An uncounted rule for every uplink, then cleared with DELETE.
    let (status, _) = http(admin, "PUT", "/reject", r#"{"errorMsg":""}"#).await;
    assert_eq!(status, 200);
    handle.send_uplink(uplink(&["SN-OTHER"])).unwrap();
    assert_eq!(next_ack(&mut rx).await, (false, String::new()));
    let (status, body) = http(admin, "DELETE", "/reject", "").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"rule":null,"rejectedUplinks":3}));
    handle.send_uplink(uplink(&["SN-OTHER"])).unwrap();
    assert_eq!(next_ack(&mut rx).await, (true, String::new()));
    assert_eq!(names(&sim), vec!["SN-GOOD", "SN-BAD", "SN-OTHER"]);
    sim.shutdown().await;
}
