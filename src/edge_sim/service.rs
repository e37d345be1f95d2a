//! edge-sim's `IntegrationTransport` service and the state it shares with the admin API:
//! the current definition, the live session, the records and the latest values.
//!
//! Server rules (contract §2.2, as ThingsBoard's server behaves):
//! * the first CONNECT on a stream decides: ACCEPTED with the configuration, or
//!   BAD_CREDENTIALS with the exact error text, after which the stream ends with an error
//!   (status UNKNOWN); a second CONNECT is ignored; uplinks before CONNECT are ignored;
//! * each `UplinkMsg` (records, statistics, anything) is answered with one
//!   `UplinkResponseMsg{success=true}`, in order (held
//!   back while acks are paused, then released in order) — or with `success=false` and the
//!   rule's `errorMsg`, unrecorded, when the reject rule ([`super::reject`]) picks it;
//! * sessions are keyed by the one integration: a newer ACCEPTED stream replaces the older one
//!   as the target of updates and downlinks; the older stream keeps acknowledging its uplinks.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::definition::{DefinitionChanges, IntegrationDefinition};
use super::record::{
    EntityKind, EntityState, Record, StatisticsRecord, records_from_uplink, statistics_from_uplink,
};
use super::reject::{self, RejectRule};
use crate::proto::integration::integration_transport_server::IntegrationTransport;
use crate::proto::integration::{
    ConnectRequestMsg, ConnectResponseCode, ConnectResponseMsg, ConverterUpdateMsg,
    DeviceDownlinkDataProto, DownlinkMsg, IntegrationUpdateMsg, MessageType, RequestMsg,
    ResponseMsg, UplinkMsg, UplinkResponseMsg,
};

/// The server's answer when the secret does not match (exact text, contract §2.2).
pub const BAD_SECRET_MSG: &str = "Failed to validate the integration!";

/// The server's answer prefix when the routing key is unknown; the key follows.
pub const UNKNOWN_KEY_MSG_PREFIX: &str = "Failed to find the integration! Routing key: ";

/// Records buffered per slow `subscribe()` receiver before it starts missing some.
const RECORD_BROADCAST_CAPACITY: usize = 4096;

type ResponseTx = mpsc::UnboundedSender<Result<ResponseMsg, Status>>;

/// The newest ACCEPTED stream.
struct LiveSession {
    id: u64,
    tx: ResponseTx,
}

/// Mutable emulator state behind one lock; every critical section is short and never awaits.
pub(crate) struct SimState {
    pub(crate) definition: IntegrationDefinition,
    pub(crate) integration_id: (i64, i64),
    live: Option<LiveSession>,
    next_session_id: u64,
    pub(crate) records: Vec<Record>,
    /// Integration statistics received, in order (`seq` = index + 1).
    pub(crate) statistics: Vec<StatisticsRecord>,
    pub(crate) entities: BTreeMap<(EntityKind, String), EntityState>,
    record_file: Option<File>,
    /// Uplinks matching this are answered with `success=false` (see [`super::reject`]).
    pub(crate) reject: Option<RejectRule>,
    /// Uplinks answered with `success=false` so far.
    pub(crate) nr_rejected_uplinks: u64,
}

/// Appends JSON lines (records or statistics) to the record file, if there is one; a failed
/// write is logged, the emulator keeps serving.
fn append_record_lines(state: &mut SimState, lines: &str) {
    if let Some(file) = state.record_file.as_mut()
        && let Err(e) = file.write_all(lines.as_bytes()).and_then(|()| file.flush())
    {
        tracing::error!(error = %e, "cannot append to the record file");
    }
}

/// Errors the emulator's control surface reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum EdgeSimError {
    #[error("no integration session is connected")]
    NotConnected,
    #[error(transparent)]
    Definition(#[from] super::definition::DefinitionError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open record file {path}: {source}")]
    RecordFile {
        path: String,
        source: std::io::Error,
    },
}

