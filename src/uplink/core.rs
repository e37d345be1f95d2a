//! The uplink core: one thread running tokio, between the shards and ThingsBoard.
//!
//! It receives converted records from every shard, appends them to the spool, packs them into
//! `UplinkMsg` batches (a batch is the concatenation of pre-tagged records, so nothing is
//! decoded or re-encoded here), keeps a window of batches in flight on the gRPC stream, matches
//! acknowledgements by order (the protocol has no ids), and advances the spool only on
//! acknowledgement. It owns the ThingsBoard session: configurations it receives become the
//! shards' [`ShardConfig`], and downlinks are routed to the shard that owns the device's
//! connection (or held until the device's next uplink).
//!
//! It also sends the integration's statistics (contract §5.2, see [`super::statistics`]) every
//! period and when the integration is disabled: a statistics `UplinkMsg` takes its place in the
//! in-flight queue like a batch, so acknowledgements stay matched by order, but it carries no
//! records and no spool sequence.
//!
//! Invariants: records leave the spool in order; a record is acknowledged only by the response
//! to the batch that carried it; after a lost session every unacknowledged record is sent again
//! (at-least-once; duplicates bounded by the in-flight window). Statistics are not spooled: one
//! in flight when the session is lost is not sent again (its counts are lost; ThingsBoard's
//! statistics are informational), and its acknowledgement never touches the spool.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use super::session::{self, SessionConfig, SessionEvent, SessionHandle};
use super::spool::{Spool, SpoolError, SpoolOptions, spooled_bytes};
use super::statistics::{
    CounterReading, LifecycleState, StatisticsPeriod, encode_statistics_uplink,
};
use crate::config::integration::{IntegrationConfigError, TcpIntegrationConfig};
use crate::config::local::{SocketSettings, StatisticsSettings};
use crate::downlink::routing::ConnRef;
use crate::downlink::routing::{Route, Router};
use crate::events::{
    AckTimedOut, BatchRejected, ConfigRejected, DownlinkDropReason, DownlinkDropped,
};
use crate::metrics::{self, Counter, Gauge};
use crate::net::listener::ListenerOptions;
use crate::proto::integration::{
    ConverterConfigurationProto, DeviceDownlinkDataProto, IntegrationConfigurationProto,
};
use crate::shard::{
    DownlinkCommand, RecordBatch, ServingConfig, ShardConfig, ShardEvent, ShippedRecord,
};

/// How often the core checks timers: interval fsync, held-downlink expiry, ack timeouts, gauges.
const TICK: Duration = Duration::from_millis(100);
/// How many queued shard messages are appended to the spool in one go.
const APPEND_MESSAGES_MAX: usize = 256;

/// Everything the uplink core needs from the local settings.
#[derive(Debug, Clone)]
pub struct UplinkCoreOptions {
    pub session: SessionConfig,
    pub spool: SpoolOptions,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub linger: Duration,
    pub inflight_batches: usize,
    pub ack_timeout: Duration,
    /// Local overrides of ThingsBoard's `clientConfiguration` and the bind address.
    pub socket: SocketSettings,
    pub downlink_hold_max: usize,
    pub downlink_hold_for: Duration,
    /// How long shutdown waits for in-flight batches to be acknowledged.
    pub drain_timeout: Duration,
    /// Whether and how often statistics are sent to ThingsBoard.
    pub statistics: StatisticsSettings,
}

/// The channel ends the uplink core owns.
pub struct UplinkCoreChannels {
    pub records: mpsc::Receiver<RecordBatch>,
    pub events: mpsc::UnboundedReceiver<ShardEvent>,
    pub shard_downlinks: Vec<mpsc::Sender<DownlinkCommand>>,
    pub shard_config: watch::Sender<ShardConfig>,
    pub shutdown: watch::Receiver<bool>,
}

