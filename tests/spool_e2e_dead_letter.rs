//! `success=false` end to end: the edge emulator rejects every uplink carrying a record of one
//! device (its reject mode, as ThingsBoard answers an uplink it failed to process). The
//! rejected records end up in `dead-letter.jsonl` in the spool dir with Edge's error text and
//! their exact content, are counted and logged, are not sent again, and the records that follow
//! (other devices, and the same device once Edge accepts it again) still arrive.

mod common;
mod spool_e2e_support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use spool_e2e_support::*;
use tcp_integration::edge_sim::RejectRule;
use tcp_integration::metrics::{self, Counter};

const BAD: &str = "SN-BAD";
const GOOD: &str = "SN-GOOD";
const ERROR_MSG: &str = "Failed to process the uplink: device SN-BAD is blocked";

fn send_frames(h: &Harness, device: &str, seqs: std::ops::Range<u64>) {
    let mut stream = h.connect();
    let text: String = seqs.map(|n| frame(device, n)).collect();
    stream.write_all(text.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn rejected_batches_go_to_the_dead_letter_file_and_later_records_still_arrive() {
    let log = LogCapture::install();
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    h.edge()
        .set_reject_rule(Some(RejectRule::device(BAD, ERROR_MSG)));

    send_frames(&h, BAD, 0..5);
    wait_until("5 rejected records", || {
        metrics::get(Counter::RecordsRejected) == 5
    });
    send_frames(&h, GOOD, 0..5);
    wait_until("the good device's records", || {
        h.edge().records().len() == 5
    });
    // Edge accepts the device again: its next records arrive, the rejected ones are not resent.
    h.edge().set_reject_rule(None);
    send_frames(&h, BAD, 5..8);
    wait_until("the bad device's later records", || {
        h.edge().records().len() == 8
    });
    std::thread::sleep(Duration::from_millis(300));

    let arrived: Vec<(String, i64)> = h
        .edge()
        .records()
        .iter()
        .map(|r| (r.name.clone(), seq_of(r)))
        .collect();
    let expected: Vec<(String, i64)> = (0..5)
        .map(|n| (GOOD.to_owned(), n))
        .chain((5..8).map(|n| (BAD.to_owned(), n)))
        .collect();
    assert_eq!(arrived, expected);

    // The dead-letter file: one line per rejected record, in order, with Edge's error.
    let letters = dead_letters(h.spool.path());
    let content: Vec<(String, i64)> = letters
        .iter()
        .flat_map(|l| l.records.iter().map(|r| (r.name.clone(), seq_of(r))))
        .collect();
    assert_eq!(
        content,
        (0..5).map(|n| (BAD.to_owned(), n)).collect::<Vec<_>>()
    );
    for letter in &letters {
        assert_eq!(letter.error, ERROR_MSG);
        assert_eq!(letter.records.len(), 1, "one record per line");
        assert!(
            letter.ts_ms > 1_600_000_000_000,
            "epoch ms: {}",
            letter.ts_ms
        );
        let record = &letter.records[0];
        assert_eq!(record.entity_type, "default");
        assert_eq!(record.telemetry.len(), 1);
        let keys: Vec<&str> = record.telemetry[0]
            .values
            .0
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, vec!["seq"], "the record's full telemetry is kept");
    }

    // Counted and logged per rejected batch, with Edge's error text.
    assert_eq!(metrics::get(Counter::RecordsRejected), 5);
    let rejected_uplinks = h.edge().rejected_uplinks();
    assert!((1..=5).contains(&rejected_uplinks));
    let lines = log.lines_with("ThingsBoard rejected a batch");
    assert_eq!(lines.len() as u64, rejected_uplinks, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains(ERROR_MSG)), "{lines:?}");
    let logged: u64 = lines.iter().map(|l| int_field(l, "records")).sum();
    assert_eq!(logged, 5);
    assert_eq!(
        metrics::get(Counter::RecordsAcked),
        13,
        "rejected batches count as answered (not resent)"
    );
}