/// State shared by the gRPC service, the admin API and the handle.
pub(crate) struct Shared {
    state: Mutex<SimState>,
    records_tx: broadcast::Sender<Record>,
    statistics_tx: broadcast::Sender<StatisticsRecord>,
    pub(crate) ack_paused: watch::Sender<bool>,
    /// Count of ACCEPTED CONNECTs so far.
    pub(crate) accepted: watch::Sender<u64>,
    pub(crate) shutdown: watch::Sender<bool>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    pub(crate) fn new(definition: IntegrationDefinition, record_file: Option<File>) -> Arc<Shared> {
        let integration_id = super::definition::integration_id(&definition.routing_key);
        Arc::new(Shared {
            state: Mutex::new(SimState {
                definition,
                integration_id,
                live: None,
                next_session_id: 1,
                records: Vec::new(),
                statistics: Vec::new(),
                entities: BTreeMap::new(),
                record_file,
                reject: None,
                nr_rejected_uplinks: 0,
            }),
            records_tx: broadcast::channel(RECORD_BROADCAST_CAPACITY).0,
            statistics_tx: broadcast::channel(RECORD_BROADCAST_CAPACITY).0,
            ack_paused: watch::channel(false).0,
            accepted: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        // The state stays consistent between statements, so a panic elsewhere must not take
        // the emulator down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.records_tx.subscribe()
    }

    pub(crate) fn subscribe_statistics(&self) -> broadcast::Receiver<StatisticsRecord> {
        self.statistics_tx.subscribe()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.lock().live.as_ref().is_some_and(|s| !s.tx.is_closed())
    }

    /// Decides a CONNECT; on ACCEPTED registers the stream as the live session.
    fn connect(
        &self,
        req: &ConnectRequestMsg,
        tx: &ResponseTx,
    ) -> (ConnectResponseMsg, Option<u64>) {
        let mut state = self.lock();
        let def = &state.definition;
        if req.integration_routing_key != def.routing_key {
            return (
                rejected(format!(
                    "{UNKNOWN_KEY_MSG_PREFIX}{}",
                    req.integration_routing_key
                )),
                None,
            );
        }
        if req.integration_secret != def.secret {
            return (rejected(BAD_SECRET_MSG.to_owned()), None);
        }
        let configuration = def.to_proto(state.integration_id);
        let id = state.next_session_id;
        state.next_session_id += 1;
        state.live = Some(LiveSession { id, tx: tx.clone() });
        drop(state);
        self.accepted.send_modify(|n| *n += 1);
        (
            ConnectResponseMsg {
                response_code: ConnectResponseCode::Accepted as i32,
                error_msg: String::new(),
                configuration: Some(configuration),
            },
            Some(id),
        )
    }

    fn session_closed(&self, id: u64) {
        let mut state = self.lock();
        if state.live.as_ref().is_some_and(|s| s.id == id) {
            state.live = None;
        }
    }

    /// Answers one uplink: rejected by the reject rule (not recorded), or recorded and acked.
    fn process_uplink(&self, msg: &UplinkMsg) -> ResponseMsg {
        let verdict = {
            let mut state = self.lock();
            let verdict = reject::judge(&mut state.reject, msg);
            if verdict.is_some() {
                state.nr_rejected_uplinks += 1;
            }
            verdict
        };
        match verdict {
            Some(error_msg) => {
                tracing::info!(%error_msg, "edge-sim rejected an uplink (reject rule)");
                uplink_response(false, error_msg)
            }
            None => {
                self.record_uplink(msg);
                self.record_statistics(msg);
                uplink_response(true, String::new())
            }
        }
    }

    /// Numbers, stores, writes and broadcasts the records of one uplink.
    fn record_uplink(&self, msg: &UplinkMsg) {
        let recv_ms = now_ms();
        let mut records = records_from_uplink(msg, recv_ms);
        if records.is_empty() {
            return;
        }
        let mut state = self.lock();
        let mut lines = String::new();
        for record in &mut records {
            record.seq = state.records.len() as u64 + 1;
            let key = (record.entity, record.name.clone());
            let created = !state.entities.contains_key(&key);
            state
                .entities
                .entry(key)
                .or_default()
                .apply(record, created);
            if state.record_file.is_some() {
                lines.push_str(&record.to_json_line());
                lines.push('\n');
            }
            state.records.push(record.clone());
        }
        append_record_lines(&mut state, &lines);
        drop(state);
        for record in records {
            // No subscriber is fine: records stay available through `records()`.
            let _ = self.records_tx.send(record);
        }
    }

    /// Numbers, stores, writes and broadcasts the integration statistics of one uplink.
    fn record_statistics(&self, msg: &UplinkMsg) {
        let mut stats = statistics_from_uplink(msg, now_ms());
        if stats.is_empty() {
            return;
        }
        let mut state = self.lock();
        let mut lines = String::new();
        for stat in &mut stats {
            stat.seq = state.statistics.len() as u64 + 1;
            if state.record_file.is_some() {
                lines.push_str(&stat.to_json_line());
                lines.push('\n');
            }
            state.statistics.push(stat.clone());
        }
        append_record_lines(&mut state, &lines);
        drop(state);
        for stat in stats {
            let _ = self.statistics_tx.send(stat);
        }
    }

    /// Sends one response to the live session.
    pub(crate) fn send_to_live(&self, msg: ResponseMsg) -> Result<(), EdgeSimError> {
        let state = self.lock();
        match &state.live {
            Some(live) => live
                .tx
                .send(Ok(msg))
                .map_err(|_| EdgeSimError::NotConnected),
            None => Err(EdgeSimError::NotConnected),
        }
    }

    pub(crate) fn send_downlink(&self, data: DeviceDownlinkDataProto) -> Result<(), EdgeSimError> {
        self.send_to_live(ResponseMsg {
            downlink_msg: Some(DownlinkMsg {
                device_data: Some(data),
            }),
            ..Default::default()
        })
    }

    /// Replaces the definition and pushes the resulting updates to the live session, if any.
    /// Returns the changes and whether a session received them.
    pub(crate) fn replace_definition(
        &self,
        new: IntegrationDefinition,
    ) -> Result<(DefinitionChanges, bool), EdgeSimError> {
        new.validate()?;
        let mut state = self.lock();
        let changes = state.definition.changes_to(&new, state.integration_id);
        state.definition = new;
        let mut delivered = false;
        if let Some(live) = &state.live {
            delivered = true;
            let mut msgs = Vec::new();
            if let Some(cfg) = &changes.integration_update {
                msgs.push(ResponseMsg {
                    integration_update_msg: Some(IntegrationUpdateMsg {
                        configuration: Some(cfg.clone()),
                    }),
                    ..Default::default()
                });
            }
            for conv in &changes.converter_updates {
                msgs.push(ResponseMsg {
                    converter_update_msg: Some(ConverterUpdateMsg {
                        configuration: Some(conv.clone()),
                    }),
                    ..Default::default()
                });
            }
            for msg in msgs {
                delivered &= live.tx.send(Ok(msg)).is_ok();
            }
        }
        Ok((changes, delivered))
    }
}

fn rejected(error_msg: String) -> ConnectResponseMsg {
    ConnectResponseMsg {
        response_code: ConnectResponseCode::BadCredentials as i32,
        error_msg,
        // Present but empty, as the server sends it.
        configuration: Some(Default::default()),
    }
}

fn uplink_response(success: bool, error_msg: String) -> ResponseMsg {
    ResponseMsg {
        uplink_response_msg: Some(UplinkResponseMsg { success, error_msg }),
        ..Default::default()
    }
}

/// The gRPC service object.
pub(crate) struct TransportService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl IntegrationTransport for TransportService {
    type handleMsgsStream = UnboundedReceiverStream<Result<ResponseMsg, Status>>;

    async fn handle_msgs(
        &self,
        request: Request<Streaming<RequestMsg>>,
    ) -> Result<Response<Self::handleMsgsStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_stream(self.shared.clone(), inbound, tx, peer));
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// Serves one stream until the client ends it, an error occurs, or the emulator shuts down.
async fn run_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<RequestMsg>,
    tx: ResponseTx,
    peer: Option<std::net::SocketAddr>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut paused = shared.ack_paused.subscribe();
    let mut session: Option<u64> = None;
    // Responses held back while acks are paused, in request order.
    let mut held_acks: VecDeque<ResponseMsg> = VecDeque::new();
    loop {
        let msg = tokio::select! {
            msg = inbound.next() => msg,
            _ = shutdown.wait_for(|s| *s) => {
                let _ = tx.send(Err(Status::unavailable("edge-sim is shutting down")));
                break;
            }
            changed = paused.changed(), if !held_acks.is_empty() => {
                if changed.is_err() { break; }
                if !*paused.borrow_and_update() {
                    for response in held_acks.drain(..) {
                        let _ = tx.send(Ok(response));
                    }
                }
                continue;
            }
        };
        let req = match msg {
            Some(Ok(req)) => req,
            Some(Err(status)) => {
                tracing::info!(?peer, code = ?status.code(), message = %status.message(), "integration stream failed");
                break;
            }
            None => {
                tracing::info!(?peer, "integration closed its stream");
                break;
            }
        };
        if req.message_type == MessageType::ConnectRpcMessage as i32 {
            if session.is_some() {
                // A CONNECT on an accepted stream is ignored without a reply.
                continue;
            }
            let Some(connect) = req.connect_request_msg else {
                continue;
            };
            let (response, id) = shared.connect(&connect, &tx);
            let accepted = id.is_some();
            let text = response.error_msg.clone();
            let _ = tx.send(Ok(ResponseMsg {
                connect_response_msg: Some(response),
                ..Default::default()
            }));
            if accepted {
                tracing::info!(?peer, service_id = %connect.service_id, "integration connected");
                session = id;
            } else {
                tracing::warn!(?peer, routing_key = %connect.integration_routing_key, %text, "integration CONNECT refused");
                let _ = tx.send(Err(Status::unknown(text)));
                break;
            }
        } else if req.message_type == MessageType::UplinkRpcMessage as i32 {
            let (Some(_), Some(uplink)) = (session, req.uplink_msg) else {
                // Before CONNECT, or without a payload: no processing, no reply.
                continue;
            };
            held_acks.push_back(shared.process_uplink(&uplink));
            if !*paused.borrow_and_update() {
                // Held acks go first, so acknowledgements stay in request order.
                for response in held_acks.drain(..) {
                    let _ = tx.send(Ok(response));
                }
            }
        }
    }
    if let Some(id) = session {
        shared.session_closed(id);
    }
}
