//! ThingsBoard value typing (contract §4.1.4, ThingsBoard's JSON converter with type casting on):
//! the pure rules that turn a converter's telemetry/attribute value into one of
//! BOOLEAN_V / LONG_V / DOUBLE_V / STRING_V / JSON_V.
//!
//! Invariants: a number literal is LONG only when it is integral, written without a `.`, and fits
//! in int64; otherwise DOUBLE, unless its decimal scale exceeds 16 or it is an out-of-range integer,
//! which ThingsBoard keeps as STRING_V (the literal text). Strings that look like plain decimals
//! (`NumberUtils.isParsable`: optional leading `-`, digits, at most one `.`, not ending in `.`) are
//! typed like number literals; other strings stay STRING_V. A JS number is typed through the text
//! `JSON.stringify` would give it, because ThingsBoard's JS wrapper stringifies the result.

use std::fmt::Write as _;

/// Largest decimal scale ThingsBoard still stores as DOUBLE_V.
pub const MAX_DOUBLE_SCALE: i64 = 16;

/// A typed telemetry or attribute value, as it goes into a `KeyValueProto`.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedValue {
    /// BOOLEAN_V.
    Bool(bool),
    /// LONG_V.
    Long(i64),
    /// DOUBLE_V.
    Double(f64),
    /// STRING_V.
    String(String),
    /// JSON_V: the JSON text of a nested object or array.
    Json(String),
}

impl TypedValue {
    /// The ThingsBoard `KeyValueType` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            TypedValue::Bool(_) => "BOOLEAN_V",
            TypedValue::Long(_) => "LONG_V",
            TypedValue::Double(_) => "DOUBLE_V",
            TypedValue::String(_) => "STRING_V",
            TypedValue::Json(_) => "JSON_V",
        }
    }

    /// The value as text, as ThingsBoard compares values for `updateOnlyKeys`.
    pub fn write_text(&self, out: &mut String) {
        out.clear();
        match self {
            TypedValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            TypedValue::Long(v) => {
                let _ = write!(out, "{v}");
            }
            TypedValue::Double(v) => {
                let _ = write!(out, "{v:?}");
            }
            TypedValue::String(s) | TypedValue::Json(s) => out.push_str(s),
        }
    }

    /// `{"DOUBLE_V":25.7}`-style JSON, used by the test-converter output.
    pub fn to_json(&self) -> serde_json::Value {
        let inner = match self {
            TypedValue::Bool(b) => serde_json::Value::Bool(*b),
            TypedValue::Long(v) => serde_json::Value::from(*v),
            TypedValue::Double(v) => serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            TypedValue::String(s) | TypedValue::Json(s) => serde_json::Value::String(s.clone()),
        };
        let mut map = serde_json::Map::with_capacity(1);
        map.insert(self.type_name().to_string(), inner);
        serde_json::Value::Object(map)
    }
}

/// Types a JSON number literal (e.g. `69`, `69.0`, `1e3`, `25.7`).
/// Returns `None` if `text` is not a number literal.
pub fn type_number_literal(text: &str) -> Option<TypedValue> {
    let parsed = DecimalLiteral::parse(text)?;
    Some(parsed.typed(text))
}

/// Types a string value: numeric-looking strings become numbers, others stay STRING_V.
pub fn type_string(text: &str) -> TypedValue {
    if is_parsable(text)
        && let Some(parsed) = DecimalLiteral::parse(text)
    {
        return parsed.typed(text);
    }
    TypedValue::String(text.to_string())
}

/// Types a JS number as ThingsBoard sees it after `JSON.stringify`. `None` for NaN and
/// ±Infinity, which `JSON.stringify` writes as `null` (and null values are skipped).
pub fn type_js_number(v: f64) -> Option<TypedValue> {
    if !v.is_finite() {
        return None;
    }
    if v.fract() == 0.0 {
        // JSON.stringify writes integral doubles without a '.', so they are LONG when they fit.
        if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v) {
            return Some(TypedValue::Long(v as i64));
        }
        return Some(TypedValue::String(js_number_text(v)));
    }
    if v.abs() >= 1.0 {
        // At most 17 significant digits, at least one before the '.': the scale is <= 16.
        return Some(TypedValue::Double(v));
    }
    let mut text = String::with_capacity(24);
    let _ = write!(text, "{v}");
    let scale = text.find('.').map_or(0, |dot| text.len() - dot - 1) as i64;
    if scale > MAX_DOUBLE_SCALE {
        return Some(TypedValue::String(js_number_text(v)));
    }
    Some(TypedValue::Double(v))
}

