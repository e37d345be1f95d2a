//! BINARY framing follows Netty's LengthFieldBasedFrameDecoder as ThingsBoard configures it,
//! rule by rule (contract §3.3).

mod framing_common;

use bytes::BytesMut;
use framing_common::{binary, items, ok, run};
use tcp_integration::framing::ByteOrder::{BigEndian, LittleEndian};
use tcp_integration::framing::{Framer, FramingError, FramingSpecError};

#[test]
fn binary_length_field_of_1_2_3_4_8_bytes_in_both_byte_orders() {
    for (nr, le, be) in [
        (1, vec![3u8], vec![3u8]),
        (2, vec![3, 0], vec![0, 3]),
        (3, vec![3, 0, 0], vec![0, 0, 3]),
        (4, vec![3, 0, 0, 0], vec![0, 0, 0, 3]),
        (
            8,
            vec![3, 0, 0, 0, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 3],
        ),
    ] {
        for (order, field) in [(LittleEndian, le.clone()), (BigEndian, be.clone())] {
            let spec = binary(order, 64, 0, nr, 0, nr, false);
            let mut stream = field.clone();
            stream.extend_from_slice(b"abc");
            // The next frame's header, not complete yet.
            stream.extend_from_slice(&field[..nr - 1]);
            let out = run(&spec, &[&stream]);
            assert_eq!(out.items, vec![ok(b"abc")], "{nr} bytes {order:?}");
            assert_eq!(out.left, field[..nr - 1]);
        }
    }
}

#[test]
fn binary_length_field_of_1_to_4_bytes_is_unsigned() {
    // 0xFFFFFFFF is 4294967295, not -1: a too-long frame, not a negative length.
    let spec = binary(BigEndian, 64, 0, 4, 0, 0, true);
    assert_eq!(
        items(&spec, &[0xff, 0xff, 0xff, 0xff]),
        vec![Err(FramingError::BinaryFrameTooLong {
            frame_bytes: 4_294_967_299,
            max_frame_bytes: 64
        })]
    );
    let spec = binary(LittleEndian, 300, 0, 1, 0, 1, false);
    let mut stream = vec![0xff];
    stream.extend(std::iter::repeat_n(7u8, 255));
    assert_eq!(items(&spec, &stream), vec![Ok(vec![7u8; 255])]);
}

#[test]
fn binary_negative_8_byte_length_is_error_and_header_is_skipped() {
    let spec = binary(BigEndian, 64, 1, 8, 0, 9, false);
    let mut stream = vec![0xaa];
    stream.extend_from_slice(&(-2i64).to_be_bytes());
    // The next bytes are read as a new header: no resynchronisation.
    stream.extend_from_slice(&[0xbb, 0, 0, 0, 0, 0, 0, 0, 2, b'o', b'k']);
    let out = run(&spec, &[&stream]);
    assert_eq!(
        out.items,
        vec![
            Err(FramingError::NegativeLength {
                length: -2,
                header_bytes: 9
            }),
            ok(b"ok")
        ]
    );
    assert_eq!(out.discarded_bytes, 9);
}

#[test]
fn binary_8_byte_length_wraps_like_java_long() {
    // i64::MAX + 1 + 8 wraps negative: "shorter than header", not "too long".
    let spec = binary(BigEndian, 64, 0, 8, 1, 0, true);
    let stream = i64::MAX.to_be_bytes();
    assert_eq!(
        items(&spec, &stream),
        vec![Err(FramingError::FrameShorterThanHeader {
            frame_bytes: i64::MIN.wrapping_add(8),
            header_bytes: 8
        })]
    );
}

#[test]
fn binary_length_adjustment_may_be_negative() {
    // The length field counts the whole frame including its 2-byte header.
    let spec = binary(BigEndian, 64, 0, 2, -2, 2, false);
    assert_eq!(
        items(&spec, &[0, 5, b'a', b'b', b'c', 0, 2]),
        vec![ok(b"abc"), ok(b"")]
    );
}

#[test]
fn binary_positive_length_adjustment_covers_trailer() {
    // The length counts the payload only; a 2-byte checksum follows it.
    let spec = binary(LittleEndian, 64, 0, 1, 2, 0, false);
    assert_eq!(
        items(&spec, &[2, b'h', b'i', 0xc1, 0xc2]),
        vec![ok(&[2, b'h', b'i', 0xc1, 0xc2])]
    );
}

#[test]
fn binary_initial_bytes_to_strip_removes_header() {
    let spec = binary(LittleEndian, 64, 2, 1, 0, 2, false);
    // 2-byte prefix, length 3, payload: strip only the prefix, keep the length byte.
    assert_eq!(
        items(&spec, &[0xee, 0xff, 3, b'x', b'y', b'z']),
        vec![ok(&[3, b'x', b'y', b'z'])]
    );
}

#[test]
fn binary_frame_shorter_than_header_is_error_and_header_is_skipped() {
    let spec = binary(BigEndian, 64, 0, 2, -5, 0, false);
    let out = run(&spec, &[&[0, 1, 0, 9, 1, 2, 3, 4, 7]]);
    assert_eq!(
        out.items,
        vec![
            Err(FramingError::FrameShorterThanHeader {
                frame_bytes: -2,
                header_bytes: 2
            }),
            // 9 - 5 + 2 = 6 bytes.
            ok(&[0, 9, 1, 2, 3, 4]),
        ]
    );
    assert_eq!(out.left, [7]);
}

