//! A downlink that the device does not read yet never stops the server from reading that
//! device's uplinks, nor from serving the other devices of the shard.
//!
//! The device here writes a long run of uplinks from one thread and reads nothing, like a
//! device blocked in its own `write()`: while the server waited for room to write the downlink
//! (and read nothing meanwhile), both peers waited on each other and the connection stalled
//! until a timeout. Asserted on exact records and bytes; the waits are liveness bounds
//! (PATIENCE), not speed assertions.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;

use common::*;
use socket2::{Domain, Socket, Type};
use tcp_integration::edge_sim::record::{Record, TypedValue};

/// A device with small socket buffers on both directions: a downlink it does not read fills the
/// path at once, and uplinks the server does not read block its writes soon.
fn small_buffer_device(port: u16) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The temperatures `device` reported, in arrival order.
fn temperatures(records: &[Record], device: &str) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r.name == device)
        .flat_map(|r| r.telemetry.iter())
        .map(|t| match t.values.get("temperature") {
            Some(TypedValue::Long(v)) => *v,
            other => panic!("unexpected temperature {other:?}"),
        })
        .collect()
}

/// Waits until `device` has reported `n` temperatures; returns them.
fn wait_temperatures(h: &Harness, device: &str, n: usize) -> Vec<i64> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let got = temperatures(&h.edge().records(), device);
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{device}: only {} of {n} uplinks arrived",
            got.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn device_that_writes_without_reading_keeps_its_uplinks_read_and_others_served() {
    let port = reserve_port();
    // One shard, so both devices share it; a small send buffer so that the downlink cannot be
    // written whole while the device reads nothing.
    let h = Harness::start(
        text_example(port.port),
        port,
        &[
            ("TCPI_NR_SHARDS", "1"),
            ("TCPI_SO_SNDBUF_KIB", "4"),
            ("TCPI_SO_RCVBUF_KIB", "4"),
        ],
    );
    let mut busy = small_buffer_device(h.port.port);
    send(&mut busy, b"SN-BUSY,default,temperature,0\n");
    assert_eq!(wait_temperatures(&h, "SN-BUSY", 1), vec![0]);

    // A downlink far larger than every buffer between the server and the device.
    let blob = "x".repeat(256 * 1024);
    h.downlink("SN-BUSY", serde_json::json!({ "blob": blob }));
    busy.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut probe = [0u8; 1];
    assert_eq!(busy.peek(&mut probe).unwrap(), 1, "the write never began");

    // Now the device writes uplinks, many times what the buffers hold, reading nothing: its
    // writes only complete if the server keeps reading.
    const UPLINKS: i64 = 20_000;
    let frames: String = (1..=UPLINKS)
        .map(|i| format!("SN-BUSY,default,temperature,{i}\n"))
        .collect();
    let mut writer = busy.try_clone().unwrap();
    let (wrote_tx, wrote_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = wrote_tx.send(writer.write_all(frames.as_bytes()).map_err(|e| e.kind()));
    });
    let expected: Vec<i64> = (0..=UPLINKS).collect();
    assert_eq!(wait_temperatures(&h, "SN-BUSY", expected.len()), expected);
    assert_eq!(
        wrote_rx
            .recv_timeout(PATIENCE)
            .expect("the uplink write never completed"),
        Ok(())
    );

    // Another device on the shard is served meanwhile: its uplink arrives, its downlink too.
    let mut other = h.connect();
    send(&mut other, b"SN-OTHER,default,temperature,7\n");
    assert_eq!(wait_temperatures(&h, "SN-OTHER", 1), vec![7]);
    h.downlink("SN-OTHER", serde_json::json!({ "firmware": "other" }));
    let firmware = "{\"firmware\":\"other\"}\n";
    assert_eq!(
        read_exact_within(&mut other, firmware.len()),
        firmware.as_bytes()
    );

    // The busy device reads at last: the blob whole, then a later downlink, in order.
    h.downlink("SN-BUSY", serde_json::json!({ "n": 1 }));
    let expected = format!("{{\"blob\":\"{blob}\"}}\n{{\"n\":1}}\n");
    assert_eq!(
        String::from_utf8(read_exact_within(&mut busy, expected.len())).unwrap(),
        expected
    );
}
