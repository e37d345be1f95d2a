//! Shared pieces of the end-to-end delivery-guarantee tests (`tests/spool_e2e_*.rs`): devices
//! that send numbered TEXT frames (`SN-x,default,seq,N`), sequence accounting over what edge-sim
//! received, a log capture for asserting on the server's warnings, and a reader of the spool
//! directory (segment files and the dead-letter file) that decodes the records it holds.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use prost::Message;
use tcp_integration::edge_sim::record::records_from_uplink;
use tcp_integration::edge_sim::{Record, TypedValue};
use tcp_integration::proto::integration::UplinkMsg;
use tcp_integration::uplink::spool::segment::{
    SEGMENT_MAGIC, parse_segment_file_name, read_header, read_payload,
};

/// The TEXT frame a test device sends: the example converter turns it into one record of
/// `device` with telemetry `seq = n`.
pub fn frame(device: &str, n: u64) -> String {
    format!("{device},default,seq,{n}\n")
}

/// The `seq` telemetry value of a record (the examples' converter makes it a LONG).
pub fn seq_of(record: &Record) -> i64 {
    let values: Vec<i64> = record
        .telemetry
        .iter()
        .filter_map(|t| match t.values.get("seq") {
            Some(TypedValue::Long(v)) => Some(*v),
            _ => None,
        })
        .collect();
    assert_eq!(values.len(), 1, "one seq per record: {record:?}");
    values[0]
}

/// Every (device, seq) in arrival order, grouped by device.
pub fn arrivals_by_device(records: &[Record]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in records {
        out.entry(record.name.clone())
            .or_default()
            .push(seq_of(record));
    }
    out
}

/// The arrival sequence with later repeats removed (first occurrences, in arrival order).
pub fn first_occurrences(arrivals: &[i64]) -> Vec<i64> {
    let mut seen = std::collections::HashSet::new();
    arrivals
        .iter()
        .copied()
        .filter(|s| seen.insert(*s))
        .collect()
}

/// A device on its own thread writing `frame(name, 0)`, `frame(name, 1)`, … until stopped or
/// until a write fails (the server went away).
pub struct SendingDevice {
    pub name: String,
    thread: JoinHandle<(u64, Option<String>)>,
}

impl SendingDevice {
    /// Connects to the server's device port and sends one frame per `pause` until `stop`.
    pub fn start(port: u16, name: String, pause: Duration, stop: Arc<AtomicBool>) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let device = name.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = stream.write_all(frame(&device, sent).as_bytes()) {
                    return (
                        sent,
                        Some(format!("{device}: write of frame {sent} failed: {e}")),
                    );
                }
                sent += 1;
                std::thread::sleep(pause);
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            (sent, None)
        });
        SendingDevice { name, thread }
    }

    /// How many frames the device wrote completely, and the write error that stopped it.
    pub fn join(self) -> (String, u64, Option<String>) {
        let (sent, error) = self.thread.join().unwrap();
        (self.name, sent, error)
    }
}

/// Log lines of every thread, captured for assertions (the process-wide tracing subscriber;
/// each test file is its own process). With `TEST_LOG` set they are printed too.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("TEST_LOG").is_some() {
            eprint!("{}", String::from_utf8_lossy(buf));
        }
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Installs the capture as the global subscriber (info level). Call before the harness.
    pub fn install() -> LogCapture {
        let capture = LogCapture::default();
        let sink = capture.0.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || CaptureWriter(sink.clone()))
            .try_init()
            .expect("the log capture is the first subscriber of this test process");
        capture
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// The value of `field=<integer>` in a log line.
pub fn int_field(line: &str, field: &str) -> u64 {
    let key = format!("{field}=");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {line:?}"));
    line[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The records of one spooled (pre-tagged, `UplinkMsg`-encoded) payload.
pub fn decode_spooled(payload: &[u8]) -> Vec<Record> {
    let msg = UplinkMsg::decode(payload).expect("a spooled record is an UplinkMsg fragment");
    records_from_uplink(&msg, 0)
}

/// Every good record in the spool's segment files (in sequence order), stopping in each segment
/// at the first torn or corrupt record as recovery does. Returns (spool seq, decoded records).
pub fn spooled_records(dir: &Path) -> Vec<(u64, Vec<Record>)> {
    let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let first = parse_segment_file_name(e.file_name().to_str()?)?;
            Some((first, e.path()))
        })
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for (first_seq, path) in segments {
        let Ok(file) = File::open(&path) else {
            continue; // deleted meanwhile (acknowledged)
        };
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; SEGMENT_MAGIC.len()];
        if reader.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
            continue;
        }
        let mut expected = first_seq;
        while let Ok(Some(header)) = read_header(&mut reader, expected) {
            let mut payload = vec![0u8; header.payload_len as usize];
            if read_payload(&mut reader, &header, &mut payload).is_err() {
                break;
            }
            out.push((header.seq, decode_spooled(&payload)));
            expected += 1;
        }
    }
    out
}

/// One line of `dead-letter.jsonl`: the error text and the decoded records.
#[derive(Debug)]
pub struct DeadLetter {
    pub error: String,
    pub ts_ms: u64,
    pub records: Vec<Record>,
}

/// The dead-letter file of a spool directory, decoded (empty when it does not exist).
pub fn dead_letters(dir: &Path) -> Vec<DeadLetter> {
    let Ok(text) = std::fs::read_to_string(dir.join("dead-letter.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(value["record_b64"].as_str().unwrap())
                .unwrap();
            DeadLetter {
                error: value["error"].as_str().unwrap().to_owned(),
                ts_ms: value["ts_ms"].as_u64().unwrap(),
                records: decode_spooled(&payload),
            }
        })
        .collect()
}
