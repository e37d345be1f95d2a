//! Proves the spool's basic contract: append → read → ack across segment rotation and reopen,
//! replay from the first unacknowledged record in order, rewind, read limits, deletion of acked
//! segments, and sequence numbers that survive a restart.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tcp_integration::uplink::spool::{FsyncPolicy, FullPolicy, Spool, SpoolError, SpoolOptions};

/// 11-byte payloads: 24 + 11 = 35 bytes on disk each.
fn payload(seq: u64) -> Vec<u8> {
    format!("record-{seq:04}").into_bytes()
}

/// 8-byte magic + 10 records of 35 bytes: batches of 5 fill a segment exactly twice.
const SEGMENT_BYTES: u64 = 8 + 10 * 35;

fn options(dir: &Path, memory_tail_bytes: usize) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: SEGMENT_BYTES,
        max_bytes: 1 << 20,
        fsync: FsyncPolicy::Every,
        full_policy: FullPolicy::Backpressure,
        memory_tail_bytes,
        ack_persist_interval: Duration::from_secs(3600),
    }
}

fn append_range(spool: &mut Spool, first: u64, last: u64, batch: u64) {
    let mut seq = first;
    while seq <= last {
        let end = (seq + batch - 1).min(last);
        let owned: Vec<Vec<u8>> = (seq..=end).map(payload).collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let outcome = spool.append_batch(&refs).expect("append");
        assert_eq!((outcome.first_seq, outcome.last_seq), (seq, end));
        assert_eq!(
            (outcome.nr_dropped_records, outcome.nr_dropped_bytes),
            (0, 0)
        );
        seq = end + 1;
    }
}

fn read_all(spool: &mut Spool) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    while spool.read_next(7, usize::MAX, &mut out).expect("read") > 0 {}
    out
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Bytes)> {
    range.map(|seq| (seq, Bytes::from(payload(seq)))).collect()
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn round_trip_across_rotation_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, report) = Spool::open(options(dir.path(), 1 << 20)).expect("open");
    assert!(report.state_missing);
    assert_eq!((report.nr_pending_records, report.next_seq), (0, 1));

    append_range(&mut spool, 1, 35, 5);
    assert_eq!(
        segment_names(dir.path()),
        [
            "00000000000000000001.seg",
            "00000000000000000011.seg",
            "00000000000000000021.seg",
            "00000000000000000031.seg"
        ]
    );
    assert_eq!(read_all(&mut spool), expected(1..=35));

    spool.ack_through(12).expect("ack");
    // Segment 1..=10 is fully acknowledged and gone; 11..=20 still holds 13..=20.
    assert_eq!(
        segment_names(dir.path()),
        [
            "00000000000000000011.seg",
            "00000000000000000021.seg",
            "00000000000000000031.seg"
        ]
    );
    let stats = spool.stats();
    assert_eq!(stats.nr_pending_records, 23);
    assert_eq!(stats.disk_bytes, 2 * SEGMENT_BYTES + 8 + 5 * 35);
    drop(spool);

    // Reopen with no memory tail: everything comes from the segment files.
    let (mut spool, report) = Spool::open(options(dir.path(), 0)).expect("reopen");
    assert!(!report.state_missing && !report.state_invalid);
    assert!(report.corruptions.is_empty());
    assert_eq!(report.first_unacked_seq, 13);
    assert_eq!(report.next_seq, 36);
    assert_eq!(report.nr_pending_records, 23);
    assert_eq!(read_all(&mut spool), expected(13..=35));

    // New appends continue the numbering in a new segment, and read after the replayed ones.
    append_range(&mut spool, 36, 40, 5);
    assert_eq!(
        segment_names(dir.path()).last().map(String::as_str),
        Some("00000000000000000036.seg")
    );
    assert_eq!(read_all(&mut spool), expected(36..=40));

    spool.rewind_to_acked();
    assert_eq!(read_all(&mut spool), expected(13..=40));

    spool.ack_through(40).expect("ack all");
    assert_eq!(segment_names(dir.path()), ["00000000000000000036.seg"]);
    assert_eq!(spool.stats().nr_pending_records, 0);
    drop(spool);

    let (mut spool, report) = Spool::open(options(dir.path(), 0)).expect("reopen 2");
    assert_eq!((report.nr_pending_records, report.next_seq), (0, 41));
    assert!(segment_names(dir.path()).is_empty());
    assert!(read_all(&mut spool).is_empty());
    append_range(&mut spool, 41, 41, 1);
    assert_eq!(read_all(&mut spool), expected(41..=41));
}

