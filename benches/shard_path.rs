//! The shard → uplink path on one core, without the network: device reads in, `UplinkMsg`
//! bytes out. Each group runs, on the same frames and in the same run:
//! * `converter_noop`: a no-op JS call per frame (`return [];`), the hand-off floor;
//! * `converter_only`: the docs' decoder per pre-split frame, frame → protobuf record (the
//!   converter bench's figure);
//! * `reads_to_records`: what a connection task does per read — framer, converter, tagging
//!   (`shard::pipeline::convert_frames`, the server's own code);
//! * `reads_to_batches`: the above plus what the uplink core does with the records — append to
//!   the spool (fsync `never`), read batches of up to 500 records back, concatenate them into
//!   `UplinkMsg` bytes and acknowledge them.
//!
//! Reads are 16 KiB slices of a corpus of 1024 frames from 100 devices (the server's read
//! size). Throughput is frames.
//!
//! Run: `cargo bench --bench shard_path -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcp_integration::convert::{ConverterConfig, ConverterRuntime, ScriptLimits};
use tcp_integration::framing::{Delimiter, Framer, FramingSpec, TextSpec};
use tcp_integration::shard::ShippedRecord;
use tcp_integration::shard::pipeline::convert_frames;
use tcp_integration::uplink::spool::{FsyncPolicy, FullPolicy, Spool, SpoolOptions};

const TEXT_DECODER: &str = include_str!("../examples/converters/tcp-text-decoder.js");
const JSON_DECODER: &str = include_str!("../examples/converters/tcp-json-decoder.js");
const NR_FRAMES: usize = 1024;
const READ_BYTES: usize = 16 * 1024;
const BATCH_MAX_RECORDS: usize = 500;
const BATCH_MAX_BYTES: usize = 1024 * 1024;

fn text_frame(i: usize) -> String {
    format!(
        "SN-{:03},default,temperature,{}.{}\n",
        i % 100,
        20 + i % 10,
        i % 7
    )
}

fn json_frame(i: usize) -> String {
    format!(
        "{{\"deviceName\":\"SN-{:03}\",\"deviceType\":\"default\",\"temperature\":{}.{},\"humidity\":{}}}\n",
        i % 100,
        20 + i % 10,
        i % 7,
        40 + i % 50
    )
}

/// Both formats are framed by line here (JSON frames are one object per line, so the JSON
/// framer would find the same frames; the line framer keeps the framing cost equal).
fn framer() -> Framer {
    Framer::new(&FramingSpec::Text(TextSpec {
        max_frame_bytes: 1024,
        strip_delimiter: true,
        delimiter: Delimiter::Line,
    }))
}

fn runtime(decoder: &str) -> ConverterRuntime {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).expect("runtime");
    rt.set_integration_metadata(&[("integrationName".into(), "TCP".into())]);
    rt.set_uplink(&ConverterConfig::js(Some(decoder.to_owned()), None))
        .expect("decoder compiles");
    rt
}

fn spool(dir: &std::path::Path) -> Spool {
    let (spool, _) = Spool::open(SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 64 * 1024 * 1024,
        max_bytes: 1 << 30,
        fsync: FsyncPolicy::Never,
        full_policy: FullPolicy::Backpressure,
        memory_tail_bytes: 16 * 1024 * 1024,
        ack_persist_interval: Duration::from_millis(200),
    })
    .expect("spool opens");
    spool
}

/// Runs every read through the connection's pipeline; returns the records.
fn reads_to_records(
    reads: &[Bytes],
    framer: &mut Framer,
    rt: &mut ConverterRuntime,
    pending: &mut BytesMut,
    converted: &mut Vec<tcp_integration::convert::UplinkRecord>,
    out: &mut Vec<ShippedRecord>,
) -> u64 {
    let mut frames = 0;
    for read in reads {
        pending.extend_from_slice(read);
        frames += convert_frames(framer, rt, pending, converted, out, |f| {
            panic!("bench frames must convert: {f:?}")
        });
    }
    frames
}

fn group(c: &mut Criterion, name: &str, corpus: &[u8], decoder: &str) {
    let frames: Vec<&[u8]> = corpus
        .split(|b| *b == b'\n')
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(frames.len(), NR_FRAMES);
    let reads: Vec<Bytes> = corpus
        .chunks(READ_BYTES)
        .map(Bytes::copy_from_slice)
        .collect();

    let mut group = c.benchmark_group(format!("shard_path_{name}"));
    group.throughput(Throughput::Elements(NR_FRAMES as u64));

    let mut noop = runtime("return [];");
    let mut converted = Vec::new();
    group.bench_function("converter_noop", |b| {
        b.iter(|| {
            for frame in &frames {
                converted.clear();
                noop.decode_uplink(black_box(frame), &mut converted)
                    .expect("no-op");
            }
        })
    });

    let mut rt = runtime(decoder);
    group.bench_function("converter_only", |b| {
        b.iter(|| {
            for frame in &frames {
                converted.clear();
                rt.decode_uplink(black_box(frame), &mut converted)
                    .expect("decodes");
            }
            black_box(&converted);
        })
    });

    let mut framer = framer();
    let mut pending = BytesMut::new();
    let mut records = Vec::new();
    group.bench_function("reads_to_records", |b| {
        b.iter(|| {
            records.clear();
            let n = reads_to_records(
                &reads,
                &mut framer,
                &mut rt,
                &mut pending,
                &mut converted,
                &mut records,
            );
            assert_eq!(n as usize, NR_FRAMES);
            black_box(&records);
        })
    });

    std::fs::create_dir_all("target/shard-path-bench").expect("bench dir");
    let dir = tempfile::tempdir_in("target/shard-path-bench").expect("tempdir");
    let mut spool = spool(dir.path());
    let mut scratch = Vec::new();
    group.bench_function("reads_to_batches", |b| {
        b.iter(|| {
            records.clear();
            reads_to_records(
                &reads,
                &mut framer,
                &mut rt,
                &mut pending,
                &mut converted,
                &mut records,
            );
            let slices: Vec<&[u8]> = records.iter().map(|r| r.tagged.as_ref()).collect();
            spool.append_batch(&slices).expect("append");
            let mut nr_batched = 0;
            loop {
                scratch.clear();
                spool
                    .read_next(BATCH_MAX_RECORDS, BATCH_MAX_BYTES, &mut scratch)
                    .expect("read");
                let Some(&(last_seq, _)) = scratch.last() else {
                    break;
                };
                let size: usize = scratch.iter().map(|(_, r)| r.len()).sum();
                let mut msg = BytesMut::with_capacity(size);
                for (_, record) in &scratch {
                    msg.extend_from_slice(record);
                }
                black_box(msg.freeze());
                nr_batched += scratch.len();
                spool.ack_through(last_seq).expect("ack");
            }
            assert_eq!(nr_batched, NR_FRAMES);
        })
    });
    group.finish();
}

fn shard_path(c: &mut Criterion) {
    let text: String = (0..NR_FRAMES).map(text_frame).collect();
    let json: String = (0..NR_FRAMES).map(json_frame).collect();
    group(c, "text", text.as_bytes(), TEXT_DECODER);
    group(c, "json", json.as_bytes(), JSON_DECODER);
}

criterion_group!(benches, shard_path);
criterion_main!(benches);
