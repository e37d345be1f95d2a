//! The sink's bookkeeping, free of I/O: which sequence numbers each device got through, how many
//! came twice, and how long each record took from its intended send time to the sink.
//!
//! Invariants:
//! * [`SeqTracker`] stores the seen sequence numbers as disjoint, non-adjacent half-open ranges,
//!   so in-order delivery costs one range per device and every loss costs one more range — never
//!   a set entry per record. `distinct()` is exactly the number of different seqs recorded.
//! * A record is counted once in `records`; it is either new (raises `distinct`) or a duplicate.
//! * Latency is `arrival_us − sent_us`, both read from the same host clock ([`crate::clock`]);
//!   `sent_us` is the *intended* send time of the open-loop schedule, so a stalled generator or
//!   server shows up as latency instead of hiding (coordinated omission).

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track exactly (one hour in µs); larger values are clamped.
pub const MAX_TRACKED_LATENCY_US: u64 = 3_600_000_000;

/// Whether a recorded seq was new or seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    New,
    Duplicate,
}

/// The set of sequence numbers one device got through, as merged ranges.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// start → end (exclusive); ranges never overlap or touch.
    ranges: BTreeMap<u64, u64>,
    distinct: u64,
    duplicates: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> SeqOutcome {
        // Fast path: the next seq after the highest range (in-order delivery).
        if let Some(mut last) = self.ranges.last_entry()
            && *last.get() == seq
        {
            *last.get_mut() = seq + 1;
            self.distinct += 1;
            return SeqOutcome::New;
        }
        if let Some((&start, &end)) = self.ranges.range(..=seq).next_back() {
            if seq < end {
                self.duplicates += 1;
                return SeqOutcome::Duplicate;
            }
            let next_end = self.ranges.get(&(seq + 1)).copied();
            if seq == end {
                // Extend the range below, merging with the one above when they now touch.
                let new_end = match next_end {
                    Some(e) => {
                        self.ranges.remove(&(seq + 1));
                        e
                    }
                    None => seq + 1,
                };
                self.ranges.insert(start, new_end);
                self.distinct += 1;
                return SeqOutcome::New;
            }
        }
        let new_end = match self.ranges.remove(&(seq + 1)) {
            Some(e) => e,
            None => seq + 1,
        };
        self.ranges.insert(seq, new_end);
        self.distinct += 1;
        SeqOutcome::New
    }

    /// Number of different seqs recorded.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Number of records whose seq had been recorded before.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Highest seq recorded.
    pub fn max_seq(&self) -> Option<u64> {
        self.ranges.last_key_value().map(|(_, &end)| end - 1)
    }

    /// Recorded seqs that are `>= limit` (the device says it sent only `limit` frames).
    pub fn count_at_or_above(&self, limit: u64) -> u64 {
        self.ranges
            .iter()
            .filter(|&(_, &end)| end > limit)
            .map(|(&start, &end)| end - start.max(limit))
            .sum()
    }

    /// Number of stored ranges (memory cost: one per gap + 1).
    pub fn nr_ranges(&self) -> usize {
        self.ranges.len()
    }
}

/// Loss and duplication over all devices, reconciled against what the devices say they sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossSummary {
    /// Frames the devices report as written.
    pub sent: u64,
    /// Distinct (device, seq) pairs the sink received within the sent range.
    pub distinct: u64,
    /// `sent − distinct`.
    pub lost: u64,
    /// Records whose (device, seq) had been received before.
    pub duplicates: u64,
    /// Distinct records from unknown devices or with seq ≥ that device's sent count.
    pub unexpected: u64,
    pub devices_with_loss: u64,
    pub devices_with_duplicates: u64,
}

/// Per-device sequence trackers, keyed by device name.
#[derive(Debug, Default)]
pub struct DeviceLedger {
    devices: HashMap<Box<str>, SeqTracker>,
    /// Device names in the order the sink first saw them (downlink targets).
    order: Vec<Box<str>>,
}

impl DeviceLedger {
    pub fn record(&mut self, device_name: &str, seq: u64) -> SeqOutcome {
        if let Some(tracker) = self.devices.get_mut(device_name) {
            return tracker.record(seq);
        }
        let name: Box<str> = device_name.into();
        self.order.push(name.clone());
        self.devices.entry(name).or_default().record(seq)
    }

    pub fn tracker(&self, device_name: &str) -> Option<&SeqTracker> {
        self.devices.get(device_name)
    }

    /// Device names in first-seen order.
    pub fn seen_devices(&self) -> &[Box<str>] {
        &self.order
    }

    pub fn duplicates(&self) -> u64 {
        self.devices.values().map(SeqTracker::duplicates).sum()
    }

    pub fn distinct(&self) -> u64 {
        self.devices.values().map(SeqTracker::distinct).sum()
    }

