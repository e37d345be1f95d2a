//! BINARY framing: Netty's `LengthFieldBasedFrameDecoder(byteOrder, maxFrameLength,
//! lengthFieldOffset, lengthFieldLength, lengthAdjustment, initialBytesToStrip, failFast)` as
//! ThingsBoard configures it (contract §3.3).
//!
//! Per frame: wait for the header (`lengthFieldOffset + lengthFieldLength` bytes); read the field
//! (1/2/3/4 bytes unsigned, 8 bytes signed); negative ⇒ error, header skipped;
//! `frame = value + lengthAdjustment + header` with Java `long` wrap-around; shorter than the
//! header ⇒ error, header skipped; longer than `maxFrameLength` ⇒ the whole frame is discarded
//! (across reads) and reported when first seen (`failFast`) or once discarded; otherwise wait for
//! the frame; `initialBytesToStrip` beyond it ⇒ error, frame skipped; else strip and emit.
//! Bytes after a frame are the next header: there is no resynchronisation.
//!
//! Invariants: the header of a pending frame is parsed once (`pending_frame_bytes`); the buffer
//! holds at most `maxFrameLength` bytes of an unfinished frame; an over-long frame is dropped as
//! it arrives, never buffered.
//!
//! Difference from Netty: after an error Netty leaves the remaining buffered bytes until the next
//! read (or the close); we go on decoding them at once. The frames are the same, only earlier.
//! And when initialBytesToStrip exceeds a frame whose header arrived in an earlier read, Netty
//! skips nothing and stays stuck on that frame; we skip the frame as the contract says.

use bytes::{Bytes, BytesMut};

use super::{BinarySpec, ByteOrder, FramingError, Step};

/// Streaming BINARY framer of one connection.
#[derive(Debug)]
pub struct BinaryFramer {
    byte_order: ByteOrder,
    max_frame_bytes: usize,
    length_field_offset: usize,
    /// `lengthFieldOffset + lengthFieldLength`.
    header_bytes: usize,
    length_adjustment: i64,
    initial_bytes_to_strip: usize,
    fail_fast: bool,
    /// Length of the frame at the front of the buffer, when its header was already read.
    pending_frame_bytes: Option<usize>,
    /// Bytes of an over-long frame still to drop.
    bytes_to_discard: u64,
    /// Length of the over-long frame being dropped (0 when none).
    too_long_frame_bytes: i64,
    discarded_bytes: u64,
}

impl BinaryFramer {
    /// Builds the framer; `spec` must satisfy [`super::FramingSpec::validate`].
    pub fn new(spec: &BinarySpec) -> BinaryFramer {
        BinaryFramer {
            byte_order: spec.byte_order,
            max_frame_bytes: spec.max_frame_bytes,
            length_field_offset: spec.length_field_offset,
            header_bytes: spec.length_field_offset + spec.length_field_bytes,
            length_adjustment: spec.length_adjustment,
            initial_bytes_to_strip: spec.initial_bytes_to_strip,
            fail_fast: spec.fail_fast,
            pending_frame_bytes: None,
            bytes_to_discard: 0,
            too_long_frame_bytes: 0,
            discarded_bytes: 0,
        }
    }

    /// Bytes thrown away so far (over-long frames, skipped headers and frames).
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    /// See [`super::Framer::decode`].
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, FramingError>> {
        self.step(buf).apply(buf)
    }

