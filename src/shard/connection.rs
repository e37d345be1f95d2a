//! One device connection: socket bytes → framer → uplink converter → records to the uplink
//! core, and downlink bytes from the control task → socket.
//!
//! The task waits for readability with a 1-byte read into a byte of its own (glommio arms a
//! buffer-less readiness poll; its `peek` would instead allocate a page-aligned buffer per
//! waiting connection), then reads whatever else the kernel has into the connection's buffer
//! with one non-blocking `recv`. An idle connection therefore holds no read buffer at all (the
//! buffer is released whenever no partial frame is pending), which keeps the per-connection
//! memory of large idle fleets small.
//! Backpressure: the task awaits room in the shard's outbox before it reads again, so a slow
//! ThingsBoard closes the devices' TCP windows instead of growing memory.
//!
//! Downlinks go through the connection's outbound queue: the task writes as much of it as the
//! socket takes without waiting, and otherwise waits for writability *together with*
//! readability, so a device that is busy writing and reads its downlinks late never stops the
//! reading of its uplinks (two peers each blocked writing to the other would otherwise stall
//! forever). The queue is bounded by the shard (`CONN_COMMANDS_MAX` downlinks per connection).
//!
//! Fairness: after every read the task yields to the other tasks of the shard (unless it has
//! just been woken from a wait, which queued it behind them already). glommio's
//! `yield_if_needed` only yields once the whole task queue's time slice (100 ms) is used up, so
//! with many busy devices each connection (and its downlinks) would be served once per
//! `connections × 100 ms`.
//!
//! Invariants: the command channel is looked at on every iteration (also while every read
//! comes back full) and while the task waits on the outbox, so a Close always ends
//! the task and a device that floods or never reads cannot hold up disable, rebind or
//! shutdown; the idle deadline counts from the last byte read, never from a downlink written;
//! bytes go out in the order the downlinks came; a downlink not written whole when the
//! connection ends is handed back for holding.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::TcpStream;

use super::control::{ConnCommand, ConnHandle, Shard, deliver_pending_downlinks};
use super::pipeline::{FrameFailure, convert_frames};
use super::{RecordBatch, ServingConfig, ShardEvent, ShippedRecord};
use crate::downlink::routing::ConnRef;
use crate::events::{ConvertFailed, FramingFailed};
use crate::framing::Framer;
use crate::metrics::{self, Counter, Gauge};
use crate::proto::integration::DeviceDownlinkDataProto;

enum Wake {
    /// Data to read; the first byte, when the wait took it.
    Readable(Option<u8>),
    Eof,
    Command(Option<ConnCommand>),
    /// The socket took this many bytes of the outbound queue's front.
    Wrote(usize),
    Idle,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

/// Why the task stopped serving the connection (for the debug log).
type StopReason = &'static str;

/// One downlink waiting to be written: its encoded bytes, and the original message so that it
/// can be held again if the connection ends first.
struct Outbound {
    bytes: Bytes,
    downlink: Box<DeviceDownlinkDataProto>,
}

/// Serves one accepted connection until it closes; always deregisters it.
pub(super) async fn serve(
    shard: Rc<Shard>,
    config: Arc<ServingConfig>,
    mut stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    handle: Rc<ConnHandle>,
    commands: LocalReceiver<ConnCommand>,
) {
    let conn = ConnRef {
        shard: shard.index,
        conn_id,
    };
    shard.open_connections.set(shard.open_connections.get() + 1);
    metrics::inc(Counter::ConnectionsAccepted);
    metrics::add_gauge(Gauge::ConnectionsOpen, 1);
    tracing::debug!(shard = shard.index, %peer, conn_id, "device connected");

    let mut ends = ConnEnds {
        stream: &mut stream,
        commands: &commands,
        handle: &handle,
        outbound: VecDeque::new(),
        front_written: 0,
    };
    let reason = serve_loop(&shard, &config, &mut ends, peer, conn).await;
    let outbound = std::mem::take(&mut ends.outbound);

    // Deregister before the stream drops: the registry's fd must stay open while listed.
    shard.conns.borrow_mut().remove(&conn_id);
    // Downlinks queued for this connection but not written whole (a partly written one
    // included) go back to be held for the device's next uplink, wherever it lands.
    let mut unsent: Vec<Box<DeviceDownlinkDataProto>> =
        outbound.into_iter().map(|o| o.downlink).collect();
    while let Some(Some(command)) = futures_lite::future::poll_once(commands.recv()).await {
        if let ConnCommand::Write { downlink, .. } = command {
            unsent.push(downlink);
        }
    }
    for downlink in unsent {
        let _ = shard.events.send(ShardEvent::Undelivered {
            device: downlink.device_name.clone(),
            downlink,
        });
    }
    shard.open_connections.set(shard.open_connections.get() - 1);
    metrics::inc(Counter::ConnectionsClosed);
    metrics::add_gauge(Gauge::ConnectionsOpen, -1);
    let _ = shard.events.send(ShardEvent::ConnectionClosed(conn));
    tracing::debug!(shard = shard.index, %peer, conn_id, reason, "device connection closed");
}

/// The connection task's own ends: its socket, its command channel and the downlinks it took
/// off the channel but has not written whole yet.
struct ConnEnds<'a> {
    stream: &'a mut TcpStream,
    commands: &'a LocalReceiver<ConnCommand>,
    handle: &'a ConnHandle,
    /// Downlinks to write, in arrival order. Each still counts in the handle's
    /// `queued_writes` (the shard's bound) until it is written whole.
    outbound: VecDeque<Outbound>,
    /// Bytes of the front downlink already written.
    front_written: usize,
}

