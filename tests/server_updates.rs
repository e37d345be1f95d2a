//! Run-time configuration: a converter update recompiles the scripts without dropping device
//! connections; a handler update re-binds the listener; disabling stops serving devices.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use tcp_integration::edge_sim::TypedValue;

#[test]
fn converter_update_keeps_connections_and_uses_the_new_script() {
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut device = h.connect();
    send(&mut device, b"SN-UPD,default,temperature,25.7\n");
    h.wait_records(1);

    let mut def = h.edge().definition();
    def.uplink_converter.configuration["decoder"] = serde_json::json!(
        "var f = String.fromCharCode.apply(String, payload).split(',');\n\
         return {deviceName: f[0], deviceType: 'updated', telemetry: {version: 2}};"
    );
    let (_, delivered) = h.edge().replace_definition(def).unwrap();
    assert!(delivered, "the integration was connected");
    // Until the new script is in, frames still use the old one; keep sending on the SAME
    // connection until a record shows the new script.
    let deadline = Instant::now() + PATIENCE;
    let mut n = 1;
    loop {
        send(&mut device, b"SN-UPD,default,temperature,25.7\n");
        n += 1;
        let records = h.wait_records(n);
        let last = records.last().unwrap();
        if last.entity_type == "updated" {
            assert_eq!(
                latest(&records, "SN-UPD", "version"),
                Some(&TypedValue::Long(2))
            );
            break;
        }
        assert!(Instant::now() < deadline, "new decoder never used");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connection was never closed by the server.
    device.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(device.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

#[test]
fn handler_update_rebinds_on_the_new_port() {
    let port = reserve_port();
    let old_port = port.port;
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut old_device = h.connect();
    send(&mut old_device, b"SN-OLD,default,temperature,20.5\n");
    h.wait_records(1);
    let new_port = reserve_port();
    let mut def = h.edge().definition();
    def.configuration["clientConfiguration"]["port"] = serde_json::json!(new_port.port);
    def.configuration["clientConfiguration"]["handlerConfiguration"] = serde_json::json!({
        "handlerType": "TEXT", "maxFrameLength": 128, "stripDelimiter": true,
        "messageSeparator": "NUL_DELIMITER"
    });
    h.edge().replace_definition(def).unwrap();
    // As ThingsBoard restarts its TCP server: the old connection is closed and the old port
    // stops accepting.
    wait_closed_by_server(&mut old_device);
    h.wait_listening(new_port.port);
    wait_refused(old_port);
    let mut device = std::net::TcpStream::connect(("127.0.0.1", new_port.port)).unwrap();
    send(&mut device, b"SN-NUL,default,temperature,21.5\0");
    let records = h.wait_records(2);
    assert_eq!(records.len(), 2);
    assert_eq!(
        latest(&records, "SN-NUL", "temperature"),
        Some(&TypedValue::Double(21.5))
    );
}

#[test]
fn disabled_integration_stops_serving_devices() {
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[]);
    let mut device = h.connect();
    send(&mut device, b"SN-OFF,default,temperature,20.5\n");
    h.wait_records(1);
    let mut def = h.edge().definition();
    def.enabled = false;
    h.edge().replace_definition(def).unwrap();
    // The server closes the device connection and the listener.
    wait_closed_by_server(&mut device);
    wait_refused(h.port.port);
}
