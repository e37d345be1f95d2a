//! Property tests: for any byte stream and any split of it into reads, every framer gives the
//! same frames, errors, leftover and discard count as when the stream is read at once; frames
//! never exceed the limit; the buffer never holds more than the limit when a framer waits.

mod framing_common;

use bytes::BytesMut;
use framing_common::{Item, Run, binary, drain, run_reads, text};
use proptest::prelude::*;
use tcp_integration::framing::json::JsonFramer;
use tcp_integration::framing::{ByteOrder, Delimiter, Framer, FramingSpec};

/// Bytes drawn mostly from the ones framers care about, so delimiters and brackets are common.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => prop::sample::select(b"ab\r\n\0#{}[]\"\\ ,".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..400)
}

/// Read sizes (cycled) to split a stream into.
fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..8)
}

fn text_spec() -> impl Strategy<Value = FramingSpec> {
    let delimiter = prop_oneof![
        Just(Delimiter::Line),
        Just(Delimiter::Nul),
        prop::collection::vec(prop::sample::select(b"ab#\r\n".to_vec()), 1..4)
            .prop_map(Delimiter::Custom),
    ];
    (1usize..40, any::<bool>(), delimiter).prop_map(|(max, strip, d)| text(max, strip, d))
}

fn binary_spec() -> impl Strategy<Value = FramingSpec> {
    (
        any::<bool>(),
        1usize..64,
        0usize..4,
        prop::sample::select(vec![1usize, 2, 3, 4, 8]),
        -12i64..12,
        0usize..10,
        any::<bool>(),
    )
        .prop_map(|(le, max, offset, nr, adj, strip, fail_fast)| {
            let order = if le {
                ByteOrder::LittleEndian
            } else {
                ByteOrder::BigEndian
            };
            // Keep the spec valid: the header must fit in maxFrameLength.
            binary(
                order,
                max.max(offset + nr),
                offset,
                nr,
                adj,
                strip,
                fail_fast,
            )
        })
}

fn split<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut reads = Vec::new();
    let mut rest = stream;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at((*size).min(rest.len()));
        reads.push(read);
        rest = tail;
    }
    reads
}

/// Feeds `reads`, checking after every drain that the buffer holds at most `max_buffered`.
fn run_bounded(mut framer: Framer, reads: &[&[u8]], max_buffered: usize) -> Run {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        drain(&mut framer, &mut buf, &mut items);
        assert!(
            buf.len() <= max_buffered,
            "{} bytes buffered > {max_buffered}",
            buf.len()
        );
    }
    Run {
        items,
        left: buf.to_vec(),
        discarded_bytes: framer.discarded_bytes(),
    }
}

fn frames_within(items: &[Item], max_frame_bytes: usize) -> bool {
    items
        .iter()
        .all(|item| item.as_ref().map_or(true, |f| f.len() <= max_frame_bytes))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn text_chunking_does_not_change_frames_or_errors(
        spec in text_spec(), stream in stream_bytes(), sizes in read_sizes()
    ) {
        let FramingSpec::Text(t) = &spec else { unreachable!() };
        let delimiter_bytes = match &t.delimiter {
            Delimiter::Line => 2,
            Delimiter::Nul => 1,
            Delimiter::Custom(d) => d.len(),
        };
        let at_once = run_reads(Framer::new(&spec), &[&stream]);
        let chunked = run_bounded(
            Framer::new(&spec), &split(&stream, &sizes), t.max_frame_bytes + delimiter_bytes - 1,
        );
        prop_assert_eq!(&chunked, &at_once);
        let limit = t.max_frame_bytes + if t.strip_delimiter { 0 } else { delimiter_bytes };
        prop_assert!(frames_within(&at_once.items, limit));
    }

    #[test]
    fn json_chunking_does_not_change_frames_or_errors(
        cap in 1usize..64, stream in stream_bytes(), sizes in read_sizes()
    ) {
        let framer = || Framer::Json(JsonFramer::with_max_frame_bytes(cap));
        let at_once = run_reads(framer(), &[&stream]);
        let chunked = run_bounded(framer(), &split(&stream, &sizes), cap);
        prop_assert_eq!(&chunked, &at_once);
        prop_assert!(frames_within(&at_once.items, cap));
    }

    #[test]
    fn json_default_framer_chunking_does_not_change_frames(
        stream in stream_bytes(), sizes in read_sizes()
    ) {
        let at_once = run_reads(Framer::new(&FramingSpec::Json), &[&stream]);
        let chunked = run_reads(Framer::new(&FramingSpec::Json), &split(&stream, &sizes));
        prop_assert_eq!(chunked, at_once);
    }

    #[test]
    fn binary_chunking_does_not_change_frames_or_errors(
        spec in binary_spec(), stream in stream_bytes(), sizes in read_sizes()
    ) {
        let FramingSpec::Binary(b) = &spec else { unreachable!() };
        let at_once = run_reads(Framer::new(&spec), &[&stream]);
        let chunked = run_bounded(Framer::new(&spec), &split(&stream, &sizes), b.max_frame_bytes);
        prop_assert_eq!(&chunked, &at_once);
        prop_assert!(frames_within(&at_once.items, b.max_frame_bytes - b.initial_bytes_to_strip.min(b.max_frame_bytes)));
    }

    #[test]
    fn text_line_frames_match_a_naive_split(stream in stream_bytes(), max in 1usize..40) {
        // Reference: split at LF, drop a CR before it, judge length, never emit the tail.
        let spec = text(max, true, Delimiter::Line);
        let mut expected: Vec<Item> = Vec::new();
        let mut pieces: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
        let tail = pieces.pop().unwrap_or_default();
        for piece in pieces {
            let frame = piece.strip_suffix(b"\r").unwrap_or(piece);
            expected.push(if frame.len() > max {
                Err(tcp_integration::framing::FramingError::TextFrameTooLong { max_frame_bytes: max })
            } else {
                Ok(frame.to_vec())
            });
        }
        let tail_known = tail.strip_suffix(b"\r").unwrap_or(tail);
        if tail_known.len() > max {
            expected.push(Err(tcp_integration::framing::FramingError::TextFrameTooLong { max_frame_bytes: max }));
        }
        // An over-long frame reported early is reported once, before its delimiter: the same
        // sequence as judging it at its delimiter.
        prop_assert_eq!(run_reads(Framer::new(&spec), &[&stream]).items, expected);
    }
}
