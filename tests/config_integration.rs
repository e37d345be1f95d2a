//! ThingsBoard TCP integration JSON → `TcpIntegrationConfig`: the docs' handler settings and full
//! UI exports parse to the right `FramingSpec`; every bad value is refused with its key path,
//! value and allowed range.

use std::time::Duration;

use serde_json::{Value, json};
use tcp_integration::config::integration::{
    ClientConfig, IntegrationConfigError, TcpIntegrationConfig,
};
use tcp_integration::framing::{
    BinarySpec, ByteOrder, Delimiter, FramingSpec, FramingSpecError, TextSpec,
};

/// A full UI export: the UI stores every handler field whatever the handler type.
fn ui_export(handler_type: &str) -> Value {
    json!({
        "clientConfiguration": {
            "port": 10560,
            "soBacklogOption": 128,
            "soRcvBuf": 64,
            "soSndBuf": 64,
            "soKeepaliveOption": false,
            "tcpNoDelay": true,
            "cacheSize": 1000,
            "timeToLiveInMinutes": 1440,
            "handlerConfiguration": {
                "handlerType": handler_type,
                "charsetName": "UTF-8",
                "maxFrameLength": 128,
                "stripDelimiter": true,
                "messageSeparator": "SYSTEM_LINE_SEPARATOR",
                "customSeparatorRawValue": null,
                "byteOrder": "LITTLE_ENDIAN",
                "lengthFieldOffset": 4,
                "lengthFieldLength": 1,
                "lengthAdjustment": 0,
                "initialBytesToStrip": 5,
                "failFast": false
            }
        },
        "metadata": {}
    })
}

fn parse(value: &Value) -> Result<TcpIntegrationConfig, IntegrationConfigError> {
    TcpIntegrationConfig::from_json(&value.to_string())
}

fn docs_binary_spec() -> BinarySpec {
    BinarySpec {
        byte_order: ByteOrder::LittleEndian,
        max_frame_bytes: 128,
        length_field_offset: 4,
        length_field_bytes: 1,
        length_adjustment: 0,
        initial_bytes_to_strip: 5,
        fail_fast: false,
    }
}

#[test]
fn docs_text_handler_settings() {
    let config = TcpIntegrationConfig::from_json(
        r#"{"clientConfiguration":{"port":10560,"handlerConfiguration":
            {"handlerType":"TEXT","maxFrameLength":128,"stripDelimiter":true,
             "messageSeparator":"SYSTEM_LINE_SEPARATOR"}},"metadata":{}}"#,
    )
    .unwrap();
    assert_eq!(
        config.client.framing,
        FramingSpec::Text(TextSpec {
            max_frame_bytes: 128,
            strip_delimiter: true,
            delimiter: Delimiter::Line,
        })
    );
    assert_eq!(config.client.port, 10560);
    assert!(config.metadata.is_empty());
}

#[test]
fn docs_json_handler_settings() {
    let config = TcpIntegrationConfig::from_json(
        r#"{"clientConfiguration":{"port":10560,"handlerConfiguration":{"handlerType":"JSON"}},
            "metadata":{}}"#,
    )
    .unwrap();
    assert_eq!(config.client.framing, FramingSpec::Json);
}

#[test]
fn docs_binary_handler_settings() {
    let config = TcpIntegrationConfig::from_json(
        r#"{"clientConfiguration":{"port":10560,"handlerConfiguration":
            {"handlerType":"BINARY","byteOrder":"LITTLE_ENDIAN","maxFrameLength":128,
             "lengthFieldOffset":4,"lengthFieldLength":1,"lengthAdjustment":0,
             "initialBytesToStrip":5,"failFast":false}},"metadata":{}}"#,
    )
    .unwrap();
    assert_eq!(
        config.client.framing,
        FramingSpec::Binary(docs_binary_spec())
    );
}

#[test]
fn full_ui_export_text_ignores_binary_fields() {
    let config = parse(&ui_export("TEXT")).unwrap();
    assert_eq!(
        config.client,
        ClientConfig {
            port: 10560,
            so_backlog: 128,
            so_rcvbuf_kib: 64,
            so_sndbuf_kib: 64,
            so_keepalive: false,
            tcp_nodelay: true,
            cache_size: 1000,
            cache_ttl: Duration::from_secs(1440 * 60),
            framing: FramingSpec::Text(TextSpec {
                max_frame_bytes: 128,
                strip_delimiter: true,
                delimiter: Delimiter::Line,
            }),
        }
    );
}

