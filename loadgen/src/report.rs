//! The final report: one struct holding every figure of a run, serialised as the `--json`
//! file and rendered as the table on stdout. Each field is documented in `loadgen/README.md`;
//! a test checks that the JSON holds every documented field.
//!
//! Invariant: the report is assembled once, after the run; nothing here does I/O.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::accounting::{LatencySummary, LossSummary};

/// Every figure of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `sink+devices`, `sink-only`, `devices-only` or `idle`.
    pub mode: String,
    pub format: String,
    /// `rate`, `max` or `idle`.
    pub schedule: String,
    /// Per-connection frames/s of the open-loop schedule (0 for max/idle).
    pub rate_per_connection: f64,
    pub frames_per_write: u64,
    pub procs: u32,
    pub threads: u32,
    pub connections_requested: u64,
    pub connections_established: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub warmup_s: f64,
    /// Length of the measured window.
    pub window_s: f64,
    /// Frames the devices wrote over the whole run (warm-up included).
    pub sent_frames: u64,
    /// Frames written during the measured window.
    pub sent_in_window: u64,
    pub sent_fps: f64,
    /// Records received by the sink over the whole run (duplicates included).
    pub records_received: u64,
    /// Records that arrived during the measured window.
    pub delivered_in_window: u64,
    pub delivered_fps: f64,
    pub uplink_msgs: u64,
    pub records_per_uplink_msg: f64,
    pub malformed_records: u64,
    /// Loss accounting; `null` when the sink or the devices are not in this run.
    pub loss: Option<LossSummary>,
    /// End-to-end latency (intended send time → sink), records sent inside the window.
    pub latency: LatencySummary,
    /// How late the generator wrote frames relative to their intended time (rate mode).
    pub send_lag: LatencySummary,
    pub downlink: Option<DownlinkReport>,
    pub server: Option<ServerReport>,
    /// The sink's simulated Edge outage (`--sink-outage`); `null` without one.
    pub outage: Option<OutageReport>,
}

/// A simulated Edge outage: the sink killed at `at_s` and back `for_s` later. Instants are
/// seconds after the devices started sending.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutageReport {
    /// Planned cut, seconds after sending started.
    pub at_s: f64,
    /// Planned length, seconds.
    pub for_s: f64,
    /// How long before the cut the sink stopped acknowledging (still counting), ms.
    pub unacked_ms: f64,
    /// When the server went away (streams cut, port closed); `null` if it never did.
    pub started_s: Option<f64>,
    /// When the sink listened again; `null` if the run ended first.
    pub ended_s: Option<f64>,
    /// Records counted before the cut (duplicates included).
    pub records_before: u64,
    /// Of those, records counted while acknowledgements were withheld.
    pub records_unacked: u64,
    /// UplinkMsgs counted while acknowledgements were withheld.
    pub uplink_msgs_unacked: u64,
    /// TCP connections reset at the cut.
    pub connections_cut: u64,
    /// Records counted after the sink listened again (duplicates included).
    pub records_after: u64,
    /// CONNECTs accepted over the whole run (before and after the outage).
    pub sessions_accepted: u64,
    /// From listening again to the integration's accepted CONNECT, seconds.
    pub reconnect_s: Option<f64>,
}

/// Downlink round trips (sink send → device socket).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DownlinkReport {
    pub rate_per_s: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub rtt: LatencySummary,
}

/// The server process, read from /proc.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    pub pid: u32,
    /// utime + stime over the measured window.
    pub cpu_s: f64,
    /// `cpu_s / window_s × 100`.
    pub cpu_pct_of_core: f64,
    /// `delivered_in_window / cpu_s`.
    pub frames_per_cpu_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub peak_rss_kib: u64,
    /// Idle mode: `(rss_after − rss_before) / connections_established`, bytes.
    pub rss_per_connection_bytes: Option<f64>,
}

fn latency_row(out: &mut String, label: &str, s: &LatencySummary) {
    let _ = writeln!(
        out,
        "{label:<22} n={} min={} p50={} p90={} p99={} p99.9={} p99.99={} max={} (µs)",
        s.count, s.min_us, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.p9999_us, s.max_us
    );
}

