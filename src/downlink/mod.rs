//! Downlinks: from the ThingsBoard session back to the device's socket.
//!
//! The uplink core owns the [`routing::Router`]: which shard and connection last carried an
//! uplink of each device, and the downlinks held for devices with no live connection. The
//! shard that owns the connection runs the Encoder and writes the bytes (see `shard`).

pub mod routing;

/// What ThingsBoard appends to every downlink written to a device socket (contract §4.3: a
/// single LF); `none` and `crlf` are ours, for devices that want exact bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkSuffix {
    None,
    Lf,
    CrLf,
}

impl DownlinkSuffix {
    /// The bytes written after each encoded downlink.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            DownlinkSuffix::None => b"",
            DownlinkSuffix::Lf => b"\n",
            DownlinkSuffix::CrLf => b"\r\n",
        }
    }
}
