//! The downlink call: a rule-engine `TbMsgProto` through the JS `Encoder` to the exact bytes
//! written to the device (contract §4.2).
//!
//! Invariants: `msg` is `JSON.parse(data)` (the empty string when `data` is empty; the raw text
//! when `data` is not JSON), `metadata` the message's metadata map, `msgType` its type,
//! `integrationMetadata` the integration's map. Each result item must carry `contentType`
//! (`JSON`/`TEXT` → UTF-8 of `data`, `BINARY` → base64-decoded `data`) and `data`; a `metadata`
//! object may hold scalars only. Error texts are ThingsBoard's.

use bytes::Bytes;
use rquickjs::{Ctx, Object, Type, Value};

use super::ConvertError;
use super::script::{FORGIVING_BASE64, js_error, metadata_object};
use super::uplink::json_text;
use crate::proto::msgqueue::TbMsgProto;
use base64::Engine as _;

pub const ERR_NO_CONTENT_TYPE: &str = "Downlink content type is not set!";
pub const ERR_NO_DATA: &str = "Downlink data is not set!";
pub const ERR_UNKNOWN_CONTENT_TYPE: &str = "Unknown downlink content type ";
pub const ERR_BAD_METADATA: &str = "Invalid downlink metadata format!";

/// Builds the four encoder arguments from `msg`.
pub(crate) fn encoder_args<'js>(
    ctx: &Ctx<'js>,
    msg: &TbMsgProto,
    integration_metadata: &[(String, String)],
) -> rquickjs::Result<super::script::EncoderArgs<'js>> {
    let data = if msg.data.is_empty() {
        rquickjs::String::from_str(ctx.clone(), "")?.into_value()
    } else {
        match ctx.json_parse(msg.data.as_str()) {
            Ok(v) => v,
            Err(_) => {
                let _ = ctx.catch();
                rquickjs::String::from_str(ctx.clone(), &msg.data)?.into_value()
            }
        }
    };
    let meta = Object::new(ctx.clone())?;
    if let Some(m) = &msg.meta_data {
        let mut entries: Vec<_> = m.data.iter().collect();
        // Map order is random; sorted keys make the script's view reproducible.
        entries.sort();
        for (k, v) in entries {
            meta.set(k.as_str(), v.as_str())?;
        }
    }
    let msg_type = rquickjs::String::from_str(ctx.clone(), &msg.r#type)?.into_value();
    let integration = metadata_object(ctx, integration_metadata)?;
    Ok((data, meta.into_value(), msg_type, integration.into_value()))
}

/// Reads the encoder's result (one object or an array) into byte strings.
pub(crate) fn read_result<'js>(
    ctx: &Ctx<'js>,
    value: Value<'js>,
    out: &mut Vec<Bytes>,
) -> Result<(), ConvertError> {
    if let Some(array) = value.as_array() {
        for item in array.iter::<Value>() {
            let item = item.map_err(|e| js_error(ctx, e))?;
            out.push(read_item(ctx, &item)?);
        }
        return Ok(());
    }
    out.push(read_item(ctx, &value)?);
    Ok(())
}

fn bad(message: String) -> ConvertError {
    ConvertError::BadResult { message }
}

fn read_item<'js>(ctx: &Ctx<'js>, item: &Value<'js>) -> Result<Bytes, ConvertError> {
    let Some(obj) = item.as_object().filter(|_| !item.is_array()) else {
        return Err(bad(format!(
            "The downlink converter output must be an object or an array of objects, got: {}",
            json_text(ctx, item)
        )));
    };
    let content_type: Value = obj.get("contentType").map_err(|e| js_error(ctx, e))?;
    if content_type.type_of().is_void() {
        return Err(bad(ERR_NO_CONTENT_TYPE.to_string()));
    }
    let content_type = text_of(ctx, &content_type)?;
    let data: Value = obj.get("data").map_err(|e| js_error(ctx, e))?;
    if data.type_of().is_void() {
        return Err(bad(ERR_NO_DATA.to_string()));
    }
    let data = text_of(ctx, &data)?;
    let metadata: Value = obj.get("metadata").map_err(|e| js_error(ctx, e))?;
    if !metadata.type_of().is_void() {
        let Some(m) = metadata.as_object().filter(|_| !metadata.is_array()) else {
            return Err(bad(ERR_BAD_METADATA.to_string()));
        };
        for entry in m.props::<String, Value>() {
            let (_, v) = entry.map_err(|e| js_error(ctx, e))?;
            if matches!(
                v.type_of(),
                Type::Object | Type::Array | Type::Function | Type::Constructor
            ) {
                return Err(bad(ERR_BAD_METADATA.to_string()));
            }
        }
    }
    match content_type.as_str() {
        "JSON" | "TEXT" => Ok(Bytes::from(data.into_bytes())),
        "BINARY" => FORGIVING_BASE64
            .decode(data.trim().as_bytes())
            .map(Bytes::from)
            .map_err(|e| bad(format!("Downlink BINARY data is not valid base64: {e}"))),
        other => Err(bad(format!("{ERR_UNKNOWN_CONTENT_TYPE}{other}"))),
    }
}

/// A string value as is; anything else as its JSON text.
fn text_of<'js>(ctx: &Ctx<'js>, v: &Value<'js>) -> Result<String, ConvertError> {
    match v.as_string() {
        Some(s) => s.to_string().map_err(|e| js_error(ctx, e)),
        None => Ok(json_text(ctx, v)),
    }
}
