//! Proves the uplink converter path: the docs' TEXT/JSON/BINARY decoders on the seed payloads give
//! contract §3.4's typed records, and results are normalised and encoded by contract §4.1.4/§2.5.

use prost::Message;
use tcp_integration::convert::typing::TypedValue;
use tcp_integration::convert::uplink::{KeyValue, TsValues, UplinkEntity};
use tcp_integration::convert::{
    ConverterConfig, ConverterRuntime, EntityKind, ScriptLimits, UplinkRecord,
};
use tcp_integration::proto::integration::{AssetUplinkDataProto, DeviceUplinkDataProto};
use tcp_integration::proto::transport::{KeyValueProto, KeyValueType};

const TEXT_DECODER: &str = include_str!("../examples/converters/tcp-text-decoder.js");
const JSON_DECODER: &str = include_str!("../examples/converters/tcp-json-decoder.js");
const BINARY_DECODER: &str = include_str!("../examples/converters/tcp-binary-decoder.js");

fn runtime(decoder: &str) -> ConverterRuntime {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    rt.set_integration_metadata(&[("integrationName".into(), "TCP".into())]);
    rt.set_uplink(&ConverterConfig::js(Some(decoder.to_string()), None))
        .unwrap();
    rt
}

fn decode(rt: &mut ConverterRuntime, frame: &[u8]) -> Vec<UplinkRecord> {
    let mut out = Vec::new();
    rt.decode_uplink(frame, &mut out).unwrap();
    out
}

fn entities(rt: &mut ConverterRuntime, frame: &[u8]) -> Vec<UplinkEntity> {
    let mut out = Vec::new();
    rt.decode_entities(frame, &mut out, None).unwrap();
    out
}

fn error(rt: &mut ConverterRuntime, frame: &[u8]) -> String {
    let mut out = Vec::new();
    let e = rt.decode_uplink(frame, &mut out).unwrap_err();
    assert!(out.is_empty());
    e.to_string()
}

fn kv(key: &str, value: TypedValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
    }
}

fn kvp_double(key: &str, v: f64) -> KeyValueProto {
    KeyValueProto {
        key: key.into(),
        r#type: KeyValueType::DoubleV as i32,
        double_v: v,
        ..Default::default()
    }
}

fn kvp_long(key: &str, v: i64) -> KeyValueProto {
    KeyValueProto {
        key: key.into(),
        r#type: KeyValueType::LongV as i32,
        long_v: v,
        ..Default::default()
    }
}

#[test]
fn docs_text_decoder_types_the_seed_frames() {
    let mut rt = runtime(TEXT_DECODER);
    let rec = decode(&mut rt, b"SN-002,default,temperature,25.7");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].kind, EntityKind::Device);
    assert_eq!(rec[0].name, "SN-002");
    let d = DeviceUplinkDataProto::decode(rec[0].encoded.clone()).unwrap();
    assert_eq!(d.device_name, "SN-002");
    assert_eq!(d.device_type, "default");
    assert_eq!(d.device_label, "");
    let t = d.post_telemetry_msg.unwrap();
    assert_eq!(t.ts_kv_list.len(), 1);
    assert!(t.ts_kv_list[0].ts > 1_600_000_000_000);
    assert_eq!(t.ts_kv_list[0].kv, vec![kvp_double("temperature", 25.7)]);
    let a = d.post_attributes_msg.unwrap();
    assert!(a.kv.is_empty());
    assert!(!a.shared);

    // Frame 2 of the `\n\r` sample keeps the CR; the JS decoder strips it.
    let rec = decode(&mut rt, b"\rSN-002,default,humidity,69");
    let d = DeviceUplinkDataProto::decode(rec[0].encoded.clone()).unwrap();
    assert_eq!(d.device_name, "SN-002");
    assert_eq!(
        d.post_telemetry_msg.unwrap().ts_kv_list[0].kv,
        vec![kvp_long("humidity", 69)]
    );
}

#[test]
fn docs_json_decoder_types_the_seed_object() {
    let mut rt = runtime(JSON_DECODER);
    let frame =
        br#"{"deviceName":"SN-002","deviceType":"default","temperature":25.7,"humidity":69}"#;
    let rec = decode(&mut rt, frame);
    let d = DeviceUplinkDataProto::decode(rec[0].encoded.clone()).unwrap();
    assert_eq!(
        (d.device_name.as_str(), d.device_type.as_str()),
        ("SN-002", "default")
    );
    assert_eq!(
        d.post_telemetry_msg.unwrap().ts_kv_list[0].kv,
        vec![kvp_double("temperature", 25.7), kvp_long("humidity", 69)]
    );
}

