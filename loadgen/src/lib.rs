//! `tcp-loadgen` as a library: simulated devices, the embedded Edge sink and the accounting
//! between them, so tests (and the binary) start a sink on `127.0.0.1:0`, point devices at a
//! target and read one [`report::Report`].
//!
//! Data path: [`devices`] write [`frames`] to the integration under test → the integration
//! sends UplinkMsgs to the [`sink`] → the sink counts them in an [`accounting::Tally`] →
//! [`run`] reconciles against the devices' sent counts and builds the report.

pub mod accounting;
pub mod clock;
pub mod devices;
pub mod edge_config;
pub mod frames;
pub mod noop;
pub mod plot;
pub mod procfs;
pub mod procs;
pub mod report;
pub mod run;
pub mod sink;
