//! TEXT framing: ThingsBoard's `DelimiterBasedFrameDecoder` (Netty) with its three separators.
//!
//! * `SYSTEM_LINE_SEPARATOR`: a frame ends at LF; a CR right before the LF belongs to the
//!   delimiter; a lone CR is data.
//! * `NUL_DELIMITER`: the byte 0x00. `CUSTOM_SEPARATOR`: the raw bytes, multi-byte allowed; the
//!   first occurrence in the stream ends the frame.
//! * `maxFrameLength` counts the frame without its delimiter. An over-long frame is reported as
//!   soon as more than `maxFrameLength` bytes of it are known (fail-fast is hard-wired in
//!   ThingsBoard) and then discarded up to and including the next delimiter.
//! * Bytes after the last delimiter are never a frame.
//!
//! Invariants: `buf[..scanned]` is known to hold no delimiter start, so each byte is searched once
//! (memchr / memmem) however slowly the frame arrives. While no delimiter is found, the buffer
//! keeps at most `maxFrameLength` bytes of frame plus the few trailing bytes that may begin a
//! delimiter. `decode_batch` searches the whole unscanned buffer in one `memchr_iter` /
//! `memmem::find_iter` pass (the delimiters do not overlap, so each match ends one frame) and
//! leaves the waiting rules for the tail to `step`, shared with `decode`.
//!
//! One deliberate difference from Netty: Netty judges "too long" on the whole buffered tail,
//! including a trailing CR (or a partial custom delimiter) that the next read may turn into a
//! delimiter, so in that corner its outcome depends on how TCP split the stream. We do not count
//! those possibly-delimiter bytes until the next read decides, which gives the outcome Netty has
//! when the bytes arrive together, whatever the segmentation.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

use super::{Delimiter, FramingError, Step, TextSpec};

const LF: u8 = b'\n';
const CR: u8 = b'\r';

/// How a frame's end is found.
#[derive(Debug)]
enum Separator {
    /// LF, or CR LF.
    Line,
    /// One byte (NUL, or a one-byte custom separator).
    Byte(u8),
    /// A multi-byte custom separator (boxed: the searcher is ~300 bytes, and a connection's
    /// framer should stay small).
    Bytes(Box<memmem::Finder<'static>>),
}

/// Streaming TEXT framer of one connection.
#[derive(Debug)]
pub struct TextFramer {
    separator: Separator,
    max_frame_bytes: usize,
    strip_delimiter: bool,
    /// `buf[..scanned]` holds no delimiter start (LF search resumes here).
    scanned: usize,
    /// An over-long frame was reported; drop bytes until its delimiter has gone by.
    discarding: bool,
    discarded_bytes: u64,
}

impl TextFramer {
    /// Builds the framer; `spec` must satisfy [`super::FramingSpec::validate`].
    pub fn new(spec: &TextSpec) -> TextFramer {
        let separator = match &spec.delimiter {
            Delimiter::Line => Separator::Line,
            Delimiter::Nul => Separator::Byte(0),
            Delimiter::Custom(bytes) if bytes.len() == 1 => Separator::Byte(bytes[0]),
            Delimiter::Custom(bytes) => {
                Separator::Bytes(Box::new(memmem::Finder::new(bytes).into_owned()))
            }
        };
        TextFramer {
            separator,
            max_frame_bytes: spec.max_frame_bytes,
            strip_delimiter: spec.strip_delimiter,
            scanned: 0,
            discarding: false,
            discarded_bytes: 0,
        }
    }

    /// See [`super::Framer::decode`].
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, FramingError>> {
        self.step(buf).apply(buf)
    }

