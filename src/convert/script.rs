//! The QuickJS side of a converter: one runtime + context per shard thread, the compiled
//! `Decoder` / `Encoder` functions, the sandbox limits and the natives scripts may call.
//!
//! Invariants:
//! * Scripts see plain ECMAScript plus `decodeToString`, `decodeToJson`, `atob`, `btoa` — no
//!   files, network, environment, timers or module loader exist in this context.
//! * Every call runs under a deadline (interrupt handler), a memory limit and a stack limit; an
//!   interrupted or out-of-memory call rebuilds the runtime from the stored script bodies, so the
//!   next call starts from a clean heap (a script may have filled globals before it was stopped).
//! * Persistent handles are dropped before the context and runtime (field order below), because a
//!   handle that outlives its runtime aborts the process in `JS_FreeRuntime`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rquickjs::context::EvalOptions;
use rquickjs::{Context, Ctx, Exception, Function, Object, Persistent, Runtime, Value, qjs};

use super::uplink::ResultKeys;
use super::{ConvertError, ScriptLimits};

/// Source of the helpers the docs' converters define themselves; a script's own function
/// declarations shadow these because they are hoisted inside the `Decoder` body. The work is
/// done by QuickJS's C builtins (`String.fromCharCode`, `JSON.parse`), chunked so very long
/// payloads stay under the engine's argument-count limit.
const PRELUDE_JS: &str = r#"
(function (g) {
  function decodeToString(p) {
    if (typeof p === 'string') return p;
    var n = p.length;
    if (n <= 8192) return String.fromCharCode.apply(String, p);
    var s = '';
    for (var i = 0; i < n; i += 8192) {
      s += String.fromCharCode.apply(String, Array.prototype.slice.call(p, i, Math.min(n, i + 8192)));
    }
    return s;
  }
  function decodeToJson(p) { return JSON.parse(decodeToString(p)); }
  Object.defineProperty(g, 'decodeToString', { value: decodeToString, writable: true, configurable: true });
  Object.defineProperty(g, 'decodeToJson', { value: decodeToJson, writable: true, configurable: true });
})(globalThis);
"#;

/// The signature line the decoder body is wrapped in (contract §4.1.2).
const DECODER_HEAD: &str = "(function Decoder(payload, metadata) {\n";
/// The signature line the encoder body is wrapped in (contract §4.2).
const ENCODER_HEAD: &str = "(function Encoder(msg, metadata, msgType, integrationMetadata) {\n";
const BODY_TAIL: &str = "\n})";

/// Which compiled function a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptRole {
    Decoder,
    Encoder,
}

impl ScriptRole {
    fn label(self) -> &'static str {
        match self {
            ScriptRole::Decoder => "decoder",
            ScriptRole::Encoder => "encoder",
        }
    }
}

/// Deadline shared with the interrupt handler (same thread; `Rc<Cell>` is enough).
#[derive(Default)]
struct Deadline {
    at: Cell<Option<Instant>>,
    fired: Cell<bool>,
}

/// One QuickJS runtime with the compiled converter functions.
pub(crate) struct ScriptEngine {
    // Field order is drop order: handles first, then the context, then the runtime.
    decoder: Option<Persistent<Function<'static>>>,
    encoder: Option<Persistent<Function<'static>>>,
    context: Context,
    runtime: Runtime,
    /// Atoms of the result keys in `runtime` (released in `Drop` and before a rebuild).
    result_keys: Option<ResultKeys>,
    /// The decoder's metadata held in `runtime` (released in `Drop` and before a rebuild).
    metadata: MetadataTemplate,
    /// Blocks held in `runtime`'s allocator (released in `Drop` and before a rebuild).
    arena_pins: ArenaPins,
    /// Flag-name atoms read by the installed `RegExp.prototype.flags` getter (released in
    /// `Drop` and before a rebuild).
    flag_atoms: Vec<qjs::JSAtom>,
    deadline: Rc<Deadline>,
    limits: ScriptLimits,
    decoder_body: Option<String>,
    encoder_body: Option<String>,
    /// Reused buffer of JS int values for the payload array.
    payload_values: Vec<qjs::JSValue>,
    /// Reused buffer of UTF-16 code units.
    utf16: Vec<u16>,
    /// How many times the runtime was rebuilt after a limit was hit.
    nr_rebuilds: u64,
}

