//! The uplink result: walks the value a `Decoder` returned (natively, no JSON round trip) and
//! normalises it into entity records by contract §4.1.4.
//!
//! Invariants: one object or an array of objects; each record has exactly one of `deviceName` /
//! `assetName` (error texts are ThingsBoard's); `deviceType` defaults to `"default"`, `assetType`
//! is required; label/customer/group are kept only when non-empty; telemetry is a flat object
//! (ts = conversion time), `{ts, values}`, or an array of those; values are typed by
//! [`super::typing`]; `undefined`, functions and `null` values are skipped, as `JSON.stringify`
//! followed by ThingsBoard's parser would skip them.

use rquickjs::{Ctx, Object, Type, Value, qjs};

use super::typing::{self, TypedValue};
use super::{ConvertError, EntityKind, script::js_error};

/// ThingsBoard's error when neither name is present.
pub const ERR_NO_NAME: &str =
    "Either 'deviceName' or 'assetName' should be present in the converter output!";
/// Our error when both names are present (ThingsBoard rejects it too).
pub const ERR_BOTH_NAMES: &str =
    "Only one of 'deviceName' or 'assetName' should be present in the converter output!";
/// ThingsBoard's error for an asset without a type.
pub const ERR_NO_ASSET_TYPE: &str = "Asset type is not set!";
/// ThingsBoard's prefix for a value it cannot parse.
pub const ERR_CANT_PARSE: &str = "Can't parse value: ";

/// One key and its typed value.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: TypedValue,
}

/// One telemetry timestamp with its values.
#[derive(Debug, Clone, PartialEq)]
pub struct TsValues {
    pub ts_ms: i64,
    pub values: Vec<KeyValue>,
}

/// One normalised device or asset record.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkEntity {
    pub kind: EntityKind,
    pub name: String,
    /// Device profile / asset type name.
    pub entity_type: String,
    /// `deviceLabel` / `assetLabel`; empty means absent.
    pub label: String,
    /// Empty means absent.
    pub customer_name: String,
    /// Empty means absent.
    pub group_name: String,
    /// `None` when the result had no `telemetry`.
    pub telemetry: Option<Vec<TsValues>>,
    /// `None` when the result had no `attributes`.
    pub attributes: Option<Vec<KeyValue>>,
}

impl UplinkEntity {
    /// The typed JSON the test-converter prints (types visible, keys in ThingsBoard's order).
    pub fn to_typed_json(&self) -> String {
        serde_json::to_string_pretty(&TypedView(self)).unwrap_or_default()
    }
}

/// Serialises an entity with its keys in a stable, readable order.
pub struct TypedView<'a>(pub &'a UplinkEntity);

struct TypedKvs<'a>(&'a [KeyValue]);

impl serde::Serialize for TypedKvs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for kv in self.0 {
            m.serialize_entry(&kv.key, &kv.value.to_json())?;
        }
        m.end()
    }
}

struct TypedTs<'a>(&'a TsValues);

impl serde::Serialize for TypedTs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("ts", &self.0.ts_ms)?;
        m.serialize_entry("values", &TypedKvs(&self.0.values))?;
        m.end()
    }
}

impl serde::Serialize for TypedView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let (name_key, type_key, label_key) = match e.kind {
            EntityKind::Device => ("deviceName", "deviceType", "deviceLabel"),
            EntityKind::Asset => ("assetName", "assetType", "assetLabel"),
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(name_key, &e.name)?;
        m.serialize_entry(type_key, &e.entity_type)?;
        for (k, v) in [
            (label_key, &e.label),
            ("customerName", &e.customer_name),
            ("groupName", &e.group_name),
        ] {
            if !v.is_empty() {
                m.serialize_entry(k, v)?;
            }
        }
        if let Some(t) = &e.telemetry {
            let list: Vec<TypedTs<'_>> = t.iter().map(TypedTs).collect();
            m.serialize_entry("telemetry", &list)?;
        }
        if let Some(a) = &e.attributes {
            m.serialize_entry("attributes", &TypedKvs(a))?;
        }
        m.end()
    }
}

