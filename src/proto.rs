//! Generated ThingsBoard wire types (from `proto/`, built by `build.rs`).
//!
//! Package names are ThingsBoard's: `integration` (the remote-integration RPC), `transport`
//! (key/value telemetry and attributes) and `msgqueue` (rule-engine messages). The generated code
//! refers to its siblings as `super::transport`, so the three live side by side here.

#![allow(clippy::all, missing_docs, non_camel_case_types)]

pub mod transport {
    tonic::include_proto!("transport");
}

pub mod msgqueue {
    tonic::include_proto!("msgqueue");
}

pub mod integration {
    tonic::include_proto!("integration");
}
