//! Integration statistics for ThingsBoard (contract §5.2): what goes into the periodic
//! `UplinkMsg{integrationStatistics[0]{postTelemetryMsg{tsKvList[0]{ts, kv}}}}` and when it is due.
//!
//! ThingsBoard saves the three keys as time series on the integration entity:
//! `messagesCount` (LONG_V, uplink frames converted in the period), `errorsCount` (LONG_V,
//! frames whose framing or conversion failed plus downlinks whose encoder failed) and `state`
//! (STRING_V, the last lifecycle state). Counters reset after each send.
//!
//! The counts are deltas of the process-wide counters in [`crate::metrics`] (one integration per
//! process). Invariants:
//! * `errorsCount` summed over every statistics message equals the growth of the error counters
//!   (each is monotone, so the delta of a period is never negative).
//! * `messagesCount` summed over every message never exceeds, and eventually reaches,
//!   frames − conversion errors: a shard adds a read's frames after the conversion errors of that
//!   read, so a reading taken in between is briefly low; the period then reports what is certain
//!   and the next one reports the rest (the reported total only grows).
//!
//! `eventsData` STATS events are not produced: ThingsBoard only accepts them as Java-serialized
//! objects (contract §5.1).

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::metrics::{self, Counter};
use crate::proto::integration::{IntegrationStatisticsProto, UplinkMsg};
use crate::proto::transport::{KeyValueProto, KeyValueType, PostTelemetryMsg, TsKvListProto};

/// Telemetry key of the converted-frames count.
pub const MESSAGES_COUNT_KEY: &str = "messagesCount";
/// Telemetry key of the failures count.
pub const ERRORS_COUNT_KEY: &str = "errorsCount";
/// Telemetry key of the lifecycle state.
pub const STATE_KEY: &str = "state";

/// The integration's last lifecycle state, as ThingsBoard's lifecycle events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleState {
    /// No configuration applied yet.
    NotApplicable,
    /// A configuration from a (re)connect was applied and the integration serves devices.
    Started,
    /// An IntegrationUpdateMsg or ConverterUpdateMsg was applied.
    Updated,
    /// The integration is disabled in ThingsBoard.
    Stopped,
    /// A configuration was rejected.
    Failed,
}

impl LifecycleState {
    /// The `state` value ThingsBoard shows.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::NotApplicable => "N/A",
            LifecycleState::Started => "STARTED",
            LifecycleState::Updated => "UPDATED",
            LifecycleState::Stopped => "STOPPED",
            LifecycleState::Failed => "FAILED",
        }
    }
}

/// A reading of the counters statistics are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterReading {
    /// Frames split from device streams (converted or not).
    pub frames: u64,
    /// Frames whose uplink converter failed.
    pub convert_errors: u64,
    /// Framing errors (never became frames).
    pub framing_errors: u64,
    /// Downlinks whose encoder failed.
    pub downlink_encode_errors: u64,
}

impl CounterReading {
    /// Reads the process-wide counters. Frames are read first: a read's conversion errors are
    /// counted before its frames, so every frame seen here has its errors seen too.
    pub fn now() -> CounterReading {
        let frames = metrics::get(Counter::FramesDecoded);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        CounterReading {
            frames,
            convert_errors: metrics::get(Counter::ConvertErrors),
            framing_errors: metrics::get(Counter::FramingErrors),
            downlink_encode_errors: metrics::get(Counter::DownlinkEncodeErrors),
        }
    }

    /// Frames converted so far (frames minus conversion failures).
    fn converted(&self) -> u64 {
        self.frames.saturating_sub(self.convert_errors)
    }

    fn errors(&self) -> u64 {
        self.convert_errors + self.framing_errors + self.downlink_encode_errors
    }
}

/// The values of one statistics message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodStatistics {
    pub messages_count: u64,
    pub errors_count: u64,
    pub state: LifecycleState,
}