#[test]
fn full_ui_export_json_ignores_text_and_binary_fields() {
    assert_eq!(
        parse(&ui_export("JSON")).unwrap().client.framing,
        FramingSpec::Json
    );
}

#[test]
fn full_ui_export_binary_ignores_text_fields() {
    assert_eq!(
        parse(&ui_export("BINARY")).unwrap().client.framing,
        FramingSpec::Binary(docs_binary_spec())
    );
}

#[test]
fn ui_export_with_other_values_for_every_client_field() {
    let mut v = ui_export("BINARY");
    let c = &mut v["clientConfiguration"];
    c["port"] = json!(5000);
    c["soBacklogOption"] = json!(1024);
    c["soRcvBuf"] = json!(256);
    c["soSndBuf"] = json!(128);
    c["soKeepaliveOption"] = json!(true);
    c["tcpNoDelay"] = json!(false);
    c["cacheSize"] = json!(0);
    c["timeToLiveInMinutes"] = json!(0);
    let h = &mut c["handlerConfiguration"];
    h["byteOrder"] = json!("BIG_ENDIAN");
    h["maxFrameLength"] = json!(65535);
    h["lengthFieldOffset"] = json!(0);
    h["lengthFieldLength"] = json!(8);
    h["lengthAdjustment"] = json!(-8);
    h["initialBytesToStrip"] = json!(8);
    h["failFast"] = json!(true);
    let client = parse(&v).unwrap().client;
    assert_eq!(
        client,
        ClientConfig {
            port: 5000,
            so_backlog: 1024,
            so_rcvbuf_kib: 256,
            so_sndbuf_kib: 128,
            so_keepalive: true,
            tcp_nodelay: false,
            cache_size: 0,
            cache_ttl: Duration::ZERO,
            framing: FramingSpec::Binary(BinarySpec {
                byte_order: ByteOrder::BigEndian,
                max_frame_bytes: 65535,
                length_field_offset: 0,
                length_field_bytes: 8,
                length_adjustment: -8,
                initial_bytes_to_strip: 8,
                fail_fast: true,
            }),
        }
    );
}

#[test]
fn text_nul_and_custom_separators() {
    let mut v = ui_export("TEXT");
    v["clientConfiguration"]["handlerConfiguration"]["messageSeparator"] = json!("NUL_DELIMITER");
    v["clientConfiguration"]["handlerConfiguration"]["stripDelimiter"] = json!(false);
    assert_eq!(
        parse(&v).unwrap().client.framing,
        FramingSpec::Text(TextSpec {
            max_frame_bytes: 128,
            strip_delimiter: false,
            delimiter: Delimiter::Nul,
        })
    );
    let h = &mut v["clientConfiguration"]["handlerConfiguration"];
    h["messageSeparator"] = json!("CUSTOM_SEPARATOR");
    // No escape processing: backslash-n stays two bytes; the separator is its UTF-8 bytes.
    h["customSeparatorRawValue"] = json!("\\n;é");
    assert_eq!(
        parse(&v).unwrap().client.framing,
        FramingSpec::Text(TextSpec {
            max_frame_bytes: 128,
            strip_delimiter: false,
            delimiter: Delimiter::Custom(b"\\n;\xc3\xa9".to_vec()),
        })
    );
}

#[test]
fn absent_fields_take_ui_defaults() {
    let config = TcpIntegrationConfig::from_json(
        r#"{"clientConfiguration":{"handlerConfiguration":{"handlerType":"BINARY"}}}"#,
    )
    .unwrap();
    assert_eq!(
        config.client,
        ClientConfig {
            port: 10560,
            so_backlog: 128,
            so_rcvbuf_kib: 64,
            so_sndbuf_kib: 64,
            so_keepalive: false,
            tcp_nodelay: true,
            cache_size: 1000,
            cache_ttl: Duration::from_secs(1440 * 60),
            framing: FramingSpec::Binary(BinarySpec {
                byte_order: ByteOrder::LittleEndian,
                max_frame_bytes: 128,
                length_field_offset: 0,
                length_field_bytes: 2,
                length_adjustment: 0,
                initial_bytes_to_strip: 0,
                fail_fast: false,
            }),
        }
    );
}

#[test]
fn missing_metadata_is_empty() {
    let mut v = ui_export("JSON");
    v.as_object_mut().unwrap().remove("metadata");
    assert_eq!(parse(&v).unwrap().metadata, Vec::<(String, String)>::new());
    v["metadata"] = Value::Null;
    assert_eq!(parse(&v).unwrap().metadata, Vec::<(String, String)>::new());
}