impl ConnEnds<'_> {
    /// The unwritten bytes of the front downlink, if any.
    fn front_bytes(&self) -> Option<&[u8]> {
        self.outbound
            .front()
            .map(|front| &front.bytes[self.front_written..])
    }

    /// Takes a command off the channel: a write joins the outbound queue; a Close (or the
    /// shard dropping the channel) ends the connection.
    fn take_command(&mut self, command: Option<ConnCommand>) -> Result<(), StopReason> {
        match command {
            Some(ConnCommand::Write { bytes, downlink }) => {
                self.outbound.push_back(Outbound { bytes, downlink });
                Ok(())
            }
            Some(ConnCommand::Close) | None => Err("closed by the integration"),
        }
    }

    /// Takes every command already queued, without waiting.
    async fn take_queued_commands(&mut self) -> Result<(), StopReason> {
        while let Some(command) = futures_lite::future::poll_once(self.commands.recv()).await {
            self.take_command(command)?;
        }
        Ok(())
    }

    /// `n` more bytes of the front downlink reached the socket.
    fn wrote(&mut self, n: usize) {
        self.front_written += n;
        let done = self
            .outbound
            .front()
            .is_some_and(|front| self.front_written >= front.bytes.len());
        if done {
            self.outbound.pop_front();
            self.front_written = 0;
            self.handle
                .queued_writes
                .set(self.handle.queued_writes.get().saturating_sub(1));
            metrics::inc(Counter::DownlinksWritten);
        }
    }

    /// Writes as much of the outbound queue as the socket takes now, without waiting.
    fn flush(&mut self) -> io::Result<()> {
        let fd = self.stream.as_raw_fd();
        while let Some(bytes) = self.front_bytes() {
            match send_nonblocking(fd, bytes) {
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Acts on what a wait returned when it was about downlinks; `Ok(None)` when it was about
    /// reading (handed back to the caller).
    fn on_downlink_wake(&mut self, wake: Wake) -> Result<Option<Wake>, StopReason> {
        match wake {
            Wake::Command(command) => self.take_command(command).map(|()| None),
            Wake::Wrote(n) => {
                self.wrote(n);
                Ok(None)
            }
            Wake::WriteFailed(e) => {
                tracing::debug!("downlink write failed: {e}");
                Err("write failed")
            }
            other => Ok(Some(other)),
        }
    }
}

async fn serve_loop(
    shard: &Shard,
    config: &ServingConfig,
    ends: &mut ConnEnds<'_>,
    peer: SocketAddr,
    conn: ConnRef,
) -> StopReason {
    let settings = &shard.settings;
    let mut framer = Framer::new(&config.framing);
    let mut pending = BytesMut::new();
    let mut converted = Vec::new();
    // After a read that filled the whole request, more is likely waiting: skip the wait.
    let mut maybe_more = false;
    // The idle timeout counts from the last byte the device sent; downlinks written to it do
    // not count (docs: "close a connection that sent nothing for this long").
    let mut last_read = Instant::now();
    // Whether the task has waited (let the other tasks run) since its last read.
    let mut suspended = false;
    loop {
        let idle_deadline = settings.idle_timeout.map(|idle| last_read + idle);
        // Commands come first on every iteration, also while the device keeps every read
        // full: otherwise a flooding device would never see Close nor get its downlinks.
        if let Err(reason) = ends.take_queued_commands().await {
            return reason;
        }
        if let Err(e) = ends.flush() {
            tracing::debug!(%peer, "downlink write failed: {e}");
            return "write failed";
        }
        // The byte the readiness wait took, if it did (it is already in `pending`).
        let mut first_byte = 0usize;
        let wake = if maybe_more {
            Wake::Readable(None)
        } else {
            let (wake, waited) = wait(ends, true, idle_deadline).await;
            suspended |= waited;
            match ends.on_downlink_wake(wake) {
                Ok(Some(wake)) => wake,
                Ok(None) => continue,
                Err(reason) => return reason,
            }
        };
        match wake {
            Wake::Readable(first) => {
                if let Some(byte) = first {
                    pending.extend_from_slice(&[byte]);
                    first_byte = 1;
                }
            }
            Wake::Eof => return "closed by the device",
            Wake::Idle => {
                metrics::inc(Counter::ConnectionsIdleClosed);
                return "idle timeout";
            }
            Wake::ReadFailed(e) => {
                tracing::debug!(%peer, "socket error: {e}");
                return "socket error";
            }
            // Handled by `on_downlink_wake`.
            Wake::Command(_) | Wake::Wrote(_) | Wake::WriteFailed(_) => continue,
        }
        let want = settings.read_bytes - first_byte;
        let read = match recv_into(ends.stream.as_raw_fd(), &mut pending, want) {
            Ok(0) if first_byte == 0 => return "closed by the device",
            // The device closed after the byte the wait took: process it; the next wait sees EOF.
            Ok(n) => first_byte + n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && first_byte > 0 => first_byte,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                maybe_more = false;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted && first_byte > 0 => first_byte,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(%peer, "read failed: {e}");
                return "read failed";
            }
        };
        last_read = Instant::now();
        maybe_more = read == settings.read_bytes;
        metrics::add(Counter::BytesRead, read as u64);

        let records = split_and_convert(shard, &mut framer, &mut pending, peer, &mut converted);
        deliver_pending_downlinks(shard);
        if !records.is_empty() {
            let batch = RecordBatch {
                conn,
                read_at: last_read,
                records,
            };
            if let Err(reason) = send_records(shard, ends, batch).await {
                return reason;
            }
        }
        if pending.is_empty() {
            // Release the read buffer: idle connections hold no memory for it.
            pending = BytesMut::new();
        }
        // Round-robin between the shard's connections, one read each (see the header). A task
        // that was just woken from a wait already queued behind the others: no second turn
        // is needed (it would cost a task switch per read of every slow device).
        if !std::mem::take(&mut suspended) {
            futures_lite::future::yield_now().await;
        }
    }
}

/// Hands one batch to the shard's outbox, writing downlinks while the outbox is full
/// (the device's downlinks must not wait for ThingsBoard to catch up on uplinks). A Close
/// that arrives meanwhile ends the wait for room, not the batch: the push put it in the
/// outbox when first polled (`sent` is polled before `downlinks`), so what was read is
/// shipped, and a stalled ThingsBoard cannot keep a closing connection open.
async fn send_records(
    shard: &Shard,
    ends: &mut ConnEnds<'_>,
    batch: RecordBatch,
) -> Result<(), StopReason> {
    let mut send = pin!(shard.outbox.push(batch));
    let stop = {
        let downlinks = async {
            loop {
                // No read is waited on here: the idle deadline cannot pass either.
                let (wake, _) = wait(ends, false, None).await;
                ends.on_downlink_wake(wake)?;
            }
        };
        let sent = async { Ok(send.as_mut().await) };
        match sent.or(downlinks).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => return Err("uplink core stopped"),
            Err(reason) => reason,
        }
    };
    Err(stop)
}

