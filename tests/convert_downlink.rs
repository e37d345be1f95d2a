//! Proves the downlink encoder call (contract §4.2): TbMsgProto in, exact device bytes out for
//! JSON, TEXT and BINARY, with ThingsBoard's error texts for bad results.

use std::collections::HashMap;

use bytes::Bytes;
use tcp_integration::convert::{ConverterConfig, ConverterRuntime, ScriptLimits};
use tcp_integration::proto::msgqueue::{TbMsgMetaDataProto, TbMsgProto};

fn runtime(encoder: &str) -> ConverterRuntime {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    rt.set_integration_metadata(&[("integrationName".into(), "TCP".into())]);
    rt.set_downlink(Some(&ConverterConfig::js(None, Some(encoder.into()))))
        .unwrap();
    assert!(rt.has_downlink());
    rt
}

fn msg(data: &str) -> TbMsgProto {
    TbMsgProto {
        r#type: "ATTRIBUTES_UPDATED".into(),
        data: data.into(),
        meta_data: Some(TbMsgMetaDataProto {
            data: HashMap::from([
                ("deviceName".to_string(), "SN-002".to_string()),
                ("scope".to_string(), "SHARED_SCOPE".to_string()),
            ]),
        }),
        ..Default::default()
    }
}

fn encode(rt: &mut ConverterRuntime, m: &TbMsgProto) -> Vec<Bytes> {
    let mut out = Vec::new();
    rt.encode_downlink(m, &mut out).unwrap();
    out
}

#[test]
fn docs_encoder_sends_the_message_as_json() {
    let config =
        ConverterConfig::from_json(include_str!("../examples/converters/tcp-downlink.json"))
            .unwrap();
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    rt.set_downlink(Some(&config)).unwrap();
    let out = encode(&mut rt, &msg(r#"{"firmware": "1.2", "interval":  30}"#));
    assert_eq!(
        out,
        vec![Bytes::from_static(br#"{"firmware":"1.2","interval":30}"#)]
    );
}

#[test]
fn encoder_sees_msg_metadata_type_and_integration_metadata() {
    let mut rt = runtime(
        "return {contentType: 'TEXT', data: [msgType, metadata.deviceName, metadata.scope, \
         integrationMetadata.integrationName, msg.a].join('|')};",
    );
    assert_eq!(
        encode(&mut rt, &msg(r#"{"a":7}"#)),
        vec![Bytes::from_static(
            b"ATTRIBUTES_UPDATED|SN-002|SHARED_SCOPE|TCP|7"
        )]
    );
}

#[test]
fn empty_data_is_the_empty_string() {
    let mut rt = runtime("return {contentType: 'TEXT', data: typeof msg + ':' + msg.length};");
    assert_eq!(
        encode(&mut rt, &msg("")),
        vec![Bytes::from_static(b"string:0")]
    );
}

#[test]
fn binary_is_base64_decoded_and_arrays_give_several_items() {
    let mut rt = runtime(
        "return [{contentType: 'BINARY', data: btoa(String.fromCharCode(0, 1, 254, 255))}, \
         {contentType: 'JSON', data: JSON.stringify({on: msg.on})}, \
         {contentType: 'TEXT', data: 'héllo', metadata: {port: 1, ok: true}}];",
    );
    assert_eq!(
        encode(&mut rt, &msg(r#"{"on":true}"#)),
        vec![
            Bytes::from_static(&[0, 1, 254, 255]),
            Bytes::from_static(br#"{"on":true}"#),
            Bytes::from("héllo".as_bytes()),
        ]
    );
}

#[test]
fn bad_results_use_thingsboards_texts() {
    let cases: &[(&str, &str)] = &[
        ("return {data: 'x'};", "Downlink content type is not set!"),
        ("return {contentType: 'TEXT'};", "Downlink data is not set!"),
        (
            "return {contentType: 'XML', data: 'x'};",
            "Unknown downlink content type XML",
        ),
        (
            "return {contentType: 'TEXT', data: 'x', metadata: {a: {b: 1}}};",
            "Invalid downlink metadata format!",
        ),
        (
            "return {contentType: 'TEXT', data: 'x', metadata: 'flat'};",
            "Invalid downlink metadata format!",
        ),
    ];
    for (script, text) in cases {
        let mut rt = runtime(script);
        let mut out = Vec::new();
        let e = rt.encode_downlink(&msg("{}"), &mut out).unwrap_err();
        assert_eq!(e.to_string(), *text, "{script}");
        assert_eq!(e.kind(), "bad_result");
        assert!(out.is_empty());
    }
}

#[test]
fn no_encoder_means_no_downlink() {
    let mut rt = runtime("return {contentType: 'TEXT', data: 'x'};");
    rt.set_downlink(None).unwrap();
    assert!(!rt.has_downlink());
    let mut out = Vec::new();
    assert_eq!(
        rt.encode_downlink(&msg("{}"), &mut out).unwrap_err().kind(),
        "no_converter"
    );
}