#[test]
fn metadata_values_as_text_in_file_order() {
    let config = TcpIntegrationConfig::from_json(
        r#"{"clientConfiguration":{"handlerConfiguration":{"handlerType":"JSON"}},
            "metadata":{"zone":"north","floor":3,"ratio":25.7,"active":true,"alpha":"a","none":null}}"#,
    )
    .unwrap();
    let expected: Vec<(String, String)> = [
        ("zone", "north"),
        ("floor", "3"),
        ("ratio", "25.7"),
        ("active", "true"),
        ("alpha", "a"),
        ("none", "null"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(config.metadata, expected);
}

#[test]
fn jackson_style_coercions_are_accepted() {
    let mut v = ui_export("TEXT");
    v["clientConfiguration"]["port"] = json!("10561");
    v["clientConfiguration"]["soBacklogOption"] = json!(256.0);
    v["clientConfiguration"]["tcpNoDelay"] = json!("false");
    let client = parse(&v).unwrap().client;
    assert_eq!(
        (client.port, client.so_backlog, client.tcp_nodelay),
        (10561, 256, false)
    );
}

fn invalid(key: &str, value: &str, allowed: &str) -> IntegrationConfigError {
    IntegrationConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        allowed: allowed.to_owned(),
    }
}

/// Sets `field` (in clientConfiguration, or in handlerConfiguration when `handler`) to `value`
/// in a UI export of `handler_type` and returns the error.
fn error_for(
    handler_type: &str,
    handler: bool,
    field: &str,
    value: Value,
) -> IntegrationConfigError {
    let mut v = ui_export(handler_type);
    if handler {
        v["clientConfiguration"]["handlerConfiguration"][field] = value;
    } else {
        v["clientConfiguration"][field] = value;
    }
    parse(&v).unwrap_err()
}

#[test]
fn client_values_out_of_range_name_key_value_and_range() {
    let cases: &[(&str, Value, &str, &str)] = &[
        ("port", json!(0), "0", "an integer in 1..=65535"),
        ("port", json!(65536), "65536", "an integer in 1..=65535"),
        ("port", json!("http"), "\"http\"", "an integer in 1..=65535"),
        ("soBacklogOption", json!(0), "0", "an integer in 1..=65535"),
        ("soRcvBuf", json!(70000), "70000", "an integer in 1..=65535"),
        ("soSndBuf", json!(-1), "-1", "an integer in 1..=65535"),
        ("cacheSize", json!(-5), "-5", "an integer in 0..=4294967295"),
        (
            "timeToLiveInMinutes",
            json!(525601),
            "525601",
            "an integer in 0..=525600",
        ),
        ("soKeepaliveOption", json!(1), "1", "true or false"),
        ("tcpNoDelay", json!("yes"), "\"yes\"", "true or false"),
    ];
    for (field, value, shown, allowed) in cases {
        assert_eq!(
            error_for("TEXT", false, field, value.clone()),
            invalid(&format!("clientConfiguration.{field}"), shown, allowed),
            "{field}"
        );
    }
}

#[test]
fn handler_values_out_of_range_name_key_value_and_range() {
    let cases: &[(&str, &str, Value, &str, &str)] = &[
        (
            "TEXT",
            "maxFrameLength",
            json!(0),
            "0",
            "an integer in 1..=65535",
        ),
        (
            "TEXT",
            "maxFrameLength",
            json!(65536),
            "65536",
            "an integer in 1..=65535",
        ),
        (
            "TEXT",
            "stripDelimiter",
            json!("maybe"),
            "\"maybe\"",
            "true or false",
        ),
        (
            "TEXT",
            "messageSeparator",
            json!("COMMA"),
            "\"COMMA\"",
            "SYSTEM_LINE_SEPARATOR, NUL_DELIMITER or CUSTOM_SEPARATOR",
        ),
        (
            "BINARY",
            "maxFrameLength",
            json!(0),
            "0",
            "an integer in 1..=65535",
        ),
        (
            "BINARY",
            "byteOrder",
            json!("MIDDLE"),
            "\"MIDDLE\"",
            "LITTLE_ENDIAN or BIG_ENDIAN",
        ),
        (
            "BINARY",
            "lengthFieldOffset",
            json!(9),
            "9",
            "an integer in 0..=8",
        ),
        (
            "BINARY",
            "lengthFieldOffset",
            json!(-1),
            "-1",
            "an integer in 0..=8",
        ),
        (
            "BINARY",
            "lengthFieldLength",
            json!(0),
            "0",
            "1, 2, 3, 4 or 8",
        ),
        (
            "BINARY",
            "lengthFieldLength",
            json!(5),
            "5",
            "1, 2, 3, 4 or 8",
        ),
        (
            "BINARY",
            "lengthAdjustment",
            json!(-65536),
            "-65536",
            "an integer in -65535..=65535",
        ),
        (
            "BINARY",
            "lengthAdjustment",
            json!(65536),
            "65536",
            "an integer in -65535..=65535",
        ),
        (
            "BINARY",
            "initialBytesToStrip",
            json!(9),
            "9",
            "an integer in 0..=8",
        ),
        ("BINARY", "failFast", json!(0), "0", "true or false"),
        (
            "BINARY",
            "handlerType",
            json!("HEX"),
            "\"HEX\"",
            "TEXT, JSON or BINARY (HEX exists only for UDP integrations)",
        ),
        (
            "BINARY",
            "handlerType",
            json!("MQTT"),
            "\"MQTT\"",
            "TEXT, JSON or BINARY",
        ),
    ];
    for (handler_type, field, value, shown, allowed) in cases {
        assert_eq!(
            error_for(handler_type, true, field, value.clone()),
            invalid(
                &format!("clientConfiguration.handlerConfiguration.{field}"),
                shown,
                allowed
            ),
            "{handler_type} {field}"
        );
    }
}

