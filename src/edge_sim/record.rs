//! What edge-sim records from uplinks: one [`Record`] per device/asset entry of an `UplinkMsg`
//! (the `--record` JSON-line format and `GET /uplinks`), and the per-entity latest values
//! (`GET /devices`, ThingsBoard's "Latest telemetry" tab).
//!
//! The record format is a public interface:
//! `{"seq":N,"recv_ms":MS,"entity":"DEVICE"|"ASSET","name":S,"type":S,"label":S,"customer":S,
//!   "group":S,"telemetry":[{"ts":MS,"values":{KEY:{TYPE:VALUE}}}],"attributes":{KEY:{TYPE:VALUE}}}`
//! Every key is always present; key order inside `values`/`attributes` is the wire order (a key
//! repeated in one list keeps its first position and its last value).
//!
//! Integration statistics (`UplinkMsg.integrationStatistics`, contract §5.2) are recorded
//! apart, as [`StatisticsRecord`] (`GET /statistics`; lines of the same record file, told apart
//! by their `kind`):
//! `{"kind":"statistics","seq":N,"recv_ms":MS,"telemetry":[{"ts":MS,"values":{KEY:{TYPE:VALUE}}}]}`
//! with their own dense `seq` starting at 1. Device/asset records have no `kind` key.

use std::collections::BTreeMap;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::integration::{
    AssetUplinkDataProto, DeviceUplinkDataProto, IntegrationStatisticsProto, UplinkMsg,
};
use crate::proto::transport::{KeyValueProto, KeyValueType, PostAttributeMsg, PostTelemetryMsg};

/// A typed value, serialised as `{"<KeyValueType name>": value}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TypedValue {
    #[serde(rename = "BOOLEAN_V")]
    Boolean(bool),
    #[serde(rename = "LONG_V")]
    Long(i64),
    #[serde(rename = "DOUBLE_V")]
    Double(f64),
    #[serde(rename = "STRING_V")]
    String(String),
    /// JSON text, as it travels on the wire.
    #[serde(rename = "JSON_V")]
    Json(String),
}

impl TypedValue {
    /// The typed value a `KeyValueProto` carries according to its `type`; an unknown type
    /// number is kept visible as a string instead of being dropped.
    pub fn from_proto(kv: &KeyValueProto) -> TypedValue {
        match KeyValueType::try_from(kv.r#type) {
            Ok(KeyValueType::BooleanV) => TypedValue::Boolean(kv.bool_v),
            Ok(KeyValueType::LongV) => TypedValue::Long(kv.long_v),
            Ok(KeyValueType::DoubleV) => TypedValue::Double(kv.double_v),
            Ok(KeyValueType::StringV) => TypedValue::String(kv.string_v.clone()),
            Ok(KeyValueType::JsonV) => TypedValue::Json(kv.json_v.clone()),
            Err(_) => TypedValue::String(format!("<unknown KeyValueType {}>", kv.r#type)),
        }
    }

    /// The `KeyValueType` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            TypedValue::Boolean(_) => "BOOLEAN_V",
            TypedValue::Long(_) => "LONG_V",
            TypedValue::Double(_) => "DOUBLE_V",
            TypedValue::String(_) => "STRING_V",
            TypedValue::Json(_) => "JSON_V",
        }
    }

