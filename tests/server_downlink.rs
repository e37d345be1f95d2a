//! Downlinks end to end: written at once to a connected device with the exact bytes the
//! encoder produced plus ThingsBoard's LF; held for a disconnected device until its next
//! uplink (on whichever shard it lands); dropped after the hold time; suffix configurable.

mod common;

use std::time::Duration;

use common::*;
use tcp_integration::metrics::{self, Counter};

/// The docs' encoder is `JSON.stringify(msg)`: the device receives the JSON text + LF.
const FIRMWARE: &str = r#"{"firmware":"1.2.3"}"#;

#[test]
fn downlink_to_connected_device_arrives_at_once_with_exact_bytes() {
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut device = h.connect();
    send(&mut device, b"SN-002,default,temperature,25.7\n");
    h.wait_records(1);
    h.downlink("SN-002", serde_json::json!({"firmware": "1.2.3"}));
    let bytes = read_exact_within(&mut device, FIRMWARE.len() + 1);
    assert_eq!(bytes, format!("{FIRMWARE}\n").as_bytes());
}

#[test]
fn downlink_waits_for_next_uplink() {
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut first = h.connect();
    send(&mut first, b"SN-003,default,temperature,25.7\n");
    h.wait_records(1);
    let closed = metrics::get(Counter::ConnectionsClosed);
    drop(first);
    // Let the server see the close before the downlink arrives.
    wait_closed(closed, 1);
    h.downlink("SN-003", serde_json::json!({"firmware": "1.2.3"}));
    let mut second = h.connect();
    assert_silent(&mut second, Duration::from_millis(300));
    send(&mut second, b"SN-003,default,temperature,26.0\n");
    let bytes = read_exact_within(&mut second, FIRMWARE.len() + 1);
    assert_eq!(bytes, format!("{FIRMWARE}\n").as_bytes());
}

/// Waits until the server has closed `n` more connections than `before`.
fn wait_closed(before: u64, n: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while metrics::get(Counter::ConnectionsClosed) < before + n {
        assert!(
            std::time::Instant::now() < deadline,
            "server never saw the close"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn device_reconnecting_on_another_shard_still_gets_its_downlink() {
    // Two shards; the kernel picks the shard of each new connection by hash, so over several
    // reconnects the device lands on both. Routing and holding live in the uplink core, so
    // every round must deliver wherever the connection landed.
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[("TCPI_NR_SHARDS", "2")]);
    let mut uplinks = 0;
    for round in 0..6 {
        let mut conn = h.connect();
        send(
            &mut conn,
            format!("SN-MOVE,default,round,{round}\n").as_bytes(),
        );
        uplinks += 1;
        h.wait_records(uplinks);
        let closed = metrics::get(Counter::ConnectionsClosed);
        drop(conn);
        wait_closed(closed, 1);
        // Held: the device has no live connection now.
        let firmware = format!(r#"{{"firmware":"{round}"}}"#);
        h.downlink(
            "SN-MOVE",
            serde_json::json!({ "firmware": round.to_string() }),
        );
        std::thread::sleep(Duration::from_millis(20));
        let mut again = h.connect();
        send(
            &mut again,
            format!("SN-MOVE,default,round,{round}\n").as_bytes(),
        );
        uplinks += 1;
        let bytes = read_exact_within(&mut again, firmware.len() + 1);
        assert_eq!(bytes, format!("{firmware}\n").as_bytes(), "round {round}");
        h.wait_records(uplinks);
    }
}

#[test]
fn held_downlinks_expire_as_configured() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_DOWNLINK_HOLD_SECS", "1")],
    );
    let before = metrics::get(Counter::DownlinksExpired);
    h.downlink("SN-GONE", serde_json::json!({"firmware": "1.2.3"}));
    let deadline = std::time::Instant::now() + PATIENCE;
    while metrics::get(Counter::DownlinksExpired) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "held downlink never expired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut device = h.connect();
    send(&mut device, b"SN-GONE,default,temperature,1\n");
    h.wait_records(1);
    assert_silent(&mut device, Duration::from_millis(300));
}

#[test]
fn downlink_suffix_none_writes_exact_encoder_bytes() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_DOWNLINK_SUFFIX", "none")],
    );
    let mut device = h.connect();
    send(&mut device, b"SN-004,default,temperature,25.7\n");
    h.wait_records(1);
    h.downlink("SN-004", serde_json::json!({"firmware": "1.2.3"}));
    h.downlink("SN-004", serde_json::json!({"firmware": "1.2.4"}));
    let bytes = read_exact_within(&mut device, 2 * FIRMWARE.len());
    assert_eq!(bytes, br#"{"firmware":"1.2.3"}{"firmware":"1.2.4"}"#);
}
