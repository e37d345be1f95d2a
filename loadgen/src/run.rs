//! One measured run: wait for the integration, connect the devices, warm up, measure, stop,
//! drain, and assemble the [`Report`]. Also the live progress line.
//!
//! Timeline (all instants from [`crate::clock`]):
//! `integration connected → devices connected → sending starts → warm-up → window start →
//! window end → devices stop → drain until every sent frame arrived or nothing new for the
//! drain time`. With a sink outage planned, the sink is killed and restarted on its own timer
//! (from when sending starts) while the devices keep sending. Throughput counts arrivals inside the window; latency counts frames whose
//! intended send time is inside the window (including their arrival during the drain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::accounting::{DeviceLedger, LatencySummary};
use crate::clock::now_us;
use crate::devices::{FleetConfig, FleetReport, Schedule, merged_downlink_rtt, merged_send_lag};
use crate::procfs::{self, ProcSample};
use crate::procs::{Devices, connect_timeout};
use crate::report::{DownlinkReport, Report, ServerReport};
use crate::sink::{OutagePlan, Sink, SinkProbe};

/// Everything a run needs besides the sink.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub fleet: FleetConfig,
    pub procs: u32,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Longest wait for stragglers after the devices stopped.
    pub drain: Duration,
    /// Downlinks per second over all devices (sink → integration → devices); 0 = off.
    pub downlink_rate: f64,
    pub server_pid: Option<u32>,
    /// How long to wait for the integration to connect to the sink and open its device port.
    pub integration_wait: Duration,
    /// Print the per-second progress line on stderr.
    pub progress: bool,
    /// Kill the sink for a while, counted from when the devices start sending (needs a sink).
    pub sink_outage: Option<OutagePlan>,
}

/// Waits for the integration's CONNECT; fails early when the server process has gone.
async fn wait_for_integration(sink: &Sink, opts: &RunOptions) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + opts.integration_wait;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if sink
            .wait_for_integration(remaining.min(Duration::from_secs(1)))
            .await
        {
            return Ok(());
        }
        if let Some(pid) = opts.server_pid
            && procfs::sample(pid).is_err()
        {
            bail!("the server process {pid} exited before connecting to the sink");
        }
        if remaining.is_zero() {
            bail!(
                "no integration connected to the sink at {} within {:?} (check RPC_HOST/RPC_PORT, \
                 routing key and secret; rejected sessions: {})",
                sink.local_addr(),
                opts.integration_wait,
                sink.sessions_rejected()
            );
        }
    }
}

