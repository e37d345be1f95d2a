//! Proves `tcp-integration test-converter` end to end: `--raw` prints exactly what the script
//! returned, the default prints typed records, payload/metadata options work, and errors go to
//! stderr with a non-zero exit.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tcp-integration");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/converters");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("test-converter")
        .args(args)
        .output()
        .expect("run tcp-integration")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn example(name: &str) -> String {
    format!("{EXAMPLES}/{name}")
}

const LNS_RAW: &str = r#"{
  "deviceName": "a84041000181c61e",
  "deviceType": "room-sensor",
  "attributes": {
    "fPort": 2,
    "integration": "LNS"
  },
  "telemetry": [
    {
      "ts": 1709294400000,
      "values": {
        "battery": 95,
        "temperature": -5.25,
        "humidity": 56.5,
        "co2": 500,
        "doorOpen": true,
        "motion": false
      }
    },
    {
      "ts": 1709294400000,
      "values": {
        "rssi": -87,
        "snr": 7.5
      }
    }
  ]
}
"#;

#[test]
fn lns_decoder_raw_output_is_exactly_what_the_script_returned() {
    let out = stdout_ok(&[
        "--decoder",
        &example("lns-uplink-decoder.js"),
        "--payload-file",
        &example("lns-uplink.json"),
        "--metadata",
        "integrationName=LNS",
        "--raw",
    ]);
    assert_eq!(out, LNS_RAW);
}

#[test]
fn lns_decoder_typed_output_shows_types_and_explicit_ts() {
    let out = stdout_ok(&[
        "--decoder",
        &example("lns-uplink-decoder.js"),
        "--payload-file",
        &example("lns-uplink.json"),
        "--metadata-file",
        &example("lns-metadata.json"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "deviceName": "a84041000181c61e",
            "deviceType": "room-sensor",
            "telemetry": [
                {"ts": 1709294400000i64, "values": {
                    "battery": {"LONG_V": 95},
                    "temperature": {"DOUBLE_V": -5.25},
                    "humidity": {"DOUBLE_V": 56.5},
                    "co2": {"LONG_V": 500},
                    "doorOpen": {"BOOLEAN_V": true},
                    "motion": {"BOOLEAN_V": false}
                }},
                {"ts": 1709294400000i64, "values": {
                    "rssi": {"LONG_V": -87},
                    "snr": {"DOUBLE_V": 7.5}
                }}
            ],
            "attributes": {
                "fPort": {"LONG_V": 2},
                "integration": {"STRING_V": "LNS from file"}
            }
        })
    );
    // Keys come out in a fixed, readable order.
    assert!(out.starts_with("{\n  \"deviceName\": \"a84041000181c61e\",\n  \"deviceType\""));
}

#[test]
fn exported_text_converter_types_the_docs_frame() {
    let out = stdout_ok(&[
        "--converter",
        &example("tcp-text-uplink.json"),
        "--payload",
        "SN-002,default,humidity,69",
    ]);
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ts = v["telemetry"][0]["ts"].take();
    assert!(ts.as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        v,
        serde_json::json!({
            "deviceName": "SN-002",
            "deviceType": "default",
            "telemetry": [{"ts": null, "values": {"humidity": {"LONG_V": 69}}}],
            "attributes": {}
        })
    );
}

#[test]
fn binary_payload_as_hex() {
    let out = stdout_ok(&[
        "--decoder",
        &example("tcp-binary-decoder.js"),
        "--payload-hex",
        "53 4E 2D 30 30 32 64 65 66 61 75 6C 74 32 35 2E 37",
        "--raw",
    ]);
    assert_eq!(
        out,
        "{\n  \"deviceName\": \"SN-002\",\n  \"deviceType\": \"default\",\n  \"attributes\": {},\n  \
         \"telemetry\": {\n    \"temperature\": 25.7\n  }\n}\n"
    );
}

#[test]
fn encoder_prints_the_device_bytes() {
    let out = stdout_ok(&[
        "--converter",
        &example("tcp-downlink.json"),
        "--msg",
        r#"{"interval": 30}"#,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"contentBytes": 15, "hex": "7b22696e74657276616c223a33307d", "text": "{\"interval\":30}"}])
    );
}

#[test]
fn tbel_converter_is_refused_on_stderr_with_failure_exit() {
    let out = run(&[
        "--converter",
        &example("tbel-uplink.json"),
        "--payload",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("TBEL converters are not supported yet") && err.contains("\"JS\""),
        "{err}"
    );
}

#[test]
fn normalisation_error_goes_to_stderr() {
    let out = run(&[
        "--decoder",
        &example("tcp-json-decoder.js"),
        "--payload",
        r#"[{"deviceName":"SN-002"}]"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "tcp-integration: Either 'deviceName' or 'assetName' should be present in the converter output!\n"
    );
}
