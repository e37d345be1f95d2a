//! Shards: one glommio executor per core, each owning its listener (SO_REUSEPORT on the shared
//! port), its device connections, their framers, its QuickJS converter runtime and the downlink
//! delivery to its connections. Nothing on the per-frame path is shared with other threads.
//!
//! A shard talks to the uplink core through channels created at start-up and kept for its life:
//! * records out: the shard's outbox (`outbox.rs`) collects a few milliseconds of records and
//!   hands them to a bounded channel; when both are full, connection tasks wait and stop
//!   reading their sockets, so TCP flow control pushes back on devices (never a silent drop);
//! * events out (closed connections, undeliverable downlinks): unbounded, small and rare;
//! * configuration in: a `watch` (latest wins), applied between frames;
//! * downlinks in: the shard's own bounded inbox, a separate lane from the records so uplink
//!   bursts cannot starve downlinks.

mod connection;
mod control;
mod outbox;
pub mod pipeline;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use tokio::sync::{mpsc, watch};

use crate::downlink::DownlinkSuffix;
use crate::downlink::routing::ConnRef;
use crate::framing::FramingSpec;
use crate::net::listener::ListenerOptions;
use crate::proto::integration::DeviceDownlinkDataProto;

pub use control::ShardRuntimeError;

/// One record on its way to ThingsBoard: the device (or asset) name for downlink routing, and
/// the record already encoded as an `UplinkMsg` field (`deviceData` = 2 or `assetData` = 7, tag
/// and length included), so that a batch is the plain concatenation of its records.
#[derive(Debug, Clone, PartialEq)]
pub struct ShippedRecord {
    pub name: String,
    pub tagged: Bytes,
}

/// Records converted from one read of one connection.
#[derive(Debug)]
pub struct RecordBatch {
    pub conn: ConnRef,
    /// When the shard read the bytes: the uplink core's linger clock starts here, so the time
    /// a batch spends in the shard's outbox counts against the linger.
    pub read_at: std::time::Instant,
    pub records: Vec<ShippedRecord>,
}

/// Rare events a shard reports to the uplink core.
#[derive(Debug)]
pub enum ShardEvent {
    /// The connection closed: forget routes through it.
    ConnectionClosed(ConnRef),
    /// A downlink whose connection was gone by the time the shard got it: hold it again.
    Undelivered {
        device: String,
        downlink: Box<DeviceDownlinkDataProto>,
    },
}

/// A command for one shard's downlink lane.
#[derive(Debug)]
pub struct DownlinkCommand {
    pub conn_id: u64,
    pub downlink: Box<DeviceDownlinkDataProto>,
}

/// What a shard serves; replaced as a whole when ThingsBoard sends a new configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingConfig {
    pub listener: ListenerOptions,
    pub framing: FramingSpec,
    /// `integrationName` first, then the integration's configured metadata.
    pub metadata: Vec<(String, String)>,
    /// The uplink converter's configuration JSON text.
    pub uplink_converter: String,
    /// The downlink converter's configuration JSON text; empty = none.
    pub downlink_converter: String,
}

impl ServingConfig {
    /// Whether going from `self` to `next` needs a new listener (ThingsBoard restarts its TCP
    /// server, closing the connections, when the client configuration changes).
    pub fn needs_rebind(&self, next: &ServingConfig) -> bool {
        self.listener != next.listener || self.framing != next.framing
    }
}

/// The configuration every shard follows: `None` = not serving devices (not configured yet, or
/// the integration is disabled).
pub type ShardConfig = Option<Arc<ServingConfig>>;

/// Per-shard knobs from the local settings.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub nr_shards: usize,
    /// Device connections per shard.
    pub max_connections: usize,
    /// Close a connection after this long without data; `None` = never.
    pub idle_timeout: Option<Duration>,
    pub downlink_suffix: DownlinkSuffix,
    pub script_limits: crate::convert::ScriptLimits,
    pub ring_depth: usize,
    /// Bytes asked of the kernel per socket read.
    pub read_bytes: usize,
    /// How long converted records may wait in the shard's outbox before they are handed to
    /// the uplink core (part of the uplink linger; zero hands over every read at once).
    pub outbox_delay: Duration,
    /// Records in the outbox that make a hand-over due at once.
    pub outbox_flush_records: usize,
}

