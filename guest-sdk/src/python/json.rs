//! JSON text exactly as Python's `json` module writes it.
//!
//! Two forms matter to cjm-substrate compatibility:
//! - the *canonical* form `json.dumps(obj, sort_keys=True, separators=(",", ":"))`, whose
//!   sha256 is every drift and config hash (the host's `manifest::hash`);
//! - the *manifest file* form `json.dump(obj, f, indent=2)` (insertion order kept), so a
//!   manifest this host rewrites is byte for byte what the Python tools would have written.
//!
//! Both use Python's defaults `ensure_ascii=True` (every character outside `' '..='~'` is
//! written as `\uXXXX`, astral characters as a surrogate pair, lowercase hex) and Python's
//! float repr (shortest round-trip digits; exponent form when the decimal exponent is below
//! -4 or above 15: `1e+16`, `1e-05`, `0.0001`, `1000000000000000.0`, `-0.0`). Integers stay
//! integers. serde_json cannot hold NaN or infinities, so those never arise from a `Value`;
//! the host's raw-text hashing path writes them as Python does
//! (`NaN`, `Infinity`, `-Infinity`).

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// How to lay out containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `separators=(",", ":")`, keys sorted: the canonical hashing form.
    Canonical,
    /// `indent=2`, keys in insertion order: the form of manifest files.
    Indent2,
}

/// Writes `value` as Python's `json` module would, in `layout`.
pub fn to_string(value: &Value, layout: Layout) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value, layout, 0);
    out
}

/// The canonical form: `json.dumps(value, sort_keys=True, separators=(",", ":"))`.
pub fn canonical(value: &Value) -> String {
    to_string(value, Layout::Canonical)
}

/// The manifest file form: `json.dump(value, f, indent=2)` (no trailing newline, as Python).
pub fn pretty(value: &Value) -> String {
    to_string(value, Layout::Indent2)
}

fn write_value(out: &mut String, value: &Value, layout: Layout, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => write_array(out, items, layout, depth),
        Value::Object(map) => write_object(out, map, layout, depth),
    }
}

fn newline_indent(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_array(out: &mut String, items: &[Value], layout: Layout, depth: usize) {
    if items.is_empty() {
        out.push_str("[]");
        return;
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if layout == Layout::Indent2 {
            newline_indent(out, depth + 1);
        }
        write_value(out, item, layout, depth + 1);
    }
    if layout == Layout::Indent2 {
        newline_indent(out, depth);
    }
    out.push(']');
}

fn write_object(out: &mut String, map: &Map<String, Value>, layout: Layout, depth: usize) {
    if map.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push('{');
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    if layout == Layout::Canonical {
        // Rust orders strings by UTF-8 bytes, which is Unicode code point order: Python's order.
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if layout == Layout::Indent2 {
            newline_indent(out, depth + 1);
        }
        write_str(out, key);
        out.push_str(if layout == Layout::Indent2 { ": " } else { ":" });
        write_value(out, item, layout, depth + 1);
    }
    if layout == Layout::Indent2 {
        newline_indent(out, depth);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        out.push_str(&float_repr(f));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for decimal exponents
/// -4..=15, exponent notation (at least two exponent digits, explicit sign) otherwise.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // `{:e}` prints the shortest digits that round-trip, as Python's repr does. When two
    // candidates of that length are equally close to the exact value, Rust may pick either,
    // Python (David Gay's dtoa) picks the even one: the exact-rounding mode of `{:.N$e}`
    // (round half to even) at the same length gives Python's choice, kept when it
    // round-trips.
    let shortest = format!("{f:e}");
    let digits_len = shortest
        .split_once('e')
        .map_or(0, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let exact = format!("{:.*e}", digits_len.saturating_sub(1), f);
    let sci = if exact.parse::<f64>().is_ok_and(|back| back == f) {
        exact
    } else {
        shortest
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let decpt = exp + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let point = decpt.unsigned_abs() as usize;
        if point >= digits.len() {
            out.push_str(&digits);
            for _ in digits.len()..point {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// A string literal with Python's `ensure_ascii=True` escaping.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.5, "1.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e-7, "1e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456789.123, "123456789.123"),
            (1e300, "1e+300"),
            (-1e-300, "-1e-300"),
            (0.1 + 0.2, "0.30000000000000004"),
            (100.0, "100.0"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (2.5e-5, "2.5e-05"),
            (-2.5, "-2.5"),
            // A tie between two shortest candidates goes to the even digit, as in Python.
            (-1113178120592002.2, "-1113178120592002.2"),
            (111659285584252.12, "111659285584252.12"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (0.05, "0.05"),
            (53.58984375, "53.58984375"),
            (-2.5e-7, "-2.5e-07"),
            (12345.0, "12345.0"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "repr of {f:e}");
        }
    }

    /// 2,500 floats whose repr real Python printed (random bit patterns, values in +-1e16
    /// where ties between two shortest candidates are common, rounded decimals).
    #[test]
    fn float_reprs_match_python_on_a_random_sweep() {
        #[derive(serde::Deserialize)]
        struct Sweep {
            cases: Vec<(String, String)>,
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../host/tests/fixtures/python/float_reprs.json");
        let sweep: Sweep = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(sweep.cases.len() > 2000);
        for (bits, want) in &sweep.cases {
            let f = f64::from_bits(bits.parse().unwrap());
            assert_eq!(&float_repr(f), want, "bits {bits}");
        }
    }

    #[test]
    fn strings_escape_everything_outside_printable_ascii() {
        let mut out = String::new();
        write_str(&mut out, "a\"\\\n\u{7f}é😀\u{1}/");
        assert_eq!(out, r#""a\"\\\n\u007f\u00e9\ud83d\ude00\u0001/""#);
    }

    #[test]
    fn indent2_matches_python_json_dump() {
        let v = json!({"b": [1, {"x": []}], "a": {}, "c": "é"});
        assert_eq!(
            pretty(&v),
            "{\n  \"b\": [\n    1,\n    {\n      \"x\": []\n    }\n  ],\n  \"a\": {},\n  \"c\": \"\\u00e9\"\n}"
        );
        assert_eq!(canonical(&v), r#"{"a":{},"b":[1,{"x":[]}],"c":"\u00e9"}"#);
    }
}
