//! Spreading devices over processes: the open-files limit, the capacity check, and `--procs K`
//! worker processes (this binary re-executed with the hidden `--worker` role).
//!
//! Worker protocol (one JSON object per line): the parent passes the worker's [`FleetConfig`]
//! as the `--worker` argument; the worker prints `{"event":"connected",…}` once its devices
//! have connected, `{"event":"progress",…}` every second, and `{"event":"final","report":…}`
//! after it stopped; it reads `go` (start sending) and `stop` from stdin. EOF on stdin = stop,
//! so a dying parent never leaves workers running.
//!
//! Invariant: the fleets of a run cover device indices `0..connections` exactly once.

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

use crate::devices::{Fleet, FleetConfig, FleetProgress, FleetReport};

/// Descriptors a process keeps for itself besides device sockets (stdio, epoll, the sink's
/// listener and gRPC connection, /proc reads, pipes to workers).
pub const RESERVED_FDS: u64 = 32;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill / read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapacityError {
    #[error(
        "--connections {connections} over {procs} process(es) needs {per_proc} sockets per process, \
         but one process can hold about {per_process_max} (RLIMIT_NOFILE {nofile_limit}, \
         {reserved} kept for other descriptors); use --procs {needed_procs} or more"
    )]
    TooManyConnections {
        connections: u64,
        procs: u32,
        per_proc: u64,
        per_process_max: u64,
        nofile_limit: u64,
        reserved: u64,
        needed_procs: u64,
    },
}

/// Checks that `connections` split over `procs` processes fit under `nofile_limit` each.
pub fn check_capacity(
    connections: u64,
    procs: u32,
    nofile_limit: u64,
) -> Result<(), CapacityError> {
    let procs = procs.max(1);
    let per_proc = connections.div_ceil(procs as u64);
    let per_process_max = nofile_limit.saturating_sub(RESERVED_FDS);
    if per_proc <= per_process_max {
        return Ok(());
    }
    Err(CapacityError::TooManyConnections {
        connections,
        procs,
        per_proc,
        per_process_max,
        nofile_limit,
        reserved: RESERVED_FDS,
        needed_procs: connections.div_ceil(per_process_max.max(1)),
    })
}

/// Splits a fleet into `procs` consecutive index ranges.
pub fn split_fleet(config: &FleetConfig, procs: u32) -> Vec<FleetConfig> {
    let procs = procs.max(1) as u64;
    let per = config.connections.div_ceil(procs);
    (0..procs)
        .map(|p| {
            let first = (p * per).min(config.connections);
            let last = ((p + 1) * per).min(config.connections);
            FleetConfig {
                first_index: config.first_index + first,
                connections: last - first,
                connect_rate: config.connect_rate / procs as f64,
                ..config.clone()
            }
        })
        .filter(|c| c.connections > 0)
        .collect()
}

/// A line a worker prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Connected { progress: FleetProgress },
    Progress { progress: FleetProgress },
    Final { report: FleetReport },
}

/// How long connecting may take: the paced connect time plus a minute.
pub fn connect_timeout(config: &FleetConfig) -> Duration {
    let paced_s = if config.connect_rate > 0.0 {
        config.connections as f64 / config.connect_rate
    } else {
        0.0
    };
    Duration::from_secs_f64(paced_s + 60.0)
}

fn print_event(event: &WorkerEvent) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The worker role: run one fleet under the parent's control.
pub async fn worker_main(config: FleetConfig) -> anyhow::Result<()> {
    let timeout = connect_timeout(&config);
    let fleet = Fleet::spawn(config);
    let progress = fleet.wait_connected(timeout).await;
    print_event(&WorkerEvent::Connected { progress });
    let probe = fleet.probe();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            print_event(&WorkerEvent::Progress {
                progress: probe.progress(),
            });
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "go" => fleet.start_sending(),
            "stop" => break,
            _ => {}
        }
    }
    ticker.abort();
    let report = fleet.stop().await;
    print_event(&WorkerEvent::Final { report });
    Ok(())
}

#[derive(Debug, Default)]
struct WorkerState {
    connected: Option<FleetProgress>,
    latest: FleetProgress,
}

/// A worker process seen from the parent.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    state: Arc<Mutex<WorkerState>>,
    final_report: oneshot::Receiver<FleetReport>,
}

