//! The embedded sink: a ThingsBoard Edge stand-in serving `IntegrationTransport.handleMsgs`.
//!
//! It checks the integration's routing key and secret, answers CONNECT with the configuration
//! for the chosen format ([`crate::edge_config`]), acknowledges every UplinkMsg with
//! `UplinkResponseMsg{success:true}` in request order, and counts each telemetry record in a
//! [`Tally`]. Integration statistics messages (`integrationStatistics`, no records) are
//! acknowledged too and counted apart (`statistics_msgs`), so records per UplinkMsg stays a
//! measure of batching. With a downlink rate set it sends `DownlinkMsg`s (type `ATTRIBUTES_UPDATED`,
//! data `{"dl_id":N,"sink_us":T}`) round-robin to the devices that have sent uplinks.
//!
//! [`Sink::outage`] plays a killed Edge: it stops acknowledging (optionally a while before the
//! cut, so UplinkMsgs it counted stay unacknowledged), then stops the gRPC server, closes the
//! listener (the port refuses connections) and cuts every open TCP connection with a reset;
//! after the outage it listens again on the same address with the same tally.
//!
//! Invariants: one response per uplink request, in order, on the same stream (the response
//! channel is FIFO and only the session task writes uplink responses), except that a killed
//! sink answers nothing more; `sink_us` is stamped right before the downlink is queued, from
//! [`crate::clock`]. Each session belongs to an *epoch*; the epoch is bumped under the tally
//! lock at the cut, so no record from a cut stream is counted after the cut (a killed Edge
//! processes nothing more), whatever bytes the gRPC stack still had buffered.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tcp_integration::proto::integration::{
    ConnectResponseCode, ConnectResponseMsg, DeviceDownlinkDataProto, DownlinkMsg,
    IntegrationConfigurationProto, MessageType, RequestMsg, ResponseMsg, UplinkMsg,
    UplinkResponseMsg,
    integration_transport_server::{IntegrationTransport, IntegrationTransportServer},
};
use tcp_integration::proto::msgqueue::TbMsgProto;
use tcp_integration::proto::transport::{KeyValueProto, KeyValueType};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::accounting::Tally;
use crate::clock::now_us;
use crate::edge_config::{IntegrationSettings, integration_configuration};
use crate::frames::{DEVICE_TYPE, DownlinkStamp, downlink_data};
use crate::report::OutageReport;

/// Responses queued per session before the session task waits for the client to read.
const RESPONSE_QUEUE_MSGS: usize = 4096;
/// Most downlinks sent in one wake-up when the timer fell behind.
const MAX_DOWNLINK_BURST: u64 = 1000;
/// Pause between attempts to listen again after an outage (the old listener may linger).
const REBIND_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot listen for the integration on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the sink accepts and hands out.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub routing_key: String,
    pub secret: String,
    pub integration: IntegrationSettings,
}

#[derive(Debug)]
struct Shared {
    config: SinkConfig,
    configuration: IntegrationConfigurationProto,
    tally: Mutex<Tally>,
    sessions_accepted: AtomicU64,
    sessions_rejected: AtomicU64,
    session_started: Notify,
    downlink_rate: watch::Sender<f64>,
    downlinks_sent: AtomicU64,
    next_downlink_id: AtomicU64,
    /// Bumped at an outage's cut; sessions of an older epoch neither count nor answer.
    epoch: watch::Sender<u64>,
    /// Cleared while a dying sink withholds acknowledgements.
    acking: AtomicBool,
    /// When each accepted CONNECT was answered ([`crate::clock`] µs).
    accepted_at_us: Mutex<Vec<u64>>,
    /// The gRPC server currently listening; `None` during an outage.
    serving: Mutex<Option<Serving>>,
    /// Filled in by [`Sink::outage`] as the outage goes.
    outage: Mutex<Option<OutageState>>,
}

/// A listening gRPC server and the connections it accepted (weakly held, so a connection the
/// server closes closes as usual; the outage resets the ones still open).
#[derive(Debug)]
struct Serving {
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<Weak<TcpStream>>>>,
}

