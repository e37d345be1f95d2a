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
//! Invariants: the command channel is looked at on every iteration (also while every read
//! comes back full) and during every downlink write, so a Close always ends the task and a
//! device that floods or never reads cannot hold up disable, rebind or shutdown; the idle
//! deadline counts from the last byte read, never from a downlink written; a downlink that was
//! not written whole is handed back for holding.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::TcpStream;

use super::control::{ConnCommand, ConnHandle, Shard, deliver_pending_downlinks};
use super::pipeline::{FrameFailure, convert_frames};
use super::{RecordBatch, ServingConfig, ShardEvent, ShippedRecord};
use crate::downlink::routing::ConnRef;
use crate::events::{ConvertFailed, FramingFailed};
use crate::framing::Framer;
use crate::metrics::{self, Counter, Gauge};

enum Wake {
    /// Data to read; the first byte, when the wait took it.
    Readable(Option<u8>),
    Eof,
    Command(Option<ConnCommand>),
    Idle,
    Failed(io::Error),
}

/// How a downlink write ended when it did not complete.
enum WriteStop {
    /// The shard asked to close (or dropped the channel) while the device was not reading.
    Closed,
    /// The idle deadline passed while the write waited on the device.
    Idle,
    Failed(io::Error),
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
        backlog: VecDeque::new(),
    };
    let reason = serve_loop(&shard, &config, &mut ends, peer, conn).await;
    let backlog = std::mem::take(&mut ends.backlog);

    // Deregister before the stream drops: the registry's fd must stay open while listed.
    shard.conns.borrow_mut().remove(&conn_id);
    // Downlinks queued for this connection but not written (or whose write the close cut
    // short) go back to be held for the device's next uplink, wherever it lands.
    let mut unsent: Vec<ConnCommand> = backlog.into();
    while let Some(Some(command)) = futures_lite::future::poll_once(commands.recv()).await {
        unsent.push(command);
    }
    for command in unsent {
        if let ConnCommand::Write { downlink, .. } = command {
            let _ = shard.events.send(ShardEvent::Undelivered {
                device: downlink.device_name.clone(),
                downlink,
            });
        }
    }
    shard.open_connections.set(shard.open_connections.get() - 1);
    metrics::inc(Counter::ConnectionsClosed);
    metrics::add_gauge(Gauge::ConnectionsOpen, -1);
    let _ = shard.events.send(ShardEvent::ConnectionClosed(conn));
    tracing::debug!(shard = shard.index, %peer, conn_id, reason, "device connection closed");
}

/// The connection task's own ends: its socket, its command channel and the commands it took
/// off the channel but has not acted on yet.
struct ConnEnds<'a> {
    stream: &'a mut TcpStream,
    commands: &'a LocalReceiver<ConnCommand>,
    handle: &'a ConnHandle,
    /// Writes received while another write waited on the device, in arrival order; an
    /// interrupted write goes back to the front so that it is handed back first.
    backlog: VecDeque<ConnCommand>,
}