    /// Reconciles with the devices' own counts: device `name` wrote seqs `0..sent`.
    pub fn reconcile<'a>(&self, sent: impl IntoIterator<Item = (&'a str, u64)>) -> LossSummary {
        let mut summary = LossSummary::default();
        let mut reported = std::collections::HashSet::new();
        for (name, sent_frames) in sent {
            summary.sent += sent_frames;
            reported.insert(name);
            let Some(tracker) = self.devices.get(name) else {
                summary.lost += sent_frames;
                if sent_frames > 0 {
                    summary.devices_with_loss += 1;
                }
                continue;
            };
            let beyond = tracker.count_at_or_above(sent_frames);
            let within = tracker.distinct() - beyond;
            summary.distinct += within;
            summary.unexpected += beyond;
            summary.lost += sent_frames - within;
            if sent_frames > within {
                summary.devices_with_loss += 1;
            }
        }
        // Devices no device process reported (foreign senders): all their records are unexpected.
        summary.unexpected += self
            .devices
            .iter()
            .filter(|(name, _)| !reported.contains(&***name))
            .map(|(_, t)| t.distinct())
            .sum::<u64>();
        summary.duplicates = self.duplicates();
        summary.devices_with_duplicates =
            self.devices.values().filter(|t| t.duplicates() > 0).count() as u64;
        summary
    }
}

/// A latency histogram in µs, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, 3).expect("static histogram bounds")
}

/// One point of a percentile curve: `percentile` in 0..=100, `value_us` at that percentile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub percentile: f64,
    pub value_us: u64,
}

/// Percentiles drawn on the latency curve (log-scale towards 100).
pub const CURVE_PERCENTILES: [f64; 14] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 99.9999, 100.0,
];

/// The figures of one latency histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub curve: Vec<CurvePoint>,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            curve: CURVE_PERCENTILES
                .iter()
                .map(|&p| CurvePoint {
                    percentile: p,
                    value_us: h.value_at_quantile(p / 100.0),
                })
                .collect(),
        }
    }
}

