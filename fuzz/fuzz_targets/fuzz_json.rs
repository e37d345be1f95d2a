//! JSON framer: header = [cap selector, 4 read sizes], then the stream. Small caps reach the
//! overflow path; selector 0 uses ThingsBoard's 1 MiB cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_integration_fuzz::framing::Framer;
use tcp_integration_fuzz::framing::json::{JSON_MAX_FRAME_BYTES, JsonFramer};
use tcp_integration_fuzz::{check, header_and_stream, read_sizes};

fuzz_target!(|data: &[u8]| {
    let (h, stream) = header_and_stream::<5>(data);
    let cap = if h[0] == 0 {
        JSON_MAX_FRAME_BYTES
    } else {
        usize::from(h[0])
    };
    check(
        || Framer::Json(JsonFramer::with_max_frame_bytes(cap)),
        stream,
        &read_sizes(&h[1..5]),
        cap,
        cap,
    );
});
