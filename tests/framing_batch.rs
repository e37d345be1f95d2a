//! `Framer::decode_batch` against `Framer::decode`: for random streams split into random reads,
//! every handler and a spread of specs, the batch API hands out the same frames (byte for byte)
//! and errors in the same order, leaves the same bytes buffered after every read and counts the
//! same discarded bytes as draining `decode` until `None`. A third run alternates the two APIs
//! read by read, so the state each leaves behind is the state the other expects.

mod framing_common;

use bytes::BytesMut;
use framing_common::{Item, binary, drain, text};
use proptest::prelude::*;
use tcp_integration::framing::json::JsonFramer;
use tcp_integration::framing::{ByteOrder, Delimiter, Framer, FramingError, FramingSpec};

/// Bytes drawn mostly from the ones framers care about, so delimiters and brackets are common.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => prop::sample::select(b"ab\r\n\0#{}[]\"\\ ,".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..600)
}

/// Read sizes (cycled) to split a stream into.
fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..50, 1..8)
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

/// Which API drains the buffer after each read.
#[derive(Debug, Clone, Copy)]
enum Drive {
    Decode,
    Batch,
    /// `decode_batch` after even reads, `decode` after odd ones.
    Alternate,
}

/// What a framer did, observed after every read.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    /// Per read: the items it completed, then the bytes left buffered and the discard count.
    reads: Vec<(Vec<Item>, Vec<u8>, u64)>,
}

fn drain_batch(framer: &mut Framer, buf: &mut BytesMut, items: &mut Vec<Item>) {
    framer.decode_batch(buf, |item: Result<&[u8], FramingError>| {
        items.push(item.map(<[u8]>::to_vec))
    });
}

fn trace(mut framer: Framer, stream: &[u8], sizes: &[usize], drive: Drive) -> Trace {
    let mut buf = BytesMut::new();
    let mut reads = Vec::new();
    let mut rest = stream;
    for (nr_read, size) in sizes.iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at((*size).min(rest.len()));
        rest = tail;
        buf.extend_from_slice(read);
        let mut items = Vec::new();
        let batch = match drive {
            Drive::Decode => false,
            Drive::Batch => true,
            Drive::Alternate => nr_read % 2 == 0,
        };
        if batch {
            drain_batch(&mut framer, &mut buf, &mut items);
        } else {
            drain(&mut framer, &mut buf, &mut items);
        }
        reads.push((items, buf.to_vec(), framer.discarded_bytes()));
    }
    Trace { reads }
}

/// Asserts the three drives agree on every read.
fn assert_same(make: impl Fn() -> Framer, stream: &[u8], sizes: &[usize]) {
    let by_decode = trace(make(), stream, sizes, Drive::Decode);
    let by_batch = trace(make(), stream, sizes, Drive::Batch);
    let alternating = trace(make(), stream, sizes, Drive::Alternate);
    assert_eq!(by_batch, by_decode, "decode_batch differs from decode");
    assert_eq!(
        alternating, by_decode,
        "alternating APIs differs from decode"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn text_batch_matches_decode(
        spec in text_spec(), stream in stream_bytes(), sizes in read_sizes()
    ) {
        assert_same(|| Framer::new(&spec), &stream, &sizes);
    }

    #[test]
    fn json_batch_matches_decode(
        cap in 1usize..64, stream in stream_bytes(), sizes in read_sizes()
    ) {
        assert_same(|| Framer::Json(JsonFramer::with_max_frame_bytes(cap)), &stream, &sizes);
    }

    #[test]
    fn json_default_batch_matches_decode(stream in stream_bytes(), sizes in read_sizes()) {
        assert_same(|| Framer::new(&FramingSpec::Json), &stream, &sizes);
    }

    #[test]
    fn binary_batch_matches_decode(
        spec in binary_spec(), stream in stream_bytes(), sizes in read_sizes()
    ) {
        assert_same(|| Framer::new(&spec), &stream, &sizes);
    }
}

/// Fixed streams whose batch output is written out by hand, so the equivalence above is not
/// an agreement between two wrong answers on the corners the contract names.
#[test]
fn text_line_batch_corners() {
    let spec = text(4, true, Delimiter::Line);
    let mut framer = Framer::new(&spec);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    // CR LF is one delimiter, a lone CR is data, an over-long frame is reported once (while
    // still arriving) and discarded through its delimiter across reads.
    for read in [&b"ab\r\nc\rd\n\r\n"[..], b"toolong", b"er\nxy\r", b"\nz"] {
        buf.extend_from_slice(read);
        drain_batch(&mut framer, &mut buf, &mut items);
    }
    let too_long = Err(FramingError::TextFrameTooLong { max_frame_bytes: 4 });
    assert_eq!(
        items,
        vec![
            Ok(b"ab".to_vec()),
            Ok(b"c\rd".to_vec()),
            Ok(Vec::new()),
            too_long,
            Ok(b"xy".to_vec()),
        ]
    );
    assert_eq!(&buf[..], b"z");
    assert_eq!(framer.discarded_bytes(), b"toolonger\n".len() as u64);
}

#[test]
fn text_custom_separator_batch_keeps_delimiter_when_not_stripped() {
    let spec = text(8, false, Delimiter::Custom(b"##".to_vec()));
    let mut framer = Framer::new(&spec);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for read in [&b"a##b#"[..], b"#c###d"] {
        buf.extend_from_slice(read);
        drain_batch(&mut framer, &mut buf, &mut items);
    }
    let expected: Vec<Item> = vec![
        Ok(b"a##".to_vec()),
        Ok(b"b##".to_vec()),
        Ok(b"c##".to_vec()),
    ];
    assert_eq!(items, expected);
    assert_eq!(&buf[..], b"#d");
}

#[test]
fn json_and_binary_batch_corners() {
    let mut json = Framer::new(&FramingSpec::Json);
    let mut buf = BytesMut::from(&b" {\"a\":\"}\\\"\"} \n[1,[2]]{\"b\":"[..]);
    let mut items = Vec::new();
    drain_batch(&mut json, &mut buf, &mut items);
    let expected: Vec<Item> = vec![Ok(b"{\"a\":\"}\\\"\"}".to_vec()), Ok(b"[1,[2]]".to_vec())];
    assert_eq!(items, expected);
    assert_eq!(&buf[..], b"{\"b\":");

    // Little-endian 2-byte length at offset 1, 3 header bytes stripped.
    let spec = binary(ByteOrder::LittleEndian, 16, 1, 2, 0, 3, true);
    let mut bin = Framer::new(&spec);
    let mut buf = BytesMut::from(&b"\x00\x02\x00hi\x00\x20\x00abc\x00\x01\x00!\x00\x03"[..]);
    let mut items = Vec::new();
    drain_batch(&mut bin, &mut buf, &mut items);
    let expected: Vec<Item> = vec![
        Ok(b"hi".to_vec()),
        Err(FramingError::BinaryFrameTooLong {
            frame_bytes: 35,
            max_frame_bytes: 16,
        }),
    ];
    assert_eq!(items, expected);
    assert!(buf.is_empty());
    // failFast reported it at once; the remaining 35 - 12 bytes are still to be dropped.
    buf.extend_from_slice(&[b'x'; 23]);
    buf.extend_from_slice(b"\x00\x01\x00!");
    drain_batch(&mut bin, &mut buf, &mut items);
    assert_eq!(items.last(), Some(&Ok(b"!".to_vec())));
    assert_eq!(items.len(), 3);
    assert_eq!(bin.discarded_bytes(), 35);
}
