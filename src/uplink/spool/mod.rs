//! The durable uplink spool: every encoded record the uplink core accepts is appended here before
//! it is sent, read back by a cursor for sending, and deleted once ThingsBoard acknowledged it.
//!
//! # Layout
//! The spool directory holds segment files `{first_seq:020}.seg` (see [`segment`] for the record
//! format: length-prefixed, CRC32C-checked, carrying their sequence number and append time),
//! `spool.state` (the acknowledged position, replaced atomically, see [`state`]) and
//! `dead-letter.jsonl` (see [`dead_letter`]). Segments are rotated when the next batch would take
//! the active one past `segment_bytes`, and a segment is deleted once every record in it is
//! acknowledged.
//!
//! # Sequence numbers and cursors
//! Records get sequence numbers 1, 2, 3… that strictly increase and are never reused, also across
//! restarts: the state file keeps a floor, refreshed with the ack position, by `tick` and on
//! close. (After a crash, numbers of records that were lost in a torn tail and never reached the
//! state file may be handed out again; no record carrying them exists any more.) Two positions move independently:
//! * the **ack position** (`first_unacked_seq`), advanced by [`Spool::ack_through`] in order;
//! * the **read cursor**, advanced by [`Spool::read_next`] and reset to the ack position by
//!   [`Spool::rewind_to_acked`] (on reconnect) and by [`Spool::open`] (replay).
//!
//! Reads are served from a bounded in-memory tail of recently appended records
//! (`memory_tail_bytes`) while the sender keeps up, and from the segment files with buffered reads
//! otherwise (replay after restart, long outages).
//!
//! # Crash guarantees per fsync policy
//! Every `append_batch` hands the whole batch to the kernel with one `write` before it returns, so
//! under **every** policy a batch survives a *process* crash (kill -9, panic, OOM kill) once
//! `append_batch` returned. The policies differ on *power loss / kernel crash*:
//! * [`FsyncPolicy::Every`]: the segment is `fdatasync`ed (and the directory fsynced when a new
//!   segment was created) before `append_batch` returns: every batch whose `append_batch` returned
//!   `Ok` survives power loss.
//! * [`FsyncPolicy::Interval`]: an fsync runs in `append_batch` or [`Spool::tick`] once `interval`
//!   has passed since the previous one: a power loss loses at most the batches appended since the
//!   last fsync, i.e. within `interval` plus the owner's tick period. What survives is always a
//!   prefix: recovery stops at the first torn or corrupt record.
//! * [`FsyncPolicy::Never`]: the spool never fsyncs; the kernel writes back dirty pages on its own
//!   schedule (on Linux typically within ~30 s), so a power loss can lose any records appended
//!   since, including whole recent segments. The state file is replaced without fsync as well.
//!
//! The acknowledged position is persisted by `ack_through` at most every `ack_persist_interval`
//! (and always before a segment file is deleted, and by `tick`, `sync` and drop). A crash therefore
//! loses at most that interval's worth of acks: those records are *re-sent* after restart
//! (at-least-once), never lost.
//!
//! # Recovery
//! [`Spool::open`] checks every record of every segment. At the first record that is torn, fails
//! its CRC, has an impossible length or an unexpected sequence number, the segment is truncated at
//! that offset with a `tracing::warn!` naming file and offset, and the open succeeds:
//! * in the **last** segment this is a torn tail (power loss mid-write): everything before it is
//!   recovered; the bytes after it are discarded (their record count cannot be known).
//! * in an **earlier** segment (corruption in the middle) the rest of that segment is discarded and
//!   recovery moves on to the next segment; the number of lost records is exact, because the next
//!   segment's file name says where it starts. It is reported in [`RecoveryReport`].
//!
//! Segments whose records are all acknowledged (left behind by a crash between persisting the
//! state and unlinking) and empty segments are deleted at open. A missing or invalid state file
//! means "nothing acknowledged": every surviving record is replayed.
//!
//! # Bounds
//! `max_bytes` bounds the bytes of all segment files. When an append would exceed it:
//! * [`FullPolicy::Backpressure`]: `append_batch` returns [`SpoolError::Full`] and writes nothing;
//!   the owner stops reading sockets until acks free room ([`Spool::has_room_for`]).
//! * [`FullPolicy::DropOldest`]: whole segments are deleted oldest first until the batch fits; the
//!   unacknowledged records and bytes dropped are counted (in [`AppendOutcome`] and
//!   [`SpoolStats`]) and logged with `tracing::warn!`. Dropping is per segment, so keep
//!   `segment_bytes` well below `max_bytes` (`open` rejects `segment_bytes > max_bytes`).
//!
//! After [`Spool::allow_overflow`] (the process is shutting down) appends ignore `max_bytes`:
//! the records the shards had already read from devices are kept on disk rather than lost at
//! exit. The overflow is bounded by what the shards hold (their outboxes and channel).
//!
//! # Errors
//! An I/O error from `append_batch` leaves the spool consistent (a partial write is truncated
//! away) unless even that truncation fails, after which every append returns
//! [`SpoolError::Poisoned`] and the owner should restart the process (recovery then cleans up).
//! An fsync error is returned as is; as on any Linux file, the data it covered may be lost.

