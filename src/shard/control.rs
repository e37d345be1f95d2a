//! A shard's life: its state, the control task that applies configurations and delivers
//! downlinks, and the acceptor task of its listener.
//!
//! Invariants: the converter runtime is only borrowed between awaits (never across one); the
//! connection registry holds exactly the connections whose tasks are running; a listener change
//! closes every connection first (ThingsBoard restarts its TCP server the same way).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::FutureExt;
use glommio::Task;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpListener;
use thiserror::Error;
use tokio::sync::mpsc;

use super::outbox::{Outbox, OutboxLimits};
use super::{
    DownlinkCommand, ServingConfig, ShardChannels, ShardConfig, ShardEvent, ShardSettings,
    connection,
};
use crate::convert::{ConverterConfig, ConverterRuntime};
use crate::events::{ConfigRejected, ConnectionRefused, DownlinkDropReason, DownlinkDropped};
use crate::net::listener::{bind_reuseport, configure_accepted};
use crate::proto::integration::DeviceDownlinkDataProto;

/// Bind failures are retried this often (ThingsBoard retries every 5 s).
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Downlinks queued per connection and not yet written whole; more are dropped and counted.
/// Enforced by `deliver_downlink` through [`ConnHandle::queued_writes`], not by the channel:
/// glommio's bounded channel allocates its whole capacity up front, which would cost every
/// idle connection ~2.5 KiB.
pub(super) const CONN_COMMANDS_MAX: usize = 64;
/// How long shutdown waits for the connections to finish what they read before it shuts
/// their sockets down regardless: the same bound the uplink core gives its drain.
const SHUTDOWN_GRACE: Duration = crate::server::DRAIN_TIMEOUT;
/// After forcing the sockets down, how long to wait for their tasks to deregister before the
/// shard stops anyway (a task stuck on something other than its socket).
const FORCED_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Why a shard could not start.
#[derive(Debug, Error)]
pub enum ShardRuntimeError {
    #[error("shard {shard}: cannot create the QuickJS runtime: {detail}")]
    ScriptRuntime { shard: usize, detail: String },
}

/// What the control task asks of a connection task.
#[derive(Debug)]
pub(super) enum ConnCommand {
    /// Write these bytes (an encoded downlink with its suffix). The original message travels
    /// along so that it can be held again if the connection closes before writing.
    Write {
        bytes: Bytes,
        downlink: Box<DeviceDownlinkDataProto>,
    },
    /// Close the connection (listener change, integration disabled, shutdown).
    Close,
}

/// The outbox holds at most this many flushes' worth of records before connections wait.
const OUTBOX_MAX_FLUSHES: usize = 4;

/// Downlinks a connection task delivers from the shard's inbox after one read.
const DOWNLINKS_PER_READ: usize = 16;

/// The shard's side of one registered connection.
pub(super) struct ConnHandle {
    pub commands: LocalSender<ConnCommand>,
    /// `Write` commands queued and not yet written whole (in the channel or in the connection
    /// task's outbound queue). The connection task decrements it when a write completes.
    pub queued_writes: Cell<usize>,
    /// The connection's socket; open for as long as the connection is registered (the task
    /// deregisters before it drops the stream), so shutdown may `shutdown(2)` it.
    pub fd: RawFd,
}

/// Everything one shard owns.
pub(super) struct Shard {
    pub index: usize,
    pub settings: Rc<ShardSettings>,
    pub runtime: RefCell<ConverterRuntime>,
    pub conns: RefCell<HashMap<u64, Rc<ConnHandle>>>,
    pub open_connections: Cell<usize>,
    next_conn_id: Cell<u64>,
    /// Converted records on their way to the uplink core.
    pub outbox: Outbox,
    pub events: mpsc::UnboundedSender<ShardEvent>,
    /// The shard's downlink lane from the uplink core; drained by the control task and, between
    /// reads, by connection tasks (`deliver_pending_downlinks`).
    pub downlink_inbox: RefCell<mpsc::Receiver<DownlinkCommand>>,
}

