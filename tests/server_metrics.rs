//! The `--metrics-listen` endpoint: a scrape over real HTTP shows what the server did, in the
//! Prometheus text format. One test per binary: the counters are process-wide, so the values
//! asserted here are exactly this test's traffic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Harness, PATIENCE, reserve_port, text_example};

/// `GET /metrics` with a plain HTTP/1.1 request; returns (status line, content type, body).
fn scrape(addr: std::net::SocketAddr) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The value of an unlabelled metric in a Prometheus text body.
fn value(body: &str, name: &str) -> Option<i64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn scrape_counts_the_frames_records_and_errors_of_this_run() {
    let port = reserve_port();
    let harness = Harness::start(
        text_example(port.port),
        port,
        &[("TCPI_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let addr = harness
        .server
        .as_ref()
        .unwrap()
        .metrics_addr()
        .expect("metrics are served when metrics.listen is set");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // Two good frames around one longer than the example's maxFrameLength (128).
    let mut sent = b"SN-002,default,temperature,25.7\n".to_vec();
    sent.extend_from_slice(&[b'x'; 200]);
    sent.extend_from_slice(b"\nSN-003,default,humidity,69\n");
    let mut device = harness.connect();
    device.write_all(&sent).unwrap();
    let records = harness.wait_records(2);
    assert_eq!(records.len(), 2);

    // Acks are counted when the batch's response arrives, shortly after edge-sim stored it.
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let (status, content_type, body) = scrape(addr);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        if value(&body, "tcpi_records_acked_total") == Some(2)
            && value(&body, "tcpi_framing_errors_total") == Some(1)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "metrics never settled:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(value(&body, "tcpi_frames_total"), Some(2), "{body}");
    assert_eq!(value(&body, "tcpi_convert_errors_total"), Some(0), "{body}");
    assert_eq!(
        value(&body, "tcpi_records_converted_total"),
        Some(2),
        "{body}"
    );
    assert_eq!(
        value(&body, "tcpi_bytes_read_total"),
        Some(sent.len() as i64),
        "{body}"
    );
    // The harness's readiness probe is the first connection; it closed at once.
    assert_eq!(
        value(&body, "tcpi_connections_accepted_total"),
        Some(2),
        "{body}"
    );
    assert_eq!(
        value(&body, "tcpi_connections_closed_total"),
        Some(1),
        "{body}"
    );
    assert_eq!(value(&body, "tcpi_connections_open"), Some(1), "{body}");
    assert_eq!(
        value(&body, "tcpi_session_connects_total"),
        Some(1),
        "{body}"
    );
    assert!(
        body.contains("# TYPE tcpi_frames_total counter\n"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE tcpi_connections_open gauge\n"),
        "{body}"
    );

    // Anything else is not found; the endpoint stops with the server.
    let mut other = TcpStream::connect(addr).unwrap();
    other.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        other,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    other.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    drop(device);
    drop(harness);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the metrics endpoint outlived the server"
    );
}

#[test]
fn a_taken_metrics_address_fails_start_up_with_the_address_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let err = tcp_integration::metrics::http::MetricsEndpoint::start(addr, stopped)
        .err()
        .expect("binding a taken address fails");
    assert!(
        err.to_string()
            .contains(&format!("cannot bind the metrics endpoint to {addr}")),
        "{err:#}"
    );
}
