//! JSON text in the byte shapes the Python worker writes, so a client that compares bytes (or
//! a person diffing transcripts) cannot tell the two workers apart.
//!
//! Two shapes exist on the wire:
//! - [`to_compact`]: unary response bodies. Starlette's `JSONResponse` is
//!   `json.dumps(separators=(",", ":"), ensure_ascii=False)`: compact, raw UTF-8.
//! - [`to_spaced_ascii`]: NDJSON stream lines and the `X-CJM-Accounts` header. Plain
//!   `json.dumps` defaults: `", "` / `": "` separators, every non-ASCII character (and DEL)
//!   escaped as `\uXXXX`, astral characters as UTF-16 surrogate pairs.
//!
//! Both write floats as Python's `repr` does (`1e+16`, `1e-05`, `0.0001`, `-0.0`), which
//! differs from serde_json's own (`1e16`, `0.00001`). String escapes of control characters,
//! `"` and `\` are the same in Python and serde_json and are left to serde_json.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// Serializes `value` as a unary response body: compact separators, raw UTF-8.
pub fn to_compact<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    write(value, PyFormatter { spaced: false })
}

/// Serializes `value` as `json.dumps` does by default: spaced separators, ASCII only.
pub fn to_spaced_ascii<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let bytes = write(value, PyFormatter { spaced: true })?;
    // Every byte written in this mode is ASCII: non-ASCII characters were escaped.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn write<T: Serialize + ?Sized>(value: &T, formatter: PyFormatter) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut ser = Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// A serde_json formatter writing Python's separators, float repr and (when `spaced`)
/// `ensure_ascii` escapes.
struct PyFormatter {
    spaced: bool,
}

impl Formatter for PyFormatter {
    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(super::json::float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if !self.spaced {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(if self.spaced { b": " } else { b":" })
    }
}

impl PyFormatter {
    fn separator<W: ?Sized + Write>(&self, writer: &mut W, first: bool) -> io::Result<()> {
        match (first, self.spaced) {
            (true, _) => Ok(()),
            (false, true) => writer.write_all(b", "),
            (false, false) => writer.write_all(b","),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn compact_keeps_utf8_order_and_number_types() {
        let raw = r#"{"text":"héllo 😀 世界","a":0.0,"b":0,"c":1e16,"d":-0.0,"f":12345678901234567890,"j":[1,2.0],"k":{"z":1,"a":2},"ctl":"\u0001\u007f\n"}"#;
        let value: Value = serde_json::from_str(raw).unwrap();
        let out = String::from_utf8(to_compact(&value).unwrap()).unwrap();
        // DEL stays raw with ensure_ascii=False; other controls are escaped.
        let expected = r#"{"text":"héllo 😀 世界","a":0.0,"b":0,"c":1e+16,"d":-0.0,"f":12345678901234567890,"j":[1,2.0],"k":{"z":1,"a":2},"ctl":"\u0001DEL\n"}"#
            .replace("DEL", "\u{7f}");
        assert_eq!(out, expected);
    }

    #[test]
    fn spaced_ascii_matches_json_dumps_defaults() {
        let value = json!({"i": 0, "text": "é😀\u{7f}/\"", "l": [1, 2.0], "e": {}, "n": null});
        assert_eq!(
            to_spaced_ascii(&value).unwrap(),
            r#"{"i": 0, "text": "\u00e9\ud83d\ude00\u007f/\"", "l": [1, 2.0], "e": {}, "n": null}"#
        );
    }
}
