//! The gRPC client session to ThingsBoard (PE server or Edge): one bidirectional
//! `/integration.IntegrationTransport/handleMsgs` stream at a time, CONNECT first, then events.
//!
//! Owns: the channel (h2c or TLS), the CONNECT handshake, turning `ResponseMsg`s into
//! [`SessionEvent`]s, and reconnecting forever with capped, jittered backoff.
//!
//! Invariants:
//! * Uplinks are sent as pre-encoded `UplinkMsg` bytes: [`RequestCodec`] writes the `RequestMsg`
//!   envelope by hand (`08 01` = messageType UPLINK, `1A len bytes` = uplinkMsg) and never
//!   decodes or re-encodes the payload.
//! * [`SessionHandle::send_uplink`] only succeeds between `Connected` and `Disconnected`; each
//!   uplink accepted by it yields exactly one `UplinkAck` (in order) unless the stream ends
//!   first, in which case the owner must resend after the next `Connected`.
//! * `Disconnected` is emitted only for a stream that had emitted `Connected`; a refused TCP
//!   connect or a rejected CONNECT is logged (and `Rejected` emitted) but is not a disconnect.
//! * The secret is never logged: [`SessionConfig`] holds it as a [`Secret`], whose `Debug` is
//!   `***`, so no `{:?}` of the options that embed it can print it.
//! * [`SessionHandle::reconnect`] restarts only the stream that was live when it was called: a
//!   request made while no stream is live (or for an older stream) is ignored, so it can never
//!   drop a stream accepted later.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::local::Secret;
use crate::proto::integration::{
    ConnectRequestMsg, ConnectResponseCode, ConverterConfigurationProto, DeviceDownlinkDataProto,
    IntegrationConfigurationProto, MessageType, RequestMsg, ResponseMsg,
};
use crate::proto::msgqueue::TbMsgProto;

/// The one RPC of the remote-integration service (package + service + method).
pub const HANDLE_MSGS_PATH: &str = "/integration.IntegrationTransport/handleMsgs";

/// ThingsBoard's server refuses pings more often than its `permitKeepAliveTime` (300 s by
/// default) with a `too_many_pings` GOAWAY, so the client never pings more often than this.
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(300);

/// grpc-java's default keepalive timeout, which the reference client uses.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on TCP/TLS connection set-up, so a black-holed address does not stall the retry loop.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on the wait for the `ConnectResponseMsg`; the server answers a CONNECT at once, so a
/// silent server is treated like a failed attempt and retried.
const CONNECT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Capacity of the event queue to the owner. When the owner lags, the session stops reading the
/// stream, and HTTP/2 flow control pushes back on the server instead of buffering here.
const EVENT_QUEUE_CAPACITY: usize = 1024;

/// Places where a system CA bundle usually lives, used for `https` endpoints without a CA file
/// (tonic is built without native/webpki root features in this crate).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Settings of one session. `keepalive` below [`MIN_KEEPALIVE`] is raised to it.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub endpoint: String,
    pub routing_key: String,
    pub secret: Secret,
    /// Sent in the CONNECT; the reference client sends `[<client_id>:<port>]`.
    pub service_id: String,
    /// Trust anchor (PEM) for `https`; without it the system CA bundle is used.
    pub tls_ca_pem: Option<PathBuf>,
    /// HTTP/2 PING interval (≥ 300 s, see [`MIN_KEEPALIVE`]); `None` = no pings, which the
    /// contract allows (§2.1: ping no more often than the server permits, or not at all).
    pub keepalive: Option<Duration>,
    /// First reconnect delay (the reference client retries every 3 s).
    pub reconnect_base: Duration,
    /// Cap of the exponential reconnect delay.
    pub reconnect_max: Duration,
}

