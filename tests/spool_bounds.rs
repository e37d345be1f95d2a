//! Proves the max_bytes bound: backpressure refuses a batch with `Full` and loses nothing, and
//! drop-oldest deletes the oldest segments with exact counts of the unacknowledged records and
//! bytes it dropped.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tcp_integration::uplink::spool::{
    FsyncPolicy, FullPolicy, Spool, SpoolError, SpoolOptions, spooled_bytes,
};

/// 11-byte payloads: 24 + 11 = 35 bytes on disk each.
fn payload(seq: u64) -> Vec<u8> {
    format!("record-{seq:04}").into_bytes()
}

/// One batch of five per segment: 8 + 5 * 35 = 183 bytes. Two segments fit in 400, three do not.
const SEGMENT_BYTES: u64 = 183;
const MAX_BYTES: u64 = 400;

fn options(dir: &Path, full_policy: FullPolicy) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: SEGMENT_BYTES,
        max_bytes: MAX_BYTES,
        fsync: FsyncPolicy::Never,
        full_policy,
        memory_tail_bytes: 1 << 20,
        ack_persist_interval: Duration::ZERO,
    }
}

fn append_five(
    spool: &mut Spool,
    first: u64,
) -> Result<tcp_integration::uplink::spool::AppendOutcome, SpoolError> {
    let owned: Vec<Vec<u8>> = (first..first + 5).map(payload).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    spool.append_batch(&refs)
}

fn read_all(spool: &mut Spool) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    while spool.read_next(64, usize::MAX, &mut out).expect("read") > 0 {}
    out
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Bytes)> {
    range.map(|seq| (seq, Bytes::from(payload(seq)))).collect()
}

#[test]
fn backpressure_returns_full_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), FullPolicy::Backpressure)).expect("open");
    append_five(&mut spool, 1).expect("append 1");
    append_five(&mut spool, 6).expect("append 2");
    let batch_bytes = spooled_bytes(5, 55);
    assert_eq!(batch_bytes, 175);
    assert!(!spool.has_room_for(batch_bytes));

    match append_five(&mut spool, 11) {
        Err(SpoolError::Full {
            need_bytes,
            free_bytes,
            max_bytes,
        }) => {
            assert_eq!((need_bytes, free_bytes, max_bytes), (183, 400 - 366, 400));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let stats = spool.stats();
    assert_eq!(stats.nr_full_rejections, 1);
    assert_eq!(
        (stats.next_seq, stats.nr_pending_records, stats.disk_bytes),
        (11, 10, 366)
    );
    assert_eq!(read_all(&mut spool), expected(1..=10));

    // Acking the first segment frees room; the refused batch now goes in with the next numbers.
    spool.ack_through(5).expect("ack");
    assert!(spool.has_room_for(batch_bytes));
    let outcome = append_five(&mut spool, 11).expect("append after ack");
    assert_eq!(
        (
            outcome.first_seq,
            outcome.last_seq,
            outcome.nr_dropped_records
        ),
        (11, 15, 0)
    );
    assert_eq!(read_all(&mut spool), expected(11..=15));
    drop(spool);

    let (mut spool, report) =
        Spool::open(options(dir.path(), FullPolicy::Backpressure)).expect("reopen");
    assert_eq!(report.nr_pending_records, 10);
    assert_eq!(read_all(&mut spool), expected(6..=15));
}

#[test]
fn backpressure_reclaims_a_fully_acked_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), FullPolicy::Backpressure)).expect("open");
    append_five(&mut spool, 1).expect("append 1");
    append_five(&mut spool, 6).expect("append 2");
    spool.ack_through(10).expect("ack all");
    // The active segment 6..=10 is still on disk but everything is acknowledged.
    assert_eq!(spool.stats().disk_bytes, 183);
    assert!(spool.has_room_for(SEGMENT_BYTES * 2 - 8));
    append_five(&mut spool, 11).expect("append 3");
    append_five(&mut spool, 16).expect("append 4");
    assert_eq!(spool.stats().disk_bytes, 366);
    assert_eq!(read_all(&mut spool), expected(11..=20));
}

#[test]
fn drop_oldest_drops_whole_segments_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), FullPolicy::DropOldest)).expect("open");
    append_five(&mut spool, 1).expect("append 1");
    append_five(&mut spool, 6).expect("append 2");
    let mut out = Vec::new();
    spool.read_next(3, usize::MAX, &mut out).expect("read");
    assert_eq!(out, expected(1..=3));
    spool.ack_through(2).expect("ack");

    // Segment 1..=5 goes; 3, 4, 5 were unacknowledged: 3 records of 35 bytes.
    let outcome = append_five(&mut spool, 11).expect("append 3");
    assert_eq!((outcome.first_seq, outcome.last_seq), (11, 15));
    assert_eq!(
        (outcome.nr_dropped_records, outcome.nr_dropped_bytes),
        (3, 105)
    );
    // Then segment 6..=10, untouched: 5 records, 175 bytes.
    let outcome = append_five(&mut spool, 16).expect("append 4");
    assert_eq!(
        (outcome.nr_dropped_records, outcome.nr_dropped_bytes),
        (5, 175)
    );

    let stats = spool.stats();
    assert_eq!((stats.nr_dropped_records, stats.nr_dropped_bytes), (8, 280));
    assert_eq!(
        (
            stats.first_unacked_seq,
            stats.nr_pending_records,
            stats.disk_bytes
        ),
        (11, 10, 366)
    );
    // The read cursor (at 4) jumped past the dropped records.
    assert_eq!(read_all(&mut spool), expected(11..=20));
    drop(spool);

    let (mut spool, report) =
        Spool::open(options(dir.path(), FullPolicy::DropOldest)).expect("reopen");
    assert_eq!(report.first_unacked_seq, 11);
    assert_eq!(read_all(&mut spool), expected(11..=20));
}

#[test]
fn batch_that_can_never_fit_is_refused_under_both_policies() {
    for policy in [FullPolicy::Backpressure, FullPolicy::DropOldest] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(options(dir.path(), policy)).expect("open");
        append_five(&mut spool, 1).expect("append");
        let big = vec![7u8; 400];
        match spool.append_batch(&[big.as_slice()]) {
            Err(SpoolError::BatchTooLarge {
                need_bytes,
                max_bytes,
            }) => {
                assert_eq!((need_bytes, max_bytes), (8 + 24 + 400, 400));
            }
            other => panic!("expected BatchTooLarge, got {other:?}"),
        }
        assert_eq!(read_all(&mut spool), expected(1..=5));
    }
}

#[test]
fn allowed_overflow_takes_what_a_full_spool_refused_and_drops_nothing() {
    for policy in [FullPolicy::Backpressure, FullPolicy::DropOldest] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(options(dir.path(), policy)).expect("open");
        append_five(&mut spool, 1).expect("append 1");
        append_five(&mut spool, 6).expect("append 2");
        // Shutting down: the third batch exceeds max_bytes, and is neither refused nor makes
        // room by dropping the oldest.
        spool.allow_overflow();
        let outcome = append_five(&mut spool, 11).expect("append past the bound");
        assert_eq!(outcome.nr_dropped_records, 0, "{policy:?}");
        assert!(spool.stats().disk_bytes > MAX_BYTES, "{policy:?}");
        assert_eq!(read_all(&mut spool), expected(1..=15), "{policy:?}");
    }
}
