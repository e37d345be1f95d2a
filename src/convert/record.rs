//! Protobuf encoding of a normalised uplink entity: `DeviceUplinkDataProto` or
//! `AssetUplinkDataProto` bytes, built on the shard so the uplink core only concatenates.
//!
//! Invariants (contract §2.5): name and type always set; label, customer and group only when
//! non-empty (proto3 leaves empty strings off the wire); `postTelemetryMsg` only when the result
//! had `telemetry`; `postAttributesMsg` only when it had `attributes`, with `shared = false`.
//!
//! The bytes are written directly (field order and proto3 default-skipping as prost writes
//! them), without first building the prost message structs: a test checks byte equality with
//! prost's encoding of the same message.

use bytes::Bytes;

use super::typing::TypedValue;
use super::uplink::{KeyValue, TsValues, UplinkEntity};

/// Protobuf wire types used here.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;

/// `KeyValueType` numbers (queue.proto); BOOLEAN_V is 0, the proto3 default, so never written.
const TYPE_LONG: u64 = 1;
const TYPE_DOUBLE: u64 = 2;
const TYPE_STRING: u64 = 3;
const TYPE_JSON: u64 = 4;

/// Encodes `entity` as `DeviceUplinkDataProto` / `AssetUplinkDataProto` (the two share field
/// numbers: name 1, type 2, customer 3, group 4, telemetry 5, attributes 6, label 7) into
/// `buf`, returning the bytes. `buf` is reused between calls.
pub fn encode_entity(entity: UplinkEntity, buf: &mut Vec<u8>) -> Bytes {
    write_entity(&entity, buf);
    Bytes::copy_from_slice(buf)
}

/// Encodes `entity` as the `UplinkMsg` field it travels in (`deviceData` = 2 or `assetData` =
/// 7: key, length, message), returning those bytes and the message's offset in them. One
/// allocation per record: the uplink core concatenates these bytes as they are.
pub(crate) fn encode_entity_tagged(entity: &UplinkEntity, buf: &mut Vec<u8>) -> (Bytes, usize) {
    write_entity(entity, buf);
    let field = match entity.kind {
        super::EntityKind::Device => 2,
        super::EntityKind::Asset => 7,
    };
    let header_bytes = 1 + varint_len(buf.len() as u64);
    let mut out = Vec::with_capacity(header_bytes + buf.len());
    put_key(&mut out, field, WIRE_LEN);
    put_varint(&mut out, buf.len() as u64);
    out.extend_from_slice(buf);
    (Bytes::from(out), header_bytes)
}

