//! Framing: the bytes a device sent on its connection → frames, exactly as ThingsBoard (Netty)
//! splits them. One file per handler type; all are pure, I/O-free, streaming structs.
//!
//! [`FramingSpec`] is the validated description of a handler configuration; it is built by
//! `config` from ThingsBoard's `handlerConfiguration` and checked by [`FramingSpec::validate`]
//! when the configuration is loaded, so a framer never meets an impossible setting.
//!
//! [`Framer`] is the API the connection loop uses: it appends what it read to its `BytesMut`
//! and calls [`Framer::decode_batch`], which hands every complete frame to a callback as a
//! slice borrowed from the buffer and consumes the buffer's front once at the end.
//! [`Framer::decode`] gives the same frames one at a time as owned `Bytes` (one refcount
//! increment and one decrement per frame, which matters at tens of millions of frames/s).
//! Both are thin shells over one pure per-handler core, `step`, which looks at the unconsumed
//! bytes and says how many it consumes and which item (a range of them, or an error) it yields.
//! TEXT's batch path alone runs its own single search pass over the complete frames and hands
//! only the tail to `step`; `tests/framing_batch.rs` and the fuzz targets check that every
//! handler's batch path gives exactly what the `decode` loop gives. Invariants every framer keeps:
//! * frames are slices of the connection's buffer: zero-copy, no per-frame allocation;
//! * the framer is the only consumer of the buffer's front, and it consumes everything it no
//!   longer needs, so the buffer never grows past the frame limit plus one read;
//! * scan progress is kept across calls, so a slowly arriving frame is scanned once, not once
//!   per read;
//! * the sequence of frames and errors depends only on the byte stream, never on how it was
//!   split into reads (see `tests/framing_props.rs`);
//! * no framing error closes the connection (ThingsBoard logs decoder errors and keeps the
//!   channel); [`Framer::discarded_bytes`] counts what was thrown away.
//!
//! This directory depends only on `bytes`, `memchr` and `thiserror` and never on `crate::`:
//! `fuzz/` compiles it standalone.

pub mod binary;
pub mod json;
pub mod text;

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// The frame-splitting rule of one integration (ThingsBoard `handlerConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingSpec {
    /// `handlerType: TEXT`.
    Text(TextSpec),
    /// `handlerType: JSON`: brace matching, 1 MiB buffer cap.
    Json,
    /// `handlerType: BINARY`: a length field (Netty `LengthFieldBasedFrameDecoder`).
    Binary(BinarySpec),
}

/// Where a TEXT frame ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delimiter {
    /// `SYSTEM_LINE_SEPARATOR`: LF, with a CR right before it taken as part of the delimiter.
    Line,
    /// `NUL_DELIMITER`: the byte 0x00.
    Nul,
    /// `CUSTOM_SEPARATOR`: the UTF-8 bytes of `customSeparatorRawValue`, no escape processing.
    Custom(Vec<u8>),
}

/// `handlerType: TEXT` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSpec {
    /// `maxFrameLength`: the longest frame, delimiter excluded.
    pub max_frame_bytes: usize,
    /// `stripDelimiter`.
    pub strip_delimiter: bool,
    /// `messageSeparator` (+ `customSeparatorRawValue`).
    pub delimiter: Delimiter,
}

/// Byte order of a BINARY length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    LittleEndian,
    BigEndian,
}

/// `handlerType: BINARY` settings (the arguments of Netty's `LengthFieldBasedFrameDecoder`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinarySpec {
    pub byte_order: ByteOrder,
    /// `maxFrameLength`: the longest frame, header included, before stripping.
    pub max_frame_bytes: usize,
    /// `lengthFieldOffset`.
    pub length_field_offset: usize,
    /// `lengthFieldLength`: 1, 2, 3, 4 or 8.
    pub length_field_bytes: usize,
    /// `lengthAdjustment` (may be negative).
    pub length_adjustment: i64,
    /// `initialBytesToStrip`.
    pub initial_bytes_to_strip: usize,
    /// `failFast`.
    pub fail_fast: bool,
}

/// A handler configuration that cannot be framed; found when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingSpecError {
    #[error("maxFrameLength must be greater than 0")]
    ZeroMaxFrameLength,
    #[error("customSeparatorRawValue must not be empty when messageSeparator is CUSTOM_SEPARATOR")]
    EmptyCustomSeparator,
    #[error("lengthFieldLength must be 1, 2, 3, 4 or 8, got {0}")]
    UnsupportedLengthFieldLength(usize),
    #[error(
        "lengthFieldOffset ({offset}) must be at most maxFrameLength ({max_frame_bytes}) - \
         lengthFieldLength ({length_field_bytes})"
    )]
    LengthFieldBeyondMaxFrame {
        offset: usize,
        length_field_bytes: usize,
        max_frame_bytes: usize,
    },
}