impl SessionConfig {
    /// A config with the reference client's timings: keepalive 300 s, reconnect 3 s … 60 s.
    pub fn new(
        endpoint: impl Into<String>,
        routing_key: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        SessionConfig {
            endpoint: endpoint.into(),
            routing_key: routing_key.into(),
            secret: Secret::new(secret),
            service_id: "[remote:8082]".to_owned(),
            tls_ca_pem: None,
            keepalive: Some(MIN_KEEPALIVE),
            reconnect_base: Duration::from_secs(3),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

/// What the session reports to its owner, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// CONNECT was ACCEPTED (on every (re)connect); carries the integration configuration.
    Connected(IntegrationConfigurationProto),
    /// CONNECT was refused; the session logs it and retries by itself.
    Rejected {
        code: ConnectResponseCode,
        error_msg: String,
    },
    IntegrationUpdate(IntegrationConfigurationProto),
    ConverterUpdate(ConverterConfigurationProto),
    /// A downlink; `tb_msg_proto` is filled from the deprecated `tbMsg` bytes when only those
    /// were sent (contract §8.1).
    Downlink(DeviceDownlinkDataProto),
    /// One per `UplinkResponseMsg`, i.e. per uplink sent on this stream, in send order.
    UplinkAck {
        success: bool,
        error_msg: String,
    },
    /// The stream of a `Connected` session ended or failed; unacknowledged uplinks must be
    /// resent after the next `Connected`.
    Disconnected {
        reason: String,
    },
}

/// Errors of [`SessionHandle::send_uplink`]; the caller keeps the uplink and retries it after
/// the next `Connected` event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("not connected to ThingsBoard")]
    NotConnected,
    #[error("the session has shut down")]
    Shutdown,
}

/// One outbound request: the encoder turns it into `RequestMsg` bytes.
#[derive(Debug, Clone)]
pub enum OutboundRequest {
    Connect(ConnectRequestMsg),
    /// Protobuf bytes of one `UplinkMsg`.
    Uplink(Bytes),
}

/// Writes the `RequestMsg` envelope of an uplink around pre-encoded `UplinkMsg` bytes:
/// field 1 (varint) = UPLINK_RPC_MESSAGE, field 3 (length-delimited) = the bytes.
pub fn encode_uplink_request(uplink_msg: &[u8], dst: &mut impl BufMut) {
    // Tag of field 1, wire type 0 (varint); value 1 must be present because 0 is the default.
    dst.put_u8(0x08);
    dst.put_u8(MessageType::UplinkRpcMessage as u8);
    // Tag of field 3, wire type 2 (length-delimited).
    dst.put_u8(0x1A);
    prost::encoding::encode_varint(uplink_msg.len() as u64, dst);
    dst.put_slice(uplink_msg);
}

/// Encodes one [`OutboundRequest`] as `RequestMsg` protobuf bytes.
pub fn encode_request(request: &OutboundRequest, dst: &mut impl BufMut) {
    match request {
        OutboundRequest::Connect(connect) => {
            let msg = RequestMsg {
                message_type: MessageType::ConnectRpcMessage as i32,
                connect_request_msg: Some(connect.clone()),
                uplink_msg: None,
            };
            msg.encode_raw(dst);
        }
        OutboundRequest::Uplink(bytes) => encode_uplink_request(bytes, dst),
    }
}

/// gRPC codec: hand-written `RequestMsg` encoder, prost `ResponseMsg` decoder.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestCodec;

#[derive(Debug)]
pub struct RequestEncoder;

#[derive(Debug)]
pub struct ResponseDecoder;

impl Encoder for RequestEncoder {
    type Item = OutboundRequest;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        encode_request(&item, dst);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ResponseMsg;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ResponseMsg::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable ResponseMsg: {e}")))
    }
}

