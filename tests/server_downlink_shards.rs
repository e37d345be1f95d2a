//! A device that reconnects on the other shard still gets the downlink held for it: routing and
//! holding live in the uplink core, not in a shard. Which shard took a connection is read from
//! the server's own `device connected` debug line (its `shard` and `peer` fields), captured by
//! this binary's tracing subscriber; so this binary holds this one test.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// Every log line the server wrote, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tcp_integration::shard::connection=debug",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

/// The shard index in the server's `device connected` line for the device at `peer`, once
/// that line is written.
fn shard_of(peer: SocketAddr) -> usize {
    let needle = format!(" peer={peer} ");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = String::from_utf8_lossy(&capture().0.lock().unwrap()).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("device connected") && l.contains(&needle));
        if let Some(line) = line {
            let shard = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("shard="))
                .unwrap_or_else(|| panic!("no shard field in {line:?}"));
            return shard.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no `device connected` line for {peer}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Connects until the server puts the connection on a shard other than `not_on` (the kernel
/// picks a SO_REUSEPORT listener by a hash of the connection's addresses, so each attempt has
/// an even chance); returns it and its shard.
fn connect_elsewhere(h: &Harness, not_on: usize) -> (TcpStream, usize) {
    for _ in 0..64 {
        let conn = h.connect();
        let shard = shard_of(conn.local_addr().unwrap());
        if shard != not_on {
            return (conn, shard);
        }
        close_and_wait_eof(conn);
    }
    panic!("64 connections in a row landed on shard {not_on}");
}

#[test]
fn device_reconnecting_on_another_shard_still_gets_its_downlink() {
    capture();
    let port = reserve_port();
    let h = Harness::start(text_example(port.port), port, &[("TCPI_NR_SHARDS", "2")]);
    let mut uplinks = 0;
    let mut shards_used = [0usize; 2];
    for round in 0..4 {
        let mut conn = h.connect();
        let first_shard = shard_of(conn.local_addr().unwrap());
        send(
            &mut conn,
            format!("SN-MOVE,default,round,{round}\n").as_bytes(),
        );
        uplinks += 1;
        h.wait_records(uplinks);
        // The server's close (EOF) comes after it deregistered the connection: the downlink
        // below finds no live connection and is held.
        close_and_wait_eof(conn);
        let firmware = format!(r#"{{"firmware":"{round}"}}"#);
        h.downlink(
            "SN-MOVE",
            serde_json::json!({ "firmware": round.to_string() }),
        );
        let (mut again, second_shard) = connect_elsewhere(&h, first_shard);
        shards_used[first_shard] += 1;
        shards_used[second_shard] += 1;
        send(
            &mut again,
            format!("SN-MOVE,default,round,{round}\n").as_bytes(),
        );
        uplinks += 1;
        let bytes = read_exact_within(&mut again, firmware.len() + 1);
        assert_eq!(bytes, format!("{firmware}\n").as_bytes(), "round {round}");
        h.wait_records(uplinks);
    }
    // Every round moved the device between the two shards.
    assert_eq!(shards_used, [4, 4]);
}