impl FramingSpec {
    /// Checks the construction preconditions ThingsBoard checks when the integration starts.
    pub fn validate(&self) -> Result<(), FramingSpecError> {
        match self {
            FramingSpec::Json => Ok(()),
            FramingSpec::Text(text) => {
                if text.max_frame_bytes == 0 {
                    return Err(FramingSpecError::ZeroMaxFrameLength);
                }
                if matches!(&text.delimiter, Delimiter::Custom(sep) if sep.is_empty()) {
                    return Err(FramingSpecError::EmptyCustomSeparator);
                }
                Ok(())
            }
            FramingSpec::Binary(bin) => {
                if bin.max_frame_bytes == 0 {
                    return Err(FramingSpecError::ZeroMaxFrameLength);
                }
                if !matches!(bin.length_field_bytes, 1 | 2 | 3 | 4 | 8) {
                    return Err(FramingSpecError::UnsupportedLengthFieldLength(
                        bin.length_field_bytes,
                    ));
                }
                if bin.length_field_offset + bin.length_field_bytes > bin.max_frame_bytes {
                    return Err(FramingSpecError::LengthFieldBeyondMaxFrame {
                        offset: bin.length_field_offset,
                        length_field_bytes: bin.length_field_bytes,
                        max_frame_bytes: bin.max_frame_bytes,
                    });
                }
                Ok(())
            }
        }
    }
}

/// A framing failure on one connection. None of them closes the connection: the framer has
/// already skipped the offending bytes (or, for [`FramingError::JsonCorrupted`], switched to
/// discarding everything) and the caller keeps calling [`Framer::decode`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// TEXT: a frame longer than `maxFrameLength` (delimiter excluded); it is discarded up to
    /// and including the next delimiter. Reported as soon as the length is exceeded (fail-fast).
    #[error(
        "text frame longer than maxFrameLength ({max_frame_bytes} bytes); \
         discarded up to the next delimiter"
    )]
    TextFrameTooLong { max_frame_bytes: usize },
    /// BINARY: the length field announces a frame longer than `maxFrameLength`; the whole frame
    /// is discarded. Reported when the length is read (`failFast`) or once discarded.
    #[error(
        "binary frame of {frame_bytes} bytes is longer than maxFrameLength \
         ({max_frame_bytes} bytes); discarded"
    )]
    BinaryFrameTooLong {
        frame_bytes: i64,
        max_frame_bytes: usize,
    },
    /// JSON: a frame did not start with `{` or `[`. As in ThingsBoard, every later byte on this
    /// connection is discarded (and counted); this error is reported once.
    #[error(
        "invalid JSON: a frame must start with '{{' or '[', got byte 0x{byte:02x}; \
         discarding all further data on this connection"
    )]
    JsonCorrupted { byte: u8 },
    /// JSON: a frame did not close within the buffer cap; its first `max_frame_bytes` bytes
    /// are discarded and framing restarts at the next byte.
    #[error(
        "JSON frame longer than the {max_frame_bytes}-byte buffer cap; \
         {max_frame_bytes} bytes discarded"
    )]
    JsonBufferOverflow { max_frame_bytes: usize },
    /// BINARY: an 8-byte length field holds a negative value; the header is skipped.
    #[error("negative length field value {length}; {header_bytes} header bytes skipped")]
    NegativeLength { length: i64, header_bytes: usize },
    /// BINARY: length + lengthAdjustment + header is shorter than the header itself.
    #[error(
        "adjusted frame length {frame_bytes} is less than the header \
         (lengthFieldOffset + lengthFieldLength = {header_bytes}); header skipped"
    )]
    FrameShorterThanHeader {
        frame_bytes: i64,
        header_bytes: usize,
    },
    /// BINARY: initialBytesToStrip is larger than the frame; the frame is skipped.
    #[error(
        "adjusted frame length {frame_bytes} is less than initialBytesToStrip \
         ({strip_bytes}); frame skipped"
    )]
    StripBeyondFrame {
        frame_bytes: usize,
        strip_bytes: usize,
    },
}

impl FramingError {
    /// A short, stable snake_case label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FramingError::TextFrameTooLong { .. } | FramingError::BinaryFrameTooLong { .. } => {
                "frame_too_long"
            }
            FramingError::JsonCorrupted { .. } => "json_corrupted",
            FramingError::JsonBufferOverflow { .. } => "json_buffer_overflow",
            FramingError::NegativeLength { .. } => "negative_length",
            FramingError::FrameShorterThanHeader { .. } => "frame_shorter_than_header",
            FramingError::StripBeyondFrame { .. } => "strip_beyond_frame",
        }
    }
}

/// The framer of one connection, chosen by its integration's [`FramingSpec`].
#[derive(Debug)]
pub enum Framer {
    Text(text::TextFramer),
    Json(json::JsonFramer),
    Binary(binary::BinaryFramer),
}

impl Framer {
    /// Builds the framer for a validated spec.
    ///
    /// # Panics
    /// If `spec` fails [`FramingSpec::validate`]: configurations are validated when they are
    /// loaded, so an invalid spec here is a programming error. Use [`Framer::try_new`] when the
    /// spec has not been validated.
    pub fn new(spec: &FramingSpec) -> Framer {
        match Framer::try_new(spec) {
            Ok(framer) => framer,
            Err(err) => panic!("Framer::new needs a validated FramingSpec: {err}"),
        }
    }

