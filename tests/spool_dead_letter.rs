//! Proves that rejected records land in `dead-letter.jsonl` with the error text and the exact
//! record bytes, one JSON line per record, appended across calls.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tcp_integration::uplink::spool::{FsyncPolicy, FullPolicy, Spool, SpoolOptions};

#[test]
fn dead_letter_file_holds_error_and_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SpoolOptions {
        dir: dir.path().to_path_buf(),
        segment_bytes: 4096,
        max_bytes: 1 << 20,
        fsync: FsyncPolicy::Every,
        full_policy: FullPolicy::Backpressure,
        memory_tail_bytes: 1 << 20,
        ack_persist_interval: Duration::ZERO,
    };
    let (mut spool, _) = Spool::open(options).expect("open");
    let first: &[u8] = b"\x0a\x03dev\x12\x00";
    let second: &[u8] = &[0x00, 0xff, 0x10];
    spool
        .dead_letter(&[first, second], "device \"dev\" unknown\nrejected")
        .expect("dead letter");
    spool
        .dead_letter(&[b"third".as_slice()], "quota")
        .expect("dead letter 2");
    assert_eq!(spool.stats().nr_dead_letter_records, 3);

    let text = std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).expect("read");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3);
    let expect = [
        (first, "device \"dev\" unknown\nrejected"),
        (second, "device \"dev\" unknown\nrejected"),
        (b"third".as_slice(), "quota"),
    ];
    for (line, (record, error)) in lines.iter().zip(expect) {
        assert_eq!(line["error"], error);
        let b64 = line["record_b64"].as_str().expect("record_b64");
        assert_eq!(STANDARD.decode(b64).expect("base64"), record);
        assert!(line["ts_ms"].as_u64().expect("ts_ms") > 1_600_000_000_000);
    }
}
