//! Simulated devices: one TCP connection and one task per device, writing frames on an
//! open-loop schedule (or as fast as possible), optionally reading downlinks back.
//!
//! Invariants:
//! * Device `i` of a fleet is named `device_name(prefix, first_index + i)` and writes seqs
//!   `0, 1, 2, …`; `sent[i]` is the number of frames whose `write_all` completed, so the
//!   device wrote exactly seqs `0..sent[i]`.
//! * Rate mode is open loop: frame `k` of a device is due at `t0 + offset + k / rate` and carries
//!   that *intended* time as `sent_us`, however late the write happens; frames that fell behind
//!   are written together in one catch-up write.
//! * A fleet stops in two steps: `Stopping` lets every in-progress write finish (so counts stay
//!   exact), `Abort` (after a grace period) cancels writes stuck on a dead server.
//! * A device reads its downlinks on a task of its own, independent of its writes, and keeps
//!   reading after it stopped writing until the server closes the connection (a close with
//!   unread bytes would reset the connection and lose the frames still queued).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounting::{add_pairs, histogram_to_pairs, new_latency_histogram};
use crate::clock::now_us;
use crate::frames::{Format, device_name, encode_frame, parse_downlink_line};

/// Most frames one catch-up write carries (bounds the per-device buffer).
const MAX_CATCH_UP_FRAMES: u64 = 1024;
/// How long `Stopping` waits for in-progress writes before cancelling them.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Downlink read buffer per device.
const DOWNLINK_READ_BYTES: usize = 4096;

/// How devices send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// Open loop, this many frames/s per connection.
    Rate { per_connection_fps: f64 },
    /// As fast as the socket takes them, `frames_per_write` frames per write.
    Max { frames_per_write: u32 },
    /// Connect and hold; send nothing.
    Idle,
}

/// One fleet of devices (a whole run, or one worker process's share).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetConfig {
    /// Global index of this fleet's first device (names and schedule phases are global).
    pub first_index: u64,
    pub connections: u64,
    pub name_prefix: String,
    pub format: Format,
    pub target: SocketAddr,
    /// Source addresses, device `i` uses `source_ips[i % len]`; empty = kernel's choice.
    pub source_ips: Vec<Ipv4Addr>,
    pub schedule: Schedule,
    /// Connects per second for this fleet; 0 = no pacing.
    pub connect_rate: f64,
    /// Read and time downlinks on every connection.
    pub read_downlinks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Sending { start_us: u64 },
    Stopping,
    Abort,
}

#[derive(Debug)]
struct Shared {
    config: FleetConfig,
    sent: Vec<AtomicU64>,
    open: AtomicU64,
    established: AtomicU64,
    connect_errors: AtomicU64,
    io_errors: AtomicU64,
    attempts_done: AtomicU64,
    downlinks_received: AtomicU64,
    downlink_rtt: Mutex<Histogram<u64>>,
    send_lag: Mutex<Histogram<u64>>,
    phase: watch::Sender<Phase>,
}

/// Live counters of a fleet (progress line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetProgress {
    /// Connections open now.
    pub open: u64,
    pub established: u64,
    pub errors: u64,
    pub sent: u64,
    pub attempts_done: u64,
}

/// What a fleet reports at the end (also the worker → parent message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    pub first_index: u64,
    /// Frames written by each device, in index order.
    pub sent: Vec<u64>,
    pub established: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub downlinks_received: u64,
    /// Downlink RTT histogram as (µs, count) pairs.
    pub downlink_rtt: Vec<(u64, u64)>,
    /// Send-lag histogram as (µs, count) pairs.
    pub send_lag: Vec<(u64, u64)>,
}

impl FleetReport {
    /// (device name, frames sent) for every device of the fleet.
    pub fn sent_by_name(&self, prefix: &str) -> Vec<(String, u64)> {
        self.sent
            .iter()
            .enumerate()
            .map(|(i, &n)| (device_name(prefix, self.first_index + i as u64), n))
            .collect()
    }

    pub fn downlink_rtt_histogram(&self) -> Histogram<u64> {
        let mut h = new_latency_histogram();
        add_pairs(&mut h, &self.downlink_rtt);
        h
    }
}