impl ScriptEngine {
    pub(crate) fn new(limits: ScriptLimits) -> Result<ScriptEngine, ConvertError> {
        let deadline = Rc::new(Deadline::default());
        let (runtime, context) = build_runtime(&limits, &deadline)?;
        let result_keys = Some(new_result_keys(&context)?);
        let arena_pins = context.with(|ctx| ArenaPins::new(&ctx));
        let flag_atoms = install_regexp_flags(&context)?;
        Ok(ScriptEngine {
            decoder: None,
            encoder: None,
            context,
            runtime,
            result_keys,
            metadata: MetadataTemplate::default(),
            arena_pins,
            flag_atoms,
            deadline,
            limits,
            decoder_body: None,
            encoder_body: None,
            payload_values: Vec::new(),
            utf16: Vec::new(),
            nr_rebuilds: 0,
        })
    }

    pub(crate) fn limits(&self) -> &ScriptLimits {
        &self.limits
    }

    pub(crate) fn nr_rebuilds(&self) -> u64 {
        self.nr_rebuilds
    }

    /// Compiles (or with `None` removes) the decoder or encoder body.
    pub(crate) fn set_script(
        &mut self,
        role: ScriptRole,
        body: Option<&str>,
    ) -> Result<(), ConvertError> {
        let compiled = match body {
            Some(body) => Some(self.compile(role, body)?),
            None => None,
        };
        match role {
            ScriptRole::Decoder => {
                self.decoder = compiled;
                self.decoder_body = body.map(str::to_string);
            }
            ScriptRole::Encoder => {
                self.encoder = compiled;
                self.encoder_body = body.map(str::to_string);
            }
        }
        Ok(())
    }

    pub(crate) fn has_script(&self, role: ScriptRole) -> bool {
        match role {
            ScriptRole::Decoder => self.decoder.is_some(),
            ScriptRole::Encoder => self.encoder.is_some(),
        }
    }