pub mod dead_letter;
pub mod segment;
pub mod state;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use dead_letter::DeadLetterFile;
use segment::{
    READ_BUFFER_BYTES, RECORD_HEADER_BYTES, RecordFault, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
    SegmentMeta,
};
use state::{LoadedState, SpoolState};

pub use segment::MAX_RECORD_BYTES;

/// Default size at which segments rotate.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on all segment files.
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default bound of the in-memory tail the sender reads from while it keeps up.
pub const DEFAULT_MEMORY_TAIL_BYTES: usize = 16 * 1024 * 1024;
/// Default rate limit on persisting the ack position.
pub const DEFAULT_ACK_PERSIST_INTERVAL: Duration = Duration::from_millis(200);
/// Per-record bookkeeping charged to the memory tail besides the payload.
const TAIL_RECORD_OVERHEAD_BYTES: usize = 48;

/// When appended data is forced to stable storage; see the module doc for the guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Every,
    Interval(Duration),
    Never,
}

/// What an append does when the spool would exceed `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    Backpressure,
    DropOldest,
}

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub full_policy: FullPolicy,
    pub memory_tail_bytes: usize,
    pub ack_persist_interval: Duration,
}

impl SpoolOptions {
    /// Defaults: 64 MiB segments, 4 GiB bound, fsync every second, backpressure, 16 MiB memory
    /// tail, ack position persisted at most every 200 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            full_policy: FullPolicy::Backpressure,
            memory_tail_bytes: DEFAULT_MEMORY_TAIL_BYTES,
            ack_persist_interval: DEFAULT_ACK_PERSIST_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Backpressure: nothing was written; retry after acks free room.
    #[error(
        "spool full: batch needs {need_bytes} bytes but only {free_bytes} of max_bytes {max_bytes} \
         are free; stop reading devices until acknowledgements free room"
    )]
    Full {
        need_bytes: u64,
        free_bytes: u64,
        max_bytes: u64,
    },
    /// The batch could never fit; the caller must split it.
    #[error(
        "batch of {need_bytes} bytes can never fit the spool's max_bytes {max_bytes}; split it"
    )]
    BatchTooLarge { need_bytes: u64, max_bytes: u64 },
    #[error("record of {record_bytes} bytes exceeds the spool's limit of {MAX_RECORD_BYTES} bytes")]
    RecordTooLarge { record_bytes: usize },
    #[error("ack_through({seq}) is past the last appended sequence number {last_seq}")]
    AckBeyondEnd { seq: u64, last_seq: u64 },
    #[error("invalid spool options: {0}")]
    InvalidOptions(String),
    #[error("spool I/O on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A record that passed the checks at open no longer reads back: the storage is failing.
    #[error("corrupt spool record in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "spool is unusable after an earlier failed write could not be undone; restart to recover"
    )]
    Poisoned,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One place where recovery cut a segment short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
    pub discarded_bytes: u64,
    /// Exact count when the segment is followed by another one; `None` for the last segment.
    pub nr_lost_records: Option<u64>,
}

/// What [`Spool::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub nr_segments: usize,
    /// Unacknowledged records that will be replayed.
    pub nr_pending_records: u64,
    pub first_unacked_seq: u64,
    pub next_seq: u64,
    pub corruptions: Vec<Corruption>,
    /// Sum of the exact counts in `corruptions`.
    pub nr_lost_records: u64,
    /// Fully acknowledged or empty segments deleted.
    pub nr_segments_removed: usize,
    /// The state file was missing (fresh spool) or invalid: nothing is considered acknowledged.
    pub state_missing: bool,
    pub state_invalid: bool,
}

/// Result of one [`Spool::append_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence number of the first record of the batch.
    pub first_seq: u64,
    /// Sequence number of the last record; `first_seq - 1` for an empty batch.
    pub last_seq: u64,
    /// Unacknowledged records deleted by [`FullPolicy::DropOldest`] to make room.
    pub nr_dropped_records: u64,
    pub nr_dropped_bytes: u64,
}

/// A plain snapshot for metrics and the status endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub disk_bytes: u64,
    pub max_bytes: u64,
    pub nr_segments: usize,
    /// Appended but not acknowledged.
    pub nr_pending_records: u64,
    /// Age of the oldest unacknowledged record. Exact while it is in the memory tail, otherwise
    /// taken from the sparse index entry before it, so it may be overstated by the time it took to
    /// append 64 KiB.
    pub oldest_pending_age: Option<Duration>,
    pub first_unacked_seq: u64,
    pub read_seq: u64,
    pub next_seq: u64,
    /// Records found pending at open that the cursor has not read yet (0 when replay is done).
    pub nr_replay_remaining_records: u64,
    /// Records found pending at open.
    pub nr_replay_total_records: u64,
    pub nr_memory_tail_records: usize,
    pub memory_tail_bytes: usize,
    pub nr_dropped_records: u64,
    pub nr_dropped_bytes: u64,
    pub nr_full_rejections: u64,
    pub nr_dead_letter_records: u64,
}

