//! Converters: a frame in, protobuf-encoded device/asset records out (uplink); a rule-engine
//! message in, device bytes out (downlink). One [`ConverterRuntime`] per shard thread owns a
//! QuickJS runtime with the compiled `Decoder`/`Encoder` (`script`), walks results natively
//! (`uplink`, `downlink`), types values by ThingsBoard's rules (`typing`) and encodes records
//! (`record`). `converter_config` is the converter JSON model; `test_converter` the CLI.
//!
//! Invariants: a failing frame (script error, limit hit, bad result) yields one error for that
//! frame and leaves the runtime usable; TBEL is refused when a converter is set, never by a
//! crash; nothing here is `Send` — the runtime never leaves its thread.

mod converter_config;
mod downlink;
mod record;
mod script;
mod test_converter;
pub mod typing;
pub mod uplink;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use converter_config::{ConverterConfig, ScriptLang};
pub use record::encode_entity;
pub use test_converter::{TestConverterArgs, run_test_converter};
pub use uplink::UplinkEntity;

use script::{ScriptEngine, ScriptRole};

/// Sandbox limits of one runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Wall-clock limit of one decoder/encoder call (and of compiling a script).
    pub call_timeout: Duration,
    /// Heap limit of the runtime (all scripts of the shard together).
    pub memory_limit_bytes: usize,
    /// Native stack the interpreter may use (deep recursion stops here).
    pub stack_limit_bytes: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            call_timeout: script::DEFAULT_CALL_TIMEOUT,
            memory_limit_bytes: 64 * 1024 * 1024,
            stack_limit_bytes: 1024 * 1024,
        }
    }
}

/// Whether a record is for a device or an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKind {
    Device,
    Asset,
}

/// One converted record, ready for an `UplinkMsg`.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkRecord {
    pub kind: EntityKind,
    /// Device or asset name (downlinks are routed by it).
    pub name: String,
    /// `DeviceUplinkDataProto` or `AssetUplinkDataProto` bytes, by `kind`.
    pub encoded: Bytes,
    /// The same message as the `UplinkMsg` field it travels in (key and length in front);
    /// `encoded` is a slice of it. Empty when the record was built without it.
    pub tagged: Bytes,
}

/// Everything that can go wrong converting one frame or setting a converter. Per-frame errors
/// drop that frame only (the caller counts it); configuration errors keep the integration from
/// using the converter.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The converter JSON is unusable (configuration time).
    #[error("{message}")]
    Config { message: String },
    /// A TBEL converter was configured (configuration time).
    #[error(
        "converter{} uses scriptLang \"TBEL\": TBEL converters are not supported yet; \
         rewrite it as a JavaScript converter (scriptLang \"JS\", the `decoder`/`encoder` \
         function body), which is supported",
        name.as_deref().map(|n| format!(" '{n}'")).unwrap_or_default()
    )]
    TbelUnsupported { name: Option<String> },
    /// The script does not compile (configuration time).
    #[error("the converter script does not compile: {message}")]
    Compile { message: String },
    /// No decoder / encoder is set (or the converter has no script for that direction).
    #[error("no {what} is configured")]
    NoConverter { what: &'static str },
    /// The script threw.
    #[error("the converter script failed: {message}")]
    Script { message: String },
    /// The call ran past its time limit and was interrupted.
    #[error("the converter script was stopped after {} ms (its time limit)", limit.as_millis())]
    Timeout { limit: Duration },
    /// The runtime heap limit was reached.
    #[error("the converter script ran out of memory (limit {limit_bytes} bytes)")]
    OutOfMemory { limit_bytes: usize },
    /// The interpreter stack limit was reached (runaway recursion).
    #[error("the converter script overflowed its stack (limit {limit_bytes} bytes)")]
    StackOverflow { limit_bytes: usize },
    /// The script returned something that is not a valid converter result.
    #[error("{message}")]
    BadResult { message: String },
    /// QuickJS itself could not be set up.
    #[error("{message}")]
    Engine { message: String },
}

impl ConvertError {
    /// Snake-case metric label (a closed set).
    pub fn kind(&self) -> &'static str {
        match self {
            ConvertError::Config { .. } => "bad_config",
            ConvertError::TbelUnsupported { .. } => "tbel_unsupported",
            ConvertError::Compile { .. } => "compile_error",
            ConvertError::NoConverter { .. } => "no_converter",
            ConvertError::Script { .. } => "script_error",
            ConvertError::Timeout { .. } => "timeout",
            ConvertError::OutOfMemory { .. } => "out_of_memory",
            ConvertError::StackOverflow { .. } => "stack_overflow",
            ConvertError::BadResult { .. } => "bad_result",
            ConvertError::Engine { .. } => "engine_error",
        }
    }
}