    fn compile(
        &mut self,
        role: ScriptRole,
        body: &str,
    ) -> Result<Persistent<Function<'static>>, ConvertError> {
        let head = match role {
            ScriptRole::Decoder => DECODER_HEAD,
            ScriptRole::Encoder => ENCODER_HEAD,
        };
        let mut source = String::with_capacity(head.len() + body.len() + BODY_TAIL.len());
        source.push_str(head);
        source.push_str(body);
        source.push_str(BODY_TAIL);
        self.arm_deadline();
        let result = self.context.with(|ctx| {
            let mut options = EvalOptions::default();
            options.strict = false;
            options.filename = Some(role.label().to_string());
            match ctx.eval_with_options::<Value, _>(source, options) {
                Ok(value) => match value.into_function() {
                    Some(f) => Ok(Persistent::save(&ctx, f)),
                    None => Err(ConvertError::Compile {
                        message: format!(
                            "the {} script does not compile to a function body",
                            role.label()
                        ),
                    }),
                },
                Err(err) => Err(match js_error(&ctx, err) {
                    ConvertError::Script { message } => ConvertError::Compile { message },
                    other => other,
                }),
            }
        });
        let fired = self.deadline.fired.get();
        self.disarm_deadline();
        let result = result.map_err(|e| self.with_limits(e, fired));
        if matches!(
            result,
            Err(ConvertError::Timeout { .. } | ConvertError::OutOfMemory { .. })
        ) {
            self.rebuild()?;
        }
        result
    }

    /// Calls the decoder with `frame` as ThingsBoard's payload array and `metadata` as a fresh
    /// object, and hands the returned value to `read` while still inside the context and under
    /// the deadline (so getters in the result are limited too). `read` reports JS failures
    /// through [`js_error`].
    pub(crate) fn call_decoder<R>(
        &mut self,
        frame: &[u8],
        metadata: &[(String, String)],
        read: impl for<'js> FnOnce(&Ctx<'js>, &ResultKeys, Value<'js>) -> Result<R, ConvertError>,
    ) -> Result<R, ConvertError> {
        let Some(decoder) = self.decoder.clone() else {
            return Err(ConvertError::NoConverter {
                what: "uplink decoder",
            });
        };
        let Some(keys) = self.result_keys.as_ref() else {
            return Err(ConvertError::Engine {
                message: "the JavaScript runtime lost its result keys".to_string(),
            });
        };
        if self.metadata.source != metadata {
            let template = &mut self.metadata;
            self.context
                .with(|ctx| template.rebuild(&ctx, metadata))
                .map_err(|e| ConvertError::Engine {
                    message: format!("cannot hold the converter metadata: {e}"),
                })?;
        }
        fill_payload_values(frame, &mut self.utf16, &mut self.payload_values);
        self.arm_deadline();
        let values = &self.payload_values;
        let template = &self.metadata;
        let result = self.context.with(|ctx| {
            let outcome = (|| {
                let f = decoder.restore(&ctx)?;
                let payload = new_int_array(&ctx, values)?;
                let meta = template.new_object(&ctx)?;
                f.call::<_, Value>((payload, meta))
            })();
            match outcome {
                Ok(value) => read(&ctx, keys, value),
                Err(err) => Err(js_error(&ctx, err)),
            }
        });
        self.finish_call(result)
    }

    /// Calls the encoder with arguments built by `args` inside the context.
    pub(crate) fn call_encoder<R>(
        &mut self,
        args: impl for<'js> FnOnce(&Ctx<'js>) -> rquickjs::Result<EncoderArgs<'js>>,
        read: impl for<'js> FnOnce(&Ctx<'js>, Value<'js>) -> Result<R, ConvertError>,
    ) -> Result<R, ConvertError> {
        let Some(encoder) = self.encoder.clone() else {
            return Err(ConvertError::NoConverter {
                what: "downlink encoder",
            });
        };
        self.arm_deadline();
        let result = self.context.with(|ctx| {
            let outcome = (|| {
                let f = encoder.restore(&ctx)?;
                let a = args(&ctx)?;
                f.call::<_, Value>(a)
            })();
            match outcome {
                Ok(value) => read(&ctx, value),
                Err(err) => Err(js_error(&ctx, err)),
            }
        });
        self.finish_call(result)
    }

    /// Names the limit that stopped a call, and rebuilds the runtime after a limit was hit.
    fn finish_call<R>(&mut self, result: Result<R, ConvertError>) -> Result<R, ConvertError> {
        let fired = self.deadline.fired.get();
        self.disarm_deadline();
        let result = result.map_err(|e| self.with_limits(e, fired));
        if matches!(
            result,
            Err(ConvertError::Timeout { .. }
                | ConvertError::OutOfMemory { .. }
                | ConvertError::StackOverflow { .. })
        ) {
            // The error for this frame stands; a failed rebuild surfaces on the next call.
            let _ = self.rebuild();
        }
        result
    }

    fn with_limits(&self, err: ConvertError, deadline_fired: bool) -> ConvertError {
        if deadline_fired {
            return ConvertError::Timeout {
                limit: self.limits.call_timeout,
            };
        }
        match err {
            ConvertError::OutOfMemory { .. } => ConvertError::OutOfMemory {
                limit_bytes: self.limits.memory_limit_bytes,
            },
            ConvertError::StackOverflow { .. } => ConvertError::StackOverflow {
                limit_bytes: self.limits.stack_limit_bytes,
            },
            other => other,
        }
    }

    fn arm_deadline(&self) {
        self.deadline.fired.set(false);
        self.deadline
            .at
            .set(Some(Instant::now() + self.limits.call_timeout));
    }

    fn disarm_deadline(&self) {
        self.deadline.at.set(None);
    }

    /// Replaces the runtime with a fresh one and recompiles the stored bodies.
    fn rebuild(&mut self) -> Result<(), ConvertError> {
        self.decoder = None;
        self.encoder = None;
        self.release_held();
        let (runtime, context) = build_runtime(&self.limits, &self.deadline)?;
        self.context = context;
        self.runtime = runtime;
        self.result_keys = Some(new_result_keys(&self.context)?);
        self.arena_pins = self.context.with(|ctx| ArenaPins::new(&ctx));
        self.flag_atoms = install_regexp_flags(&self.context)?;
        self.nr_rebuilds += 1;
        if let Some(body) = self.decoder_body.clone() {
            self.decoder = Some(self.compile(ScriptRole::Decoder, &body)?);
        }
        if let Some(body) = self.encoder_body.clone() {
            self.encoder = Some(self.compile(ScriptRole::Encoder, &body)?);
        }
        Ok(())
    }
}

