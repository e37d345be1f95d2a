//! Held downlinks expire after the configured hold time: counted once, and never written to the
//! device when it comes back. One test per binary: the counters are process-wide, so the values
//! asserted here are exactly this test's.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tcp_integration::metrics::{self, Counter, Gauge};

#[test]
fn held_downlinks_expire_as_configured() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_DOWNLINK_HOLD_SECS", "1")],
    );
    h.downlink("SN-GONE", serde_json::json!({"firmware": "1.2.3"}));
    let deadline = Instant::now() + PATIENCE;
    while metrics::get(Counter::DownlinksExpired) == 0 {
        assert!(Instant::now() < deadline, "held downlink never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metrics::get(Counter::DownlinksReceived), 1);
    assert_eq!(metrics::get(Counter::DownlinksHeld), 1);
    assert_eq!(metrics::get(Counter::DownlinksExpired), 1);

    let mut device = h.connect();
    send(&mut device, b"SN-GONE,default,temperature,1\n");
    h.wait_records(1);
    // A downlink posted now is the first thing the device receives: the expired one was never
    // written on its uplink.
    h.downlink("SN-GONE", serde_json::json!({"firmware": "after"}));
    let marker = r#"{"firmware":"after"}"#;
    let bytes = read_exact_within(&mut device, marker.len() + 1);
    assert_eq!(bytes, format!("{marker}\n").as_bytes());
    assert_eq!(metrics::get(Counter::DownlinksReceived), 2);
    assert_eq!(metrics::get(Counter::DownlinksHeld), 1);
    assert_eq!(metrics::get(Counter::DownlinksExpired), 1);
    // The gauge is refreshed on the uplink core's timer.
    let deadline = Instant::now() + PATIENCE;
    while metrics::gauge(Gauge::DownlinksHeldNow) != 0 {
        assert!(Instant::now() < deadline, "held-downlinks gauge stuck");
        std::thread::sleep(Duration::from_millis(20));
    }
}