/// Encodes the statistics `UplinkMsg` (the bytes `SessionHandle::send_uplink` takes).
pub fn encode_statistics_uplink(stats: &PeriodStatistics, ts_ms: i64) -> Bytes {
    let long = |key: &str, value: u64| KeyValueProto {
        key: key.to_owned(),
        r#type: KeyValueType::LongV as i32,
        long_v: i64::try_from(value).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let msg = UplinkMsg {
        integration_statistics: vec![IntegrationStatisticsProto {
            post_telemetry_msg: Some(PostTelemetryMsg {
                ts_kv_list: vec![TsKvListProto {
                    ts: ts_ms,
                    kv: vec![
                        long(MESSAGES_COUNT_KEY, stats.messages_count),
                        long(ERRORS_COUNT_KEY, stats.errors_count),
                        KeyValueProto {
                            key: STATE_KEY.to_owned(),
                            r#type: KeyValueType::StringV as i32,
                            string_v: stats.state.as_str().to_owned(),
                            ..Default::default()
                        },
                    ],
                }],
            }),
        }],
        ..Default::default()
    };
    Bytes::from(msg.encode_to_vec())
}

/// The statistics clock and counters of one process: when the next message is due and what it
/// carries.
#[derive(Debug)]
pub struct StatisticsPeriod {
    enabled: bool,
    persist_every: Duration,
    period_started_at: Instant,
    /// Error total already reported.
    reported_errors: u64,
    /// Converted-frames total already reported (only grows; see the module header).
    reported_messages: u64,
    state: LifecycleState,
}

impl StatisticsPeriod {
    /// Starts the first period at `now` from `baseline` (the counters' values at start, so
    /// traffic of an earlier server in the same process is not reported).
    pub fn new(
        enabled: bool,
        persist_every: Duration,
        now: Instant,
        baseline: CounterReading,
    ) -> Self {
        StatisticsPeriod {
            enabled,
            persist_every,
            period_started_at: now,
            reported_errors: baseline.errors(),
            reported_messages: baseline.converted(),
            state: LifecycleState::NotApplicable,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> LifecycleState {
        self.state
    }

    pub fn set_state(&mut self, state: LifecycleState) {
        self.state = state;
    }

    /// Whether a periodic message should be sent now: statistics enabled, a session to send it
    /// on, and a whole period passed since the last one. A period that ends while disconnected
    /// is sent on reconnect, with everything counted meanwhile.
    pub fn is_due(&self, connected: bool, now: Instant) -> bool {
        self.enabled
            && connected
            && now.saturating_duration_since(self.period_started_at) >= self.persist_every
    }

    /// Closes the period at `now`: the statistics since the last call, and a new period starts.
    pub fn take(&mut self, now: Instant, reading: CounterReading) -> PeriodStatistics {
        let errors = reading.errors();
        let errors_count = errors.saturating_sub(self.reported_errors);
        self.reported_errors = self.reported_errors.max(errors);
        let converted = reading.converted();
        let messages_count = converted.saturating_sub(self.reported_messages);
        self.reported_messages = self.reported_messages.max(converted);
        self.period_started_at = now;
        PeriodStatistics {
            messages_count,
            errors_count,
            state: self.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(frames: u64, convert: u64, framing: u64, downlink: u64) -> CounterReading {
        CounterReading {
            frames,
            convert_errors: convert,
            framing_errors: framing,
            downlink_encode_errors: downlink,
        }
    }

    #[test]
    fn encoded_message_has_the_contract_fields_and_values() {
        let bytes = encode_statistics_uplink(
            &PeriodStatistics {
                messages_count: 7,
                errors_count: 2,
                state: LifecycleState::Started,
            },
            1_700_000_000_123,
        );
        let msg = UplinkMsg::decode(bytes.as_ref()).unwrap();
        assert_eq!(msg.uplink_msg_id, 0);
        assert!(msg.device_data.is_empty() && msg.asset_data.is_empty());
        assert!(
            msg.events_data.is_empty(),
            "no Java-serialized STATS events"
        );
        assert_eq!(msg.integration_statistics.len(), 1);
        let telemetry = msg.integration_statistics[0]
            .post_telemetry_msg
            .as_ref()
            .unwrap();
        assert_eq!(telemetry.ts_kv_list.len(), 1);
        let entry = &telemetry.ts_kv_list[0];
        assert_eq!(entry.ts, 1_700_000_000_123);
        let kv: Vec<(&str, i32, i64, &str)> = entry
            .kv
            .iter()
            .map(|kv| (kv.key.as_str(), kv.r#type, kv.long_v, kv.string_v.as_str()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("messagesCount", KeyValueType::LongV as i32, 7, ""),
                ("errorsCount", KeyValueType::LongV as i32, 2, ""),
                ("state", KeyValueType::StringV as i32, 0, "STARTED"),
            ]
        );
    }

    #[test]
    fn encoded_bytes_use_uplink_field_4_and_statistics_field_1() {
        let bytes = encode_statistics_uplink(
            &PeriodStatistics {
                messages_count: 1,
                errors_count: 0,
                state: LifecycleState::NotApplicable,
            },
            5,
        );
        // UplinkMsg field 4, wire type 2 (integrationStatistics), then
        // IntegrationStatisticsProto field 1, wire type 2 (postTelemetryMsg), then
        // PostTelemetryMsg field 1, wire type 2 (tsKvList), then TsKvListProto field 1 varint 5.
        assert_eq!(bytes[0], 0x22);
        assert_eq!(bytes[2], 0x0A);
        assert_eq!(bytes[4], 0x0A);
        assert_eq!(&bytes[6..8], &[0x08, 0x05]);
        let msg = UplinkMsg::decode(bytes.as_ref()).unwrap();
        let entry = &msg.integration_statistics[0]
            .post_telemetry_msg
            .as_ref()
            .unwrap()
            .ts_kv_list[0];
        assert_eq!(entry.kv[2].string_v, "N/A");
    }

    #[test]
    fn state_names_are_thingsboards() {
        let names: Vec<&str> = [
            LifecycleState::NotApplicable,
            LifecycleState::Started,
            LifecycleState::Updated,
            LifecycleState::Stopped,
            LifecycleState::Failed,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(names, ["N/A", "STARTED", "UPDATED", "STOPPED", "FAILED"]);
    }

    #[test]
    fn periods_report_deltas_and_reset() {
        let t0 = Instant::now();
        let mut p =
            StatisticsPeriod::new(true, Duration::from_millis(200), t0, reading(3, 1, 0, 0));
        p.set_state(LifecycleState::Started);
        let first = p.take(t0, reading(13, 2, 1, 1));
        assert_eq!(
            first,
            PeriodStatistics {
                messages_count: 9,
                errors_count: 3,
                state: LifecycleState::Started
            }
        );
        let second = p.take(t0, reading(13, 2, 1, 1));
        assert_eq!((second.messages_count, second.errors_count), (0, 0));
        p.set_state(LifecycleState::Stopped);
        let third = p.take(t0, reading(15, 2, 1, 2));
        assert_eq!(
            third,
            PeriodStatistics {
                messages_count: 2,
                errors_count: 1,
                state: LifecycleState::Stopped
            }
        );
    }

    #[test]
    fn a_reading_taken_mid_read_is_caught_up_next_period() {
        let t0 = Instant::now();
        let mut p =
            StatisticsPeriod::new(true, Duration::from_secs(1), t0, CounterReading::default());
        assert_eq!(p.take(t0, reading(10, 0, 0, 0)).messages_count, 10);
        // A read of 3 frames with 2 conversion failures: the failures are counted, its
        // frames not yet.
        let mid = p.take(t0, reading(10, 2, 0, 0));
        assert_eq!((mid.messages_count, mid.errors_count), (0, 2));
        let after = p.take(t0, reading(13, 2, 0, 0));
        assert_eq!((after.messages_count, after.errors_count), (1, 0));
        // 11 converted frames reported in all.
    }

    #[test]
    fn due_only_when_enabled_connected_and_a_period_passed() {
        let t0 = Instant::now();
        let period = Duration::from_millis(200);
        let p = StatisticsPeriod::new(true, period, t0, CounterReading::default());
        assert!(!p.is_due(true, t0));
        assert!(!p.is_due(true, t0 + period - Duration::from_millis(1)));
        assert!(p.is_due(true, t0 + period));
        assert!(!p.is_due(false, t0 + period * 10), "not while disconnected");
        let off = StatisticsPeriod::new(false, period, t0, CounterReading::default());
        assert!(!off.is_due(true, t0 + period * 10), "never when disabled");
        let mut p = p;
        p.take(t0 + period, CounterReading::default());
        assert!(!p.is_due(true, t0 + period + Duration::from_millis(199)));
        assert!(p.is_due(true, t0 + period * 2));
    }
}