    /// The bare value as JSON (JSON_V stays JSON text).
    pub fn value_json(&self) -> serde_json::Value {
        match self {
            TypedValue::Boolean(b) => serde_json::Value::Bool(*b),
            TypedValue::Long(v) => serde_json::Value::from(*v),
            TypedValue::Double(v) => serde_json::Value::from(*v),
            TypedValue::String(s) | TypedValue::Json(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// Key → typed value in wire order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KvList(pub Vec<(String, TypedValue)>);

impl KvList {
    fn from_protos(kvs: &[KeyValueProto]) -> KvList {
        let mut out: Vec<(String, TypedValue)> = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let value = TypedValue::from_proto(kv);
            match out.iter_mut().find(|(k, _)| *k == kv.key) {
                Some(slot) => slot.1 = value,
                None => out.push((kv.key.clone(), value)),
            }
        }
        KvList(out)
    }

    pub fn get(&self, key: &str) -> Option<&TypedValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl Serialize for KvList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KvList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KvVisitor;
        impl<'de> Visitor<'de> for KvVisitor {
            type Value = KvList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of typed values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<KvList, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = access.next_entry::<String, TypedValue>()? {
                    out.push((k, v));
                }
                Ok(KvList(out))
            }
        }
        deserializer.deserialize_map(KvVisitor)
    }
}

/// One timestamped telemetry entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TsEntry {
    pub ts: i64,
    pub values: KvList,
}

/// Whether a record is a device or an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityKind {
    #[serde(rename = "DEVICE")]
    Device,
    #[serde(rename = "ASSET")]
    Asset,
}

/// One received device/asset entry (the public record format, see the module header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub recv_ms: i64,
    pub entity: EntityKind,
    pub name: String,
    #[serde(rename = "type")]
    pub entity_type: String,
    pub label: String,
    pub customer: String,
    pub group: String,
    pub telemetry: Vec<TsEntry>,
    pub attributes: KvList,
}