/// What `updateOnlyKeys` remembers of a value: the text itself when short, else a hash of it
/// (ThingsBoard compares long values by SHA-1 for the same reason: bounded memory per key).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueFingerprint {
    Text(String),
    Hash(u64, usize),
}

impl ValueFingerprint {
    fn of(text: &str) -> ValueFingerprint {
        if text.len() <= 32 {
            ValueFingerprint::Text(text.to_string())
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            ValueFingerprint::Hash(h.finish(), text.len())
        }
    }
}

/// Default bound of the entities whose `updateOnlyKeys` values one runtime remembers.
pub const UPDATE_ONLY_MAX_ENTITIES: usize = 100_000;
/// Default time an entity's remembered values live without a new uplink from it.
pub const UPDATE_ONLY_TTL: Duration = Duration::from_secs(24 * 3600);

type EntityKey = (EntityKind, String);

/// What is remembered of one entity: its last values, telemetry and attributes apart.
struct EntityValues {
    values: [HashMap<String, ValueFingerprint>; 2],
    used_at: Instant,
    /// Key of this entity in `UpdateOnlyState::use_order`.
    stamp: u64,
}

/// Last values of the `updateOnlyKeys` per entity. Entity names come from device data, so the
/// state is bounded: at most `max_entities` (least recently used forgotten first), each for at
/// most `ttl` since its last uplink. A forgotten entity's next value is forwarded again — the
/// safe direction (a repeat, never a lost change).
struct UpdateOnlyState {
    keys: Vec<String>,
    last: HashMap<EntityKey, EntityValues>,
    use_order: BTreeMap<u64, EntityKey>,
    next_stamp: u64,
    max_entities: usize,
    ttl: Duration,
    scratch: String,
}

impl Default for UpdateOnlyState {
    fn default() -> Self {
        UpdateOnlyState {
            keys: Vec::new(),
            last: HashMap::new(),
            use_order: BTreeMap::new(),
            next_stamp: 0,
            max_entities: UPDATE_ONLY_MAX_ENTITIES,
            ttl: UPDATE_ONLY_TTL,
            scratch: String::new(),
        }
    }
}