    /// The pure core of both framer APIs: what the unconsumed `bytes` yield next.
    #[inline]
    pub(super) fn step(&mut self, bytes: &[u8]) -> Step {
        let mut consumed = 0;
        let frame_bytes = match self.pending_frame_bytes {
            Some(frame_bytes) => frame_bytes,
            None => {
                if self.too_long_frame_bytes != 0 {
                    let nr_bytes = self.bytes_to_discard.min(bytes.len() as u64) as usize;
                    self.discarded_bytes += nr_bytes as u64;
                    self.bytes_to_discard -= nr_bytes as u64;
                    consumed = nr_bytes;
                    if self.bytes_to_discard > 0 {
                        return Step::wait(consumed);
                    }
                    let frame_bytes = std::mem::take(&mut self.too_long_frame_bytes);
                    if !self.fail_fast {
                        return Step::error(consumed, self.too_long(frame_bytes));
                    }
                }
                let rest = &bytes[consumed..];
                if rest.len() < self.header_bytes {
                    return Step::wait(consumed);
                }
                let length = self.read_length_field(rest);
                if length < 0 {
                    self.discarded_bytes += self.header_bytes as u64;
                    return Step::error(
                        consumed + self.header_bytes,
                        FramingError::NegativeLength {
                            length,
                            header_bytes: self.header_bytes,
                        },
                    );
                }
                // Java long arithmetic: a huge 8-byte length wraps, then fails the next check.
                let frame_bytes = length
                    .wrapping_add(self.length_adjustment)
                    .wrapping_add(self.header_bytes as i64);
                if frame_bytes < self.header_bytes as i64 {
                    self.discarded_bytes += self.header_bytes as u64;
                    return Step::error(
                        consumed + self.header_bytes,
                        FramingError::FrameShorterThanHeader {
                            frame_bytes,
                            header_bytes: self.header_bytes,
                        },
                    );
                }
                if frame_bytes > self.max_frame_bytes as i64 {
                    return self.start_discarding(consumed, rest.len(), frame_bytes);
                }
                // In range: 0 < frame_bytes <= max_frame_bytes.
                let frame_bytes = frame_bytes as usize;
                self.pending_frame_bytes = Some(frame_bytes);
                frame_bytes
            }
        };
        if bytes.len() - consumed < frame_bytes {
            return Step::wait(consumed);
        }
        self.pending_frame_bytes = None;
        let end = consumed + frame_bytes;
        if self.initial_bytes_to_strip > frame_bytes {
            self.discarded_bytes += frame_bytes as u64;
            return Step::error(
                end,
                FramingError::StripBeyondFrame {
                    frame_bytes,
                    strip_bytes: self.initial_bytes_to_strip,
                },
            );
        }
        Step::frame(end, consumed + self.initial_bytes_to_strip..end)
    }

    /// An over-long frame announced by its header, `available` bytes of it (from `consumed`)
    /// at hand: drop what is here, remember the rest.
    fn start_discarding(&mut self, consumed: usize, available: usize, frame_bytes: i64) -> Step {
        // frame_bytes > max_frame_bytes >= 1, so it is positive.
        let frame_bytes_u64 = frame_bytes as u64;
        if frame_bytes_u64 <= available as u64 {
            // All of it is here: drop it and report now, whatever failFast says.
            self.discarded_bytes += frame_bytes_u64;
            return Step::error(
                consumed + frame_bytes_u64 as usize,
                self.too_long(frame_bytes),
            );
        }
        self.bytes_to_discard = frame_bytes_u64 - available as u64;
        self.too_long_frame_bytes = frame_bytes;
        self.discarded_bytes += available as u64;
        let consumed = consumed + available;
        if self.fail_fast {
            Step::error(consumed, self.too_long(frame_bytes))
        } else {
            Step::wait(consumed)
        }
    }

    fn too_long(&self, frame_bytes: i64) -> FramingError {
        FramingError::BinaryFrameTooLong {
            frame_bytes,
            max_frame_bytes: self.max_frame_bytes,
        }
    }

    /// The length field of the frame at the front of `buf` (which holds the whole header).
    #[inline]
    fn read_length_field(&self, buf: &[u8]) -> i64 {
        let field = &buf[self.length_field_offset..self.header_bytes];
        let big_endian = self.byte_order == ByteOrder::BigEndian;
        // The common widths as fixed-size loads; 3 bytes through the widening path.
        match field.len() {
            1 => i64::from(field[0]),
            2 => {
                let bytes = [field[0], field[1]];
                i64::from(if big_endian {
                    u16::from_be_bytes(bytes)
                } else {
                    u16::from_le_bytes(bytes)
                })
            }
            4 => {
                let bytes = [field[0], field[1], field[2], field[3]];
                i64::from(if big_endian {
                    u32::from_be_bytes(bytes)
                } else {
                    u32::from_le_bytes(bytes)
                })
            }
            _ => {
                // Widen to 8 bytes: 3-byte fields unsigned, 8-byte fields signed (Java long).
                let mut wide = [0u8; 8];
                if big_endian {
                    wide[8 - field.len()..].copy_from_slice(field);
                    i64::from_be_bytes(wide)
                } else {
                    wide[..field.len()].copy_from_slice(field);
                    i64::from_le_bytes(wide)
                }
            }
        }
    }
}