impl Record {
    /// The record as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        // Serialising plain data to a String cannot fail; keep a visible line if it ever did.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn telemetry(msg: &Option<PostTelemetryMsg>) -> Vec<TsEntry> {
    msg.as_ref()
        .map(|m| {
            m.ts_kv_list
                .iter()
                .map(|l| TsEntry {
                    ts: l.ts,
                    values: KvList::from_protos(&l.kv),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn attributes(msg: &Option<PostAttributeMsg>) -> KvList {
    msg.as_ref()
        .map(|m| KvList::from_protos(&m.kv))
        .unwrap_or_default()
}

fn device_record(d: &DeviceUplinkDataProto, recv_ms: i64) -> Record {
    Record {
        seq: 0,
        recv_ms,
        entity: EntityKind::Device,
        name: d.device_name.clone(),
        entity_type: d.device_type.clone(),
        label: d.device_label.clone(),
        customer: d.customer_name.clone(),
        group: d.group_name.clone(),
        telemetry: telemetry(&d.post_telemetry_msg),
        attributes: attributes(&d.post_attributes_msg),
    }
}

fn asset_record(a: &AssetUplinkDataProto, recv_ms: i64) -> Record {
    Record {
        seq: 0,
        recv_ms,
        entity: EntityKind::Asset,
        name: a.asset_name.clone(),
        entity_type: a.asset_type.clone(),
        label: a.asset_label.clone(),
        customer: a.customer_name.clone(),
        group: a.group_name.clone(),
        telemetry: telemetry(&a.post_telemetry_msg),
        attributes: attributes(&a.post_attributes_msg),
    }
}

/// The records of one `UplinkMsg` (devices, then assets; `seq` still 0, the store numbers them).
pub fn records_from_uplink(msg: &UplinkMsg, recv_ms: i64) -> Vec<Record> {
    msg.device_data
        .iter()
        .map(|d| device_record(d, recv_ms))
        .chain(msg.asset_data.iter().map(|a| asset_record(a, recv_ms)))
        .collect()
}

/// One received `IntegrationStatisticsProto` (the statistics line format, see the module header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "statistics")]
pub struct StatisticsRecord {
    pub seq: u64,
    pub recv_ms: i64,
    pub telemetry: Vec<TsEntry>,
}

impl StatisticsRecord {
    /// The record as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The value of `key` in the last telemetry entry that has it.
    pub fn value(&self, key: &str) -> Option<&TypedValue> {
        self.telemetry
            .iter()
            .filter_map(|entry| entry.values.get(key))
            .next_back()
    }

    /// `messagesCount`, when sent as LONG_V.
    pub fn messages_count(&self) -> Option<i64> {
        match self.value("messagesCount") {
            Some(TypedValue::Long(n)) => Some(*n),
            _ => None,
        }
    }

    /// `errorsCount`, when sent as LONG_V.
    pub fn errors_count(&self) -> Option<i64> {
        match self.value("errorsCount") {
            Some(TypedValue::Long(n)) => Some(*n),
            _ => None,
        }
    }

    /// `state`, when sent as STRING_V.
    pub fn state(&self) -> Option<&str> {
        match self.value("state") {
            Some(TypedValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

fn statistics_record(s: &IntegrationStatisticsProto, recv_ms: i64) -> StatisticsRecord {
    StatisticsRecord {
        seq: 0,
        recv_ms,
        telemetry: telemetry(&s.post_telemetry_msg),
    }
}

/// The statistics of one `UplinkMsg` (`seq` still 0, the store numbers them).
pub fn statistics_from_uplink(msg: &UplinkMsg, recv_ms: i64) -> Vec<StatisticsRecord> {
    msg.integration_statistics
        .iter()
        .map(|s| statistics_record(s, recv_ms))
        .collect()
}

/// Latest value of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    pub ts: i64,
    pub value: TypedValue,
}

impl LatestValue {
    /// `{"ts":..,"type":"DOUBLE_V","value":25.7}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"ts": self.ts, "type": self.value.type_name(), "value": self.value.value_json()})
    }
}

/// What the emulator knows about one device or asset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityState {
    /// Type, label, customer and group as at creation (ThingsBoard applies them only when the
    /// entity is created).
    pub entity_type: String,
    pub label: String,
    pub customer: String,
    pub group: String,
    pub telemetry: BTreeMap<String, LatestValue>,
    pub attributes: BTreeMap<String, LatestValue>,
}

impl EntityState {
    /// Folds one record in: a telemetry key keeps the value with the newest `ts` (ties: the
    /// later one); attributes take the latest received value, stamped with `recv_ms`.
    pub fn apply(&mut self, record: &Record, created: bool) {
        if created {
            self.entity_type = record.entity_type.clone();
            self.label = record.label.clone();
            self.customer = record.customer.clone();
            self.group = record.group.clone();
        }
        for entry in &record.telemetry {
            for (key, value) in &entry.values.0 {
                let newer = self.telemetry.get(key).is_none_or(|old| old.ts <= entry.ts);
                if newer {
                    self.telemetry.insert(
                        key.clone(),
                        LatestValue {
                            ts: entry.ts,
                            value: value.clone(),
                        },
                    );
                }
            }
        }
        for (key, value) in &record.attributes.0 {
            self.attributes.insert(
                key.clone(),
                LatestValue {
                    ts: record.recv_ms,
                    value: value.clone(),
                },
            );
        }
    }

    pub fn telemetry_json(&self) -> serde_json::Value {
        latest_json(&self.telemetry)
    }

    pub fn attributes_json(&self) -> serde_json::Value {
        latest_json(&self.attributes)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.entity_type,
            "label": self.label,
            "customer": self.customer,
            "group": self.group,
            "telemetry": self.telemetry_json(),
            "attributes": self.attributes_json(),
        })
    }
}

fn latest_json(map: &BTreeMap<String, LatestValue>) -> serde_json::Value {
    serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::transport::TsKvListProto;

    fn kv_double(key: &str, v: f64) -> KeyValueProto {
        KeyValueProto {
            key: key.into(),
            r#type: KeyValueType::DoubleV as i32,
            double_v: v,
            ..Default::default()
        }
    }

    #[test]
    fn record_line_has_every_key_in_order() {
        let msg = UplinkMsg {
            device_data: vec![DeviceUplinkDataProto {
                device_name: "SN-002".into(),
                device_type: "default".into(),
                post_telemetry_msg: Some(PostTelemetryMsg {
                    ts_kv_list: vec![TsKvListProto {
                        ts: 1000,
                        kv: vec![kv_double("temperature", 25.7)],
                    }],
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut records = records_from_uplink(&msg, 2000);
        records[0].seq = 1;
        assert_eq!(
            records[0].to_json_line(),
            r#"{"seq":1,"recv_ms":2000,"entity":"DEVICE","name":"SN-002","type":"default","label":"","customer":"","group":"","telemetry":[{"ts":1000,"values":{"temperature":{"DOUBLE_V":25.7}}}],"attributes":{}}"#
        );
        let back: Record = serde_json::from_str(&records[0].to_json_line()).expect("parses");
        assert_eq!(back, records[0]);
    }

    #[test]
    fn statistics_line_has_its_kind_and_typed_values() {
        let msg = UplinkMsg {
            integration_statistics: vec![IntegrationStatisticsProto {
                post_telemetry_msg: Some(PostTelemetryMsg {
                    ts_kv_list: vec![TsKvListProto {
                        ts: 1000,
                        kv: vec![
                            KeyValueProto {
                                key: "messagesCount".into(),
                                r#type: KeyValueType::LongV as i32,
                                long_v: 5,
                                ..Default::default()
                            },
                            KeyValueProto {
                                key: "errorsCount".into(),
                                r#type: KeyValueType::LongV as i32,
                                long_v: 1,
                                ..Default::default()
                            },
                            KeyValueProto {
                                key: "state".into(),
                                r#type: KeyValueType::StringV as i32,
                                string_v: "STARTED".into(),
                                ..Default::default()
                            },
                        ],
                    }],
                }),
            }],
            ..Default::default()
        };
        assert!(records_from_uplink(&msg, 2000).is_empty());
        let mut stats = statistics_from_uplink(&msg, 2000);
        assert_eq!(stats.len(), 1);
        stats[0].seq = 1;
        assert_eq!(
            stats[0].to_json_line(),
            r#"{"kind":"statistics","seq":1,"recv_ms":2000,"telemetry":[{"ts":1000,"values":{"messagesCount":{"LONG_V":5},"errorsCount":{"LONG_V":1},"state":{"STRING_V":"STARTED"}}}]}"#
        );
        assert_eq!(
            (
                stats[0].messages_count(),
                stats[0].errors_count(),
                stats[0].state()
            ),
            (Some(5), Some(1), Some("STARTED"))
        );
        let back: StatisticsRecord =
            serde_json::from_str(&stats[0].to_json_line()).expect("parses");
        assert_eq!(back, stats[0]);
    }

    #[test]
    fn repeated_key_keeps_first_position_last_value() {
        let list = KvList::from_protos(&[
            kv_double("a", 1.0),
            kv_double("b", 2.0),
            kv_double("a", 3.0),
        ]);
        assert_eq!(
            serde_json::to_string(&list).expect("json"),
            r#"{"a":{"DOUBLE_V":3.0},"b":{"DOUBLE_V":2.0}}"#
        );
    }

    #[test]
    fn latest_telemetry_keeps_newest_ts() {
        let mut state = EntityState::default();
        let rec = |ts: i64, v: f64| Record {
            seq: 1,
            recv_ms: 0,
            entity: EntityKind::Device,
            name: "d".into(),
            entity_type: "default".into(),
            label: String::new(),
            customer: String::new(),
            group: String::new(),
            telemetry: vec![TsEntry {
                ts,
                values: KvList(vec![("t".into(), TypedValue::Double(v))]),
            }],
            attributes: KvList::default(),
        };
        state.apply(&rec(20, 2.0), true);
        state.apply(&rec(10, 1.0), false);
        assert_eq!(
            state.telemetry_json(),
            serde_json::json!({"t": {"ts": 20, "type": "DOUBLE_V", "value": 2.0}})
        );
    }
}
