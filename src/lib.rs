//! tcp-integration: a wire-compatible, much faster replacement for ThingsBoard's remote TCP
//! integration.
//!
//! The module tree follows the data path of a reading:
//! `framing` (bytes → frames) → `convert` (frame → typed, protobuf-encoded records) →
//! `uplink` (batches → ThingsBoard gRPC session). `config` holds the ThingsBoard and local
//! settings, `proto` the generated wire types, `edge_sim` the ThingsBoard Edge emulator.

pub mod config;
pub mod convert;
pub mod demo;
pub mod downlink;
pub mod edge_sim;
pub mod events;
pub mod framing;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod server;
pub mod shard;
pub mod uplink;

/// mimalloc for the whole process, the QuickJS runtimes included (they allocate through Rust's
/// allocator, see `convert::script`): the converter makes a few dozen short-lived allocations
/// per frame, and glibc's malloc/free were ~9 % of a saturated shard's time.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