#[test]
fn memory_tail_and_disk_reads_return_the_same_records() {
    for memory_tail_bytes in [0, 5 * 60, 1 << 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(options(dir.path(), memory_tail_bytes)).expect("open");
        append_range(&mut spool, 1, 23, 4);
        let got = read_all(&mut spool);
        assert_eq!(
            got,
            expected(1..=23),
            "memory_tail_bytes = {memory_tail_bytes}"
        );
        spool.ack_through(9).expect("ack");
        spool.rewind_to_acked();
        assert_eq!(
            read_all(&mut spool),
            expected(10..=23),
            "memory_tail_bytes = {memory_tail_bytes}"
        );
    }
}

#[test]
fn reopen_resumes_at_first_unacked_record_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), 1 << 20)).expect("open");
    // Batches of 3 put 9 records in each segment: 1..=9, 10..=18, 19..=27.
    append_range(&mut spool, 1, 27, 3);
    let mut out = Vec::new();
    spool.read_next(15, usize::MAX, &mut out).expect("read");
    assert_eq!(out, expected(1..=15));
    spool.ack_through(9).expect("ack");
    // A crash: no drop, so nothing is flushed on close. The ack persist interval is an hour, but
    // the ack deleted segment 1..=9, which persists the position first.
    std::mem::forget(spool);

    let (mut spool, report) = Spool::open(options(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.first_unacked_seq, 10);
    let stats = spool.stats();
    assert_eq!(
        (
            stats.nr_replay_total_records,
            stats.nr_replay_remaining_records
        ),
        (18, 18)
    );
    let mut out = Vec::new();
    spool.read_next(4, usize::MAX, &mut out).expect("read");
    assert_eq!(out, expected(10..=13));
    assert_eq!(spool.stats().nr_replay_remaining_records, 14);
    assert_eq!(read_all(&mut spool), expected(14..=27));
    assert_eq!(spool.stats().nr_replay_remaining_records, 0);
}

#[test]
fn unpersisted_ack_lost_in_a_crash_means_resending_not_losing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), 1 << 20)).expect("open");
    append_range(&mut spool, 1, 6, 3);
    spool.ack_through(4).expect("ack");
    // Rate-limited (an hour) and no segment deleted: the crash loses the ack.
    std::mem::forget(spool);
    let (mut spool, report) = Spool::open(options(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.first_unacked_seq, 1);
    assert_eq!(read_all(&mut spool), expected(1..=6));
    spool.ack_through(4).expect("ack");
    // A clean close persists it.
    drop(spool);
    let (mut spool, report) = Spool::open(options(dir.path(), 1 << 20)).expect("reopen 2");
    assert_eq!(report.first_unacked_seq, 5);
    assert_eq!(read_all(&mut spool), expected(5..=6));
}

#[test]
fn read_next_honours_record_and_byte_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    for memory_tail_bytes in [0, 1 << 20] {
        let sub = dir.path().join(memory_tail_bytes.to_string());
        let (mut spool, _) = Spool::open(options(&sub, memory_tail_bytes)).expect("open");
        append_range(&mut spool, 1, 10, 10);
        let mut out = Vec::new();
        assert_eq!(spool.read_next(3, usize::MAX, &mut out).expect("read"), 3);
        assert_eq!(out, expected(1..=3));
        out.clear();
        // 11-byte records: 25 bytes allow two.
        assert_eq!(spool.read_next(100, 25, &mut out).expect("read"), 2);
        assert_eq!(out, expected(4..=5));
        out.clear();
        // A budget below one record still yields one, so big records cannot stall the sender.
        assert_eq!(spool.read_next(100, 1, &mut out).expect("read"), 1);
        assert_eq!(out, expected(6..=6));
    }
}

#[test]
fn stats_report_pending_age_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), 1 << 20)).expect("open");
    assert_eq!(spool.stats().oldest_pending_age, None);
    append_range(&mut spool, 1, 12, 6);
    let stats = spool.stats();
    assert_eq!(stats.nr_pending_records, 12);
    assert_eq!(stats.disk_bytes, (8 + 6 * 35) * 2);
    assert_eq!(stats.nr_segments, 2);
    assert_eq!(
        (stats.first_unacked_seq, stats.read_seq, stats.next_seq),
        (1, 1, 13)
    );
    assert!(stats.oldest_pending_age.is_some());
    spool.ack_through(12).expect("ack");
    assert_eq!(spool.stats().oldest_pending_age, None);
}

#[test]
fn ack_past_the_end_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(options(dir.path(), 1 << 20)).expect("open");
    append_range(&mut spool, 1, 3, 3);
    assert!(matches!(
        spool.ack_through(4),
        Err(SpoolError::AckBeyondEnd {
            seq: 4,
            last_seq: 3
        })
    ));
    spool.ack_through(2).expect("ack");
    spool.ack_through(1).expect("stale ack is a no-op");
    assert_eq!(spool.stats().first_unacked_seq, 3);
}