impl UpdateOnlyState {
    /// Marks the entity used at `now`; first forgets expired entities and, when the entity is
    /// new and the state full, the least recently used ones.
    fn touch(&mut self, key: &EntityKey, now: Instant) {
        while let Some((_, oldest)) = self.use_order.first_key_value() {
            let expired = self
                .last
                .get(oldest)
                .is_none_or(|e| now.duration_since(e.used_at) >= self.ttl);
            if !expired {
                break;
            }
            self.forget_oldest();
        }
        if !self.last.contains_key(key) {
            while self.last.len() >= self.max_entities.max(1) && self.forget_oldest() {}
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        match self.last.get_mut(key) {
            Some(entry) => {
                self.use_order.remove(&entry.stamp);
                entry.used_at = now;
                entry.stamp = stamp;
            }
            None => {
                self.last.insert(
                    key.clone(),
                    EntityValues {
                        values: Default::default(),
                        used_at: now,
                        stamp,
                    },
                );
            }
        }
        self.use_order.insert(stamp, key.clone());
    }

    fn forget_oldest(&mut self) -> bool {
        match self.use_order.pop_first() {
            Some((_, key)) => {
                self.last.remove(&key);
                true
            }
            None => false,
        }
    }

    fn filter(&mut self, entity: &mut UplinkEntity, now: Instant) {
        if self.keys.is_empty() {
            return;
        }
        let key = (entity.kind, entity.name.clone());
        self.touch(&key, now);
        let keys = &self.keys;
        let scratch = &mut self.scratch;
        let Some(state) = self.last.get_mut(&key).map(|e| &mut e.values) else {
            return;
        };
        let mut keep = |slot: usize, kv: &uplink::KeyValue| -> bool {
            if !keys.contains(&kv.key) {
                return true;
            }
            kv.value.write_text(scratch);
            let fp = ValueFingerprint::of(scratch);
            match state[slot].get(&kv.key) {
                Some(prev) if *prev == fp => false,
                _ => {
                    state[slot].insert(kv.key.clone(), fp);
                    true
                }
            }
        };
        if let Some(t) = &mut entity.telemetry {
            for entry in t.iter_mut() {
                entry.values.retain(|kv| keep(0, kv));
            }
            t.retain(|e| !e.values.is_empty());
        }
        if let Some(a) = &mut entity.attributes {
            a.retain(|kv| keep(1, kv));
        }
    }
}

/// The converters of one shard: a QuickJS runtime, the compiled decoder and encoder, and the
/// integration metadata handed to both. Not `Send`.
pub struct ConverterRuntime {
    engine: ScriptEngine,
    metadata: Vec<(String, String)>,
    update_only: UpdateOnlyState,
    entities: Vec<UplinkEntity>,
    encode_buf: Vec<u8>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl ConverterRuntime {
    /// Creates the runtime (about 0.1 ms: once per shard, never per frame).
    pub fn new(limits: ScriptLimits) -> Result<Self, ConvertError> {
        Ok(ConverterRuntime {
            engine: ScriptEngine::new(limits)?,
            metadata: Vec::new(),
            update_only: UpdateOnlyState::default(),
            entities: Vec::new(),
            encode_buf: Vec::with_capacity(256),
            _not_send: std::marker::PhantomData,
        })
    }

    /// The limits this runtime enforces.
    pub fn limits(&self) -> &ScriptLimits {
        self.engine.limits()
    }

    /// How often the runtime was rebuilt after a script hit a limit.
    pub fn nr_rebuilds(&self) -> u64 {
        self.engine.nr_rebuilds()
    }

    /// `integrationName` plus the integration's configured metadata, in that order.
    pub fn set_integration_metadata(&mut self, metadata: &[(String, String)]) {
        self.metadata = metadata.to_vec();
    }

    /// Compiles the uplink decoder (replacing the previous one). TBEL is rejected here.
    pub fn set_uplink(&mut self, config: &ConverterConfig) -> Result<(), ConvertError> {
        if config.script_lang == ScriptLang::Tbel {
            return Err(ConvertError::TbelUnsupported {
                name: config.name.clone(),
            });
        }
        let Some(decoder) = config.decoder.as_deref().filter(|d| !d.trim().is_empty()) else {
            return Err(ConvertError::Config {
                message: "the uplink converter has no `decoder` script".to_string(),
            });
        };
        self.engine.set_script(ScriptRole::Decoder, Some(decoder))?;
        self.update_only = UpdateOnlyState {
            keys: config.update_only_keys.clone(),
            max_entities: self.update_only.max_entities,
            ttl: self.update_only.ttl,
            ..Default::default()
        };
        Ok(())
    }

    /// Bounds the `updateOnlyKeys` state: at most `max_entities` entities (least recently used
    /// forgotten first, at least one kept), each forgotten `ttl` after its last uplink.
    pub fn set_update_only_bounds(&mut self, max_entities: usize, ttl: Duration) {
        self.update_only.max_entities = max_entities;
        self.update_only.ttl = ttl;
    }

    /// Compiles the downlink encoder, or removes it with `None`. TBEL is rejected here.
    pub fn set_downlink(&mut self, config: Option<&ConverterConfig>) -> Result<(), ConvertError> {
        let Some(config) = config else {
            return self.engine.set_script(ScriptRole::Encoder, None);
        };
        if config.script_lang == ScriptLang::Tbel {
            return Err(ConvertError::TbelUnsupported {
                name: config.name.clone(),
            });
        }
        let Some(encoder) = config.encoder.as_deref().filter(|d| !d.trim().is_empty()) else {
            return Err(ConvertError::Config {
                message: "the downlink converter has no `encoder` script".to_string(),
            });
        };
        self.engine.set_script(ScriptRole::Encoder, Some(encoder))
    }

    /// Whether a downlink encoder is compiled.
    pub fn has_downlink(&self) -> bool {
        self.engine.has_script(ScriptRole::Encoder)
    }

    /// Converts one frame, appending one record per device/asset in the result. On error
    /// nothing is appended.
    pub fn decode_uplink(
        &mut self,
        frame: &[u8],
        out: &mut Vec<UplinkRecord>,
    ) -> Result<(), ConvertError> {
        let mut entities = std::mem::take(&mut self.entities);
        entities.clear();
        let result = self.decode_entities(frame, &mut entities, None);
        if result.is_ok() {
            let now = Instant::now();
            for mut entity in entities.drain(..) {
                self.update_only.filter(&mut entity, now);
                let (tagged, header_bytes) =
                    record::encode_entity_tagged(&entity, &mut self.encode_buf);
                out.push(UplinkRecord {
                    kind: entity.kind,
                    encoded: tagged.slice(header_bytes..),
                    tagged,
                    name: entity.name,
                });
            }
        }
        entities.clear();
        self.entities = entities;
        result
    }

    /// Runs the decoder and normalises its result into `entities`; with `raw`, also writes what
    /// the script returned as `JSON.stringify(result, null, 2)`.
    pub fn decode_entities(
        &mut self,
        frame: &[u8],
        entities: &mut Vec<UplinkEntity>,
        raw: Option<&mut String>,
    ) -> Result<(), ConvertError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let start = entities.len();
        let result = self
            .engine
            .call_decoder(frame, &self.metadata, |ctx, keys, value| {
                if let Some(raw) = raw {
                    *raw = pretty_json(ctx, &value)?;
                }
                uplink::read_result(ctx, keys, value, now_ms, entities)
            });
        if result.is_err() {
            entities.truncate(start);
        }
        result
    }