/// Waits until a command arrives, the socket takes outbound bytes (when any are queued), the
/// socket is readable or at EOF (when `read`), or the idle deadline passes. Commands are
/// looked at first, so a Close wins over a device that keeps the socket busy. Also tells
/// whether the task had to wait (was suspended) or found something ready at once.
async fn wait(ends: &mut ConnEnds<'_>, read: bool, idle_deadline: Option<Instant>) -> (Wake, bool) {
    let ConnEnds {
        stream,
        commands,
        outbound,
        front_written,
        ..
    } = ends;
    let front_written = *front_written;
    let mut command = pin!(commands.recv());
    let mut idle = pin!(sleep_until(idle_deadline));
    let mut first = [0u8; 1];
    let mut suspended = false;
    let wake = std::future::poll_fn(|cx| {
        if let Poll::Ready(command) = command.as_mut().poll(cx) {
            return Poll::Ready(Wake::Command(command));
        }
        if let Some(front) = outbound.front() {
            // glommio tries a non-blocking send first and only then arms a writability
            // poll: a Pending write has written nothing.
            match Pin::new(&mut **stream).poll_write(cx, &front.bytes[front_written..]) {
                Poll::Ready(Ok(n)) => return Poll::Ready(Wake::Wrote(n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::WriteFailed(e)),
                Poll::Pending => {}
            }
        }
        if read {
            // Likewise a Pending read has taken nothing.
            match Pin::new(&mut **stream).poll_read(cx, &mut first) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Wake::Eof),
                Poll::Ready(Ok(_)) => return Poll::Ready(Wake::Readable(Some(first[0]))),
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::ReadFailed(e)),
                Poll::Pending => {}
            }
        }
        if idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Idle);
        }
        suspended = true;
        Poll::Pending
    })
    .await;
    (wake, suspended)
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await
        }
        None => futures_lite::future::pending::<()>().await,
    }
}

