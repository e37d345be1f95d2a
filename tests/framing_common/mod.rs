//! Shared drivers for the framing tests: feed a byte stream in given reads, collect what the
//! framer gives back.
#![allow(dead_code)]

use bytes::BytesMut;
use tcp_integration::framing::{
    BinarySpec, ByteOrder, Delimiter, Framer, FramingError, FramingSpec, TextSpec,
};

/// One item the framer gave back, with the frame copied out for comparison.
pub type Item = Result<Vec<u8>, FramingError>;

/// Everything a framer did with a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub items: Vec<Item>,
    /// Bytes still buffered at the end (a connection close would drop them).
    pub left: Vec<u8>,
    pub discarded_bytes: u64,
}

/// Calls `decode` until it asks for more bytes.
pub fn drain(framer: &mut Framer, buf: &mut BytesMut, items: &mut Vec<Item>) {
    while let Some(item) = framer.decode(buf) {
        items.push(item.map(|frame| frame.to_vec()));
    }
}

/// Feeds `reads` one after the other, draining after each.
pub fn run_reads(mut framer: Framer, reads: &[&[u8]]) -> Run {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        drain(&mut framer, &mut buf, &mut items);
    }
    Run {
        items,
        left: buf.to_vec(),
        discarded_bytes: framer.discarded_bytes(),
    }
}

pub fn run(spec: &FramingSpec, reads: &[&[u8]]) -> Run {
    run_reads(Framer::new(spec), reads)
}

/// The frames and errors of a stream read in one go.
pub fn items(spec: &FramingSpec, stream: &[u8]) -> Vec<Item> {
    run(spec, &[stream]).items
}

pub fn ok(frame: &[u8]) -> Item {
    Ok(frame.to_vec())
}

pub fn text(max_frame_bytes: usize, strip_delimiter: bool, delimiter: Delimiter) -> FramingSpec {
    FramingSpec::Text(TextSpec {
        max_frame_bytes,
        strip_delimiter,
        delimiter,
    })
}

pub fn binary(
    byte_order: ByteOrder,
    max_frame_bytes: usize,
    length_field_offset: usize,
    length_field_bytes: usize,
    length_adjustment: i64,
    initial_bytes_to_strip: usize,
    fail_fast: bool,
) -> FramingSpec {
    FramingSpec::Binary(BinarySpec {
        byte_order,
        max_frame_bytes,
        length_field_offset,
        length_field_bytes,
        length_adjustment,
        initial_bytes_to_strip,
        fail_fast,
    })
}