impl Shard {
    fn new_conn_id(&self) -> u64 {
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        ((self.index as u64) << 48) | id
    }

    fn close_all_connections(&self) {
        for handle in self.conns.borrow().values() {
            // Unbounded: only fails when the task already ended. The task watches its
            // channel while reading and while writing, so a Close wins within one read.
            let _ = handle.commands.try_send(ConnCommand::Close);
        }
    }

    /// Shuts down the sockets of every connection still registered, so that the device sees
    /// the close and the tasks' pending socket operations fail.
    fn force_close_connections(&self) {
        for handle in self.conns.borrow().values() {
            // SAFETY: `fd` is open while the connection is registered (see `ConnHandle::fd`);
            // shutdown(2) does not close or reuse it.
            unsafe { libc::shutdown(handle.fd, libc::SHUT_RDWR) };
        }
    }
}

/// The shard's main task: runs until shutdown.
pub(super) async fn run_shard(index: usize, settings: Rc<ShardSettings>, channels: ShardChannels) {
    let ShardChannels {
        records,
        events,
        mut config,
        downlinks,
        mut shutdown,
    } = channels;
    let runtime = match ConverterRuntime::new(settings.script_limits.clone()) {
        Ok(rt) => rt,
        Err(e) => {
            let err = ShardRuntimeError::ScriptRuntime {
                shard: index,
                detail: e.to_string(),
            };
            tracing::error!("{err}");
            return;
        }
    };
    let outbox = Outbox::new(OutboxLimits {
        delay: settings.outbox_delay,
        flush_records: settings.outbox_flush_records,
        max_records: settings.outbox_flush_records * OUTBOX_MAX_FLUSHES,
    });
    let shard = Rc::new(Shard {
        index,
        settings,
        runtime: RefCell::new(runtime),
        conns: RefCell::new(HashMap::new()),
        open_connections: Cell::new(0),
        next_conn_id: Cell::new(1),
        outbox,
        events,
        downlink_inbox: RefCell::new(downlinks),
    });
    let flusher = glommio::spawn_local({
        let shard = shard.clone();
        async move { shard.outbox.run_flusher(records).await }
    });
    let mut serving: Option<Arc<ServingConfig>> = None;
    let mut acceptor: Option<Task<()>> = None;
    let initial = config.borrow_and_update().clone();
    apply_config(&shard, &mut serving, &mut acceptor, initial);

    enum Event {
        Config,
        Downlink(DownlinkCommand),
        Stop,
    }
    loop {
        let event = async {
            // Borrowed only while polled: connection tasks take downlinks from the inbox too.
            match std::future::poll_fn(|cx| shard.downlink_inbox.borrow_mut().poll_recv(cx)).await {
                Some(cmd) => Event::Downlink(cmd),
                None => Event::Stop,
            }
        }
        .or(async {
            match config.changed().await {
                Ok(()) => Event::Config,
                Err(_) => Event::Stop,
            }
        })
        .or(async {
            let _ = shutdown.wait_for(|stop| *stop).await;
            Event::Stop
        })
        .await;
        match event {
            Event::Config => {
                let next = config.borrow_and_update().clone();
                apply_config(&shard, &mut serving, &mut acceptor, next);
            }
            Event::Downlink(cmd) => deliver_downlink(&shard, cmd),
            Event::Stop => break,
        }
    }
    // Shutdown: stop accepting, then let every connection finish what it has read, within
    // a bound: a connection stuck elsewhere must not keep the process from exiting.
    drop(acceptor.take());
    shard.close_all_connections();
    if !wait_connections_closed(&shard, SHUTDOWN_GRACE).await {
        tracing::warn!(
            shard = index,
            remaining = shard.open_connections.get(),
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "device connections did not close within the shutdown grace; forcing them closed"
        );
        shard.force_close_connections();
        if !wait_connections_closed(&shard, FORCED_CLOSE_GRACE).await {
            tracing::warn!(
                shard = index,
                remaining = shard.open_connections.get(),
                "device connections still open after forcing; stopping the shard anyway"
            );
        }
    }
    // What the connections read and converted goes out before the shard stops.
    shard.outbox.close();
    flusher.await;
    tracing::info!(shard = index, "shard stopped");
}

