//! Converter throughput per core: a frame in, protobuf record bytes out. Each group holds the
//! docs' JS decoder through `ConverterRuntime::decode_uplink`, a no-op JS call (`return [];`,
//! the hand-off + call floor) and a native Rust decoder of the same frames producing the same
//! bytes, so the ratios are visible in one run.
//!
//! Run: `cargo bench --bench convert -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcp_integration::convert::typing::{self, TypedValue};
use tcp_integration::convert::uplink::{KeyValue, TsValues, UplinkEntity};
use tcp_integration::convert::{
    ConverterConfig, ConverterRuntime, EntityKind, ScriptLimits, UplinkRecord, encode_entity,
};

const TEXT_DECODER: &str = include_str!("../examples/converters/tcp-text-decoder.js");
const JSON_DECODER: &str = include_str!("../examples/converters/tcp-json-decoder.js");
const TEXT_FRAME: &[u8] = b"SN-002,default,temperature,25.7";
const JSON_FRAME: &[u8] =
    br#"{"deviceName":"SN-002","deviceType":"default","temperature":25.7,"humidity":69}"#;

fn runtime(decoder: &str) -> ConverterRuntime {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).expect("runtime");
    rt.set_integration_metadata(&[("integrationName".into(), "TCP".into())]);
    rt.set_uplink(&ConverterConfig::js(Some(decoder.to_string()), None))
        .expect("decoder compiles");
    rt
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the docs' TEXT decoder does, in Rust: strip quotes and whitespace, split on ','.
fn native_text(frame: &[u8], buf: &mut Vec<u8>, out: &mut Vec<UplinkRecord>) {
    let text = std::str::from_utf8(frame).unwrap_or("");
    let cleaned: String = text
        .chars()
        .filter(|c| *c != '"' && !c.is_whitespace())
        .collect();
    let parts: Vec<&str> = cleaned.split(',').collect();
    let entity = UplinkEntity {
        kind: EntityKind::Device,
        name: parts.first().unwrap_or(&"").to_string(),
        entity_type: parts.get(1).unwrap_or(&"default").to_string(),
        label: String::new(),
        customer_name: String::new(),
        group_name: String::new(),
        telemetry: Some(vec![TsValues {
            ts_ms: now_ms(),
            values: vec![KeyValue {
                key: parts.get(2).unwrap_or(&"").to_string(),
                value: typing::type_string(parts.get(3).unwrap_or(&"")),
            }],
        }]),
        attributes: Some(Vec::new()),
    };
    let name = entity.name.clone();
    let encoded = encode_entity(entity, buf);
    out.push(UplinkRecord {
        kind: EntityKind::Device,
        name,
        encoded,
        tagged: bytes::Bytes::new(),
    });
}

/// What the docs' JSON decoder does, in Rust (serde_json).
fn native_json(frame: &[u8], buf: &mut Vec<u8>, out: &mut Vec<UplinkRecord>) {
    let v: serde_json::Value = serde_json::from_slice(frame).unwrap_or_default();
    let typed = |key: &str| -> Option<KeyValue> {
        let value = match &v[key] {
            serde_json::Value::Number(n) => typing::type_number_literal(&n.to_string())?,
            serde_json::Value::String(s) => typing::type_string(s),
            serde_json::Value::Bool(b) => TypedValue::Bool(*b),
            _ => return None,
        };
        Some(KeyValue {
            key: key.to_string(),
            value,
        })
    };
    let entity = UplinkEntity {
        kind: EntityKind::Device,
        name: v["deviceName"].as_str().unwrap_or("").to_string(),
        entity_type: v["deviceType"].as_str().unwrap_or("default").to_string(),
        label: String::new(),
        customer_name: String::new(),
        group_name: String::new(),
        telemetry: Some(vec![TsValues {
            ts_ms: now_ms(),
            values: ["temperature", "humidity"]
                .iter()
                .filter_map(|k| typed(k))
                .collect(),
        }]),
        attributes: Some(Vec::new()),
    };
    let name = entity.name.clone();
    let encoded = encode_entity(entity, buf);
    out.push(UplinkRecord {
        kind: EntityKind::Device,
        name,
        encoded,
        tagged: bytes::Bytes::new(),
    });
}

fn bench_group(
    c: &mut Criterion,
    name: &str,
    decoder: &str,
    frame: &[u8],
    native: fn(&[u8], &mut Vec<u8>, &mut Vec<UplinkRecord>),
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));

    let mut rt = runtime(decoder);
    let mut out = Vec::with_capacity(4);
    // The JS and native paths must agree on the bytes (apart from the ts, which is "now").
    rt.decode_uplink(frame, &mut out).expect("docs decoder");
    let js_len = out[0].encoded.len();
    out.clear();
    let mut buf = Vec::new();
    native(frame, &mut buf, &mut out);
    assert_eq!(out[0].encoded.len(), js_len, "native and JS records differ");
    out.clear();

    group.bench_function("docs_js_decoder_to_protobuf", |b| {
        b.iter(|| {
            out.clear();
            rt.decode_uplink(black_box(frame), &mut out)
                .expect("decode");
            black_box(&out);
        })
    });
    // The same script with its result thrown away: script + hand-off cost without the read-out.
    let script_only = decoder.replace("return result;", "return [];");
    let mut bare = runtime(&script_only);
    group.bench_function("docs_js_decoder_result_discarded", |b| {
        b.iter(|| {
            out.clear();
            bare.decode_uplink(black_box(frame), &mut out)
                .expect("script only");
            black_box(&out);
        })
    });
    let mut noop = runtime("return [];");
    group.bench_function("noop_js_call", |b| {
        b.iter(|| {
            out.clear();
            noop.decode_uplink(black_box(frame), &mut out)
                .expect("noop");
            black_box(&out);
        })
    });
    group.bench_function("native_rust_decoder_to_protobuf", |b| {
        b.iter(|| {
            out.clear();
            native(black_box(frame), &mut buf, &mut out);
            black_box(&out);
        })
    });
    group.finish();
}

fn convert(c: &mut Criterion) {
    bench_group(c, "convert_text", TEXT_DECODER, TEXT_FRAME, native_text);
    bench_group(c, "convert_json", JSON_DECODER, JSON_FRAME, native_json);
}

criterion_group!(benches, convert);
criterion_main!(benches);
