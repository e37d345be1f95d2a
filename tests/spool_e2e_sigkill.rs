//! SIGKILL under load with `--spool-fsync every`, end to end with the real binary: while Edge
//! holds its acknowledgements, devices keep sending; the process is killed with SIGKILL
//! mid-stream and started again on the same spool directory. Every record the spool had
//! accepted when the process died is delivered after the restart, in order per device.
//!
//! "Accepted" is the README's guarantee: a record is in the spool (appended, and with `every`
//! fsynced, before it is sent). The test reads the spool's segment files itself after the
//! kill — that set is exactly what the restart must replay; frames the devices wrote that never
//! reached the spool were not accepted and are not owed.

mod common;
mod spool_e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use spool_e2e_support::*;
use tcp_integration::config::local::keys;
use tcp_integration::edge_sim::EdgeSim;
use tcp_integration::uplink::spool::{Spool, SpoolOptions};

const NR_DEVICES: usize = 3;
/// Records the spool must hold before the kill (the devices are still sending then).
const MIN_ACCEPTED: usize = 1500;

/// Starts `tcp-integration run` against edge-sim at `edge`, logging to `log`.
fn start_binary(edge: SocketAddr, device_port: u16, spool: &Path, log: &Path) -> Child {
    let def = text_example(device_port);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcp-integration"));
    for key in keys::ALL {
        for var in key.env {
            cmd.env_remove(var);
        }
    }
    let log_file = File::create(log).unwrap();
    cmd.arg("run")
        .env("INTEGRATION_ROUTING_KEY", &def.routing_key)
        .env("INTEGRATION_SECRET", &def.secret)
        .env("RPC_HOST", edge.ip().to_string())
        .env("RPC_PORT", edge.port().to_string())
        .env("TCPI_SPOOL_DIR", spool)
        .env("TCPI_SPOOL_FSYNC", "every")
        .env("TCPI_BIND_ADDRESS", "127.0.0.1")
        .env("TCPI_NR_SHARDS", "1")
        .env("TCPI_RECONNECT_BASE_MS", "100")
        .env("TCPI_BATCH_LINGER_MS", "1")
        .env("TCPI_INFLIGHT_BATCHES", "4")
        .env("TCPI_BATCH_MAX_RECORDS", "50")
        .env("TCPI_LOG_LEVEL", "info")
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap()
}

fn wait_listening(child: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "run exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the binary never served devices");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (device, seq) of every record in the spool's segment files, per device in spool order.
fn spooled_by_device(dir: &Path) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (_, records) in spooled_records(dir) {
        for record in records {
            out.entry(record.name.clone())
                .or_default()
                .push(seq_of(&record));
        }
    }
    out
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

#[test]
fn sigkill_with_fsync_every_loses_no_accepted_record() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = reserve_port();
    let edge = rt
        .block_on(EdgeSim::start(
            text_example(port.port),
            "127.0.0.1:0".parse().unwrap(),
            None,
            None,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (log1, log2) = (dir.path().join("run1.log"), dir.path().join("run2.log"));

    edge.set_ack_paused(true);
    let mut first = start_binary(edge.grpc_addr(), port.port, &spool, &log1);
    wait_listening(&mut first, port.port, &log1);
    let stop = Arc::new(AtomicBool::new(false));
    let devices: Vec<SendingDevice> = (0..NR_DEVICES)
        .map(|d| {
            SendingDevice::start(
                port.port,
                format!("SN-KILL-{d}"),
                Duration::from_millis(1),
                stop.clone(),
            )
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while spooled_records(&spool).len() < MIN_ACCEPTED {
        assert!(
            Instant::now() < deadline,
            "the spool never held {MIN_ACCEPTED} records: {}",
            std::fs::read_to_string(&log1).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed while the devices are still sending.
    signal(&first, libc::SIGKILL);
    let status = first.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let written: BTreeMap<String, u64> = devices
        .into_iter()
        .map(|d| {
            let (name, sent, _error) = d.join();
            (name, sent)
        })
        .collect();

    let accepted = spooled_by_device(&spool);
    let nr_accepted: usize = accepted.values().map(Vec::len).sum();
    assert!(nr_accepted >= MIN_ACCEPTED);
    for (device, seqs) in &accepted {
        // The spool takes each device's frames in order, without gaps.
        assert_eq!(
            *seqs,
            (0..seqs.len() as i64).collect::<Vec<_>>(),
            "{device}"
        );
        assert!(seqs.len() as u64 <= written[device], "{device}");
    }

    let replay_from = edge.records().len();
    let mut second = start_binary(edge.grpc_addr(), port.port, &spool, &log2);
    edge.set_ack_paused(false);
    let deadline = Instant::now() + PATIENCE;
    let replayed = loop {
        let replayed = arrivals_by_device(&edge.records()[replay_from..]);
        let complete = accepted.iter().all(|(device, seqs)| {
            replayed.get(device).is_some_and(|got| {
                got.iter().copied().collect::<BTreeSet<i64>>().len() == seqs.len()
            })
        });
        if complete {
            break replayed;
        }
        if let Some(status) = second.try_wait().unwrap() {
            panic!(
                "restarted run exited with {status}: {}",
                std::fs::read_to_string(&log2).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "accepted records missing after the restart: accepted {:?}, replayed {:?}",
            accepted
                .iter()
                .map(|(d, s)| (d, s.len()))
                .collect::<Vec<_>>(),
            replayed
                .iter()
                .map(|(d, s)| (d, first_occurrences(s).len()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Exactly the accepted records, each device in order (first arrivals), nothing else.
    assert_eq!(
        replayed.keys().collect::<Vec<_>>(),
        accepted.keys().collect::<Vec<_>>()
    );
    for (device, seqs) in &accepted {
        assert_eq!(&first_occurrences(&replayed[device]), seqs, "{device}");
    }
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(
        log.contains(&format!("nr_pending_records: {nr_accepted}")),
        "the restart found every accepted record pending: {log}"
    );

    eprintln!(
        "written {written:?}; accepted {nr_accepted}; {} records before the kill, {} after",
        replay_from,
        edge.records().len() - replay_from
    );
    // Orderly stop (it drains the window); the spool is left fully acknowledged.
    signal(&second, libc::SIGTERM);
    assert!(second.wait().unwrap().success());
    let (_spool, report) = Spool::open(SpoolOptions::new(&spool)).unwrap();
    assert_eq!(report.nr_pending_records, 0, "{report:?}");
    rt.block_on(edge.shutdown());
}