/// A histogram as (value, count) pairs, for moving it between processes as JSON.
pub fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs produced by [`histogram_to_pairs`] into `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        h.saturating_record_n(value, count);
    }
}

/// Everything the sink counts about uplink records.
#[derive(Debug)]
pub struct Tally {
    pub ledger: DeviceLedger,
    /// Every record received (new + duplicate).
    pub records: u64,
    /// Records without a usable device name / `seq` / `sent_us`.
    pub malformed: u64,
    /// UplinkMsgs received (a server may batch many records into one); statistics-only
    /// messages are not included.
    pub uplink_msgs: u64,
    /// Integration statistics UplinkMsgs received (no records; acknowledged like any other).
    pub statistics_msgs: u64,
    /// Latency of records whose intended send time is inside the measured window.
    pub latency: Histogram<u64>,
    /// Latency since the last [`Tally::take_interval`] (live progress line).
    interval_latency: Histogram<u64>,
    interval_records: u64,
    /// Start of the measured window (µs, [`crate::clock`]); `None` = not measuring yet.
    window_start_us: Option<u64>,
    /// End of the measured window; records arriving later still count for latency and loss.
    window_end_us: Option<u64>,
    /// Records that arrived inside the measured window.
    pub delivered_in_window: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            ledger: DeviceLedger::default(),
            records: 0,
            malformed: 0,
            uplink_msgs: 0,
            statistics_msgs: 0,
            latency: new_latency_histogram(),
            interval_latency: new_latency_histogram(),
            interval_records: 0,
            window_start_us: None,
            window_end_us: None,
            delivered_in_window: 0,
        }
    }
}

impl Tally {
    /// Counts one record; `arrival_us` and `sent_us` come from the same clock.
    pub fn record(&mut self, device_name: &str, seq: u64, sent_us: u64, arrival_us: u64) {
        self.records += 1;
        self.interval_records += 1;
        let outcome = self.ledger.record(device_name, seq);
        let latency_us = arrival_us.saturating_sub(sent_us);
        self.interval_latency.saturating_record(latency_us);
        if let Some(start) = self.window_start_us {
            if sent_us >= start && outcome == SeqOutcome::New {
                self.latency.saturating_record(latency_us);
            }
            if arrival_us >= start && self.window_end_us.is_none_or(|end| arrival_us <= end) {
                self.delivered_in_window += 1;
            }
        }
    }

    pub fn record_malformed(&mut self) {
        self.malformed += 1;
    }

    /// Opens the measured window (end of warm-up).
    pub fn start_window(&mut self, now_us: u64) {
        self.window_start_us = Some(now_us);
        self.window_end_us = None;
        self.delivered_in_window = 0;
        self.latency.reset();
    }

    /// Closes the measured window for throughput; latency of in-window sends still accrues.
    pub fn end_window(&mut self, now_us: u64) {
        self.window_end_us = Some(now_us);
    }

    /// Records and latency since the previous call, then resets the interval.
    pub fn take_interval(&mut self) -> (u64, LatencySummary) {
        let summary = LatencySummary::from_histogram(&self.interval_latency);
        let records = self.interval_records;
        self.interval_latency.reset();
        self.interval_records = 0;
        (records, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_seqs_use_one_range() {
        let mut t = SeqTracker::default();
        for seq in 0..1000 {
            assert_eq!(t.record(seq), SeqOutcome::New);
        }
        assert_eq!(t.nr_ranges(), 1);
        assert_eq!(t.distinct(), 1000);
        assert_eq!(t.max_seq(), Some(999));
    }

    #[test]
    fn gap_then_fill_merges_ranges() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 2, 5, 6, 4] {
            assert_eq!(t.record(seq), SeqOutcome::New);
        }
        assert_eq!(t.nr_ranges(), 2); // 0..3, 4..7
        assert_eq!(t.record(3), SeqOutcome::New);
        assert_eq!(t.nr_ranges(), 1);
        assert_eq!(t.distinct(), 7);
        assert_eq!(t.duplicates(), 0);
    }

    #[test]
    fn repeated_seqs_are_duplicates_anywhere_in_a_range() {
        let mut t = SeqTracker::default();
        for seq in [10, 11, 12, 20] {
            t.record(seq);
        }
        assert_eq!(t.record(11), SeqOutcome::Duplicate);
        assert_eq!(t.record(20), SeqOutcome::Duplicate);
        assert_eq!(t.record(10), SeqOutcome::Duplicate);
        assert_eq!(t.record(13), SeqOutcome::New);
        assert_eq!(t.distinct(), 5);
        assert_eq!(t.duplicates(), 3);
    }

    #[test]
    fn count_at_or_above_splits_ranges() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 2, 3, 7, 8] {
            t.record(seq);
        }
        assert_eq!(t.count_at_or_above(2), 4);
        assert_eq!(t.count_at_or_above(8), 1);
        assert_eq!(t.count_at_or_above(9), 0);
    }

    #[test]
    fn reconcile_counts_loss_duplicates_and_unexpected() {
        let mut ledger = DeviceLedger::default();
        for seq in [0, 1, 3, 3, 4] {
            ledger.record("SN-000001", seq);
        }
        for seq in 0..3 {
            ledger.record("SN-000002", seq);
        }
        ledger.record("SN-000002", 7); // beyond what the device says it sent
        let summary = ledger.reconcile([("SN-000001", 5), ("SN-000002", 3), ("SN-000003", 2)]);
        assert_eq!(
            summary,
            LossSummary {
                sent: 10,
                distinct: 7,
                lost: 3, // SN-000001 seq 2, SN-000003 seqs 0 and 1
                duplicates: 1,
                unexpected: 1,
                devices_with_loss: 2,
                devices_with_duplicates: 1,
            }
        );
        assert_eq!(ledger.seen_devices().len(), 2);
        assert_eq!(&*ledger.seen_devices()[0], "SN-000001");
    }

    #[test]
    fn latency_counts_only_new_records_sent_inside_the_window() {
        let mut tally = Tally::default();
        tally.record("a", 0, 100, 200); // before the window: no latency
        tally.start_window(1_000);
        tally.record("a", 1, 900, 1_100); // sent before the window start
        tally.record("a", 2, 1_000, 1_250);
        tally.record("a", 2, 1_000, 1_300); // duplicate
        tally.end_window(1_350);
        tally.record("a", 3, 1_010, 1_400); // arrives after the window: latency only
        tally.record("a", 4, 1_300, 1_500);
        assert_eq!(tally.records, 6);
        assert_eq!(tally.latency.len(), 3);
        assert_eq!(tally.latency.min(), 200);
        assert_eq!(tally.latency.max(), 390);
        assert_eq!(tally.delivered_in_window, 3);
        let (records, interval) = tally.take_interval();
        assert_eq!(records, 6);
        assert_eq!(interval.count, 6);
        assert_eq!(tally.take_interval().0, 0);
    }

    #[test]
    fn summary_is_ordered_and_round_trips_as_pairs() {
        let mut h = new_latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 10_000);
        assert!(s.min_us <= s.p50_us && s.p50_us <= s.p99_us && s.p99_us <= s.max_us);
        assert_eq!(s.min_us, 1);
        assert!((4_990..=5_010).contains(&s.p50_us), "p50 {}", s.p50_us);
        assert_eq!(s.curve.len(), CURVE_PERCENTILES.len());
        let mut back = new_latency_histogram();
        add_pairs(&mut back, &histogram_to_pairs(&h));
        assert_eq!(back.len(), h.len());
        assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
    }
}