impl Codec for RequestCodec {
    type Encode = OutboundRequest;
    type Decode = ResponseMsg;
    type Encoder = RequestEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

/// Delay before reconnect attempt `attempt` (0-based count of failures since the last
/// ACCEPTED): `base · 2^attempt`, capped at `max`, scaled by `jitter_unit` ∈ [0, 1) into
/// [80 %, 120 %) so many integrations restarted together do not reconnect in lockstep.
pub fn reconnect_delay(base: Duration, max: Duration, attempt: u32, jitter_unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(max.max(base));
    capped.mul_f64(0.8 + 0.4 * jitter_unit.clamp(0.0, 1.0))
}

/// Fills `tb_msg_proto` from the deprecated `tbMsg` bytes (field 3) when only those were sent.
pub fn normalize_downlink(mut data: DeviceDownlinkDataProto) -> DeviceDownlinkDataProto {
    #[allow(deprecated)]
    if data.tb_msg_proto.is_none() && !data.tb_msg.is_empty() {
        match TbMsgProto::decode(data.tb_msg.as_slice()) {
            Ok(msg) => data.tb_msg_proto = Some(msg),
            Err(e) => tracing::warn!(
                device = %data.device_name,
                error = %e,
                "downlink carries undecodable deprecated tbMsg bytes"
            ),
        }
    }
    data
}

/// The owner's side of a session; clones share it. Dropping every clone (or calling
/// [`SessionHandle::shutdown`]) ends the session task and closes the stream.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    outbound: Arc<OutboundSlot>,
    stop: Arc<StopOnDrop>,
    /// The stream generation the owner asked to restart (see [`SessionHandle::reconnect`]).
    reconnect: Arc<watch::Sender<u64>>,
}

/// The request queue of the live, ACCEPTED stream (none while disconnected), tagged with the
/// stream's generation (1, 2, … per attempt; 0 = none yet).
#[derive(Debug, Default)]
struct OutboundSlot {
    sender: Mutex<Option<(u64, mpsc::UnboundedSender<OutboundRequest>)>>,
}

impl OutboundSlot {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(u64, mpsc::UnboundedSender<OutboundRequest>)>> {
        // A poisoned lock only means another thread panicked mid-assignment of an Option;
        // the value is still a valid Option, so keep going.
        self.sender.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, sender: Option<(u64, mpsc::UnboundedSender<OutboundRequest>)>) {
        *self.lock() = sender;
    }

    /// Empties the slot; returns the generation of the stream that was live, if any.
    fn take(&self) -> Option<u64> {
        self.lock().take().map(|(generation, _)| generation)
    }
}

