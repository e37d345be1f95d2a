//! The bytes on a device socket: uplink frames in the seed's three formats, and the downlink
//! lines the integration writes back.
//!
//! Every uplink frame carries the device name, type `default`, the device's sequence number,
//! the intended send time `sent_us` ([`crate::clock`]) and a fixed temperature of 25.7:
//! * TEXT: `SN-000001,default,<seq>,<sent_us>,25.7\n` (LF-delimited, stripped by the handler);
//! * JSON: `{"deviceName":"SN-000001","deviceType":"default","seq":<seq>,"sent_us":<sent_us>,"temperature":25.7}`;
//! * BINARY: `00 00 00 00 <len>` + the TEXT line without its LF; `<len>` (one byte) counts the
//!   payload, matching the docs' handler (offset 4, length 1, strip 5, max frame 128).
//!
//! Invariant: an encoded frame never exceeds the handlers' 128-byte `maxFrameLength`;
//! [`check_name_fits`] rejects device names that would.

use std::io::Write;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The uplink frame format (= the integration's handler type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
    Binary,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Binary => "binary",
        }
    }
}

/// The device type every simulated device reports.
pub const DEVICE_TYPE: &str = "default";
/// The handlers' `maxFrameLength` (docs' value).
pub const MAX_FRAME_BYTES: usize = 128;
/// BINARY header: four filler bytes and the one-byte length field.
pub const BINARY_HEADER_BYTES: usize = 5;
/// Longest decimal u64.
const MAX_U64_DIGITS: usize = 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(
        "device name {name:?} is too long for {format:?} frames: a frame may hold at most \
         {max_frame_bytes} bytes; use a shorter --name-prefix"
    )]
    NameTooLong {
        name: String,
        format: Format,
        max_frame_bytes: usize,
    },
}

/// Device name of global device index `index` (0-based): prefix + 6-digit 1-based number.
pub fn device_name(prefix: &str, index: u64) -> String {
    format!("{prefix}{:06}", index + 1)
}

/// Rejects a name whose worst-case frame (20-digit seq and time) would exceed 128 bytes.
pub fn check_name_fits(format: Format, name: &str) -> Result<(), FrameError> {
    let fixed = match format {
        // name,default,seq,sent_us,25.7 + LF (stripped; the limit excludes the delimiter)
        Format::Text => name.len() + DEVICE_TYPE.len() + 2 * MAX_U64_DIGITS + ",,,,25.7".len(),
        // JSON frames are not length-limited by the handler; keep them under 1 KiB anyway.
        Format::Json => 0,
        Format::Binary => {
            BINARY_HEADER_BYTES + name.len() + DEVICE_TYPE.len() + 2 * MAX_U64_DIGITS + 8
        }
    };
    if fixed > MAX_FRAME_BYTES {
        return Err(FrameError::NameTooLong {
            name: name.to_string(),
            format,
            max_frame_bytes: MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

/// Appends one uplink frame to `out`. The name must have passed [`check_name_fits`].
pub fn encode_frame(format: Format, out: &mut Vec<u8>, device_name: &str, seq: u64, sent_us: u64) {
    // Writing into a Vec cannot fail.
    match format {
        Format::Text => {
            let _ = writeln!(out, "{device_name},{DEVICE_TYPE},{seq},{sent_us},25.7");
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"deviceName\":\"{device_name}\",\"deviceType\":\"{DEVICE_TYPE}\",\
                 \"seq\":{seq},\"sent_us\":{sent_us},\"temperature\":25.7}}"
            );
        }
        Format::Binary => {
            let header_at = out.len();
            out.extend_from_slice(&[0, 0, 0, 0, 0]);
            let _ = write!(out, "{device_name},{DEVICE_TYPE},{seq},{sent_us},25.7");
            let payload_bytes = out.len() - header_at - BINARY_HEADER_BYTES;
            // check_name_fits keeps payload_bytes ≤ 123, so it fits the one-byte length field.
            out[header_at + 4] = payload_bytes as u8;
        }
    }
}

/// The fields a test forwarder needs from a TEXT frame (without its delimiter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRecord<'a> {
    pub device_name: &'a str,
    pub device_type: &'a str,
    pub seq: u64,
    pub sent_us: u64,
    pub temperature: &'a str,
}

/// Parses `name,type,seq,sent_us,temperature` (what the TEXT decoder does, in Rust).
pub fn parse_text_record(frame: &[u8]) -> Option<TextRecord<'_>> {
    let text = std::str::from_utf8(frame)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let mut parts = text.split(',');
    let device_name = parts.next()?;
    let device_type = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let sent_us = parts.next()?.parse().ok()?;
    let temperature = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some(TextRecord {
        device_name,
        device_type,
        seq,
        sent_us,
        temperature,
    })
}

/// What the sink puts in a downlink's `data` and finds again on the device socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownlinkStamp {
    pub dl_id: u64,
    /// Sink send time ([`crate::clock`]).
    pub sink_us: u64,
}

