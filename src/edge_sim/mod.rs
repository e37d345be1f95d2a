//! edge-sim: a stand-in for ThingsBoard Edge's remote-integration endpoint, used by the tests,
//! the demo and users trying converters without an Edge.
//!
//! It serves `IntegrationTransport` for one integration definition ([`IntegrationDefinition`]),
//! checks routing key and secret like the server, acknowledges and records every uplink
//! ([`Record`], optionally appended to a JSON-lines file; integration statistics as
//! [`StatisticsRecord`]), and injects downlinks and definition
//! updates on request (library calls on [`EdgeSimHandle`] or the HTTP admin API in `admin`).
//! A [`RejectRule`] makes it answer chosen uplinks with `success=false` instead (see `reject`).
//! Start it in-process with [`EdgeSim::start`] (port 0 works) or as `tcp-integration edge-sim`.
//!
//! Invariant: record `seq` numbers start at 1 and are dense; `records()[i].seq == i + 1`.

mod admin;
pub mod definition;
pub mod record;
pub mod reject;
mod service;

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use admin::{DEFAULT_DOWNLINK_MSG_TYPE, DownlinkRequest};
pub use definition::{
    ConverterDefinition, DefinitionChanges, DefinitionError, IntegrationDefinition,
};
pub use record::{EntityKind, KvList, Record, StatisticsRecord, TsEntry, TypedValue};
pub use reject::RejectRule;
pub use service::{BAD_SECRET_MSG, EdgeSimError, UNKNOWN_KEY_MSG_PREFIX};

use crate::proto::integration::DeviceDownlinkDataProto;
use crate::proto::integration::integration_transport_server::IntegrationTransportServer;
use service::{Shared, TransportService};

/// The seed's TEXT setup (docs' handler settings, port 10560, JS decoder and encoder).
pub const EXAMPLE_TEXT_JSON: &str = include_str!("../../examples/tcp-text.json");
/// The seed's JSON setup.
pub const EXAMPLE_JSON_JSON: &str = include_str!("../../examples/tcp-json.json");
/// The seed's BINARY setup.
pub const EXAMPLE_BINARY_JSON: &str = include_str!("../../examples/tcp-binary.json");

/// How long shutdown waits for servers to drain before dropping their tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `tcp-integration edge-sim` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeSimArgs {
    /// gRPC address to serve IntegrationTransport on (ThingsBoard's default port is 9090).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Integration definition JSON (see docs/edge-sim.md); default: the built-in TEXT example.
    #[arg(long, value_name = "FILE")]
    pub integration: Option<PathBuf>,
    /// Address of the HTTP admin API (off when not given).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Append one JSON line per received device/asset record (and statistics message) to FILE.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

/// Namespace of the emulator's constructor.
#[derive(Debug)]
pub struct EdgeSim;

/// A running emulator. Dropping it without [`EdgeSimHandle::shutdown`] leaves the servers
/// running until the runtime ends.
pub struct EdgeSimHandle {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    grpc_task: JoinHandle<()>,
    http_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EdgeSimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSimHandle")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl EdgeSim {
    /// Binds the gRPC (and optional HTTP admin) listeners and starts serving on the current
    /// tokio runtime. `record_file` is opened for appending.
    pub async fn start(
        definition: IntegrationDefinition,
        grpc_addr: SocketAddr,
        http_addr: Option<SocketAddr>,
        record_file: Option<PathBuf>,
    ) -> Result<EdgeSimHandle, EdgeSimError> {
        definition.validate()?;
        let file = match &record_file {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| EdgeSimError::RecordFile {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        let shared = Shared::new(definition, file);

        let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .map_err(|source| EdgeSimError::Bind {
                what: "gRPC",
                addr: grpc_addr,
                source,
            })?;
        let grpc_local = grpc_listener
            .local_addr()
            .map_err(|source| EdgeSimError::Bind {
                what: "gRPC",
                addr: grpc_addr,
                source,
            })?;
        let http = match http_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| EdgeSimError::Bind {
                        what: "HTTP admin",
                        addr,
                        source,
                    })?;
                let local = listener.local_addr().map_err(|source| EdgeSimError::Bind {
                    what: "HTTP admin",
                    addr,
                    source,
                })?;
                Some((listener, local))
            }
            None => None,
        };

        let service = IntegrationTransportServer::new(TransportService {
            shared: shared.clone(),
        });
        let mut grpc_stop = shared.shutdown.subscribe();
        // TCP_NODELAY on every accepted connection, as a gRPC server (Edge's Netty) sets it:
        // otherwise Nagle can hold a downlink behind an unacknowledged ack segment.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            |accepted| {
                let stream = accepted?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            },
        );
        let grpc_task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "edge-sim gRPC server failed");
            }
        });

        let (http_task, http_local) = match http {
            Some((listener, local)) => {
                let router = admin::router(shared.clone());
                let mut http_stop = shared.shutdown.subscribe();
                let task = tokio::spawn(async move {
                    let result = axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = http_stop.wait_for(|s| *s).await;
                        })
                        .await;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "edge-sim HTTP admin server failed");
                    }
                });
                (Some(task), Some(local))
            }
            None => (None, None),
        };
        tracing::info!(grpc = %grpc_local, http = ?http_local, "edge-sim started");
        Ok(EdgeSimHandle {
            shared,
            grpc_addr: grpc_local,
            http_addr: http_local,
            grpc_task,
            http_task,
        })
    }
}