impl ScriptEngine {
    /// Hands the atoms and strings held outside any handle back to the current runtime.
    fn release_held(&mut self) {
        let keys = self.result_keys.take();
        let metadata = &mut self.metadata;
        let pins = &mut self.arena_pins;
        let flag_atoms = &mut self.flag_atoms;
        self.context.with(|ctx| {
            if let Some(keys) = keys {
                keys.release(&ctx);
            }
            metadata.release(&ctx);
            pins.release(&ctx);
            for atom in flag_atoms.drain(..) {
                // SAFETY: made by `install_regexp_flags` in this runtime, released once.
                unsafe { qjs::JS_FreeAtom(ctx.as_raw().as_ptr(), atom) };
            }
        });
    }
}

impl Drop for ScriptEngine {
    fn drop(&mut self) {
        // Before the fields drop: the runtime must not outlive references into it.
        self.release_held();
    }
}

fn new_result_keys(context: &Context) -> Result<ResultKeys, ConvertError> {
    context
        .with(|ctx| ResultKeys::new(&ctx))
        .map_err(|e| ConvertError::Engine {
            message: format!("cannot create the result keys: {e}"),
        })
}

/// The flags in the order `get RegExp.prototype.flags` reads them (ECMA-262 §22.2.6.4), with
/// the letter each contributes.
const REGEXP_FLAGS: [(&str, u8); 8] = [
    ("hasIndices", b'd'),
    ("global", b'g'),
    ("ignoreCase", b'i'),
    ("multiline", b'm'),
    ("dotAll", b's'),
    ("unicode", b'u'),
    ("unicodeSets", b'v'),
    ("sticky", b'y'),
];

/// Replaces the engine's `get RegExp.prototype.flags` with one that reads the same eight
/// properties in the same order, by atoms made once. Every `str.replace(/re/g, ...)` reads
/// `flags`; the engine's getter turns six of the names into atoms (hash + table probe) on every
/// read, which was a tenth of the docs' TEXT decoder. The engine's getter is kept for a
/// non-object receiver, so that error stays the engine's own. Returns the atoms, which the
/// caller holds until the runtime drops.
fn install_regexp_flags(context: &Context) -> Result<Vec<qjs::JSAtom>, ConvertError> {
    let engine = |e: rquickjs::Error| ConvertError::Engine {
        message: format!("cannot set up RegExp flags: {e}"),
    };
    context.with(|ctx| {
        let raw = ctx.as_raw().as_ptr();
        let mut atoms = Vec::with_capacity(REGEXP_FLAGS.len());
        for (name, _) in REGEXP_FLAGS {
            // SAFETY: the context is live; the name is a valid byte range.
            let atom =
                unsafe { qjs::JS_NewAtomLen(raw, name.as_ptr().cast(), name.len() as qjs::size_t) };
            if atom == qjs::JS_ATOM_NULL {
                for a in atoms {
                    // SAFETY: made just above in this context.
                    unsafe { qjs::JS_FreeAtom(raw, a) };
                }
                return Err(engine(rquickjs::Error::Allocation));
            }
            atoms.push(atom);
        }
        let installed = (|| -> rquickjs::Result<()> {
            let original: Value =
                ctx.eval("Object.getOwnPropertyDescriptor(RegExp.prototype, 'flags').get")?;
            let mut data: Vec<qjs::JSValue> = Vec::with_capacity(1 + atoms.len());
            data.push(original.as_raw());
            // Atoms are below 2^31 for string names, so they travel as int values.
            data.extend(
                atoms
                    .iter()
                    .map(|&a| qjs::JS_MKVAL(qjs::JS_TAG_INT, a as i32)),
            );
            // SAFETY: the context is live; JS_NewCFunctionData duplicates the data values
            // (the original getter) and keeps them with the function.
            let getter = unsafe {
                let f = qjs::JS_NewCFunctionData(
                    raw,
                    Some(regexp_flags_getter),
                    0,
                    0,
                    data.len() as std::ffi::c_int,
                    data.as_mut_ptr(),
                );
                if qjs::JS_IsException(f) {
                    return Err(rquickjs::Error::Exception);
                }
                Value::from_raw(ctx.clone(), f)
            };
            let install: Function = ctx.eval(
                "(function (get) {\n\
                   Object.defineProperty(get, 'name', { value: 'get flags' });\n\
                   Object.defineProperty(RegExp.prototype, 'flags', { get: get });\n\
                 })",
            )?;
            install.call::<_, ()>((getter,))
        })();
        match installed {
            Ok(()) => Ok(atoms),
            Err(e) => {
                let _ = ctx.catch();
                for a in atoms {
                    // SAFETY: made above in this context.
                    unsafe { qjs::JS_FreeAtom(raw, a) };
                }
                Err(engine(e))
            }
        }
    })
}