impl Report {
    /// The human-readable table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, label: &str, value: String| {
            let _ = writeln!(out, "{label:<22} {value}");
        };
        row(
            &mut out,
            "mode",
            format!(
                "{} / {} / {} (rate {}/s per conn, {} frames/write), {} proc(s), {} thread(s)",
                self.mode,
                self.format,
                self.schedule,
                self.rate_per_connection,
                self.frames_per_write,
                self.procs,
                self.threads
            ),
        );
        row(
            &mut out,
            "connections",
            format!(
                "{} of {} (connect errors {}, io errors {})",
                self.connections_established,
                self.connections_requested,
                self.connect_errors,
                self.io_errors
            ),
        );
        row(
            &mut out,
            "window",
            format!(
                "{:.2} s after {:.2} s warm-up",
                self.window_s, self.warmup_s
            ),
        );
        row(
            &mut out,
            "sent",
            format!(
                "{} frames ({} in window, {:.0} frames/s)",
                self.sent_frames, self.sent_in_window, self.sent_fps
            ),
        );
        row(
            &mut out,
            "delivered",
            format!(
                "{} records ({} in window, {:.0} frames/s; {} UplinkMsgs, {:.1} records/msg, {} malformed)",
                self.records_received,
                self.delivered_in_window,
                self.delivered_fps,
                self.uplink_msgs,
                self.records_per_uplink_msg,
                self.malformed_records
            ),
        );
        if let Some(loss) = &self.loss {
            row(
                &mut out,
                "loss",
                format!(
                    "lost {} of {} ({} devices), duplicates {} ({} devices), unexpected {}",
                    loss.lost,
                    loss.sent,
                    loss.devices_with_loss,
                    loss.duplicates,
                    loss.devices_with_duplicates,
                    loss.unexpected
                ),
            );
        }
        latency_row(&mut out, "latency", &self.latency);
        latency_row(&mut out, "send lag", &self.send_lag);
        if let Some(dl) = &self.downlink {
            row(
                &mut out,
                "downlinks",
                format!(
                    "sent {} received {} lost {} at {}/s",
                    dl.sent, dl.received, dl.lost, dl.rate_per_s
                ),
            );
            latency_row(&mut out, "downlink rtt", &dl.rtt);
        }
        if let Some(o) = &self.outage {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.2}"));
            row(
                &mut out,
                "sink outage",
                format!(
                    "planned {:.2} s + {:.2} s ({:.0} ms unacked before), cut at {} s, back at {} s, \
                     {} connections cut",
                    o.at_s,
                    o.for_s,
                    o.unacked_ms,
                    opt(o.started_s),
                    opt(o.ended_s),
                    o.connections_cut
                ),
            );
            row(
                &mut out,
                "outage records",
                format!(
                    "{} before ({} in {} UplinkMsgs unacked), {} after; {} sessions accepted, \
                     reconnect after {} s",
                    o.records_before,
                    o.records_unacked,
                    o.uplink_msgs_unacked,
                    o.records_after,
                    o.sessions_accepted,
                    opt(o.reconnect_s)
                ),
            );
        }
        if let Some(s) = &self.server {
            row(
                &mut out,
                "server cpu",
                format!(
                    "{:.2} s = {:.1}% of a core, {:.0} frames per CPU-second",
                    s.cpu_s, s.cpu_pct_of_core, s.frames_per_cpu_s
                ),
            );
            let per_conn = s
                .rss_per_connection_bytes
                .map(|b| format!(", {b:.0} B per connection"))
                .unwrap_or_default();
            row(
                &mut out,
                "server memory",
                format!(
                    "RSS {} → {} KiB, peak {} KiB{per_conn}",
                    s.rss_before_kib, s.rss_after_kib, s.peak_rss_kib
                ),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_loss_and_server_rows() {
        let report = Report {
            mode: "sink+devices".into(),
            loss: Some(LossSummary {
                sent: 10,
                lost: 2,
                ..Default::default()
            }),
            server: Some(ServerReport {
                rss_per_connection_bytes: Some(3900.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let table = report.table();
        assert!(table.contains("lost 2 of 10"), "{table}");
        assert!(table.contains("3900 B per connection"), "{table}");
        assert!(!table.contains("downlink rtt"));
    }
}
