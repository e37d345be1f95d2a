//! The docs' sample payloads with the docs' handler settings give exactly the frames of
//! contract §3.4.

mod framing_common;

use framing_common::{binary, ok, run, text};
use tcp_integration::framing::ByteOrder::LittleEndian;
use tcp_integration::framing::{Delimiter, FramingSpec};

fn docs_text() -> FramingSpec {
    text(128, true, Delimiter::Line)
}

fn docs_binary() -> FramingSpec {
    binary(LittleEndian, 128, 4, 1, 0, 5, false)
}

#[test]
fn sample_text_with_lf_cr_keeps_the_cr_and_needs_a_final_lf() {
    let payload = b"SN-002,default,temperature,25.7\n\rSN-002,default,humidity,69";
    let out = run(&docs_text(), &[payload]);
    assert_eq!(out.items, vec![ok(b"SN-002,default,temperature,25.7")]);
    assert_eq!(out.left, b"\rSN-002,default,humidity,69");
    // Frame 2 only once the stream ends with LF; the CR stays in it.
    let out = run(&docs_text(), &[payload, b"\n"]);
    assert_eq!(
        out.items,
        vec![
            ok(b"SN-002,default,temperature,25.7"),
            ok(b"\rSN-002,default,humidity,69")
        ]
    );
}

#[test]
fn sample_text_as_sent_by_echo() {
    let out = run(
        &docs_text(),
        &[b"SN-002,default,temperature,25.7\nSN-002,default,humidity,69\n"],
    );
    assert_eq!(
        out.items,
        vec![
            ok(b"SN-002,default,temperature,25.7"),
            ok(b"SN-002,default,humidity,69")
        ]
    );
    assert!(out.left.is_empty());
}

#[test]
fn sample_json_object_and_printed_array_are_one_frame_each() {
    let object =
        br#"{"deviceName":"SN-002","deviceType":"default","temperature":25.7,"humidity":69}"#;
    assert_eq!(run(&FramingSpec::Json, &[object]).items, vec![ok(object)]);
    let array =
        br#"[{"deviceName":"SN-002","deviceType":"default","temperature":25.7,"humidity":69}]"#;
    assert_eq!(run(&FramingSpec::Json, &[array]).items, vec![ok(array)]);
}

#[test]
fn sample_binary_gives_17_byte_payload_and_keeps_trailing_zeros() {
    let payload = [
        0x30, 0x30, 0x30, 0x30, 0x11, 0x53, 0x4E, 0x2D, 0x30, 0x30, 0x32, 0x64, 0x65, 0x66, 0x61,
        0x75, 0x6C, 0x74, 0x32, 0x35, 0x2E, 0x37, 0x00, 0x00, 0x00,
    ];
    let out = run(&docs_binary(), &[&payload]);
    assert_eq!(out.items, vec![ok(b"SN-002default25.7")]);
    // 3 bytes < endOffset 5: they wait for more data (dropped at close).
    assert_eq!(out.left, [0, 0, 0]);
}

#[test]
fn sample_black_box_variants() {
    let out = run(&docs_text(), &[b"SN-00000001,default,temperature,25.7\n"]);
    assert_eq!(out.items, vec![ok(b"SN-00000001,default,temperature,25.7")]);
    let mut frame = vec![0, 0, 0, 0, 0x16];
    frame.extend_from_slice(b"SN-00000001default25.7");
    let out = run(&docs_binary(), &[&frame]);
    assert_eq!(out.items, vec![ok(b"SN-00000001default25.7")]);
    assert!(out.left.is_empty());
}