#[test]
fn docs_json_decoder_on_the_printed_array_fails_with_thingsboards_text() {
    let mut rt = runtime(JSON_DECODER);
    let frame =
        br#"[{"deviceName":"SN-002","deviceType":"default","temperature":25.7,"humidity":69}]"#;
    assert_eq!(
        error(&mut rt, frame),
        "Either 'deviceName' or 'assetName' should be present in the converter output!"
    );
}

#[test]
fn docs_binary_decoder_reads_the_stripped_frame() {
    let mut rt = runtime(BINARY_DECODER);
    let rec = decode(&mut rt, b"SN-002default25.7");
    let d = DeviceUplinkDataProto::decode(rec[0].encoded.clone()).unwrap();
    assert_eq!(
        (d.device_name.as_str(), d.device_type.as_str()),
        ("SN-002", "default")
    );
    assert_eq!(
        d.post_telemetry_msg.unwrap().ts_kv_list[0].kv,
        vec![kvp_double("temperature", 25.7)]
    );
}

#[test]
fn payload_is_utf16_code_units_for_utf8_and_bytes_otherwise() {
    let mut rt = runtime(
        "return {deviceName: 'd', telemetry: {n: payload.length, first: payload[0], \
         last: payload[payload.length - 1], isArray: Array.isArray(payload)}};",
    );
    // "é€😀" = 2 + 3 + 4 UTF-8 bytes = 1 + 1 + 2 UTF-16 units.
    let e = entities(&mut rt, "é€😀".as_bytes());
    assert_eq!(
        e[0].telemetry.as_ref().unwrap()[0].values,
        vec![
            kv("n", TypedValue::Long(4)),
            kv("first", TypedValue::Long(0xE9)),
            kv("last", TypedValue::Long(0xDE00)),
            kv("isArray", TypedValue::Bool(true)),
        ]
    );
    let e = entities(&mut rt, &[0xFF, 0x00, 0x80]);
    assert_eq!(
        e[0].telemetry.as_ref().unwrap()[0].values,
        vec![
            kv("n", TypedValue::Long(3)),
            kv("first", TypedValue::Long(255)),
            kv("last", TypedValue::Long(128)),
            kv("isArray", TypedValue::Bool(true)),
        ]
    );
}

