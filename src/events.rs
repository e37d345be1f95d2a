//! Observable events: each struct's `emit()` writes one structured log line and bumps one metric.
//!
//! Events that a misbehaving device can cause at line rate (bad frames, converter failures,
//! refused connections) are counted every time but logged at most [`LOG_BURST_PER_SEC`] times
//! a second per event kind, with the number suppressed in the next line, so a flood cannot
//! turn into a logging outage.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::{self, Counter};

/// Log lines per second and event kind before lines are suppressed (still counted).
pub const LOG_BURST_PER_SEC: u64 = 20;

/// A per-kind log limiter: the current second and how many lines it has logged / suppressed.
pub struct LogLimiter {
    second: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter {
            second: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed_before)` when this occurrence may be logged.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < LOG_BURST_PER_SEC {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// A device stream broke a framing rule; the connection goes on (ThingsBoard behaviour).
pub struct FramingFailed<'a, E: Display> {
    pub peer: SocketAddr,
    pub kind: &'static str,
    pub error: &'a E,
}

impl<E: Display> FramingFailed<'_, E> {
    pub fn emit(self) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics::inc(Counter::FramingErrors);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(peer = %self.peer, kind = self.kind, suppressed, "framing error: {}", self.error);
        }
    }
}

/// The uplink converter failed on one frame; the frame is not forwarded (ThingsBoard
/// behaviour), the connection and the next frames are unaffected.
pub struct ConvertFailed<'a, E: Display> {
    pub peer: SocketAddr,
    pub kind: &'static str,
    pub frame_bytes: usize,
    pub error: &'a E,
}

impl<E: Display> ConvertFailed<'_, E> {
    pub fn emit(self) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics::inc(Counter::ConvertErrors);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(peer = %self.peer, kind = self.kind, frame_bytes = self.frame_bytes, suppressed,
                "uplink converter failed: {}", self.error);
        }
    }
}

/// A connection was closed at once because the shard's connection limit was reached.
pub struct ConnectionRefused {
    pub peer: SocketAddr,
    pub shard: usize,
    pub limit: usize,
}

impl ConnectionRefused {
    pub fn emit(self) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics::inc(Counter::ConnectionsRefused);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(peer = %self.peer, shard = self.shard, limit = self.limit, suppressed,
                "connection limit reached; closing new connection (raise --max-connections)");
        }
    }
}

/// Why a downlink was dropped.
#[derive(Debug, Clone, Copy)]
pub enum DownlinkDropReason {
    /// Held longer than the hold time.
    Expired,
    /// The device's hold queue was full; the oldest made room.
    HoldLimit,
    /// No downlink converter is configured (ThingsBoard drops it too).
    NoConverter,
    /// The encoder failed.
    EncodeFailed,
    /// The device's live connection already had the most downlinks waiting to be written.
    ConnQueueFull,
}

impl DownlinkDropReason {
    fn counter(self) -> Counter {
        match self {
            DownlinkDropReason::Expired | DownlinkDropReason::HoldLimit => {
                Counter::DownlinksExpired
            }
            DownlinkDropReason::NoConverter => Counter::DownlinksNoConverter,
            DownlinkDropReason::EncodeFailed => Counter::DownlinkEncodeErrors,
            DownlinkDropReason::ConnQueueFull => Counter::DownlinksConnQueueFull,
        }
    }
}

/// A downlink that will never reach its device.
pub struct DownlinkDropped<'a> {
    pub device: &'a str,
    pub reason: DownlinkDropReason,
    pub detail: &'a str,
}

impl DownlinkDropped<'_> {
    pub fn emit(self) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics::inc(self.reason.counter());
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(device = self.device, reason = ?self.reason, suppressed, "downlink dropped: {}", self.detail);
        }
    }
}

/// ThingsBoard answered a batch with `success=false`; its records go to the dead-letter file.
pub struct BatchRejected<'a> {
    pub records: usize,
    pub error_msg: &'a str,
}

impl BatchRejected<'_> {
    pub fn emit(self) {
        metrics::add(Counter::RecordsRejected, self.records as u64);
        tracing::error!(
            records = self.records,
            "ThingsBoard rejected a batch (kept in the dead-letter file): {}",
            self.error_msg
        );
    }
}

/// A batch got no acknowledgement in time; the session is restarted and the batch resent.
pub struct AckTimedOut {
    pub records: usize,
    pub waited_ms: u128,
}

impl AckTimedOut {
    pub fn emit(self) {
        metrics::inc(Counter::AckTimeouts);
        tracing::warn!(
            records = self.records,
            waited_ms = self.waited_ms,
            "no acknowledgement from ThingsBoard in time; reconnecting and resending from the first unacknowledged record"
        );
    }
}

/// A configuration from ThingsBoard (integration or converter) could not be applied.
pub struct ConfigRejected<'a, E: Display> {
    pub what: &'static str,
    pub error: &'a E,
}

impl<E: Display> ConfigRejected<'_, E> {
    pub fn emit(self) {
        metrics::inc(Counter::ConfigErrors);
        tracing::error!(
            what = self.what,
            "configuration from ThingsBoard not applied: {}",
            self.error
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_admits_a_burst_then_counts_suppressed() {
        let limiter = LogLimiter::new();
        let admitted = (0..LOG_BURST_PER_SEC * 3)
            .filter(|_| limiter.admit().is_some())
            .count() as u64;
        // A second boundary inside the loop can admit one more burst; never fewer than one burst.
        assert!((LOG_BURST_PER_SEC..=2 * LOG_BURST_PER_SEC).contains(&admitted));
    }
}
