//! Bad TEXT input on one connection — an over-long frame, a frame the decoder throws on — is
//! counted exactly once each and spares the other connections and the connection's later
//! frames. One test per binary: the counters are process-wide, so the values asserted here are
//! exactly this test's traffic.

mod common;

use common::*;
use tcp_integration::edge_sim::TypedValue;
use tcp_integration::metrics::{self, Counter};

#[test]
fn bad_input_on_one_connection_is_counted_and_spares_the_others() {
    let port = reserve_port();
    let mut def = text_example(port.port);
    // A decoder that throws on frames starting with "THROW".
    def.uplink_converter.configuration["decoder"] = serde_json::json!(
        "var text = String.fromCharCode.apply(String, payload);\n\
         if (text.indexOf('THROW') === 0) { throw new Error('device sent THROW'); }\n\
         var f = text.split(',');\n\
         var t = {}; t[f[2]] = f[3];\n\
         return {deviceName: f[0], deviceType: f[1], telemetry: t};"
    );
    let h = Harness::start(def, port, &[]);

    let mut bad = h.connect();
    let mut good = h.connect();
    // An over-long frame (maxFrameLength 128), then a throwing frame, then a good one.
    let mut garbage = vec![b'x'; 500];
    garbage.push(b'\n');
    send(&mut bad, &garbage);
    send(&mut bad, b"THROW,default,temperature,1\n");
    send(&mut good, b"GOOD-1,default,temperature,20.5\n");
    send(&mut bad, b"BAD-1,default,temperature,30.5\n");
    let records = h.wait_records(2);
    assert_eq!(records.len(), 2);
    assert_eq!(
        latest(&records, "GOOD-1", "temperature"),
        Some(&TypedValue::Double(20.5))
    );
    assert_eq!(
        latest(&records, "BAD-1", "temperature"),
        Some(&TypedValue::Double(30.5))
    );
    // A connection's failures are counted before the records after them are shipped, so the
    // counts are final once BAD-1 arrived.
    assert_eq!(metrics::get(Counter::FramingErrors), 1);
    assert_eq!(metrics::get(Counter::ConvertErrors), 1);
    // THROW, GOOD-1, BAD-1; the over-long frame is not a frame.
    assert_eq!(metrics::get(Counter::FramesDecoded), 3);
    assert_eq!(metrics::get(Counter::RecordsConverted), 2);

    // The bad connection is still open and served.
    send(&mut bad, b"BAD-1,default,temperature,31.5\n");
    let records = h.wait_records(3);
    assert_eq!(records.len(), 3);
    assert_eq!(
        latest(&records, "BAD-1", "temperature"),
        Some(&TypedValue::Double(31.5))
    );
    assert_eq!(metrics::get(Counter::FramingErrors), 1);
    assert_eq!(metrics::get(Counter::ConvertErrors), 1);
    assert_eq!(metrics::get(Counter::FramesDecoded), 4);
    assert_eq!(metrics::get(Counter::RecordsConverted), 3);
}