/// `get RegExp.prototype.flags` by held atoms. `data[0]` is the engine's own getter,
/// `data[1..=8]` the atoms of [`REGEXP_FLAGS`] as int values.
unsafe extern "C" fn regexp_flags_getter(
    ctx: *mut qjs::JSContext,
    this_val: qjs::JSValue,
    _argc: std::ffi::c_int,
    _argv: *mut qjs::JSValue,
    _magic: std::ffi::c_int,
    data: *mut qjs::JSValue,
) -> qjs::JSValue {
    // SAFETY (whole body): QuickJS calls this with a live context, a borrowed `this` and the
    // 9 data values given at creation; every value we get back is freed once.
    unsafe {
        if !qjs::JS_IsObject(this_val) {
            return qjs::JS_Call(ctx, *data, this_val, 0, std::ptr::null_mut());
        }
        let mut letters = [0u8; REGEXP_FLAGS.len()];
        let mut n = 0;
        for (i, &(_, letter)) in REGEXP_FLAGS.iter().enumerate() {
            let atom = qjs::JS_VALUE_GET_INT(*data.add(1 + i)) as qjs::JSAtom;
            let value = qjs::JS_GetProperty(ctx, this_val, atom);
            if qjs::JS_IsException(value) {
                return value;
            }
            let set = qjs::JS_ToBool(ctx, value);
            qjs::JS_FreeValue(ctx, value);
            if set < 0 {
                return qjs::JS_EXCEPTION;
            }
            if set != 0 {
                letters[n] = letter;
                n += 1;
            }
        }
        qjs::JS_NewStringLen(ctx, letters.as_ptr().cast(), n as qjs::size_t)
    }
}

/// Block sizes (header included) of QuickJS's small-object arenas, one per size class
/// (`arena_block_sizes` in the vendored quickjs.c; 8 bytes of each block are its header).
const ARENA_BLOCK_BYTES: [usize; 31] = [
    16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 144, 160, 176, 192, 208, 224,
    240, 256, 288, 320, 352, 384, 416, 448, 480, 512,
];
const ARENA_BLOCK_HEADER_BYTES: usize = 8;

/// One block of each small size class of the runtime's allocator, held for the runtime's life.
/// QuickJS hands an arena (4 KiB) back to malloc as soon as its last block is freed, so a size
/// class used only by one call's temporaries would get a fresh arena — a malloc, a free-list
/// set-up and a free — on every call; a held block keeps one arena of each class alive.
/// Were the size classes to change, a pin would only land in another class: never unsafe.
#[derive(Default)]
struct ArenaPins {
    blocks: Vec<std::ptr::NonNull<std::ffi::c_void>>,
}

impl ArenaPins {
    fn new(ctx: &Ctx<'_>) -> ArenaPins {
        let raw = ctx.as_raw().as_ptr();
        let blocks = ARENA_BLOCK_BYTES
            .iter()
            .filter_map(|&bytes| {
                let size = (bytes - ARENA_BLOCK_HEADER_BYTES) as qjs::size_t;
                // SAFETY: the context is live; the block is released with js_free in the same
                // runtime before it drops. A failed allocation (memory limit) only means no pin.
                std::ptr::NonNull::new(unsafe { qjs::js_malloc(raw, size) })
            })
            .collect::<Vec<_>>();
        if blocks.len() < ARENA_BLOCK_BYTES.len() {
            // js_malloc left an out-of-memory exception pending; the runtime goes on unpinned.
            let _ = ctx.catch();
        }
        ArenaPins { blocks }
    }

    fn release(&mut self, ctx: &Ctx<'_>) {
        let raw = ctx.as_raw().as_ptr();
        for block in self.blocks.drain(..) {
            // SAFETY: allocated by `new` with js_malloc in this runtime, freed once.
            unsafe { qjs::js_free(raw, block.as_ptr()) };
        }
    }
}

/// The decoder's `metadata` held as atoms (names) and strings (values) in one runtime, so each
/// call's fresh object is filled without hashing names or copying texts. `source` is what the
/// entries were made from; the entries are released before the runtime drops.
#[derive(Default)]
struct MetadataTemplate {
    source: Vec<(String, String)>,
    entries: Vec<(qjs::JSAtom, qjs::JSValue)>,
}