/// On-disk size of a batch of `nr_records` records holding `payload_bytes` in total.
pub const fn spooled_bytes(nr_records: usize, payload_bytes: u64) -> u64 {
    nr_records as u64 * RECORD_HEADER_BYTES as u64 + payload_bytes
}

#[derive(Debug)]
struct TailRecord {
    seq: u64,
    ts_ms: u64,
    payload: Bytes,
}

/// An open reader positioned at a record boundary of one segment.
#[derive(Debug)]
struct DiskCursor {
    seg_first_seq: u64,
    reader: BufReader<File>,
    offset: u64,
    next_seq: u64,
}

enum DiskStep {
    Record(u64, Bytes),
    OverBudget,
    /// The cursor moved (segment change, gap skipped) without producing a record.
    Moved,
}

#[derive(Debug)]
pub struct Spool {
    options: SpoolOptions,
    /// Oldest first; the last one is the active segment when `writer` is set.
    segments: VecDeque<SegmentMeta>,
    writer: Option<File>,
    disk_bytes: u64,
    next_seq: u64,
    first_unacked_seq: u64,
    read_seq: u64,
    /// Contiguous records ending at `next_seq - 1`, all at or after `first_unacked_seq`.
    tail: VecDeque<TailRecord>,
    tail_bytes: usize,
    cursor: Option<DiskCursor>,
    read_buf: BytesMut,
    unsynced: bool,
    dir_unsynced: bool,
    last_sync: Instant,
    /// What the state file holds now; it is stale when this differs from the live position.
    persisted: SpoolState,
    last_state_write: Instant,
    dead_letter: DeadLetterFile,
    replay_end_seq: u64,
    nr_replay_total_records: u64,
    nr_dropped_records: u64,
    nr_dropped_bytes: u64,
    nr_full_rejections: u64,
    nr_dead_letter_records: u64,
    poisoned: bool,
    /// Shutting down: appends ignore `max_bytes` (see the module header).
    overflow_allowed: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Spool {
    /// Opens (creating if needed) the spool in `options.dir`, recovering as the module doc says.
    pub fn open(options: SpoolOptions) -> Result<(Spool, RecoveryReport), SpoolError> {
        validate(&options)?;
        let dir = options.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _ = fs::remove_file(dir.join(state::STATE_TMP_FILE_NAME));

        let mut report = RecoveryReport::default();
        let loaded = state::load_state(&dir).map_err(io_err(&dir))?;
        let saved = match loaded {
            LoadedState::Valid(s) => Some(s),
            LoadedState::Missing => {
                report.state_missing = true;
                None
            }
            LoadedState::Invalid => {
                tracing::warn!(dir = %dir.display(), "spool state file invalid; replaying every surviving record");
                report.state_invalid = true;
                None
            }
        };

        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(first_seq) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_segment_file_name)
            {
                names.push((first_seq, entry.path()));
            }
        }
        names.sort_unstable_by_key(|(first_seq, _)| *first_seq);

        // Sequence numbers must never be reused: every name and the saved floor bound them.
        let mut next_seq = 1u64;
        if let Some(s) = saved {
            next_seq = next_seq.max(s.next_seq_floor).max(s.first_unacked_seq);
        }
        let mut first_unacked_seq = saved.map_or(1, |s| s.first_unacked_seq);

