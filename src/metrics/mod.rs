//! Process-wide counters and gauges, and their Prometheus text rendering.
//!
//! Names come from the closed set in [`Counter`] and [`Gauge`]; labels are not free text. Hot
//! paths bump counters once per read or per batch, not per byte, so relaxed atomics are cheap
//! enough even when several shards share a cache line. `http` serves them at `/metrics`.

pub mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! closed_set {
    ($name:ident, $doc:literal, [$($variant:ident => $metric:literal, $help:literal;)*]) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant,)* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The Prometheus metric name.
            pub fn name(self) -> &'static str { match self { $($name::$variant => $metric,)* } }
            /// The Prometheus help text.
            pub fn help(self) -> &'static str { match self { $($name::$variant => $help,)* } }
        }
    };
}

closed_set!(Counter, "A monotonically increasing count.", [
    ConnectionsAccepted => "tcpi_connections_accepted_total", "Device connections accepted.";
    ConnectionsRefused => "tcpi_connections_refused_total", "Device connections closed at once because the connection limit was reached.";
    ConnectionsClosed => "tcpi_connections_closed_total", "Device connections closed.";
    ConnectionsIdleClosed => "tcpi_connections_idle_closed_total", "Device connections closed by the idle timeout.";
    BytesRead => "tcpi_bytes_read_total", "Bytes read from device sockets.";
    FramesDecoded => "tcpi_frames_total", "Frames split from device streams.";
    FramingErrors => "tcpi_framing_errors_total", "Framing errors (over-long frames, corrupted JSON streams, bad length fields).";
    ConvertErrors => "tcpi_convert_errors_total", "Frames whose uplink converter failed (throw, timeout, memory, bad result).";
    RecordsConverted => "tcpi_records_converted_total", "Device and asset records produced by the uplink converter.";
    RecordsSpooled => "tcpi_records_spooled_total", "Records appended to the uplink spool.";
    RecordsAcked => "tcpi_records_acked_total", "Records acknowledged by ThingsBoard.";
    RecordsRejected => "tcpi_records_rejected_total", "Records in batches ThingsBoard answered with success=false (kept in the dead-letter file).";
    RecordsDroppedSpoolFull => "tcpi_records_dropped_spool_full_total", "Records dropped because the spool was full under the drop-oldest policy.";
    BatchesSent => "tcpi_batches_sent_total", "UplinkMsg batches sent to ThingsBoard.";
    BatchesResent => "tcpi_batches_resent_total", "Batches sent again after a reconnect or an acknowledgement timeout.";
    AckTimeouts => "tcpi_ack_timeouts_total", "Batches not acknowledged within the acknowledgement timeout.";
    SessionConnects => "tcpi_session_connects_total", "Accepted CONNECTs to ThingsBoard.";
    SessionDisconnects => "tcpi_session_disconnects_total", "Lost ThingsBoard sessions.";
    SessionRejections => "tcpi_session_rejections_total", "CONNECTs ThingsBoard refused (bad credentials, server unavailable).";
    ConfigErrors => "tcpi_config_errors_total", "Integration or converter configurations that could not be applied.";
    DownlinksReceived => "tcpi_downlinks_received_total", "Downlink messages received from ThingsBoard.";
    DownlinksWritten => "tcpi_downlinks_written_total", "Encoded downlinks written to device sockets.";
    DownlinksHeld => "tcpi_downlinks_held_total", "Downlinks held until the device's next uplink.";
    DownlinksExpired => "tcpi_downlinks_expired_total", "Held downlinks dropped by age or by the per-device hold limit.";
    DownlinksNoConverter => "tcpi_downlinks_no_converter_total", "Downlinks dropped because no downlink converter is configured.";
    DownlinkEncodeErrors => "tcpi_downlink_encode_errors_total", "Downlinks whose encoder failed.";
    DownlinksInboxFull => "tcpi_downlinks_inbox_full_total", "Downlinks held again because a shard's inbox was full.";
    DownlinksConnQueueFull => "tcpi_downlinks_conn_queue_full_total", "Downlinks dropped because their live connection already had 64 downlinks waiting to be written (the device is not reading).";
    RecordsTooLarge => "tcpi_records_too_large_total", "Records larger than a batch (uplink.batch_max_bytes) or the spool can hold; never sent, kept in the dead-letter file.";
    StatisticsSent => "tcpi_statistics_sent_total", "Integration statistics messages (messagesCount, errorsCount, state) sent to ThingsBoard; not records, never spooled.";
    StatisticsRejected => "tcpi_statistics_rejected_total", "Statistics messages ThingsBoard answered with success=false (logged, not resent).";
]);

