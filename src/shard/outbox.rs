//! The shard's outbox: records converted by the shard's connections wait here for a moment, so
//! that the uplink core's thread is woken once per flush instead of once per socket read.
//!
//! With many devices each sending now and then (10,000 devices at 1 frame/s), almost every read
//! yields one record, and handing each to the uplink core on its own costs a cross-thread
//! wake-up (an eventfd write here, a context switch there) several times the conversion itself.
//! The uplink core batches for `linger` anyway, and it starts its linger clock at the moment the
//! oldest record was *read* (`RecordBatch::read_at`), so waiting here for part of the linger
//! does not delay delivery: the batch leaves when it would have left.
//!
//! Invariants:
//! * a flush happens once `delay` has passed since the oldest waiting record was read, or at
//!   once when `flush_records` are waiting; with `delay` zero every push flushes;
//! * backpressure is kept: a connection task waits (and so stops reading its socket) while
//!   `max_records` are waiting, and the flusher waits on the bounded channel to the uplink core,
//!   so a slow ThingsBoard still closes the devices' TCP windows; a waiting connection holds
//!   one waker in the outbox however often it is polled;
//! * nothing is dropped: `close` makes the flusher send what is left and end, and
//!   [`Outbox::run_flusher`] returns only when the outbox is empty (or the uplink core is gone).

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use tokio::sync::mpsc;

use super::RecordBatch;

/// Records waiting in the outbox: a flush is due at once from `flush_records` on, and
/// connection tasks wait for room from `max_records` on.
#[derive(Debug, Clone, Copy)]
pub(super) struct OutboxLimits {
    pub delay: Duration,
    pub flush_records: usize,
    pub max_records: usize,
}

/// The uplink core stopped taking records: the shard cannot ship anything any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the uplink core stopped taking records")]
pub(super) struct UplinkGone;

pub(super) struct Outbox {
    limits: OutboxLimits,
    batches: RefCell<Vec<RecordBatch>>,
    nr_records: Cell<usize>,
    /// When the oldest waiting record was read.
    oldest_read_at: Cell<Option<Instant>>,
    closed: Cell<bool>,
    uplink_gone: Cell<bool>,
    flusher: RefCell<Option<Waker>>,
    waiting_for_room: RefCell<Vec<Waker>>,
    /// Bumped whenever `waiting_for_room` is emptied, so that a push knows whether the waker
    /// it registered is still there.
    room_round: Cell<u64>,
}