/// `Number.prototype.toString()` of a finite double: fixed notation for 1e-6 <= |v| < 1e21,
/// otherwise exponent notation with an explicit sign (`1e+21`, `1.5e-7`). Both use the shortest
/// round-trip digits, as Rust's formatting does.
pub fn js_number_text(v: f64) -> String {
    let abs = v.abs();
    if v == 0.0 {
        return "0".to_string();
    }
    if (1e-6..1e21).contains(&abs) {
        return format!("{v}");
    }
    let exp = format!("{v:e}");
    match exp.split_once('e') {
        Some((mantissa, e)) if !e.starts_with('-') => format!("{mantissa}e+{e}"),
        _ => exp,
    }
}

/// commons-lang3 `NumberUtils.isParsable`: optional leading `-`, then ASCII digits with at most
/// one `.`, not empty and not ending in `.`.
pub fn is_parsable(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = match bytes.first() {
        None => return false,
        Some(b'-') => &bytes[1..],
        Some(_) => bytes,
    };
    if digits.is_empty() || bytes.last() == Some(&b'.') {
        return false;
    }
    let mut dots = 0;
    for &b in digits {
        if b == b'.' {
            dots += 1;
            if dots > 1 {
                return false;
            }
        } else if !b.is_ascii_digit() {
            return false;
        }
    }
    true
}

/// A decimal literal split into what the typing rules look at.
struct DecimalLiteral {
    has_dot: bool,
    /// Decimal scale (digits after the point minus the exponent), as Java's `BigDecimal`.
    scale: i64,
    /// Whether the value is a whole number.
    integral: bool,
}

impl DecimalLiteral {
    fn parse(text: &str) -> Option<DecimalLiteral> {
        let bytes = text.as_bytes();
        let mut i = 0;
        if matches!(bytes.first(), Some(b'-') | Some(b'+')) {
            i = 1;
        }
        let mut int_digits = 0usize;
        let mut frac = &bytes[0..0];
        let mut has_dot = false;
        let start_int = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
            int_digits += 1;
        }
        let int_part = &bytes[start_int..i];
        if i < bytes.len() && bytes[i] == b'.' {
            has_dot = true;
            i += 1;
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac = &bytes[start..i];
        }
        if int_digits == 0 && frac.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            i += 1;
            let neg = match bytes.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                exp = exp
                    .saturating_mul(10)
                    .saturating_add(i64::from(bytes[i] - b'0'));
                i += 1;
            }
            if i == start {
                return None;
            }
            if neg {
                exp = -exp;
            }
        }
        if i != bytes.len() {
            return None;
        }
        let scale = (frac.len() as i64).saturating_sub(exp);
        // Whole number when every digit right of the point (after applying the exponent) is 0.
        let all: Vec<u8> = int_part.iter().chain(frac.iter()).copied().collect();
        let trailing_zeros = all.iter().rev().take_while(|&&d| d == b'0').count() as i64;
        let integral = scale <= 0 || trailing_zeros >= scale || all.iter().all(|&d| d == b'0');
        Some(DecimalLiteral {
            has_dot,
            scale,
            integral,
        })
    }

    fn typed(&self, text: &str) -> TypedValue {
        if !self.has_dot && self.integral {
            return match parse_integral_i64(text) {
                Some(v) => TypedValue::Long(v),
                None => TypedValue::String(text.to_string()),
            };
        }
        if self.scale > MAX_DOUBLE_SCALE {
            return TypedValue::String(text.to_string());
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => TypedValue::Double(v),
            _ => TypedValue::String(text.to_string()),
        }
    }
}