closed_set!(Gauge, "A value that goes up and down.", [
    ConnectionsOpen => "tcpi_connections_open", "Device connections open now.";
    SpoolBytes => "tcpi_spool_bytes", "Bytes in the uplink spool.";
    SpoolPendingRecords => "tcpi_spool_pending_records", "Records in the spool not yet acknowledged.";
    SpoolOldestPendingAgeMs => "tcpi_spool_oldest_pending_age_ms", "Age of the oldest unacknowledged record.";
    BatchesInFlight => "tcpi_batches_in_flight", "UplinkMsgs sent and not yet acknowledged (record batches and statistics messages).";
    SessionConnected => "tcpi_session_connected", "1 while the ThingsBoard session is established.";
    DownlinksHeldNow => "tcpi_downlinks_held", "Downlinks held now.";
]);

static COUNTERS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static GAUGES: [AtomicI64; 16] = [const { AtomicI64::new(0) }; 16];

/// Adds `n` to a counter.
#[inline]
pub fn add(counter: Counter, n: u64) {
    COUNTERS[counter as usize].fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
#[inline]
pub fn inc(counter: Counter) {
    add(counter, 1);
}

/// Reads a counter.
pub fn get(counter: Counter) -> u64 {
    COUNTERS[counter as usize].load(Ordering::Relaxed)
}

/// Sets a gauge.
pub fn set_gauge(gauge: Gauge, value: i64) {
    GAUGES[gauge as usize].store(value, Ordering::Relaxed);
}

/// Moves a gauge by `delta`.
pub fn add_gauge(gauge: Gauge, delta: i64) {
    GAUGES[gauge as usize].fetch_add(delta, Ordering::Relaxed);
}

/// Reads a gauge.
pub fn gauge(gauge: Gauge) -> i64 {
    GAUGES[gauge as usize].load(Ordering::Relaxed)
}

/// Renders every metric in the Prometheus text exposition format.
pub fn render_prometheus() -> String {
    let mut out = String::with_capacity(4096);
    for &c in Counter::ALL {
        let _ = writeln!(out, "# HELP {} {}", c.name(), c.help());
        let _ = writeln!(out, "# TYPE {} counter", c.name());
        let _ = writeln!(out, "{} {}", c.name(), get(c));
    }
    for &g in Gauge::ALL {
        let _ = writeln!(out, "# HELP {} {}", g.name(), g.help());
        let _ = writeln!(out, "# TYPE {} gauge", g.name());
        let _ = writeln!(out, "{} {}", g.name(), gauge(g));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_sets_fit_their_storage() {
        assert!(Counter::ALL.len() <= COUNTERS.len());
        assert!(Gauge::ALL.len() <= GAUGES.len());
    }

    #[test]
    fn prometheus_text_names_every_metric_once() {
        inc(Counter::AckTimeouts);
        let text = render_prometheus();
        for &c in Counter::ALL {
            assert_eq!(
                text.matches(&format!("\n{} ", c.name())).count(),
                1,
                "{}",
                c.name()
            );
        }
        assert!(text.contains("# TYPE tcpi_spool_bytes gauge"));
    }
}
