//! ThingsBoard's TCP integration configuration: the JSON text carried in
//! `IntegrationConfigurationProto.configuration`, parsed and validated into
//! [`TcpIntegrationConfig`].
//!
//! Two layers, as everywhere in `config`: serde reads the JSON into raw structs whose leaf values
//! are untyped ([`serde_json::Value`]), then [`TcpIntegrationConfig::from_json`] checks every
//! value and builds the runtime types. Leaves stay untyped in the raw layer so that an error can
//! name the full key path, the offending value and the allowed range, which serde's own type
//! errors cannot.
//!
//! Invariants of a [`TcpIntegrationConfig`]:
//! * every number is inside the range the ThingsBoard UI enforces (contract §3.1/§3.2), except
//!   `lengthAdjustment` (see [`LENGTH_ADJUSTMENT_MIN`]);
//! * its [`FramingSpec`] has passed [`FramingSpec::validate`], so a framer never meets an
//!   impossible setting;
//! * metadata keeps the order of the JSON text, values as text.
//!
//! Reading rules (ThingsBoard compatibility):
//! * Unknown keys are ignored at every level: the UI stores every handler field whatever the
//!   handler type, and ThingsBoard's parameter classes ignore unknown properties.
//! * JSON `null` counts as absent. An absent client or handler field takes the UI default
//!   (port 10560, backlog 128, buffers 64 KiB, keepalive off, nodelay on, cache 1000 entries for
//!   1440 minutes, maxFrameLength 128, stripDelimiter on, SYSTEM_LINE_SEPARATOR, LITTLE_ENDIAN,
//!   lengthFieldOffset 0, lengthFieldLength 2, lengthAdjustment 0, initialBytesToStrip 0,
//!   failFast off). `clientConfiguration`, `handlerConfiguration` and `handlerType` are required.
//! * Like Jackson's default coercions, an integer may be written as a JSON string (`"128"`) or as
//!   an integral float (`128.0`), and a boolean as `"true"`/`"false"`.
//! * A missing `metadata` object is read as empty metadata (the reference code would fail on it;
//!   an integration without metadata is a legitimate hand-written configuration).

use std::time::Duration;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use thiserror::Error;

use crate::framing::{BinarySpec, ByteOrder, Delimiter, FramingSpec, FramingSpecError, TextSpec};

/// Smallest accepted `lengthAdjustment`.
///
/// Contract open question §8.9: the UI limits `lengthAdjustment` to 0..8, but the length-field
/// algorithm (Netty's `LengthFieldBasedFrameDecoder`, which ThingsBoard runs) is defined for any
/// value, and negative adjustments are the usual way to describe a length field that counts the
/// header too. We accept what the reference code accepts, bounded by the largest possible
/// frame: below -65535 or above 65535 no frame could ever be valid, so such a value is a typo.
/// `lengthFieldOffset` and `initialBytesToStrip` keep the UI's 0..8.
pub const LENGTH_ADJUSTMENT_MIN: i64 = -65_535;
/// Largest accepted `lengthAdjustment` (see [`LENGTH_ADJUSTMENT_MIN`]).
pub const LENGTH_ADJUSTMENT_MAX: i64 = 65_535;

/// A validated TCP integration configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpIntegrationConfig {
    pub client: ClientConfig,
    /// `metadata`: added to every converter call; values as text, in file order.
    pub metadata: Vec<(String, String)>,
}

/// `clientConfiguration`: the listener, socket options and framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `port`: the device-facing listen port.
    pub port: u16,
    /// `soBacklogOption`: listen backlog.
    pub so_backlog: u32,
    /// `soRcvBuf`: receive buffer of accepted sockets, KiB.
    pub so_rcvbuf_kib: u32,
    /// `soSndBuf`: send buffer of accepted sockets, KiB.
    pub so_sndbuf_kib: u32,
    /// `soKeepaliveOption`: SO_KEEPALIVE on accepted sockets.
    pub so_keepalive: bool,
    /// `tcpNoDelay`: TCP_NODELAY on accepted sockets.
    pub tcp_nodelay: bool,
    /// `cacheSize`: entries of the device → connection table kept for downlinks.
    pub cache_size: u32,
    /// `timeToLiveInMinutes`: how long an entry of that table lives after it was written.
    pub cache_ttl: Duration,
    /// `handlerConfiguration`.
    pub framing: FramingSpec,
}

