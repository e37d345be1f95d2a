//! Pins the wire: field numbers and types of the remote-integration messages, checked against
//! bytes built by hand from the contract's tables (§1.2–1.4), and the session's hand-written
//! `RequestMsg` envelope.

use bytes::Bytes;
use prost::Message;
use tcp_integration::proto::integration::{
    ConnectRequestMsg, ConnectResponseCode, ConverterConfigurationProto, DeviceUplinkDataProto,
    IntegrationConfigurationProto, MessageType, RequestMsg, ResponseMsg, UplinkMsg,
};
use tcp_integration::proto::msgqueue::TbMsgProto;
use tcp_integration::proto::transport::{KeyValueProto, KeyValueType};
use tcp_integration::uplink::session::{
    OutboundRequest, SessionEvent, encode_request, normalize_downlink, response_events,
};

/// Hand encoding: `varint` appends a base-128 varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field `n` with wire type 0 (varint).
fn f_varint(n: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(n << 3), &mut out);
    varint(v, &mut out);
    out
}

/// Field `n` with wire type 2 (length-delimited).
fn f_bytes(n: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from((n << 3) | 2), &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// Field `n` with wire type 1 (64-bit little-endian).
fn f_fixed64(n: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from((n << 3) | 1), &mut out);
    out.extend_from_slice(&v.to_le_bytes());
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn uplink_request_carries_message_type_one_explicitly() {
    let uplink = UplinkMsg {
        device_data: vec![DeviceUplinkDataProto {
            device_name: "SN-002".into(),
            device_type: "default".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let uplink_bytes = uplink.encode_to_vec();
    let mut wire = Vec::new();
    encode_request(
        &OutboundRequest::Uplink(Bytes::from(uplink_bytes.clone())),
        &mut wire,
    );

    let mut expected = vec![0x08, 0x01];
    expected.extend(f_bytes(3, &uplink_bytes));
    assert_eq!(wire, expected);

    let decoded = RequestMsg::decode(wire.as_slice()).expect("decodes");
    assert_eq!(decoded.message_type, MessageType::UplinkRpcMessage as i32);
    assert_eq!(decoded.uplink_msg, Some(uplink));
    assert_eq!(decoded.connect_request_msg, None);
}

#[test]
fn generated_request_type_also_writes_08_01() {
    let msg = RequestMsg {
        message_type: MessageType::UplinkRpcMessage as i32,
        connect_request_msg: None,
        uplink_msg: Some(UplinkMsg::default()),
    };
    assert_eq!(msg.encode_to_vec(), vec![0x08, 0x01, 0x1A, 0x00]);
}

#[test]
fn connect_request_is_field_2_with_default_message_type() {
    let connect = ConnectRequestMsg {
        integration_routing_key: "k".into(),
        integration_secret: "s".into(),
        service_id: "x".into(),
    };
    let mut wire = Vec::new();
    encode_request(&OutboundRequest::Connect(connect.clone()), &mut wire);
    // messageType 0 (CONNECT) is the proto3 default and is not written.
    let inner = cat(&[f_bytes(1, b"k"), f_bytes(2, b"s"), f_bytes(3, b"x")]);
    assert_eq!(wire, f_bytes(2, &inner));
    assert_eq!(
        wire,
        vec![
            0x12, 0x09, 0x0A, 0x01, b'k', 0x12, 0x01, b's', 0x1A, 0x01, b'x'
        ]
    );
    let decoded = RequestMsg::decode(wire.as_slice()).expect("decodes");
    assert_eq!(decoded.message_type, MessageType::ConnectRpcMessage as i32);
    assert_eq!(decoded.connect_request_msg, Some(connect));
}

fn hand_built_tb_msg() -> Vec<u8> {
    let meta_entry = cat(&[f_bytes(1, b"deviceName"), f_bytes(2, b"SN-002")]);
    cat(&[
        f_bytes(1, b"0f8e36c0-6a2d-4b39-9d40-6d1b5f0e2a11"),
        f_bytes(2, b"ATTRIBUTES_UPDATED"),
        f_bytes(3, b"DEVICE"),
        f_varint(4, 0x1234),
        f_varint(5, 0x5678),
        f_bytes(11, &f_bytes(1, &meta_entry)),
        f_varint(13, 0),
        f_bytes(14, br#"{"firmware":"1.2.3"}"#),
        f_varint(15, 1_700_000_000_123),
    ])
}

fn check_tb_msg(tb: &TbMsgProto) {
    assert_eq!(tb.id, "0f8e36c0-6a2d-4b39-9d40-6d1b5f0e2a11");
    assert_eq!(tb.r#type, "ATTRIBUTES_UPDATED");
    assert_eq!(tb.entity_type, "DEVICE");
    assert_eq!((tb.entity_id_msb, tb.entity_id_lsb), (0x1234, 0x5678));
    let meta = tb.meta_data.as_ref().expect("metadata");
    assert_eq!(
        meta.data.get("deviceName").map(String::as_str),
        Some("SN-002")
    );
    assert_eq!(meta.data.len(), 1);
    assert_eq!(tb.data_type, 0);
    assert_eq!(tb.data, r#"{"firmware":"1.2.3"}"#);
    assert_eq!(tb.ts, 1_700_000_000_123);
}

#[test]
fn hand_built_downlink_decodes_to_device_and_tb_msg() {
    let device = cat(&[
        f_bytes(1, b"SN-002"),
        f_bytes(2, b"default"),
        f_bytes(4, &hand_built_tb_msg()),
    ]);
    // ResponseMsg.downlinkMsg = 3, DownlinkMsg.deviceData = 1.
    let wire = f_bytes(3, &f_bytes(1, &device));
    let response = ResponseMsg::decode(wire.as_slice()).expect("decodes");
    let events = response_events(response);
    assert_eq!(events.len(), 1);
    let SessionEvent::Downlink(data) = &events[0] else {
        panic!("expected a downlink, got {events:?}");
    };
    assert_eq!(data.device_name, "SN-002");
    assert_eq!(data.device_type, "default");
    check_tb_msg(data.tb_msg_proto.as_ref().expect("tbMsgProto"));
}

#[test]
fn deprecated_field_3_bytes_are_decoded_as_tb_msg() {
    let device = cat(&[
        f_bytes(1, b"SN-002"),
        f_bytes(2, b"default"),
        f_bytes(3, &hand_built_tb_msg()),
    ]);
    let wire = f_bytes(3, &f_bytes(1, &device));
    let response = ResponseMsg::decode(wire.as_slice()).expect("decodes");
    let data = response
        .downlink_msg
        .and_then(|d| d.device_data)
        .expect("device data");
    assert!(data.tb_msg_proto.is_none());
    let data = normalize_downlink(data);
    check_tb_msg(data.tb_msg_proto.as_ref().expect("filled from field 3"));
}

#[test]
fn connect_response_fields() {
    let wire = f_bytes(
        1,
        &cat(&[
            f_varint(1, 1),
            f_bytes(2, b"Failed to validate the integration!"),
            f_bytes(3, &[]),
        ]),
    );
    let response = ResponseMsg::decode(wire.as_slice()).expect("decodes");
    let connect = response.connect_response_msg.expect("connect response");
    assert_eq!(
        connect.response_code,
        ConnectResponseCode::BadCredentials as i32
    );
    assert_eq!(connect.error_msg, "Failed to validate the integration!");
    assert_eq!(
        connect.configuration,
        Some(IntegrationConfigurationProto::default())
    );
}

#[test]
fn integration_configuration_field_numbers() {
    let converter = cat(&[
        f_varint(3, 7),
        f_varint(4, 8),
        f_bytes(5, b"up"),
        f_bytes(7, br#"{"decoder":"return {};"}"#),
        f_bytes(10, b"TCP"),
        f_varint(11, 2),
    ]);
    let cfg = cat(&[
        f_varint(1, 1),
        f_varint(2, 2),
        f_bytes(3, &converter),
        f_bytes(4, &[]),
        f_bytes(5, b"TCP integration"),
        f_bytes(6, b"rk"),
        f_bytes(7, b"TCP"),
        f_bytes(9, br#"{"metadata":{}}"#),
        f_bytes(10, b"{}"),
        f_varint(11, 1),
        f_varint(12, 12),
        f_varint(13, u64::MAX), // -1 as int64
        f_bytes(14, br#"{"failuresEnabled":true}"#),
    ]);
    // ResponseMsg.integrationUpdateMsg = 4, IntegrationUpdateMsg.configuration = 1.
    let wire = f_bytes(4, &f_bytes(1, &cfg));
    let response = ResponseMsg::decode(wire.as_slice()).expect("decodes");
    let got = response
        .integration_update_msg
        .and_then(|u| u.configuration)
        .expect("configuration");
    assert_eq!((got.tenant_id_msb, got.tenant_id_lsb), (1, 2));
    let up = got.uplink_converter.expect("uplink converter");
    assert_eq!(
        up,
        ConverterConfigurationProto {
            converter_id_msb: 7,
            converter_id_lsb: 8,
            name: "up".into(),
            configuration: r#"{"decoder":"return {};"}"#.into(),
            integration_type: Some("TCP".into()),
            converter_version: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        got.downlink_converter,
        Some(ConverterConfigurationProto::default())
    );
    assert_eq!(got.name, "TCP integration");
    assert_eq!(got.routing_key, "rk");
    assert_eq!(got.r#type, "TCP");
    assert_eq!(got.configuration, r#"{"metadata":{}}"#);
    assert_eq!(got.additional_info, "{}");
    assert!(got.enabled);
    assert_eq!((got.integration_id_msb, got.integration_id_lsb), (12, -1));
    assert_eq!(
        got.debug_settings.as_deref(),
        Some(r#"{"failuresEnabled":true}"#)
    );

    // ResponseMsg.converterUpdateMsg = 5.
    let wire = f_bytes(5, &f_bytes(1, &converter));
    let response = ResponseMsg::decode(wire.as_slice()).expect("decodes");
    let events = response_events(response);
    assert!(
        matches!(&events[..], [SessionEvent::ConverterUpdate(c)] if c.name == "up" && c.converter_id_msb == 7),
        "{events:?}"
    );
}

#[test]
fn uplink_ack_is_field_2() {
    let wire = f_bytes(2, &cat(&[f_varint(1, 1)]));
    let events = response_events(ResponseMsg::decode(wire.as_slice()).expect("decodes"));
    assert_eq!(
        events,
        vec![SessionEvent::UplinkAck {
            success: true,
            error_msg: String::new()
        }]
    );
}

#[test]
fn device_and_asset_uplink_field_numbers() {
    let kv_double = cat(&[
        f_bytes(1, b"temperature"),
        f_varint(2, 2),
        f_fixed64(5, 25.7f64.to_bits()),
    ]);
    let kv_long = cat(&[f_bytes(1, b"humidity"), f_varint(2, 1), f_varint(4, 69)]);
    let kv_json = cat(&[
        f_bytes(1, b"cfg"),
        f_varint(2, 4),
        f_bytes(7, br#"{"a":1}"#),
    ]);
    // BOOLEAN_V is type 0, the proto3 default, so the type field is absent on the wire.
    let kv_bool = cat(&[f_bytes(1, b"on"), f_varint(3, 1)]);
    let kv_string = cat(&[f_bytes(1, b"fw"), f_varint(2, 3), f_bytes(6, b"1.0")]);
    let ts_list = cat(&[
        f_varint(1, 1000),
        f_bytes(2, &kv_double),
        f_bytes(2, &kv_long),
    ]);
    let telemetry = f_bytes(1, &ts_list);
    let attributes = cat(&[
        f_bytes(1, &kv_json),
        f_bytes(1, &kv_bool),
        f_bytes(1, &kv_string),
    ]);
    let device = cat(&[
        f_bytes(1, b"SN-002"),
        f_bytes(2, b"default"),
        f_bytes(3, b"Customer A"),
        f_bytes(4, b"Group A"),
        f_bytes(5, &telemetry),
        f_bytes(6, &attributes),
        f_bytes(7, b"Label A"),
    ]);
    let asset = cat(&[
        f_bytes(1, b"Building 1"),
        f_bytes(2, b"building"),
        f_bytes(7, b"B1"),
    ]);
    let uplink = cat(&[f_bytes(2, &device), f_bytes(7, &asset)]);

    let msg = UplinkMsg::decode(uplink.as_slice()).expect("decodes");
    let d = &msg.device_data[0];
    assert_eq!(
        (
            d.device_name.as_str(),
            d.device_type.as_str(),
            d.customer_name.as_str(),
            d.group_name.as_str(),
            d.device_label.as_str()
        ),
        ("SN-002", "default", "Customer A", "Group A", "Label A")
    );
    let tl = &d.post_telemetry_msg.as_ref().expect("telemetry").ts_kv_list[0];
    assert_eq!(tl.ts, 1000);
    assert_eq!(
        tl.kv[0],
        KeyValueProto {
            key: "temperature".into(),
            r#type: KeyValueType::DoubleV as i32,
            double_v: 25.7,
            ..Default::default()
        }
    );
    assert_eq!(
        (tl.kv[1].r#type, tl.kv[1].long_v),
        (KeyValueType::LongV as i32, 69)
    );
    let attrs = &d.post_attributes_msg.as_ref().expect("attributes").kv;
    assert_eq!(
        (attrs[0].r#type, attrs[0].json_v.as_str()),
        (4, r#"{"a":1}"#)
    );
    assert_eq!((attrs[1].r#type, attrs[1].bool_v), (0, true));
    assert_eq!((attrs[2].r#type, attrs[2].string_v.as_str()), (3, "1.0"));
    let a = &msg.asset_data[0];
    assert_eq!(
        (
            a.asset_name.as_str(),
            a.asset_type.as_str(),
            a.asset_label.as_str()
        ),
        ("Building 1", "building", "B1")
    );

    // And the generated encoder writes exactly these bytes back.
    assert_eq!(msg.encode_to_vec(), uplink);
}