impl Outbox {
    pub(super) fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            limits: OutboxLimits {
                flush_records: limits.flush_records.max(1),
                max_records: limits.max_records.max(limits.flush_records).max(1),
                ..limits
            },
            batches: RefCell::new(Vec::new()),
            nr_records: Cell::new(0),
            oldest_read_at: Cell::new(None),
            closed: Cell::new(false),
            uplink_gone: Cell::new(false),
            flusher: RefCell::new(None),
            waiting_for_room: RefCell::new(Vec::new()),
            room_round: Cell::new(0),
        }
    }

    /// Adds one read's records and waits until the outbox has room again (backpressure).
    /// The records are in the outbox as soon as the future is first polled; what it awaits
    /// after that is only room, so dropping it then loses nothing.
    pub(super) async fn push(&self, batch: RecordBatch) -> Result<(), UplinkGone> {
        if self.uplink_gone.get() {
            return Err(UplinkGone);
        }
        let was_empty = self.nr_records.get() == 0;
        let nr = self.nr_records.get() + batch.records.len();
        self.nr_records.set(nr);
        if self.oldest_read_at.get().is_none() {
            self.oldest_read_at.set(Some(batch.read_at));
        }
        self.batches.borrow_mut().push(batch);
        if was_empty || nr >= self.limits.flush_records || self.limits.delay.is_zero() {
            self.wake_flusher();
        }
        // Where this push's waker sits in `waiting_for_room`, and in which round: a waiting
        // push is polled again on every wake of its connection's downlink side, and must keep
        // one waker, not add one per poll.
        let mut registered: Option<(u64, usize)> = None;
        std::future::poll_fn(|cx| {
            if self.uplink_gone.get() {
                Poll::Ready(Err(UplinkGone))
            } else if self.nr_records.get() < self.limits.max_records {
                Poll::Ready(Ok(()))
            } else {
                let round = self.room_round.get();
                let mut waiting = self.waiting_for_room.borrow_mut();
                match registered.and_then(|(r, index)| (r == round).then_some(index)) {
                    Some(index) if index < waiting.len() => {
                        if !waiting[index].will_wake(cx.waker()) {
                            waiting[index] = cx.waker().clone();
                        }
                    }
                    _ => {
                        registered = Some((round, waiting.len()));
                        waiting.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        })
        .await
    }

    /// Records waiting to be flushed.
    #[cfg(test)]
    fn nr_records(&self) -> usize {
        self.nr_records.get()
    }

    /// Wakers registered by producers waiting for room.
    #[cfg(test)]
    fn nr_waiting_for_room(&self) -> usize {
        self.waiting_for_room.borrow().len()
    }

    /// No more pushes: the flusher sends what is left and ends.
    pub(super) fn close(&self) {
        self.closed.set(true);
        self.wake_flusher();
    }

    fn wake_flusher(&self) {
        if let Some(waker) = self.flusher.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wake_waiting_for_room(&self) {
        self.room_round.set(self.room_round.get() + 1);
        for waker in self.waiting_for_room.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn take(&self) -> Vec<RecordBatch> {
        self.nr_records.set(0);
        self.oldest_read_at.set(None);
        let batches = std::mem::take(&mut *self.batches.borrow_mut());
        self.wake_waiting_for_room();
        batches
    }

    /// Sends the outbox to the uplink core whenever a flush is due, until closed and empty.
    pub(super) async fn run_flusher(&self, records: mpsc::Sender<RecordBatch>) {
        loop {
            // Something to send (or closed).
            std::future::poll_fn(|cx| {
                if self.nr_records.get() > 0 || self.closed.get() {
                    Poll::Ready(())
                } else {
                    *self.flusher.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if self.batches.borrow().is_empty() {
                // Closed and nothing left.
                return;
            }
            self.wait_until_due().await;
            for batch in self.take() {
                if records.send(batch).await.is_err() {
                    tracing::error!(
                        "the uplink core stopped taking records; the shard stops reading"
                    );
                    self.uplink_gone.set(true);
                    self.wake_waiting_for_room();
                    return;
                }
            }
        }
    }

    /// Waits until the oldest record has waited `delay`, the outbox holds `flush_records`, or
    /// it is closed.
    async fn wait_until_due(&self) {
        let full_or_closed = std::future::poll_fn(|cx| {
            if self.nr_records.get() >= self.limits.flush_records || self.closed.get() {
                Poll::Ready(())
            } else {
                *self.flusher.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let oldest = self.oldest_read_at.get().unwrap_or_else(Instant::now);
        let wait = (oldest + self.limits.delay).saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        full_or_closed.or(glommio::timer::sleep(wait)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use bytes::Bytes;
    use glommio::LocalExecutorBuilder;

    use super::*;
    use crate::downlink::routing::ConnRef;
    use crate::shard::ShippedRecord;

    fn batch(conn_id: u64, names: &[&str]) -> RecordBatch {
        RecordBatch {
            conn: ConnRef { shard: 0, conn_id },
            read_at: Instant::now(),
            records: names
                .iter()
                .map(|n| ShippedRecord {
                    name: n.to_string(),
                    tagged: Bytes::copy_from_slice(n.as_bytes()),
                })
                .collect(),
        }
    }

    /// The outbox's flusher as its own task, sending to `tx`.
    fn spawn_flusher(outbox: &Rc<Outbox>, tx: mpsc::Sender<RecordBatch>) -> glommio::Task<()> {
        let outbox = outbox.clone();
        glommio::spawn_local(async move { outbox.run_flusher(tx).await })
    }

    fn names(batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| b.records.iter().map(|r| r.name.clone()))
            .collect()
    }

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        LocalExecutorBuilder::default()
            .spawn(f)
            .expect("executor")
            .join()
            .expect("joined");
    }

    #[test]
    fn a_full_outbox_flushes_at_once_in_read_order() {
        run(|| async {
            let outbox = Rc::new(Outbox::new(OutboxLimits {
                // Far longer than the test: only the record count can trigger the flush.
                delay: Duration::from_secs(3600),
                flush_records: 3,
                max_records: 100,
            }));
            let (tx, mut rx) = mpsc::channel(16);
            let flusher = spawn_flusher(&outbox, tx);
            outbox.push(batch(1, &["a", "b"])).await.expect("room");
            outbox.push(batch(2, &["c"])).await.expect("room");
            let first = rx.recv().await.expect("flushed");
            let second = rx.recv().await.expect("flushed");
            assert_eq!(names(&[first, second]), ["a", "b", "c"]);
            assert_eq!(outbox.nr_records(), 0);
            outbox.close();
            flusher.await;
            assert!(
                rx.recv().await.is_none(),
                "flusher ended and dropped its sender"
            );
        });
    }

    #[test]
    fn close_sends_what_is_left_before_the_delay() {
        run(|| async {
            let outbox = Rc::new(Outbox::new(OutboxLimits {
                delay: Duration::from_secs(3600),
                flush_records: 1000,
                max_records: 1000,
            }));
            let (tx, mut rx) = mpsc::channel(16);
            let flusher = spawn_flusher(&outbox, tx);
            outbox.push(batch(7, &["x"])).await.expect("room");
            glommio::yield_if_needed().await;
            outbox.close();
            flusher.await;
            let got = rx.recv().await.expect("flushed at close");
            assert_eq!(got.conn.conn_id, 7);
            assert_eq!(names(&[got]), ["x"]);
            assert!(rx.recv().await.is_none());
        });
    }

    #[test]
    fn the_delay_flushes_a_lone_record() {
        run(|| async {
            let outbox = Rc::new(Outbox::new(OutboxLimits {
                delay: Duration::from_millis(1),
                flush_records: 1000,
                max_records: 1000,
            }));
            let (tx, mut rx) = mpsc::channel(16);
            let _flusher = spawn_flusher(&outbox, tx).detach();
            outbox.push(batch(3, &["lone"])).await.expect("room");
            let got = rx
                .recv()
                .await
                .expect("flushed after the delay, not closed");
            assert_eq!(names(&[got]), ["lone"]);
        });
    }

    #[test]
    fn pushes_wait_for_room_while_the_uplink_core_is_full() {
        run(|| async {
            let outbox = Rc::new(Outbox::new(OutboxLimits {
                delay: Duration::ZERO,
                flush_records: 1,
                max_records: 2,
            }));
            // A channel of one message that nobody reads yet: the flusher blocks on the second.
            let (tx, mut rx) = mpsc::channel(1);
            let _flusher = spawn_flusher(&outbox, tx).detach();
            let pushed = Rc::new(Cell::new(0usize));
            let producer = glommio::spawn_local({
                let outbox = outbox.clone();
                let pushed = pushed.clone();
                async move {
                    for i in 0..10u64 {
                        outbox.push(batch(i, &["r"])).await.expect("room");
                        pushed.set(pushed.get() + 1);
                    }
                }
            });
            for _ in 0..50 {
                glommio::executor().yield_now().await;
            }
            // One in the channel, one held by the flusher, two in the outbox: the producer
            // waits on the fourth.
            let stuck_at = pushed.get();
            assert!(stuck_at < 10, "the producer never waited for room");
            assert!(outbox.nr_records() <= 2, "outbox grew past its bound");
            let mut got = Vec::new();
            while got.len() < 10 {
                got.push(rx.recv().await.expect("flushed").conn.conn_id);
            }
            producer.await;
            assert_eq!(
                got,
                (0..10).collect::<Vec<_>>(),
                "every record once, in order"
            );
        });
    }

    /// A connection task waiting for room is polled again on every wake of the downlink side
    /// (`connection::send_records` races the push against commands and socket writability):
    /// each poll must not leave one more waker behind. glommio counts a task's waker clones in
    /// an `i16` and panics past 32,767, so a long uplink stall with downlinks flowing would
    /// otherwise take the whole shard down (and grow memory until then).
    #[test]
    fn repeated_polls_of_a_waiting_push_keep_one_waker() {
        run(|| async {
            let outbox = Rc::new(Outbox::new(OutboxLimits {
                delay: Duration::from_secs(3600),
                flush_records: 1,
                max_records: 1,
            }));
            // No flusher yet: the outbox stays full.
            let mut push = std::pin::pin!(outbox.push(batch(1, &["a"])));
            for _ in 0..40_000 {
                assert!(
                    futures_lite::future::poll_once(push.as_mut())
                        .await
                        .is_none(),
                    "room without a flush"
                );
            }
            assert_eq!(outbox.nr_waiting_for_room(), 1);
            let (tx, mut rx) = mpsc::channel(16);
            let _flusher = spawn_flusher(&outbox, tx).detach();
            assert_eq!(push.await, Ok(()), "the flush made room and woke the push");
            assert_eq!(names(&[rx.recv().await.expect("flushed")]), ["a"]);
            assert_eq!(outbox.nr_waiting_for_room(), 0);
        });
    }

    #[test]
    fn a_gone_uplink_core_fails_pushes_instead_of_blocking() {
        run(|| async {
            let outbox = Rc::new(Outbox::new(OutboxLimits {
                delay: Duration::ZERO,
                flush_records: 1,
                max_records: 1,
            }));
            let (tx, rx) = mpsc::channel(1);
            drop(rx);
            let flusher = spawn_flusher(&outbox, tx);
            let _ = outbox.push(batch(1, &["a"])).await;
            flusher.await;
            assert_eq!(outbox.push(batch(2, &["b"])).await, Err(UplinkGone));
        });
    }
}
