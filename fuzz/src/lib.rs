//! Fuzz harness for the framers. It compiles `src/framing/` of the main crate directly (the
//! framers need only bytes, memchr and thiserror), so fuzz builds do not drag in the server's
//! dependencies.
//!
//! Every target checks, for one input: no panic; the buffer never holds more than the limit
//! after a drain (bounded memory); frames never exceed the limit; the frames, errors, leftover
//! and discard count are the same when the stream is read at once and in the reads the input
//! chooses, and the same again when the chosen reads are drained with `decode_batch` (borrowed
//! frames) instead of the per-frame `decode`.

#[path = "../../src/framing/mod.rs"]
pub mod framing;

use bytes::BytesMut;
use framing::{Framer, FramingError};

type Item = Result<Vec<u8>, FramingError>;

/// Splits a fuzz input into a fixed-size header (zero-padded) and the byte stream.
pub fn header_and_stream<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut header = [0u8; N];
    let n = data.len().min(N);
    header[..n].copy_from_slice(&data[..n]);
    (header, &data[n..])
}

fn feed(
    mut framer: Framer,
    stream: &[u8],
    read_sizes: &[usize],
    max_buffered: usize,
    batch: bool,
) -> (Vec<Item>, Vec<u8>, u64) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = stream;
    for size in read_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at((*size).clamp(1, rest.len()));
        rest = tail;
        buf.extend_from_slice(read);
        if batch {
            framer.decode_batch(&mut buf, |item| items.push(item.map(<[u8]>::to_vec)));
        } else {
            while let Some(item) = framer.decode(&mut buf) {
                items.push(item.map(|frame| frame.to_vec()));
            }
        }
        assert!(
            buf.len() <= max_buffered,
            "{} bytes buffered > {max_buffered}",
            buf.len()
        );
    }
    (items, buf.to_vec(), framer.discarded_bytes())
}

/// Runs the checks for one framer configuration.
pub fn check(
    make: impl Fn() -> Framer,
    stream: &[u8],
    read_sizes: &[usize],
    max_buffered: usize,
    max_frame_bytes: usize,
) {
    let at_once = feed(make(), stream, &[stream.len().max(1)], usize::MAX, false);
    let chunked = feed(make(), stream, read_sizes, max_buffered, false);
    assert_eq!(chunked, at_once, "chunking changed the result");
    let chunked_batch = feed(make(), stream, read_sizes, max_buffered, true);
    assert_eq!(chunked_batch, at_once, "decode_batch differs from decode");
    for frame in at_once.0.iter().flatten() {
        assert!(
            frame.len() <= max_frame_bytes,
            "frame of {} bytes",
            frame.len()
        );
    }
}

/// Read sizes 1..=64 from header bytes.
pub fn read_sizes(bytes: &[u8]) -> Vec<usize> {
    bytes.iter().map(|b| usize::from(b % 64) + 1).collect()
}
