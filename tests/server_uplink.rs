//! The server end to end on loopback: the user guide's payloads arrive typed at the emulated
//! Edge, and many connections over two shards each deliver every record exactly once. Bad input
//! (counted in process-wide counters) has its own binaries: `server_uplink_bad_text.rs`,
//! `server_uplink_bad_json.rs`.

mod common;

use std::collections::HashMap;

use common::*;
use tcp_integration::edge_sim::TypedValue;

#[test]
fn seed_text_payload_arrives_typed() {
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut device = h.connect();
    // The docs' send command: `echo -e 'SN-002,default,temperature,25.7\nSN-002,default,humidity,69' | nc`.
    send(
        &mut device,
        b"SN-002,default,temperature,25.7\nSN-002,default,humidity,69\n",
    );
    let records = h.wait_records(2);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.name, "SN-002");
        assert_eq!(r.entity_type, "default");
    }
    assert_eq!(
        latest(&records, "SN-002", "temperature"),
        Some(&TypedValue::Double(25.7))
    );
    assert_eq!(
        latest(&records, "SN-002", "humidity"),
        Some(&TypedValue::Long(69))
    );
}

#[test]
fn seed_text_payload_with_lf_cr_separator_keeps_cr_and_still_decodes() {
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut device = h.connect();
    // The guide's overview payload, `\n\r` between the lines; frame 2 starts with CR, which the
    // docs' JS decoder strips. A final LF ends frame 2.
    send(
        &mut device,
        b"SN-002,default,temperature,25.7\n\rSN-002,default,humidity,69\n",
    );
    let records = h.wait_records(2);
    assert_eq!(
        latest(&records, "SN-002", "temperature"),
        Some(&TypedValue::Double(25.7))
    );
    assert_eq!(
        latest(&records, "SN-002", "humidity"),
        Some(&TypedValue::Long(69))
    );
}

#[test]
fn seed_json_payload_arrives_typed() {
    let port = reserve_port();
    let h = Harness::start(json_example(port.port), port, &[]);
    let mut device = h.connect();
    send(
        &mut device,
        br#"{"deviceName":"SN-002","deviceType":"default","temperature":25.7,"humidity":69}"#,
    );
    let records = h.wait_records(1);
    assert_eq!(records[0].name, "SN-002");
    assert_eq!(records[0].entity_type, "default");
    assert_eq!(
        latest(&records, "SN-002", "temperature"),
        Some(&TypedValue::Double(25.7))
    );
    assert_eq!(
        latest(&records, "SN-002", "humidity"),
        Some(&TypedValue::Long(69))
    );
}

#[test]
fn seed_binary_payload_arrives_typed() {
    let port = reserve_port();
    let h = Harness::start(binary_example(port.port), port, &[]);
    let mut device = h.connect();
    let payload = b"\x30\x30\x30\x30\x11\x53\x4e\x2d\x30\x30\x32\x64\x65\x66\x61\x75\x6c\x74\x32\x35\x2e\x37\x00\x00\x00";
    send(&mut device, payload);
    let records = h.wait_records(1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, "SN-002");
    assert_eq!(records[0].entity_type, "default");
    assert_eq!(
        latest(&records, "SN-002", "temperature"),
        Some(&TypedValue::Double(25.7))
    );
}

#[test]
fn thousand_connections_over_two_shards_deliver_every_record_once() {
    const DEVICES: usize = 1000;
    const FRAMES: usize = 100;
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[("TCPI_NR_SHARDS", "2")]);
    let mut streams: Vec<_> = (0..DEVICES).map(|_| h.connect()).collect();
    for (d, stream) in streams.iter_mut().enumerate() {
        let mut batch = String::new();
        for seq in 0..FRAMES {
            batch.push_str(&format!("DEV-{d:04},default,seq,{seq}\n"));
        }
        send(stream, batch.as_bytes());
    }
    let records = h.wait_records(DEVICES * FRAMES);
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for r in &records {
        for entry in &r.telemetry {
            match entry.values.get("seq") {
                Some(TypedValue::Long(seq)) => {
                    *seen.entry((r.name.clone(), *seq)).or_default() += 1
                }
                other => panic!("unexpected seq value {other:?} in {r:?}"),
            }
        }
    }
    assert_eq!(seen.len(), DEVICES * FRAMES, "distinct (device, seq) pairs");
    assert!(seen.values().all(|&n| n == 1), "a record arrived twice");
    assert_eq!(records.len(), DEVICES * FRAMES);
}