impl EdgeSimHandle {
    /// The bound gRPC address (the real port when started on port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin API address, if started with one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Every record received so far, in `seq` order.
    pub fn records(&self) -> Vec<Record> {
        self.shared.lock().records.clone()
    }

    /// Records received from now on (a receiver that falls more than 4096 behind sees
    /// `Lagged`; `records()` still has them all).
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.shared.subscribe()
    }

    /// Every integration statistics message received so far, in `seq` order.
    pub fn statistics(&self) -> Vec<StatisticsRecord> {
        self.shared.lock().statistics.clone()
    }

    /// Statistics received from now on.
    pub fn subscribe_statistics(&self) -> broadcast::Receiver<StatisticsRecord> {
        self.shared.subscribe_statistics()
    }

    /// A counter of ACCEPTED CONNECTs; wait on it to know an integration (re)connected.
    pub fn accepted_sessions(&self) -> watch::Receiver<u64> {
        self.shared.accepted.subscribe()
    }

    /// True while an accepted integration stream is open.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// Sends a raw downlink to the live session.
    pub fn send_downlink(&self, data: DeviceDownlinkDataProto) -> Result<(), EdgeSimError> {
        self.shared.send_downlink(data)
    }

    /// Sends the downlink `POST /downlink` would send; returns what was sent.
    pub fn post_downlink(
        &self,
        req: &DownlinkRequest,
    ) -> Result<DeviceDownlinkDataProto, EdgeSimError> {
        admin::post_downlink_request(&self.shared, req)
    }

    /// Replaces the definition (`PUT /integration`); returns the pushed changes and whether a
    /// live session received them.
    pub fn replace_definition(
        &self,
        definition: IntegrationDefinition,
    ) -> Result<(DefinitionChanges, bool), EdgeSimError> {
        self.shared.replace_definition(definition)
    }

    /// The definition currently served.
    pub fn definition(&self) -> IntegrationDefinition {
        self.shared.lock().definition.clone()
    }

    /// Stops (true) or resumes (false) acknowledging uplinks; held acks are released in order
    /// on resume. Uplinks are still recorded while paused.
    pub fn set_ack_paused(&self, paused: bool) {
        self.shared.ack_paused.send_replace(paused);
    }

    /// Answers uplinks matching `rule` with `UplinkResponseMsg{success=false, errorMsg}` instead
    /// of recording them (`PUT /reject`); `None` clears the rule (`DELETE /reject`). Replaces
    /// any earlier rule. Uplinks already received are not affected.
    pub fn set_reject_rule(&self, rule: Option<RejectRule>) {
        self.shared.lock().reject = rule;
    }

    /// The reject rule in force (a counted rule shows its remaining count).
    pub fn reject_rule(&self) -> Option<RejectRule> {
        self.shared.lock().reject.clone()
    }

    /// How many uplinks were answered with `success=false` so far.
    pub fn rejected_uplinks(&self) -> u64 {
        self.shared.lock().nr_rejected_uplinks
    }

    /// Ends every stream with status UNAVAILABLE, stops both servers and frees the ports.
    pub async fn shutdown(self) {
        self.shared.shutdown.send_replace(true);
        for task in std::iter::once(self.grpc_task).chain(self.http_task) {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                tracing::warn!("edge-sim server did not drain in time; dropping it");
                abort.abort();
            }
        }
        tracing::info!(grpc = %self.grpc_addr, "edge-sim stopped");
    }
}

/// `tcp-integration edge-sim`: serves until Ctrl-C.
pub async fn run(args: EdgeSimArgs) -> anyhow::Result<()> {
    let definition = match &args.integration {
        Some(path) => IntegrationDefinition::load(path)?,
        None => IntegrationDefinition::from_json_str(EXAMPLE_TEXT_JSON)?,
    };
    let name = definition.name.clone();
    let key = definition.routing_key.clone();
    let handle = EdgeSim::start(definition, args.listen, args.http, args.record.clone()).await?;
    println!(
        "edge-sim serving integration {name:?} (routing key {key:?}) on grpc://{}",
        handle.grpc_addr()
    );
    if let Some(http) = handle.http_addr() {
        println!("admin API on http://{http}");
    }
    if let Some(record) = &args.record {
        println!("recording uplinks to {}", record.display());
    }
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