/// Waits until the shard has no open connection, up to `grace`; whether it got there.
async fn wait_connections_closed(shard: &Shard, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while shard.open_connections.get() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn apply_config(
    shard: &Rc<Shard>,
    serving: &mut Option<Arc<ServingConfig>>,
    acceptor: &mut Option<Task<()>>,
    next: ShardConfig,
) {
    let Some(next) = next else {
        if serving.take().is_some() {
            tracing::info!(
                shard = shard.index,
                "integration disabled: closing the listener and device connections"
            );
        }
        drop(acceptor.take());
        shard.close_all_connections();
        return;
    };
    let previous = serving.clone();
    if previous
        .as_ref()
        .is_none_or(|p| p.uplink_converter != next.uplink_converter)
    {
        compile_uplink(shard, &next.uplink_converter);
    }
    if previous
        .as_ref()
        .is_none_or(|p| p.downlink_converter != next.downlink_converter)
    {
        compile_downlink(shard, &next.downlink_converter);
    }
    if previous
        .as_ref()
        .is_none_or(|p| p.metadata != next.metadata)
    {
        shard
            .runtime
            .borrow_mut()
            .set_integration_metadata(&next.metadata);
    }
    if previous.as_ref().is_none_or(|p| p.needs_rebind(&next)) {
        drop(acceptor.take());
        shard.close_all_connections();
        *acceptor = Some(glommio::spawn_local(accept_loop(
            shard.clone(),
            next.clone(),
        )));
    }
    *serving = Some(next);
}

fn compile_uplink(shard: &Shard, json: &str) {
    let result = ConverterConfig::from_json(json)
        .and_then(|config| shard.runtime.borrow_mut().set_uplink(&config));
    match result {
        Ok(()) => tracing::info!(shard = shard.index, "uplink converter compiled"),
        Err(e) => ConfigRejected {
            what: "uplink converter",
            error: &e,
        }
        .emit(),
    }
}

fn compile_downlink(shard: &Shard, json: &str) {
    if json.trim().is_empty() {
        let _ = shard.runtime.borrow_mut().set_downlink(None);
        return;
    }
    let result = ConverterConfig::from_json(json)
        .and_then(|config| shard.runtime.borrow_mut().set_downlink(Some(&config)));
    match result {
        Ok(()) => tracing::info!(shard = shard.index, "downlink converter compiled"),
        Err(e) => ConfigRejected {
            what: "downlink converter",
            error: &e,
        }
        .emit(),
    }
}

/// Runs the Encoder and queues the bytes on the device's connection, or hands the downlink
/// back to the uplink core for holding when the connection is gone.
/// Delivers downlinks waiting in the shard's inbox, at most `DOWNLINKS_PER_READ`. Connection
/// tasks call it after each read: under a flood of uplinks the executor may run connection
/// tasks for long stretches before the control task's wake-up from the uplink thread is
/// processed, and downlinks must not wait for that.
pub(super) fn deliver_pending_downlinks(shard: &Shard) {
    for _ in 0..DOWNLINKS_PER_READ {
        let Ok(cmd) = shard.downlink_inbox.borrow_mut().try_recv() else {
            return;
        };
        deliver_downlink(shard, cmd);
    }
}

fn deliver_downlink(shard: &Shard, cmd: DownlinkCommand) {
    let device = cmd.downlink.device_name.clone();
    let Some(handle) = shard.conns.borrow().get(&cmd.conn_id).cloned() else {
        let _ = shard.events.send(ShardEvent::Undelivered {
            device,
            downlink: cmd.downlink,
        });
        return;
    };
    let mut encoded = Vec::new();
    {
        let mut runtime = shard.runtime.borrow_mut();
        if !runtime.has_downlink() {
            DownlinkDropped {
                device: &device,
                reason: DownlinkDropReason::NoConverter,
                detail: "no downlink converter is configured for this integration",
            }
            .emit();
            return;
        }
        let msg = cmd.downlink.tb_msg_proto.clone().unwrap_or_default();
        if let Err(e) = runtime.encode_downlink(&msg, &mut encoded) {
            DownlinkDropped {
                device: &device,
                reason: DownlinkDropReason::EncodeFailed,
                detail: &e.to_string(),
            }
            .emit();
            return;
        }
    }
    let suffix = shard.settings.downlink_suffix.bytes();
    let mut wire = BytesMut::new();
    for item in &encoded {
        wire.extend_from_slice(item);
        wire.extend_from_slice(suffix);
    }
    // A live connection with this many downlinks not yet written has a device that does not
    // read its socket: dropped and counted (holding it would only bring it back here with the
    // device's next uplink), so memory stays bounded per connection.
    if handle.queued_writes.get() >= CONN_COMMANDS_MAX {
        DownlinkDropped {
            device: &device,
            reason: DownlinkDropReason::ConnQueueFull,
            detail: "the device's connection already has the most downlinks waiting to be written (the device is not reading)",
        }
        .emit();
        return;
    }
    let command = ConnCommand::Write {
        bytes: wire.freeze(),
        downlink: cmd.downlink,
    };
    match handle.commands.try_send(command) {
        Ok(()) => handle.queued_writes.set(handle.queued_writes.get() + 1),
        // The task just ended (the channel is unbounded, so only a close fails it): the
        // connection is gone, hold the downlink for the device's next uplink.
        Err(
            glommio::GlommioError::Closed(glommio::ResourceType::Channel(ConnCommand::Write {
                downlink,
                ..
            }))
            | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(ConnCommand::Write {
                downlink,
                ..
            })),
        ) => {
            let _ = shard
                .events
                .send(ShardEvent::Undelivered { device, downlink });
        }
        // glommio reports a failed send only as Closed or WouldBlock, which carry the write.
        Err(_) => {}
    }
}