/// Read-only view of a fleet's live counters.
#[derive(Debug, Clone)]
pub struct FleetProbe(Arc<Shared>);

impl FleetProbe {
    pub fn progress(&self) -> FleetProgress {
        let s = &self.0;
        FleetProgress {
            open: s.open.load(Ordering::Relaxed),
            established: s.established.load(Ordering::Relaxed),
            errors: s.connect_errors.load(Ordering::Relaxed) + s.io_errors.load(Ordering::Relaxed),
            sent: s.sent.iter().map(|n| n.load(Ordering::Relaxed)).sum(),
            attempts_done: s.attempts_done.load(Ordering::Relaxed),
        }
    }
}

/// A running fleet of device tasks.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    spawner: JoinHandle<Vec<JoinHandle<()>>>,
}

impl Fleet {
    /// Starts connecting the fleet's devices (paced by `connect_rate`). Needs a tokio runtime.
    pub fn spawn(config: FleetConfig) -> Fleet {
        let (phase, _) = watch::channel(Phase::Connecting);
        let shared = Arc::new(Shared {
            sent: (0..config.connections).map(|_| AtomicU64::new(0)).collect(),
            config,
            open: AtomicU64::new(0),
            established: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            attempts_done: AtomicU64::new(0),
            downlinks_received: AtomicU64::new(0),
            downlink_rtt: Mutex::new(new_latency_histogram()),
            send_lag: Mutex::new(new_latency_histogram()),
            phase,
        });
        let spawner = tokio::spawn(spawn_devices(shared.clone()));
        Fleet { shared, spawner }
    }

    /// Waits until every device has connected or failed, or `timeout` passed.
    pub async fn wait_connected(&self, timeout: Duration) -> FleetProgress {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.shared.attempts_done.load(Ordering::Relaxed) < self.shared.config.connections
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.progress()
    }

    /// Starts the sending schedule on every connected device.
    pub fn start_sending(&self) {
        self.shared
            .phase
            .send_replace(Phase::Sending { start_us: now_us() });
    }

    pub fn progress(&self) -> FleetProgress {
        self.probe().progress()
    }

    /// A cheap handle for reading live counters from another task.
    pub fn probe(&self) -> FleetProbe {
        FleetProbe(self.shared.clone())
    }

    /// Stops sending, closes the connections and reports.
    pub async fn stop(self) -> FleetReport {
        self.shared.phase.send_replace(Phase::Stopping);
        let tasks: Vec<JoinHandle<()>> = self.spawner.await.unwrap_or_default();
        let shared = self.shared.clone();
        let abort_timer = tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            shared.phase.send_replace(Phase::Abort);
        });
        for task in tasks {
            let _ = task.await;
        }
        abort_timer.abort();
        let s = &self.shared;
        let lock = |h: &Mutex<Histogram<u64>>| {
            histogram_to_pairs(&h.lock().unwrap_or_else(|e| e.into_inner()))
        };
        FleetReport {
            first_index: s.config.first_index,
            sent: s.sent.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
            established: s.established.load(Ordering::Relaxed),
            connect_errors: s.connect_errors.load(Ordering::Relaxed),
            io_errors: s.io_errors.load(Ordering::Relaxed),
            downlinks_received: s.downlinks_received.load(Ordering::Relaxed),
            downlink_rtt: lock(&s.downlink_rtt),
            send_lag: lock(&s.send_lag),
        }
    }
}

async fn spawn_devices(shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    let n = shared.config.connections;
    let mut tasks = Vec::with_capacity(n as usize);
    let start = tokio::time::Instant::now();
    let mut phase = shared.phase.subscribe();
    for i in 0..n {
        if shared.config.connect_rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / shared.config.connect_rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = phase.wait_for(|p| matches!(p, Phase::Stopping | Phase::Abort)) => {}
            }
        }
        if matches!(*phase.borrow(), Phase::Stopping | Phase::Abort) {
            // Devices never started count as failed attempts, not as silent ones.
            shared.connect_errors.fetch_add(n - i, Ordering::Relaxed);
            shared.attempts_done.fetch_add(n - i, Ordering::Relaxed);
            break;
        }
        tasks.push(tokio::spawn(device(shared.clone(), i)));
    }
    tasks
}

