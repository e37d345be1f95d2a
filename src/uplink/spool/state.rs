//! The spool state file: the acknowledged position and a floor for the next sequence number.
//!
//! Layout (28 bytes): magic `TISPST01` | first_unacked_seq u64 LE | next_seq_floor u64 LE |
//! crc32c u32 LE over the preceding 24 bytes.
//!
//! Invariant: the file on disk is always a whole, checksummed state. It is replaced atomically —
//! write `spool.state.tmp`, fsync it, rename over `spool.state`, fsync the directory — so a crash
//! at any point leaves either the old or the new state. With `durable == false` (fsync policy
//! `never`) the two fsyncs are skipped: the rename still makes the swap atomic for a process
//! crash, but after a power loss the file may be the old one, which only means re-sending records
//! (never losing them).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub const STATE_FILE_NAME: &str = "spool.state";
pub const STATE_TMP_FILE_NAME: &str = "spool.state.tmp";
const STATE_MAGIC: &[u8; 8] = b"TISPST01";
const STATE_BYTES: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolState {
    /// Every record below this sequence number has been acknowledged.
    pub first_unacked_seq: u64,
    /// Sequence numbers below this may have been handed out before; never reuse them.
    pub next_seq_floor: u64,
}

impl SpoolState {
    fn encode(&self) -> [u8; STATE_BYTES] {
        let mut buf = [0u8; STATE_BYTES];
        buf[0..8].copy_from_slice(STATE_MAGIC);
        buf[8..16].copy_from_slice(&self.first_unacked_seq.to_le_bytes());
        buf[16..24].copy_from_slice(&self.next_seq_floor.to_le_bytes());
        let crc = crc32c::crc32c(&buf[0..24]);
        buf[24..28].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    fn decode(buf: &[u8]) -> Option<Self> {
        if buf.len() != STATE_BYTES || &buf[0..8] != STATE_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(buf[24..28].try_into().ok()?);
        if crc32c::crc32c(&buf[0..24]) != crc {
            return None;
        }
        Some(SpoolState {
            first_unacked_seq: u64::from_le_bytes(buf[8..16].try_into().ok()?),
            next_seq_floor: u64::from_le_bytes(buf[16..24].try_into().ok()?),
        })
    }
}

/// What was found where the state file should be.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadedState {
    Missing,
    /// Present but not a valid state (wrong size, magic or checksum).
    Invalid,
    Valid(SpoolState),
}

pub fn load_state(dir: &Path) -> io::Result<LoadedState> {
    match fs::read(dir.join(STATE_FILE_NAME)) {
        Ok(buf) => Ok(SpoolState::decode(&buf).map_or(LoadedState::Invalid, LoadedState::Valid)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LoadedState::Missing),
        Err(e) => Err(e),
    }
}

pub fn store_state(dir: &Path, state: &SpoolState, durable: bool) -> io::Result<()> {
    let tmp_path = dir.join(STATE_TMP_FILE_NAME);
    let mut tmp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)?;
    tmp.write_all(&state.encode())?;
    if durable {
        tmp.sync_all()?;
    }
    drop(tmp);
    fs::rename(&tmp_path, dir.join(STATE_FILE_NAME))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes directory entries (new, renamed or removed files) survive power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_state(dir.path()).expect("load"), LoadedState::Missing);
        let state = SpoolState {
            first_unacked_seq: 17,
            next_seq_floor: 99,
        };
        store_state(dir.path(), &state, true).expect("store");
        assert_eq!(
            load_state(dir.path()).expect("load"),
            LoadedState::Valid(state)
        );
        assert!(!dir.path().join(STATE_TMP_FILE_NAME).exists());

        let mut bytes = fs::read(dir.path().join(STATE_FILE_NAME)).expect("read");
        bytes[9] ^= 0x40;
        fs::write(dir.path().join(STATE_FILE_NAME), &bytes).expect("write");
        assert_eq!(load_state(dir.path()).expect("load"), LoadedState::Invalid);
    }
}
