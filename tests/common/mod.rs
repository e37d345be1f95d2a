//! Shared harness for the server tests: the real edge emulator and the real server, in-process,
//! on loopback ports picked at run time.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tcp_integration::demo::settings_for;
use tcp_integration::edge_sim::definition::IntegrationDefinition;
use tcp_integration::edge_sim::record::{Record, TypedValue};
use tcp_integration::edge_sim::{
    EXAMPLE_BINARY_JSON, EXAMPLE_JSON_JSON, EXAMPLE_TEXT_JSON, EdgeSim, EdgeSimHandle,
};
use tcp_integration::server::{Server, ServerOptions};

/// Generous upper bound for things that normally take milliseconds; only reached on failure.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A port on 127.0.0.1 held (bound with SO_REUSEPORT, not listening) so nobody else takes it
/// while the server binds it too.
pub struct ReservedPort {
    pub port: u16,
    _socket: Socket,
}

pub fn reserve_port() -> ReservedPort {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    ReservedPort {
        port,
        _socket: socket,
    }
}

pub fn example(json: &str, port: u16) -> IntegrationDefinition {
    let mut def = IntegrationDefinition::from_json_str(json).unwrap();
    def.configuration["clientConfiguration"]["port"] = serde_json::json!(port);
    def
}

pub fn text_example(port: u16) -> IntegrationDefinition {
    example(EXAMPLE_TEXT_JSON, port)
}

pub fn json_example(port: u16) -> IntegrationDefinition {
    example(EXAMPLE_JSON_JSON, port)
}

pub fn binary_example(port: u16) -> IntegrationDefinition {
    example(EXAMPLE_BINARY_JSON, port)
}

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub edge: Option<EdgeSimHandle>,
    pub server: Option<Server>,
    pub port: ReservedPort,
    pub spool: tempfile::TempDir,
}

impl Harness {
    /// Runs `Server::shutdown` on its own thread and panics unless it returns, successfully,
    /// within PATIENCE (a liveness bound, not a speed assertion).
    pub fn shutdown_within_patience(&mut self) {
        let server = self.server.take().expect("server running");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(server.shutdown().map_err(|e| e.to_string()));
        });
        let result = done_rx
            .recv_timeout(PATIENCE)
            .expect("Server::shutdown did not return within PATIENCE");
        result.expect("shutdown failed");
    }

    /// Starts edge-sim with `definition` and the server against it (with extra `TCPI_*`
    /// settings), and waits until the server serves devices.
    pub fn start(
        definition: IntegrationDefinition,
        port: ReservedPort,
        extra: &[(&str, &str)],
    ) -> Harness {
        // `TEST_LOG=debug cargo test ...` shows the server's log lines.
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
                .with_test_writer()
                .try_init();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let edge = rt
            .block_on(EdgeSim::start(
                definition.clone(),
                "127.0.0.1:0".parse().unwrap(),
                None,
                None,
            ))
            .unwrap();
        let spool = tempfile::tempdir().unwrap();
        let mut env: Vec<(&str, String)> = vec![
            ("TCPI_SPOOL_DIR", spool.path().display().to_string()),
            ("TCPI_BIND_ADDRESS", "127.0.0.1".to_owned()),
            ("TCPI_BATCH_LINGER_MS", "1".to_owned()),
            ("TCPI_RECONNECT_BASE_MS", "100".to_owned()),
            ("TCPI_SHARD_CORES", String::new()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, (*v).to_owned()));
        }
        env.retain(|(_, v)| !v.is_empty());
        let settings = settings_for(edge.grpc_addr(), &definition, &env).unwrap();
        let mut options = ServerOptions::from_settings(&settings);
        // Tests share the machine with other tests: no pinning.
        options.shard_cores.clear();
        options.uplink_core = None;
        let mut server = Server::start(options).unwrap();
        assert!(
            server.wait_serving(PATIENCE),
            "server never got its configuration"
        );
        let harness = Harness {
            rt,
            edge: Some(edge),
            server: Some(server),
            port,
            spool,
        };
        harness.wait_listening(harness.port.port);
        harness
    }

    pub fn edge(&self) -> &EdgeSimHandle {
        self.edge.as_ref().unwrap()
    }

    /// Waits until a device can connect to `port` (the shards bind asynchronously).
    pub fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "nothing listens on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port.port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Waits until edge-sim has at least `n` records; returns all of them.
    pub fn wait_records(&self, n: usize) -> Vec<Record> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let records = self.edge().records();
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} records, got {}: {:?}",
                records.len(),
                records.iter().rev().take(3).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Posts a downlink through the emulator to the connected integration.
    pub fn downlink(&self, device: &str, data: serde_json::Value) {
        let request: tcp_integration::edge_sim::DownlinkRequest = serde_json::from_value(
            serde_json::json!({"deviceName": device, "deviceType": "default", "msgType": "ATTRIBUTES_UPDATED", "data": data, "metadata": {}}),
        )
        .unwrap();
        self.edge().post_downlink(&request).unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown();
        }
        if let Some(edge) = self.edge.take() {
            self.rt.block_on(edge.shutdown());
        }
    }
}