/// Why an integration configuration was refused. Nobody recovers locally: the integration stays
/// down until ThingsBoard sends a corrected configuration, and the message tells the user what to
/// change in the integration's settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IntegrationConfigError {
    #[error("integration configuration is not valid JSON: {0}")]
    Json(String),
    #[error("integration configuration: `{key}` is required but missing")]
    Missing { key: &'static str },
    #[error("integration configuration: `{key}` = {value} is not allowed; allowed: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("integration configuration: `clientConfiguration.handlerConfiguration`: {0}")]
    Framing(#[from] FramingSpecError),
}

const CLIENT: &str = "clientConfiguration";
const HANDLER: &str = "clientConfiguration.handlerConfiguration";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIntegrationConfig {
    #[serde(default)]
    client_configuration: Option<Value>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClientConfiguration {
    port: Option<Value>,
    so_backlog_option: Option<Value>,
    so_rcv_buf: Option<Value>,
    so_snd_buf: Option<Value>,
    so_keepalive_option: Option<Value>,
    tcp_no_delay: Option<Value>,
    cache_size: Option<Value>,
    time_to_live_in_minutes: Option<Value>,
    handler_configuration: Option<Value>,
}

/// Every field of every handler type: the UI stores them all, whatever `handlerType` says.
/// `charsetName` is not read: the TCP path passes payload bytes unchanged.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHandlerConfiguration {
    handler_type: Option<Value>,
    max_frame_length: Option<Value>,
    strip_delimiter: Option<Value>,
    message_separator: Option<Value>,
    custom_separator_raw_value: Option<Value>,
    byte_order: Option<Value>,
    length_field_offset: Option<Value>,
    length_field_length: Option<Value>,
    length_adjustment: Option<Value>,
    initial_bytes_to_strip: Option<Value>,
    fail_fast: Option<Value>,
}

/// `metadata` as (key, value) pairs in file order (serde_json's map would sort them).
struct RawMetadata(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for RawMetadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = RawMetadata;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of metadata values")
            }
            fn visit_unit<E>(self) -> Result<RawMetadata, E> {
                Ok(RawMetadata(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMetadata, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    pairs.push((key, value));
                }
                Ok(RawMetadata(pairs))
            }
        }
        deserializer.deserialize_any(PairsVisitor)
    }
}

impl TcpIntegrationConfig {
    /// Parses and validates the configuration JSON of a TCP integration.
    pub fn from_json(text: &str) -> Result<Self, IntegrationConfigError> {
        let raw: RawIntegrationConfig =
            serde_json::from_str(text).map_err(|e| IntegrationConfigError::Json(e.to_string()))?;
        let client_value = raw
            .client_configuration
            .ok_or(IntegrationConfigError::Missing { key: CLIENT })?;
        let client = client_config(client_value)?;
        let metadata = match raw.metadata {
            None => Vec::new(),
            Some(RawMetadata(pairs)) => pairs
                .into_iter()
                .map(|(key, value)| {
                    let text = metadata_text(&key, value)?;
                    Ok((key, text))
                })
                .collect::<Result<_, IntegrationConfigError>>()?,
        };
        Ok(TcpIntegrationConfig { client, metadata })
    }
}