#[derive(Debug)]
struct StopOnDrop {
    stop: watch::Sender<bool>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl SessionHandle {
    /// Sends one pre-encoded `UplinkMsg` as `RequestMsg{messageType=UPLINK_RPC_MESSAGE,
    /// uplinkMsg}`. Fails when no ACCEPTED stream is live.
    pub fn send_uplink(&self, uplink_msg: Bytes) -> Result<(), SessionError> {
        if *self.stop.stop.borrow() {
            return Err(SessionError::Shutdown);
        }
        let guard = self.outbound.lock();
        match guard.as_ref() {
            Some((_, tx)) => tx
                .send(OutboundRequest::Uplink(uplink_msg))
                .map_err(|_| SessionError::NotConnected),
            None => Err(SessionError::NotConnected),
        }
    }

    /// True while an ACCEPTED stream is live.
    pub fn is_connected(&self) -> bool {
        self.outbound
            .lock()
            .as_ref()
            .is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// Drops the current stream (if any) and connects again after the usual delay. Used when
    /// acknowledgements stop arriving: responses carry no ids, so the only safe resend is on a
    /// fresh stream. No `Disconnected` event follows; the owner rewinds itself.
    ///
    /// Only the stream live at the call is restarted: without one (the stream already ended, or
    /// the next is still connecting) there is nothing to restart, and the request is dropped
    /// rather than kept for a stream the owner has not seen yet.
    pub fn reconnect(&self) {
        if let Some(generation) = self.outbound.take() {
            self.reconnect.send_replace(generation);
        }
    }

    /// Ends the session: the stream is half-closed and no reconnect follows.
    pub fn shutdown(&self) {
        let _ = self.stop.stop.send(true);
        self.outbound.set(None);
    }
}

/// Spawns the session task on the current tokio runtime. It connects, sends CONNECT, reports
/// events, and reconnects forever after any stream error, end or rejection, until every
/// [`SessionHandle`] clone is dropped, `shutdown` is called, or the event receiver is dropped.
pub fn spawn(config: SessionConfig) -> (SessionHandle, mpsc::Receiver<SessionEvent>) {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_CAPACITY);
    let (stop_tx, stop_rx) = watch::channel(false);
    let outbound = Arc::new(OutboundSlot::default());
    let (reconnect_tx, reconnect_rx) = watch::channel(0u64);
    let handle = SessionHandle {
        outbound: outbound.clone(),
        stop: Arc::new(StopOnDrop { stop: stop_tx }),
        reconnect: Arc::new(reconnect_tx),
    };
    tokio::spawn(run_session(
        config,
        outbound,
        events_tx,
        stop_rx,
        reconnect_rx,
    ));
    (handle, events_rx)
}

/// How one stream ended, deciding what the loop does next.
enum StreamEnd {
    /// The stream was ACCEPTED and later ended; reset the backoff.
    AfterAccepted,
    /// The attempt failed before ACCEPTED (connect error, rejection, timeout).
    BeforeAccepted,
    /// Shutdown requested or the owner is gone.
    Stop,
}

async fn run_session(
    config: SessionConfig,
    outbound: Arc<OutboundSlot>,
    events: mpsc::Sender<SessionEvent>,
    mut stop: watch::Receiver<bool>,
    mut reconnect: watch::Receiver<u64>,
) {
    let mut attempt: u32 = 0;
    let mut generation: u64 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        generation += 1;
        let end = tokio::select! {
            end = one_stream(&config, generation, &outbound, &events) => end,
            _ = stop.changed() => StreamEnd::Stop,
            _ = restart_requested(&mut reconnect, generation) => {
                tracing::warn!(endpoint = %config.endpoint, "restarting the stream at the owner's request");
                StreamEnd::AfterAccepted
            }
        };
        outbound.set(None);
        match end {
            StreamEnd::Stop => break,
            StreamEnd::AfterAccepted => attempt = 0,
            StreamEnd::BeforeAccepted => attempt = attempt.saturating_add(1),
        }
        if events.is_closed() {
            break;
        }
        let delay = reconnect_delay(
            config.reconnect_base,
            config.reconnect_max,
            attempt.saturating_sub(1),
            fastrand::f64(),
        );
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting to ThingsBoard"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    outbound.set(None);
    tracing::info!(endpoint = %config.endpoint, "session to ThingsBoard stopped");
}

/// Resolves once the owner asks to restart stream `generation`; requests for other
/// generations (older streams) are ignored.
async fn restart_requested(reconnect: &mut watch::Receiver<u64>, generation: u64) {
    loop {
        if *reconnect.borrow_and_update() == generation {
            return;
        }
        if reconnect.changed().await.is_err() {
            // Every handle is gone; the stop signal ends the session.
            std::future::pending::<()>().await;
        }
    }
}

/// The HTTP/2 ping interval the channel uses: at least [`MIN_KEEPALIVE`], none when disabled.
pub fn effective_keepalive(config: &SessionConfig) -> Option<Duration> {
    config.keepalive.map(|k| k.max(MIN_KEEPALIVE))
}

fn build_endpoint(config: &SessionConfig) -> Result<Endpoint, String> {
    let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| format!("invalid endpoint {:?}: {e}", config.endpoint))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(keepalive) = effective_keepalive(config) {
        endpoint = endpoint
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
    }
    if config.endpoint.starts_with("https://") {
        let ca_pem = match &config.tls_ca_pem {
            Some(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?,
            None => read_system_ca_bundle()?,
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("invalid TLS settings: {e}"))?;
    }
    Ok(endpoint)
}

fn read_system_ca_bundle() -> Result<Vec<u8>, String> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            return Ok(pem);
        }
    }
    Err(format!(
        "https endpoint without a CA file and no system CA bundle found (tried SSL_CERT_FILE, {})",
        SYSTEM_CA_BUNDLES.join(", ")
    ))
}

