//! `drop-oldest` end to end: with a tiny spool, acknowledgements paused and a device sending
//! far more than fits, the server keeps reading (nothing blocks), drops the oldest records,
//! counts them (`tcpi_records_dropped_spool_full_total`) and logs each drop; when
//! acknowledgements resume, exactly the newest records arrive, in order, once.
//!
//! While acks are paused the one batch in the window was already sent (edge-sim records
//! uplinks whose acks it holds), so what arrives is that first batch plus the newest records;
//! everything in between is what the spool dropped — and the drop count says exactly where the
//! newest part starts.

mod common;
mod spool_e2e_support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use spool_e2e_support::*;
use tcp_integration::metrics::{self, Counter, Gauge};

const DEVICE: &str = "SN-DROP";
const NR_FRAMES: u64 = 3000;
const SPOOL_MAX_BYTES: u64 = 65536;
const DROP_LOG: &str = "spool full: dropped the oldest unacknowledged records (drop-oldest policy)";

#[test]
fn tiny_spool_drops_the_oldest_counts_and_logs_then_delivers_the_newest() {
    let log = LogCapture::install();
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[
            ("TCPI_SPOOL_MAX_BYTES", &SPOOL_MAX_BYTES.to_string()),
            ("TCPI_SPOOL_FULL_POLICY", "drop-oldest"),
            ("TCPI_INFLIGHT_BATCHES", "1"),
            ("TCPI_BATCH_MAX_RECORDS", "20"),
        ],
    );
    h.edge().set_ack_paused(true);
    let mut device = h.connect();
    for chunk in (0..NR_FRAMES).collect::<Vec<_>>().chunks(100) {
        let text: String = chunk.iter().map(|&n| frame(DEVICE, n)).collect();
        device.write_all(text.as_bytes()).unwrap();
    }
    // Every frame is accepted although the spool holds only a fraction: nothing blocks.
    let deadline = Instant::now() + PATIENCE;
    while metrics::get(Counter::RecordsSpooled) < NR_FRAMES {
        assert!(
            Instant::now() < deadline,
            "only {} of {NR_FRAMES} records spooled",
            metrics::get(Counter::RecordsSpooled)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(metrics::gauge(Gauge::SpoolBytes) as u64 <= SPOOL_MAX_BYTES);
    let sent_while_paused: Vec<i64> = h.edge().records().iter().map(seq_of).collect();
    assert!(!sent_while_paused.is_empty(), "the first batch went out");
    let nr_dropped = metrics::get(Counter::RecordsDroppedSpoolFull);
    assert!(
        nr_dropped > NR_FRAMES / 2,
        "a {SPOOL_MAX_BYTES}-byte spool cannot hold {} records",
        NR_FRAMES - nr_dropped
    );

    h.edge().set_ack_paused(false);
    // The newest record arrives last; wait for it.
    let deadline = Instant::now() + PATIENCE;
    let records = loop {
        let records = h.edge().records();
        if records
            .last()
            .is_some_and(|r| seq_of(r) == NR_FRAMES as i64 - 1)
        {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the newest record never arrived; last arrivals {:?}",
            records.iter().rev().take(3).map(seq_of).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // Let anything stray arrive before the exact comparison.
    std::thread::sleep(Duration::from_millis(300));
    let records_after = h.edge().records();
    assert_eq!(
        records_after.len(),
        records.len(),
        "nothing after the newest"
    );
    assert!(records.iter().all(|r| r.name == DEVICE));

    // Exactly: the first batch (sent before the spool filled), then every record from the
    // first one the spool kept — the oldest `nr_dropped` were dropped.
    let expected: Vec<i64> = sent_while_paused
        .iter()
        .copied()
        .chain(nr_dropped as i64..NR_FRAMES as i64)
        .collect();
    let got: Vec<i64> = records.iter().map(seq_of).collect();
    assert_eq!(got.len(), expected.len(), "count of arrivals");
    assert_eq!(got, expected);
    assert_eq!(
        sent_while_paused,
        (0..sent_while_paused.len() as i64).collect::<Vec<_>>()
    );

    // Each drop is logged with its count; the counts add up to the metric.
    let lines = log.lines_with(DROP_LOG);
    assert!(!lines.is_empty(), "no drop was logged");
    let logged: u64 = lines.iter().map(|l| int_field(l, "dropped_records")).sum();
    assert_eq!(logged, nr_dropped, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("WARN")), "{lines:?}");
}
