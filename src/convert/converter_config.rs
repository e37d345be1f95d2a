//! The converter configuration JSON model: `ConverterConfigurationProto.configuration` as ThingsBoard
//! sends it (contract §4.1.1), or a converter as ThingsBoard exports it (an object whose
//! `configuration` holds the same keys).
//!
//! Invariants: unknown ThingsBoard keys are ignored; `scriptLang` absent means JS; TBEL parses
//! fine here (so a TBEL converter is a clear runtime answer, never a parse failure) and is
//! rejected when a runtime is asked to compile it.

use serde::Deserialize;

use super::ConvertError;

/// The script language a converter is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptLang {
    /// JavaScript (ES5-style, ThingsBoard's "JS"): what this runtime executes.
    Js,
    /// ThingsBoard Expression Language: recognised, not executed (yet).
    Tbel,
}

impl ScriptLang {
    /// The name ThingsBoard uses in `scriptLang`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptLang::Js => "JS",
            ScriptLang::Tbel => "TBEL",
        }
    }
}

/// One uplink or downlink converter's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConverterConfig {
    /// Which engine the scripts are for.
    pub script_lang: ScriptLang,
    /// JS body of `function Decoder(payload, metadata)`.
    pub decoder: Option<String>,
    /// JS body of `function Encoder(msg, metadata, msgType, integrationMetadata)`.
    pub encoder: Option<String>,
    /// TBEL decoder body (kept only to report it; never run).
    pub tbel_decoder: Option<String>,
    /// TBEL encoder body (kept only to report it; never run).
    pub tbel_encoder: Option<String>,
    /// Keys whose values are forwarded only when they changed for that entity.
    pub update_only_keys: Vec<String>,
    /// Converter name when the JSON was a ThingsBoard export (used in messages only).
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct ConfigurationJson {
    #[serde(rename = "scriptLang", default)]
    script_lang: Option<String>,
    #[serde(default)]
    decoder: Option<String>,
    #[serde(default)]
    encoder: Option<String>,
    #[serde(rename = "tbelDecoder", default)]
    tbel_decoder: Option<String>,
    #[serde(rename = "tbelEncoder", default)]
    tbel_encoder: Option<String>,
    #[serde(rename = "updateOnlyKeys", default)]
    update_only_keys: Option<Vec<String>>,
}

impl ConverterConfig {
    /// Parses the configuration JSON text. Accepts the bare configuration object (what
    /// `ConverterConfigurationProto.configuration` holds) and a ThingsBoard converter export
    /// (`{"name":..,"type":"UPLINK","configuration":{..}}`). The empty string ("no converter")
    /// is the caller's case and is rejected here.
    pub fn from_json(text: &str) -> Result<ConverterConfig, ConvertError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConvertError::Config {
                message: format!("converter configuration is not valid JSON: {e}"),
            })?;
        Self::from_value(&value)
    }

    /// As [`ConverterConfig::from_json`], from an already parsed JSON value.
    pub fn from_value(value: &serde_json::Value) -> Result<ConverterConfig, ConvertError> {
        let serde_json::Value::Object(top) = value else {
            return Err(ConvertError::Config {
                message: "converter configuration must be a JSON object".to_string(),
            });
        };
        let (body, name) = match top.get("configuration") {
            Some(inner @ serde_json::Value::Object(_)) => (
                inner,
                top.get("name").and_then(|n| n.as_str()).map(str::to_string),
            ),
            _ => (value, None),
        };
        let parsed: ConfigurationJson =
            serde_json::from_value(body.clone()).map_err(|e| ConvertError::Config {
                message: format!("converter configuration: {e}"),
            })?;
        let script_lang = match parsed.script_lang.as_deref() {
            None | Some("JS") | Some("js") => ScriptLang::Js,
            Some("TBEL") | Some("tbel") => ScriptLang::Tbel,
            Some(other) => {
                return Err(ConvertError::Config {
                    message: format!(
                        "converter configuration: scriptLang {other:?} is unknown (allowed: \"JS\", \"TBEL\")"
                    ),
                });
            }
        };
        Ok(ConverterConfig {
            script_lang,
            decoder: parsed.decoder,
            encoder: parsed.encoder,
            tbel_decoder: parsed.tbel_decoder,
            tbel_encoder: parsed.tbel_encoder,
            update_only_keys: parsed.update_only_keys.unwrap_or_default(),
            name,
        })
    }

    /// A JS converter from script bodies alone (the CLI's `--decoder`/`--encoder` files).
    pub fn js(decoder: Option<String>, encoder: Option<String>) -> ConverterConfig {
        ConverterConfig {
            script_lang: ScriptLang::Js,
            decoder,
            encoder,
            tbel_decoder: None,
            tbel_encoder: None,
            update_only_keys: Vec::new(),
            name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_configuration_defaults_to_js() {
        let c = ConverterConfig::from_json(r#"{"decoder":"return {};","updateOnlyKeys":["a"]}"#)
            .unwrap();
        assert_eq!(c.script_lang, ScriptLang::Js);
        assert_eq!(c.decoder.as_deref(), Some("return {};"));
        assert_eq!(c.update_only_keys, vec!["a".to_string()]);
        assert_eq!(c.name, None);
    }

    #[test]
    fn export_wrapper_is_unwrapped() {
        let c = ConverterConfig::from_json(
            r#"{"name":"Up","type":"UPLINK","configuration":{"scriptLang":"TBEL","tbelDecoder":"x"}}"#,
        )
        .unwrap();
        assert_eq!(c.script_lang, ScriptLang::Tbel);
        assert_eq!(c.tbel_decoder.as_deref(), Some("x"));
        assert_eq!(c.name.as_deref(), Some("Up"));
    }

    #[test]
    fn unknown_script_lang_is_named() {
        let e = ConverterConfig::from_json(r#"{"scriptLang":"PY"}"#).unwrap_err();
        assert!(e.to_string().contains("\"PY\""), "{e}");
        assert_eq!(e.kind(), "bad_config");
    }
}