/// The TbMsg `data` JSON of a downlink.
pub fn downlink_data(stamp: DownlinkStamp) -> String {
    format!(
        "{{\"dl_id\":{},\"sink_us\":{}}}",
        stamp.dl_id, stamp.sink_us
    )
}

/// Finds `"dl_id"` and `"sink_us"` in one downlink line (the encoder's `JSON.stringify(msg)`).
pub fn parse_downlink_line(line: &[u8]) -> Option<DownlinkStamp> {
    Some(DownlinkStamp {
        dl_id: json_u64_field(line, b"\"dl_id\":")?,
        sink_us: json_u64_field(line, b"\"sink_us\":")?,
    })
}

fn json_u64_field(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = &line[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frame_bytes() {
        let mut out = Vec::new();
        encode_frame(Format::Text, &mut out, "SN-000001", 7, 123456);
        assert_eq!(out, b"SN-000001,default,7,123456,25.7\n");
        let rec = parse_text_record(&out).unwrap();
        assert_eq!(rec.device_name, "SN-000001");
        assert_eq!(rec.device_type, "default");
        assert_eq!((rec.seq, rec.sent_us), (7, 123456));
        assert_eq!(rec.temperature, "25.7");
    }

    #[test]
    fn json_frame_bytes() {
        let mut out = Vec::new();
        encode_frame(Format::Json, &mut out, "SN-000002", 0, 9);
        assert_eq!(
            out,
            br#"{"deviceName":"SN-000002","deviceType":"default","seq":0,"sent_us":9,"temperature":25.7}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["sent_us"], 9);
    }

    #[test]
    fn binary_frame_has_docs_header() {
        let mut out = Vec::new();
        encode_frame(Format::Binary, &mut out, "SN-000003", 1, 2);
        let payload = b"SN-000003,default,1,2,25.7";
        assert_eq!(&out[..5], &[0, 0, 0, 0, payload.len() as u8]);
        assert_eq!(&out[5..], payload);
    }

    #[test]
    fn longest_frames_fit_the_handler_limit() {
        let name = "X".repeat(55);
        check_name_fits(Format::Text, &name).unwrap();
        check_name_fits(Format::Binary, &name).unwrap();
        let mut out = Vec::new();
        encode_frame(Format::Binary, &mut out, &name, u64::MAX, u64::MAX);
        assert!(out.len() <= MAX_FRAME_BYTES, "{}", out.len());
        assert!(check_name_fits(Format::Text, &"X".repeat(100)).is_err());
    }

    #[test]
    fn device_names_are_one_based_and_padded() {
        assert_eq!(device_name("SN-", 0), "SN-000001");
        assert_eq!(device_name("SN-", 1_234_566), "SN-1234567");
    }

    #[test]
    fn downlink_line_round_trip() {
        let stamp = DownlinkStamp {
            dl_id: 42,
            sink_us: 1_000_001,
        };
        let line = downlink_data(stamp);
        assert_eq!(line, r#"{"dl_id":42,"sink_us":1000001}"#);
        assert_eq!(parse_downlink_line(line.as_bytes()), Some(stamp));
        assert_eq!(parse_downlink_line(b"{\"dl_id\":1}"), None);
    }
}
