//! Segment files: the on-disk record format, its encoder and the checked reader.
//!
//! A segment is named after the sequence number of its first record (`{first_seq:020}.seg`) and
//! holds an 8-byte magic followed by records, each
//!
//! ```text
//! payload_len u32 LE | crc32c u32 LE | seq u64 LE | append_ts_ms u64 LE | payload
//! ```
//!
//! The CRC32C covers `payload_len`, `seq`, `append_ts_ms` and the payload, so a torn write, a
//! flipped bit or a record from the wrong place all fail the check. Inside one segment sequence
//! numbers are contiguous, starting at the number in the file name; the reader checks that too.
//! Each [`SegmentMeta`] keeps a sparse index (one entry per [`INDEX_STRIDE_BYTES`]) so a reader can
//! seek near any record without scanning the segment from its start.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// First bytes of every segment file; the trailing digit is the format version.
pub const SEGMENT_MAGIC: &[u8; 8] = b"TISPOOL1";
pub const SEGMENT_HEADER_BYTES: u64 = SEGMENT_MAGIC.len() as u64;
/// Bytes each record costs on disk besides its payload.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Largest payload a record may carry. Encoded uplink records are a few hundred bytes; anything
/// near this limit is a bug upstream, and a length field above it marks a corrupt header.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Distance between sparse index entries: bounds a seek-then-scan to this many bytes while
/// keeping the index at ~1000 entries for a 64 MiB segment.
pub const INDEX_STRIDE_BYTES: u64 = 64 * 1024;
/// Read buffer for replaying segments from disk.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

