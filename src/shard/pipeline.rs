//! The pure core of a connection's read path: bytes read → frames → uplink converter →
//! records tagged for an `UplinkMsg`. No I/O, no metrics, no logging: the connection task
//! (`connection`) is the shell that reads the socket, reports failures and ships the records,
//! and the shard-path benchmark drives this same function without a network.
//!
//! Invariant: every complete frame in `pending` is consumed exactly once; a frame that fails
//! (framing or converter) is reported through `on_failure` and yields no record; the bytes of
//! a partial frame stay in `pending` for the next read.

use bytes::BytesMut;

use super::ShippedRecord;
use crate::convert::{ConvertError, ConverterRuntime, UplinkRecord};
use crate::framing::{Framer, FramingError};

/// Why one frame produced no record.
#[derive(Debug)]
pub enum FrameFailure<'a> {
    /// The framer discarded bytes (over-long frame, corrupted JSON stream, bad length field).
    Framing(&'a FramingError),
    /// The converter failed on a frame of `frame_bytes` bytes.
    Convert {
        error: &'a ConvertError,
        frame_bytes: usize,
    },
}

/// Splits every complete frame out of `pending`, runs the uplink converter on each and appends
/// one shipped record per device/asset to `out`. `converted` is scratch space kept by the
/// caller across reads. Returns the number of frames split (failed conversions included).
pub fn convert_frames(
    framer: &mut Framer,
    runtime: &mut ConverterRuntime,
    pending: &mut BytesMut,
    converted: &mut Vec<UplinkRecord>,
    out: &mut Vec<ShippedRecord>,
    mut on_failure: impl FnMut(FrameFailure<'_>),
) -> u64 {
    let mut frames = 0u64;
    // Frames are borrowed from `pending`, which is consumed once after the last one.
    framer.decode_batch(pending, |result| {
        let frame = match result {
            Ok(frame) => frame,
            Err(e) => {
                on_failure(FrameFailure::Framing(&e));
                return;
            }
        };
        frames += 1;
        converted.clear();
        match runtime.decode_uplink(frame, converted) {
            Ok(()) => out.extend(converted.drain(..).map(|record| ShippedRecord {
                tagged: record.tagged,
                name: record.name,
            })),
            Err(error) => on_failure(FrameFailure::Convert {
                error: &error,
                frame_bytes: frame.len(),
            }),
        }
    });
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{ConverterConfig, ScriptLimits};
    use crate::framing::{Delimiter, FramingSpec, TextSpec};
    use crate::proto::integration::DeviceUplinkDataProto;
    use crate::shard::tag_record;
    use prost::Message;

    fn text_framer(max_frame_bytes: usize) -> Framer {
        Framer::new(&FramingSpec::Text(TextSpec {
            delimiter: Delimiter::Line,
            max_frame_bytes,
            strip_delimiter: true,
        }))
    }

    fn runtime() -> ConverterRuntime {
        let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
        let decoder = r#"
            var s = String.fromCharCode.apply(String, payload);
            if (s === "boom") throw new Error("boom");
            var p = s.split(',');
            return {deviceName: p[0], deviceType: 'default', telemetry: {v: p[1]}};
        "#;
        rt.set_uplink(&ConverterConfig::js(Some(decoder.to_owned()), None))
            .unwrap();
        rt
    }

    #[test]
    fn good_frames_become_tagged_records_and_failures_are_reported_once_each() {
        let mut framer = text_framer(16);
        let mut rt = runtime();
        let mut pending = BytesMut::from(&b"A,1\nboom\nxxxxxxxxxxxxxxxxxxxxxxxx\nB,2\nC,"[..]);
        let (mut converted, mut out) = (Vec::new(), Vec::new());
        let mut failures = Vec::new();
        let frames = convert_frames(
            &mut framer,
            &mut rt,
            &mut pending,
            &mut converted,
            &mut out,
            |f| {
                failures.push(match f {
                    FrameFailure::Framing(e) => format!("framing:{}", e.kind()),
                    FrameFailure::Convert { frame_bytes, .. } => format!("convert:{frame_bytes}"),
                })
            },
        );
        assert_eq!(
            frames, 3,
            "A,1 / boom / B,2 (the over-long line is not a frame)"
        );
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert_eq!(failures[0], "convert:4");
        assert!(failures[1].starts_with("framing:"), "{failures:?}");
        assert_eq!(
            &pending[..],
            b"C,",
            "the partial frame waits for the next read"
        );
        let names: Vec<&str> = out.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        // Tag 0x12 = UplinkMsg.deviceData (2), length-delimited; then the record itself.
        assert_eq!(out[0].tagged[0], 0x12);
        let len = out[0].tagged[1] as usize;
        assert_eq!(out[0].tagged.len(), 2 + len);
        let device = DeviceUplinkDataProto::decode(&out[0].tagged[2..]).unwrap();
        assert_eq!(
            out[0].tagged,
            tag_record(crate::convert::EntityKind::Device, &out[0].tagged[2..]),
            "the converter's tagging matches the reference tagging"
        );
        assert_eq!(device.device_name, "A");
        assert_eq!(device.device_type, "default");
    }
}