    /// See [`super::Framer::decode_batch`]. One delimiter search runs over everything
    /// unscanned (`memchr_iter` / `memmem::find_iter`); each match is a frame (or the end of a
    /// discarded one), handed out borrowed. The tail after the last delimiter goes through
    /// [`TextFramer::step`], which keeps the waiting rules in one place.
    #[inline]
    pub fn decode_batch(
        &mut self,
        buf: &mut BytesMut,
        on_item: &mut impl FnMut(Result<&[u8], FramingError>),
    ) {
        let bytes: &[u8] = buf;
        let from = self.scanned.min(bytes.len());
        let TextFramer {
            separator,
            max_frame_bytes,
            strip_delimiter,
            discarding,
            discarded_bytes,
            ..
        } = self;
        let mut frames = Frames {
            bytes,
            max_frame_bytes: *max_frame_bytes,
            strip_delimiter: *strip_delimiter,
            discarding,
            discarded_bytes,
        };
        let (tail_start, resume_margin) = match separator {
            Separator::Line => {
                let positions = memchr::memchr_iter(LF, &bytes[from..]).map(|i| from + i);
                (frames.hand_out(positions, 1, true, on_item), 0)
            }
            Separator::Byte(byte) => {
                let positions = memchr::memchr_iter(*byte, &bytes[from..]).map(|i| from + i);
                (frames.hand_out(positions, 1, false, on_item), 0)
            }
            Separator::Bytes(finder) => {
                // Matches do not overlap: the search resumes after each delimiter, where the
                // next frame starts, as `step` does.
                let needle_bytes = finder.needle().len();
                let positions = finder.find_iter(&bytes[from..]).map(|i| from + i);
                (
                    frames.hand_out(positions, needle_bytes, false, on_item),
                    needle_bytes - 1,
                )
            }
        };
        // The tail holds no delimiter: resume the next search where `find_delimiter` would.
        self.scanned = (bytes.len() - tail_start).saturating_sub(resume_margin);
        buf.advance(tail_start);
        super::drain_steps(buf, |bytes| self.step(bytes), on_item);
    }

    /// The pure core of both framer APIs: what the unconsumed `bytes` yield next.
    #[inline]
    pub(super) fn step(&mut self, bytes: &[u8]) -> Step {
        let mut consumed = 0;
        loop {
            let rest = &bytes[consumed..];
            match self.find_delimiter(rest) {
                Some((frame_bytes, delimiter_bytes)) => {
                    self.scanned = 0;
                    let end = consumed + frame_bytes + delimiter_bytes;
                    if self.discarding {
                        // The error was reported when the frame first exceeded the limit.
                        self.discarding = false;
                        self.discarded_bytes += (frame_bytes + delimiter_bytes) as u64;
                        consumed = end;
                        continue;
                    }
                    if frame_bytes > self.max_frame_bytes {
                        self.discarded_bytes += (frame_bytes + delimiter_bytes) as u64;
                        return Step::error(end, self.too_long());
                    }
                    let frame_end = if self.strip_delimiter {
                        consumed + frame_bytes
                    } else {
                        end
                    };
                    return Step::frame(end, consumed..frame_end);
                }
                None => {
                    // Bytes that may still begin a delimiter are not known to be frame data.
                    let known_frame_bytes = rest.len() - self.possible_delimiter_tail(rest);
                    if self.discarding {
                        self.discard_known(known_frame_bytes);
                        return Step::wait(consumed + known_frame_bytes);
                    }
                    if known_frame_bytes > self.max_frame_bytes {
                        self.discarding = true;
                        self.discard_known(known_frame_bytes);
                        return Step::error(consumed + known_frame_bytes, self.too_long());
                    }
                    return Step::wait(consumed);
                }
            }
        }
    }

    /// Bytes thrown away so far (over-long frames and their delimiters).
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    fn too_long(&self) -> FramingError {
        FramingError::TextFrameTooLong {
            max_frame_bytes: self.max_frame_bytes,
        }
    }

    /// Counts bytes known to belong to an over-long frame as discarded; the search resume
    /// point moves with them (it may fall inside the kept tail, where a delimiter may start).
    fn discard_known(&mut self, nr_bytes: usize) {
        self.discarded_bytes += nr_bytes as u64;
        self.scanned = self.scanned.saturating_sub(nr_bytes);
    }