/// The result keys as atoms, made once per runtime: a lookup by atom skips the hash and
/// atom-table probe that a lookup by `&str` pays on every property of every frame.
///
/// The atoms are counted references into one runtime's atom table: they are valid only in the
/// runtime that made them and must be handed back with [`ResultKeys::release`] before it drops.
pub(crate) struct ResultKeys {
    device_name: qjs::JSAtom,
    asset_name: qjs::JSAtom,
    device_type: qjs::JSAtom,
    device_label: qjs::JSAtom,
    asset_type: qjs::JSAtom,
    asset_label: qjs::JSAtom,
    customer_name: qjs::JSAtom,
    group_name: qjs::JSAtom,
    attributes: qjs::JSAtom,
    telemetry: qjs::JSAtom,
    ts: qjs::JSAtom,
    values: qjs::JSAtom,
}

impl ResultKeys {
    pub(crate) fn new(ctx: &Ctx<'_>) -> rquickjs::Result<ResultKeys> {
        let mut made: Vec<qjs::JSAtom> = Vec::with_capacity(12);
        for name in [
            "deviceName",
            "assetName",
            "deviceType",
            "deviceLabel",
            "assetType",
            "assetLabel",
            "customerName",
            "groupName",
            "attributes",
            "telemetry",
            "ts",
            "values",
        ] {
            // SAFETY: the context is live; the name is a valid byte range.
            let atom = unsafe {
                qjs::JS_NewAtomLen(
                    ctx.as_raw().as_ptr(),
                    name.as_ptr().cast(),
                    name.len() as qjs::size_t,
                )
            };
            if atom == qjs::JS_ATOM_NULL {
                for a in made {
                    // SAFETY: each atom was made above in this context.
                    unsafe { qjs::JS_FreeAtom(ctx.as_raw().as_ptr(), a) };
                }
                return Err(rquickjs::Error::Allocation);
            }
            made.push(atom);
        }
        Ok(ResultKeys {
            device_name: made[0],
            asset_name: made[1],
            device_type: made[2],
            device_label: made[3],
            asset_type: made[4],
            asset_label: made[5],
            customer_name: made[6],
            group_name: made[7],
            attributes: made[8],
            telemetry: made[9],
            ts: made[10],
            values: made[11],
        })
    }

    /// Hands the atoms back. Call once, with a context of the runtime that made them.
    pub(crate) fn release(self, ctx: &Ctx<'_>) {
        for atom in [
            self.device_name,
            self.asset_name,
            self.device_type,
            self.device_label,
            self.asset_type,
            self.asset_label,
            self.customer_name,
            self.group_name,
            self.attributes,
            self.telemetry,
            self.ts,
            self.values,
        ] {
            // SAFETY: the atom was made by `new` in this runtime and is released exactly once
            // (`self` is consumed).
            unsafe { qjs::JS_FreeAtom(ctx.as_raw().as_ptr(), atom) };
        }
    }
}

/// `obj[atom]` (getters and the prototype chain included, as a lookup by name).
fn get_by_atom<'js>(
    ctx: &Ctx<'js>,
    obj: &Object<'js>,
    atom: qjs::JSAtom,
) -> rquickjs::Result<Value<'js>> {
    // SAFETY: the context is live for 'js, `obj` belongs to it, and the atom is held by the
    // caller for the life of the runtime. JS_GetProperty returns a new reference (or the
    // exception marker), which `Value::from_raw` takes over.
    unsafe {
        let raw = qjs::JS_GetProperty(ctx.as_raw().as_ptr(), obj.as_raw(), atom);
        if qjs::JS_IsException(raw) {
            return Err(rquickjs::Error::Exception);
        }
        Ok(Value::from_raw(ctx.clone(), raw))
    }
}

/// The own enumerable string-keyed property names of an object, freed on drop.
struct OwnNames {
    ctx: *mut qjs::JSContext,
    tab: *mut qjs::JSPropertyEnum,
    len: u32,
}

