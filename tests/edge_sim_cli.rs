//! `tcp-integration edge-sim` as a process: loads a shipped example definition, accepts a
//! client session, records its uplink to the `--record` file and answers the admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tcp_integration::edge_sim::IntegrationDefinition;
use tcp_integration::proto::integration::{DeviceUplinkDataProto, UplinkMsg};
use tcp_integration::uplink::session::{self, SessionConfig, SessionEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Guard against a hung test; never a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Kills the child we started when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("event before the hang guard")
        .expect("session alive")
}

#[tokio::test]
async fn edge_sim_binary_serves_records_and_admin_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("uplinks.jsonl");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tcp-binary.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcp-integration"))
        .args([
            "edge-sim",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--integration")
        .arg(example)
        .arg("--record")
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let child = KillOnDrop(child);

    // The first two stdout lines name the bound addresses.
    let lines = tokio::time::timeout(
        HANG_GUARD,
        tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                reader.read_line(&mut line).expect("stdout line");
                lines.push(line);
            }
            lines
        }),
    )
    .await
    .expect("addresses printed before the hang guard")
    .expect("reader thread");
    let grpc: SocketAddr = lines[0]
        .rsplit("grpc://")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("gRPC address in {:?}", lines[0]));
    let http: SocketAddr = lines[1]
        .rsplit("http://")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("HTTP address in {:?}", lines[1]));

    let def = IntegrationDefinition::load(std::path::Path::new(example)).expect("example");
    let (handle, mut rx) = session::spawn(SessionConfig::new(
        format!("http://{grpc}"),
        def.routing_key.clone(),
        def.secret.clone(),
    ));
    let SessionEvent::Connected(cfg) = next(&mut rx).await else {
        panic!("expected Connected");
    };
    let cfg_json: serde_json::Value = serde_json::from_str(&cfg.configuration).expect("JSON");
    assert_eq!(
        cfg_json["clientConfiguration"]["handlerConfiguration"],
        serde_json::json!({"handlerType":"BINARY","byteOrder":"LITTLE_ENDIAN","maxFrameLength":128,
            "lengthFieldOffset":4,"lengthFieldLength":1,"lengthAdjustment":0,
            "initialBytesToStrip":5,"failFast":false})
    );

    let uplink = UplinkMsg {
        device_data: vec![DeviceUplinkDataProto {
            device_name: "SN-002".into(),
            device_type: "default".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    handle
        .send_uplink(Bytes::from(uplink.encode_to_vec()))
        .expect("connected");
    assert!(matches!(
        next(&mut rx).await,
        SessionEvent::UplinkAck { success: true, .. }
    ));
    let text = std::fs::read_to_string(&record).expect("record file");
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).expect("one JSON line");
    assert_eq!(line["seq"], 1);
    assert_eq!(line["name"], "SN-002");
    assert_eq!(line["telemetry"], serde_json::json!([]));

    let mut stream = tokio::net::TcpStream::connect(http)
        .await
        .expect("admin API");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("header end");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).expect("JSON body"),
        serde_json::json!({"status":"ok","connected":true,"records":1})
    );
    drop(child);
}