        let mut scanned: Vec<SegmentMeta> = Vec::with_capacity(names.len());
        for (i, (first_seq, path)) in names.iter().enumerate() {
            next_seq = next_seq.max(*first_seq);
            let (meta, fault) = segment::scan_segment(path, *first_seq).map_err(io_err(path))?;
            if let Some(fault) = fault {
                let file_bytes = fs::metadata(path).map_err(io_err(path))?.len();
                let nr_lost_records = names
                    .get(i + 1)
                    .map(|(next_first, _)| next_first.saturating_sub(meta.end_seq()));
                tracing::warn!(
                    file = %path.display(),
                    offset = fault.offset,
                    reason = %fault.reason,
                    discarded_bytes = file_bytes - meta.bytes,
                    lost_records = ?nr_lost_records,
                    "spool segment corrupt; recovered up to the last good record"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                file.set_len(meta.bytes).map_err(io_err(path))?;
                if options.fsync != FsyncPolicy::Never {
                    file.sync_all().map_err(io_err(path))?;
                }
                report.nr_lost_records += nr_lost_records.unwrap_or(0);
                report.corruptions.push(Corruption {
                    path: path.clone(),
                    offset: fault.offset,
                    reason: fault.reason,
                    discarded_bytes: file_bytes - meta.bytes,
                    nr_lost_records,
                });
            }
            next_seq = next_seq.max(meta.end_seq());
            scanned.push(meta);
        }
        if saved.is_none() {
            first_unacked_seq = scanned
                .iter()
                .find(|m| m.nr_records > 0)
                .map_or(next_seq, |m| m.first_seq);
        }

        let mut segments = VecDeque::with_capacity(scanned.len());
        let mut disk_bytes = 0;
        for meta in scanned {
            if meta.nr_records == 0 || meta.end_seq() <= first_unacked_seq {
                fs::remove_file(&meta.path).map_err(io_err(&meta.path))?;
                report.nr_segments_removed += 1;
            } else {
                disk_bytes += meta.bytes;
                segments.push_back(meta);
            }
        }

        let now = Instant::now();
        let mut spool = Spool {
            dead_letter: DeadLetterFile::new(&dir),
            options,
            segments,
            writer: None,
            disk_bytes,
            next_seq,
            first_unacked_seq,
            read_seq: first_unacked_seq,
            tail: VecDeque::new(),
            tail_bytes: 0,
            cursor: None,
            read_buf: BytesMut::new(),
            unsynced: false,
            dir_unsynced: report.nr_segments_removed > 0,
            last_sync: now,
            persisted: SpoolState {
                first_unacked_seq: 0,
                next_seq_floor: 0,
            },
            last_state_write: now,
            replay_end_seq: next_seq,
            nr_replay_total_records: 0,
            nr_dropped_records: 0,
            nr_dropped_bytes: 0,
            nr_full_rejections: 0,
            nr_dead_letter_records: 0,
            poisoned: false,
            overflow_allowed: false,
        };
        spool.nr_replay_total_records = spool.count_records(first_unacked_seq, next_seq);
        // Persist the recovered position (and the seq floor) so a second crash starts from here.
        spool.persist_state()?;

        report.nr_segments = spool.segments.len();
        report.nr_pending_records = spool.nr_replay_total_records;
        report.first_unacked_seq = spool.first_unacked_seq;
        report.next_seq = spool.next_seq;
        Ok((spool, report))
    }

    /// Appends `records` as one batch with one `write`, then fsyncs as the policy says.
    pub fn append_batch(&mut self, records: &[&[u8]]) -> Result<AppendOutcome, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let first_seq = self.next_seq;
        let mut outcome = AppendOutcome {
            first_seq,
            last_seq: first_seq - 1,
            nr_dropped_records: 0,
            nr_dropped_bytes: 0,
        };
        if records.is_empty() {
            return Ok(outcome);
        }
        let mut payload_bytes = 0u64;
        for record in records {
            if record.len() > MAX_RECORD_BYTES {
                return Err(SpoolError::RecordTooLarge {
                    record_bytes: record.len(),
                });
            }
            payload_bytes += record.len() as u64;
        }
        let batch_bytes = spooled_bytes(records.len(), payload_bytes);
        // Counted with a segment header, which the batch may need if it starts a segment.
        let need_bytes = batch_bytes + SEGMENT_HEADER_BYTES;
        let max_bytes = self.options.max_bytes;
        if need_bytes > max_bytes {
            return Err(SpoolError::BatchTooLarge {
                need_bytes,
                max_bytes,
            });
        }
        if self.disk_bytes + need_bytes > max_bytes {
            self.reclaim_if_all_acked()?;
        }
        if self.disk_bytes + need_bytes > max_bytes && !self.overflow_allowed {
            match self.options.full_policy {
                FullPolicy::Backpressure => {
                    self.nr_full_rejections += 1;
                    return Err(SpoolError::Full {
                        need_bytes,
                        free_bytes: max_bytes.saturating_sub(self.disk_bytes),
                        max_bytes,
                    });
                }
                FullPolicy::DropOldest => {
                    let (records, bytes) = self.drop_oldest_until(need_bytes)?;
                    outcome.nr_dropped_records = records;
                    outcome.nr_dropped_bytes = bytes;
                }
            }
        }

        if self.writer.is_some() {
            let active_bytes = self.segments.back().map_or(0, |s| s.bytes);
            if active_bytes + batch_bytes > self.options.segment_bytes
                && active_bytes > SEGMENT_HEADER_BYTES
            {
                self.seal_active()?;
            }
        }
        if self.writer.is_none() {
            self.start_segment(first_seq)?;
        }