impl OwnNames {
    fn of(ctx: &Ctx<'_>, obj: &Object<'_>) -> rquickjs::Result<OwnNames> {
        let raw_ctx = ctx.as_raw().as_ptr();
        let mut tab: *mut qjs::JSPropertyEnum = std::ptr::null_mut();
        let mut len: u32 = 0;
        let flags = (qjs::JS_GPN_STRING_MASK | qjs::JS_GPN_ENUM_ONLY) as std::ffi::c_int;
        // SAFETY: the context and object are live; on success QuickJS hands us `len` entries
        // (each with a counted atom) that `Drop` frees with JS_FreePropertyEnum.
        if unsafe { qjs::JS_GetOwnPropertyNames(raw_ctx, &mut tab, &mut len, obj.as_raw(), flags) }
            < 0
        {
            return Err(rquickjs::Error::Exception);
        }
        Ok(OwnNames {
            ctx: raw_ctx,
            tab,
            len,
        })
    }

    fn atoms(&self) -> impl Iterator<Item = qjs::JSAtom> + '_ {
        // SAFETY: `tab` holds `len` initialised entries until drop (or is null when empty).
        let entries: &[qjs::JSPropertyEnum] = if self.tab.is_null() || self.len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(self.tab, self.len as usize) }
        };
        entries.iter().map(|e| e.atom)
    }
}

impl Drop for OwnNames {
    fn drop(&mut self) {
        if !self.tab.is_null() {
            // SAFETY: the table came from JS_GetOwnPropertyNames in this live context and is
            // freed once (atoms and table together).
            unsafe { qjs::JS_FreePropertyEnum(self.ctx, self.tab, self.len) };
        }
    }
}

/// The text of a property name atom.
fn atom_text(ctx: &Ctx<'_>, atom: qjs::JSAtom) -> rquickjs::Result<String> {
    let raw_ctx = ctx.as_raw().as_ptr();
    let mut len: qjs::size_t = 0;
    // SAFETY: the context is live and the atom is held by the caller; the returned UTF-8
    // buffer of `len` bytes stays valid until JS_FreeCString.
    unsafe {
        let ptr = qjs::JS_AtomToCStringLen(raw_ctx, &mut len, atom);
        if ptr.is_null() {
            return Err(rquickjs::Error::Exception);
        }
        let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize);
        let text = String::from_utf8_lossy(bytes).into_owned();
        qjs::JS_FreeCString(raw_ctx, ptr);
        Ok(text)
    }
}

/// Reads a decoder result into `out` (appending). `now_ms` is the ts of flat telemetry.
pub(crate) fn read_result<'js>(
    ctx: &Ctx<'js>,
    keys: &ResultKeys,
    value: Value<'js>,
    now_ms: i64,
    out: &mut Vec<UplinkEntity>,
) -> Result<(), ConvertError> {
    if let Some(array) = value.as_array() {
        for item in array.iter::<Value>() {
            let item = item.map_err(|e| js_error(ctx, e))?;
            let Some(obj) = item.as_object().filter(|_| !item.is_array()) else {
                return Err(bad(format!("{ERR_CANT_PARSE}{}", json_text(ctx, &item))));
            };
            out.push(read_entity(ctx, keys, obj, now_ms)?);
        }
        return Ok(());
    }
    match value.as_object() {
        Some(obj) if !value.is_function() => {
            out.push(read_entity(ctx, keys, obj, now_ms)?);
            Ok(())
        }
        _ => Err(bad(format!(
            "The converter output must be a JSON object or an array of objects, got: {}",
            json_text(ctx, &value)
        ))),
    }
}

fn bad(message: String) -> ConvertError {
    ConvertError::BadResult { message }
}

/// A property that `JSON.stringify` would keep (not undefined / function / symbol), or `None`.
/// `null` also counts as absent for the entity-level keys.
fn prop<'js>(
    ctx: &Ctx<'js>,
    obj: &Object<'js>,
    key: qjs::JSAtom,
) -> Result<Option<Value<'js>>, ConvertError> {
    let v = get_by_atom(ctx, obj, key).map_err(|e| js_error(ctx, e))?;
    Ok(match walk_type(&v) {
        Type::Undefined
        | Type::Null
        | Type::Uninitialized
        | Type::Function
        | Type::Constructor
        | Type::Symbol => None,
        _ => Some(v),
    })
}

/// The JS type as far as the result walk cares: primitives by their tag; objects as `Function`
/// (callable or constructor: `JSON.stringify` leaves them out) or else `Object`. `type_of`
/// would ask the engine up to six questions about every object.
fn walk_type(v: &Value<'_>) -> Type {
    if v.is_object() {
        if v.is_function() || v.is_constructor() {
            Type::Function
        } else {
            Type::Object
        }
    } else {
        v.type_of()
    }
}

