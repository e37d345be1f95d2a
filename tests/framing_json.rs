//! JSON framing follows ThingsBoard's (Netty's) brace matcher rule by rule (contract §3.3).

mod framing_common;

use bytes::BytesMut;
use framing_common::{items, ok, run, run_reads};
use tcp_integration::framing::json::{JSON_MAX_FRAME_BYTES, JsonFramer};
use tcp_integration::framing::{Framer, FramingError, FramingSpec};

const JSON: FramingSpec = FramingSpec::Json;

#[test]
fn json_skips_leading_whitespace() {
    // Java's Character.isWhitespace: 0x09-0x0D, 0x1C-0x1F and space.
    let stream = b" \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f{\"a\":1}\n \n[2]";
    assert_eq!(items(&JSON, stream), vec![ok(b"{\"a\":1}"), ok(b"[2]")]);
}

#[test]
fn json_object_is_one_frame() {
    let stream = b"{\"deviceName\":\"SN-002\",\"temperature\":25.7}{\"b\":{}}";
    assert_eq!(
        items(&JSON, stream),
        vec![
            ok(b"{\"deviceName\":\"SN-002\",\"temperature\":25.7}"),
            ok(b"{\"b\":{}}")
        ]
    );
}

#[test]
fn json_top_level_array_is_one_frame() {
    let stream = b"[{\"a\":1},{\"a\":2}] [[],[]]";
    assert_eq!(
        items(&JSON, stream),
        vec![ok(b"[{\"a\":1},{\"a\":2}]"), ok(b"[[],[]]")]
    );
}

#[test]
fn json_frame_ends_when_nesting_returns_to_zero() {
    let stream = b"{\"a\":{\"b\":[1,{\"c\":[]}]}}{}";
    assert_eq!(
        items(&JSON, stream),
        vec![ok(b"{\"a\":{\"b\":[1,{\"c\":[]}]}}"), ok(b"{}")]
    );
}

#[test]
fn json_bracket_kinds_are_counted_not_matched() {
    // No validation: "]" closes a "{" as far as the counter is concerned.
    assert_eq!(items(&JSON, b"{]{[}}"), vec![ok(b"{]"), ok(b"{[}}")]);
}

#[test]
fn json_brackets_inside_strings_are_ignored() {
    let stream = b"{\"a\":\"}]{[\"}";
    assert_eq!(items(&JSON, stream), vec![ok(stream)]);
}

#[test]
fn json_escaped_quote_does_not_end_string() {
    let stream = b"{\"a\":\"x\\\"}\"}";
    assert_eq!(items(&JSON, stream), vec![ok(stream)]);
}

#[test]
fn json_escaped_backslash_before_quote_ends_string() {
    // "x\\" is a complete string: the quote after two backslashes is not escaped.
    let stream = b"{\"a\":\"x\\\\\"}";
    assert_eq!(items(&JSON, stream), vec![ok(stream)]);
}