/// An accepted connection shared between the gRPC stack (which owns it) and the outage (which
/// may reset it under the stack's feet, as the kernel does when a process dies).
#[derive(Debug)]
struct TrackedStream(Arc<TcpStream>);

impl tokio::io::AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

impl Connected for TrackedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

/// When the sink goes away and for how long (see `--sink-outage`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutagePlan {
    /// From the origin given to [`Sink::outage`] to the cut.
    pub at: Duration,
    /// From the cut until the sink listens again.
    pub lasts: Duration,
    /// How long before the cut the sink stops acknowledging (it keeps counting).
    pub unacked: Duration,
}

/// Raw outage figures, turned into an [`OutageReport`] by [`Sink::outage_report`].
#[derive(Debug, Clone, Default)]
struct OutageState {
    plan_at_s: f64,
    plan_for_s: f64,
    plan_unacked_ms: f64,
    origin_us: u64,
    records_at_unacked_start: Option<u64>,
    msgs_at_unacked_start: u64,
    cut_us: Option<u64>,
    records_at_cut: u64,
    uplink_msgs_unacked: u64,
    connections_cut: u64,
    restarted_us: Option<u64>,
    records_at_restart: u64,
}

/// A running sink.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

/// Serves `listener` until aborted; remembers every accepted connection.
fn serve(shared: &Arc<Shared>, listener: TcpListener) -> Serving {
    let connections: Arc<Mutex<Vec<Weak<TcpStream>>>> = Arc::default();
    let tracked = connections.clone();
    let incoming = TcpListenerStream::new(listener).map(move |accepted| {
        let accepted = accepted?;
        // As a gRPC server (Edge's Netty) does: without it, Nagle holds a downlink behind an
        // unacknowledged ack segment for a delayed-ACK period (~40 ms).
        accepted.set_nodelay(true)?;
        let stream = Arc::new(accepted);
        let mut tracked = lock(&tracked);
        tracked.retain(|c| c.strong_count() > 0);
        tracked.push(Arc::downgrade(&stream));
        Ok::<_, std::io::Error>(TrackedStream(stream))
    });
    let service = IntegrationTransportServer::new(Transport {
        shared: shared.clone(),
    })
    .max_decoding_message_size(64 * 1024 * 1024);
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            eprintln!("sink: gRPC server stopped: {e}");
        }
    });
    Serving { task, connections }
}

/// Stops `serving` like a killed process: no more accepts (the listener closes, so the port
/// refuses connections) and every accepted connection is reset. Returns the connections cut.
async fn kill(serving: Serving) -> u64 {
    serving.task.abort();
    // Wait until the task (and with it the listener) is really gone before cutting, so no
    // connection slips in between.
    let _ = serving.task.await;
    let connections: Vec<_> = lock(&serving.connections).drain(..).collect();
    let mut cut = 0;
    for connection in connections.iter().filter_map(Weak::upgrade) {
        let socket = socket2::SockRef::from(&*connection);
        // Linger 0: the final close (when the connection task drops its side) sends RST.
        let _ = socket.set_linger(Some(Duration::ZERO));
        if socket.shutdown(std::net::Shutdown::Both).is_ok() {
            cut += 1;
        }
    }
    cut
}

