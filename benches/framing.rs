//! Framing throughput, fed the way a connection feeds it: 64 KiB reads appended to one
//! `BytesMut`, drained after each by `decode_batch` (borrowed frames, what the server uses) and,
//! in the `*_decode_bytes` rows, by the per-frame `decode` loop (one `Bytes` per frame). Corpora are generated deterministically (fixed
//! seed): 40-byte text lines, 134-byte JSON objects (one per line), 25-byte binary frames in the
//! docs' layout, ~4 MiB each. A bare `memchr_iter` count of the text corpus's LFs sits in the
//! same groups as the physical baseline (it visits every LF position; it does not count with
//! memchr's vectorised counter).
//!
//! Run: `cargo bench --bench framing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcp_integration::framing::{BinarySpec, ByteOrder, Delimiter, Framer, FramingSpec, TextSpec};

const CORPUS_BYTES: usize = 4 << 20;
const READ_BYTES: usize = 64 << 10;
const SEED: u64 = 0x7b_2024;

fn text_corpus() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut out = Vec::with_capacity(CORPUS_BYTES + 64);
    while out.len() < CORPUS_BYTES {
        let line = format!(
            "SN-{:06},default,temperature,{:.1}",
            rng.u32(..1_000_000),
            rng.f32() * 100.0
        );
        out.extend_from_slice(line.as_bytes());
        out.resize(out.len() + 39 - line.len(), b'0');
        out.push(b'\n');
    }
    out
}

fn json_corpus() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut out = Vec::with_capacity(CORPUS_BYTES + 256);
    while out.len() < CORPUS_BYTES {
        let start = out.len();
        let object = format!(
            "{{\"deviceName\":\"SN-{:06}\",\"deviceType\":\"default\",\"temperature\":{:.1},\
             \"humidity\":{},\"tags\":[\"a\",\"b\"],\"note\":\"",
            rng.u32(..1_000_000),
            rng.f32() * 100.0,
            rng.u8(..100)
        );
        out.extend_from_slice(object.as_bytes());
        // Pad the note so every object is 134 bytes.
        out.resize(start + 134 - 2, b'x');
        out.extend_from_slice(b"\"}");
        out.push(b'\n');
    }
    out
}

fn binary_corpus() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut out = Vec::with_capacity(CORPUS_BYTES + 32);
    while out.len() < CORPUS_BYTES {
        out.extend_from_slice(b"0000\x14");
        let payload = format!(
            "SN-{:06}default{:04.1}",
            rng.u32(..1_000_000),
            rng.f32() * 99.0
        );
        out.extend_from_slice(&payload.as_bytes()[..20]);
    }
    out
}

fn specs() -> [(&'static str, FramingSpec, Vec<u8>, usize); 3] {
    [
        (
            "text",
            FramingSpec::Text(TextSpec {
                max_frame_bytes: 128,
                strip_delimiter: true,
                delimiter: Delimiter::Line,
            }),
            text_corpus(),
            40,
        ),
        ("json", FramingSpec::Json, json_corpus(), 135),
        (
            "binary",
            FramingSpec::Binary(BinarySpec {
                byte_order: ByteOrder::LittleEndian,
                max_frame_bytes: 128,
                length_field_offset: 4,
                length_field_bytes: 1,
                length_adjustment: 0,
                initial_bytes_to_strip: 5,
                fail_fast: false,
            }),
            binary_corpus(),
            25,
        ),
    ]
}

/// Feeds `corpus` in 64 KiB reads, draining with `decode_batch`; returns the number of frames.
fn frame_stream_batch(spec: &FramingSpec, corpus: &[u8]) -> usize {
    let mut framer = Framer::new(spec);
    let mut buf = BytesMut::with_capacity(2 * READ_BYTES);
    let mut nr_frames = 0;
    for read in corpus.chunks(READ_BYTES) {
        buf.extend_from_slice(read);
        framer.decode_batch(&mut buf, |item| {
            if let Ok(frame) = item {
                black_box(frame);
                nr_frames += 1;
            }
        });
    }
    nr_frames
}

/// Feeds `corpus` in 64 KiB reads, draining with the per-frame `decode`; returns the number of
/// frames.
fn frame_stream_bytes(spec: &FramingSpec, corpus: &[u8]) -> usize {
    let mut framer = Framer::new(spec);
    let mut buf = BytesMut::with_capacity(2 * READ_BYTES);
    let mut nr_frames = 0;
    for read in corpus.chunks(READ_BYTES) {
        buf.extend_from_slice(read);
        while let Some(item) = framer.decode(&mut buf) {
            if let Ok(frame) = item {
                black_box(&frame);
                nr_frames += 1;
            }
        }
    }
    nr_frames
}

fn bench_framing(c: &mut Criterion) {
    let specs = specs();
    for (spec_name, spec, corpus, record_bytes) in &specs {
        assert_eq!(corpus.len() % record_bytes, 0, "{spec_name} corpus");
        assert_eq!(
            frame_stream_batch(spec, corpus),
            corpus.len() / record_bytes,
            "{spec_name}"
        );
        assert_eq!(
            frame_stream_bytes(spec, corpus),
            corpus.len() / record_bytes,
            "{spec_name}"
        );
    }
    let text = &specs[0].2;
    let nr_lines = memchr::memchr_iter(b'\n', text).count();
    for unit in ["bytes", "frames"] {
        let mut group = c.benchmark_group(format!("framing_{unit}"));
        let throughput = |corpus: &[u8], record_bytes: usize| match unit {
            "bytes" => Throughput::Bytes(corpus.len() as u64),
            _ => Throughput::Elements((corpus.len() / record_bytes) as u64),
        };
        group.throughput(throughput(text, 40));
        group.bench_function("memchr_iter_text_baseline", |b| {
            // Visit every LF position, as a framer must (`.count()` would use memchr's
            // vectorised counter, which never materialises a position).
            b.iter(|| {
                let mut nr_found = 0usize;
                for position in memchr::memchr_iter(b'\n', black_box(text)) {
                    black_box(position);
                    nr_found += 1;
                }
                assert_eq!(nr_found, nr_lines);
                nr_found
            })
        });
        for (spec_name, spec, corpus, record_bytes) in &specs {
            group.throughput(throughput(corpus, *record_bytes));
            group.bench_function(*spec_name, |b| {
                b.iter(|| frame_stream_batch(spec, black_box(corpus)))
            });
            group.bench_function(format!("{spec_name}_decode_bytes"), |b| {
                b.iter(|| frame_stream_bytes(spec, black_box(corpus)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_framing);
criterion_main!(benches);
