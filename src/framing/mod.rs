//! Framing: the bytes a device sent on its connection → frames, exactly as ThingsBoard (Netty)
//! splits them. One file per handler type; all are pure, I/O-free, streaming structs.
//!
//! [`FramingSpec`] is the validated description of a handler configuration; it is built by
//! `config` from ThingsBoard's `handlerConfiguration` and checked by [`FramingSpec::validate`]
//! when the configuration is loaded, so a framer never meets an impossible setting.

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
