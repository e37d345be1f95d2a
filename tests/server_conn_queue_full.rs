//! A full per-connection downlink queue (a live device that does not read) drops further
//! downlinks, counted as `tcpi_downlinks_conn_queue_full_total` (not as a full shard inbox, and
//! not held: holding them would bring them back with the device's next uplink); what was
//! queued still reaches the device, in order. Its own test binary: the counters are
//! process-wide.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use common::*;
use socket2::{Domain, Socket, Type};
use tcp_integration::metrics::{self, Counter};

/// Downlinks queued per connection and not yet written whole before the shard drops more
/// (control.rs).
const CONN_COMMANDS_MAX: usize = 64;

#[test]
fn full_connection_queue_has_its_own_counter() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_SO_SNDBUF_KIB", "4")],
    );
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], h.port.port)).into())
        .unwrap();
    let mut device: TcpStream = socket.into();
    send(&mut device, b"SN-FULL,default,temperature,1\n");
    h.wait_records(1);

    // A downlink far larger than the socket buffers: its write blocks, the device reads nothing.
    let blob = "x".repeat(128 * 1024);
    h.downlink("SN-FULL", serde_json::json!({ "blob": blob }));
    device.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut probe = [0u8; 1];
    assert_eq!(device.peek(&mut probe).unwrap(), 1, "the write never began");

    let inbox_full = metrics::get(Counter::DownlinksInboxFull);
    let queue_full = metrics::get(Counter::DownlinksConnQueueFull);
    let held = metrics::get(Counter::DownlinksHeld);
    // The blob being written still counts: the queue takes CONN_COMMANDS_MAX - 1 more and the
    // last three find it full.
    let taken = CONN_COMMANDS_MAX - 1;
    for n in 0..taken + 3 {
        h.downlink("SN-FULL", serde_json::json!({ "n": n }));
    }
    let deadline = Instant::now() + PATIENCE;
    while metrics::get(Counter::DownlinksConnQueueFull) < queue_full + 3 {
        assert!(
            Instant::now() < deadline,
            "the connection queue never filled"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        metrics::get(Counter::DownlinksConnQueueFull),
        queue_full + 3
    );
    assert_eq!(metrics::get(Counter::DownlinksInboxFull), inbox_full);
    assert_eq!(metrics::get(Counter::DownlinksHeld), held);
    let text = metrics::render_prometheus();
    assert!(
        text.contains(&format!(
            "\ntcpi_downlinks_conn_queue_full_total {}\n",
            queue_full + 3
        )),
        "{text}"
    );

    // The device reads again: the blob, then the queued ones in order; the dropped ones never
    // come (the next downlink is the one sent after them).
    let mut expected = format!("{{\"blob\":\"{blob}\"}}\n");
    for n in 0..taken {
        expected.push_str(&format!("{{\"n\":{n}}}\n"));
    }
    assert_eq!(
        String::from_utf8(read_exact_within(&mut device, expected.len())).unwrap(),
        expected
    );
    h.downlink("SN-FULL", serde_json::json!({ "n": "after" }));
    let after = "{\"n\":\"after\"}\n";
    assert_eq!(
        read_exact_within(&mut device, after.len()),
        after.as_bytes()
    );
}
