//! TEXT framing follows ThingsBoard's (Netty's) delimiter decoder rule by rule (contract §3.3).

mod framing_common;

use bytes::BytesMut;
use framing_common::{items, ok, run, text};
use tcp_integration::framing::{Delimiter, Framer, FramingError};

const TOO_LONG_4: FramingError = FramingError::TextFrameTooLong { max_frame_bytes: 4 };

#[test]
fn text_line_separator_ends_frame_at_lf() {
    let spec = text(128, true, Delimiter::Line);
    assert_eq!(
        items(&spec, b"one\ntwo\n\n"),
        vec![ok(b"one"), ok(b"two"), ok(b"")]
    );
}

#[test]
fn text_line_separator_takes_cr_before_lf_as_delimiter() {
    let spec = text(128, true, Delimiter::Line);
    assert_eq!(items(&spec, b"one\r\ntwo\n"), vec![ok(b"one"), ok(b"two")]);
    // Also when the CR and the LF arrive in different reads.
    let spec = text(128, true, Delimiter::Line);
    assert_eq!(
        run(&spec, &[b"one\r", b"\ntwo\n"]).items,
        vec![ok(b"one"), ok(b"two")]
    );
}

#[test]
fn text_lone_cr_is_data() {
    let spec = text(128, true, Delimiter::Line);
    assert_eq!(
        items(&spec, b"a\rb\n\rc\n\r\r\n"),
        vec![ok(b"a\rb"), ok(b"\rc"), ok(b"\r")]
    );
}

#[test]
fn text_strip_delimiter_false_keeps_lf_or_crlf() {
    let spec = text(128, false, Delimiter::Line);
    assert_eq!(items(&spec, b"a\r\nb\n"), vec![ok(b"a\r\n"), ok(b"b\n")]);
    let spec = text(128, false, Delimiter::Custom(b"##".to_vec()));
    assert_eq!(items(&spec, b"a##b##"), vec![ok(b"a##"), ok(b"b##")]);
}

#[test]
fn text_nul_delimiter_ends_frame_at_zero_byte() {
    let spec = text(128, true, Delimiter::Nul);
    assert_eq!(
        items(&spec, b"a\nb\0c\r\n\0"),
        vec![ok(b"a\nb"), ok(b"c\r\n")]
    );
}

#[test]
fn text_custom_separator_multi_byte() {
    let spec = text(128, true, Delimiter::Custom(b"<END>".to_vec()));
    assert_eq!(
        items(&spec, b"x<EN<END>y<END>"),
        vec![ok(b"x<EN"), ok(b"y")]
    );
}

#[test]
fn text_custom_separator_split_across_reads() {
    let spec = text(128, true, Delimiter::Custom(b"<END>".to_vec()));
    let out = run(&spec, &[b"abc<E", b"N", b"D>de<END", b">"]);
    assert_eq!(out.items, vec![ok(b"abc"), ok(b"de")]);
    assert!(out.left.is_empty());
}

#[test]
fn text_custom_separator_first_occurrence_ends_frame() {
    // "aa" inside "xaaay": the first occurrence starts at index 1; the third 'a' begins the next frame.
    let spec = text(128, true, Delimiter::Custom(b"aa".to_vec()));
    assert_eq!(items(&spec, b"xaaayaa"), vec![ok(b"x"), ok(b"ay")]);
}

#[test]
fn text_custom_separator_is_raw_bytes_without_escape_processing() {
    // customSeparatorRawValue "\n" typed in the UI is the two bytes '\' 'n', not LF.
    let spec = text(128, true, Delimiter::Custom(b"\\n".to_vec()));
    assert_eq!(items(&spec, b"a\nb\\nc"), vec![ok(b"a\nb")]);
}

#[test]
fn text_max_frame_length_excludes_delimiter() {
    let spec = text(4, false, Delimiter::Line);
    assert_eq!(
        items(&spec, b"abcd\r\nabcd\n"),
        vec![ok(b"abcd\r\n"), ok(b"abcd\n")]
    );
    let spec = text(4, true, Delimiter::Custom(b"###".to_vec()));
    assert_eq!(items(&spec, b"abcd###"), vec![ok(b"abcd")]);
}

