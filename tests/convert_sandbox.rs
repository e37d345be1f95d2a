//! Proves the sandbox: a runaway loop is interrupted, an allocation bomb and runaway recursion
//! are contained, errors are per frame and the next frame converts normally; TBEL is refused
//! clearly at configuration time; scripts see no host objects.

use std::time::Duration;

use tcp_integration::convert::{
    ConvertError, ConverterConfig, ConverterRuntime, ScriptLimits, UplinkRecord,
};

/// Loops forever when the frame is "loop", allocates without bound on "bomb", recurses without
/// end on "deep", throws on "throw"; otherwise returns a device named after the frame.
const HOSTILE: &str = r#"
var s = String.fromCharCode.apply(String, payload);
if (s === 'loop') { while (true) {} }
if (s === 'bomb') { var a = []; while (true) { a.push(new Array(100000).join('x') + a.length); } }
if (s === 'deep') { var f = function (n) { return f(n + 1) + 1; }; f(0); }
if (s === 'throw') { throw new Error('bad frame ' + payload.length); }
if (s === 'fill') { globalThis.hog = []; for (var i = 0; i < 20000; i++) globalThis.hog.push({i: i}); }
return {deviceName: s};
"#;

fn hostile_runtime() -> ConverterRuntime {
    let limits = ScriptLimits {
        call_timeout: Duration::from_millis(50),
        memory_limit_bytes: 16 * 1024 * 1024,
        stack_limit_bytes: 256 * 1024,
    };
    let mut rt = ConverterRuntime::new(limits).unwrap();
    rt.set_uplink(&ConverterConfig::js(Some(HOSTILE.into()), None))
        .unwrap();
    rt
}

fn name_of(rt: &mut ConverterRuntime, frame: &[u8]) -> String {
    let mut out: Vec<UplinkRecord> = Vec::new();
    rt.decode_uplink(frame, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    out[0].name.clone()
}

fn err_of(rt: &mut ConverterRuntime, frame: &[u8]) -> ConvertError {
    let mut out: Vec<UplinkRecord> = Vec::new();
    let e = rt.decode_uplink(frame, &mut out).unwrap_err();
    assert!(out.is_empty());
    e
}

#[test]
fn infinite_loop_is_interrupted_and_the_next_call_is_fine() {
    let mut rt = hostile_runtime();
    assert_eq!(name_of(&mut rt, b"ok1"), "ok1");
    let e = err_of(&mut rt, b"loop");
    assert_eq!(e.kind(), "timeout");
    assert_eq!(
        e.to_string(),
        "the converter script was stopped after 50 ms (its time limit)"
    );
    assert_eq!(name_of(&mut rt, b"ok2"), "ok2");
    assert_eq!(err_of(&mut rt, b"loop").kind(), "timeout");
    assert_eq!(name_of(&mut rt, b"ok3"), "ok3");
}

#[test]
fn allocation_bomb_is_contained() {
    let mut rt = hostile_runtime();
    let e = err_of(&mut rt, b"bomb");
    assert_eq!(e.kind(), "out_of_memory", "{e}");
    assert_eq!(
        e.to_string(),
        "the converter script ran out of memory (limit 16777216 bytes)"
    );
    assert_eq!(name_of(&mut rt, b"after"), "after");
}

#[test]
fn runaway_recursion_is_contained() {
    let mut rt = hostile_runtime();
    let e = err_of(&mut rt, b"deep");
    assert_eq!(e.kind(), "stack_overflow", "{e}");
    assert_eq!(name_of(&mut rt, b"after"), "after");
}

#[test]
fn a_throwing_script_fails_that_frame_only() {
    let mut rt = hostile_runtime();
    let e = err_of(&mut rt, b"throw");
    assert_eq!(e.kind(), "script_error");
    let text = e.to_string();
    assert!(
        text.starts_with("the converter script failed: Error: bad frame 5\n"),
        "{text}"
    );
    assert!(
        text.contains("decoder:"),
        "stack names the decoder script: {text}"
    );
    assert_eq!(name_of(&mut rt, b"fine"), "fine");
    assert_eq!(rt.nr_rebuilds(), 0);
}

#[test]
fn garbage_filled_globals_do_not_outlive_a_limit_hit() {
    let mut rt = hostile_runtime();
    // Fills the heap through a global, then a bomb hits the limit: the rebuilt runtime starts
    // from a clean heap, so ordinary frames still convert.
    assert_eq!(name_of(&mut rt, b"fill"), "fill");
    assert_eq!(err_of(&mut rt, b"bomb").kind(), "out_of_memory");
    assert!(rt.nr_rebuilds() >= 1);
    for _ in 0..3 {
        assert_eq!(name_of(&mut rt, b"again"), "again");
    }
}

#[test]
fn scripts_reach_no_host_objects() {
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    rt.set_uplink(&ConverterConfig::js(
        Some(
            "return {deviceName: [typeof require, typeof process, typeof std, typeof os, \
             typeof setTimeout, typeof fetch, typeof XMLHttpRequest, typeof import_meta].join(',')};"
                .into(),
        ),
        None,
    ))
    .unwrap();
    let mut out = Vec::new();
    rt.decode_uplink(b"x", &mut out).unwrap();
    assert_eq!(
        out[0].name,
        "undefined,undefined,undefined,undefined,undefined,undefined,undefined,undefined"
    );
}

#[test]
fn compile_errors_and_compile_time_loops_are_configuration_errors() {
    let mut rt = hostile_runtime();
    let e = rt
        .set_uplink(&ConverterConfig::js(Some("return {;".into()), None))
        .unwrap_err();
    assert_eq!(e.kind(), "compile_error");
    assert!(
        e.to_string()
            .starts_with("the converter script does not compile: SyntaxError"),
        "{e}"
    );
    // The previous decoder stays in place.
    assert_eq!(name_of(&mut rt, b"still"), "still");
}

#[test]
fn tbel_is_rejected_clearly_at_configuration_time() {
    let config =
        ConverterConfig::from_json(include_str!("../examples/converters/tbel-uplink.json"))
            .unwrap();
    let mut rt = ConverterRuntime::new(ScriptLimits::default()).unwrap();
    let e = rt.set_uplink(&config).unwrap_err();
    assert_eq!(e.kind(), "tbel_unsupported");
    assert_eq!(
        e.to_string(),
        "converter 'TBEL Uplink' uses scriptLang \"TBEL\": TBEL converters are not supported yet; \
         rewrite it as a JavaScript converter (scriptLang \"JS\", the `decoder`/`encoder` \
         function body), which is supported"
    );
    let e = rt.set_downlink(Some(&config)).unwrap_err();
    assert_eq!(e.kind(), "tbel_unsupported");
    assert!(!rt.has_downlink());
}
