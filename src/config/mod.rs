//! Configuration: ThingsBoard's integration JSON (`integration`) and our local settings
//! (`local`: TOML file, environment, flags).

pub mod integration;
pub mod local;