/// The text of a scalar entity field (names, types, labels), as Jackson's `asText()` gives it.
fn field_text<'js>(ctx: &Ctx<'js>, v: &Value<'js>) -> Result<String, ConvertError> {
    if let Some(s) = v.as_string() {
        return s.to_string().map_err(|e| js_error(ctx, e));
    }
    if let Some(b) = v.as_bool() {
        return Ok(if b { "true" } else { "false" }.to_string());
    }
    if let Some(n) = v.as_number() {
        return Ok(match typing::type_js_number(n) {
            Some(TypedValue::Long(l)) => l.to_string(),
            _ => typing::js_number_text(n),
        });
    }
    Ok(json_text(ctx, v))
}

fn read_entity<'js>(
    ctx: &Ctx<'js>,
    keys: &ResultKeys,
    obj: &Object<'js>,
    now_ms: i64,
) -> Result<UplinkEntity, ConvertError> {
    let device = prop(ctx, obj, keys.device_name)?;
    let asset = prop(ctx, obj, keys.asset_name)?;
    let (kind, name_value) = match (device, asset) {
        (Some(d), None) => (EntityKind::Device, d),
        (None, Some(a)) => (EntityKind::Asset, a),
        (Some(_), Some(_)) => return Err(bad(ERR_BOTH_NAMES.to_string())),
        (None, None) => return Err(bad(ERR_NO_NAME.to_string())),
    };
    let name = field_text(ctx, &name_value)?;
    let opt_text = |key: qjs::JSAtom| -> Result<String, ConvertError> {
        match prop(ctx, obj, key)? {
            Some(v) => field_text(ctx, &v),
            None => Ok(String::new()),
        }
    };
    let (entity_type, label) = match kind {
        EntityKind::Device => {
            let t = opt_text(keys.device_type)?;
            (
                if t.is_empty() {
                    "default".to_string()
                } else {
                    t
                },
                opt_text(keys.device_label)?,
            )
        }
        EntityKind::Asset => {
            let t = opt_text(keys.asset_type)?;
            if t.is_empty() {
                return Err(bad(ERR_NO_ASSET_TYPE.to_string()));
            }
            (t, opt_text(keys.asset_label)?)
        }
    };
    let customer_name = opt_text(keys.customer_name)?;
    let group_name = opt_text(keys.group_name)?;
    let attributes = match prop(ctx, obj, keys.attributes)? {
        Some(v) => {
            let mut kv = Vec::new();
            read_flat(ctx, &v, &mut kv)?;
            Some(kv)
        }
        None => None,
    };
    let telemetry = match prop(ctx, obj, keys.telemetry)? {
        Some(v) => {
            let mut list = Vec::new();
            if let Some(array) = v.as_array() {
                for item in array.iter::<Value>() {
                    let item = item.map_err(|e| js_error(ctx, e))?;
                    read_ts_entry(ctx, keys, &item, now_ms, &mut list)?;
                }
            } else {
                read_ts_entry(ctx, keys, &v, now_ms, &mut list)?;
            }
            Some(list)
        }
        None => None,
    };
    Ok(UplinkEntity {
        kind,
        name,
        entity_type,
        label,
        customer_name,
        group_name,
        telemetry,
        attributes,
    })
}

/// One telemetry entry: `{ts, values}` or a flat object (ts = now). Entries that end up with
/// no values are not kept.
fn read_ts_entry<'js>(
    ctx: &Ctx<'js>,
    keys: &ResultKeys,
    v: &Value<'js>,
    now_ms: i64,
    out: &mut Vec<TsValues>,
) -> Result<(), ConvertError> {
    let Some(obj) = v.as_object().filter(|_| !v.is_array() && !v.is_function()) else {
        return Err(bad(format!("{ERR_CANT_PARSE}{}", json_text(ctx, v))));
    };
    let ts = prop(ctx, obj, keys.ts)?;
    let values = prop(ctx, obj, keys.values)?;
    let (ts_ms, source) = match (ts, values) {
        (Some(ts), Some(values)) => (ts_millis(ctx, &ts)?, values),
        _ => (now_ms, v.clone()),
    };
    let mut kv = Vec::new();
    read_flat(ctx, &source, &mut kv)?;
    if !kv.is_empty() {
        out.push(TsValues { ts_ms, values: kv });
    }
    Ok(())
}