/// Reads from `stream` until `expected.len()` bytes arrived (or PATIENCE passed).
pub fn read_exact_within(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).unwrap();
    buf
}

pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// The latest value of `key` across `records` of `device`.
pub fn latest<'a>(records: &'a [Record], device: &str, key: &str) -> Option<&'a TypedValue> {
    records
        .iter()
        .filter(|r| r.name == device)
        .flat_map(|r| r.telemetry.iter())
        .filter_map(|t| t.values.get(key))
        .next_back()
}

/// Closes the device side of `stream` and waits for the server's close (EOF): by then the
/// server's connection task has ended and deregistered the connection, so what the test does
/// next (e.g. a downlink) finds the device without a live connection.
pub fn close_and_wait_eof(mut stream: TcpStream) {
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "unexpected {n} bytes before the close: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server never closed the connection: {e}"),
    }
}

/// Waits until connecting to `port` is refused: nothing listens there any more.
pub fn wait_refused(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            Err(e) => panic!("connecting to port {port} failed otherwise: {e}"),
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the server has closed `stream` (EOF or reset); fails on data or on PATIENCE.
pub fn wait_closed_by_server(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "unexpected {n} bytes instead of a close: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server never closed the connection: {e}"),
    }
}

/// Frames written by [`write_until_spool_blocks`].
pub struct BlockedWrites {
    /// Frames started (the last one possibly only in part).
    pub sent: usize,
    /// The unwritten rest of the last frame.
    pub pending: Vec<u8>,
}

/// Writes `<device>,default,seq,<n>` TEXT frames on the non-blocking `device` until the server
/// has provably stopped reading: the writes fail with WouldBlock while the spool (of
/// `spool_max_bytes`) is full and the uplink core appends nothing (`RecordsSpooled` and the
/// spool gauge stay put) across 12 consecutive polls 25 ms apart. Any accepted byte or append
/// starts the count again. Panics after 2 × PATIENCE.
pub fn write_until_spool_blocks(
    device: &mut TcpStream,
    device_name: &str,
    spool_max_bytes: i64,
) -> BlockedWrites {
    use tcp_integration::metrics::{self, Counter, Gauge};
    use tcp_integration::uplink::spool::segment::SEGMENT_HEADER_BYTES;
    // The uplink core appends in chunks of at most a quarter of max_bytes (or one record), each
    // counted with a segment header: a spool that refused a chunk holds more than this.
    let full_spool_bytes = spool_max_bytes - spool_max_bytes / 4 - SEGMENT_HEADER_BYTES as i64;
    const STABLE_POLLS: u32 = 12;
    let mut sent = 0usize;
    let mut pending = Vec::new();
    let mut stable_polls = 0;
    let mut last_state = (u64::MAX, i64::MIN);
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        assert!(
            Instant::now() < deadline,
            "device writes never blocked on a full spool (sent {sent} frames, spooled {}, \
             spool {} bytes)",
            metrics::get(Counter::RecordsSpooled),
            metrics::gauge(Gauge::SpoolBytes)
        );
        if pending.is_empty() {
            pending = format!("{device_name},default,seq,{sent}\n").into_bytes();
            sent += 1;
        }
        match device.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
                stable_polls = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let state = (
                    metrics::get(Counter::RecordsSpooled),
                    metrics::gauge(Gauge::SpoolBytes),
                );
                let full = state.1 > full_spool_bytes;
                stable_polls = if full && state == last_state {
                    stable_polls + 1
                } else {
                    0
                };
                last_state = state;
                if stable_polls == STABLE_POLLS {
                    return BlockedWrites { sent, pending };
                }
                // Spaced so that the polls span several of the uplink core's gauge updates.
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}