    /// Validates `spec` and builds its framer.
    pub fn try_new(spec: &FramingSpec) -> Result<Framer, FramingSpecError> {
        spec.validate()?;
        Ok(match spec {
            FramingSpec::Text(text) => Framer::Text(text::TextFramer::new(text)),
            FramingSpec::Json => Framer::Json(json::JsonFramer::new()),
            FramingSpec::Binary(bin) => Framer::Binary(binary::BinaryFramer::new(bin)),
        })
    }

    /// Takes the next frame out of `buf` (the connection's read buffer, bytes appended at the end).
    /// Returns None when more bytes are needed. Consumes from `buf` whatever it no longer needs
    /// (frames, delimiters, discarded bytes), so `buf` never grows past the limit + one read.
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, FramingError>> {
        match self {
            Framer::Text(framer) => framer.decode(buf),
            Framer::Json(framer) => framer.decode(buf),
            Framer::Binary(framer) => framer.decode(buf),
        }
    }

    /// Hands every item (frame or error) that the bytes in `buf` complete to `on_item`, in
    /// stream order, then consumes from `buf` what [`Framer::decode`] called until `None`
    /// would have consumed. Frames are borrowed from `buf`; the items, their order, what is
    /// left in `buf` and the framer's state afterwards are exactly those of the `decode` loop.
    #[inline]
    pub fn decode_batch(
        &mut self,
        buf: &mut BytesMut,
        mut on_item: impl FnMut(Result<&[u8], FramingError>),
    ) {
        match self {
            Framer::Text(framer) => framer.decode_batch(buf, &mut on_item),
            Framer::Json(framer) => drain_steps(buf, |bytes| framer.step(bytes), &mut on_item),
            Framer::Binary(framer) => drain_steps(buf, |bytes| framer.step(bytes), &mut on_item),
        }
    }

    /// Bytes thrown away on this connection so far (over-long frames, skipped headers, data
    /// after a JSON corruption); delimiters and whitespace between JSON frames are not counted.
    pub fn discarded_bytes(&self) -> u64 {
        match self {
            Framer::Text(framer) => framer.discarded_bytes(),
            Framer::Json(framer) => framer.discarded_bytes(),
            Framer::Binary(framer) => framer.discarded_bytes(),
        }
    }
}

/// What a framer's `step` decided about the unconsumed bytes it was shown.
#[derive(Debug)]
struct Step {
    /// How many bytes at the front are done with (frame, delimiter, skipped or discarded
    /// bytes); the framer's saved offsets are relative to the byte after them.
    consumed: usize,
    /// The frame (a range within `..consumed` of the bytes shown) or error; `None` when the
    /// framer needs more bytes.
    item: Option<Result<Range<usize>, FramingError>>,
}

impl Step {
    /// Consumed `consumed` bytes and needs more.
    #[inline]
    fn wait(consumed: usize) -> Step {
        Step {
            consumed,
            item: None,
        }
    }

    #[inline]
    fn frame(consumed: usize, frame: Range<usize>) -> Step {
        Step {
            consumed,
            item: Some(Ok(frame)),
        }
    }

    #[inline]
    fn error(consumed: usize, error: FramingError) -> Step {
        Step {
            consumed,
            item: Some(Err(error)),
        }
    }

    /// Applies the step to `buf` for the one-frame-at-a-time API: the frame becomes a `Bytes`
    /// split off the buffer.
    #[inline]
    fn apply(self, buf: &mut BytesMut) -> Option<Result<Bytes, FramingError>> {
        match self.item {
            Some(Ok(frame)) => {
                buf.advance(frame.start);
                let bytes = buf.split_to(frame.end - frame.start).freeze();
                buf.advance(self.consumed - frame.end);
                Some(Ok(bytes))
            }
            Some(Err(error)) => {
                buf.advance(self.consumed);
                Some(Err(error))
            }
            None => {
                buf.advance(self.consumed);
                None
            }
        }
    }
}

/// Runs `step` over the unconsumed part of `buf` until it needs more bytes, handing out each
/// item with the frame borrowed from `buf`, then consumes the buffer's front once.
#[inline(always)]
fn drain_steps(
    buf: &mut BytesMut,
    mut step: impl FnMut(&[u8]) -> Step,
    on_item: &mut impl FnMut(Result<&[u8], FramingError>),
) {
    let bytes: &[u8] = buf;
    let mut pos = 0;
    loop {
        let Step { consumed, item } = step(&bytes[pos..]);
        let base = pos;
        pos += consumed;
        match item {
            None => break,
            Some(Ok(frame)) => on_item(Ok(&bytes[base + frame.start..base + frame.end])),
            Some(Err(error)) => on_item(Err(error)),
        }
    }
    buf.advance(pos);
}