async fn accept_loop(shard: Rc<Shard>, config: Arc<ServingConfig>) {
    let addr = config.listener.addr;
    let listener = loop {
        match bind_reuseport(&config.listener) {
            // SAFETY: a fresh, listening socket fd whose ownership moves to glommio.
            Ok(fd) => break unsafe { TcpListener::from_raw_fd(fd) },
            Err(e) => {
                tracing::error!(shard = shard.index, %addr, "cannot listen for devices: {e}; retrying in {}s", BIND_RETRY.as_secs());
                glommio::timer::sleep(BIND_RETRY).await;
            }
        }
    };
    tracing::info!(
        shard = shard.index,
        %addr,
        backlog = config.listener.backlog,
        so_rcvbuf_kib = config.listener.rcvbuf_kib,
        so_sndbuf_kib = config.listener.sndbuf_kib,
        keepalive = config.listener.keepalive,
        nodelay = config.listener.nodelay,
        "listening for devices"
    );
    let limit = shard.settings.max_connections;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(shard = shard.index, "accept failed: {e}");
                glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if shard.open_connections.get() >= limit {
            ConnectionRefused {
                peer,
                shard: shard.index,
                limit,
            }
            .emit();
            drop(stream);
            continue;
        }
        if let Err(e) = configure_accepted(stream.as_raw_fd(), &config.listener) {
            tracing::warn!(shard = shard.index, %peer, "cannot set socket options: {e}");
        }
        let conn_id = shard.new_conn_id();
        // Unbounded allocates nothing until a command is queued; the bound is CONN_COMMANDS_MAX.
        let (sender, receiver) = local_channel::new_unbounded();
        let handle = Rc::new(ConnHandle {
            commands: sender,
            queued_writes: Cell::new(0),
            fd: stream.as_raw_fd(),
        });
        shard.conns.borrow_mut().insert(conn_id, handle.clone());
        glommio::spawn_local(connection::serve(
            shard.clone(),
            config.clone(),
            stream,
            peer,
            conn_id,
            handle,
            receiver,
        ))
        .detach();
    }
}
