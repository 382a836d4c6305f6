//! Properties of the Python-compatible encodings over generated inputs: Python's float
//! repr reads back exactly, with the fewest digits and Python's choice of notation; the
//! canonical JSON text reads back to the same value whatever the key order it was built in.
#![allow(clippy::unwrap_used, missing_docs)]

use cjm_guest::python::hash::canonical_hash;
use cjm_guest::python::json::{canonical, float_repr};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        (-1e6f64..1e6),
        (-1e-3f64..1e-3),
        (1e15f64..1e17),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn float_repr_reads_back_exactly_with_the_fewest_digits(f in finite()) {
        let repr = float_repr(f);
        prop_assert_eq!(repr.parse::<f64>().unwrap().to_bits(), f.to_bits(), "{}", repr);
        // As many significant digits as the shortest round-trip form, not one more.
        let digits = |s: &str| {
            let m = s.split(['e', 'E']).next().unwrap_or("");
            m.trim_start_matches('-')
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .trim_start_matches('0')
                .trim_end_matches('0')
                .len()
        };
        if f != 0.0 {
            prop_assert_eq!(digits(&repr), digits(&format!("{f:e}")), "{}", repr);
        }
        // Python's notation: fixed for 1e-4 <= |f| < 1e16, exponent otherwise; a float
        // always reads as one ("1.0", never "1").
        let a = f.abs();
        let fixed = a == 0.0 || (1e-4..1e16).contains(&a);
        prop_assert_eq!(!repr.contains('e'), fixed, "{}", repr);
        prop_assert!(repr.contains('.') || repr.contains('e'), "{}", repr);
    }
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The same value with every object's keys in reverse order.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o.iter().rev() {
                m.insert(k.clone(), reversed(v));
            }
            Value::Object(m)
        }
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn canonical_json_reads_back_and_ignores_key_order(v in json()) {
        let text = canonical(&v);
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert!(text.is_ascii(), "ensure_ascii: {}", text);
        prop_assert_eq!(canonical(&reversed(&v)), text);
        prop_assert_eq!(canonical_hash(&reversed(&v)), canonical_hash(&v));
    }
}
