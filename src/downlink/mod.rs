//! Downlinks: from the ThingsBoard session back to the device's socket.
//!
//! The uplink core owns the [`routing::Router`]: which shard and connection last carried an
//! uplink of each device, and the downlinks held for devices with no live connection. The
//! shard that owns the connection runs the Encoder and writes the bytes (see `shard`).

pub mod routing;

pub use crate::config::local::DownlinkSuffix;
