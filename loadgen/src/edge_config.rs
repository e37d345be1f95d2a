//! What the sink, playing ThingsBoard Edge, hands the integration under test on CONNECT: a TCP
//! integration configuration with the docs' handler settings for the chosen [`Format`], and the
//! JS uplink decoder / downlink encoder that understand the load generator's frames.
//!
//! The decoders are written in the shape and cost of the docs' examples (decode the payload to a
//! string with `String.fromCharCode.apply`, split or `JSON.parse`, build the result object), so
//! a measurement reflects the per-frame converter work a real user pays for.

use serde_json::{Value, json};
use tcp_integration::proto::integration::{
    ConverterConfigurationProto, IntegrationConfigurationProto,
};

use crate::frames::Format;

/// TEXT and BINARY frames: split the line on commas.
pub const TEXT_DECODER_JS: &str = r#"// Decode an uplink: "<deviceName>,<deviceType>,<seq>,<sent_us>,<temperature>"
var text = decodeToString(payload);
var parts = text.replace(/\s/g, "").split(",");

var result = {
    deviceName: parts[0],
    deviceType: parts[1],
    telemetry: {
        seq: parseInt(parts[2]),
        sent_us: parseInt(parts[3]),
        temperature: parseFloat(parts[4])
    }
};

function decodeToString(payload) {
    return String.fromCharCode.apply(String, payload);
}

return result;
"#;

/// JSON frames: parse the object and pick the fields.
pub const JSON_DECODER_JS: &str = r#"// Decode an uplink JSON object
var data = decodeToJson(payload);

var result = {
    deviceName: data.deviceName,
    deviceType: data.deviceType,
    telemetry: {
        seq: data.seq,
        sent_us: data.sent_us,
        temperature: data.temperature
    }
};

function decodeToString(payload) {
    return String.fromCharCode.apply(String, payload);
}

function decodeToJson(payload) {
    var str = decodeToString(payload);
    var data = JSON.parse(str);
    return data;
}

return result;
"#;

/// The docs' downlink encoder: the rule-engine message as JSON text.
pub const ENCODER_JS: &str = r#"// Encode downlink data from incoming Rule Engine message
var result = {
    contentType: "JSON",
    data: JSON.stringify(msg),
    metadata: {}
};

return result;
"#;

/// The JS decoder for `format`.
pub fn decoder_js(format: Format) -> &'static str {
    match format {
        Format::Text | Format::Binary => TEXT_DECODER_JS,
        Format::Json => JSON_DECODER_JS,
    }
}

/// The docs' `handlerConfiguration` for `format`.
pub fn handler_configuration(format: Format) -> Value {
    match format {
        Format::Text => json!({
            "handlerType": "TEXT",
            "maxFrameLength": 128,
            "stripDelimiter": true,
            "messageSeparator": "SYSTEM_LINE_SEPARATOR"
        }),
        Format::Json => json!({ "handlerType": "JSON" }),
        Format::Binary => json!({
            "handlerType": "BINARY",
            "byteOrder": "LITTLE_ENDIAN",
            "maxFrameLength": 128,
            "lengthFieldOffset": 4,
            "lengthFieldLength": 1,
            "lengthAdjustment": 0,
            "initialBytesToStrip": 5,
            "failFast": false
        }),
    }
}

/// Settings of the integration the sink hands out.
#[derive(Debug, Clone)]
pub struct IntegrationSettings {
    pub format: Format,
    /// `clientConfiguration.port`: where the integration listens for devices.
    pub device_port: u16,
    /// `clientConfiguration.soBacklogOption`.
    pub so_backlog: u32,
    pub routing_key: String,
}

/// The integration `configuration` JSON text.
pub fn configuration_json(settings: &IntegrationSettings) -> String {
    json!({
        "clientConfiguration": {
            "port": settings.device_port,
            "soBacklogOption": settings.so_backlog,
            "soRcvBuf": 64,
            "soSndBuf": 64,
            "soKeepaliveOption": false,
            "tcpNoDelay": true,
            "handlerConfiguration": handler_configuration(settings.format)
        },
        "metadata": {}
    })
    .to_string()
}

/// The converter `configuration` JSON text (`scriptLang`, `decoder`, `encoder`).
pub fn converter_json(format: Format) -> String {
    json!({
        "scriptLang": "JS",
        "decoder": decoder_js(format),
        "encoder": ENCODER_JS
    })
    .to_string()
}

/// The `IntegrationConfigurationProto` of an ACCEPTED ConnectResponseMsg.
pub fn integration_configuration(settings: &IntegrationSettings) -> IntegrationConfigurationProto {
    let converter = |name: &str, id_lsb: i64| ConverterConfigurationProto {
        tenant_id_msb: 1,
        tenant_id_lsb: 1,
        converter_id_msb: 0x10AD_0000,
        converter_id_lsb: id_lsb,
        name: name.to_string(),
        configuration: converter_json(settings.format),
        additional_info: "{}".to_string(),
        ..Default::default()
    };
    IntegrationConfigurationProto {
        tenant_id_msb: 1,
        tenant_id_lsb: 1,
        uplink_converter: Some(converter("loadgen uplink", 1)),
        downlink_converter: Some(converter("loadgen downlink", 2)),
        name: format!("loadgen TCP ({})", settings.format.as_str()),
        routing_key: settings.routing_key.clone(),
        r#type: "TCP".to_string(),
        configuration: configuration_json(settings),
        additional_info: "{}".to_string(),
        enabled: true,
        integration_id_msb: 0x10AD_0000,
        integration_id_lsb: 3,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_carries_docs_handler_and_port() {
        let settings = IntegrationSettings {
            format: Format::Binary,
            device_port: 10560,
            so_backlog: 4096,
            routing_key: "rk".into(),
        };
        let cfg = integration_configuration(&settings);
        assert_eq!(cfg.r#type, "TCP");
        let v: Value = serde_json::from_str(&cfg.configuration).unwrap();
        let client = &v["clientConfiguration"];
        assert_eq!(client["port"], 10560);
        assert_eq!(client["soBacklogOption"], 4096);
        assert_eq!(client["soRcvBuf"], 64);
        assert_eq!(client["tcpNoDelay"], true);
        assert_eq!(client["handlerConfiguration"]["lengthFieldOffset"], 4);
        assert_eq!(client["handlerConfiguration"]["initialBytesToStrip"], 5);
        assert_eq!(v["metadata"], json!({}));
        let conv: Value =
            serde_json::from_str(&cfg.uplink_converter.unwrap().configuration).unwrap();
        assert_eq!(conv["scriptLang"], "JS");
        assert_eq!(conv["decoder"], TEXT_DECODER_JS);
        assert_eq!(conv["encoder"], ENCODER_JS);
    }
}