    /// Finds the first delimiter at or after `scanned`: (frame bytes, delimiter bytes).
    /// When there is none, leaves `scanned` where the next search must resume.
    #[inline]
    fn find_delimiter(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        let from = self.scanned.min(buf.len());
        match &self.separator {
            Separator::Line => match memchr::memchr(LF, &buf[from..]) {
                Some(i) => {
                    let lf = from + i;
                    if lf > 0 && buf[lf - 1] == CR {
                        Some((lf - 1, 2))
                    } else {
                        Some((lf, 1))
                    }
                }
                None => {
                    self.scanned = buf.len();
                    None
                }
            },
            Separator::Byte(byte) => match memchr::memchr(*byte, &buf[from..]) {
                Some(i) => Some((from + i, 1)),
                None => {
                    self.scanned = buf.len();
                    None
                }
            },
            Separator::Bytes(finder) => match finder.find(&buf[from..]) {
                Some(i) => Some((from + i, finder.needle().len())),
                None => {
                    // A delimiter may start in the last needle-1 bytes once more arrive.
                    self.scanned = buf.len().saturating_sub(finder.needle().len() - 1);
                    None
                }
            },
        }
    }

    /// How many trailing bytes of `buf` (which holds no complete delimiter) may be the start of
    /// a delimiter completed by the next read.
    fn possible_delimiter_tail(&self, buf: &[u8]) -> usize {
        match &self.separator {
            Separator::Line => usize::from(buf.last() == Some(&CR)),
            Separator::Byte(_) => 0,
            Separator::Bytes(finder) => {
                let needle = finder.needle();
                // The longest suffix of buf that is a proper prefix of the delimiter.
                let longest = (needle.len() - 1).min(buf.len());
                (1..=longest)
                    .rev()
                    .find(|&n| buf[buf.len() - n..] == needle[..n])
                    .unwrap_or(0)
            }
        }
    }
}

/// The frame-handing part of a [`TextFramer`], borrowed apart from its separator so a search
/// over the buffer can run while frames are handed out.
struct Frames<'a, 'f> {
    bytes: &'a [u8],
    max_frame_bytes: usize,
    strip_delimiter: bool,
    discarding: &'f mut bool,
    discarded_bytes: &'f mut u64,
}

impl<'a> Frames<'a, '_> {
    /// Hands out the frames ended by the delimiters at `positions` (ascending, non-overlapping,
    /// each `delimiter_bytes` long; `cr_lf`: a CR right before one joins it). Returns where the
    /// bytes after the last delimiter start.
    #[inline(always)]
    fn hand_out(
        &mut self,
        positions: impl Iterator<Item = usize>,
        delimiter_bytes: usize,
        cr_lf: bool,
        on_item: &mut impl FnMut(Result<&'a [u8], FramingError>),
    ) -> usize {
        let bytes = self.bytes;
        let mut start = 0;
        for delimiter_at in positions {
            let end = delimiter_at + delimiter_bytes;
            let frame_end = if cr_lf && delimiter_at > start && bytes[delimiter_at - 1] == CR {
                delimiter_at - 1
            } else {
                delimiter_at
            };
            if *self.discarding {
                // The error was reported when the frame first exceeded the limit.
                *self.discarding = false;
                *self.discarded_bytes += (end - start) as u64;
            } else if frame_end - start > self.max_frame_bytes {
                *self.discarded_bytes += (end - start) as u64;
                on_item(Err(FramingError::TextFrameTooLong {
                    max_frame_bytes: self.max_frame_bytes,
                }));
            } else {
                let frame = if self.strip_delimiter {
                    &bytes[start..frame_end]
                } else {
                    &bytes[start..end]
                };
                on_item(Ok(frame));
            }
            start = end;
        }
        start
    }
}