impl Sink {
    /// Binds `listen` (port 0 allowed) and starts serving.
    pub async fn start(listen: SocketAddr, config: SinkConfig) -> Result<Sink, SinkError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| SinkError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| SinkError::Bind {
            addr: listen,
            source,
        })?;
        let (downlink_rate, _) = watch::channel(0.0);
        let (epoch, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            configuration: integration_configuration(&config.integration),
            config,
            tally: Mutex::new(Tally::default()),
            sessions_accepted: AtomicU64::new(0),
            sessions_rejected: AtomicU64::new(0),
            session_started: Notify::new(),
            downlink_rate,
            downlinks_sent: AtomicU64::new(0),
            next_downlink_id: AtomicU64::new(0),
            epoch,
            acking: AtomicBool::new(true),
            accepted_at_us: Mutex::new(Vec::new()),
            serving: Mutex::new(None),
            outage: Mutex::new(None),
        });
        let serving = serve(&shared, listener);
        *lock(&shared.serving) = Some(serving);
        Ok(Sink { shared, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until an integration has connected with the right key and secret.
    pub async fn wait_for_integration(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.session_started.notified();
            if self.sessions_accepted() > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.sessions_accepted() > 0;
            }
        }
    }

    pub fn sessions_accepted(&self) -> u64 {
        self.shared.sessions_accepted.load(Ordering::Relaxed)
    }

    pub fn sessions_rejected(&self) -> u64 {
        self.shared.sessions_rejected.load(Ordering::Relaxed)
    }

    /// The sink's counters (locked; keep the guard short).
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        lock(&self.shared.tally)
    }

    /// A cloneable handle on the counters, for tasks that outlive a borrow of the sink.
    pub fn probe(&self) -> SinkProbe {
        SinkProbe(self.shared.clone())
    }

    /// Downlinks per second over all devices; 0 stops them.
    pub fn set_downlink_rate(&self, per_s: f64) {
        self.shared.downlink_rate.send_replace(per_s.max(0.0));
    }

    pub fn downlinks_sent(&self) -> u64 {
        self.shared.downlinks_sent.load(Ordering::Relaxed)
    }

    /// The configuration handed to integrations.
    pub fn configuration(&self) -> &IntegrationConfigurationProto {
        &self.shared.configuration
    }

    /// Stops serving; open streams are reset.
    pub async fn shutdown(self) {
        let serving = lock(&self.shared.serving).take();
        if let Some(serving) = serving {
            kill(serving).await;
        }
    }

    /// Plays a killed Edge per `plan`, with instants counted from `origin_us`
    /// ([`crate::clock`]): acknowledgements stop at `at − unacked`, the server goes away at
    /// `at`, and listens again on the same address `lasts` later. The future ends when the
    /// sink listens again; dropping it earlier leaves the sink down.
    pub fn outage(
        &self,
        plan: OutagePlan,
        origin_us: u64,
    ) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        let listen = self.local_addr;
        *lock(&shared.outage) = Some(OutageState {
            plan_at_s: plan.at.as_secs_f64(),
            plan_for_s: plan.lasts.as_secs_f64(),
            plan_unacked_ms: plan.unacked.as_secs_f64() * 1e3,
            origin_us,
            ..Default::default()
        });
        async move {
            let sleep_until_us = |at_us: u64| {
                tokio::time::sleep(Duration::from_micros(at_us.saturating_sub(now_us())))
            };
            let cut_due_us = origin_us + plan.at.as_micros() as u64;
            sleep_until_us(cut_due_us.saturating_sub(plan.unacked.as_micros() as u64)).await;
            if !plan.unacked.is_zero() {
                let (records, msgs) = {
                    let tally = lock(&shared.tally);
                    (tally.records, tally.uplink_msgs)
                };
                shared.acking.store(false, Ordering::SeqCst);
                if let Some(state) = lock(&shared.outage).as_mut() {
                    state.records_at_unacked_start = Some(records);
                    state.msgs_at_unacked_start = msgs;
                }
                sleep_until_us(cut_due_us).await;
            }
            let (cut_us, records_at_cut, msgs_at_cut) = {
                let tally = lock(&shared.tally);
                shared.epoch.send_modify(|epoch| *epoch += 1);
                (now_us(), tally.records, tally.uplink_msgs)
            };
            let serving = lock(&shared.serving).take();
            let connections_cut = match serving {
                Some(serving) => kill(serving).await,
                None => 0,
            };
            shared.acking.store(true, Ordering::SeqCst);
            if let Some(state) = lock(&shared.outage).as_mut() {
                state.cut_us = Some(cut_us);
                state.records_at_cut = records_at_cut;
                if state.records_at_unacked_start.is_some() {
                    state.uplink_msgs_unacked = msgs_at_cut - state.msgs_at_unacked_start;
                }
                state.connections_cut = connections_cut;
            }
            sleep_until_us(cut_us + plan.lasts.as_micros() as u64).await;
            let listener = loop {
                match TcpListener::bind(listen).await {
                    Ok(listener) => break listener,
                    Err(e) => {
                        eprintln!("sink: cannot listen on {listen} again yet: {e}");
                        tokio::time::sleep(REBIND_PAUSE).await;
                    }
                }
            };
            let records_at_restart = lock(&shared.tally).records;
            let restarted_us = now_us();
            *lock(&shared.serving) = Some(serve(&shared, listener));
            if let Some(state) = lock(&shared.outage).as_mut() {
                state.restarted_us = Some(restarted_us);
                state.records_at_restart = records_at_restart;
            }
        }
    }

    /// The outage figures so far; `None` when [`Sink::outage`] was never called.
    pub fn outage_report(&self) -> Option<OutageReport> {
        let state = lock(&self.shared.outage).clone()?;
        let records_now = self.tally().records;
        let rel_s = |us: u64| us.saturating_sub(state.origin_us) as f64 / 1e6;
        let accepted = lock(&self.shared.accepted_at_us).clone();
        let reconnect_s = state.restarted_us.and_then(|restarted| {
            accepted
                .iter()
                .find(|&&at| at >= restarted)
                .map(|&at| (at - restarted) as f64 / 1e6)
        });
        Some(OutageReport {
            at_s: state.plan_at_s,
            for_s: state.plan_for_s,
            unacked_ms: state.plan_unacked_ms,
            started_s: state.cut_us.map(rel_s),
            ended_s: state.restarted_us.map(rel_s),
            records_before: if state.cut_us.is_some() {
                state.records_at_cut
            } else {
                records_now
            },
            records_unacked: match (state.records_at_unacked_start, state.cut_us) {
                (Some(start), Some(_)) => state.records_at_cut - start,
                _ => 0,
            },
            uplink_msgs_unacked: state.uplink_msgs_unacked,
            connections_cut: state.connections_cut,
            records_after: if state.restarted_us.is_some() {
                records_now - state.records_at_restart
            } else {
                0
            },
            sessions_accepted: accepted.len() as u64,
            reconnect_s,
        })
    }
}

