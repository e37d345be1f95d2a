//! One device connection: socket bytes → framer → uplink converter → records to the uplink
//! core, and downlink bytes from the control task → socket.
//!
//! The task waits for readability with a 1-byte peek, then reads whatever the kernel has into
//! the connection's buffer with one non-blocking `recv`. An idle connection therefore holds no
//! read buffer at all (the buffer is released whenever no partial frame is pending), which
//! keeps the per-connection memory of large idle fleets to a few hundred bytes.
//! Backpressure: the task awaits room in the records channel before it reads again, so a slow
//! ThingsBoard closes the devices' TCP windows instead of growing memory.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use futures_lite::{AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::TcpStream;

use super::control::{ConnCommand, Shard};
use super::pipeline::{FrameFailure, convert_frames};
use super::{RecordBatch, ServingConfig, ShardEvent, ShippedRecord};
use crate::downlink::routing::ConnRef;
use crate::events::{ConvertFailed, FramingFailed};
use crate::framing::Framer;
use crate::metrics::{self, Counter, Gauge};

enum Wake {
    Readable,
    Eof,
    Command(Option<ConnCommand>),
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

    let reason = serve_loop(&shard, &config, &mut stream, peer, conn, &commands).await;

    shard.conns.borrow_mut().remove(&conn_id);
    // Downlinks queued for this connection but not written go back to be held for the
    // device's next uplink, wherever it lands.
    while let Some(Some(command)) = futures_lite::future::poll_once(commands.recv()).await {
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

async fn serve_loop(
    shard: &Shard,
    config: &ServingConfig,
    stream: &mut TcpStream,
    peer: SocketAddr,
    conn: ConnRef,
    commands: &LocalReceiver<ConnCommand>,
) -> &'static str {
    let settings = &shard.settings;
    let mut framer = Framer::new(&config.framing);
    let mut pending = BytesMut::new();
    let mut converted = Vec::new();
    // After a read that filled the whole request, more is likely waiting: skip the peek.
    let mut maybe_more = false;
    loop {
        if !maybe_more {
            match wait(stream, commands, settings.idle_timeout).await {
                Wake::Readable => {}
                Wake::Eof => return "closed by the device",
                Wake::Command(Some(ConnCommand::Write { bytes, .. })) => {
                    if let Err(e) = stream.write_all(&bytes).await {
                        tracing::debug!(%peer, "downlink write failed: {e}");
                        return "write failed";
                    }
                    metrics::inc(Counter::DownlinksWritten);
                    continue;
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
        }
        let read = match recv_into(stream.as_raw_fd(), &mut pending, settings.read_bytes) {
            Ok(0) => return "closed by the device",
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                maybe_more = false;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(%peer, "read failed: {e}");
                return "read failed";
            }
        };
        maybe_more = read == settings.read_bytes;
        metrics::add(Counter::BytesRead, read as u64);

        let records = split_and_convert(shard, &mut framer, &mut pending, peer, &mut converted);
        if !records.is_empty() {
            let batch = RecordBatch { conn, records };
            if shard.records.send(batch).await.is_err() {
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

/// Waits until the socket is readable (or at EOF), a command arrives, or the idle timeout.
async fn wait(
    stream: &TcpStream,
    commands: &LocalReceiver<ConnCommand>,
    idle_timeout: Option<std::time::Duration>,
) -> Wake {
    let command = async { Wake::Command(commands.recv().await) };
    let readable = async {
        let mut probe = [0u8; 1];
        match stream.peek(&mut probe).await {
            Ok(0) => Wake::Eof,
            Ok(_) => Wake::Readable,
            Err(e) => Wake::Failed(e.into()),
        }
    };
    match idle_timeout {
        Some(idle) => {
            command
                .or(readable)
                .or(async {
                    glommio::timer::sleep(idle).await;
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
