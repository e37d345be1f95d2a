//! Configuration: ThingsBoard's integration JSON (`integration`) and our local settings
//! (`local`: TOML file, environment, flags; `default.toml` is the commented default file).
//!
//! Both follow the same two layers: serde structs for the text as written (ThingsBoard's unknown
//! keys ignored, our own unknown TOML keys refused), then validated runtime structs with
//! `Duration`s and checked ranges whose errors name the key, the value and what is allowed.

pub mod integration;
pub mod local;

pub use integration::{ClientConfig, IntegrationConfigError, TcpIntegrationConfig};
pub use local::{RunArgs, Secret, Settings, SettingsError};