/// Why the uplink core stopped early.
#[derive(Debug, Error)]
pub enum UplinkCoreError {
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Why a configuration from ThingsBoard cannot be served.
#[derive(Debug, Error)]
pub enum ServeConfigError {
    #[error("integration type is {0:?}, this process serves only \"TCP\" integrations")]
    WrongType(String),
    #[error("integration configuration: {0}")]
    Integration(#[from] IntegrationConfigError),
    #[error("the integration has no uplink converter")]
    NoUplinkConverter,
}

/// Builds what the shards serve from ThingsBoard's integration configuration and the local
/// overrides. `Ok(None)` when the integration is disabled.
pub fn serving_config(
    integration: &IntegrationConfigurationProto,
    socket: &SocketSettings,
) -> Result<ShardConfig, ServeConfigError> {
    if !integration.r#type.eq_ignore_ascii_case("TCP") {
        return Err(ServeConfigError::WrongType(integration.r#type.clone()));
    }
    if !integration.enabled {
        return Ok(None);
    }
    let tcp = TcpIntegrationConfig::from_json(&integration.configuration)?;
    let client = socket.apply_to(&tcp.client);
    let uplink_converter = integration
        .uplink_converter
        .as_ref()
        .map(|c| c.configuration.clone())
        .filter(|c| !c.trim().is_empty())
        .ok_or(ServeConfigError::NoUplinkConverter)?;
    let downlink_converter = integration
        .downlink_converter
        .as_ref()
        .map(|c| c.configuration.clone())
        .unwrap_or_default();
    let mut metadata = Vec::with_capacity(tcp.metadata.len() + 1);
    metadata.push(("integrationName".to_owned(), integration.name.clone()));
    metadata.extend(tcp.metadata.iter().cloned());
    Ok(Some(Arc::new(ServingConfig {
        listener: ListenerOptions {
            addr: SocketAddr::new(socket.bind_address, client.port),
            backlog: client.so_backlog,
            rcvbuf_kib: client.so_rcvbuf_kib,
            sndbuf_kib: client.so_sndbuf_kib,
            keepalive: client.so_keepalive,
            nodelay: client.tcp_nodelay,
        },
        framing: client.framing.clone(),
        metadata,
        uplink_converter,
        downlink_converter,
    })))
}

/// An `UplinkMsg` on the wire, waiting for its acknowledgement.
struct InFlight {
    carried: Carried,
    sent_at: Instant,
}

/// What an in-flight `UplinkMsg` carries.
enum Carried {
    /// Spooled records through `last_seq`: acknowledged in the spool on their response.
    Records { last_seq: u64, records: Vec<Bytes> },
    /// A statistics message: not spooled, nothing to acknowledge, not resent.
    Statistics,
}

impl InFlight {
    fn records(&self) -> &[Bytes] {
        match &self.carried {
            Carried::Records { records, .. } => records,
            Carried::Statistics => &[],
        }
    }
}

/// How a configuration from ThingsBoard reached the core (it decides the lifecycle state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigSource {
    /// In the ConnectResponseMsg of a new session: the integration (re)starts.
    Connect,
    /// An IntegrationUpdateMsg or ConverterUpdateMsg.
    Update,
}

/// The lifecycle state after applying a configuration (`Ok(true)` = serving devices,
/// `Ok(false)` = disabled, `Err` = rejected).
fn lifecycle_after(source: ConfigSource, outcome: Result<bool, ()>) -> LifecycleState {
    match (outcome, source) {
        (Err(()), _) => LifecycleState::Failed,
        (Ok(false), _) => LifecycleState::Stopped,
        (Ok(true), ConfigSource::Connect) => LifecycleState::Started,
        (Ok(true), ConfigSource::Update) => LifecycleState::Updated,
    }
}

struct Core {
    options: UplinkCoreOptions,
    session: SessionHandle,
    spool: Spool,
    router: Router<Box<DeviceDownlinkDataProto>>,
    shard_downlinks: Vec<mpsc::Sender<DownlinkCommand>>,
    shard_config: watch::Sender<ShardConfig>,
    integration: Option<IntegrationConfigurationProto>,
    connected: bool,
    in_flight: VecDeque<InFlight>,
    in_flight_records: u64,
    /// Records in the spool not yet sent on the current session.
    unsent: u64,
    /// When the oldest unsent record arrived (the linger clock).
    unsent_since: Option<Instant>,
    /// Records received from the shards and not yet in the spool (a full spool under the
    /// backpressure policy leaves them here, and no more are received until they fit).
    to_spool: VecDeque<(ConnRef, ShippedRecord)>,
    /// When the oldest record in `to_spool` was read by its shard (the linger clock's start
    /// for records that find the spool idle).
    to_spool_read_at: Option<Instant>,
    /// Largest append, in spooled bytes: a quarter of the spool, so a chunk always fits once
    /// acknowledgements have made room.
    append_budget_bytes: u64,
    read_scratch: Vec<(u64, Bytes)>,
    statistics: StatisticsPeriod,
}

/// Runs the uplink core until shutdown has drained (or timed out).
pub async fn run(
    options: UplinkCoreOptions,
    channels: UplinkCoreChannels,
) -> Result<(), UplinkCoreError> {
    let UplinkCoreChannels {
        mut records,
        mut events,
        shard_downlinks,
        shard_config,
        mut shutdown,
    } = channels;
    let (spool, report) = Spool::open(options.spool.clone())?;
    tracing::info!(?report, "spool opened");
    let unsent = spool.stats().nr_pending_records;
    let (session, mut session_events) = session::spawn(options.session.clone());
    let append_budget_bytes = (options.spool.max_bytes / 4).max(1);
    let statistics = StatisticsPeriod::new(
        options.statistics.enabled,
        options.statistics.persist_frequency,
        Instant::now(),
        CounterReading::now(),
    );
    let mut core = Core {
        router: Router::new(options.downlink_hold_max, options.downlink_hold_for),
        options,
        session,
        spool,
        shard_downlinks,
        shard_config,
        integration: None,
        connected: false,
        in_flight: VecDeque::new(),
        in_flight_records: 0,
        unsent,
        unsent_since: (unsent > 0).then(Instant::now),
        to_spool: VecDeque::new(),
        to_spool_read_at: None,
        append_budget_bytes,
        read_scratch: Vec::new(),
        statistics,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining_since: Option<Instant> = None;
    let mut shards_done = false;
    loop {
        let linger_deadline = core.linger_deadline();
        let has_room = core.to_spool.is_empty();
        tokio::select! {
            biased;
            event = session_events.recv() => match event {
                Some(event) => core.on_session_event(event),
                None => break,
            },
            Some(event) = events.recv() => core.on_shard_event(event),
            batch = records.recv(), if has_room && !shards_done => match batch {
                Some(first) => {
                    let mut batches = vec![first];
                    while batches.len() < APPEND_MESSAGES_MAX {
                        match records.try_recv() {
                            Ok(more) => batches.push(more),
                            Err(_) => break,
                        }
                    }
                    core.on_records(batches);
                }
                None => shards_done = true,
            },
            _ = sleep_until(linger_deadline), if linger_deadline.is_some() => {}
            _ = tick.tick() => core.on_tick(),
            _ = shutdown.wait_for(|stop| *stop), if draining_since.is_none() => {
                tracing::info!(in_flight = core.in_flight.len(), unsent = core.unsent, "shutting down: draining uplinks");
                draining_since = Some(Instant::now());
                // What the shards already read must reach the disk even if the spool is full
                // (ThingsBoard stalled): exceed its bound rather than lose readings at exit.
                core.spool.allow_overflow();
                core.flush_to_spool();
            }
        }
        core.pump(draining_since.is_some());
        if let Some(since) = draining_since {
            let drained = shards_done && core.in_flight.is_empty() && core.unsent == 0;
            if drained || since.elapsed() >= core.options.drain_timeout {
                if !drained {
                    tracing::warn!(
                        in_flight = core.in_flight.len(),
                        unsent = core.unsent,
                        "drain deadline passed; unacknowledged records stay in the spool and are sent at the next start"
                    );
                }
                break;
            }
        }
    }
    let disk_bytes = core.spool.stats().disk_bytes;
    if disk_bytes > core.options.spool.max_bytes {
        tracing::warn!(
            disk_bytes,
            max_bytes = core.options.spool.max_bytes,
            "the spool exceeds its bound after shutdown: records the devices had sent were kept rather than lost; they are sent at the next start"
        );
    }
    if let Err(e) = core.spool.sync() {
        tracing::error!("cannot sync the spool at shutdown: {e}");
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (the statistics timestamp ThingsBoard stores).
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

impl Core {
    fn linger_deadline(&self) -> Option<Instant> {
        if !self.connected || self.in_flight.len() >= self.options.inflight_batches {
            return None;
        }
        self.unsent_since.map(|since| since + self.options.linger)
    }

    fn on_session_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Connected(integration) => {
                metrics::inc(Counter::SessionConnects);
                metrics::set_gauge(Gauge::SessionConnected, 1);
                self.connected = true;
                self.apply_integration(integration, ConfigSource::Connect);
                let stats = self.spool.stats();
                tracing::info!(
                    pending_records = stats.nr_pending_records,
                    spool_bytes = stats.disk_bytes,
                    "connected to ThingsBoard; sending from the first unacknowledged record"
                );
            }
            SessionEvent::Rejected { code, error_msg } => {
                metrics::inc(Counter::SessionRejections);
                tracing::error!(?code, "ThingsBoard refused the connection: {error_msg}");
            }
            SessionEvent::IntegrationUpdate(integration) => {
                self.apply_integration(integration, ConfigSource::Update)
            }
            SessionEvent::ConverterUpdate(converter) => self.apply_converter(converter),
            SessionEvent::Downlink(downlink) => {
                metrics::inc(Counter::DownlinksReceived);
                let device = downlink.device_name.clone();
                let route = self
                    .router
                    .route(&device, Box::new(downlink), Instant::now());
                self.dispatch(&device, route);
            }
            SessionEvent::UplinkAck { success, error_msg } => self.on_ack(success, &error_msg),
            SessionEvent::Disconnected { reason } => {
                metrics::inc(Counter::SessionDisconnects);
                metrics::set_gauge(Gauge::SessionConnected, 0);
                tracing::warn!(
                    in_flight = self.in_flight.len(),
                    "ThingsBoard session lost: {reason}"
                );
                self.connected = false;
                self.rewind();
            }
        }
    }

    /// Forgets what was in flight; its records are sent again, in order, on the next session
    /// (statistics in flight are not: they were never spooled).
    fn rewind(&mut self) {
        let batches = self
            .in_flight
            .iter()
            .filter(|f| matches!(f.carried, Carried::Records { .. }))
            .count();
        metrics::add(Counter::BatchesResent, batches as u64);
        self.in_flight.clear();
        self.in_flight_records = 0;
        self.spool.rewind_to_acked();
        self.unsent = self.spool.stats().nr_pending_records;
        self.unsent_since = (self.unsent > 0).then(Instant::now);
        metrics::set_gauge(Gauge::BatchesInFlight, 0);
    }

    fn apply_integration(
        &mut self,
        integration: IntegrationConfigurationProto,
        source: ConfigSource,
    ) {
        let serving = match serving_config(&integration, &self.options.socket) {
            Ok(config) => {
                // The contract's device→peer cache bounds (§3.1) bound the downlink routes, but
                // never below the connection limit: a connected device's downlink is written at
                // once however large the fleet (ThingsBoard's default cacheSize is 1000).
                if let Ok(tcp) = TcpIntegrationConfig::from_json(&integration.configuration) {
                    let max_routes =
                        (tcp.client.cache_size as usize).max(self.options.socket.max_connections);
                    self.router
                        .set_route_bounds(max_routes, tcp.client.cache_ttl);
                }
                if config.is_none() {
                    tracing::warn!(name = %integration.name, "the integration is disabled in ThingsBoard: not serving devices");
                }
                let serving = config.is_some();
                self.shard_config.send_if_modified(|current| {
                    let changed = *current != config;
                    *current = config;
                    changed
                });
                Ok(serving)
            }
            Err(e) => {
                ConfigRejected {
                    what: "integration",
                    error: &e,
                }
                .emit();
                Err(())
            }
        };
        self.integration = Some(integration);
        let before = self.statistics.state();
        let after = lifecycle_after(source, serving);
        self.statistics.set_state(after);
        // ThingsBoard's client sends a final statistics record when the integration stops.
        if after == LifecycleState::Stopped
            && before != LifecycleState::Stopped
            && before != LifecycleState::NotApplicable
            && self.statistics.enabled()
        {
            self.send_statistics(Instant::now());
        }
    }

    /// Sends the statistics of the period ending `now` and starts the next period. Counted
    /// and queued in flight like a batch (outside the batch window: it is small, and must not
    /// wait behind a full window of records).
    fn send_statistics(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        let stats = self.statistics.take(now, CounterReading::now());
        let msg = encode_statistics_uplink(&stats, wall_clock_ms());
        if let Err(e) = self.session.send_uplink(msg) {
            tracing::warn!(
                "cannot send statistics: {e}; its counts are lost, waiting for the next session"
            );
            self.connected = false;
            self.rewind();
            return;
        }
        tracing::debug!(
            messages_count = stats.messages_count,
            errors_count = stats.errors_count,
            state = stats.state.as_str(),
            "statistics sent"
        );
        metrics::inc(Counter::StatisticsSent);
        self.in_flight.push_back(InFlight {
            carried: Carried::Statistics,
            sent_at: now,
        });
        metrics::set_gauge(Gauge::BatchesInFlight, self.in_flight.len() as i64);
    }

    /// A converter changed: replace it in the integration it belongs to (by converter id,
    /// like the reference client) and re-serve.
    fn apply_converter(&mut self, converter: ConverterConfigurationProto) {
        let Some(mut integration) = self.integration.clone() else {
            return;
        };
        let same_id = |c: &Option<ConverterConfigurationProto>| {
            c.as_ref().is_some_and(|c| {
                c.converter_id_msb == converter.converter_id_msb
                    && c.converter_id_lsb == converter.converter_id_lsb
            })
        };
        if same_id(&integration.uplink_converter) {
            integration.uplink_converter = Some(converter);
        } else {
            integration.downlink_converter = Some(converter);
        }
        self.apply_integration(integration, ConfigSource::Update);
    }

    fn on_shard_event(&mut self, event: ShardEvent) {
        match event {
            ShardEvent::ConnectionClosed(conn) => self.router.connection_closed(conn),
            ShardEvent::Undelivered { device, downlink } => {
                let route = self.router.hold(&device, downlink, Instant::now());
                self.dispatch(&device, route);
            }
        }
    }

    fn dispatch(&mut self, device: &str, route: Route<Box<DeviceDownlinkDataProto>>) {
        match route {
            Route::Deliver(conn, downlink) => self.send_to_shard(conn, downlink),
            Route::Held { dropped } => {
                metrics::inc(Counter::DownlinksHeld);
                if dropped.is_some() {
                    DownlinkDropped {
                        device,
                        reason: DownlinkDropReason::HoldLimit,
                        detail: "too many downlinks held for this device; dropped the oldest",
                    }
                    .emit();
                }
            }
        }
    }

    fn send_to_shard(&mut self, conn: ConnRef, downlink: Box<DeviceDownlinkDataProto>) {
        let Some(inbox) = self.shard_downlinks.get(conn.shard) else {
            return;
        };
        let command = DownlinkCommand {
            conn_id: conn.conn_id,
            downlink,
        };
        if let Err(e) = inbox.try_send(command) {
            metrics::inc(Counter::DownlinksInboxFull);
            let command = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            let device = command.downlink.device_name.clone();
            if let Route::Held { dropped: Some(_) } =
                self.router.hold(&device, command.downlink, Instant::now())
            {
                DownlinkDropped {
                    device: &device,
                    reason: DownlinkDropReason::HoldLimit,
                    detail: "shard inbox full and hold limit reached",
                }
                .emit();
            }
        }
    }

    fn on_records(&mut self, batches: Vec<RecordBatch>) {
        for batch in batches {
            let conn = batch.conn;
            // `Instant` is monotonic across threads: a shard's read time is never in our future.
            let read_at = batch.read_at;
            self.to_spool_read_at = Some(self.to_spool_read_at.map_or(read_at, |t| t.min(read_at)));
            self.to_spool
                .extend(batch.records.into_iter().map(|record| (conn, record)));
        }
        self.flush_to_spool();
    }

    /// Appends waiting records to the spool in chunks that fit it, then routes their devices.
    /// Under backpressure a full spool leaves the rest waiting (and the shards' channel fills).
    fn flush_to_spool(&mut self) {
        while !self.to_spool.is_empty() {
            if self.dead_letter_too_large_front() {
                continue;
            }
            let mut count = 0;
            let mut bytes = 0u64;
            for (_, record) in &self.to_spool {
                // An oversized record further on waits for its own turn at the front.
                if record.tagged.len() > self.options.batch_max_bytes {
                    break;
                }
                let size = spooled_bytes(1, record.tagged.len() as u64);
                if count > 0 && bytes + size > self.append_budget_bytes {
                    break;
                }
                bytes += size;
                count += 1;
            }
            let slices: Vec<&[u8]> = self
                .to_spool
                .iter()
                .take(count)
                .map(|(_, r)| r.tagged.as_ref())
                .collect();
            match self.spool.append_batch(&slices) {
                Ok(outcome) => {
                    metrics::add(Counter::RecordsSpooled, count as u64);
                    let was_idle = self.unsent == 0;
                    if outcome.nr_dropped_records > 0 {
                        metrics::add(Counter::RecordsDroppedSpoolFull, outcome.nr_dropped_records);
                        tracing::warn!(
                            dropped_records = outcome.nr_dropped_records,
                            dropped_bytes = outcome.nr_dropped_bytes,
                            "spool full: dropped the oldest unacknowledged records (drop-oldest policy)"
                        );
                        // Dropped records may have been unsent or in flight (a batch in flight
                        // still counts in `in_flight_records`), so pending minus in flight would
                        // undercount and strand the newest records: recount what the read
                        // cursor has not reached, this chunk included.
                        self.unsent = self.spool.nr_unread_records();
                    } else {
                        self.unsent += count as u64;
                    }
                    if was_idle {
                        self.unsent_since =
                            Some(self.to_spool_read_at.unwrap_or_else(Instant::now));
                    }
                }
                Err(SpoolError::Full { .. }) => return,
                Err(e @ (SpoolError::RecordTooLarge { .. } | SpoolError::BatchTooLarge { .. }))
                    if count == 1 =>
                {
                    // One record larger than the whole spool can never be stored: keep it in
                    // the dead-letter file rather than block every device behind it.
                    tracing::error!(
                        "record cannot be spooled ({e}); written to the dead-letter file"
                    );
                    metrics::inc(Counter::RecordsTooLarge);
                    if let Err(e) = self.spool.dead_letter(&slices, &e.to_string()) {
                        tracing::error!("cannot write the dead-letter file: {e}");
                    }
                    if let Some((conn, record)) = self.to_spool.pop_front() {
                        self.saw_uplink(conn, &record.name);
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        "spool append failed: {e}; keeping the records in memory and retrying"
                    );
                    return;
                }
            }
            for (conn, record) in self.to_spool.drain(..count).collect::<Vec<_>>() {
                self.saw_uplink(conn, &record.name);
            }
        }
        self.to_spool_read_at = None;
    }

    /// The device's uplink arrived on `conn`: route it there and release what was held for it.
    /// With the shard's inbox full it only routes: held downlinks stay held for a later uplink
    /// (releasing and re-holding them on every record of a flood would spin this thread).
    fn saw_uplink(&mut self, conn: ConnRef, device: &str) {
        let now = Instant::now();
        let inbox_has_room = self
            .shard_downlinks
            .get(conn.shard)
            .is_some_and(|inbox| inbox.capacity() > 0);
        if !inbox_has_room {
            self.router.note_uplink(device, conn, now);
            return;
        }
        for downlink in self.router.saw_uplink(device, conn, now) {
            self.send_to_shard(conn, downlink);
        }
    }

    /// A record larger than `batch_max_bytes` can never be sent (one `UplinkMsg` would pass
    /// gRPC's 4 MiB message limit, the stream would fail and the same batch be resent forever,
    /// filling the spool and blocking every device): if the front record is one, it goes to the
    /// dead-letter file instead of the spool. Returns whether it did.
    fn dead_letter_too_large_front(&mut self) -> bool {
        let batch_max_bytes = self.options.batch_max_bytes;
        let Some((conn, record)) = self
            .to_spool
            .pop_front_if(|(_, r)| r.tagged.len() > batch_max_bytes)
        else {
            return false;
        };
        self.dead_letter_too_large(&record.name, &record.tagged);
        self.saw_uplink(conn, &record.name);
        true
    }

    fn dead_letter_too_large(&mut self, device: &str, tagged: &[u8]) {
        let error = format!(
            "record of {} bytes is larger than uplink.batch_max_bytes ({} bytes): it can never be sent",
            tagged.len(),
            self.options.batch_max_bytes
        );
        tracing::error!(
            device,
            record_bytes = tagged.len(),
            batch_max_bytes = self.options.batch_max_bytes,
            "uplink record too large to send; written to the dead-letter file"
        );
        metrics::inc(Counter::RecordsTooLarge);
        if let Err(e) = self.spool.dead_letter(&[tagged], &error) {
            tracing::error!("cannot write the dead-letter file: {e}");
        }
    }

    fn on_ack(&mut self, success: bool, error_msg: &str) {
        let Some(front) = self.in_flight.pop_front() else {
            tracing::warn!("acknowledgement with nothing in flight; ignored");
            return;
        };
        metrics::set_gauge(Gauge::BatchesInFlight, self.in_flight.len() as i64);
        let (last_seq, records) = match front.carried {
            Carried::Records { last_seq, records } => (last_seq, records),
            Carried::Statistics => {
                if !success {
                    metrics::inc(Counter::StatisticsRejected);
                    tracing::warn!("ThingsBoard rejected a statistics message: {error_msg}");
                }
                return;
            }
        };
        self.in_flight_records -= records.len() as u64;
        if !success {
            BatchRejected {
                records: records.len(),
                error_msg,
            }
            .emit();
            let slices: Vec<&[u8]> = records.iter().map(|r| r.as_ref()).collect();
            if let Err(e) = self.spool.dead_letter(&slices, error_msg) {
                tracing::error!("cannot write the dead-letter file: {e}");
            }
        }
        metrics::add(Counter::RecordsAcked, records.len() as u64);
        if let Err(e) = self.spool.ack_through(last_seq) {
            tracing::error!("cannot record the acknowledgement in the spool: {e}");
        }
    }

    fn on_tick(&mut self) {
        if let Err(e) = self.spool.tick() {
            tracing::error!("spool sync failed: {e}");
        }
        let now = Instant::now();
        for (device, _) in self.router.expire(now) {
            DownlinkDropped {
                device: &device,
                reason: DownlinkDropReason::Expired,
                detail: "held longer than the downlink hold time without an uplink from the device",
            }
            .emit();
        }
        if let Some(front) = self.in_flight.front() {
            let waited = now.duration_since(front.sent_at);
            if waited >= self.options.ack_timeout {
                AckTimedOut {
                    records: front.records().len(),
                    waited_ms: waited.as_millis(),
                }
                .emit();
                // Responses carry no ids: resending on the same stream would misalign them.
                // Restart the session; everything unacknowledged is resent on the new one.
                self.session.reconnect();
                self.connected = false;
                metrics::set_gauge(Gauge::SessionConnected, 0);
                self.rewind();
            }
        }
        if self.statistics.is_due(self.connected, now) {
            self.send_statistics(now);
        }
        self.flush_to_spool();
        let stats = self.spool.stats();
        metrics::set_gauge(Gauge::SpoolBytes, stats.disk_bytes as i64);
        metrics::set_gauge(Gauge::SpoolPendingRecords, stats.nr_pending_records as i64);
        metrics::set_gauge(
            Gauge::SpoolOldestPendingAgeMs,
            stats.oldest_pending_age.map_or(0, |d| d.as_millis() as i64),
        );
        metrics::set_gauge(Gauge::DownlinksHeldNow, self.router.held_count() as i64);
    }

    /// Sends batches while the window has room and a batch is due (full, lingered, or draining).
    fn pump(&mut self, draining: bool) {
        while self.connected
            && self.unsent > 0
            && self.in_flight.len() < self.options.inflight_batches
        {
            let full = self.unsent >= self.options.batch_max_records as u64;
            let lingered = self
                .unsent_since
                .is_some_and(|since| since.elapsed() >= self.options.linger);
            if !(full || lingered || draining) {
                return;
            }
            self.read_scratch.clear();
            if let Err(e) = self.spool.read_next(
                self.options.batch_max_records,
                self.options.batch_max_bytes,
                &mut self.read_scratch,
            ) {
                tracing::error!("spool read failed: {e}");
                return;
            }
            let Some(&(last_seq, _)) = self.read_scratch.last() else {
                self.unsent = 0;
                self.unsent_since = None;
                return;
            };
            if let [(seq, record)] = self.read_scratch.as_slice()
                && record.len() > self.options.batch_max_bytes
            {
                // Spooled before `batch_max_bytes` was lowered: it can never be sent. It can be
                // acknowledged only when it is the oldest record on the wire's side, i.e. when
                // nothing is in flight; until then read it again later.
                let (seq, record) = (*seq, record.clone());
                if !self.in_flight.is_empty() {
                    self.spool.unread_from(seq);
                    return;
                }
                self.dead_letter_too_large("(spooled)", &record);
                if let Err(e) = self.spool.ack_through(seq) {
                    tracing::error!("cannot record the acknowledgement in the spool: {e}");
                }
                self.unsent = self.unsent.saturating_sub(1);
                self.unsent_since = (self.unsent > 0).then(Instant::now);
                continue;
            }
            let size: usize = self.read_scratch.iter().map(|(_, r)| r.len()).sum();
            let mut msg = BytesMut::with_capacity(size);
            for (_, record) in &self.read_scratch {
                msg.extend_from_slice(record);
            }
            if let Err(e) = self.session.send_uplink(msg.freeze()) {
                tracing::warn!("cannot send a batch: {e}; waiting for the next session");
                self.connected = false;
                self.rewind();
                return;
            }
            let count = self.read_scratch.len() as u64;
            metrics::inc(Counter::BatchesSent);
            self.in_flight.push_back(InFlight {
                carried: Carried::Records {
                    last_seq,
                    records: self.read_scratch.drain(..).map(|(_, r)| r).collect(),
                },
                sent_at: Instant::now(),
            });
            self.in_flight_records += count;
            self.unsent = self.unsent.saturating_sub(count);
            self.unsent_since = (self.unsent > 0).then(Instant::now);
            metrics::set_gauge(Gauge::BatchesInFlight, self.in_flight.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_state_follows_how_and_whether_a_configuration_applied() {
        use ConfigSource::{Connect, Update};
        assert_eq!(lifecycle_after(Connect, Ok(true)), LifecycleState::Started);
        assert_eq!(lifecycle_after(Update, Ok(true)), LifecycleState::Updated);
        assert_eq!(lifecycle_after(Connect, Ok(false)), LifecycleState::Stopped);
        assert_eq!(lifecycle_after(Update, Ok(false)), LifecycleState::Stopped);
        assert_eq!(lifecycle_after(Connect, Err(())), LifecycleState::Failed);
        assert_eq!(lifecycle_after(Update, Err(())), LifecycleState::Failed);
    }
}
