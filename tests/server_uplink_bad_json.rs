//! A corrupted JSON stream is counted once — everything after the corruption is discarded, as
//! ThingsBoard does — and other connections keep working. One test per binary: the counters
//! are process-wide, so the values asserted here are exactly this test's traffic.

mod common;

use common::*;
use tcp_integration::metrics::{self, Counter};

#[test]
fn garbage_json_stream_is_counted_once_and_other_connections_work() {
    let port = reserve_port();
    let h = Harness::start(json_example(port.port), port, &[]);
    let mut bad = h.connect();
    send(&mut bad, b"this is not json {\"deviceName\":\"X\"}");
    let mut good = h.connect();
    send(
        &mut good,
        br#"{"deviceName":"SN-JSON","deviceType":"default","temperature":1.5,"humidity":2}"#,
    );
    let records = h.wait_records(1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, "SN-JSON");
    // A well-formed object after the corruption is discarded too.
    send(
        &mut bad,
        br#"{"deviceName":"SN-LATE","deviceType":"default","temperature":9}"#,
    );
    // The server handles a connection's bytes in order: its close (EOF) comes after it framed
    // everything the device sent.
    close_and_wait_eof(bad);
    assert_eq!(metrics::get(Counter::FramingErrors), 1);
    assert_eq!(
        metrics::get(Counter::FramesDecoded),
        1,
        "only SN-JSON's frame"
    );
    assert_eq!(metrics::get(Counter::RecordsConverted), 1);
    // The good connection is still served.
    send(
        &mut good,
        br#"{"deviceName":"SN-JSON","deviceType":"default","temperature":2.5,"humidity":3}"#,
    );
    let records = h.wait_records(2);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.name == "SN-JSON"), "{records:?}");
    assert_eq!(metrics::get(Counter::FramingErrors), 1);
    assert_eq!(metrics::get(Counter::FramesDecoded), 2);
}