/// The channel ends a shard thread owns.
pub struct ShardChannels {
    pub records: mpsc::Sender<RecordBatch>,
    pub events: mpsc::UnboundedSender<ShardEvent>,
    pub config: watch::Receiver<ShardConfig>,
    pub downlinks: mpsc::Receiver<DownlinkCommand>,
    pub shutdown: watch::Receiver<bool>,
}

/// Starts shard `index` on its own thread, pinned to `core` when given (a failed pin warns and
/// runs unpinned). Returns when the thread is running.
pub fn spawn(
    index: usize,
    core: Option<usize>,
    settings: ShardSettings,
    channels: ShardChannels,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let name = format!("tcp-integration-shard-{index}");
    let builder = |placement: Placement| {
        LocalExecutorBuilder::new(placement)
            .name(&name)
            .ring_depth(settings.ring_depth)
    };
    let placement = match core {
        Some(core) => Placement::Fixed(core),
        None => Placement::Unbound,
    };
    // The executor is built on the new thread; a failed pin shows up as a start error there,
    // so probe the placement here first and fall back to unbound with a warning.
    let placement = match (&placement, core) {
        (Placement::Fixed(_), Some(core)) if !core_exists(core) => {
            tracing::warn!(
                shard = index,
                core,
                "cannot pin shard to core {core}: no such online core; running unpinned"
            );
            Placement::Unbound
        }
        _ => placement,
    };
    builder(placement)
        .spawn(move || control::run_shard(index, Rc::new(settings), channels))
        .map_err(|e| std::io::Error::other(format!("cannot start shard {index}: {e}")))
}

fn core_exists(core: usize) -> bool {
    std::thread::available_parallelism()
        .map(|n| core < n.get())
        .unwrap_or(false)
}

/// Encodes one converted record as the `UplinkMsg` field it travels in.
pub fn tag_record(kind: crate::convert::EntityKind, encoded: &[u8]) -> Bytes {
    use crate::convert::EntityKind;
    // UplinkMsg.deviceData = 2, UplinkMsg.assetData = 7; wire type 2 (length-delimited).
    let tag: u8 = match kind {
        EntityKind::Device => (2 << 3) | 2,
        EntityKind::Asset => (7 << 3) | 2,
    };
    let mut out = Vec::with_capacity(encoded.len() + 6);
    out.push(tag);
    prost::encoding::encode_varint(encoded.len() as u64, &mut out);
    out.extend_from_slice(encoded);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::EntityKind;
    use crate::proto::integration::{AssetUplinkDataProto, DeviceUplinkDataProto, UplinkMsg};
    use prost::Message;

    #[test]
    fn tagged_records_concatenate_into_an_uplink_msg() {
        let device = DeviceUplinkDataProto {
            device_name: "SN-002".into(),
            device_type: "default".into(),
            ..Default::default()
        };
        let asset = AssetUplinkDataProto {
            asset_name: "Building A".into(),
            asset_type: "building".into(),
            ..Default::default()
        };
        let mut batch = Vec::new();
        batch.extend_from_slice(&tag_record(EntityKind::Device, &device.encode_to_vec()));
        batch.extend_from_slice(&tag_record(EntityKind::Asset, &asset.encode_to_vec()));
        batch.extend_from_slice(&tag_record(EntityKind::Device, &device.encode_to_vec()));
        let msg = UplinkMsg::decode(batch.as_slice()).unwrap();
        assert_eq!(msg.device_data, vec![device.clone(), device]);
        assert_eq!(msg.asset_data, vec![asset]);
        assert_eq!(msg.uplink_msg_id, 0);
    }
}