fn client_config(value: Value) -> Result<ClientConfig, IntegrationConfigError> {
    let raw: RawClientConfiguration = as_object(CLIENT, value)?;
    let handler_value = raw
        .handler_configuration
        .ok_or(IntegrationConfigError::Missing {
            key: "clientConfiguration.handlerConfiguration",
        })?;
    let ttl_minutes = int_in(
        "clientConfiguration.timeToLiveInMinutes",
        raw.time_to_live_in_minutes.as_ref(),
        1440,
        0,
        525_600,
    )?;
    let framing = framing_spec(handler_value)?;
    framing.validate()?;
    Ok(ClientConfig {
        port: int_in(
            "clientConfiguration.port",
            raw.port.as_ref(),
            10560,
            1,
            65535,
        )? as u16,
        so_backlog: int_in(
            "clientConfiguration.soBacklogOption",
            raw.so_backlog_option.as_ref(),
            128,
            1,
            65535,
        )? as u32,
        so_rcvbuf_kib: int_in(
            "clientConfiguration.soRcvBuf",
            raw.so_rcv_buf.as_ref(),
            64,
            1,
            65535,
        )? as u32,
        so_sndbuf_kib: int_in(
            "clientConfiguration.soSndBuf",
            raw.so_snd_buf.as_ref(),
            64,
            1,
            65535,
        )? as u32,
        so_keepalive: boolean(
            "clientConfiguration.soKeepaliveOption",
            raw.so_keepalive_option.as_ref(),
            false,
        )?,
        tcp_nodelay: boolean(
            "clientConfiguration.tcpNoDelay",
            raw.tcp_no_delay.as_ref(),
            true,
        )?,
        cache_size: int_in(
            "clientConfiguration.cacheSize",
            raw.cache_size.as_ref(),
            1000,
            0,
            i64::from(u32::MAX),
        )? as u32,
        cache_ttl: Duration::from_secs(ttl_minutes as u64 * 60),
        framing,
    })
}

fn framing_spec(value: Value) -> Result<FramingSpec, IntegrationConfigError> {
    let raw: RawHandlerConfiguration = as_object(HANDLER, value)?;
    const TYPE_KEY: &str = "clientConfiguration.handlerConfiguration.handlerType";
    let handler_type = raw
        .handler_type
        .as_ref()
        .ok_or(IntegrationConfigError::Missing { key: TYPE_KEY })?;
    match handler_type.as_str() {
        Some("JSON") => Ok(FramingSpec::Json),
        Some("TEXT") => text_spec(&raw).map(FramingSpec::Text),
        Some("BINARY") => binary_spec(&raw).map(FramingSpec::Binary),
        Some("HEX") => Err(invalid(
            TYPE_KEY,
            handler_type,
            "TEXT, JSON or BINARY (HEX exists only for UDP integrations)",
        )),
        _ => Err(invalid(TYPE_KEY, handler_type, "TEXT, JSON or BINARY")),
    }
}

fn text_spec(raw: &RawHandlerConfiguration) -> Result<TextSpec, IntegrationConfigError> {
    const SEPARATOR_KEY: &str = "clientConfiguration.handlerConfiguration.messageSeparator";
    const CUSTOM_KEY: &str = "clientConfiguration.handlerConfiguration.customSeparatorRawValue";
    let delimiter = match raw.message_separator.as_ref() {
        None => Delimiter::Line,
        Some(v) => match v.as_str() {
            Some("SYSTEM_LINE_SEPARATOR") => Delimiter::Line,
            Some("NUL_DELIMITER") => Delimiter::Nul,
            Some("CUSTOM_SEPARATOR") => match raw.custom_separator_raw_value.as_ref() {
                None => return Err(IntegrationConfigError::Missing { key: CUSTOM_KEY }),
                Some(Value::String(s)) if !s.is_empty() => Delimiter::Custom(s.as_bytes().to_vec()),
                Some(other) => {
                    return Err(invalid(CUSTOM_KEY, other, "a non-empty string"));
                }
            },
            _ => {
                return Err(invalid(
                    SEPARATOR_KEY,
                    v,
                    "SYSTEM_LINE_SEPARATOR, NUL_DELIMITER or CUSTOM_SEPARATOR",
                ));
            }
        },
    };
    Ok(TextSpec {
        max_frame_bytes: int_in(
            "clientConfiguration.handlerConfiguration.maxFrameLength",
            raw.max_frame_length.as_ref(),
            128,
            1,
            65535,
        )? as usize,
        strip_delimiter: boolean(
            "clientConfiguration.handlerConfiguration.stripDelimiter",
            raw.strip_delimiter.as_ref(),
            true,
        )?,
        delimiter,
    })
}

