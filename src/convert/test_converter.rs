//! `tcp-integration test-converter`: ThingsBoard's "Test decoder function" on the command line.
//! Runs an uplink decoder on one payload (or a downlink encoder on one message) in the same
//! runtime the integration uses, and prints the typed result, or with `--raw` exactly what the
//! script returned.
//!
//! Output contract: uplink → the typed records as pretty JSON (one object, or an array when the
//! script returned an array), types visible (`{"DOUBLE_V":25.7}`); downlink → an array of
//! `{"contentBytes": <n>, "hex": .., "text": ..}` (text only when the bytes are UTF-8);
//! `--raw` → `JSON.stringify(result, null, 2)` of the script's return value, before any
//! normalisation, which is how ThingsBoard's test dialog shows it. Errors go to stderr (via the
//! caller) with a non-zero exit.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{ConverterConfig, ConverterRuntime, ScriptLimits};
use crate::proto::msgqueue::{TbMsgMetaDataProto, TbMsgProto};

/// Arguments of `test-converter`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TestConverterArgs {
    /// Converter JSON as ThingsBoard exports it (or its bare `configuration` object).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["decoder", "encoder"])]
    pub converter: Option<PathBuf>,
    /// JS file holding the body of `function Decoder(payload, metadata)`.
    #[arg(long, value_name = "FILE.js")]
    pub decoder: Option<PathBuf>,
    /// JS file holding the body of `function Encoder(msg, metadata, msgType, integrationMetadata)`.
    #[arg(long, value_name = "FILE.js")]
    pub encoder: Option<PathBuf>,
    /// Uplink payload as text (sent as its UTF-8 bytes).
    #[arg(long, value_name = "TEXT", group = "payload_source")]
    pub payload: Option<String>,
    /// Uplink payload as hex (spaces allowed), e.g. `53 4E 2D 30`.
    #[arg(long, value_name = "HEX", group = "payload_source")]
    pub payload_hex: Option<String>,
    /// Uplink payload: the raw bytes of this file.
    #[arg(long, value_name = "FILE", group = "payload_source")]
    pub payload_file: Option<PathBuf>,
    /// Integration metadata entry `key=value` (repeatable); `integrationName` defaults to
    /// `test-converter`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Integration metadata as a JSON object of strings.
    #[arg(long, value_name = "FILE.json")]
    pub metadata_file: Option<PathBuf>,
    /// Downlink: the rule-engine message data (JSON text).
    #[arg(long, value_name = "JSON")]
    pub msg: Option<String>,
    /// Downlink: the rule-engine message type.
    #[arg(long, value_name = "TYPE", default_value = "ATTRIBUTES_UPDATED")]
    pub msg_type: String,
    /// Downlink: a message metadata entry `key=value` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub msg_metadata: Vec<String>,
    /// Print exactly what the script returned (JSON.stringify with 2-space indent).
    #[arg(long)]
    pub raw: bool,
    /// Per-call time limit of the script.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub timeout_ms: u64,
}

/// Runs the subcommand, writing the result to `out`.
pub fn run_test_converter(
    args: &TestConverterArgs,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let limits = ScriptLimits {
        call_timeout: Duration::from_millis(args.timeout_ms),
        ..ScriptLimits::default()
    };
    let mut rt = ConverterRuntime::new(limits)?;
    rt.set_integration_metadata(&integration_metadata(args)?);
    let payload = payload(args)?;
    let text = match (payload, &args.msg) {
        (Some(frame), _) => {
            rt.set_uplink(&config)?;
            let mut entities = Vec::new();
            let mut raw = String::new();
            rt.decode_entities(&frame, &mut entities, Some(&mut raw))?;
            if args.raw {
                raw
            } else {
                let views: Vec<_> = entities.iter().map(super::uplink::TypedView).collect();
                if views.len() == 1 && !raw.trim_start().starts_with('[') {
                    serde_json::to_string_pretty(&views[0])?
                } else {
                    serde_json::to_string_pretty(&views)?
                }
            }
        }
        (None, Some(data)) => {
            rt.set_downlink(Some(&config))?;
            let msg = TbMsgProto {
                r#type: args.msg_type.clone(),
                data: data.clone(),
                meta_data: Some(TbMsgMetaDataProto {
                    data: parse_pairs(&args.msg_metadata, "--msg-metadata")?
                        .into_iter()
                        .collect(),
                }),
                ..Default::default()
            };
            let mut items = Vec::new();
            let mut raw = String::new();
            rt.encode_downlink_raw(&msg, &mut items, args.raw.then_some(&mut raw))?;
            if args.raw {
                raw
            } else {
                let list: Vec<_> = items
                    .iter()
                    .map(|b| {
                        let mut m = serde_json::Map::new();
                        m.insert("contentBytes".into(), b.len().into());
                        m.insert("hex".into(), hex(b).into());
                        if let Ok(t) = std::str::from_utf8(b) {
                            m.insert("text".into(), t.into());
                        }
                        serde_json::Value::Object(m)
                    })
                    .collect();
                serde_json::to_string_pretty(&list)?
            }
        }
        (None, None) => bail!(
            "nothing to convert: give an uplink payload (--payload, --payload-hex or \
             --payload-file) or a downlink message (--msg)"
        ),
    };
    writeln!(out, "{text}")?;
    Ok(())
}

fn load_config(args: &TestConverterArgs) -> anyhow::Result<ConverterConfig> {
    if let Some(path) = &args.converter {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read converter file {}", path.display()))?;
        return ConverterConfig::from_json(&text)
            .with_context(|| format!("converter file {}", path.display()));
    }
    let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
        p.as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read script file {}", p.display()))
            })
            .transpose()
    };
    let decoder = read(&args.decoder)?;
    let encoder = read(&args.encoder)?;
    if decoder.is_none() && encoder.is_none() {
        bail!("no converter: give --converter FILE, --decoder FILE.js or --encoder FILE.js");
    }
    Ok(ConverterConfig::js(decoder, encoder))
}

fn payload(args: &TestConverterArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(text) = &args.payload {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    if let Some(h) = &args.payload_hex {
        return parse_hex(h).map(Some);
    }
    if let Some(p) = &args.payload_file {
        return std::fs::read(p)
            .with_context(|| format!("cannot read payload file {}", p.display()))
            .map(Some);
    }
    Ok(None)
}

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        bail!("--payload-hex: odd number of hex digits ({})", digits.len());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).unwrap_or("??");
            u8::from_str_radix(s, 16)
                .with_context(|| format!("--payload-hex: {s:?} is not a hex byte"))
        })
        .collect()
}

fn parse_pairs(items: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag} {item:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn integration_metadata(args: &TestConverterArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    if let Some(path) = &args.metadata_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read metadata file {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("metadata file {} is not JSON", path.display()))?;
        let serde_json::Value::Object(map) = value else {
            bail!(
                "metadata file {} must hold a JSON object of strings",
                path.display()
            );
        };
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            pairs.push((k, v));
        }
    }
    pairs.extend(parse_pairs(&args.metadata, "--metadata")?);
    // integrationName first, as the integration passes it.
    let name = match pairs.iter().position(|(k, _)| k == "integrationName") {
        Some(i) => pairs.remove(i).1,
        None => "test-converter".to_string(),
    };
    pairs.insert(0, ("integrationName".to_string(), name));
    Ok(pairs)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
