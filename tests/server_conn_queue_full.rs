//! A full per-connection downlink queue is counted as `tcpi_downlinks_conn_queue_full_total`,
//! not as a full shard inbox. Its own test binary: the counters are process-wide.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use common::*;
use socket2::{Domain, Socket, Type};
use tcp_integration::metrics::{self, Counter};

/// Writes queued per connection before the shard hands downlinks back (control.rs).
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
    // The queue takes CONN_COMMANDS_MAX more; the last three find it full.
    for n in 0..CONN_COMMANDS_MAX + 3 {
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
    let text = metrics::render_prometheus();
    assert!(
        text.contains(&format!(
            "\ntcpi_downlinks_conn_queue_full_total {}\n",
            queue_full + 3
        )),
        "{text}"
    );
}