#[test]
fn text_over_long_frame_is_discarded_up_to_next_delimiter_and_connection_continues() {
    let spec = text(4, true, Delimiter::Line);
    let out = run(&spec, &[b"abcde\r\nok\n"]);
    assert_eq!(out.items, vec![Err(TOO_LONG_4), ok(b"ok")]);
    assert_eq!(out.discarded_bytes, 7);
}

#[test]
fn text_over_long_frame_is_reported_at_once_before_its_delimiter() {
    let mut framer = Framer::new(&text(4, true, Delimiter::Nul));
    let mut buf = BytesMut::from(&b"abcde"[..]);
    assert_eq!(framer.decode(&mut buf), Some(Err(TOO_LONG_4)));
    assert!(
        buf.is_empty(),
        "the over-long bytes are dropped, not buffered"
    );
    assert_eq!(framer.decode(&mut buf), None);
    // The rest of the over-long frame is dropped silently; the next frame is intact.
    buf.extend_from_slice(b"fghij");
    assert_eq!(framer.decode(&mut buf), None);
    buf.extend_from_slice(b"k\0ok\0");
    assert_eq!(
        framer.decode(&mut buf).map(|r| r.map(|f| f.to_vec())),
        Some(ok(b"ok"))
    );
    assert_eq!(framer.decode(&mut buf), None);
    assert_eq!(framer.discarded_bytes(), 12);
}

#[test]
fn text_over_long_frame_is_reported_once() {
    let spec = text(4, true, Delimiter::Line);
    let mut reads: Vec<&[u8]> = vec![b"0123456789"; 10];
    reads.push(b"\nfine\n");
    assert_eq!(run(&spec, &reads).items, vec![Err(TOO_LONG_4), ok(b"fine")]);
}

#[test]
fn text_bytes_after_last_delimiter_are_never_a_frame() {
    let spec = text(128, true, Delimiter::Line);
    let out = run(&spec, &[b"a\nb\nrest"]);
    assert_eq!(out.items, vec![ok(b"a"), ok(b"b")]);
    assert_eq!(out.left, b"rest");
}

#[test]
fn text_trailing_cr_waits_for_the_next_read_before_counting() {
    // "abcd\r" is 5 bytes > 4, but the CR may be half of a CRLF: it must not trigger
    // "too long" before the next read decides (same result as reading "abcd\r\n" at once).
    let spec = text(4, true, Delimiter::Line);
    assert_eq!(run(&spec, &[b"abcd\r", b"\n"]).items, vec![ok(b"abcd")]);
    let spec = text(4, true, Delimiter::Line);
    assert_eq!(
        run(&spec, &[b"abcd\r", b"x\n"]).items,
        vec![Err(TOO_LONG_4)]
    );
    let spec = text(4, true, Delimiter::Custom(b"##".to_vec()));
    assert_eq!(run(&spec, &[b"abcd#", b"#"]).items, vec![ok(b"abcd")]);
}

#[test]
fn text_buffer_never_grows_past_limit_without_delimiter() {
    let mut framer = Framer::new(&text(16, true, Delimiter::Custom(b"|||".to_vec())));
    let mut buf = BytesMut::new();
    let mut nr_errors = 0;
    for _ in 0..1000 {
        buf.extend_from_slice(b"0123456789|");
        while let Some(item) = framer.decode(&mut buf) {
            assert_eq!(
                item,
                Err(FramingError::TextFrameTooLong {
                    max_frame_bytes: 16
                })
            );
            nr_errors += 1;
        }
        assert!(buf.len() <= 16 + 2, "buffered {} bytes", buf.len());
    }
    assert_eq!(nr_errors, 1);
}

#[test]
fn text_frames_share_the_read_buffer() {
    let mut framer = Framer::new(&text(128, true, Delimiter::Line));
    let mut buf = BytesMut::from(&b"first\nsecond\n"[..]);
    let start = buf.as_ptr() as usize;
    let first = framer
        .decode(&mut buf)
        .and_then(Result::ok)
        .expect("first frame");
    let second = framer
        .decode(&mut buf)
        .and_then(Result::ok)
        .expect("second frame");
    assert_eq!(first.as_ptr() as usize, start);
    assert_eq!(second.as_ptr() as usize, start + 6);
}

#[test]
fn text_invalid_construction_is_rejected_at_validation() {
    assert!(Framer::try_new(&text(0, true, Delimiter::Line)).is_err());
    assert!(Framer::try_new(&text(8, true, Delimiter::Custom(Vec::new()))).is_err());
}
