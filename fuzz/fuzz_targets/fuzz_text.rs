//! TEXT framer: header = [max-1, flags, custom delimiter 3 bytes, 4 read sizes], then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_integration_fuzz::framing::{Delimiter, Framer, FramingSpec, TextSpec};
use tcp_integration_fuzz::{check, header_and_stream, read_sizes};

fuzz_target!(|data: &[u8]| {
    let (h, stream) = header_and_stream::<9>(data);
    let max_frame_bytes = usize::from(h[0] % 64) + 1;
    let strip_delimiter = h[1] & 1 == 1;
    let delimiter = match (h[1] >> 1) % 3 {
        0 => Delimiter::Line,
        1 => Delimiter::Nul,
        _ => Delimiter::Custom(h[2..2 + usize::from((h[1] >> 3) % 3) + 1].to_vec()),
    };
    let delimiter_bytes = match &delimiter {
        Delimiter::Line => 2,
        Delimiter::Nul => 1,
        Delimiter::Custom(bytes) => bytes.len(),
    };
    let spec = FramingSpec::Text(TextSpec {
        max_frame_bytes,
        strip_delimiter,
        delimiter,
    });
    let max_frame = max_frame_bytes + if strip_delimiter { 0 } else { delimiter_bytes };
    check(
        || Framer::new(&spec),
        stream,
        &read_sizes(&h[5..9]),
        max_frame_bytes + delimiter_bytes - 1,
        max_frame,
    );
});
