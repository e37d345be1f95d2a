//! Edge outage under load, end to end: several devices keep sending while the edge emulator is
//! shut down for a few seconds and a new one is started on the same port. Every record any
//! device wrote arrives (sequence accounting per device), in order of first arrival, and the
//! duplicates stay within the README's bound: at most `inflight_batches × batch_max_records`
//! per lost session.
//!
//! Scale chosen for a shared 2-core test machine: 4 devices, one frame per millisecond each,
//! a 4 s outage (the 10 s under the load generator is a manual run of `loadgen`).

mod common;
mod spool_e2e_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use spool_e2e_support::*;
use tcp_integration::edge_sim::{EdgeSim, EdgeSimHandle, Record};
use tcp_integration::metrics::{self, Counter};

const NR_DEVICES: usize = 4;
const SEND_PAUSE: Duration = Duration::from_millis(1);
const OUTAGE: Duration = Duration::from_secs(4);
const INFLIGHT_BATCHES: u64 = 4;
const BATCH_MAX_RECORDS: u64 = 50;

/// Shuts `edge` down and returns every record it ever received, including ones recorded while
/// it was stopping (its record broadcast closes only when its last stream task has ended).
fn shutdown_collecting(rt: &tokio::runtime::Runtime, edge: EdgeSimHandle) -> Vec<Record> {
    let mut live = edge.subscribe();
    let mut records = edge.records();
    rt.block_on(edge.shutdown());
    rt.block_on(async {
        loop {
            match tokio::time::timeout(PATIENCE, live.recv()).await {
                Ok(Ok(record)) => {
                    if record.seq as usize > records.len() {
                        records.push(record);
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
                Ok(Err(e)) => panic!("lost track of the old edge's records: {e}"),
                Err(_) => panic!("the old edge's streams never ended"),
            }
        }
    });
    records
}

/// Starts a new emulator on `addr` (the old one's port), retrying while the port is released.
fn restart_edge(h: &Harness, addr: SocketAddr) -> EdgeSimHandle {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match h
            .rt
            .block_on(EdgeSim::start(text_example(h.port.port), addr, None, None))
        {
            Ok(edge) => return edge,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Whether every frame 0..sent of every device is in `arrivals`.
fn all_arrived(arrivals: &BTreeMap<String, Vec<i64>>, sent: &BTreeMap<String, u64>) -> bool {
    sent.iter().all(|(device, &n)| {
        let mut distinct: Vec<i64> = arrivals.get(device).cloned().unwrap_or_default();
        distinct.sort_unstable();
        distinct.dedup();
        distinct.len() as u64 == n
    })
}

#[test]
fn edge_outage_under_load_loses_nothing_and_duplicates_stay_within_the_window() {
    let port = reserve_port();
    let mut h = Harness::start(
        text_example(port.port),
        port,
        &[
            ("TCPI_INFLIGHT_BATCHES", &INFLIGHT_BATCHES.to_string()),
            ("TCPI_BATCH_MAX_RECORDS", &BATCH_MAX_RECORDS.to_string()),
        ],
    );
    let grpc = h.edge().grpc_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let devices: Vec<SendingDevice> = (0..NR_DEVICES)
        .map(|d| SendingDevice::start(h.port.port, format!("SN-OUT-{d}"), SEND_PAUSE, stop.clone()))
        .collect();

    // Traffic flows before the outage.
    h.wait_records(NR_DEVICES * 100);
    let old_records = shutdown_collecting(&h.rt, h.edge.take().unwrap());
    std::thread::sleep(OUTAGE);
    let records_while_down = metrics::get(Counter::RecordsSpooled);
    h.edge = Some(restart_edge(&h, grpc));
    // Traffic keeps flowing after the new edge is up, then the devices stop.
    let resumed_at = h.edge().records().len();
    let deadline = Instant::now() + PATIENCE;
    while h.edge().records().len() < resumed_at + NR_DEVICES * 100 {
        assert!(Instant::now() < deadline, "the new edge received nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let sent: BTreeMap<String, u64> = devices
        .into_iter()
        .map(|d| {
            let (name, sent, error) = d.join();
            assert_eq!(error, None, "devices are never refused");
            (name, sent)
        })
        .collect();

    let deadline = Instant::now() + PATIENCE * 2;
    let (arrivals, nr_new) = loop {
        let new_records = h.edge().records();
        let all: Vec<Record> = old_records.iter().chain(&new_records).cloned().collect();
        let arrivals = arrivals_by_device(&all);
        if all_arrived(&arrivals, &sent) {
            break (arrivals, new_records.len());
        }
        assert!(
            Instant::now() < deadline,
            "records lost: sent {sent:?}, distinct arrived {:?}",
            arrivals
                .iter()
                .map(|(d, a)| (d, first_occurrences(a).len()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // The outage really happened under load: records were spooled while no edge was up, and
    // the old edge saw only part of the traffic.
    assert!(
        records_while_down > old_records.len() as u64,
        "spooled {records_while_down}, old edge got {}",
        old_records.len()
    );
    assert!(nr_new > 0);
    assert_eq!(
        arrivals.keys().cloned().collect::<Vec<_>>(),
        sent.keys().cloned().collect::<Vec<_>>(),
        "no record of an unknown device"
    );
    let mut nr_duplicates = 0u64;
    for (device, &n) in &sent {
        let got = &arrivals[device];
        // Zero loss, nothing invented, and replay kept each device's order.
        assert_eq!(
            first_occurrences(got),
            (0..n as i64).collect::<Vec<_>>(),
            "{device}: first arrivals are 0..{n} in order"
        );
        nr_duplicates += got.len() as u64 - n;
    }
    let lost_sessions =
        metrics::get(Counter::SessionDisconnects) + metrics::get(Counter::AckTimeouts);
    assert!(lost_sessions >= 1, "the server never noticed the outage");
    let bound = lost_sessions * INFLIGHT_BATCHES * BATCH_MAX_RECORDS;
    assert!(
        nr_duplicates <= bound,
        "{nr_duplicates} duplicates exceed the bound {bound} ({lost_sessions} lost sessions)"
    );
    eprintln!(
        "sent {sent:?}; old edge {} records, new edge {nr_new}; {nr_duplicates} duplicates \
         (bound {bound}, {lost_sessions} lost sessions)",
        old_records.len()
    );
}