fn binary_spec(raw: &RawHandlerConfiguration) -> Result<BinarySpec, IntegrationConfigError> {
    const ORDER_KEY: &str = "clientConfiguration.handlerConfiguration.byteOrder";
    const LENGTH_KEY: &str = "clientConfiguration.handlerConfiguration.lengthFieldLength";
    // Reference code treats anything but LITTLE_ENDIAN as big-endian; we refuse values other than
    // the two the UI offers, so a typo does not silently flip the byte order.
    let byte_order = match raw.byte_order.as_ref() {
        None => ByteOrder::LittleEndian,
        Some(v) => match v.as_str() {
            Some("LITTLE_ENDIAN") => ByteOrder::LittleEndian,
            Some("BIG_ENDIAN") => ByteOrder::BigEndian,
            _ => return Err(invalid(ORDER_KEY, v, "LITTLE_ENDIAN or BIG_ENDIAN")),
        },
    };
    let length_field_bytes = match raw.length_field_length.as_ref() {
        None => 2,
        Some(v) => match integer(v) {
            Some(n @ (1 | 2 | 3 | 4 | 8)) => n as usize,
            _ => return Err(invalid(LENGTH_KEY, v, "1, 2, 3, 4 or 8")),
        },
    };
    Ok(BinarySpec {
        byte_order,
        max_frame_bytes: int_in(
            "clientConfiguration.handlerConfiguration.maxFrameLength",
            raw.max_frame_length.as_ref(),
            128,
            1,
            65535,
        )? as usize,
        length_field_offset: int_in(
            "clientConfiguration.handlerConfiguration.lengthFieldOffset",
            raw.length_field_offset.as_ref(),
            0,
            0,
            8,
        )? as usize,
        length_field_bytes,
        length_adjustment: int_in(
            "clientConfiguration.handlerConfiguration.lengthAdjustment",
            raw.length_adjustment.as_ref(),
            0,
            LENGTH_ADJUSTMENT_MIN,
            LENGTH_ADJUSTMENT_MAX,
        )?,
        initial_bytes_to_strip: int_in(
            "clientConfiguration.handlerConfiguration.initialBytesToStrip",
            raw.initial_bytes_to_strip.as_ref(),
            0,
            0,
            8,
        )? as usize,
        fail_fast: boolean(
            "clientConfiguration.handlerConfiguration.failFast",
            raw.fail_fast.as_ref(),
            false,
        )?,
    })
}

/// A metadata value as the text the converter sees: strings as they are, numbers and booleans
/// as their JSON text, `null` as `"null"` (Jackson's `asText`). Objects and arrays are refused:
/// ThingsBoard would turn them into an empty string, which is never what the user meant.
fn metadata_text(key: &str, value: Value) -> Result<String, IntegrationConfigError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".to_owned()),
        other => Err(invalid(
            &format!("metadata.{key}"),
            &other,
            "a string, number or boolean",
        )),
    }
}

fn as_object<T: for<'de> Deserialize<'de>>(
    key: &str,
    value: Value,
) -> Result<T, IntegrationConfigError> {
    if !value.is_object() {
        return Err(invalid(key, &value, "an object"));
    }
    serde_json::from_value(value).map_err(|e| IntegrationConfigError::Invalid {
        key: key.to_owned(),
        value: "(object)".to_owned(),
        allowed: e.to_string(),
    })
}

/// An integer written as a JSON integer, an integral float or a string of digits.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn int_in(
    key: &str,
    value: Option<&Value>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, IntegrationConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match integer(value) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(key, value, &format!("an integer in {min}..={max}"))),
    }
}

fn boolean(
    key: &str,
    value: Option<&Value>,
    default: bool,
) -> Result<bool, IntegrationConfigError> {
    match value {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(invalid(key, other, "true or false")),
    }
}

fn invalid(key: &str, value: &Value, allowed: &str) -> IntegrationConfigError {
    IntegrationConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        allowed: allowed.to_owned(),
    }
}
