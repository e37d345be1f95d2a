//! JSON framing: ThingsBoard's streaming brace matcher (Netty `JsonObjectDecoder`, arrays not
//! split into elements, 1 MiB cap).
//!
//! * Between frames, whitespace as Java's `Character.isWhitespace` sees a byte (0x09–0x0D,
//!   0x1C–0x1F, 0x20) is skipped. A frame starts at `{` or `[` and ends when the count of
//!   `{`/`[` minus `}`/`]` outside string literals returns to zero (bracket kinds are not
//!   matched; `\"` escapes are honoured). No JSON validation is done.
//! * Any other byte where a frame should start corrupts the connection: it and every later byte
//!   are discarded. ThingsBoard does this silently; we report [`FramingError::JsonCorrupted`]
//!   once and count the bytes.
//! * A frame that has not closed within [`JSON_MAX_FRAME_BYTES`] bytes: those bytes are discarded,
//!   [`FramingError::JsonBufferOverflow`] is reported and framing restarts at the next byte (as
//!   in ThingsBoard, that usually corrupts the connection). Netty tests its whole cumulation
//!   buffer against the cap, so its outcome depends on TCP segmentation; we test the frame, so
//!   ours does not.
//!
//! Invariants: while a frame is open, the first unconsumed byte is its first byte and `buf[..scan_pos]` has been
//! scanned into (`depth`, `in_string`), so every byte is examined once. The scan jumps between
//! structural bytes using 64-byte SIMD class masks (`"` `\` `{[` `}]`) instead of visiting every
//! byte.

use bytes::{Bytes, BytesMut};

use super::{FramingError, Step};

/// ThingsBoard's JSON buffer cap (Netty `JsonObjectDecoder` default `maxObjectLength`).
pub const JSON_MAX_FRAME_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: skipping whitespace.
    Idle,
    /// Inside a frame that starts at `buf[0]`.
    InFrame,
    /// A frame started with a byte that is not `{`/`[`: everything is discarded from now on.
    Corrupted,
}

/// Streaming JSON framer of one connection.
#[derive(Debug)]
pub struct JsonFramer {
    max_frame_bytes: usize,
    state: State,
    /// Open `{`/`[` minus closed `}`/`]` in the current frame.
    depth: u32,
    in_string: bool,
    /// Next byte of the current frame to examine; may be one past the buffer after a
    /// backslash, whose escaped byte has not arrived yet.
    scan_pos: usize,
    discarded_bytes: u64,
}

impl Default for JsonFramer {
    fn default() -> Self {
        JsonFramer::new()
    }
}

impl JsonFramer {
    /// The framer ThingsBoard uses: cap [`JSON_MAX_FRAME_BYTES`].
    pub fn new() -> JsonFramer {
        JsonFramer::with_max_frame_bytes(JSON_MAX_FRAME_BYTES)
    }

    /// A framer with another cap (tests use small caps to reach the overflow path cheaply).
    pub fn with_max_frame_bytes(max_frame_bytes: usize) -> JsonFramer {
        JsonFramer {
            max_frame_bytes: max_frame_bytes.max(1),
            state: State::Idle,
            depth: 0,
            in_string: false,
            scan_pos: 0,
            discarded_bytes: 0,
        }
    }

    /// Bytes thrown away so far (over-long frames, everything after a corruption).
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    /// See [`super::Framer::decode`].
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, FramingError>> {
        self.step(buf).apply(buf)
    }

    /// The pure core of both framer APIs: what the unconsumed `bytes` yield next. While a frame
    /// is open, it starts at `bytes[0]`.
    #[inline]
    pub(super) fn step(&mut self, bytes: &[u8]) -> Step {
        let mut consumed = 0;
        loop {
            match self.state {
                State::Corrupted => {
                    self.discarded_bytes += (bytes.len() - consumed) as u64;
                    return Step::wait(bytes.len());
                }
                State::Idle => {
                    let Some(start) = bytes[consumed..]
                        .iter()
                        .position(|&b| !is_java_whitespace(b))
                    else {
                        return Step::wait(bytes.len());
                    };
                    consumed += start;
                    let first = bytes[consumed];
                    if first == b'{' || first == b'[' {
                        self.state = State::InFrame;
                        self.depth = 1;
                        self.in_string = false;
                        self.scan_pos = 1;
                        continue;
                    }
                    self.state = State::Corrupted;
                    self.discarded_bytes += (bytes.len() - consumed) as u64;
                    return Step::error(bytes.len(), FramingError::JsonCorrupted { byte: first });
                }
                State::InFrame => {
                    let frame = &bytes[consumed..];
                    let limit = frame.len().min(self.max_frame_bytes);
                    if let Some(end) = self.scan(&frame[..limit]) {
                        self.state = State::Idle;
                        let frame_end = consumed + end + 1;
                        return Step::frame(frame_end, consumed..frame_end);
                    }
                    // The first max_frame_bytes bytes did not close the frame. (scan_pos can
                    // pass the cap one byte early, after a backslash: wait for that byte so
                    // the discarded span does not depend on how the stream was read.)
                    if self.scan_pos >= self.max_frame_bytes && frame.len() >= self.max_frame_bytes
                    {
                        self.state = State::Idle;
                        self.discarded_bytes += self.max_frame_bytes as u64;
                        return Step::error(
                            consumed + self.max_frame_bytes,
                            FramingError::JsonBufferOverflow {
                                max_frame_bytes: self.max_frame_bytes,
                            },
                        );
                    }
                    return Step::wait(consumed);
                }
            }
        }
    }