impl Worker {
    fn spawn(config: &FleetConfig, threads: usize) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("cannot find this executable to re-run it")?;
        let spec = serde_json::to_string(config)?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--worker")
            .arg(spec)
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let state = Arc::new(Mutex::new(WorkerState::default()));
        let (final_tx, final_report) = oneshot::channel();
        let reader_state = state.clone();
        tokio::spawn(async move {
            let mut final_tx = Some(final_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(event) = serde_json::from_str::<WorkerEvent>(&line) else {
                    eprintln!("worker: unexpected output line: {line}");
                    continue;
                };
                let mut state = reader_state.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    WorkerEvent::Connected { progress } => {
                        state.connected = Some(progress);
                        state.latest = progress;
                    }
                    WorkerEvent::Progress { progress } => state.latest = progress,
                    WorkerEvent::Final { report } => {
                        if let Some(tx) = final_tx.take() {
                            let _ = tx.send(report);
                        }
                    }
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            state,
            final_report,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The devices of a run: in this process, or in worker processes.
#[derive(Debug)]
pub enum Devices {
    Local(Fleet),
    Workers(Vec<Worker>),
}

fn sum_progress(items: impl Iterator<Item = FleetProgress>) -> FleetProgress {
    items.fold(FleetProgress::default(), |a, b| FleetProgress {
        open: a.open + b.open,
        established: a.established + b.established,
        errors: a.errors + b.errors,
        sent: a.sent + b.sent,
        attempts_done: a.attempts_done + b.attempts_done,
    })
}

impl Devices {
    /// Starts the fleet here (`procs <= 1`) or over `procs` worker processes.
    pub fn start(config: &FleetConfig, procs: u32, threads: usize) -> anyhow::Result<Devices> {
        if procs <= 1 {
            return Ok(Devices::Local(Fleet::spawn(config.clone())));
        }
        let workers = split_fleet(config, procs)
            .iter()
            .map(|c| Worker::spawn(c, threads))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Devices::Workers(workers))
    }

    /// Waits until all devices connected or failed (or `timeout`).
    pub async fn wait_connected(&self, timeout: Duration) -> FleetProgress {
        match self {
            Devices::Local(fleet) => fleet.wait_connected(timeout).await,
            Devices::Workers(workers) => {
                let deadline = tokio::time::Instant::now() + timeout;
                while workers.iter().any(|w| w.state().connected.is_none())
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.progress()
            }
        }
    }

    pub async fn start_sending(&mut self) -> anyhow::Result<()> {
        match self {
            Devices::Local(fleet) => fleet.start_sending(),
            Devices::Workers(workers) => {
                for w in workers {
                    w.stdin.write_all(b"go\n").await?;
                    w.stdin.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// Live counters (workers: as of their last progress line, ≤ 1 s old).
    pub fn progress(&self) -> FleetProgress {
        match self {
            Devices::Local(fleet) => fleet.progress(),
            Devices::Workers(workers) => sum_progress(workers.iter().map(|w| w.state().latest)),
        }
    }

    /// Stops every device and collects the reports.
    pub async fn stop(self) -> anyhow::Result<Vec<FleetReport>> {
        match self {
            Devices::Local(fleet) => Ok(vec![fleet.stop().await]),
            Devices::Workers(workers) => {
                let mut reports = Vec::new();
                for mut w in workers {
                    let _ = w.stdin.write_all(b"stop\n").await;
                    let _ = w.stdin.flush().await;
                    let report = tokio::time::timeout(Duration::from_secs(30), w.final_report)
                        .await
                        .context("a worker did not report within 30 s")?
                        .context("a worker exited without its final report")?;
                    let _ = w.child.wait().await;
                    reports.push(report);
                }
                Ok(reports)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Schedule;
    use crate::frames::Format;

    #[test]
    fn capacity_error_names_limit_and_procs() {
        assert!(check_capacity(19_000, 1, 20_000).is_ok());
        let err = check_capacity(50_000, 1, 20_000).unwrap_err();
        assert_eq!(
            err,
            CapacityError::TooManyConnections {
                connections: 50_000,
                procs: 1,
                per_proc: 50_000,
                per_process_max: 19_968,
                nofile_limit: 20_000,
                reserved: RESERVED_FDS,
                needed_procs: 3,
            }
        );
        assert!(err.to_string().contains("--procs 3"));
        assert!(check_capacity(50_000, 3, 20_000).is_ok());
    }

    #[test]
    fn split_covers_every_index_once() {
        let config = FleetConfig {
            first_index: 0,
            connections: 10,
            name_prefix: "SN-".into(),
            format: Format::Text,
            target: "127.0.0.1:1".parse().unwrap(),
            source_ips: vec![],
            schedule: Schedule::Idle,
            connect_rate: 300.0,
            read_downlinks: false,
        };
        let parts = split_fleet(&config, 3);
        let ranges: Vec<(u64, u64)> = parts
            .iter()
            .map(|c| (c.first_index, c.connections))
            .collect();
        assert_eq!(ranges, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(parts[0].connect_rate, 100.0);
    }

    #[test]
    fn worker_events_are_tagged_json_lines() {
        let line = serde_json::to_string(&WorkerEvent::Progress {
            progress: FleetProgress {
                sent: 5,
                ..Default::default()
            },
        })
        .unwrap();
        assert!(line.starts_with(r#"{"event":"progress""#), "{line}");
        match serde_json::from_str::<WorkerEvent>(&line).unwrap() {
            WorkerEvent::Progress { progress } => assert_eq!(progress.sent, 5),
            other => panic!("{other:?}"),
        }
    }
}
