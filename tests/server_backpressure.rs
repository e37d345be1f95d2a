//! Backpressure instead of loss: when ThingsBoard stops acknowledging and the spool is full,
//! the server stops reading device sockets (their writes block); when acknowledgements resume,
//! every record is delivered. One test per binary: it reads process-wide counters and gauges.

mod common;

use std::io::Write;

use common::*;
use tcp_integration::edge_sim::TypedValue;
use tcp_integration::metrics::{self, Counter, Gauge};

/// `TCPI_SPOOL_MAX_BYTES` of this test.
const SPOOL_MAX_BYTES: i64 = 65536;
#[test]
fn paused_edge_blocks_devices_then_everything_arrives() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[
            ("TCPI_SPOOL_MAX_BYTES", &SPOOL_MAX_BYTES.to_string()),
            ("TCPI_SHARD_CHANNEL_RECORDS", "64"),
            ("TCPI_INFLIGHT_BATCHES", "2"),
            ("TCPI_BATCH_MAX_RECORDS", "50"),
            ("TCPI_SO_RCVBUF_KIB", "16"),
        ],
    );
    h.edge().set_ack_paused(true);
    let mut device = h.connect();
    // A small send buffer on the device side too, so "blocked" comes after kilobytes, not the
    // megabytes an autotuned loopback socket would take first.
    socket2::SockRef::from(&device)
        .set_send_buffer_size(16 * 1024)
        .unwrap();
    device.set_nonblocking(true).unwrap();
    // Write frames until the server has provably stopped reading (see the helper).
    let BlockedWrites { sent, pending } =
        write_until_spool_blocks(&mut device, "SN-BP", SPOOL_MAX_BYTES);
    // `append_batch` refuses any append that would take the segment files past max_bytes.
    let spool_bytes = metrics::gauge(Gauge::SpoolBytes);
    assert!(
        spool_bytes <= SPOOL_MAX_BYTES,
        "spool grew past its bound: {spool_bytes}"
    );
    // Everything the server took from the device is in the spool or on its way there; the
    // frames still in the socket buffers are not.
    let spooled_while_blocked = metrics::get(Counter::RecordsSpooled);
    assert!(
        (spooled_while_blocked as usize) < sent,
        "{spooled_while_blocked} of {sent}"
    );
    h.edge().set_ack_paused(false);
    device.set_nonblocking(false).unwrap();
    device.write_all(&pending).unwrap();
    let records = h.wait_records(sent);
    let mut seqs: Vec<i64> = records
        .iter()
        .flat_map(|r| r.telemetry.iter())
        .filter_map(|t| match t.values.get("seq") {
            Some(TypedValue::Long(v)) => Some(*v),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), sent, "every frame the device wrote arrived");
    assert_eq!(seqs.first(), Some(&0));
    assert_eq!(seqs.last(), Some(&(sent as i64 - 1)));
    // One binary, one test: the counter is this test's alone. Every frame was spooled once.
    assert_eq!(metrics::get(Counter::RecordsSpooled), sent as u64);
}