/// Waits until something accepts TCP connections on `target`.
pub async fn wait_for_port(target: SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(target).await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn schedule_figures(schedule: Schedule) -> (&'static str, f64, u64) {
    match schedule {
        Schedule::Rate { per_connection_fps } => ("rate", per_connection_fps, 1),
        Schedule::Max { frames_per_write } => ("max", 0.0, frames_per_write as u64),
        Schedule::Idle => ("idle", 0.0, 0),
    }
}

/// Runs the devices against `opts.fleet.target`, counting at `sink` when given.
pub async fn run(opts: &RunOptions, sink: Option<&Sink>) -> anyhow::Result<Report> {
    if let Some(sink) = sink {
        wait_for_integration(sink, opts).await?;
        if !wait_for_port(opts.fleet.target, opts.integration_wait).await {
            bail!(
                "the integration connected but nothing listens on {} after {:?}",
                opts.fleet.target,
                opts.integration_wait
            );
        }
    }
    let server_before = opts.server_pid.map(procfs::sample).transpose()?;

    let mut devices = Devices::start(&opts.fleet, opts.procs, opts.threads)?;
    let stop_progress = Arc::new(AtomicBool::new(false));
    let connected = devices.wait_connected(connect_timeout(&opts.fleet)).await;
    if connected.established == 0 && opts.fleet.connections > 0 {
        let _ = devices.stop().await;
        bail!("no device could connect to {}", opts.fleet.target);
    }
    devices.start_sending().await?;
    let outage_task = match (sink, opts.sink_outage) {
        (Some(sink), Some(plan)) => Some(tokio::spawn(sink.outage(plan, now_us()))),
        _ => None,
    };
    let idle = opts.fleet.schedule == Schedule::Idle;
    if let Some(sink) = sink {
        sink.set_downlink_rate(opts.downlink_rate);
    }
    let devices = Arc::new(tokio::sync::Mutex::new(Some(devices)));
    let progress_task = opts.progress.then(|| {
        tokio::spawn(progress_loop(
            devices.clone(),
            sink.map(Sink::probe),
            stop_progress.clone(),
        ))
    });

    tokio::time::sleep(opts.warmup).await;
    let window_start_us = now_us();
    let sent_at_start = progress_sent(&devices).await;
    if let Some(sink) = sink {
        sink.tally().start_window(window_start_us);
    }
    let server_start = opts.server_pid.map(procfs::sample).transpose()?;
    tokio::time::sleep(opts.duration).await;
    let window_end_us = now_us();
    if let Some(sink) = sink {
        sink.tally().end_window(window_end_us);
    }
    let server_end = opts.server_pid.map(procfs::sample).transpose()?;
    let sent_at_end = progress_sent(&devices).await;
    if let Some(sink) = sink
        && opts.downlink_rate > 0.0
    {
        sink.set_downlink_rate(0.0);
        // Let downlinks in flight reach the devices before they close.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(task) = progress_task {
        let _ = task.await;
    }
    let taken = devices
        .lock()
        .await
        .take()
        .context("devices already stopped")?;
    let fleet_reports = taken.stop().await?;
    let sent_total: u64 = fleet_reports.iter().flat_map(|r| r.sent.iter()).sum();
    if let Some(sink) = sink {
        let sent: Vec<(String, u64)> = fleet_reports
            .iter()
            .flat_map(|r| r.sent_by_name(&opts.fleet.name_prefix))
            .collect();
        drain(sink, &sent, opts.drain).await;
    }
    if let Some(task) = outage_task {
        // Still running only when the run ended before the sink came back.
        task.abort();
        let _ = task.await;
    }

    let window_s = (window_end_us - window_start_us) as f64 / 1e6;
    let mut report = Report {
        mode: match (sink.is_some(), idle) {
            (_, true) => "idle",
            (true, false) => "sink+devices",
            (false, false) => "devices-only",
        }
        .to_string(),
        format: opts.fleet.format.as_str().to_string(),
        procs: opts.procs.max(1),
        threads: opts.threads as u32,
        connections_requested: opts.fleet.connections,
        warmup_s: opts.warmup.as_secs_f64(),
        window_s,
        sent_frames: sent_total,
        sent_in_window: sent_at_end.saturating_sub(sent_at_start),
        ..Default::default()
    };
    let (schedule, rate, frames_per_write) = schedule_figures(opts.fleet.schedule);
    report.schedule = schedule.to_string();
    report.rate_per_connection = rate;
    report.frames_per_write = frames_per_write;
    report.sent_fps = report.sent_in_window as f64 / window_s;
    fill_fleet_figures(&mut report, &fleet_reports);
    if let Some(sink) = sink {
        fill_sink_figures(
            &mut report,
            sink,
            &fleet_reports,
            &opts.fleet.name_prefix,
            opts.downlink_rate,
        );
        report.outage = sink.outage_report();
    }
    if let (Some(pid), Some(before), Some(start), Some(end)) =
        (opts.server_pid, server_before, server_start, server_end)
    {
        report.server = Some(server_figures(pid, &report, before, start, end, idle));
    }
    Ok(report)
}

async fn progress_sent(devices: &tokio::sync::Mutex<Option<Devices>>) -> u64 {
    devices
        .lock()
        .await
        .as_ref()
        .map(|d| d.progress().sent)
        .unwrap_or_default()
}

/// Waits until the sink holds every frame each device counted as sent, or nothing new arrived
/// for `quiet`. Frames beyond a device's count (a write cut short by the stop) do not stand in
/// for missing ones: counting them would end the drain while records are still on their way.
async fn drain(sink: &Sink, sent: &[(String, u64)], quiet: Duration) {
    let mut last = sink.tally().records;
    let mut last_change = tokio::time::Instant::now();
    loop {
        let (records, done) = {
            let t = sink.tally();
            (t.records, every_sent_frame_arrived(&t.ledger, sent))
        };
        if done {
            return;
        }
        if records != last {
            last = records;
            last_change = tokio::time::Instant::now();
        } else if last_change.elapsed() >= quiet {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the ledger holds every seq `0..sent` of every device.
fn every_sent_frame_arrived(ledger: &DeviceLedger, sent: &[(String, u64)]) -> bool {
    ledger
        .reconcile(sent.iter().map(|(n, s)| (n.as_str(), *s)))
        .lost
        == 0
}

fn fill_fleet_figures(report: &mut Report, fleets: &[FleetReport]) {
    report.connections_established = fleets.iter().map(|r| r.established).sum();
    report.connect_errors = fleets.iter().map(|r| r.connect_errors).sum();
    report.io_errors = fleets.iter().map(|r| r.io_errors).sum();
    report.send_lag = LatencySummary::from_histogram(&merged_send_lag(fleets));
}

fn fill_sink_figures(
    report: &mut Report,
    sink: &Sink,
    fleets: &[FleetReport],
    prefix: &str,
    downlink_rate: f64,
) {
    let sent: Vec<(String, u64)> = fleets.iter().flat_map(|r| r.sent_by_name(prefix)).collect();
    let tally = sink.tally();
    report.records_received = tally.records;
    report.delivered_in_window = tally.delivered_in_window;
    report.delivered_fps = tally.delivered_in_window as f64 / report.window_s;
    report.uplink_msgs = tally.uplink_msgs;
    report.records_per_uplink_msg = if tally.uplink_msgs > 0 {
        tally.records as f64 / tally.uplink_msgs as f64
    } else {
        0.0
    };
    report.malformed_records = tally.malformed;
    report.loss = Some(
        tally
            .ledger
            .reconcile(sent.iter().map(|(n, s)| (n.as_str(), *s))),
    );
    report.latency = LatencySummary::from_histogram(&tally.latency);
    drop(tally);
    if downlink_rate > 0.0 {
        let received: u64 = fleets.iter().map(|r| r.downlinks_received).sum();
        let sent = sink.downlinks_sent();
        report.downlink = Some(DownlinkReport {
            rate_per_s: downlink_rate,
            sent,
            received,
            lost: sent.saturating_sub(received),
            rtt: LatencySummary::from_histogram(&merged_downlink_rtt(fleets)),
        });
    }
}

/// Server CPU over the window and memory, from /proc samples.
pub fn server_figures(
    pid: u32,
    report: &Report,
    before: ProcSample,
    start: ProcSample,
    end: ProcSample,
    idle: bool,
) -> ServerReport {
    let cpu_s = (end.cpu_s - start.cpu_s).max(0.0);
    let frames = if report.delivered_in_window > 0 {
        report.delivered_in_window
    } else {
        report.sent_in_window
    };
    ServerReport {
        pid,
        cpu_s,
        cpu_pct_of_core: if report.window_s > 0.0 {
            cpu_s / report.window_s * 100.0
        } else {
            0.0
        },
        frames_per_cpu_s: if cpu_s > 0.0 {
            frames as f64 / cpu_s
        } else {
            0.0
        },
        rss_before_kib: before.rss_kib,
        rss_after_kib: end.rss_kib,
        peak_rss_kib: end.hwm_kib,
        rss_per_connection_bytes: (idle && report.connections_established > 0).then(|| {
            (end.rss_kib as f64 - before.rss_kib as f64) * 1024.0
                / report.connections_established as f64
        }),
    }
}

/// Prints one line per second: delivered frames/s, p99, connections, errors.
async fn progress_loop(
    devices: Arc<tokio::sync::Mutex<Option<Devices>>>,
    sink: Option<SinkProbe>,
    stop: Arc<AtomicBool>,
) {
    let started = tokio::time::Instant::now();
    let mut last_sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let progress = devices
            .lock()
            .await
            .as_ref()
            .map(|d| d.progress())
            .unwrap_or_default();
        let sent_per_s = progress.sent.saturating_sub(last_sent);
        last_sent = progress.sent;
        let delivered = sink.as_ref().map(|s| s.tally().take_interval());
        let delivered_text = match delivered {
            Some((records, latency)) => {
                format!("{records:>9} frames/s  p99 {:>7} µs", latency.p99_us)
            }
            None => String::from("(no sink)"),
        };
        eprintln!(
            "[{:>4}s] {delivered_text}  sent {sent_per_s:>9}/s  conns {:>6}  errors {}",
            started.elapsed().as_secs(),
            progress.open,
            progress.errors
        );
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    #[test]
    fn frames_beyond_a_devices_count_do_not_stand_in_for_missing_ones() {
        let sent = vec![("SN-1".to_string(), 3), ("SN-2".to_string(), 2)];
        let mut ledger = DeviceLedger::default();
        for seq in [0, 1, 2] {
            ledger.record("SN-1", seq);
        }
        ledger.record("SN-2", 0);
        // SN-2's write of seqs 2..=4 was cut short by the stop: they arrive, but seq 1 has not.
        for seq in [2, 3, 4] {
            ledger.record("SN-2", seq);
        }
        assert!(
            ledger.distinct() >= 5,
            "more distinct records than sent in all"
        );
        assert!(!every_sent_frame_arrived(&ledger, &sent));
        ledger.record("SN-2", 1);
        assert!(every_sent_frame_arrived(&ledger, &sent));
    }
}