    /// Runs the encoder on a rule-engine message, appending one byte string per result item.
    /// On error nothing is appended.
    pub fn encode_downlink(
        &mut self,
        msg: &crate::proto::msgqueue::TbMsgProto,
        out: &mut Vec<Bytes>,
    ) -> Result<(), ConvertError> {
        self.encode_downlink_raw(msg, out, None)
    }

    /// As [`ConverterRuntime::encode_downlink`]; with `raw`, also writes the script's return
    /// value as `JSON.stringify(result, null, 2)`.
    pub fn encode_downlink_raw(
        &mut self,
        msg: &crate::proto::msgqueue::TbMsgProto,
        out: &mut Vec<Bytes>,
        raw: Option<&mut String>,
    ) -> Result<(), ConvertError> {
        let start = out.len();
        let metadata = &self.metadata;
        let result = self.engine.call_encoder(
            |ctx| downlink::encoder_args(ctx, msg, metadata),
            |ctx, value| {
                if let Some(raw) = raw {
                    *raw = pretty_json(ctx, &value)?;
                }
                downlink::read_result(ctx, value, out)
            },
        );
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// `JSON.stringify(value, null, 2)`; `undefined` when the value has no JSON form.
fn pretty_json<'js>(
    ctx: &rquickjs::Ctx<'js>,
    value: &rquickjs::Value<'js>,
) -> Result<String, ConvertError> {
    let text = ctx
        .json_stringify_replacer_space(value.clone(), rquickjs::Undefined, 2)
        .map_err(|e| script::js_error(ctx, e))?;
    match text {
        Some(s) => s.to_string().map_err(|e| script::js_error(ctx, e)),
        None => Ok("undefined".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::typing::TypedValue;
    use super::uplink::KeyValue;
    use super::*;

    fn device(name: &str, state: i64) -> UplinkEntity {
        UplinkEntity {
            kind: EntityKind::Device,
            name: name.to_owned(),
            entity_type: "default".to_owned(),
            label: String::new(),
            customer_name: String::new(),
            group_name: String::new(),
            telemetry: None,
            attributes: Some(vec![KeyValue {
                key: "state".to_owned(),
                value: TypedValue::Long(state),
            }]),
        }
    }

    /// Whether the update-only filter forwards `state` of `name` at `now`.
    fn forwards(s: &mut UpdateOnlyState, name: &str, state: i64, now: Instant) -> bool {
        let mut entity = device(name, state);
        s.filter(&mut entity, now);
        entity.attributes.is_some_and(|a| a.len() == 1)
    }

    fn state(max_entities: usize, ttl: Duration) -> UpdateOnlyState {
        UpdateOnlyState {
            keys: vec!["state".to_owned()],
            max_entities,
            ttl,
            ..Default::default()
        }
    }

    #[test]
    fn update_only_state_is_bounded_by_entity_count_least_recently_used_first() {
        let mut s = state(2, Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(forwards(&mut s, "A", 1, t0));
        assert!(forwards(&mut s, "B", 1, t0));
        assert!(!forwards(&mut s, "A", 1, t0), "A is remembered");
        // C makes room by forgetting B, the least recently used.
        assert!(forwards(&mut s, "C", 1, t0));
        assert_eq!(s.last.len(), 2);
        assert_eq!(s.use_order.len(), 2);
        assert!(!forwards(&mut s, "A", 1, t0), "A is still remembered");
        assert!(
            forwards(&mut s, "B", 1, t0),
            "B was forgotten: forwarded again"
        );
        // Many device-chosen names never grow the state past the bound.
        for i in 0..1000 {
            forwards(&mut s, &format!("D{i}"), 1, t0);
        }
        assert_eq!(s.last.len(), 2);
        assert_eq!(s.use_order.len(), 2);
    }

    #[test]
    fn update_only_state_forgets_entities_idle_longer_than_the_ttl() {
        let mut s = state(100, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(forwards(&mut s, "A", 1, t0));
        assert!(forwards(&mut s, "B", 1, t0 + Duration::from_secs(30)));
        assert!(!forwards(&mut s, "B", 1, t0 + Duration::from_secs(59)));
        // A idle for 60 s: forgotten, its unchanged value is forwarded again.
        assert!(forwards(&mut s, "A", 1, t0 + Duration::from_secs(60)));
        // B was used at 59 s, so it is still remembered at 100 s.
        assert!(!forwards(&mut s, "B", 1, t0 + Duration::from_secs(100)));
        assert!(forwards(&mut s, "B", 2, t0 + Duration::from_secs(101)));
        assert!(!forwards(&mut s, "B", 2, t0 + Duration::from_secs(102)));
    }
}
