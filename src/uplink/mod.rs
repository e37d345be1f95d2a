//! Uplink: encoded records → durable spool → batches → the ThingsBoard gRPC session.

pub mod core;
pub mod session;
pub mod spool;
pub mod statistics;
