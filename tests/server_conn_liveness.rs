//! Connection liveness: a device that never reads its downlinks, a device that floods, and a
//! device that only receives downlinks can neither hold up shutdown nor dodge Close or the idle
//! timeout. Everything is asserted on the device's socket and on `Server::shutdown` returning;
//! the waits are liveness bounds (PATIENCE), not speed assertions.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// A device socket with a tiny receive buffer, so that a downlink it does not read fills the
/// path at once.
fn deaf_device(port: u16) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Waits until bytes are waiting on `stream`, without consuming them.
fn wait_peekable(stream: &TcpStream) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut probe = [0u8; 1];
    assert_eq!(
        stream.peek(&mut probe).unwrap(),
        1,
        "no downlink byte arrived"
    );
}

/// The downlink the device gets for `{"blob": blob}` with the example's JSON.stringify encoder.
fn blob_downlink(blob: &str) -> Vec<u8> {
    format!("{{\"blob\":\"{blob}\"}}\n").into_bytes()
}

#[test]
fn device_that_never_reads_downlinks_does_not_block_shutdown() {
    let port = reserve_port();
    let mut h = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_SO_SNDBUF_KIB", "4")],
    );
    let mut device = deaf_device(h.port.port);
    send(&mut device, b"SN-DEAF,default,temperature,1\n");
    h.wait_records(1);
    let blob = "x".repeat(128 * 1024);
    for _ in 0..4 {
        h.downlink("SN-DEAF", serde_json::json!({ "blob": blob }));
    }
    // The first write has begun; 128 KiB cannot fit the buffers of a device that reads
    // nothing, so the connection task is stuck in it now.
    wait_peekable(&device);

    h.shutdown_within_patience();

    // The device sees the close: what it can still read is a strict prefix of the first
    // downlink, then EOF.
    device.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    device.read_to_end(&mut got).unwrap();
    let expected = blob_downlink(&blob);
    assert!(!got.is_empty());
    assert!(got.len() < expected.len(), "got {} bytes", got.len());
    assert_eq!(got, expected[..got.len()]);
}

/// A device writing frames as fast as it can, from its own thread, until stopped or closed.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(mut writer: TcpStream, frame: &'static [u8]) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        // Large writes into a large send buffer: the kernel keeps the server's receive queue
        // topped up from the send queue even while this thread is not scheduled.
        let _ = socket2::SockRef::from(&writer).set_send_buffer_size(4 << 20);
        let chunk = frame.repeat((1 << 20) / frame.len());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The TEXT example with a decoder that spins a while per frame: the server then converts
/// slower than a flooding device writes, so every read of the flood comes back full.
fn slow_text_example(port: u16) -> tcp_integration::edge_sim::definition::IntegrationDefinition {
    let mut json: serde_json::Value =
        serde_json::from_str(tcp_integration::edge_sim::EXAMPLE_TEXT_JSON).unwrap();
    let decoder = &mut json["uplinkConverter"]["configuration"]["decoder"];
    let slow = format!(
        "for (var spin = 0; spin < 20000; spin++) {{}}\n{}",
        decoder.as_str().unwrap()
    );
    *decoder = serde_json::Value::String(slow);
    example(&json.to_string(), port)
}

#[test]
fn flooding_device_still_gets_its_downlink_and_shutdown_closes_it() {
    let port = reserve_port();
    // A receive buffer far larger than one read: the kernel never lets it run low.
    let mut h = Harness::start(
        slow_text_example(port.port),
        port,
        &[("TCPI_SO_RCVBUF_KIB", "1024")],
    );
    let mut device = h.connect();
    send(&mut device, b"SN-FLOOD,default,temperature,1\n");
    h.wait_records(1);
    let _flood = Flood::start(
        device.try_clone().unwrap(),
        b"SN-FLOOD,default,temperature,2\n",
    );
    // Let the flood fill the socket so every read comes back full.
    std::thread::sleep(Duration::from_millis(200));

    h.downlink("SN-FLOOD", serde_json::json!({"firmware": "flood"}));
    let firmware = br#"{"firmware":"flood"}"#;
    let bytes = read_exact_within(&mut device, firmware.len() + 1);
    assert_eq!(bytes, [&firmware[..], b"\n"].concat());

    h.shutdown_within_patience();
    // The server closed the connection while the device kept sending.
    device.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    match device.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes {rest:?}"),
        // Unread flood data on the server side turns its close into a reset.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn downlinks_do_not_restart_the_idle_timer() {
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_IDLE_TIMEOUT_SECS", "1")],
    );
    let mut device = h.connect();
    send(&mut device, b"SN-QUIET,default,temperature,1\n");
    h.wait_records(1);
    let downlink = br#"{"firmware":"quiet"}"#;
    let one = downlink.len() + 1;

    // The device only reads: everything until EOF.
    let (eof_tx, eof_rx) = mpsc::channel();
    let mut reader = device.try_clone().unwrap();
    // Longer than the loop below: the loop's deadline reports the failure.
    reader.set_read_timeout(Some(PATIENCE * 2)).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = eof_tx.send(reader.read_to_end(&mut got).map(|_| got));
    });

    // Downlinks keep coming, far more often than the idle timeout; the device sends nothing.
    let deadline = Instant::now() + PATIENCE;
    let got = loop {
        h.downlink("SN-QUIET", serde_json::json!({"firmware": "quiet"}));
        match eof_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => break result.expect("device read failed"),
            Err(mpsc::RecvTimeoutError::Timeout) => assert!(
                Instant::now() < deadline,
                "the connection was never idle-closed while downlinks kept coming"
            ),
            Err(e) => panic!("{e}"),
        }
    };
    // Downlinks were written up to the close, whole, and nothing else.
    assert!(got.len() >= one, "no downlink arrived before the close");
    assert_eq!(
        got.len() % one,
        0,
        "a downlink was cut: {} bytes",
        got.len()
    );
    for chunk in got.chunks(one) {
        assert_eq!(chunk, [&downlink[..], b"\n"].concat());
    }
}