impl MetadataTemplate {
    /// Replaces the held entries with `metadata`'s.
    fn rebuild(&mut self, ctx: &Ctx<'_>, metadata: &[(String, String)]) -> rquickjs::Result<()> {
        self.release(ctx);
        let raw = ctx.as_raw().as_ptr();
        for (k, v) in metadata {
            // SAFETY: the context is live; name and text are valid UTF-8 byte ranges. Each
            // atom / string is a counted reference that `release` hands back.
            let atom =
                unsafe { qjs::JS_NewAtomLen(raw, k.as_ptr().cast(), k.len() as qjs::size_t) };
            if atom == qjs::JS_ATOM_NULL {
                self.release(ctx);
                return Err(rquickjs::Error::Allocation);
            }
            let text =
                unsafe { qjs::JS_NewStringLen(raw, v.as_ptr().cast(), v.len() as qjs::size_t) };
            if unsafe { qjs::JS_IsException(text) } {
                unsafe { qjs::JS_FreeAtom(raw, atom) };
                self.release(ctx);
                return Err(rquickjs::Error::Allocation);
            }
            self.entries.push((atom, text));
        }
        self.source = metadata.to_vec();
        Ok(())
    }

    /// Hands every held atom and string back to the runtime; `source` is forgotten too, so
    /// the next call rebuilds.
    fn release(&mut self, ctx: &Ctx<'_>) {
        let raw = ctx.as_raw().as_ptr();
        for (atom, text) in self.entries.drain(..) {
            // SAFETY: both were made by `rebuild` in this runtime and are released once.
            unsafe {
                qjs::JS_FreeAtom(raw, atom);
                qjs::JS_FreeValue(raw, text);
            }
        }
        self.source.clear();
    }

    /// A fresh metadata object per call (a script that writes to `metadata` cannot leak into
    /// the next frame), filled as `obj[name] = text` in order.
    fn new_object<'js>(&self, ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
        let obj = Object::new(ctx.clone())?;
        let raw = ctx.as_raw().as_ptr();
        for &(atom, text) in &self.entries {
            // SAFETY: the object, atom and string live in this context; JS_SetProperty takes
            // the duplicated string reference whether it succeeds or not.
            let rc = unsafe {
                qjs::JS_SetProperty(raw, obj.as_raw(), atom, qjs::JS_DupValue(raw, text))
            };
            if rc < 0 {
                return Err(rquickjs::Error::Exception);
            }
        }
        Ok(obj)
    }
}

fn build_runtime(
    limits: &ScriptLimits,
    deadline: &Rc<Deadline>,
) -> Result<(Runtime, Context), ConvertError> {
    let engine = |e: rquickjs::Error| ConvertError::Engine {
        message: format!("cannot create the JavaScript runtime: {e}"),
    };
    let runtime = Runtime::new_with_alloc(rquickjs::allocator::RustAllocator).map_err(engine)?;
    runtime.set_memory_limit(limits.memory_limit_bytes);
    runtime.set_max_stack_size(limits.stack_limit_bytes);
    let watch = Rc::clone(deadline);
    runtime.set_interrupt_handler(Some(Box::new(move || match watch.at.get() {
        Some(at) if Instant::now() >= at => {
            watch.fired.set(true);
            true
        }
        _ => false,
    })));
    let context = Context::full(&runtime).map_err(engine)?;
    context.with(|ctx| -> Result<(), ConvertError> {
        let mut options = EvalOptions::default();
        options.strict = false;
        ctx.eval_with_options::<(), _>(PRELUDE_JS, options)
            .map_err(engine)?;
        let globals = ctx.globals();
        globals
            .set("atob", Function::new(ctx.clone(), js_atob).map_err(engine)?)
            .map_err(engine)?;
        globals
            .set("btoa", Function::new(ctx.clone(), js_btoa).map_err(engine)?)
            .map_err(engine)?;
        Ok(())
    })?;
    Ok((runtime, context))
}

/// Browser `atob`: forgiving base64 (ASCII whitespace ignored, padding optional) to a string of
/// Latin-1 characters, one per byte.
fn js_atob<'js>(ctx: Ctx<'js>, input: rquickjs::Coerced<String>) -> rquickjs::Result<String> {
    let cleaned: Vec<u8> = input
        .0
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r'))
        .collect();
    match FORGIVING_BASE64.decode(&cleaned) {
        Ok(bytes) => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        Err(_) => Err(Exception::throw_dom(
            &ctx,
            "InvalidCharacterError",
            "The string to be decoded is not correctly encoded.",
        )),
    }
}