#[test]
fn builtin_helpers_exist_and_a_scripts_own_definition_wins() {
    let mut rt = runtime(
        "var o = decodeToJson(payload); return {deviceName: decodeToString(payload).length + '', \
         attributes: {b: btoa('\\u00ff\\u0000a'), a: atob('/wBh'), k: o.k}};",
    );
    let e = entities(&mut rt, br#"{"k":"v"}"#);
    assert_eq!(e[0].name, "9");
    assert_eq!(
        e[0].attributes.as_ref().unwrap(),
        &vec![
            kv("b", TypedValue::String("/wBh".into())),
            kv("a", TypedValue::String("\u{ff}\u{0}a".into())),
            kv("k", TypedValue::String("v".into())),
        ]
    );
    let mut rt = runtime(
        "function decodeToString(p) { return 'mine'; } return {deviceName: decodeToString(payload)};",
    );
    assert_eq!(entities(&mut rt, b"x")[0].name, "mine");
    let mut rt = runtime("return {deviceName: atob('not base64!')};");
    let msg = error(&mut rt, b"x");
    assert!(msg.contains("InvalidCharacterError"), "{msg}");
}

#[test]
fn every_typing_rule_applies_to_script_values() {
    let mut rt = runtime(
        "return {deviceName: 'd', telemetry: {s1: '25.7', s2: '69', n1: 69, n2: 69.0, n3: 25.5, \
         b: true, f: false, str: 'abc', nested: {a: [1, 'x']}, arr: [1, 2], nul: null, \
         und: undefined, big: 9223372036854775808, bigs: '92233720368547758080', \
         fine: 0.1 + 0.2, date: new Date(0), nan: NaN}};",
    );
    let e = entities(&mut rt, b"x");
    assert_eq!(
        e[0].telemetry.as_ref().unwrap()[0].values,
        vec![
            kv("s1", TypedValue::Double(25.7)),
            kv("s2", TypedValue::Long(69)),
            kv("n1", TypedValue::Long(69)),
            kv("n2", TypedValue::Long(69)),
            kv("n3", TypedValue::Double(25.5)),
            kv("b", TypedValue::Bool(true)),
            kv("f", TypedValue::Bool(false)),
            kv("str", TypedValue::String("abc".into())),
            kv("nested", TypedValue::Json(r#"{"a":[1,"x"]}"#.into())),
            kv("arr", TypedValue::Json("[1,2]".into())),
            kv("big", TypedValue::String("9223372036854776000".into())),
            kv("bigs", TypedValue::String("92233720368547758080".into())),
            kv("fine", TypedValue::String("0.30000000000000004".into())),
            kv(
                "date",
                TypedValue::String("1970-01-01T00:00:00.000Z".into())
            ),
        ]
    );
}

#[test]
fn normalisation_errors_use_thingsboards_texts() {
    let cases: &[(&str, &str)] = &[
        (
            "return {deviceType: 'x'};",
            "Either 'deviceName' or 'assetName' should be present in the converter output!",
        ),
        (
            "return {deviceName: 'a', assetName: 'b'};",
            "Only one of 'deviceName' or 'assetName' should be present in the converter output!",
        ),
        ("return {assetName: 'b'};", "Asset type is not set!"),
        (
            "return {deviceName: 'a', telemetry: [1]};",
            "Can't parse value: 1",
        ),
        (
            "return {deviceName: 'a', attributes: 'x'};",
            "Can't parse value: \"x\"",
        ),
        (
            "return 42;",
            "The converter output must be a JSON object or an array of objects, got: 42",
        ),
        (
            "return [{deviceName: 'a'}, 'x'];",
            "Can't parse value: \"x\"",
        ),
    ];
    for (script, text) in cases {
        let mut rt = runtime(script);
        let mut out = Vec::new();
        let e = rt.decode_uplink(b"x", &mut out).unwrap_err();
        assert_eq!(e.to_string(), *text, "{script}");
        assert_eq!(e.kind(), "bad_result");
        assert!(out.is_empty());
    }
}

#[test]
fn device_type_defaults_and_optional_fields_only_when_non_empty() {
    let mut rt = runtime(
        "return [{deviceName: 'a'}, {deviceName: 'b', deviceType: 'thermo', deviceLabel: 'L', \
         customerName: 'C', groupName: ''}];",
    );
    let rec = decode(&mut rt, b"x");
    assert_eq!(rec.len(), 2);
    let a = DeviceUplinkDataProto::decode(rec[0].encoded.clone()).unwrap();
    assert_eq!(a.device_type, "default");
    assert_eq!(a.post_telemetry_msg, None);
    assert_eq!(a.post_attributes_msg, None);
    let b = DeviceUplinkDataProto::decode(rec[1].encoded.clone()).unwrap();
    assert_eq!(
        b,
        DeviceUplinkDataProto {
            device_name: "b".into(),
            device_type: "thermo".into(),
            device_label: "L".into(),
            customer_name: "C".into(),
            group_name: String::new(),
            post_telemetry_msg: None,
            post_attributes_msg: None,
        }
    );
    // An empty group name is not on the wire at all (field 4 absent).
    assert!(!rec[1].encoded.windows(2).any(|w| w == [0x22, 0x00]));
}

#[test]
fn assets_are_encoded_as_asset_uplink_data() {
    let mut rt = runtime(
        "return {assetName: 'Building 1', assetType: 'building', assetLabel: 'B1', \
         attributes: {floors: 3}, telemetry: {occupancy: 12}};",
    );
    let rec = decode(&mut rt, b"x");
    assert_eq!(rec[0].kind, EntityKind::Asset);
    assert_eq!(rec[0].name, "Building 1");
    let a = AssetUplinkDataProto::decode(rec[0].encoded.clone()).unwrap();
    assert_eq!(a.asset_name, "Building 1");
    assert_eq!(a.asset_type, "building");
    assert_eq!(a.asset_label, "B1");
    assert_eq!(
        a.post_attributes_msg.unwrap().kv,
        vec![kvp_long("floors", 3)]
    );
    assert_eq!(
        a.post_telemetry_msg.unwrap().ts_kv_list[0].kv,
        vec![kvp_long("occupancy", 12)]
    );
}

#[test]
fn telemetry_with_explicit_ts_and_arrays() {
    let mut rt = runtime(
        "return {deviceName: 'd', telemetry: [{ts: 1700000000000, values: {t: 1.5}}, \
         {ts: '1700000001000', values: {t: 2.5}}, {h: 3}]};",
    );
    let e = entities(&mut rt, b"x");
    let t = e[0].telemetry.as_ref().unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(
        t[0],
        TsValues {
            ts_ms: 1_700_000_000_000,
            values: vec![kv("t", TypedValue::Double(1.5))]
        }
    );
    assert_eq!(t[1].ts_ms, 1_700_000_001_000);
    assert!(t[2].ts_ms > 1_700_000_001_000);
    assert_eq!(t[2].values, vec![kv("h", TypedValue::Long(3))]);
    // An object with only `ts` is a flat object: ts is a value.
    let mut rt = runtime("return {deviceName: 'd', telemetry: {ts: 5, x: 1}};");
    let e = entities(&mut rt, b"x");
    assert_eq!(
        e[0].telemetry.as_ref().unwrap()[0].values,
        vec![kv("ts", TypedValue::Long(5)), kv("x", TypedValue::Long(1))]
    );
}

#[test]
fn update_only_keys_forward_only_changed_values_per_entity() {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    let config = ConverterConfig::from_json(
        r#"{"decoder":"var s = String.fromCharCode.apply(String, payload).split(','); return {deviceName: s[0], telemetry: {fw: s[1], t: s[2]}, attributes: {fw: s[1]}};","updateOnlyKeys":["fw"]}"#,
    )
    .unwrap();
    rt.set_uplink(&config).unwrap();
    let keys = |rt: &mut ConverterRuntime, frame: &[u8]| {
        let e = &entities_filtered(rt, frame)[0];
        (
            e.post_telemetry_msg.as_ref().unwrap().ts_kv_list[0]
                .kv
                .iter()
                .map(|k| k.key.clone())
                .collect::<Vec<String>>(),
            e.post_attributes_msg.as_ref().unwrap().kv.len(),
        )
    };
    assert_eq!(
        keys(&mut rt, b"a,1.0,5"),
        (vec!["fw".into(), "t".into()], 1)
    );
    assert_eq!(keys(&mut rt, b"a,1.0,6"), (vec!["t".into()], 0));
    assert_eq!(
        keys(&mut rt, b"b,1.0,6"),
        (vec!["fw".into(), "t".into()], 1)
    );
    assert_eq!(
        keys(&mut rt, b"a,1.1,6"),
        (vec!["fw".into(), "t".into()], 1)
    );
}

fn entities_filtered(rt: &mut ConverterRuntime, frame: &[u8]) -> Vec<DeviceUplinkDataProto> {
    decode(rt, frame)
        .into_iter()
        .map(|r| DeviceUplinkDataProto::decode(r.encoded).unwrap())
        .collect()
}

#[test]
fn metadata_holds_integration_name_and_is_fresh_per_call() {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    rt.set_integration_metadata(&[
        ("integrationName".into(), "My TCP".into()),
        ("site".into(), "north".into()),
    ]);
    rt.set_uplink(&ConverterConfig::js(
        Some(
            "var seen = metadata.mark; metadata.mark = 'x'; \
             return {deviceName: metadata.integrationName, attributes: {site: metadata.site, seen: seen === undefined}};"
                .into(),
        ),
        None,
    ))
    .unwrap();
    for _ in 0..2 {
        let e = entities(&mut rt, b"x");
        assert_eq!(e[0].name, "My TCP");
        assert_eq!(
            e[0].attributes.as_ref().unwrap(),
            &vec![
                kv("site", TypedValue::String("north".into())),
                kv("seen", TypedValue::Bool(true))
            ]
        );
    }
}

#[test]
fn converter_update_recompiles_without_a_new_runtime() {
    let mut rt = runtime("return {deviceName: 'v1'};");
    assert_eq!(entities(&mut rt, b"x")[0].name, "v1");
    rt.set_uplink(&ConverterConfig::js(
        Some("return {deviceName: 'v2'};".into()),
        None,
    ))
    .unwrap();
    assert_eq!(entities(&mut rt, b"x")[0].name, "v2");
}