/// Connects from `source` (any port) to `target`.
async fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(ip) = source {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(ip.into(), 0).into())?;
    }
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT: let `connect` pick the port per (source, target) pair, so one
/// source address serves its whole ephemeral range for each target.
fn set_bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value is a live c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn device(shared: Arc<Shared>, i: u64) {
    let cfg = &shared.config;
    let global_index = cfg.first_index + i;
    let source = (!cfg.source_ips.is_empty())
        .then(|| cfg.source_ips[(global_index % cfg.source_ips.len() as u64) as usize]);
    let stream = match connect(cfg.target, source).await {
        Ok(stream) => stream,
        Err(_) => {
            shared.connect_errors.fetch_add(1, Ordering::Relaxed);
            shared.attempts_done.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    shared.established.fetch_add(1, Ordering::Relaxed);
    shared.open.fetch_add(1, Ordering::Relaxed);
    shared.attempts_done.fetch_add(1, Ordering::Relaxed);
    let (reader, mut writer) = stream.into_split();
    let downlink_task = cfg
        .read_downlinks
        .then(|| tokio::spawn(read_downlinks(shared.clone(), reader)));

    let mut phase = shared.phase.subscribe();
    let start_us = match phase
        .wait_for(|p| !matches!(p, Phase::Connecting))
        .await
        .map(|p| *p)
    {
        Ok(Phase::Sending { start_us }) => Some(start_us),
        _ => None,
    };
    if let Some(start_us) = start_us {
        let name = device_name(&cfg.name_prefix, global_index);
        let result = match cfg.schedule {
            Schedule::Rate { per_connection_fps } => {
                send_at_rate(&shared, i, &name, &mut writer, start_us, per_connection_fps).await
            }
            Schedule::Max { frames_per_write } => {
                send_max(&shared, i, &name, &mut writer, frames_per_write.max(1)).await
            }
            Schedule::Idle => Ok(()),
        };
        if result.is_err() {
            shared.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Hold the connection until the fleet stops (idle mode measures exactly this).
    let _ = phase
        .wait_for(|p| matches!(p, Phase::Stopping | Phase::Abort))
        .await;
    let _ = writer.shutdown().await;
    // The reader, if any, keeps the socket open and reading until the server closes it:
    // closing a socket with unread downlinks makes the kernel send a reset, which throws away
    // the frames still queued on both sides and would show up as uplink loss.
    drop(writer);
    drop(downlink_task);
    shared.open.fetch_sub(1, Ordering::Relaxed);
}

fn is_stopping(phase: &watch::Receiver<Phase>) -> bool {
    matches!(*phase.borrow(), Phase::Stopping | Phase::Abort)
}

/// `write_all`, cancelled only by `Abort` (a stuck server); Ok(false) = cancelled.
async fn write_frames(
    phase: &mut watch::Receiver<Phase>,
    writer: &mut OwnedWriteHalf,
    buf: &[u8],
) -> std::io::Result<bool> {
    tokio::select! {
        r = writer.write_all(buf) => r.map(|()| true),
        _ = phase.wait_for(|p| matches!(p, Phase::Abort)) => Ok(false),
    }
}

/// A per-device phase offset in [0, 1): golden-ratio spacing spreads devices evenly over the
/// period whatever their count, so 10,000 devices at 1/s do not all fire in the same tick.
fn phase_fraction(global_index: u64) -> f64 {
    (global_index as f64 * 0.618_033_988_749_895).fract()
}

async fn send_at_rate(
    shared: &Shared,
    i: u64,
    name: &str,
    writer: &mut OwnedWriteHalf,
    start_us: u64,
    per_connection_fps: f64,
) -> std::io::Result<()> {
    let format = shared.config.format;
    let period_us = 1e6 / per_connection_fps;
    let t0_us = start_us as f64 + phase_fraction(shared.config.first_index + i) * period_us;
    let due = |k: u64| (t0_us + k as f64 * period_us) as u64;
    let mut phase = shared.phase.subscribe();
    let mut buf = Vec::with_capacity(128);
    let mut k = 0u64;
    while !is_stopping(&phase) {
        let now = now_us();
        if due(k) > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros(due(k) - now)) => {}
                _ = phase.changed() => {}
            }
            continue;
        }
        buf.clear();
        let first_due = due(k);
        let mut n = 0;
        while n < MAX_CATCH_UP_FRAMES && due(k) <= now {
            encode_frame(format, &mut buf, name, k, due(k));
            k += 1;
            n += 1;
        }
        if !write_frames(&mut phase, writer, &buf).await? {
            return Ok(());
        }
        shared.sent[i as usize].store(k, Ordering::Relaxed);
        let lag_us = now_us().saturating_sub(first_due);
        shared
            .send_lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(lag_us);
    }
    Ok(())
}

async fn send_max(
    shared: &Shared,
    i: u64,
    name: &str,
    writer: &mut OwnedWriteHalf,
    frames_per_write: u32,
) -> std::io::Result<()> {
    let format = shared.config.format;
    let mut phase = shared.phase.subscribe();
    let mut buf = Vec::with_capacity(128 * frames_per_write as usize);
    let mut k = 0u64;
    while !is_stopping(&phase) {
        buf.clear();
        let sent_us = now_us();
        for _ in 0..frames_per_write {
            encode_frame(format, &mut buf, name, k, sent_us);
            k += 1;
        }
        if !write_frames(&mut phase, writer, &buf).await? {
            return Ok(());
        }
        shared.sent[i as usize].store(k, Ordering::Relaxed);
        // A socket that never fills would otherwise keep this task on the thread.
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Reads LF-terminated downlinks and records `now − sink_us` for each.
async fn read_downlinks(shared: Arc<Shared>, mut reader: OwnedReadHalf) {
    let mut buf = Vec::with_capacity(DOWNLINK_READ_BYTES);
    let mut chunk = [0u8; DOWNLINK_READ_BYTES];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let arrival_us = now_us();
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        while let Some(lf) = buf[consumed..].iter().position(|&b| b == b'\n') {
            let line = &buf[consumed..consumed + lf];
            consumed += lf + 1;
            if let Some(stamp) = parse_downlink_line(line) {
                shared.downlinks_received.fetch_add(1, Ordering::Relaxed);
                shared
                    .downlink_rtt
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(arrival_us.saturating_sub(stamp.sink_us));
            }
        }
        buf.drain(..consumed);
        if buf.len() > DOWNLINK_READ_BYTES * 16 {
            buf.clear(); // not our protocol; do not grow without bound
        }
    }
}

/// Merges the reports of several fleets' send-lag histograms.
pub fn merged_send_lag(reports: &[FleetReport]) -> Histogram<u64> {
    let mut h = new_latency_histogram();
    for r in reports {
        add_pairs(&mut h, &r.send_lag);
    }
    h
}

/// Merges the reports' downlink RTT histograms.
pub fn merged_downlink_rtt(reports: &[FleetReport]) -> Histogram<u64> {
    let mut h = new_latency_histogram();
    for r in reports {
        add_pairs(&mut h, &r.downlink_rtt);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_fractions_stay_in_unit_interval_and_differ() {
        let a = phase_fraction(1);
        let b = phase_fraction(2);
        assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
        assert!((a - b).abs() > 0.1);
    }

    #[tokio::test]
    async fn fleet_writes_text_frames_and_counts_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            sock.read_to_end(&mut all).await.unwrap();
            all
        });
        let fleet = Fleet::spawn(FleetConfig {
            first_index: 4,
            connections: 1,
            name_prefix: "T-".into(),
            format: Format::Text,
            target,
            source_ips: vec![Ipv4Addr::new(127, 0, 0, 2)],
            schedule: Schedule::Max {
                frames_per_write: 3,
            },
            connect_rate: 0.0,
            read_downlinks: false,
        });
        assert_eq!(
            fleet
                .wait_connected(Duration::from_secs(5))
                .await
                .established,
            1
        );
        fleet.start_sending();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let report = fleet.stop().await;
        let bytes = reader.await.unwrap();
        let lines: Vec<&[u8]> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len() as u64, report.sent[0]);
        assert_eq!(report.sent[0] % 3, 0);
        let last = crate::frames::parse_text_record(lines[lines.len() - 1]).unwrap();
        assert_eq!(last.device_name, "T-000005");
        assert_eq!(last.seq, report.sent[0] - 1);
        assert_eq!(report.sent_by_name("T-")[0].0, "T-000005");
    }
}