fn write_entity(entity: &UplinkEntity, buf: &mut Vec<u8>) {
    buf.clear();
    // Device and asset messages have the same layout: `entity.kind` does not change a byte.
    put_string(buf, 1, &entity.name);
    put_string(buf, 2, &entity.entity_type);
    put_string(buf, 3, &entity.customer_name);
    put_string(buf, 4, &entity.group_name);
    if let Some(list) = &entity.telemetry {
        // PostTelemetryMsg { repeated TsKvListProto tsKvList = 1 }
        let body: usize = list.iter().map(|t| len_field(ts_len(t))).sum();
        put_key(buf, 5, WIRE_LEN);
        put_varint(buf, body as u64);
        for t in list {
            put_key(buf, 1, WIRE_LEN);
            put_varint(buf, ts_len(t) as u64);
            put_ts(buf, t);
        }
    }
    if let Some(kvs) = &entity.attributes {
        // PostAttributeMsg { repeated KeyValueProto kv = 1; bool shared = 2 } (shared false)
        let body: usize = kvs.iter().map(|kv| len_field(kv_len(kv))).sum();
        put_key(buf, 6, WIRE_LEN);
        put_varint(buf, body as u64);
        for kv in kvs {
            put_key(buf, 1, WIRE_LEN);
            put_varint(buf, kv_len(kv) as u64);
            put_kv(buf, kv);
        }
    }
    put_string(buf, 7, &entity.label);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Size of a length-delimited field with a one-byte key and a `body`-byte payload.
fn len_field(body: usize) -> usize {
    1 + varint_len(body as u64) + body
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Every field number here is below 16, so a key is one byte.
fn put_key(buf: &mut Vec<u8>, field: u8, wire: u8) {
    buf.push((field << 3) | wire);
}

/// A proto3 string: left off when empty.
fn put_string(buf: &mut Vec<u8>, field: u8, s: &str) {
    if !s.is_empty() {
        put_key(buf, field, WIRE_LEN);
        put_varint(buf, s.len() as u64);
        buf.extend_from_slice(s.as_bytes());
    }
}

fn string_len(s: &str) -> usize {
    if s.is_empty() { 0 } else { len_field(s.len()) }
}

/// `KeyValueProto` body: key 1, type 2, bool_v 3, long_v 4, double_v 5, string_v 6, json_v 7;
/// proto3 defaults (0, false, 0.0, "") are left off.
fn kv_len(kv: &KeyValue) -> usize {
    let mut n = string_len(&kv.key);
    n += match &kv.value {
        TypedValue::Bool(b) => usize::from(*b) * 2,
        TypedValue::Long(v) => {
            1 + varint_len(TYPE_LONG)
                + if *v != 0 {
                    1 + varint_len(*v as u64)
                } else {
                    0
                }
        }
        TypedValue::Double(v) => 1 + varint_len(TYPE_DOUBLE) + if *v != 0.0 { 9 } else { 0 },
        TypedValue::String(s) => 1 + varint_len(TYPE_STRING) + string_len(s),
        TypedValue::Json(s) => 1 + varint_len(TYPE_JSON) + string_len(s),
    };
    n
}

fn put_kv(buf: &mut Vec<u8>, kv: &KeyValue) {
    put_string(buf, 1, &kv.key);
    let put_type = |buf: &mut Vec<u8>, t: u64| {
        put_key(buf, 2, WIRE_VARINT);
        put_varint(buf, t);
    };
    match &kv.value {
        TypedValue::Bool(b) => {
            // type BOOLEAN_V is 0: left off.
            if *b {
                put_key(buf, 3, WIRE_VARINT);
                buf.push(1);
            }
        }
        TypedValue::Long(v) => {
            put_type(buf, TYPE_LONG);
            if *v != 0 {
                put_key(buf, 4, WIRE_VARINT);
                put_varint(buf, *v as u64);
            }
        }
        TypedValue::Double(v) => {
            put_type(buf, TYPE_DOUBLE);
            if *v != 0.0 {
                put_key(buf, 5, WIRE_FIXED64);
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        TypedValue::String(s) => {
            put_type(buf, TYPE_STRING);
            put_string(buf, 6, s);
        }
        TypedValue::Json(s) => {
            put_type(buf, TYPE_JSON);
            put_string(buf, 7, s);
        }
    }
}

/// `TsKvListProto` body: ts 1 (left off when 0), repeated kv 2.
fn ts_len(t: &TsValues) -> usize {
    let ts = if t.ts_ms != 0 {
        1 + varint_len(t.ts_ms as u64)
    } else {
        0
    };
    ts + t
        .values
        .iter()
        .map(|kv| len_field(kv_len(kv)))
        .sum::<usize>()
}

fn put_ts(buf: &mut Vec<u8>, t: &TsValues) {
    if t.ts_ms != 0 {
        put_key(buf, 1, WIRE_VARINT);
        put_varint(buf, t.ts_ms as u64);
    }
    for kv in &t.values {
        put_key(buf, 2, WIRE_LEN);
        put_varint(buf, kv_len(kv) as u64);
        put_kv(buf, kv);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::convert::EntityKind;
    use crate::proto::integration::{AssetUplinkDataProto, DeviceUplinkDataProto};
    use crate::proto::transport::{
        KeyValueProto, KeyValueType, PostAttributeMsg, PostTelemetryMsg, TsKvListProto,
    };

    /// The reference: the same entity through the prost message structs.
    fn prost_bytes(entity: &UplinkEntity) -> Vec<u8> {
        let kv = |kv: &KeyValue| {
            let mut p = KeyValueProto {
                key: kv.key.clone(),
                ..Default::default()
            };
            match &kv.value {
                TypedValue::Bool(b) => {
                    p.r#type = KeyValueType::BooleanV as i32;
                    p.bool_v = *b;
                }
                TypedValue::Long(v) => {
                    p.r#type = KeyValueType::LongV as i32;
                    p.long_v = *v;
                }
                TypedValue::Double(v) => {
                    p.r#type = KeyValueType::DoubleV as i32;
                    p.double_v = *v;
                }
                TypedValue::String(s) => {
                    p.r#type = KeyValueType::StringV as i32;
                    p.string_v = s.clone();
                }
                TypedValue::Json(s) => {
                    p.r#type = KeyValueType::JsonV as i32;
                    p.json_v = s.clone();
                }
            }
            p
        };
        let telemetry = entity.telemetry.as_ref().map(|list| PostTelemetryMsg {
            ts_kv_list: list
                .iter()
                .map(|t| TsKvListProto {
                    ts: t.ts_ms,
                    kv: t.values.iter().map(kv).collect(),
                })
                .collect(),
        });
        let attributes = entity.attributes.as_ref().map(|kvs| PostAttributeMsg {
            kv: kvs.iter().map(kv).collect(),
            shared: false,
        });
        match entity.kind {
            EntityKind::Device => DeviceUplinkDataProto {
                device_name: entity.name.clone(),
                device_type: entity.entity_type.clone(),
                customer_name: entity.customer_name.clone(),
                group_name: entity.group_name.clone(),
                post_telemetry_msg: telemetry,
                post_attributes_msg: attributes,
                device_label: entity.label.clone(),
            }
            .encode_to_vec(),
            EntityKind::Asset => AssetUplinkDataProto {
                asset_name: entity.name.clone(),
                asset_type: entity.entity_type.clone(),
                customer_name: entity.customer_name.clone(),
                group_name: entity.group_name.clone(),
                post_telemetry_msg: telemetry,
                post_attributes_msg: attributes,
                asset_label: entity.label.clone(),
            }
            .encode_to_vec(),
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-zé_ ]{1,12}", "[a-z]{120,200}"]
    }

    fn value() -> impl Strategy<Value = TypedValue> {
        prop_oneof![
            any::<bool>().prop_map(TypedValue::Bool),
            prop_oneof![
                Just(0i64),
                Just(-1),
                Just(i64::MIN),
                Just(i64::MAX),
                any::<i64>()
            ]
            .prop_map(TypedValue::Long),
            prop_oneof![Just(0.0f64), Just(-0.0), Just(f64::NAN), any::<f64>()]
                .prop_map(TypedValue::Double),
            text().prop_map(TypedValue::String),
            text().prop_map(TypedValue::Json),
        ]
    }

    fn kvs() -> impl Strategy<Value = Vec<KeyValue>> {
        proptest::collection::vec(
            (text(), value()).prop_map(|(key, value)| KeyValue { key, value }),
            0..5,
        )
    }

    fn entity() -> impl Strategy<Value = UplinkEntity> {
        (
            any::<bool>(),
            (text(), text(), text(), text(), text()),
            proptest::option::of(proptest::collection::vec(
                (prop_oneof![Just(0i64), Just(-5), any::<i64>()], kvs())
                    .prop_map(|(ts_ms, values)| TsValues { ts_ms, values }),
                0..4,
            )),
            proptest::option::of(kvs()),
        )
            .prop_map(
                |(device, (name, ty, label, customer, group), telemetry, attributes)| {
                    UplinkEntity {
                        kind: if device {
                            EntityKind::Device
                        } else {
                            EntityKind::Asset
                        },
                        name,
                        entity_type: ty,
                        label,
                        customer_name: customer,
                        group_name: group,
                        telemetry,
                        attributes,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn bytes_equal_prosts(e in entity()) {
            let expected = prost_bytes(&e);
            let mut buf = Vec::new();
            let (tagged, header_bytes) = encode_entity_tagged(&e, &mut buf);
            let got = encode_entity(e.clone(), &mut buf);
            prop_assert_eq!(got.as_ref(), expected.as_slice());

            // The tagged form is the UplinkMsg field: prost's UplinkMsg with this one record.
            let mut msg = crate::proto::integration::UplinkMsg::default();
            match e.kind {
                EntityKind::Device => msg
                    .device_data
                    .push(DeviceUplinkDataProto::decode(expected.as_slice()).unwrap()),
                EntityKind::Asset => msg
                    .asset_data
                    .push(AssetUplinkDataProto::decode(expected.as_slice()).unwrap()),
            }
            let msg_bytes = msg.encode_to_vec();
            prop_assert_eq!(tagged.as_ref(), msg_bytes.as_slice());
            prop_assert_eq!(&tagged[header_bytes..], expected.as_slice());
        }
    }

    #[test]
    fn docs_text_record_bytes() {
        let e = UplinkEntity {
            kind: EntityKind::Device,
            name: "SN-002".into(),
            entity_type: "default".into(),
            label: String::new(),
            customer_name: String::new(),
            group_name: String::new(),
            telemetry: Some(vec![TsValues {
                ts_ms: 1,
                values: vec![KeyValue {
                    key: "t".into(),
                    value: TypedValue::Long(300),
                }],
            }]),
            attributes: Some(Vec::new()),
        };
        let mut buf = Vec::new();
        let got = encode_entity(e, &mut buf);
        assert_eq!(
            got.as_ref(),
            &[
                0x0a, 6, b'S', b'N', b'-', b'0', b'0', b'2', // deviceName
                0x12, 7, b'd', b'e', b'f', b'a', b'u', b'l', b't', // deviceType
                0x2a, 14, // postTelemetryMsg
                0x0a, 12, // tsKvList
                0x08, 1, // ts
                0x12, 8, // kv
                0x0a, 1, b't', 0x10, 1, 0x20, 0xac, 0x02, // key, LONG_V, 300
                0x32, 0, // postAttributesMsg (empty)
            ][..]
        );
    }
}