/// Browser `btoa`: a string whose characters are all <= U+00FF, as Latin-1 bytes, to base64.
fn js_btoa<'js>(ctx: Ctx<'js>, input: rquickjs::Coerced<String>) -> rquickjs::Result<String> {
    let mut bytes = Vec::with_capacity(input.0.len());
    for c in input.0.chars() {
        let code = u32::from(c);
        if code > 0xFF {
            return Err(Exception::throw_dom(
                &ctx,
                "InvalidCharacterError",
                "The string to be encoded contains characters outside of the Latin1 range.",
            ));
        }
        bytes.push(code as u8);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Base64 as browsers decode it: padding optional, non-zero trailing bits accepted.
pub(crate) const FORGIVING_BASE64: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );

/// ThingsBoard's payload: UTF-16 code units of the frame when it is valid UTF-8, raw byte values
/// otherwise (contract §4.1.2), as JS int values ready for one `JS_NewArrayFrom`.
fn fill_payload_values(frame: &[u8], utf16: &mut Vec<u16>, out: &mut Vec<qjs::JSValue>) {
    out.clear();
    out.reserve(frame.len());
    let int = |v: i32| qjs::JS_MKVAL(qjs::JS_TAG_INT, v);
    if frame.is_ascii() {
        out.extend(frame.iter().map(|&b| int(i32::from(b))));
        return;
    }
    match std::str::from_utf8(frame) {
        Ok(text) => {
            utf16.clear();
            utf16.extend(text.encode_utf16());
            out.extend(utf16.iter().map(|&u| int(i32::from(u))));
        }
        Err(_) => out.extend(frame.iter().map(|&b| int(i32::from(b)))),
    }
}

/// Builds a JS Array holding `values` in one native call (a fast array; `payload[i]`,
/// `payload.length` and `String.fromCharCode.apply(String, payload)` work as on any array).
fn new_int_array<'js>(ctx: &Ctx<'js>, values: &[qjs::JSValue]) -> rquickjs::Result<Value<'js>> {
    let count = i32::try_from(values.len()).map_err(|_| rquickjs::Error::Allocation)?;
    // SAFETY: the context pointer is live for 'js; the values are immediate ints (no reference
    // counts), which JS_NewArrayFrom copies into the new array.
    unsafe {
        let raw = qjs::JS_NewArrayFrom(ctx.as_raw().as_ptr(), count, values.as_ptr());
        if qjs::JS_IsException(raw) {
            return Err(rquickjs::Error::Exception);
        }
        Ok(Value::from_raw(ctx.clone(), raw))
    }
}

/// A fresh metadata object per call, so a script that writes to `metadata` cannot leak into
/// the next frame.
pub(crate) fn metadata_object<'js>(
    ctx: &Ctx<'js>,
    metadata: &[(String, String)],
) -> rquickjs::Result<Object<'js>> {
    let obj = Object::new(ctx.clone())?;
    for (k, v) in metadata {
        obj.set(k.as_str(), v.as_str())?;
    }
    Ok(obj)
}

/// Arguments of `Encoder(msg, metadata, msgType, integrationMetadata)`.
pub(crate) type EncoderArgs<'js> = (Value<'js>, Value<'js>, Value<'js>, Value<'js>);

/// Turns a failed JS operation into the error for this frame, taking the pending exception.
/// Limits are filled in by the engine when the call ends (it knows them and the deadline).
pub(crate) fn js_error(ctx: &Ctx<'_>, err: rquickjs::Error) -> ConvertError {
    match err {
        rquickjs::Error::Exception => {
            let exception = ctx.catch();
            let message = exception_text(&exception);
            if exception.is_null() || message.starts_with("InternalError: out of memory") {
                ConvertError::OutOfMemory { limit_bytes: 0 }
            } else if message.contains("Maximum call stack size exceeded")
                || message.starts_with("InternalError: stack overflow")
            {
                ConvertError::StackOverflow { limit_bytes: 0 }
            } else {
                ConvertError::Script { message }
            }
        }
        rquickjs::Error::Allocation => ConvertError::OutOfMemory { limit_bytes: 0 },
        other => ConvertError::Script {
            message: other.to_string(),
        },
    }
}