fn ts_millis<'js>(ctx: &Ctx<'js>, ts: &Value<'js>) -> Result<i64, ConvertError> {
    if let Some(n) = ts.as_number()
        && n.is_finite()
    {
        return Ok(n as i64);
    }
    if let Some(s) = ts.as_string() {
        let s = s.to_string().map_err(|e| js_error(ctx, e))?;
        if let Ok(v) = s.trim().parse::<i64>() {
            return Ok(v);
        }
    }
    Err(bad(format!("{ERR_CANT_PARSE}{}", json_text(ctx, ts))))
}

/// A flat object of values into typed key/values (in property order).
fn read_flat<'js>(
    ctx: &Ctx<'js>,
    v: &Value<'js>,
    out: &mut Vec<KeyValue>,
) -> Result<(), ConvertError> {
    let Some(obj) = v.as_object().filter(|_| !v.is_array() && !v.is_function()) else {
        return Err(bad(format!("{ERR_CANT_PARSE}{}", json_text(ctx, v))));
    };
    // Names first, then each value by its atom (what `for...in` + `obj[k]` would read).
    let names = OwnNames::of(ctx, obj).map_err(|e| js_error(ctx, e))?;
    for atom in names.atoms() {
        let key = atom_text(ctx, atom).map_err(|e| js_error(ctx, e))?;
        let value = get_by_atom(ctx, obj, atom).map_err(|e| js_error(ctx, e))?;
        if let Some(typed) = type_value(ctx, &value)? {
            out.push(KeyValue { key, value: typed });
        }
    }
    Ok(())
}

/// Types one JS value; `None` for values ThingsBoard never sees (null, undefined, functions,
/// NaN/Infinity).
fn type_value<'js>(ctx: &Ctx<'js>, v: &Value<'js>) -> Result<Option<TypedValue>, ConvertError> {
    Ok(match walk_type(v) {
        Type::Bool => v.as_bool().map(TypedValue::Bool),
        Type::Int => v.as_int().map(|i| TypedValue::Long(i64::from(i))),
        Type::Float => v.as_float().and_then(typing::type_js_number),
        Type::String => match v.as_string() {
            Some(s) => Some(typing::type_string(
                &s.to_string().map_err(|e| js_error(ctx, e))?,
            )),
            None => None,
        },
        Type::Undefined
        | Type::Null
        | Type::Uninitialized
        | Type::Function
        | Type::Constructor
        | Type::Symbol => None,
        // Objects, arrays, dates, boxed values...: what JSON.stringify makes of them decides.
        _ => {
            let text = match ctx
                .json_stringify(v.clone())
                .map_err(|e| js_error(ctx, e))?
            {
                Some(s) => s.to_string().map_err(|e| js_error(ctx, e))?,
                None => return Ok(None),
            };
            type_json_text(&text)
        }
    })
}

/// Types a value given as JSON text (the result of `JSON.stringify` on an object-ish value).
fn type_json_text(text: &str) -> Option<TypedValue> {
    match text.as_bytes().first() {
        Some(b'{') | Some(b'[') => Some(TypedValue::Json(text.to_string())),
        Some(b'"') => serde_json::from_str::<String>(text)
            .ok()
            .map(|s| typing::type_string(&s)),
        Some(b't') => Some(TypedValue::Bool(true)),
        Some(b'f') => Some(TypedValue::Bool(false)),
        Some(b'n') | None => None,
        Some(_) => typing::type_number_literal(text),
    }
}

/// `JSON.stringify(v)` for error messages (never fails; falls back to the JS type name).
pub(crate) fn json_text<'js>(ctx: &Ctx<'js>, v: &Value<'js>) -> String {
    match ctx.json_stringify(v.clone()) {
        Ok(Some(s)) => s.to_string().unwrap_or_default(),
        Ok(None) => "undefined".to_string(),
        Err(_) => {
            let _ = ctx.catch();
            v.type_name().to_string()
        }
    }
}