        let ts_ms = now_ms();
        let Some(meta) = self.segments.back_mut() else {
            return Err(SpoolError::Poisoned);
        };
        let starts_segment = meta.bytes == 0;
        let mut buf = Vec::with_capacity(batch_bytes as usize + SEGMENT_HEADER_BYTES as usize);
        if starts_segment {
            buf.extend_from_slice(SEGMENT_MAGIC);
        }
        let mut offsets = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            offsets.push(buf.len());
            segment::encode_record(&mut buf, first_seq + i as u64, ts_ms, record);
        }
        let base_offset = meta.bytes;
        if let Some(writer) = self.writer.as_mut()
            && let Err(source) = writer.write_all(&buf)
        {
            let undone = writer
                .set_len(base_offset)
                .and_then(|()| writer.seek(SeekFrom::Start(base_offset)).map(drop));
            if undone.is_err() {
                self.poisoned = true;
            }
            let path = meta.path.clone();
            self.writer = None;
            // A reader may have buffered bytes of the failed write.
            self.cursor = None;
            if meta.nr_records == 0 {
                // A segment this batch started: forget it so the retry can create it afresh.
                self.segments.pop_back();
                if fs::remove_file(&path).is_err() {
                    self.poisoned = true;
                }
            }
            return Err(SpoolError::Io { path, source });
        }
        for (i, at) in offsets.iter().enumerate() {
            meta.note_record(first_seq + i as u64, base_offset + *at as u64, ts_ms);
        }
        meta.bytes += buf.len() as u64;
        self.disk_bytes += buf.len() as u64;
        self.next_seq += records.len() as u64;
        self.unsynced = true;
        outcome.last_seq = self.next_seq - 1;

        // The tail shares the write buffer: one allocation per batch, no copy per record.
        let shared = Bytes::from(buf);
        for (i, (record, at)) in records.iter().zip(offsets).enumerate() {
            let start = at + RECORD_HEADER_BYTES;
            self.tail.push_back(TailRecord {
                seq: first_seq + i as u64,
                ts_ms,
                payload: shared.slice(start..start + record.len()),
            });
            self.tail_bytes += record.len() + TAIL_RECORD_OVERHEAD_BYTES;
        }
        while self.tail_bytes > self.options.memory_tail_bytes {
            self.pop_tail_front();
        }

        match self.options.fsync {
            FsyncPolicy::Every => self.sync_data()?,
            FsyncPolicy::Interval(interval) if self.last_sync.elapsed() >= interval => {
                self.sync_data()?
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {}
        }
        Ok(outcome)
    }

    /// Appends to `out` the next records after the read cursor, at most `max_records` and at most
    /// `max_bytes` of payload — but always at least one record when one is pending, so a record
    /// larger than `max_bytes` cannot stall the sender. Returns how many were appended.
    pub fn read_next(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<usize, SpoolError> {
        let mut nr_read = 0;
        let mut nr_bytes = 0usize;
        self.read_seq = self.read_seq.max(self.first_unacked_seq);
        while nr_read < max_records && self.read_seq < self.next_seq {
            if let Some(front_seq) = self.tail.front().map(|r| r.seq)
                && self.read_seq >= front_seq
            {
                let record = &self.tail[(self.read_seq - front_seq) as usize];
                if nr_read > 0 && nr_bytes + record.payload.len() > max_bytes {
                    break;
                }
                out.push((record.seq, record.payload.clone()));
                nr_read += 1;
                nr_bytes += record.payload.len();
                self.read_seq += 1;
                continue;
            }
            let budget = if nr_read == 0 {
                usize::MAX
            } else {
                // Past the budget already (a first record may exceed it): not even an empty
                // record more, as on the memory-tail path.
                match max_bytes.checked_sub(nr_bytes) {
                    Some(budget) => budget,
                    None => break,
                }
            };
            match self.read_disk_record(budget)? {
                DiskStep::Record(seq, payload) => {
                    nr_bytes += payload.len();
                    out.push((seq, payload));
                    nr_read += 1;
                    self.read_seq = seq + 1;
                }
                DiskStep::OverBudget => break,
                DiskStep::Moved => {}
            }
        }
        Ok(nr_read)
    }

    /// Marks every record up to and including `seq` acknowledged, deletes segments that became
    /// fully acknowledged, and persists the position (at most every `ack_persist_interval`, and
    /// always before deleting a segment). Acks at or below the current position are no-ops.
    pub fn ack_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq >= self.next_seq {
            return Err(SpoolError::AckBeyondEnd {
                seq,
                last_seq: self.next_seq - 1,
            });
        }
        if seq < self.first_unacked_seq {
            return Ok(());
        }
        self.first_unacked_seq = seq + 1;
        self.read_seq = self.read_seq.max(self.first_unacked_seq);
        while self
            .tail
            .front()
            .is_some_and(|r| r.seq < self.first_unacked_seq)
        {
            self.pop_tail_front();
        }
        if self.delete_acked_segments()? == 0
            && self.last_state_write.elapsed() >= self.options.ack_persist_interval
        {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Moves the read cursor back to the first unacknowledged record (after a reconnect).
    pub fn rewind_to_acked(&mut self) {
        self.read_seq = self.first_unacked_seq;
    }

    /// Moves the read cursor back to `seq` (never before the first unacknowledged record), so
    /// records read but not sent are read again by the next [`Spool::read_next`].
    pub fn unread_from(&mut self, seq: u64) {
        self.read_seq = seq.max(self.first_unacked_seq);
    }

    /// Periodic duties: the interval fsync and persisting a pending ack position. Call it about
    /// every `interval` / `ack_persist_interval`.
    /// From now on appends ignore `max_bytes` (neither refused nor dropping the oldest): for the
    /// shutdown drain, so that what the shards already read reaches the disk.
    pub fn allow_overflow(&mut self) {
        self.overflow_allowed = true;
    }

    pub fn tick(&mut self) -> Result<(), SpoolError> {
        if let FsyncPolicy::Interval(interval) = self.options.fsync
            && self.last_sync.elapsed() >= interval
        {
            self.sync_data()?;
        }
        if self.state_stale()
            && self.last_state_write.elapsed() >= self.options.ack_persist_interval
        {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Forces everything out now: fsync of the active segment (unless the policy is `never`) and
    /// the ack position. For orderly shutdown; drop does the same, logging instead of returning
    /// errors.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.options.fsync != FsyncPolicy::Never {
            self.sync_data()?;
        }
        if self.state_stale() {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Appends rejected records with the server's error to `dead-letter.jsonl`.
    pub fn dead_letter(&mut self, records: &[&[u8]], error_msg: &str) -> Result<(), SpoolError> {
        let durable = self.options.fsync == FsyncPolicy::Every;
        let path = self.dead_letter.path().to_path_buf();
        self.dead_letter
            .append(records, error_msg, now_ms(), durable)
            .map_err(io_err(&path))?;
        self.nr_dead_letter_records += records.len() as u64;
        tracing::warn!(
            file = %path.display(),
            nr_records = records.len(),
            error = error_msg,
            "rejected uplink records written to the dead-letter file"
        );
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        let oldest_pending_ts_ms = self.oldest_pending_ts_ms();
        SpoolStats {
            disk_bytes: self.disk_bytes,
            max_bytes: self.options.max_bytes,
            nr_segments: self.segments.len(),
            nr_pending_records: self.count_records(self.first_unacked_seq, self.next_seq),
            oldest_pending_age: oldest_pending_ts_ms
                .map(|ts| Duration::from_millis(now_ms().saturating_sub(ts))),
            first_unacked_seq: self.first_unacked_seq,
            read_seq: self.read_seq.max(self.first_unacked_seq),
            next_seq: self.next_seq,
            nr_replay_remaining_records: self.count_records(
                self.read_seq.max(self.first_unacked_seq),
                self.replay_end_seq,
            ),
            nr_replay_total_records: self.nr_replay_total_records,
            nr_memory_tail_records: self.tail.len(),
            memory_tail_bytes: self.tail_bytes,
            nr_dropped_records: self.nr_dropped_records,
            nr_dropped_bytes: self.nr_dropped_bytes,
            nr_full_rejections: self.nr_full_rejections,
            nr_dead_letter_records: self.nr_dead_letter_records,
        }
    }

    /// Records after the read cursor: appended, not yet read for sending on this session.
    pub fn nr_unread_records(&self) -> u64 {
        self.count_records(self.read_seq.max(self.first_unacked_seq), self.next_seq)
    }

    /// Whether `bytes` more on disk (see [`spooled_bytes`]) fit under `max_bytes` without dropping
    /// anything. Under backpressure, the owner stops reading sockets while this is false.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        let reclaimable = if self.first_unacked_seq >= self.next_seq {
            self.disk_bytes
        } else {
            0
        };
        self.disk_bytes - reclaimable + bytes + SEGMENT_HEADER_BYTES <= self.options.max_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    // ---- internals ----

    fn pop_tail_front(&mut self) {
        if let Some(record) = self.tail.pop_front() {
            self.tail_bytes -= record.payload.len() + TAIL_RECORD_OVERHEAD_BYTES;
        }
    }

    /// Records present in `[from, to)`; segments may have gaps left by recovery.
    fn count_records(&self, from: u64, to: u64) -> u64 {
        self.segments
            .iter()
            .map(|s| s.end_seq().min(to).saturating_sub(s.first_seq.max(from)))
            .sum()
    }

    fn oldest_pending_ts_ms(&self) -> Option<u64> {
        if let Some(front) = self.tail.front()
            && front.seq <= self.first_unacked_seq
        {
            return Some(front.ts_ms);
        }
        let seg = self
            .segments
            .iter()
            .find(|s| s.end_seq() > self.first_unacked_seq)?;
        let seq = self.first_unacked_seq.max(seg.first_seq);
        seg.locate(seq).map(|e| e.ts_ms)
    }

    fn live_state(&self) -> SpoolState {
        SpoolState {
            first_unacked_seq: self.first_unacked_seq,
            next_seq_floor: self.next_seq,
        }
    }

    fn state_stale(&self) -> bool {
        self.persisted != self.live_state()
    }

    fn persist_state(&mut self) -> Result<(), SpoolError> {
        let state = self.live_state();
        let durable = self.options.fsync != FsyncPolicy::Never;
        state::store_state(&self.options.dir, &state, durable)
            .map_err(io_err(&self.options.dir))?;
        self.persisted = state;
        self.last_state_write = Instant::now();
        Ok(())
    }

    fn sync_data(&mut self) -> Result<(), SpoolError> {
        if self.unsynced
            && let Some(writer) = &self.writer
        {
            let path = self
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            writer.sync_data().map_err(io_err(&path))?;
        }
        self.unsynced = false;
        if self.dir_unsynced {
            state::sync_dir(&self.options.dir).map_err(io_err(&self.options.dir))?;
            self.dir_unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        let path = self.options.dir.join(segment::segment_file_name(first_seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.segments.push_back(SegmentMeta::new(path, first_seq));
        self.writer = Some(file);
        self.dir_unsynced = true;
        Ok(())
    }

    /// Closes the active segment, fsyncing it first unless the policy is `never`, so sealed
    /// segments never hold unsynced data.
    fn seal_active(&mut self) -> Result<(), SpoolError> {
        if self.options.fsync != FsyncPolicy::Never {
            self.sync_data()?;
        }
        self.writer = None;
        self.unsynced = false;
        self.delete_acked_segments()?;
        Ok(())
    }

    /// Deletes leading segments whose records are all acknowledged (not the one being written),
    /// persisting the ack position first. Returns how many were deleted.
    fn delete_acked_segments(&mut self) -> Result<usize, SpoolError> {
        let nr_sealed = self.segments.len() - usize::from(self.writer.is_some());
        let nr_deletable = self
            .segments
            .iter()
            .take(nr_sealed)
            .take_while(|s| s.end_seq() <= self.first_unacked_seq)
            .count();
        if nr_deletable > 0 {
            self.remove_front_segments(nr_deletable)?;
        }
        Ok(nr_deletable)
    }

    /// Persists the state, then unlinks the `n` oldest segments (the state must be on disk first:
    /// after a crash in between, the leftover files are recognised as acknowledged).
    fn remove_front_segments(&mut self, n: usize) -> Result<(), SpoolError> {
        self.persist_state()?;
        for _ in 0..n {
            let Some(meta) = self.segments.pop_front() else {
                break;
            };
            if self.segments.is_empty() {
                // The active segment itself went: the next append starts a new one.
                self.writer = None;
                self.unsynced = false;
            }
            if self
                .cursor
                .as_ref()
                .is_some_and(|c| c.seg_first_seq == meta.first_seq)
            {
                self.cursor = None;
            }
            fs::remove_file(&meta.path).map_err(io_err(&meta.path))?;
            self.disk_bytes -= meta.bytes;
        }
        Ok(())
    }

    /// When every record is acknowledged, all segments — the active one included — can go.
    fn reclaim_if_all_acked(&mut self) -> Result<(), SpoolError> {
        if self.first_unacked_seq >= self.next_seq && !self.segments.is_empty() {
            self.remove_front_segments(self.segments.len())?;
        }
        Ok(())
    }

    /// Deletes oldest segments until `need_bytes` fit; returns the unacknowledged records and
    /// on-disk bytes that were lost.
    fn drop_oldest_until(&mut self, need_bytes: u64) -> Result<(u64, u64), SpoolError> {
        let mut nr_drop = 0;
        let mut freed = 0;
        let mut new_first_unacked = self.first_unacked_seq;
        let (mut nr_records, mut nr_bytes) = (0u64, 0u64);
        for meta in &self.segments {
            if self.disk_bytes - freed + need_bytes <= self.options.max_bytes {
                break;
            }
            if meta.end_seq() > new_first_unacked {
                let from_seq = new_first_unacked.max(meta.first_seq);
                let from_offset = segment::offset_of_seq(meta, from_seq)
                    .map_err(|fault| fault_error(&meta.path, 0, fault))?;
                nr_records += meta.end_seq() - from_seq;
                nr_bytes += meta.bytes - from_offset;
                tracing::warn!(
                    file = %meta.path.display(),
                    nr_records = meta.end_seq() - from_seq,
                    nr_bytes = meta.bytes - from_offset,
                    first_seq = from_seq,
                    "spool full: dropped the oldest unacknowledged records"
                );
            }
            new_first_unacked = new_first_unacked.max(meta.end_seq());
            freed += meta.bytes;
            nr_drop += 1;
        }
        self.first_unacked_seq = new_first_unacked;
        self.read_seq = self.read_seq.max(new_first_unacked);
        while self
            .tail
            .front()
            .is_some_and(|r| r.seq < self.first_unacked_seq)
        {
            self.pop_tail_front();
        }
        self.remove_front_segments(nr_drop)?;
        self.nr_dropped_records += nr_records;
        self.nr_dropped_bytes += nr_bytes;
        Ok((nr_records, nr_bytes))
    }

    /// One step of reading from the segment files at `read_seq`.
    fn read_disk_record(&mut self, budget_bytes: usize) -> Result<DiskStep, SpoolError> {
        let positioned = self
            .cursor
            .as_ref()
            .is_some_and(|c| c.next_seq == self.read_seq);
        if !positioned && !self.position_cursor()? {
            return Ok(DiskStep::Moved);
        }
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(DiskStep::Moved);
        };
        let Some(meta) = self
            .segments
            .iter()
            .find(|s| s.first_seq == cursor.seg_first_seq)
        else {
            self.cursor = None;
            return Ok(DiskStep::Moved);
        };
        if cursor.offset >= meta.bytes {
            // End of this segment: continue at the next one (possibly after a gap).
            let next_first = self
                .segments
                .iter()
                .find(|s| s.first_seq > cursor.seg_first_seq)
                .map_or(self.next_seq, |s| s.first_seq);
            self.read_seq = self.read_seq.max(next_first);
            self.cursor = None;
            return Ok(DiskStep::Moved);
        }
        let path = &meta.path;
        let header = segment::read_header(&mut cursor.reader, cursor.next_seq)
            .map_err(|fault| fault_error(path, cursor.offset, fault))?
            .ok_or_else(|| fault_error(path, cursor.offset, RecordFault::Torn))?;
        let len = header.payload_len as usize;
        if len > budget_bytes {
            cursor
                .reader
                .seek_relative(-(RECORD_HEADER_BYTES as i64))
                .map_err(io_err(path))?;
            return Ok(DiskStep::OverBudget);
        }
        if self.read_buf.capacity() < len {
            self.read_buf.reserve(len.max(READ_BUFFER_BYTES));
        }
        self.read_buf.resize(len, 0);
        segment::read_payload(&mut cursor.reader, &header, &mut self.read_buf[..])
            .map_err(|fault| fault_error(path, cursor.offset, fault))?;
        let payload = self.read_buf.split_to(len).freeze();
        cursor.offset += header.encoded_bytes();
        cursor.next_seq += 1;
        Ok(DiskStep::Record(header.seq, payload))
    }

    /// Opens a cursor at `read_seq` (or at the next record after a gap). Returns false when it
    /// moved `read_seq` instead.
    fn position_cursor(&mut self) -> Result<bool, SpoolError> {
        self.cursor = None;
        let idx = self
            .segments
            .partition_point(|s| s.end_seq() <= self.read_seq);
        let Some(meta) = self.segments.get(idx) else {
            // Nothing on disk at or after read_seq (a gap at the end left by recovery).
            self.read_seq = self.next_seq;
            return Ok(false);
        };
        if self.read_seq < meta.first_seq {
            self.read_seq = meta.first_seq;
            return Ok(false);
        }
        let Some(entry) = meta.locate(self.read_seq) else {
            self.read_seq = meta.end_seq();
            return Ok(false);
        };
        let mut file = File::open(&meta.path).map_err(io_err(&meta.path))?;
        file.seek(SeekFrom::Start(entry.offset))
            .map_err(io_err(&meta.path))?;
        let mut cursor = DiskCursor {
            seg_first_seq: meta.first_seq,
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, file),
            offset: entry.offset,
            next_seq: entry.seq,
        };
        while cursor.next_seq < self.read_seq {
            let header = segment::read_header(&mut cursor.reader, cursor.next_seq)
                .map_err(|fault| fault_error(&meta.path, cursor.offset, fault))?
                .ok_or_else(|| fault_error(&meta.path, cursor.offset, RecordFault::Torn))?;
            cursor
                .reader
                .seek_relative(i64::from(header.payload_len))
                .map_err(io_err(&meta.path))?;
            cursor.offset += header.encoded_bytes();
            cursor.next_seq += 1;
        }
        self.cursor = Some(cursor);
        Ok(true)
    }
}

fn fault_error(path: &Path, offset: u64, fault: RecordFault) -> SpoolError {
    match fault {
        RecordFault::Io(source) => SpoolError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => SpoolError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: other.reason(),
        },
    }
}

fn validate(options: &SpoolOptions) -> Result<(), SpoolError> {
    let min_bytes = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES as u64;
    if options.segment_bytes < min_bytes {
        return Err(SpoolError::InvalidOptions(format!(
            "segment_bytes = {} is below the minimum of {min_bytes}",
            options.segment_bytes
        )));
    }
    if options.segment_bytes > options.max_bytes {
        return Err(SpoolError::InvalidOptions(format!(
            "segment_bytes = {} exceeds max_bytes = {}; segments must be a fraction of max_bytes",
            options.segment_bytes, options.max_bytes
        )));
    }
    if let FsyncPolicy::Interval(interval) = options.fsync
        && interval.is_zero()
    {
        return Err(SpoolError::InvalidOptions(
            "fsync interval = 0; use the `every` policy instead".to_owned(),
        ));
    }
    Ok(())
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(dir = %self.options.dir.display(), error = %e, "spool sync on close failed");
        }
    }
}