/// `Name: message` plus the script frames of the stack, or the thrown value as text.
pub(crate) fn exception_text(value: &Value<'_>) -> String {
    if let Some(obj) = value.as_object() {
        let name: Option<String> = obj.get("name").ok();
        let message: Option<String> = obj.get("message").ok();
        if name.is_some() || message.is_some() {
            let mut text = match (name, message) {
                (Some(n), Some(m)) if !m.is_empty() => format!("{n}: {m}"),
                (Some(n), _) => n,
                (None, Some(m)) => m,
                (None, None) => String::new(),
            };
            if let Ok(stack) = obj.get::<_, String>("stack") {
                let stack = stack.trim_end();
                if !stack.is_empty() {
                    text.push('\n');
                    text.push_str(stack);
                }
            }
            return text;
        }
    }
    if let Some(s) = value.as_string().and_then(|s| s.to_string().ok()) {
        return s;
    }
    match value.ctx().json_stringify(value.clone()) {
        Ok(Some(s)) => s.to_string().unwrap_or_else(|_| "thrown value".to_string()),
        _ => format!("thrown {}", value.type_name()),
    }
}

/// Default per-call time limit: ThingsBoard's own JS sandbox allows a similar order.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` as a decoder and returns the string it returns.
    fn run(body: &str) -> String {
        let mut engine = ScriptEngine::new(ScriptLimits::default()).expect("engine");
        engine
            .set_script(ScriptRole::Decoder, Some(body))
            .expect("compiles");
        engine
            .call_decoder(b"x", &[], |_ctx, _keys, v| {
                Ok(v.as_string()
                    .and_then(|s| s.to_string().ok())
                    .unwrap_or_default())
            })
            .expect("runs")
    }

    #[test]
    fn regexp_flags_getter_reads_like_the_engines() {
        let got = run(r#"
            var out = [/a/.flags, /a/gimsuy.flags, /a/dg.flags, /a/v.flags];
            var d = Object.getOwnPropertyDescriptor(RegExp.prototype, 'flags');
            out.push(d.get.name, d.get.length, d.enumerable, d.configurable, typeof d.set);
            var seen = [];
            var fake = {};
            ['hasIndices', 'global', 'ignoreCase', 'multiline', 'dotAll', 'unicode',
             'unicodeSets', 'sticky'].forEach(function (k) {
                Object.defineProperty(fake, k, { get: function () {
                    seen.push(k);
                    return k === 'global' ? 1 : k === 'sticky' ? 'yes' : 0;
                } });
            });
            out.push(d.get.call(fake), seen.join(' '));
            try { d.get.call(1); out.push('no error'); } catch (e) { out.push(e.name); }
            var re = /b/g;
            Object.defineProperty(re, 'flags', { value: '' });
            out.push('abab'.replace(re, ''), 'abab'.replace(/b/g, ''));
            var thrower = {};
            Object.defineProperty(thrower, 'hasIndices', { get: function () { throw new Error('boom'); } });
            try { d.get.call(thrower); } catch (e) { out.push(e.message); }
            return out.join('|');
        "#);
        assert_eq!(
            got,
            "|gimsuy|dg|v|get flags|0|false|true|undefined|gy|\
             hasIndices global ignoreCase multiline dotAll unicode unicodeSets sticky|\
             TypeError|aab|aa|boom"
        );
    }

    #[test]
    fn metadata_is_a_fresh_object_per_call_with_the_given_entries() {
        let mut engine = ScriptEngine::new(ScriptLimits::default()).expect("engine");
        engine
            .set_script(
                ScriptRole::Decoder,
                Some("var s = JSON.stringify(metadata); metadata.extra = 1; return s;"),
            )
            .expect("compiles");
        let meta = vec![
            ("integrationName".to_string(), "TCP ü".to_string()),
            ("k".to_string(), "v".to_string()),
        ];
        let read = |_: &Ctx<'_>, _: &ResultKeys, v: Value<'_>| {
            Ok(v.as_string()
                .and_then(|s| s.to_string().ok())
                .unwrap_or_default())
        };
        for _ in 0..2 {
            let got = engine.call_decoder(b"x", &meta, read).expect("runs");
            assert_eq!(got, r#"{"integrationName":"TCP ü","k":"v"}"#);
        }
        let got = engine.call_decoder(b"x", &meta[1..], read).expect("runs");
        assert_eq!(got, r#"{"k":"v"}"#);
    }
}