#[test]
fn json_escape_split_across_reads_is_honoured() {
    let stream: &[u8] = b"{\"a\":\"x\\\"}\"} {\"b\":\"\\\\\"}";
    for cut in 0..=stream.len() {
        let out = run(&JSON, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(
            out.items,
            vec![ok(b"{\"a\":\"x\\\"}\"}"), ok(b"{\"b\":\"\\\\\"}")],
            "cut at {cut}"
        );
    }
}

#[test]
fn json_leading_non_bracket_corrupts_connection_and_is_reported_once() {
    let out = run(&JSON, &[b"{\"ok\":1} x{\"a\":1}", b"{\"b\":2}\n", b"[3]"]);
    assert_eq!(
        out.items,
        vec![
            ok(b"{\"ok\":1}"),
            Err(FramingError::JsonCorrupted { byte: b'x' })
        ]
    );
    // Everything after the corruption is counted as discarded, never framed.
    assert_eq!(
        out.discarded_bytes,
        (b"x{\"a\":1}".len() + b"{\"b\":2}\n".len() + 3) as u64
    );
    assert!(out.left.is_empty());
}

#[test]
fn json_separator_between_frames_corrupts_connection() {
    let out = run(&JSON, &[b"{\"a\":1},{\"b\":2}"]);
    assert_eq!(
        out.items,
        vec![
            ok(b"{\"a\":1}"),
            Err(FramingError::JsonCorrupted { byte: b',' })
        ]
    );
}

#[test]
fn json_non_ascii_byte_is_not_whitespace() {
    // 0xA0 (NBSP in Latin-1) is a negative Java byte: not whitespace, so it corrupts.
    let out = run(&JSON, &[b"\xa0{}"]);
    assert_eq!(
        out.items,
        vec![Err(FramingError::JsonCorrupted { byte: 0xa0 })]
    );
}

#[test]
fn json_incomplete_frame_is_not_emitted() {
    let out = run(&JSON, &[b"{\"a\":[1,2"]);
    assert!(out.items.is_empty());
    assert_eq!(out.left, b"{\"a\":[1,2");
}

#[test]
fn json_buffer_cap_is_one_mebibyte() {
    assert_eq!(JSON_MAX_FRAME_BYTES, 1024 * 1024);
    // A frame of exactly 1 MiB passes ...
    let mut exact = vec![b'{'; 1];
    exact.extend_from_slice(b"\"");
    exact.resize(JSON_MAX_FRAME_BYTES - 2, b'a');
    exact.extend_from_slice(b"\"}");
    assert_eq!(exact.len(), JSON_MAX_FRAME_BYTES);
    let reads: Vec<&[u8]> = exact.chunks(65536).collect();
    assert_eq!(run(&JSON, &reads).items, vec![Ok(exact.clone())]);
    // ... one byte more does not: the first 1 MiB is discarded and reported.
    let mut over = exact[..JSON_MAX_FRAME_BYTES - 1].to_vec();
    over.extend_from_slice(b"a\"}");
    let reads: Vec<&[u8]> = over.chunks(65536).collect();
    let out = run(&JSON, &reads);
    assert_eq!(
        out.items,
        vec![
            Err(FramingError::JsonBufferOverflow {
                max_frame_bytes: JSON_MAX_FRAME_BYTES
            }),
            // Framing restarts mid-object, as in ThingsBoard: that corrupts the connection.
            Err(FramingError::JsonCorrupted { byte: b'"' }),
        ]
    );
    assert_eq!(out.discarded_bytes, over.len() as u64);
}

#[test]
fn json_buffer_never_grows_past_cap() {
    let mut framer = Framer::Json(JsonFramer::with_max_frame_bytes(100));
    let mut buf = BytesMut::new();
    let mut errors = Vec::new();
    buf.extend_from_slice(b"[");
    for _ in 0..50 {
        buf.extend_from_slice(b"[1,2,3,");
        while let Some(item) = framer.decode(&mut buf) {
            errors.push(item.expect_err("no frame closes"));
        }
        assert!(buf.len() < 100, "buffered {} bytes", buf.len());
    }
    assert_eq!(
        errors,
        vec![
            FramingError::JsonBufferOverflow {
                max_frame_bytes: 100
            },
            // Byte 100 of "[" + "[1,2,3,"...: framing restarts at a '1'.
            FramingError::JsonCorrupted { byte: b'1' },
        ]
    );
}

#[test]
fn json_frames_longer_than_a_simd_block_are_found() {
    let mut stream = Vec::new();
    for n in 0..20 {
        stream.extend_from_slice(b"{\"k\":\"");
        stream.extend(std::iter::repeat_n(b'v', n * 13));
        stream.extend_from_slice(b"\",\"n\":[1,2,{\"x\":\"]\"}]}\r\n");
    }
    let expected: Vec<_> = stream
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| ok(&line[..line.len() - 1]))
        .collect();
    assert_eq!(expected.len(), 20);
    let reads: Vec<&[u8]> = stream.chunks(7).collect();
    assert_eq!(run_reads(Framer::new(&JSON), &reads).items, expected);
    assert_eq!(items(&JSON, &stream), expected);
}
