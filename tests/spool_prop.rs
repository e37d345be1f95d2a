//! Property: under any sequence of appends, reads, acks, rewinds, clean reopens and crashes, the
//! spool never loses an unacknowledged record, never returns an acknowledged one after a reopen,
//! and always hands records out in sequence order with the exact bytes appended.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tcp_integration::uplink::spool::{FsyncPolicy, FullPolicy, Spool, SpoolOptions};

#[derive(Debug, Clone)]
enum Op {
    /// Record lengths of one batch.
    Append(Vec<usize>),
    Read {
        max_records: usize,
        max_bytes: usize,
    },
    /// Ack through the pending record at this index (modulo the number pending).
    Ack(usize),
    Rewind,
    CleanReopen,
    /// Drop without running the destructor: nothing is flushed or persisted on the way out.
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..300, 1..24).prop_map(Op::Append),
        4 => (1usize..40, 1usize..4000).prop_map(|(max_records, max_bytes)| Op::Read { max_records, max_bytes }),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Rewind),
        1 => Just(Op::CleanReopen),
        1 => Just(Op::CrashReopen),
    ]
}

fn record_bytes(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

struct Model {
    /// Unacknowledged records in order.
    pending: VecDeque<(u64, Bytes)>,
    /// How many of `pending` the read cursor has passed.
    read_pos: usize,
    next_seq: u64,
}

fn run(ops: Vec<Op>, segment_bytes: u64, memory_tail_bytes: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SpoolOptions {
        dir: dir.path().to_path_buf(),
        segment_bytes,
        max_bytes: 1 << 30,
        fsync: FsyncPolicy::Never,
        full_policy: FullPolicy::Backpressure,
        memory_tail_bytes,
        // Every ack is persisted at once, so even a crash keeps every acknowledgement.
        ack_persist_interval: Duration::ZERO,
    };
    let (mut spool, _) = Spool::open(options.clone()).expect("open");
    let mut model = Model {
        pending: VecDeque::new(),
        read_pos: 0,
        next_seq: 1,
    };

    for op in ops {
        match op {
            Op::Append(lens) => {
                let owned: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, len)| record_bytes(model.next_seq + i as u64, *len))
                    .collect();
                let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
                let outcome = spool.append_batch(&refs).expect("append");
                prop_assert_eq!(outcome.first_seq, model.next_seq);
                for (i, record) in owned.into_iter().enumerate() {
                    model
                        .pending
                        .push_back((outcome.first_seq + i as u64, Bytes::from(record)));
                }
                model.next_seq = outcome.last_seq + 1;
            }
            Op::Read {
                max_records,
                max_bytes,
            } => {
                let mut out = Vec::new();
                let n = spool
                    .read_next(max_records, max_bytes, &mut out)
                    .expect("read");
                prop_assert_eq!(n, out.len());
                let available = model.pending.len() - model.read_pos;
                prop_assert!(n <= max_records.min(available));
                if available > 0 {
                    prop_assert!(n >= 1);
                }
                let expect: Vec<(u64, Bytes)> = model
                    .pending
                    .iter()
                    .skip(model.read_pos)
                    .take(n)
                    .cloned()
                    .collect();
                prop_assert_eq!(&out, &expect);
                let bytes: usize = out.iter().map(|(_, b)| b.len()).sum();
                prop_assert!(n <= 1 || bytes <= max_bytes);
                // Stopped early only because the next record would exceed the byte budget.
                if n < max_records.min(available) {
                    let next_len = model.pending[model.read_pos + n].1.len();
                    prop_assert!(bytes + next_len > max_bytes);
                }
                model.read_pos += n;
            }
            Op::Ack(pick) => {
                if model.pending.is_empty() {
                    continue;
                }
                let index = pick % model.pending.len();
                let seq = model.pending[index].0;
                spool.ack_through(seq).expect("ack");
                model.pending.drain(..=index);
                model.read_pos = model.read_pos.saturating_sub(index + 1);
            }
            Op::Rewind => {
                spool.rewind_to_acked();
                model.read_pos = 0;
            }
            Op::CleanReopen | Op::CrashReopen => {
                if matches!(op, Op::CrashReopen) {
                    std::mem::forget(spool);
                } else {
                    drop(spool);
                }
                let (reopened, report) = Spool::open(options.clone()).expect("reopen");
                spool = reopened;
                prop_assert!(report.corruptions.is_empty());
                prop_assert_eq!(report.nr_pending_records, model.pending.len() as u64);
                prop_assert!(report.next_seq >= model.next_seq);
                model.next_seq = report.next_seq;
                model.read_pos = 0;
            }
        }
        let stats = spool.stats();
        prop_assert_eq!(stats.nr_pending_records, model.pending.len() as u64);
    }

    // Finally, everything pending comes back in order, from a fresh open too.
    drop(spool);
    let (mut spool, _) = Spool::open(options).expect("final open");
    let mut out = Vec::new();
    while spool.read_next(100, usize::MAX, &mut out).expect("read") > 0 {}
    let expect: Vec<(u64, Bytes)> = model.pending.into_iter().collect();
    prop_assert_eq!(out, expect);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn spool_never_loses_unacked_nor_returns_acked(
        ops in prop::collection::vec(op(), 1..60),
        segment_bytes in prop_oneof![Just(64u64), Just(700), Just(5000)],
        memory_tail_bytes in prop_oneof![Just(0usize), Just(2000), Just(1 << 20)],
    ) {
        run(ops, segment_bytes, memory_tail_bytes)?;
    }
}
