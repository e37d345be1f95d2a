//! Downlinks end to end: written at once to a connected device with the exact bytes the
//! encoder produced plus ThingsBoard's LF; held for a disconnected device until its next
//! uplink; suffix configurable. Reconnecting on another shard and the hold time's expiry have
//! their own test binaries (`server_downlink_shards.rs`, `server_downlink_expiry.rs`): they read
//! process-wide state (log lines, counters) that other tests in the same binary would disturb.

mod common;

use common::*;

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
    // The server's close (EOF) comes after it deregistered the connection.
    close_and_wait_eof(first);
    h.downlink("SN-003", serde_json::json!({"firmware": "1.2.3"}));
    let mut second = h.connect();
    // Another device's uplink on the same connection routes that device here, and its
    // downlink, posted after SN-003's, is what arrives first: SN-003's downlink was held (not
    // written on connect, nor on another device's uplink).
    send(&mut second, b"SN-MARK,default,temperature,1\n");
    h.wait_records(2);
    h.downlink("SN-MARK", serde_json::json!({"firmware": "marker"}));
    let marker = r#"{"firmware":"marker"}"#;
    let bytes = read_exact_within(&mut second, marker.len() + 1);
    assert_eq!(bytes, format!("{marker}\n").as_bytes());
    send(&mut second, b"SN-003,default,temperature,26.0\n");
    let bytes = read_exact_within(&mut second, FIRMWARE.len() + 1);
    assert_eq!(bytes, format!("{FIRMWARE}\n").as_bytes());
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