    /// Continues the scan of the open frame in `bytes` from `scan_pos`. Returns the index of the
    /// byte that closes the frame, or None with `scan_pos` at the end of what was examined.
    #[inline]
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut pos = self.scan_pos;
        let mut depth = self.depth;
        let mut in_string = self.in_string;
        let mut padded;
        while pos < bytes.len() {
            let avail = (bytes.len() - pos).min(64);
            let block: &[u8; 64] = match bytes[pos..].first_chunk::<64>() {
                Some(block) => block,
                None => {
                    // Spaces are not structural, so the padding yields no mask bits.
                    padded = [b' '; 64];
                    padded[..avail].copy_from_slice(&bytes[pos..]);
                    &padded
                }
            };
            let masks = ClassMasks::of(block);
            let mut from: u32 = 0;
            while from < 64 {
                let live = if in_string {
                    masks.quote | masks.backslash
                } else {
                    masks.quote | masks.open | masks.close
                };
                let candidates = live & (u64::MAX << from);
                if candidates == 0 {
                    break;
                }
                let i = candidates.trailing_zeros();
                let bit = 1u64 << i;
                from = i + 1;
                if in_string {
                    if masks.backslash & bit != 0 {
                        // The escaped byte, whatever it is, is string content.
                        from = i + 2;
                    } else {
                        in_string = false;
                    }
                } else if masks.quote & bit != 0 {
                    in_string = true;
                } else if masks.open & bit != 0 {
                    depth += 1;
                } else {
                    depth -= 1;
                    if depth == 0 {
                        self.depth = 0;
                        self.in_string = false;
                        return Some(pos + i as usize);
                    }
                }
            }
            // Past the block, or past the byte escaped by a backslash at its end.
            pos += (from as usize).max(avail);
        }
        self.scan_pos = pos;
        self.depth = depth;
        self.in_string = in_string;
        None
    }
}

/// Java `Character.isWhitespace` for a byte value as `JsonObjectDecoder` passes it (bytes
/// ≥ 0x80 are negative there, hence never whitespace).
#[inline]
fn is_java_whitespace(byte: u8) -> bool {
    matches!(byte, 0x09..=0x0d | 0x1c..=0x20)
}

/// One bit per byte of a 64-byte block, per structural class.
#[derive(Debug, Default, Clone, Copy)]
struct ClassMasks {
    quote: u64,
    backslash: u64,
    /// `{` or `[`.
    open: u64,
    /// `}` or `]`.
    close: u64,
}

impl ClassMasks {
    /// `[`/`]` are `{`/`}` with bit 0x20 clear, and no other byte maps onto `{`/`}` when that
    /// bit is set, so two compares of `byte | 0x20` find all four brackets.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[inline]
    fn of(block: &[u8; 64]) -> ClassMasks {
        // SAFETY: this build enables SSE2 (it is part of the x86_64 baseline).
        unsafe { ClassMasks::of_sse2(block) }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[target_feature(enable = "sse2")]
    #[inline]
    fn of_sse2(block: &[u8; 64]) -> ClassMasks {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let open = _mm_set1_epi8(b'{' as i8);
        let close = _mm_set1_epi8(b'}' as i8);
        let case_bit = _mm_set1_epi8(0x20);
        let mut masks = ClassMasks::default();
        for (k, lane) in block.chunks_exact(16).enumerate() {
            // SAFETY: `lane` is 16 readable bytes; `loadu` has no alignment requirement. SSE2 is
            // part of the x86_64 baseline.
            let v = unsafe { _mm_loadu_si128(lane.as_ptr().cast::<__m128i>()) };
            let folded = _mm_or_si128(v, case_bit);
            let bits = |m| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
            masks.quote |= bits(_mm_cmpeq_epi8(v, quote));
            masks.backslash |= bits(_mm_cmpeq_epi8(v, backslash));
            masks.open |= bits(_mm_cmpeq_epi8(folded, open));
            masks.close |= bits(_mm_cmpeq_epi8(folded, close));
        }
        masks
    }

    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    #[inline]
    fn of(block: &[u8; 64]) -> ClassMasks {
        let mut masks = ClassMasks::default();
        for (i, &b) in block.iter().enumerate() {
            let bit = 1u64 << i;
            match b | 0x20 {
                b'{' => masks.open |= bit,
                b'}' => masks.close |= bit,
                _ => {}
            }
            match b {
                b'"' => masks.quote |= bit,
                b'\\' => masks.backslash |= bit,
                _ => {}
            }
        }
        masks
    }
}
