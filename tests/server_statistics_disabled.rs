//! `statistics.enabled = false` (env INTEGRATION_STATISTICS_ENABLED, as ThingsBoard's): records
//! flow, no statistics message is sent — neither periodically nor when the integration is
//! disabled. Own test binary: it asserts the process-wide statistics counter.
//!
//! The wait is bounded by traffic, not by a clock: each frame is sent only after the previous
//! record arrived and more than one (100 ms) period has passed, so the uplink core's timer has
//! looked at the statistics several times with periods due; `is_due` itself is unit-tested in
//! `uplink::statistics`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tcp_integration::metrics::{self, Counter};

#[test]
fn disabled_statistics_are_never_sent() {
    const FRAMES: usize = 5;
    let port = reserve_port();
    let h = Harness::start(
        text_example(port.port),
        port,
        &[
            ("INTEGRATION_STATISTICS_ENABLED", "false"),
            ("INTEGRATION_STATISTICS_PERSIST_FREQUENCY", "100"),
        ],
    );
    let mut device = h.connect();
    for i in 0..FRAMES {
        let sent_at = Instant::now();
        send(
            &mut device,
            format!("SN-NOSTAT,default,temperature,{i}\n").as_bytes(),
        );
        h.wait_records(i + 1);
        // Let more than a period pass before the next frame.
        let period = Duration::from_millis(150);
        if let Some(rest) = period.checked_sub(sent_at.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    assert_eq!(h.edge().records().len(), FRAMES);

    let mut def = h.edge().definition();
    def.enabled = false;
    h.edge().replace_definition(def).unwrap();
    // Disabling closes the device connection: once closed, the core has applied the update.
    wait_closed_by_server(&mut device);
    // One more period for the timer.
    std::thread::sleep(Duration::from_millis(150));

    assert!(
        h.edge().statistics().is_empty(),
        "{:?}",
        h.edge().statistics()
    );
    assert_eq!(metrics::get(Counter::StatisticsSent), 0);
}