/// Exact int64 value of an integral literal without `.` (possibly with an exponent), or `None`
/// when it does not fit.
fn parse_integral_i64(text: &str) -> Option<i64> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(pos) => (&text[..pos], text[pos + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (neg, digits) = match mantissa.as_bytes().first() {
        Some(b'-') => (true, &mantissa[1..]),
        Some(b'+') => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let mut value: i128 = 0;
    for b in digits.bytes() {
        value = value.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        if value > i128::from(u64::MAX) {
            return None;
        }
    }
    if value != 0 {
        if exp >= 0 {
            for _ in 0..exp {
                value = value.checked_mul(10)?;
                if value > i128::from(u64::MAX) {
                    return None;
                }
            }
        } else {
            for _ in 0..(-exp) {
                if value % 10 != 0 {
                    return None;
                }
                value /= 10;
            }
        }
    }
    let signed = if neg { -value } else { value };
    i64::try_from(signed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Non-integral doubles of magnitude >= 1 never have more than 16 decimals in their
        /// shortest form, which `type_js_number` relies on to skip formatting them.
        #[test]
        fn large_fractional_doubles_have_scale_at_most_16(
            v in proptest::prop_oneof![1.0f64..2.0, 1.0f64..1e6, -9.0e15f64..-1.0]
        ) {
            if v.is_finite() && v.abs() >= 1.0 && v.fract() != 0.0 {
                let text = format!("{v}");
                let scale = text.find('.').map_or(0, |dot| text.len() - dot - 1) as i64;
                proptest::prop_assert!(scale <= MAX_DOUBLE_SCALE, "{}", text);
            }
        }
    }

    #[test]
    fn strings_that_look_like_numbers_are_cast() {
        assert_eq!(type_string("25.7"), TypedValue::Double(25.7));
        assert_eq!(type_string("69"), TypedValue::Long(69));
        assert_eq!(type_string("-12"), TypedValue::Long(-12));
        assert_eq!(type_string("69.0"), TypedValue::Double(69.0));
        assert_eq!(type_string(".5"), TypedValue::Double(0.5));
        assert_eq!(type_string("007"), TypedValue::Long(7));
    }

    #[test]
    fn other_strings_stay_strings() {
        for s in [
            "", "-", "5.", "1e3", "abc", "1.2.3", " 5", "+5", "0x10", "NaN",
        ] {
            assert_eq!(type_string(s), TypedValue::String(s.to_string()), "{s:?}");
        }
    }

    #[test]
    fn out_of_range_integers_are_strings() {
        assert_eq!(
            type_string("9223372036854775808"),
            TypedValue::String("9223372036854775808".into())
        );
        assert_eq!(
            type_string("9223372036854775807"),
            TypedValue::Long(i64::MAX)
        );
        assert_eq!(
            type_string("-9223372036854775808"),
            TypedValue::Long(i64::MIN)
        );
        assert_eq!(
            type_number_literal("1e19"),
            Some(TypedValue::String("1e19".into()))
        );
    }

    #[test]
    fn number_literals() {
        assert_eq!(type_number_literal("69"), Some(TypedValue::Long(69)));
        assert_eq!(type_number_literal("69.0"), Some(TypedValue::Double(69.0)));
        assert_eq!(type_number_literal("1e3"), Some(TypedValue::Long(1000)));
        assert_eq!(type_number_literal("100e-2"), Some(TypedValue::Long(1)));
        assert_eq!(type_number_literal("1e-3"), Some(TypedValue::Double(0.001)));
        assert_eq!(type_number_literal("25.7"), Some(TypedValue::Double(25.7)));
        assert_eq!(type_number_literal("x"), None);
    }

    #[test]
    fn decimals_with_scale_over_16_are_strings() {
        assert_eq!(
            type_string("0.12345678901234567"),
            TypedValue::String("0.12345678901234567".into())
        );
        assert_eq!(
            type_string("0.1234567890123456"),
            TypedValue::Double(0.1234567890123456)
        );
    }

    #[test]
    fn js_numbers_follow_json_stringify() {
        assert_eq!(type_js_number(69.0), Some(TypedValue::Long(69)));
        assert_eq!(type_js_number(-0.0), Some(TypedValue::Long(0)));
        assert_eq!(type_js_number(25.7), Some(TypedValue::Double(25.7)));
        assert_eq!(type_js_number(f64::NAN), None);
        assert_eq!(type_js_number(f64::INFINITY), None);
        assert_eq!(
            type_js_number(0.1 + 0.2),
            Some(TypedValue::String("0.30000000000000004".into()))
        );
        assert_eq!(
            type_js_number(1e21),
            Some(TypedValue::String("1e+21".into()))
        );
        assert_eq!(
            type_js_number(9_223_372_036_854_775_808.0),
            Some(TypedValue::String("9223372036854776000".into()))
        );
        assert_eq!(type_js_number(1.5e-7), Some(TypedValue::Double(1.5e-7)));
    }

    #[test]
    fn js_number_text_matches_javascript() {
        assert_eq!(js_number_text(1e21), "1e+21");
        assert_eq!(js_number_text(1.5e-7), "1.5e-7");
        assert_eq!(js_number_text(0.000001), "0.000001");
        assert_eq!(js_number_text(123.25), "123.25");
    }

    #[test]
    fn typed_json_shows_the_type() {
        assert_eq!(
            TypedValue::Double(25.7).to_json().to_string(),
            r#"{"DOUBLE_V":25.7}"#
        );
        assert_eq!(
            TypedValue::Long(69).to_json().to_string(),
            r#"{"LONG_V":69}"#
        );
    }
}
