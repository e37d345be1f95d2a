//! Proves recovery: a segment cut mid-record (torn tail) or with a flipped byte opens, keeps
//! exactly the records before the damage, warns, and — for damage in an earlier segment — moves
//! on to the next segment with an exact count of the records lost.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tcp_integration::uplink::spool::{FsyncPolicy, FullPolicy, Spool, SpoolOptions};

/// 11-byte payloads: 24 + 11 = 35 bytes on disk each.
fn payload(seq: u64) -> Vec<u8> {
    format!("record-{seq:04}").into_bytes()
}

const RECORD_BYTES: u64 = 35;
const MAGIC_BYTES: u64 = 8;
/// Ten records per segment with batches of five.
const SEGMENT_BYTES: u64 = MAGIC_BYTES + 10 * RECORD_BYTES;

fn options(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: SEGMENT_BYTES,
        max_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        full_policy: FullPolicy::Backpressure,
        memory_tail_bytes: 1 << 20,
        ack_persist_interval: Duration::ZERO,
    }
}

fn fill(dir: &Path, nr_records: u64) {
    let (mut spool, _) = Spool::open(options(dir)).expect("open");
    for first in (1..=nr_records).step_by(5) {
        let owned: Vec<Vec<u8>> = (first..first + 5).map(payload).collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        spool.append_batch(&refs).expect("append");
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn read_all(spool: &mut Spool) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    while spool.read_next(64, usize::MAX, &mut out).expect("read") > 0 {}
    out
}

fn expected(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, Bytes)> {
    seqs.into_iter()
        .map(|seq| (seq, Bytes::from(payload(seq))))
        .collect()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x20;
    fs::write(path, bytes).expect("write segment");
}

/// Offset of record `index` (0-based) inside a segment.
fn record_offset(index: u64) -> u64 {
    MAGIC_BYTES + index * RECORD_BYTES
}

#[test]
fn torn_tail_is_truncated_to_the_last_good_record() {
    // Cut inside the payload, inside the header, and one byte into the record.
    for cut_into_record in [30, 10, 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 10);
        let path = segment_path(dir.path(), 1);
        let good_bytes = record_offset(9);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open segment")
            .set_len(good_bytes + cut_into_record)
            .expect("truncate");

        let (mut spool, report) = Spool::open(options(dir.path())).expect("open recovers");
        assert_eq!(report.corruptions.len(), 1, "cut {cut_into_record}");
        let corruption = &report.corruptions[0];
        assert_eq!(corruption.path, path);
        assert_eq!(corruption.offset, good_bytes);
        assert_eq!(corruption.discarded_bytes, cut_into_record);
        assert_eq!(corruption.nr_lost_records, None);
        assert_eq!(report.nr_pending_records, 9);
        assert_eq!(fs::metadata(&path).expect("stat").len(), good_bytes);
        assert_eq!(read_all(&mut spool), expected(1..=9));

        // Numbering continues past everything handed out before the crash (the state file kept
        // the floor), so seq 10 is never reused for different data.
        let outcome = spool.append_batch(&[b"after".as_slice()]).expect("append");
        assert_eq!(outcome.first_seq, 11);
        assert_eq!(
            read_all(&mut spool),
            vec![(11, Bytes::from_static(b"after"))]
        );
        drop(spool);

        // Recovery is idempotent: the second open finds a clean spool.
        let (_, report) = Spool::open(options(dir.path())).expect("open again");
        assert!(report.corruptions.is_empty());
        assert_eq!(report.nr_pending_records, 10);
    }
}

#[test]
fn flipped_byte_in_an_earlier_segment_loses_the_rest_of_that_segment_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 30);
    let path = segment_path(dir.path(), 11);
    // Record 14 is the fourth of segment 11..=20: flip a byte in its payload.
    flip_byte(&path, record_offset(3) + 24 + 2);

    let (mut spool, report) = Spool::open(options(dir.path())).expect("open recovers");
    assert_eq!(report.corruptions.len(), 1);
    let corruption = &report.corruptions[0];
    assert_eq!(corruption.path, path);
    assert_eq!(corruption.offset, record_offset(3));
    assert_eq!(corruption.reason, "CRC32C mismatch");
    assert_eq!(corruption.discarded_bytes, SEGMENT_BYTES - record_offset(3));
    assert_eq!(corruption.nr_lost_records, Some(7));
    assert_eq!(report.nr_lost_records, 7);
    assert_eq!(report.nr_pending_records, 23);
    assert_eq!(spool.stats().nr_pending_records, 23);
    assert_eq!(read_all(&mut spool), expected((1..=13).chain(21..=30)));

    // Acks across the gap work and the damaged segment is deleted once acked.
    spool.ack_through(20).expect("ack");
    assert!(!path.exists());
    spool.rewind_to_acked();
    assert_eq!(read_all(&mut spool), expected(21..=30));
}

#[test]
fn flipped_length_field_in_the_last_segment_keeps_the_records_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 20);
    let path = segment_path(dir.path(), 11);
    // Record 16's length field (sixth of segment 11..=20): 11 ^ 0x20 = 43, so the CRC fails.
    flip_byte(&path, record_offset(5));

    let (mut spool, report) = Spool::open(options(dir.path())).expect("open recovers");
    assert_eq!(report.corruptions.len(), 1);
    assert_eq!(report.corruptions[0].offset, record_offset(5));
    assert_eq!(report.corruptions[0].nr_lost_records, None);
    assert_eq!(report.corruptions[0].discarded_bytes, 5 * RECORD_BYTES);
    assert_eq!(read_all(&mut spool), expected(1..=15));
}

#[test]
fn corrupt_state_file_replays_everything_that_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 10);
    {
        let (mut spool, _) = Spool::open(options(dir.path())).expect("open");
        spool.ack_through(4).expect("ack");
    }
    fs::write(dir.path().join("spool.state"), b"garbage").expect("clobber state");
    let (mut spool, report) = Spool::open(options(dir.path())).expect("open");
    assert!(report.state_invalid);
    assert_eq!(report.first_unacked_seq, 1);
    assert_eq!(read_all(&mut spool), expected(1..=10));
}
