//! The dead-letter file: records the server rejected, kept with the reason so nothing the
//! integration accepted disappears without a trace.
//!
//! `dead-letter.jsonl` in the spool directory, one JSON object per record:
//! `{"ts_ms":1700000000000,"error":"...","record_b64":"..."}` (standard base64 with padding).
//! Each call appends all its lines with one write. The file is append-only and not bounded by the
//! spool's `max_bytes`; operators rotate or remove it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

pub const DEAD_LETTER_FILE_NAME: &str = "dead-letter.jsonl";

#[derive(Serialize)]
struct DeadLetterLine<'a> {
    ts_ms: u64,
    error: &'a str,
    record_b64: String,
}

#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetterFile {
    pub fn new(dir: &Path) -> Self {
        DeadLetterFile {
            path: dir.join(DEAD_LETTER_FILE_NAME),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per record; fsyncs when `durable`.
    pub fn append(
        &mut self,
        records: &[&[u8]],
        error_msg: &str,
        ts_ms: u64,
        durable: bool,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() * 4 / 3 + 64).sum());
        for record in records {
            let line = DeadLetterLine {
                ts_ms,
                error: error_msg,
                record_b64: STANDARD.encode(record),
            };
            serde_json::to_writer(&mut buf, &line).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(&buf)?;
        if durable {
            file.sync_data()?;
        }
        Ok(())
    }
}
