//! The integration definition edge-sim serves: the JSON file format (`--integration FILE`,
//! `PUT /integration`), its conversion to ThingsBoard's `IntegrationConfigurationProto`, and the
//! update messages a change of definition causes.
//!
//! Invariants:
//! * Ids are deterministic: the integration id comes from the routing key the emulator started
//!   with (it stays the same entity across `PUT /integration`), a converter id from its role
//!   (uplink/downlink) and name, so a renamed converter is a different converter.
//! * `configuration` objects are sent as JSON text, exactly as ThingsBoard stores them; keys the
//!   emulator does not know are passed through untouched.

use serde::{Deserialize, Serialize};

use crate::proto::integration::{ConverterConfigurationProto, IntegrationConfigurationProto};

/// Errors of loading or validating a definition; the operator fixes the file.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read integration definition {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid integration definition JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid integration definition: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// One integration as ThingsBoard holds it, with its converters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationDefinition {
    pub name: String,
    /// Integration type name, `TCP` for us.
    #[serde(rename = "type")]
    pub integration_type: String,
    pub routing_key: String,
    pub secret: String,
    /// The integration configuration object (`clientConfiguration`, `metadata`, …).
    pub configuration: serde_json::Value,
    pub uplink_converter: ConverterDefinition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink_converter: Option<ConverterDefinition>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Sent as `additionalInfo` JSON text when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_info: Option<serde_json::Value>,
}

/// A converter: its name and configuration object (`scriptLang`, `decoder`, `encoder`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverterDefinition {
    pub name: String,
    pub configuration: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_info: Option<serde_json::Value>,
}

fn enabled_default() -> bool {
    true
}

/// Which converter slot a converter fills; part of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConverterRole {
    Uplink,
    Downlink,
}

/// What replacing one definition by another must push to a connected integration (§2.3).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DefinitionChanges {
    /// `IntegrationUpdateMsg` with the full new configuration.
    pub integration_update: Option<IntegrationConfigurationProto>,
    /// One `ConverterUpdateMsg` per converter (same name) whose configuration changed.
    pub converter_updates: Vec<ConverterConfigurationProto>,
}

/// The fixed tenant every emulated entity belongs to.
pub const TENANT_ID: (i64, i64) = (
    0x1e_d6_51_3c_5e_7a_11_ee_u64 as i64,
    0x8000_0000_0000_0001_u64 as i64,
);

