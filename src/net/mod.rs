//! Network plumbing of the device side: the per-shard SO_REUSEPORT listener and the socket
//! options applied to accepted device connections.

pub mod listener;
