//! BINARY framer: header = [flags, max-1, offset, adjustment, strip, 4 read sizes], then the
//! stream. Invalid specs are skipped after checking that validation rejects them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_integration_fuzz::framing::{BinarySpec, ByteOrder, Framer, FramingSpec};
use tcp_integration_fuzz::{check, header_and_stream, read_sizes};

fuzz_target!(|data: &[u8]| {
    let (h, stream) = header_and_stream::<9>(data);
    let spec = BinarySpec {
        byte_order: if h[0] & 1 == 1 {
            ByteOrder::LittleEndian
        } else {
            ByteOrder::BigEndian
        },
        max_frame_bytes: usize::from(h[1]) + 1,
        length_field_offset: usize::from(h[2] % 16),
        length_field_bytes: usize::from((h[0] >> 1) % 10),
        length_adjustment: i64::from(h[3] as i8),
        initial_bytes_to_strip: usize::from(h[4] % 32),
        fail_fast: h[0] & 0x80 != 0,
    };
    let (max_frame_bytes, strip) = (spec.max_frame_bytes, spec.initial_bytes_to_strip);
    let spec = FramingSpec::Binary(spec);
    let Ok(_) = Framer::try_new(&spec) else {
        return;
    };
    check(
        || Framer::new(&spec),
        stream,
        &read_sizes(&h[5..9]),
        max_frame_bytes,
        max_frame_bytes - strip.min(max_frame_bytes),
    );
});