impl IntegrationDefinition {
    /// Parses and validates a definition from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, DefinitionError> {
        let def: IntegrationDefinition = serde_json::from_str(text)?;
        def.validate()?;
        Ok(def)
    }

    /// Reads, parses and validates a definition file.
    pub fn load(path: &std::path::Path) -> Result<Self, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Checks the keys edge-sim relies on.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let non_empty = |key: &'static str, v: &str| {
            if v.trim().is_empty() {
                Err(DefinitionError::Invalid {
                    key,
                    problem: "must not be empty".into(),
                })
            } else {
                Ok(())
            }
        };
        non_empty("name", &self.name)?;
        non_empty("type", &self.integration_type)?;
        non_empty("routingKey", &self.routing_key)?;
        non_empty("secret", &self.secret)?;
        non_empty("uplinkConverter.name", &self.uplink_converter.name)?;
        let object = |key: &'static str, v: &serde_json::Value| {
            if v.is_object() {
                Ok(())
            } else {
                Err(DefinitionError::Invalid {
                    key,
                    problem: format!("must be a JSON object, got {v}"),
                })
            }
        };
        object("configuration", &self.configuration)?;
        object(
            "uplinkConverter.configuration",
            &self.uplink_converter.configuration,
        )?;
        if let Some(down) = &self.downlink_converter {
            non_empty("downlinkConverter.name", &down.name)?;
            object("downlinkConverter.configuration", &down.configuration)?;
        }
        Ok(())
    }

    /// The configuration message ThingsBoard sends in ACCEPTED and IntegrationUpdateMsg.
    /// A missing downlink converter is an empty (default) message, as the server sends it.
    pub fn to_proto(&self, integration_id: (i64, i64)) -> IntegrationConfigurationProto {
        IntegrationConfigurationProto {
            tenant_id_msb: TENANT_ID.0,
            tenant_id_lsb: TENANT_ID.1,
            uplink_converter: Some(self.uplink_converter.to_proto(ConverterRole::Uplink)),
            downlink_converter: Some(
                self.downlink_converter
                    .as_ref()
                    .map(|c| c.to_proto(ConverterRole::Downlink))
                    .unwrap_or_default(),
            ),
            name: self.name.clone(),
            routing_key: self.routing_key.clone(),
            r#type: self.integration_type.clone(),
            configuration: self.configuration.to_string(),
            additional_info: json_text(&self.additional_info),
            enabled: self.enabled,
            integration_id_msb: integration_id.0,
            integration_id_lsb: integration_id.1,
            ..Default::default()
        }
    }

    /// The update messages that replacing `self` by `new` pushes to a connected integration.
    /// Converter renames count as a new assignment (integration update), content changes of a
    /// converter that kept its name as a `ConverterUpdateMsg`.
    pub fn changes_to(
        &self,
        new: &IntegrationDefinition,
        integration_id: (i64, i64),
    ) -> DefinitionChanges {
        let converter_renamed = self.uplink_converter.name != new.uplink_converter.name
            || self.downlink_converter.as_ref().map(|c| &c.name)
                != new.downlink_converter.as_ref().map(|c| &c.name);
        let integration_changed = self.name != new.name
            || self.integration_type != new.integration_type
            || self.configuration != new.configuration
            || self.enabled != new.enabled
            || self.additional_info != new.additional_info
            || converter_renamed;
        let mut converter_updates = Vec::new();
        if self.uplink_converter.name == new.uplink_converter.name
            && self.uplink_converter != new.uplink_converter
        {
            converter_updates.push(new.uplink_converter.to_proto(ConverterRole::Uplink));
        }
        if let (Some(old), Some(new_down)) = (&self.downlink_converter, &new.downlink_converter)
            && old.name == new_down.name
            && old != new_down
        {
            converter_updates.push(new_down.to_proto(ConverterRole::Downlink));
        }
        DefinitionChanges {
            integration_update: integration_changed.then(|| new.to_proto(integration_id)),
            converter_updates,
        }
    }
}

impl ConverterDefinition {
    pub fn to_proto(&self, role: ConverterRole) -> ConverterConfigurationProto {
        let (msb, lsb) = converter_id(role, &self.name);
        ConverterConfigurationProto {
            tenant_id_msb: TENANT_ID.0,
            tenant_id_lsb: TENANT_ID.1,
            converter_id_msb: msb,
            converter_id_lsb: lsb,
            name: self.name.clone(),
            configuration: self.configuration.to_string(),
            additional_info: json_text(&self.additional_info),
            ..Default::default()
        }
    }
}