#[test]
fn binary_strip_beyond_frame_is_error_and_frame_is_skipped() {
    let spec = binary(BigEndian, 64, 0, 1, 0, 4, false);
    let out = run(&spec, &[&[2, b'a'], &[b'b', 3, b'x', b'y', b'z']]);
    assert_eq!(
        out.items,
        vec![
            Err(FramingError::StripBeyondFrame {
                frame_bytes: 3,
                strip_bytes: 4
            }),
            ok(b""),
        ]
    );
    assert_eq!(out.discarded_bytes, 3);
}

#[test]
fn binary_too_long_with_fail_fast_is_reported_when_length_is_read() {
    let mut framer = Framer::new(&binary(BigEndian, 8, 0, 1, 0, 1, true));
    let mut buf = BytesMut::from(&[20u8, 1, 2][..]);
    assert_eq!(
        framer.decode(&mut buf),
        Some(Err(FramingError::BinaryFrameTooLong {
            frame_bytes: 21,
            max_frame_bytes: 8
        }))
    );
    assert!(buf.is_empty());
    buf.extend_from_slice(&[0u8; 17]);
    assert_eq!(framer.decode(&mut buf), None);
    buf.extend_from_slice(&[0, 2, b'o', b'k']);
    assert_eq!(
        framer.decode(&mut buf).map(|r| r.map(|f| f.to_vec())),
        Some(ok(b"ok"))
    );
    assert_eq!(framer.discarded_bytes(), 21);
}

#[test]
fn binary_too_long_without_fail_fast_is_reported_after_discard() {
    let mut framer = Framer::new(&binary(BigEndian, 8, 0, 1, 0, 1, false));
    let mut buf = BytesMut::from(&[20u8, 1, 2][..]);
    assert_eq!(framer.decode(&mut buf), None);
    buf.extend_from_slice(&[0u8; 17]);
    assert_eq!(framer.decode(&mut buf), None);
    buf.extend_from_slice(&[0, 2, b'o', b'k']);
    assert_eq!(
        framer.decode(&mut buf),
        Some(Err(FramingError::BinaryFrameTooLong {
            frame_bytes: 21,
            max_frame_bytes: 8
        }))
    );
    assert_eq!(
        framer.decode(&mut buf).map(|r| r.map(|f| f.to_vec())),
        Some(ok(b"ok"))
    );
}

#[test]
fn binary_too_long_frame_already_buffered_is_reported_at_once_without_fail_fast() {
    let spec = binary(BigEndian, 4, 0, 1, 0, 1, false);
    let out = run(&spec, &[&[5, 1, 2, 3, 4, 5, 1, b'!']]);
    assert_eq!(
        out.items,
        vec![
            Err(FramingError::BinaryFrameTooLong {
                frame_bytes: 6,
                max_frame_bytes: 4
            }),
            ok(b"!")
        ]
    );
}

#[test]
fn binary_waits_for_header_then_for_whole_frame() {
    let mut framer = Framer::new(&binary(LittleEndian, 64, 1, 2, 0, 3, false));
    let mut buf = BytesMut::new();
    for byte in [9u8, 4, 0, b'd', b'a', b't'] {
        buf.extend_from_slice(&[byte]);
        assert_eq!(framer.decode(&mut buf), None);
    }
    buf.extend_from_slice(b"a");
    assert_eq!(
        framer.decode(&mut buf).map(|r| r.map(|f| f.to_vec())),
        Some(ok(b"data"))
    );
}

#[test]
fn binary_bytes_after_frame_are_next_header_without_resync() {
    let spec = binary(LittleEndian, 128, 4, 1, 0, 5, false);
    let out = run(&spec, &[b"0000\x02hi\x00\x00\x00"]);
    assert_eq!(out.items, vec![ok(b"hi")]);
    assert_eq!(out.left, [0, 0, 0]);
}

#[test]
fn binary_invalid_construction_is_rejected_at_validation() {
    for nr in [0, 5, 6, 7, 9] {
        assert_eq!(
            Framer::try_new(&binary(LittleEndian, 128, 0, nr, 0, 0, false)).err(),
            Some(FramingSpecError::UnsupportedLengthFieldLength(nr))
        );
    }
    assert_eq!(
        Framer::try_new(&binary(LittleEndian, 0, 0, 1, 0, 0, false)).err(),
        Some(FramingSpecError::ZeroMaxFrameLength)
    );
    assert_eq!(
        Framer::try_new(&binary(LittleEndian, 8, 5, 4, 0, 0, false)).err(),
        Some(FramingSpecError::LengthFieldBeyondMaxFrame {
            offset: 5,
            length_field_bytes: 4,
            max_frame_bytes: 8
        })
    );
    assert!(Framer::try_new(&binary(LittleEndian, 8, 4, 4, -100, 0, false)).is_ok());
}

#[test]
#[should_panic(expected = "validated FramingSpec")]
fn binary_framer_new_refuses_unvalidated_spec() {
    let _ = Framer::new(&binary(LittleEndian, 128, 0, 5, 0, 0, false));
}