async fn serve_loop(
    shard: &Shard,
    config: &ServingConfig,
    ends: &mut ConnEnds<'_>,
    peer: SocketAddr,
    conn: ConnRef,
) -> &'static str {
    let settings = &shard.settings;
    let mut framer = Framer::new(&config.framing);
    let mut pending = BytesMut::new();
    let mut converted = Vec::new();
    // After a read that filled the whole request, more is likely waiting: skip the peek.
    let mut maybe_more = false;
    // The idle timeout counts from the last byte the device sent; downlinks written to it do
    // not count (docs: "close a connection that sent nothing for this long").
    let mut last_read = Instant::now();
    loop {
        let idle_deadline = settings.idle_timeout.map(|idle| last_read + idle);
        // Commands come first on every iteration, also while the device keeps every read
        // full: otherwise a flooding device would never see Close nor get its downlinks.
        // The byte the readiness wait took, if it did (it is already in `pending`).
        let mut first_byte = 0usize;
        let wake = if let Some(command) = ends.backlog.pop_front() {
            Wake::Command(Some(command))
        } else if maybe_more {
            match futures_lite::future::poll_once(ends.commands.recv()).await {
                Some(command) => Wake::Command(command),
                None => Wake::Readable(None),
            }
        } else {
            wait(ends.stream, ends.commands, idle_deadline).await
        };
        match wake {
            Wake::Readable(first) => {
                if let Some(byte) = first {
                    pending.extend_from_slice(&[byte]);
                    first_byte = 1;
                }
            }
            Wake::Eof => return "closed by the device",
            Wake::Command(Some(ConnCommand::Write { bytes, downlink })) => {
                ends.handle
                    .queued_writes
                    .set(ends.handle.queued_writes.get().saturating_sub(1));
                match write_downlink(ends, &bytes, idle_deadline).await {
                    Ok(()) => {
                        metrics::inc(Counter::DownlinksWritten);
                        continue;
                    }
                    Err(stop) => {
                        // Cut short (the device may hold part of it): handed back, so that
                        // the device gets a whole copy after its next uplink.
                        ends.backlog
                            .push_front(ConnCommand::Write { bytes, downlink });
                        return match stop {
                            WriteStop::Closed => "closed by the integration while writing",
                            WriteStop::Idle => {
                                metrics::inc(Counter::ConnectionsIdleClosed);
                                "idle timeout while writing"
                            }
                            WriteStop::Failed(e) => {
                                tracing::debug!(%peer, "downlink write failed: {e}");
                                "write failed"
                            }
                        };
                    }
                }
            }
            Wake::Command(Some(ConnCommand::Close)) | Wake::Command(None) => {
                return "closed by the integration";
            }
            Wake::Idle => {
                metrics::inc(Counter::ConnectionsIdleClosed);
                return "idle timeout";
            }
            Wake::Failed(e) => {
                tracing::debug!(%peer, "socket error: {e}");
                return "socket error";
            }
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
            if shard.outbox.push(batch).await.is_err() {
                return "uplink core stopped";
            }
        }
        if pending.is_empty() {
            // Release the read buffer: idle connections hold no memory for it.
            pending = BytesMut::new();
        }
        glommio::yield_if_needed().await;
    }
}

/// Writes one downlink, racing the write against the command channel and the idle deadline:
/// a device that stops reading must not keep the task from seeing Close. Writes that arrive
/// meanwhile wait in the backlog (they still count against the connection's queue bound).
async fn write_downlink(
    ends: &mut ConnEnds<'_>,
    bytes: &[u8],
    idle_deadline: Option<Instant>,
) -> Result<(), WriteStop> {
    let ConnEnds {
        stream,
        commands,
        backlog,
        ..
    } = ends;
    let write = async { stream.write_all(bytes).await.map_err(WriteStop::Failed) };
    let watch_commands = async {
        loop {
            match commands.recv().await {
                Some(write @ ConnCommand::Write { .. }) => backlog.push_back(write),
                Some(ConnCommand::Close) | None => return Err(WriteStop::Closed),
            }
        }
    };
    let idle = async {
        sleep_until(idle_deadline).await;
        Err(WriteStop::Idle)
    };
    write.or(watch_commands).or(idle).await
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

/// Waits until the socket is readable (or at EOF), a command arrives, or the idle deadline.
async fn wait(
    stream: &mut TcpStream,
    commands: &LocalReceiver<ConnCommand>,
    idle_deadline: Option<Instant>,
) -> Wake {
    let command = async { Wake::Command(commands.recv().await) };
    let readable = async {
        let mut first = [0u8; 1];
        match stream.read(&mut first).await {
            Ok(0) => Wake::Eof,
            Ok(_) => Wake::Readable(Some(first[0])),
            Err(e) => Wake::Failed(e),
        }
    };
    match idle_deadline {
        Some(deadline) => {
            command
                .or(readable)
                .or(async {
                    sleep_until(Some(deadline)).await;
                    Wake::Idle
                })
                .await
        }
        None => command.or(readable).await,
    }
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
