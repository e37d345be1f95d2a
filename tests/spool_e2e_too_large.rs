//! One converter record larger than a batch (`uplink.batch_max_bytes`) end to end: the
//! converter turns one special frame into a record with a 5 MiB telemetry string, more than
//! gRPC's 4 MiB message limit. It must not stall delivery: it goes to `dead-letter.jsonl` in the
//! spool dir with an error naming the limit, is counted in `tcpi_records_too_large_total` (not
//! as a rejected batch) and logged, and the frames around it, on the same connection, arrive in
//! order. (Before the fix the record was sent alone, the stream failed on the message limit and
//! the same batch was resent forever.)

mod common;
mod spool_e2e_support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use spool_e2e_support::*;
use tcp_integration::edge_sim::TypedValue;
use tcp_integration::metrics::{self, Counter};

const HUGE_DEVICE: &str = "SN-HUGE";
const DEVICE: &str = "SN-1";
const HUGE_BYTES: usize = 5 * 1024 * 1024;

/// The TEXT example's converter, plus a `blob` of 5 MiB for frames of `SN-HUGE`.
const DECODER: &str = r#"
var text = String.fromCharCode.apply(String, payload);
var fields = text.replace(/\s/g, '').split(',');
var telemetry = {};
telemetry[fields[2]] = fields[3];
if (fields[0] === 'SN-HUGE') {
    telemetry.blob = 'x'.repeat(5 * 1024 * 1024);
}
return { deviceName: fields[0], deviceType: fields[1], telemetry: telemetry };
"#;

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_record_larger_than_a_batch_goes_to_the_dead_letter_file_and_the_others_arrive() {
    let log = LogCapture::install();
    let port = reserve_port();
    let mut definition = text_example(port.port);
    definition.uplink_converter.configuration["decoder"] = serde_json::json!(DECODER);
    // The converter call builds a 5 MiB string: give it room and time on a shared machine.
    let h = Harness::start(
        definition,
        port,
        &[
            ("TCPI_SCRIPT_TIMEOUT_MS", "5000"),
            ("TCPI_BATCH_MAX_BYTES", "1048576"),
        ],
    );

    let mut stream = h.connect();
    let mut text = String::new();
    for n in 0..3 {
        text.push_str(&frame(DEVICE, n));
    }
    text.push_str(&frame(HUGE_DEVICE, 0));
    for n in 3..6 {
        text.push_str(&frame(DEVICE, n));
    }
    stream.write_all(text.as_bytes()).unwrap();

    wait_until("the six normal records", || h.edge().records().len() >= 6);
    // Anything resent or let through would show up by now.
    std::thread::sleep(Duration::from_millis(300));
    let arrived: Vec<(String, i64)> = h
        .edge()
        .records()
        .iter()
        .map(|r| (r.name.clone(), seq_of(r)))
        .collect();
    let expected: Vec<(String, i64)> = (0..6).map(|n| (DEVICE.to_owned(), n)).collect();
    assert_eq!(arrived, expected);

    let letters = dead_letters(h.spool.path());
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.records.len(), 1);
    let record = &letter.records[0];
    assert_eq!(record.name, HUGE_DEVICE);
    assert_eq!(seq_of(record), 0);
    let blob = record.telemetry[0].values.get("blob");
    match blob {
        Some(TypedValue::String(s)) => {
            assert_eq!(s.len(), HUGE_BYTES);
            assert!(s.bytes().all(|b| b == b'x'));
        }
        other => panic!("blob is {other:?}"),
    }
    assert!(
        letter
            .error
            .contains("larger than uplink.batch_max_bytes (1048576 bytes)"),
        "{}",
        letter.error
    );

    assert_eq!(metrics::get(Counter::RecordsTooLarge), 1);
    assert_eq!(
        metrics::get(Counter::RecordsRejected),
        0,
        "not a success=false batch"
    );
    assert_eq!(metrics::get(Counter::RecordsAcked), 6);
    let lines = log.lines_with("uplink record too large to send");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(HUGE_DEVICE), "{}", lines[0]);
    assert_eq!(int_field(&lines[0], "batch_max_bytes"), 1_048_576);
}
