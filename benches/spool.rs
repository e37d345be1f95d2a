//! Spool throughput: append (per fsync policy) and replay, each next to a plain buffered file
//! doing the same bytes in the same group, so the ratio shows the spool's own cost.
//!
//! Batches are 256 records of 100 bytes (25 600 payload bytes); throughput is payload bytes, so
//! records/s = bytes/s / 100. Files live under `target/` (a real disk, not tmpfs), so the fsync
//! figures mean something. Replay reads run against the page cache.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tcp_integration::uplink::spool::{FsyncPolicy, FullPolicy, Spool, SpoolOptions};

const RECORDS_PER_BATCH: usize = 256;
const RECORD_BYTES: usize = 100;
const BATCH_BYTES: u64 = (RECORDS_PER_BATCH * RECORD_BYTES) as u64;
/// Replay set: 100 000 records, ~12 MB on disk.
const NR_REPLAY_RECORDS: usize = 100_000;
/// The plain-file baselines start over at this size, like a spool rotating and deleting segments.
const BASELINE_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn batch() -> Vec<Vec<u8>> {
    (0..RECORDS_PER_BATCH)
        .map(|i| (0..RECORD_BYTES).map(|j| (i * 7 + j) as u8).collect())
        .collect()
}

fn bench_dir() -> tempfile::TempDir {
    std::fs::create_dir_all("target/spool-bench").expect("bench dir");
    tempfile::tempdir_in("target/spool-bench").expect("tempdir")
}

fn options(dir: &Path, fsync: FsyncPolicy) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 64 * 1024 * 1024,
        max_bytes: 1 << 30,
        fsync,
        full_policy: FullPolicy::Backpressure,
        memory_tail_bytes: 16 * 1024 * 1024,
        ack_persist_interval: Duration::from_millis(200),
    }
}

fn append(c: &mut Criterion) {
    let owned = batch();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let mut group = c.benchmark_group("spool_append");
    group.throughput(Throughput::Bytes(BATCH_BYTES));

    for (name, fsync) in [
        ("never", FsyncPolicy::Never),
        (
            "interval_100ms",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
        ("every", FsyncPolicy::Every),
    ] {
        let dir = bench_dir();
        let (mut spool, _) = Spool::open(options(dir.path(), fsync)).expect("open");
        group.bench_function(BenchmarkId::new("spool", name), |b| {
            b.iter(|| {
                let outcome = spool.append_batch(&refs).expect("append");
                // A sender that keeps up: acked segments are deleted as they rotate out.
                spool.ack_through(outcome.last_seq).expect("ack");
                spool.tick().expect("tick");
            })
        });
    }

    for (name, fsync_each_batch) in [("bufwriter", false), ("bufwriter_fdatasync", true)] {
        let dir = bench_dir();
        let path = dir.path().join("plain.bin");
        let mut file = BufWriter::with_capacity(
            64 * 1024,
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("file"),
        );
        let mut written = 0u64;
        group.bench_function(BenchmarkId::new("plain", name), |b| {
            b.iter(|| {
                for record in &refs {
                    file.write_all(record).expect("write");
                }
                written += BATCH_BYTES;
                if fsync_each_batch {
                    file.flush().expect("flush");
                    file.get_ref().sync_data().expect("fdatasync");
                }
                if written >= BASELINE_FILE_BYTES {
                    file.flush().expect("flush");
                    file.get_mut().set_len(0).expect("truncate");
                    file.get_mut().seek(SeekFrom::Start(0)).expect("seek");
                    written = 0;
                }
            })
        });
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let owned = batch();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let mut group = c.benchmark_group("spool_replay");
    group.throughput(Throughput::Bytes((NR_REPLAY_RECORDS * RECORD_BYTES) as u64));
    group.sample_size(20);

    let dir = bench_dir();
    {
        let (mut spool, _) = Spool::open(options(dir.path(), FsyncPolicy::Never)).expect("open");
        for _ in 0..NR_REPLAY_RECORDS / RECORDS_PER_BATCH {
            spool.append_batch(&refs).expect("append");
        }
        let rest = NR_REPLAY_RECORDS % RECORDS_PER_BATCH;
        spool.append_batch(&refs[..rest]).expect("append rest");
    }

    // Restart: open (checks every record's CRC) and read everything from the segment files.
    group.bench_function("spool/open_and_read_all", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let (mut spool, report) =
                Spool::open(options(dir.path(), FsyncPolicy::Never)).expect("open");
            assert_eq!(report.nr_pending_records, NR_REPLAY_RECORDS as u64);
            let mut nr_read = 0;
            loop {
                out.clear();
                let n = spool.read_next(1024, 1 << 20, &mut out).expect("read");
                if n == 0 {
                    break;
                }
                nr_read += n;
                black_box(&out);
            }
            assert_eq!(nr_read, NR_REPLAY_RECORDS);
        })
    });

    // Reconnect: rewind an open spool and read everything again from disk (no memory tail).
    let mut disk_options = options(dir.path(), FsyncPolicy::Never);
    disk_options.memory_tail_bytes = 0;
    let (mut spool, _) = Spool::open(disk_options).expect("open");
    group.bench_function("spool/rewind_and_read_all", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            spool.rewind_to_acked();
            let mut nr_read = 0;
            loop {
                out.clear();
                let n = spool.read_next(1024, 1 << 20, &mut out).expect("read");
                if n == 0 {
                    break;
                }
                nr_read += n;
                black_box(&out);
            }
            assert_eq!(nr_read, NR_REPLAY_RECORDS);
        })
    });
    drop(spool);

    // Live sending: records read back from the in-memory tail right after their append.
    let mem_dir = bench_dir();
    let (mut spool, _) = Spool::open(options(mem_dir.path(), FsyncPolicy::Never)).expect("open");
    for _ in 0..NR_REPLAY_RECORDS / RECORDS_PER_BATCH {
        spool.append_batch(&refs).expect("append");
    }
    let nr_in_memory = spool.stats().nr_pending_records as usize;
    group.bench_function("spool/rewind_and_read_all_memory_tail", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            spool.rewind_to_acked();
            let mut nr_read = 0;
            loop {
                out.clear();
                let n = spool.read_next(1024, 1 << 20, &mut out).expect("read");
                if n == 0 {
                    break;
                }
                nr_read += n;
                black_box(&out);
            }
            assert_eq!(nr_read, nr_in_memory);
        })
    });
    drop(spool);

    // Baseline: the same payload bytes read back from one plain file through a BufReader.
    let plain = dir.path().join("plain.bin");
    {
        let mut file = BufWriter::new(File::create(&plain).expect("create"));
        for _ in 0..NR_REPLAY_RECORDS {
            file.write_all(refs[0]).expect("write");
        }
    }
    group.bench_function("plain/bufreader_read_all", |b| {
        let mut record = vec![0u8; RECORD_BYTES];
        b.iter(|| {
            let mut reader =
                BufReader::with_capacity(256 * 1024, File::open(&plain).expect("open"));
            for _ in 0..NR_REPLAY_RECORDS {
                reader.read_exact(&mut record).expect("read");
                black_box(&record);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