/// Read access to a sink's counters from another task.
#[derive(Debug, Clone)]
pub struct SinkProbe(Arc<Shared>);

impl SinkProbe {
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        lock(&self.0.tally)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while counting leaves counts that are still meaningful; keep going.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Transport {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl IntegrationTransport for Transport {
    type handleMsgsStream = ReceiverStream<Result<ResponseMsg, Status>>;

    async fn handle_msgs(
        &self,
        request: Request<Streaming<RequestMsg>>,
    ) -> Result<Response<Self::handleMsgsStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE_MSGS);
        tokio::spawn(session(self.shared.clone(), inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Responses = mpsc::Sender<Result<ResponseMsg, Status>>;

/// One integration stream: CONNECT, then uplinks until the client goes away.
async fn session(shared: Arc<Shared>, mut inbound: Streaming<RequestMsg>, tx: Responses) {
    let epoch = *shared.epoch.borrow();
    let mut downlinks: Option<JoinHandle<()>> = None;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => break,
        };
        if *shared.epoch.borrow() != epoch {
            // This stream was cut: the killed Edge processes nothing more. Keep reading (no
            // reply, no end of stream) until the reset connection ends the stream.
            continue;
        }
        if downlinks.is_none() {
            // Not connected yet: only a CONNECT counts; early uplinks are ignored, as Edge does.
            let Some(connect) = msg
                .connect_request_msg
                .filter(|_| msg.message_type == MessageType::ConnectRpcMessage as i32)
            else {
                continue;
            };
            let refusal = if connect.integration_routing_key != shared.config.routing_key {
                Some(format!(
                    "Failed to find the integration! Routing key: {}",
                    connect.integration_routing_key
                ))
            } else if connect.integration_secret != shared.config.secret {
                Some("Failed to validate the integration!".to_string())
            } else {
                None
            };
            if let Some(error_msg) = refusal {
                shared.sessions_rejected.fetch_add(1, Ordering::Relaxed);
                let response = ResponseMsg {
                    connect_response_msg: Some(ConnectResponseMsg {
                        response_code: ConnectResponseCode::BadCredentials as i32,
                        error_msg: error_msg.clone(),
                        configuration: Some(IntegrationConfigurationProto::default()),
                    }),
                    ..Default::default()
                };
                let _ = tx.send(Ok(response)).await;
                let _ = tx.send(Err(Status::unknown(error_msg))).await;
                return;
            }
            let response = ResponseMsg {
                connect_response_msg: Some(ConnectResponseMsg {
                    response_code: ConnectResponseCode::Accepted as i32,
                    error_msg: String::new(),
                    configuration: Some(shared.configuration.clone()),
                }),
                ..Default::default()
            };
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
            downlinks = Some(tokio::spawn(send_downlinks(
                shared.clone(),
                tx.clone(),
                epoch,
            )));
            lock(&shared.accepted_at_us).push(now_us());
            shared.sessions_accepted.fetch_add(1, Ordering::Relaxed);
            shared.session_started.notify_waiters();
            continue;
        }
        if msg.message_type != MessageType::UplinkRpcMessage as i32 {
            continue; // a second CONNECT on a connected stream gets no reply
        }
        let Some(uplink) = msg.uplink_msg else {
            continue;
        };
        {
            let mut tally = lock(&shared.tally);
            if *shared.epoch.borrow() != epoch {
                continue; // cut while this message was on its way: not processed
            }
            count_into(&mut tally, &uplink, now_us());
        }
        if !shared.acking.load(Ordering::SeqCst) {
            continue; // dying: counted, never acknowledged
        }
        let ack = ResponseMsg {
            uplink_response_msg: Some(UplinkResponseMsg {
                success: true,
                error_msg: String::new(),
            }),
            ..Default::default()
        };
        if tx.send(Ok(ack)).await.is_err() {
            break;
        }
    }
    if let Some(task) = downlinks {
        task.abort();
    }
}

/// A kv value as an unsigned integer, whatever type the converter typing gave it.
fn kv_u64(kv: &KeyValueProto) -> Option<u64> {
    match KeyValueType::try_from(kv.r#type).ok()? {
        KeyValueType::LongV => u64::try_from(kv.long_v).ok(),
        KeyValueType::DoubleV if kv.double_v >= 0.0 && kv.double_v.fract() == 0.0 => {
            Some(kv.double_v as u64)
        }
        KeyValueType::StringV => kv.string_v.parse().ok(),
        _ => None,
    }
}

/// Counts every `{seq, sent_us}` telemetry entry of one UplinkMsg.
pub fn count_uplink(tally: &Mutex<Tally>, uplink: &UplinkMsg, arrival_us: u64) {
    count_into(&mut lock(tally), uplink, arrival_us);
}

fn count_into(tally: &mut Tally, uplink: &UplinkMsg, arrival_us: u64) {
    let statistics_only = !uplink.integration_statistics.is_empty()
        && uplink.device_data.is_empty()
        && uplink.asset_data.is_empty();
    if statistics_only {
        tally.statistics_msgs += 1;
        return;
    }
    tally.uplink_msgs += 1;
    for device in &uplink.device_data {
        let entries = device
            .post_telemetry_msg
            .as_ref()
            .map(|t| t.ts_kv_list.as_slice())
            .unwrap_or_default();
        if entries.is_empty() {
            tally.record_malformed();
        }
        for entry in entries {
            let mut seq = None;
            let mut sent_us = None;
            for kv in &entry.kv {
                match kv.key.as_str() {
                    "seq" => seq = kv_u64(kv),
                    "sent_us" => sent_us = kv_u64(kv),
                    _ => {}
                }
            }
            match (seq, sent_us, device.device_name.is_empty()) {
                (Some(seq), Some(sent_us), false) => {
                    tally.record(&device.device_name, seq, sent_us, arrival_us)
                }
                _ => tally.record_malformed(),
            }
        }
    }
}

/// Sends downlinks at the configured rate to devices seen so far, round-robin.
async fn send_downlinks(shared: Arc<Shared>, tx: Responses, epoch: u64) {
    let mut rate_rx = shared.downlink_rate.subscribe();
    let mut next_device = 0usize;
    loop {
        let rate = *rate_rx.borrow_and_update();
        if rate <= 0.0 {
            if rate_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let period_us = 1e6 / rate;
        let start_us = now_us();
        let mut k = 0u64;
        loop {
            let due_us = start_us + (k as f64 * period_us) as u64;
            let now = now_us();
            if due_us > now {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_micros(due_us - now)) => {}
                    changed = rate_rx.changed() => {
                        if changed.is_err() { return; }
                        break;
                    }
                }
                continue;
            }
            let mut burst = 0;
            while burst < MAX_DOWNLINK_BURST && start_us + (k as f64 * period_us) as u64 <= now {
                k += 1;
                burst += 1;
                let device_name = {
                    let tally = lock(&shared.tally);
                    let seen = tally.ledger.seen_devices();
                    if seen.is_empty() {
                        continue;
                    }
                    next_device %= seen.len();
                    let name = seen[next_device].to_string();
                    next_device += 1;
                    name
                };
                if *shared.epoch.borrow() != epoch {
                    return; // the stream was cut
                }
                let dl_id = shared.next_downlink_id.fetch_add(1, Ordering::Relaxed);
                let msg = downlink_msg(device_name, dl_id, now_us());
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                shared.downlinks_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The DownlinkMsg a rule-engine attribute update would produce.
pub fn downlink_msg(device_name: String, dl_id: u64, sink_us: u64) -> ResponseMsg {
    ResponseMsg {
        downlink_msg: Some(DownlinkMsg {
            device_data: Some(DeviceDownlinkDataProto {
                device_name,
                device_type: DEVICE_TYPE.to_string(),
                tb_msg_proto: Some(TbMsgProto {
                    id: format!("00000000-0000-0000-0000-{dl_id:012x}"),
                    r#type: "ATTRIBUTES_UPDATED".to_string(),
                    entity_type: "DEVICE".to_string(),
                    data_type: 0,
                    data: downlink_data(DownlinkStamp { dl_id, sink_us }),
                    ts: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcp_integration::proto::integration::{DeviceUplinkDataProto, IntegrationStatisticsProto};
    use tcp_integration::proto::transport::{PostTelemetryMsg, TsKvListProto};

    fn long(key: &str, v: i64) -> KeyValueProto {
        KeyValueProto {
            key: key.into(),
            r#type: KeyValueType::LongV as i32,
            long_v: v,
            ..Default::default()
        }
    }

    #[test]
    fn statistics_messages_are_counted_apart_not_as_records() {
        let tally = Mutex::new(Tally::default());
        let record = UplinkMsg {
            device_data: vec![DeviceUplinkDataProto {
                device_name: "dev-1".into(),
                device_type: "default".into(),
                post_telemetry_msg: Some(PostTelemetryMsg {
                    ts_kv_list: vec![TsKvListProto {
                        ts: 1,
                        kv: vec![long("seq", 0), long("sent_us", 10)],
                    }],
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let statistics = UplinkMsg {
            integration_statistics: vec![IntegrationStatisticsProto {
                post_telemetry_msg: Some(PostTelemetryMsg {
                    ts_kv_list: vec![TsKvListProto {
                        ts: 1,
                        kv: vec![long("messagesCount", 1), long("errorsCount", 0)],
                    }],
                }),
            }],
            ..Default::default()
        };
        count_uplink(&tally, &record, 20);
        count_uplink(&tally, &statistics, 30);
        count_uplink(&tally, &statistics, 40);
        let tally = lock(&tally);
        assert_eq!(
            (
                tally.records,
                tally.malformed,
                tally.uplink_msgs,
                tally.statistics_msgs
            ),
            (1, 0, 1, 2)
        );
    }
}