/// Runs one connection attempt and, if ACCEPTED, the stream until it ends.
async fn one_stream(
    config: &SessionConfig,
    generation: u64,
    outbound: &OutboundSlot,
    events: &mpsc::Sender<SessionEvent>,
) -> StreamEnd {
    let endpoint = match build_endpoint(config) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(endpoint = %config.endpoint, "{e}");
            return StreamEnd::BeforeAccepted;
        }
    };
    let channel: Channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(endpoint = %config.endpoint, error = %error_chain(&e), "cannot connect to ThingsBoard");
            return StreamEnd::BeforeAccepted;
        }
    };
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let connect = ConnectRequestMsg {
        integration_routing_key: config.routing_key.clone(),
        integration_secret: config.secret.expose().to_owned(),
        service_id: config.service_id.clone(),
    };
    if req_tx.send(OutboundRequest::Connect(connect)).is_err() {
        return StreamEnd::BeforeAccepted;
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        tracing::warn!(endpoint = %config.endpoint, error = %error_chain(&e), "gRPC channel not ready");
        return StreamEnd::BeforeAccepted;
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(HANDLE_MSGS_PATH);
    let request = tonic::Request::new(UnboundedReceiverStream::new(req_rx));
    let opened = tokio::time::timeout(
        CONNECT_RESPONSE_TIMEOUT,
        grpc.streaming(request, path, RequestCodec),
    )
    .await;
    let mut inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            tracing::warn!(endpoint = %config.endpoint, code = ?status.code(), message = %status.message(), "ThingsBoard refused the stream");
            return StreamEnd::BeforeAccepted;
        }
        Err(_) => {
            tracing::warn!(endpoint = %config.endpoint, "no response headers from ThingsBoard in time");
            return StreamEnd::BeforeAccepted;
        }
    };

    // Handshake: the first ConnectResponseMsg decides.
    let configuration = loop {
        let next = tokio::time::timeout(CONNECT_RESPONSE_TIMEOUT, inbound.next()).await;
        let msg = match next {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(status))) => {
                tracing::warn!(endpoint = %config.endpoint, code = ?status.code(), message = %status.message(), "stream failed before CONNECT was answered");
                return StreamEnd::BeforeAccepted;
            }
            Ok(None) => {
                tracing::warn!(endpoint = %config.endpoint, "stream ended before CONNECT was answered");
                return StreamEnd::BeforeAccepted;
            }
            Err(_) => {
                tracing::warn!(endpoint = %config.endpoint, "CONNECT not answered in time");
                return StreamEnd::BeforeAccepted;
            }
        };
        let Some(response) = msg.connect_response_msg else {
            tracing::warn!("ignoring a message received before the CONNECT response");
            continue;
        };
        let code = ConnectResponseCode::try_from(response.response_code)
            .unwrap_or(ConnectResponseCode::ServerUnavailable);
        if code == ConnectResponseCode::Accepted {
            break response.configuration.unwrap_or_default();
        }
        tracing::error!(
            routing_key = %config.routing_key,
            code = code.as_str_name(),
            raw_code = response.response_code,
            error_msg = %response.error_msg,
            "ThingsBoard rejected the integration credentials; retrying"
        );
        let rejected = SessionEvent::Rejected {
            code,
            error_msg: response.error_msg,
        };
        if events.send(rejected).await.is_err() {
            return StreamEnd::Stop;
        }
        return StreamEnd::BeforeAccepted;
    };

    tracing::info!(
        endpoint = %config.endpoint,
        routing_key = %config.routing_key,
        integration = %configuration.name,
        "connected to ThingsBoard"
    );
    outbound.set(Some((generation, req_tx)));
    if events
        .send(SessionEvent::Connected(configuration))
        .await
        .is_err()
    {
        return StreamEnd::Stop;
    }

    let reason = loop {
        let msg = match inbound.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(status)) => {
                break format!("stream error {:?}: {}", status.code(), status.message());
            }
            None => break "stream ended by the server".to_owned(),
        };
        for event in response_events(msg) {
            if events.send(event).await.is_err() {
                return StreamEnd::Stop;
            }
        }
    };
    outbound.set(None);
    tracing::warn!(endpoint = %config.endpoint, %reason, "disconnected from ThingsBoard");
    if events
        .send(SessionEvent::Disconnected { reason })
        .await
        .is_err()
    {
        return StreamEnd::Stop;
    }
    StreamEnd::AfterAccepted
}