const SEGMENT_SUFFIX: &str = ".seg";

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number encoded in a segment file name, `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn record_crc(payload_len: u32, seq: u64, ts_ms: u64, payload: &[u8]) -> u32 {
    let mut fixed = [0u8; 20];
    fixed[0..4].copy_from_slice(&payload_len.to_le_bytes());
    fixed[4..12].copy_from_slice(&seq.to_le_bytes());
    fixed[12..20].copy_from_slice(&ts_ms.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&fixed), payload)
}

/// Appends one encoded record to `out`. The caller has checked `payload.len() <= MAX_RECORD_BYTES`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, ts_ms: u64, payload: &[u8]) {
    let payload_len = payload.len() as u32;
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&record_crc(payload_len, seq, ts_ms, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub seq: u64,
    pub ts_ms: u64,
}

impl RecordHeader {
    fn decode(buf: &[u8; RECORD_HEADER_BYTES]) -> Self {
        let u32_at =
            |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_le_bytes(b)
        };
        RecordHeader {
            payload_len: u32_at(0),
            crc: u32_at(4),
            seq: u64_at(8),
            ts_ms: u64_at(16),
        }
    }

    pub fn encoded_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }
}

/// Why a record could not be read back. Everything but `Io` means the bytes on disk are not a
/// record we wrote there.
#[derive(Debug)]
pub enum RecordFault {
    Io(io::Error),
    /// The file ends inside the header or the payload: a write cut short by a crash.
    Torn,
    TooLarge(u32),
    WrongSequence {
        expected: u64,
        found: u64,
    },
    Checksum,
}

impl RecordFault {
    pub fn reason(&self) -> String {
        match self {
            RecordFault::Io(e) => format!("read error: {e}"),
            RecordFault::Torn => "record cut short (torn write)".to_owned(),
            RecordFault::TooLarge(len) => format!("length field {len} exceeds {MAX_RECORD_BYTES}"),
            RecordFault::WrongSequence { expected, found } => {
                format!("sequence {found} where {expected} was expected")
            }
            RecordFault::Checksum => "CRC32C mismatch".to_owned(),
        }
    }
}

/// Reads as many bytes as are there, up to `buf.len()`; returns how many.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the next record header; `Ok(None)` at a clean end of file (a record boundary).
pub fn read_header<R: Read>(
    reader: &mut R,
    expected_seq: u64,
) -> Result<Option<RecordHeader>, RecordFault> {
    let mut buf = [0u8; RECORD_HEADER_BYTES];
    match read_up_to(reader, &mut buf).map_err(RecordFault::Io)? {
        0 => return Ok(None),
        RECORD_HEADER_BYTES => {}
        _ => return Err(RecordFault::Torn),
    }
    let header = RecordHeader::decode(&buf);
    if header.payload_len as usize > MAX_RECORD_BYTES {
        return Err(RecordFault::TooLarge(header.payload_len));
    }
    if header.seq != expected_seq {
        return Err(RecordFault::WrongSequence {
            expected: expected_seq,
            found: header.seq,
        });
    }
    Ok(Some(header))
}

/// Reads the payload announced by `header` into `payload` (exactly `payload_len` bytes long) and
/// checks the CRC.
pub fn read_payload<R: Read>(
    reader: &mut R,
    header: &RecordHeader,
    payload: &mut [u8],
) -> Result<(), RecordFault> {
    if read_up_to(reader, payload).map_err(RecordFault::Io)? != payload.len() {
        return Err(RecordFault::Torn);
    }
    if record_crc(header.payload_len, header.seq, header.ts_ms, payload) != header.crc {
        return Err(RecordFault::Checksum);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
    pub ts_ms: u64,
}

/// What the spool knows about one segment file without reading it.
#[derive(Debug)]
pub struct SegmentMeta {
    pub path: PathBuf,
    pub first_seq: u64,
    pub nr_records: u64,
    /// Valid bytes: the file is never read past this, and recovery truncates it to this.
    pub bytes: u64,
    /// Sparse, ascending by seq; the first record of the segment is always entry 0.
    pub index: Vec<IndexEntry>,
}

impl SegmentMeta {
    pub fn new(path: PathBuf, first_seq: u64) -> Self {
        SegmentMeta {
            path,
            first_seq,
            nr_records: 0,
            bytes: 0,
            index: Vec::new(),
        }
    }

    /// One past the last sequence number held.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.nr_records
    }

    /// Records a record appended at `offset` (the caller then adds its bytes to `self.bytes`).
    pub fn note_record(&mut self, seq: u64, offset: u64, ts_ms: u64) {
        let due = match self.index.last() {
            None => true,
            Some(last) => offset >= last.offset + INDEX_STRIDE_BYTES,
        };
        if due {
            self.index.push(IndexEntry { seq, offset, ts_ms });
        }
        self.nr_records += 1;
    }

    /// The index entry at or before `seq` (which must be inside this segment).
    pub fn locate(&self, seq: u64) -> Option<IndexEntry> {
        let after = self.index.partition_point(|e| e.seq <= seq);
        after.checked_sub(1).map(|i| self.index[i])
    }
}

/// Where a segment scan stopped early.
#[derive(Debug)]
pub struct ScanFault {
    pub offset: u64,
    pub reason: String,
}

/// Reads a whole segment, checking every record. Stops at the first bad record and reports it;
/// `meta` then describes the good prefix.
pub fn scan_segment(path: &Path, first_seq: u64) -> io::Result<(SegmentMeta, Option<ScanFault>)> {
    let mut meta = SegmentMeta::new(path.to_path_buf(), first_seq);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, File::open(path)?);
    let mut magic = [0u8; SEGMENT_MAGIC.len()];
    let got = read_up_to(&mut reader, &mut magic)?;
    if got == 0 {
        return Ok((meta, None));
    }
    if got < magic.len() || &magic != SEGMENT_MAGIC {
        return Ok((
            meta,
            Some(ScanFault {
                offset: 0,
                reason: "bad segment magic".to_owned(),
            }),
        ));
    }
    meta.bytes = SEGMENT_HEADER_BYTES;
    let mut payload = Vec::new();
    loop {
        let expected = meta.end_seq();
        let header = match read_header(&mut reader, expected) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((meta, None)),
            Err(RecordFault::Io(e)) => return Err(e),
            Err(fault) => {
                let fault = fault_at(&meta, fault);
                return Ok((meta, Some(fault)));
            }
        };
        payload.resize(header.payload_len as usize, 0);
        match read_payload(&mut reader, &header, &mut payload) {
            Ok(()) => {}
            Err(RecordFault::Io(e)) => return Err(e),
            Err(fault) => {
                let fault = fault_at(&meta, fault);
                return Ok((meta, Some(fault)));
            }
        }
        let offset = meta.bytes;
        meta.note_record(header.seq, offset, header.ts_ms);
        meta.bytes += header.encoded_bytes();
    }
}

fn fault_at(meta: &SegmentMeta, fault: RecordFault) -> ScanFault {
    ScanFault {
        offset: meta.bytes,
        reason: fault.reason(),
    }
}

/// Byte offset of record `seq` inside `meta`'s file: a seek to the nearest index entry and a
/// header-only walk from there.
pub fn offset_of_seq(meta: &SegmentMeta, seq: u64) -> Result<u64, RecordFault> {
    let Some(entry) = meta.locate(seq) else {
        return Ok(meta.bytes);
    };
    let mut file = File::open(&meta.path).map_err(RecordFault::Io)?;
    file.seek(SeekFrom::Start(entry.offset))
        .map_err(RecordFault::Io)?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let (mut at_seq, mut offset) = (entry.seq, entry.offset);
    while at_seq < seq {
        let header = read_header(&mut reader, at_seq)?.ok_or(RecordFault::Torn)?;
        reader
            .seek_relative(i64::from(header.payload_len))
            .map_err(RecordFault::Io)?;
        offset += header.encoded_bytes();
        at_seq += 1;
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_round_trips_and_rejects_others() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("spool.state"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn encoded_record_reads_back_and_detects_flips() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 1234, b"hello");
        assert_eq!(buf.len(), RECORD_HEADER_BYTES + 5);
        assert_eq!(&buf[0..4], &5u32.to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[16..24], &1234u64.to_le_bytes());

        let mut reader = &buf[..];
        let header = read_header(&mut reader, 7).expect("header").expect("some");
        let mut payload = vec![0u8; 5];
        read_payload(&mut reader, &header, &mut payload).expect("payload");
        assert_eq!(payload, b"hello");

        for flip_at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[flip_at] ^= 0x01;
            let mut reader = &bad[..];
            let verdict = match read_header(&mut reader, 7) {
                Ok(Some(h)) => {
                    let mut p = vec![0u8; h.payload_len as usize];
                    read_payload(&mut reader, &h, &mut p).err()
                }
                Ok(None) => None,
                Err(fault) => Some(fault),
            };
            assert!(verdict.is_some(), "flip at byte {flip_at} went unnoticed");
        }
    }

    #[test]
    fn torn_header_and_clean_end_differ() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 0, b"abc");
        let mut empty: &[u8] = &[];
        assert!(matches!(read_header(&mut empty, 1), Ok(None)));
        let mut torn = &buf[..10];
        assert!(matches!(read_header(&mut torn, 1), Err(RecordFault::Torn)));
    }

    #[test]
    fn index_entries_follow_the_stride() {
        let mut meta = SegmentMeta::new(PathBuf::from("x"), 10);
        meta.note_record(10, 8, 1);
        meta.note_record(11, 100, 2);
        meta.note_record(12, 8 + INDEX_STRIDE_BYTES, 3);
        assert_eq!(meta.index.len(), 2);
        assert_eq!(
            meta.locate(11),
            Some(IndexEntry {
                seq: 10,
                offset: 8,
                ts_ms: 1
            })
        );
        assert_eq!(meta.locate(12).map(|e| e.seq), Some(12));
        assert_eq!(meta.end_seq(), 13);
    }
}
