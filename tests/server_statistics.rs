//! Integration statistics end to end (contract §5.2): with a short period the server sends
//! `integrationStatistics` messages whose `messagesCount`/`errorsCount`, summed over every
//! message (a period boundary may split the traffic), equal the frames converted and the
//! frames that failed, with `state` STARTED; disabling the integration in ThingsBoard sends a
//! statistics message with `state` STOPPED. Own test binary: the counts come from process-wide
//! counters.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tcp_integration::edge_sim::StatisticsRecord;
use tcp_integration::metrics::{self, Counter};

/// Sums `messagesCount` and `errorsCount` over `stats`.
fn sums(stats: &[StatisticsRecord]) -> (i64, i64) {
    stats.iter().fold((0, 0), |(m, e), s| {
        (
            m + s.messages_count().expect("messagesCount LONG_V"),
            e + s.errors_count().expect("errorsCount LONG_V"),
        )
    })
}

/// Waits until edge-sim's statistics satisfy `done`; returns them.
fn wait_statistics(
    h: &Harness,
    what: &str,
    done: impl Fn(&[StatisticsRecord]) -> bool,
) -> Vec<StatisticsRecord> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = h.edge().statistics();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: got {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn statistics_count_frames_and_errors_and_report_the_lifecycle() {
    const GOOD_FRAMES: i64 = 7;
    let port = reserve_port();
    let mut def = text_example(port.port);
    def.uplink_converter.configuration["decoder"] = serde_json::json!(
        "var text = String.fromCharCode.apply(String, payload);\n\
         if (text.indexOf('THROW') === 0) { throw new Error('device sent THROW'); }\n\
         var f = text.split(',');\n\
         var t = {}; t[f[2]] = f[3];\n\
         return {deviceName: f[0], deviceType: f[1], telemetry: t};"
    );
    let h = Harness::start(
        def,
        port,
        &[("INTEGRATION_STATISTICS_PERSIST_FREQUENCY", "200")],
    );
    let mut device = h.connect();
    for i in 0..GOOD_FRAMES {
        send(
            &mut device,
            format!("SN-STAT,default,temperature,{i}\n").as_bytes(),
        );
        if i == 3 {
            send(&mut device, b"THROW,default,temperature,1\n");
        }
    }
    let records = h.wait_records(GOOD_FRAMES as usize);
    assert_eq!(
        records.len(),
        GOOD_FRAMES as usize,
        "statistics are not records"
    );

    let stats = wait_statistics(&h, "sums reach the traffic", |stats| {
        let (m, e) = sums(stats);
        m >= GOOD_FRAMES && e >= 1
    });
    assert_eq!(sums(&stats), (GOOD_FRAMES, 1));
    for s in &stats {
        assert_eq!(s.state(), Some("STARTED"), "{s:?}");
        assert_eq!(s.telemetry.len(), 1, "one ts entry per message: {s:?}");
        assert!(s.telemetry[0].ts > 0);
    }
    // Statistics never became records.
    assert_eq!(h.edge().records().len(), GOOD_FRAMES as usize);
    wait_until("the records' acknowledgements", || {
        metrics::get(Counter::RecordsAcked) >= GOOD_FRAMES as u64
    });
    assert_eq!(
        metrics::get(Counter::RecordsAcked),
        GOOD_FRAMES as u64,
        "statistics are not counted as records"
    );

    // A converter update: the next statistics say UPDATED.
    let before = h.edge().statistics().len();
    let mut def = h.edge().definition();
    let decoder = def.uplink_converter.configuration["decoder"]
        .as_str()
        .unwrap()
        .to_owned();
    def.uplink_converter.configuration["decoder"] =
        serde_json::json!(format!("// version 2\n{decoder}"));
    let (changes, delivered) = h.edge().replace_definition(def).unwrap();
    assert!(delivered);
    assert_eq!(changes.converter_updates.len(), 1);
    assert!(changes.integration_update.is_none());
    wait_statistics(&h, "an UPDATED statistics message", |stats| {
        stats[before.min(stats.len())..]
            .iter()
            .any(|s| s.state() == Some("UPDATED"))
    });

    // Disable the integration in ThingsBoard: a statistics message with STOPPED follows.
    let before = h.edge().statistics().len();
    let mut def = h.edge().definition();
    def.enabled = false;
    let (_, delivered) = h.edge().replace_definition(def).unwrap();
    assert!(delivered);
    let stats = wait_statistics(&h, "a STOPPED statistics message", |stats| {
        stats[before.min(stats.len())..]
            .iter()
            .any(|s| s.state() == Some("STOPPED"))
    });
    // Nothing new was counted after the traffic above.
    assert_eq!(sums(&stats), (GOOD_FRAMES, 1));
    // Every statistics message edge-sim received was counted as sent; none was rejected.
    assert!(metrics::get(Counter::StatisticsSent) as usize >= stats.len());
    assert_eq!(metrics::get(Counter::StatisticsRejected), 0);
    assert_eq!(metrics::get(Counter::BatchesResent), 0);
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
