//! Shutdown while ThingsBoard takes nothing: acknowledgements paused and the spool full, so the
//! uplink core stops taking records, the shard's outbox flusher waits on the full channel and
//! the device's writes block. `Server::shutdown` must still return, and every record the shard
//! had read and converted must be on disk afterwards: at shutdown the spool takes them beyond
//! its bound rather than lose them. The wait is a liveness bound (PATIENCE), not a speed
//! assertion. Its own binary: it reads process-wide counters and gauges.

mod common;

use common::*;
use tcp_integration::metrics::{self, Counter};
use tcp_integration::uplink::spool::{Spool, SpoolOptions};

const SPOOL_MAX_BYTES: i64 = 65536;

#[test]
fn shutdown_returns_while_the_uplink_core_takes_nothing() {
    let port = reserve_port();
    let mut h = Harness::start(
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
    socket2::SockRef::from(&device)
        .set_send_buffer_size(16 * 1024)
        .unwrap();
    device.set_nonblocking(true).unwrap();
    // Write until the server provably stopped reading.
    let sent = write_until_spool_blocks(&mut device, "SN-SD", SPOOL_MAX_BYTES).sent;
    let spooled = metrics::get(Counter::RecordsSpooled);
    assert!(
        (spooled as usize) < sent,
        "{spooled} of {sent}: not blocked"
    );

    h.shutdown_within_patience();
    // The records still in the shard (its outbox, the channel) were spooled at shutdown, past
    // the bound, instead of being dropped with the process.
    let converted = metrics::get(Counter::RecordsConverted);
    let spooled_at_exit = metrics::get(Counter::RecordsSpooled);
    assert!(
        spooled_at_exit > spooled,
        "nothing held in the shard at shutdown ({spooled} spooled of {converted} converted)"
    );
    assert_eq!(
        spooled_at_exit, converted,
        "every record read from the device is on disk"
    );
    assert_eq!(metrics::get(Counter::RecordsAcked), 0);
    // On disk, in order, ready for the next start: reopen the spool and read every record back.
    let (mut spool, report) =
        Spool::open(SpoolOptions::new(h.spool.path())).expect("spool reopens");
    assert_eq!(report.nr_pending_records, converted);
    let mut device_records = Vec::new();
    let mut batch = Vec::new();
    loop {
        batch.clear();
        spool.read_next(1000, usize::MAX, &mut batch).expect("read");
        if batch.is_empty() {
            break;
        }
        for (_, record) in &batch {
            let text = String::from_utf8_lossy(record);
            device_records.push(text.contains("SN-SD"));
        }
    }
    assert_eq!(device_records.len() as u64, converted);
    assert!(
        device_records.iter().all(|&named| named),
        "every record is the device's"
    );
}