/// The events one post-handshake `ResponseMsg` carries (normally exactly one; the message is
/// not a `oneof`, so every present field is reported).
pub fn response_events(msg: ResponseMsg) -> Vec<SessionEvent> {
    let mut out = Vec::with_capacity(1);
    if msg.connect_response_msg.is_some() {
        // A second CONNECT answer on a live stream has no meaning; the server never sends it.
        tracing::debug!("ignoring a ConnectResponseMsg on an accepted stream");
    }
    if let Some(ack) = msg.uplink_response_msg {
        out.push(SessionEvent::UplinkAck {
            success: ack.success,
            error_msg: ack.error_msg,
        });
    }
    if let Some(downlink) = msg.downlink_msg {
        match downlink.device_data {
            Some(data) => out.push(SessionEvent::Downlink(normalize_downlink(data))),
            None => tracing::warn!("ignoring a DownlinkMsg without deviceData"),
        }
    }
    if let Some(update) = msg.integration_update_msg {
        out.push(SessionEvent::IntegrationUpdate(
            update.configuration.unwrap_or_default(),
        ));
    }
    if let Some(update) = msg.converter_update_msg {
        out.push(SessionEvent::ConverterUpdate(
            update.configuration.unwrap_or_default(),
        ));
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_envelope_is_hand_written() {
        let mut out = Vec::new();
        encode_uplink_request(&[0x12, 0x00], &mut out);
        assert_eq!(out, vec![0x08, 0x01, 0x1A, 0x02, 0x12, 0x00]);
    }

    #[test]
    fn long_uplink_length_is_a_varint() {
        let payload = vec![0u8; 300];
        let mut out = Vec::new();
        encode_uplink_request(&payload, &mut out);
        assert_eq!(&out[..5], &[0x08, 0x01, 0x1A, 0xAC, 0x02]);
        assert_eq!(out.len(), 5 + 300);
    }

    #[test]
    fn reconnect_delay_grows_and_caps() {
        let base = Duration::from_secs(3);
        let max = Duration::from_secs(20);
        assert_eq!(reconnect_delay(base, max, 0, 0.5), Duration::from_secs(3));
        assert_eq!(reconnect_delay(base, max, 1, 0.5), Duration::from_secs(6));
        assert_eq!(reconnect_delay(base, max, 2, 0.5), Duration::from_secs(12));
        assert_eq!(reconnect_delay(base, max, 3, 0.5), Duration::from_secs(20));
        assert_eq!(reconnect_delay(base, max, 40, 0.5), Duration::from_secs(20));
        assert_eq!(
            reconnect_delay(base, max, 0, 0.0),
            Duration::from_millis(2400)
        );
        assert_eq!(
            reconnect_delay(base, max, 0, 1.0),
            Duration::from_millis(3600)
        );
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let config = SessionConfig::new("http://127.0.0.1:9090", "key-1", "very-secret-42");
        assert_eq!(config.secret.expose(), "very-secret-42");
        for text in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!text.contains("very-secret-42"), "{text}");
            assert!(text.contains("key-1"), "{text}");
        }
    }

    #[test]
    fn keepalive_none_sends_no_pings_and_some_is_at_least_the_minimum() {
        let mut config = SessionConfig::new("http://127.0.0.1:9090", "k", "s");
        assert_eq!(effective_keepalive(&config), Some(MIN_KEEPALIVE));
        config.keepalive = None;
        assert_eq!(effective_keepalive(&config), None);
        config.keepalive = Some(Duration::from_secs(30));
        assert_eq!(effective_keepalive(&config), Some(MIN_KEEPALIVE));
        config.keepalive = Some(Duration::from_secs(900));
        assert_eq!(effective_keepalive(&config), Some(Duration::from_secs(900)));
    }

    #[test]
    fn deprecated_tb_msg_bytes_fill_tb_msg_proto() {
        let tb = TbMsgProto {
            r#type: "ATTRIBUTES_UPDATED".into(),
            data: "{\"firmware\":\"1.2\"}".into(),
            ..Default::default()
        };
        #[allow(deprecated)]
        let data = DeviceDownlinkDataProto {
            device_name: "SN-002".into(),
            device_type: "default".into(),
            tb_msg: tb.encode_to_vec(),
            tb_msg_proto: None,
        };
        let out = normalize_downlink(data);
        assert_eq!(out.tb_msg_proto, Some(tb));
    }
}
