//! Protobuf encoding of a normalised uplink entity: `DeviceUplinkDataProto` or
//! `AssetUplinkDataProto` bytes, built on the shard so the uplink core only concatenates.
//!
//! Invariants (contract §2.5): name and type always set; label, customer and group only when
//! non-empty (proto3 leaves empty strings off the wire); `postTelemetryMsg` only when the result
//! had `telemetry`; `postAttributesMsg` only when it had `attributes`, with `shared = false`.

use bytes::Bytes;
use prost::Message as _;

use super::EntityKind;
use super::typing::TypedValue;
use super::uplink::{KeyValue, TsValues, UplinkEntity};
use crate::proto::integration::{AssetUplinkDataProto, DeviceUplinkDataProto};
use crate::proto::transport::{
    KeyValueProto, KeyValueType, PostAttributeMsg, PostTelemetryMsg, TsKvListProto,
};

/// Encodes `entity` (consumed: its strings move into the message) into `buf`, returning the
/// bytes. `buf` is reused between calls.
pub fn encode_entity(entity: UplinkEntity, buf: &mut Vec<u8>) -> Bytes {
    buf.clear();
    let telemetry = entity.telemetry.map(|list| PostTelemetryMsg {
        ts_kv_list: list.into_iter().map(ts_kv_list).collect(),
    });
    let attributes = entity.attributes.map(|kv| PostAttributeMsg {
        kv: kv.into_iter().map(key_value).collect(),
        shared: false,
    });
    match entity.kind {
        EntityKind::Device => DeviceUplinkDataProto {
            device_name: entity.name,
            device_type: entity.entity_type,
            customer_name: entity.customer_name,
            group_name: entity.group_name,
            post_telemetry_msg: telemetry,
            post_attributes_msg: attributes,
            device_label: entity.label,
        }
        .encode(buf),
        EntityKind::Asset => AssetUplinkDataProto {
            asset_name: entity.name,
            asset_type: entity.entity_type,
            customer_name: entity.customer_name,
            group_name: entity.group_name,
            post_telemetry_msg: telemetry,
            post_attributes_msg: attributes,
            asset_label: entity.label,
        }
        .encode(buf),
    }
    // Encoding into a Vec cannot run out of space.
    .unwrap_or(());
    Bytes::copy_from_slice(buf)
}

fn ts_kv_list(entry: TsValues) -> TsKvListProto {
    TsKvListProto {
        ts: entry.ts_ms,
        kv: entry.values.into_iter().map(key_value).collect(),
    }
}

/// One typed value as a `KeyValueProto`.
pub fn key_value(kv: KeyValue) -> KeyValueProto {
    let mut p = KeyValueProto {
        key: kv.key,
        ..Default::default()
    };
    match kv.value {
        TypedValue::Bool(b) => {
            p.r#type = KeyValueType::BooleanV as i32;
            p.bool_v = b;
        }
        TypedValue::Long(v) => {
            p.r#type = KeyValueType::LongV as i32;
            p.long_v = v;
        }
        TypedValue::Double(v) => {
            p.r#type = KeyValueType::DoubleV as i32;
            p.double_v = v;
        }
        TypedValue::String(s) => {
            p.r#type = KeyValueType::StringV as i32;
            p.string_v = s;
        }
        TypedValue::Json(s) => {
            p.r#type = KeyValueType::JsonV as i32;
            p.json_v = s;
        }
    }
    p
}