#[test]
fn error_message_names_key_value_and_range() {
    let err = error_for("BINARY", true, "lengthFieldLength", json!(6));
    assert_eq!(
        err.to_string(),
        "integration configuration: `clientConfiguration.handlerConfiguration.lengthFieldLength` \
         = 6 is not allowed; allowed: 1, 2, 3, 4 or 8"
    );
}

#[test]
fn custom_separator_must_be_present_and_non_empty() {
    let mut v = ui_export("TEXT");
    v["clientConfiguration"]["handlerConfiguration"]["messageSeparator"] =
        json!("CUSTOM_SEPARATOR");
    assert_eq!(
        parse(&v).unwrap_err(),
        IntegrationConfigError::Missing {
            key: "clientConfiguration.handlerConfiguration.customSeparatorRawValue"
        }
    );
    v["clientConfiguration"]["handlerConfiguration"]["customSeparatorRawValue"] = json!("");
    assert_eq!(
        parse(&v).unwrap_err(),
        invalid(
            "clientConfiguration.handlerConfiguration.customSeparatorRawValue",
            "\"\"",
            "a non-empty string"
        )
    );
}

#[test]
fn length_field_beyond_max_frame_is_refused_by_framing_validation() {
    let mut v = ui_export("BINARY");
    v["clientConfiguration"]["handlerConfiguration"]["maxFrameLength"] = json!(4);
    assert_eq!(
        parse(&v).unwrap_err(),
        IntegrationConfigError::Framing(FramingSpecError::LengthFieldBeyondMaxFrame {
            offset: 4,
            length_field_bytes: 1,
            max_frame_bytes: 4,
        })
    );
}

#[test]
fn required_parts_missing() {
    assert_eq!(
        TcpIntegrationConfig::from_json(r#"{"metadata":{}}"#).unwrap_err(),
        IntegrationConfigError::Missing {
            key: "clientConfiguration"
        }
    );
    assert_eq!(
        TcpIntegrationConfig::from_json(r#"{"clientConfiguration":{"port":1}}"#).unwrap_err(),
        IntegrationConfigError::Missing {
            key: "clientConfiguration.handlerConfiguration"
        }
    );
    assert_eq!(
        TcpIntegrationConfig::from_json(
            r#"{"clientConfiguration":{"handlerConfiguration":{"maxFrameLength":1}}}"#
        )
        .unwrap_err(),
        IntegrationConfigError::Missing {
            key: "clientConfiguration.handlerConfiguration.handlerType"
        }
    );
    assert_eq!(
        TcpIntegrationConfig::from_json(r#"{"clientConfiguration":[]}"#).unwrap_err(),
        invalid("clientConfiguration", "[]", "an object")
    );
}

#[test]
fn nested_metadata_value_is_refused() {
    let err = TcpIntegrationConfig::from_json(
        r#"{"clientConfiguration":{"handlerConfiguration":{"handlerType":"JSON"}},
            "metadata":{"loc":{"lat":1}}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        invalid(
            "metadata.loc",
            r#"{"lat":1}"#,
            "a string, number or boolean"
        )
    );
}

#[test]
fn invalid_json_is_reported() {
    let err = TcpIntegrationConfig::from_json("{\"clientConfiguration\":").unwrap_err();
    assert!(
        matches!(err, IntegrationConfigError::Json(ref m) if m.contains("EOF")),
        "{err}"
    );
}