/// One non-blocking `send` of `bytes`; how many the socket took.
fn send_nonblocking(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is readable for `bytes.len()` bytes; MSG_NOSIGNAL turns a closed peer
    // into EPIPE instead of SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One non-blocking `recv` of up to `want` bytes appended to `buf`.
fn recv_into(fd: RawFd, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(want);
    // SAFETY: `spare` is writable, uninitialised capacity of `buf` of at least `len` bytes;
    // the kernel writes at most `len` bytes into it.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised exactly `n` bytes past the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Splits every complete frame out of `pending` and runs the uplink converter on each
/// (`pipeline::convert_frames`), reporting failures and counting frames and records.
fn split_and_convert(
    shard: &Shard,
    framer: &mut Framer,
    pending: &mut BytesMut,
    peer: SocketAddr,
    converted: &mut Vec<crate::convert::UplinkRecord>,
) -> Vec<ShippedRecord> {
    let mut records = Vec::new();
    let mut runtime = shard.runtime.borrow_mut();
    let frames = convert_frames(
        framer,
        &mut runtime,
        pending,
        converted,
        &mut records,
        |failure| match failure {
            FrameFailure::Framing(e) => FramingFailed {
                peer,
                kind: e.kind(),
                error: e,
            }
            .emit(),
            FrameFailure::Convert { error, frame_bytes } => ConvertFailed {
                peer,
                kind: error.kind(),
                frame_bytes,
                error,
            }
            .emit(),
        },
    );
    metrics::add(Counter::FramesDecoded, frames);
    metrics::add(Counter::RecordsConverted, records.len() as u64);
    records
}