fn json_text(value: &Option<serde_json::Value>) -> String {
    value.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

/// The integration id edge-sim uses for the integration first served under `routing_key`.
pub fn integration_id(routing_key: &str) -> (i64, i64) {
    name_uuid("integration", routing_key)
}

/// The converter id for a converter of `role` named `name`.
pub fn converter_id(role: ConverterRole, name: &str) -> (i64, i64) {
    let kind = match role {
        ConverterRole::Uplink => "uplink-converter",
        ConverterRole::Downlink => "downlink-converter",
    };
    name_uuid(kind, name)
}

/// The device id edge-sim reports as a downlink's originator.
pub fn device_id(name: &str) -> (i64, i64) {
    name_uuid("device", name)
}

/// A deterministic, name-based UUID (version 8, RFC 9562 variant) as two Java-style signed
/// halves: two FNV-1a 64 hashes of `kind` + NUL + `name` with different seeds.
pub fn name_uuid(kind: &str, name: &str) -> (i64, i64) {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;
    let hash = |seed: u64| {
        let mut h = seed;
        for b in kind.bytes().chain(std::iter::once(0)).chain(name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        h
    };
    let msb = (hash(0xcbf2_9ce4_8422_2325) & !0xF000) | 0x8000;
    let lsb = (hash(0x6c62_272e_07bb_0142) & !(0b11 << 62)) | (0b10 << 62);
    (msb as i64, lsb as i64)
}

/// UUID text (`8-4-4-4-12` lower-case hex) of two signed halves.
pub fn uuid_text(id: (i64, i64)) -> String {
    let v = (u128::from(id.0 as u64) << 64) | u128::from(id.1 as u64);
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A fresh random (version 4) UUID as text, for downlink message ids.
pub fn random_uuid_text() -> String {
    let msb = (fastrand::u64(..) & !0xF000) | 0x4000;
    let lsb = (fastrand::u64(..) & !(0b11 << 62)) | (0b10 << 62);
    uuid_text((msb as i64, lsb as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IntegrationDefinition {
        IntegrationDefinition::from_json_str(
            r#"{"name":"TCP","type":"TCP","routingKey":"rk","secret":"s",
                "configuration":{"clientConfiguration":{"port":10560},"metadata":{}},
                "uplinkConverter":{"name":"up","configuration":{"decoder":"return {};"}},
                "downlinkConverter":{"name":"down","configuration":{"encoder":"return {};"}}}"#,
        )
        .expect("valid sample")
    }

    #[test]
    fn enabled_defaults_to_true_and_ids_are_stable() {
        let def = sample();
        assert!(def.enabled);
        let a = def.to_proto(integration_id("rk"));
        let b = sample().to_proto(integration_id("rk"));
        assert_eq!(a, b);
        let up = a.uplink_converter.expect("uplink");
        let down = a.downlink_converter.expect("downlink");
        assert_ne!(
            (up.converter_id_msb, up.converter_id_lsb),
            (down.converter_id_msb, down.converter_id_lsb)
        );
        assert_eq!(up.configuration, r#"{"decoder":"return {};"}"#);
    }

    #[test]
    fn missing_downlink_is_an_empty_message() {
        let mut def = sample();
        def.downlink_converter = None;
        let proto = def.to_proto((1, 2));
        assert_eq!(proto.downlink_converter, Some(Default::default()));
    }

    #[test]
    fn converter_content_change_is_a_converter_update_only() {
        let old = sample();
        let mut new = old.clone();
        new.uplink_converter.configuration = serde_json::json!({"decoder": "return 1;"});
        let changes = old.changes_to(&new, (1, 2));
        assert!(changes.integration_update.is_none());
        assert_eq!(changes.converter_updates.len(), 1);
        assert_eq!(changes.converter_updates[0].name, "up");
    }

    #[test]
    fn converter_rename_is_an_integration_update() {
        let old = sample();
        let mut new = old.clone();
        new.downlink_converter.as_mut().expect("down").name = "down2".into();
        let changes = old.changes_to(&new, (1, 2));
        assert!(changes.integration_update.is_some());
        assert!(changes.converter_updates.is_empty());
    }

    #[test]
    fn empty_secret_is_rejected_by_key() {
        let err = IntegrationDefinition::from_json_str(
            r#"{"name":"n","type":"TCP","routingKey":"rk","secret":"",
                "configuration":{},"uplinkConverter":{"name":"u","configuration":{}}}"#,
        )
        .expect_err("empty secret");
        assert!(err.to_string().contains("`secret`"), "{err}");
    }

    #[test]
    fn uuid_text_layout() {
        assert_eq!(
            uuid_text((0x0123_4567_89ab_cdef, -1)),
            "01234567-89ab-cdef-ffff-ffffffffffff"
        );
        let (msb, lsb) = name_uuid("device", "SN-002");
        assert_eq!((msb >> 12) & 0xF, 8);
        assert_eq!((lsb as u64) >> 62, 0b10);
    }
}
