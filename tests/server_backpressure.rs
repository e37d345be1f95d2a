//! Backpressure instead of loss: when ThingsBoard stops acknowledging and the spool is full,
//! the server stops reading device sockets (their writes block); when acknowledgements resume,
//! every record is delivered.

mod common;

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use common::*;
use tcp_integration::edge_sim::TypedValue;
use tcp_integration::metrics::{self, Gauge};

#[test]
fn paused_edge_blocks_devices_then_everything_arrives() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[
            ("TCPI_SPOOL_MAX_BYTES", "65536"),
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
    // Write frames until the socket refuses more for a while: the server has stopped reading.
    let mut sent = 0usize;
    let mut pending = Vec::new();
    let mut blocked_since: Option<Instant> = None;
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        assert!(
            Instant::now() < deadline,
            "device writes never blocked (sent {sent} frames)"
        );
        if pending.is_empty() {
            pending = format!("SN-BP,default,seq,{sent}\n").into_bytes();
            sent += 1;
        }
        match device.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    // Finish the partially written frame once acknowledgements resume.
    let spool_bytes = metrics::gauge(Gauge::SpoolBytes);
    assert!(
        spool_bytes <= 2 * 65536,
        "spool grew past its bound: {spool_bytes}"
    );
    // The writes blocked because the spool filled, not because the server was slow to read.
    assert!(
        spool_bytes >= 65536 / 2,
        "writes blocked with the spool only at {spool_bytes} bytes"
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
}
