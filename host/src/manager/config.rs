//! Capability configuration against its JSON Schema: defaults from the schema, strict
//! validation with a real JSON Schema validator (unknown keys refused unless lenient), errors
//! that name every bad field.

use cjm_guest::contract::JobError;
use serde_json::{Map, Value};

/// The defaults the schema declares (`properties.*.default`), as an object.
pub fn defaults(schema: &Value) -> Value {
    let mut out = Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            if let Some(default) = prop.get("default") {
                out.insert(name.clone(), default.clone());
            }
        }
    }
    Value::Object(out)
}

/// `given` laid over the schema's defaults: what `initialize` receives.
pub fn effective(schema: &Value, given: Option<&Value>) -> Value {
    let mut out = defaults(schema);
    if let (Some(Value::Object(given)), Value::Object(out)) = (given, &mut out) {
        for (k, v) in given {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Validates `config` against `schema`. Every problem is listed and every bad field named in
/// `fields_invalid`; keys the schema does not declare are refused unless `lenient`.
pub fn validate(
    capability: &str,
    schema: &Value,
    config: &Value,
    lenient: bool,
) -> Result<(), JobError> {
    let Value::Object(obj) = config else {
        return Err(JobError::user_input(format!(
            "the configuration of '{capability}' must be a JSON object"
        )));
    };
    let mut problems: Vec<String> = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    if !lenient && let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for key in obj.keys().filter(|k| !props.contains_key(*k)) {
            problems.push(format!("{key}: unknown field"));
            fields.push(key.clone());
        }
    }
    if schema.is_object() {
        schema_problems(schema, config, &mut problems, &mut fields).map_err(|e| {
            JobError::fatal(format!(
                "capability '{capability}' has an invalid config schema: {e}"
            ))
        })?;
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(JobError::user_input(format!(
        "invalid configuration for '{capability}': {}",
        problems.join("; ")
    ))
    .with_fields(fields))
}

/// Compiles the JSON Schema a capability's author declared for `method`'s arguments
/// (`params_schema` of the structural surface); an invalid schema is the capability's fault.
pub fn params_validator(
    capability: &str,
    method: &str,
    schema: &Value,
) -> Result<jsonschema::Validator, JobError> {
    jsonschema::validator_for(schema).map_err(|e| {
        JobError::fatal(format!(
            "capability '{capability}' declares an invalid schema for {method}: {e}"
        ))
    })
}

/// Validates the keyword arguments (`kwargs`, an object) of a call of `method` against its
/// compiled [`params_validator`]: every problem listed, every bad argument named in
/// `fields_invalid`.
pub fn validate_kwargs(
    capability: &str,
    method: &str,
    validator: &jsonschema::Validator,
    kwargs: &Value,
) -> Result<(), JobError> {
    let mut problems = Vec::new();
    let mut fields = Vec::new();
    validation_problems(validator, kwargs, &mut problems, &mut fields);
    if problems.is_empty() {
        return Ok(());
    }
    Err(JobError::user_input(format!(
        "invalid arguments for '{capability}' {method}: {}",
        problems.join("; ")
    ))
    .with_fields(fields))
}

/// Adds every failure of `value` against `schema` to `problems` (`field: why`) and the
/// top-level field it is about to `fields`; `Err` when the schema itself is invalid.
fn schema_problems(
    schema: &Value,
    value: &Value,
    problems: &mut Vec<String>,
    fields: &mut Vec<String>,
) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    validation_problems(&validator, value, problems, fields);
    Ok(())
}

fn validation_problems(
    validator: &jsonschema::Validator,
    value: &Value,
    problems: &mut Vec<String>,
    fields: &mut Vec<String>,
) {
    for error in validator.iter_errors(value) {
        let path = error.instance_path().to_string();
        let field = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let field = if field.is_empty() {
            // A `required` failure is reported at the object: the field is in the message.
            error
                .to_string()
                .split('"')
                .nth(1)
                .unwrap_or("config")
                .to_owned()
        } else {
            field
        };
        problems.push(format!("{field}: {error}"));
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "top_n": {"type": "integer", "minimum": 0, "default": 3},
            "lang": {"type": "string", "default": "en"}},
            "required": ["lang"]})
    }

    #[test]
    fn defaults_and_effective_config() {
        assert_eq!(defaults(&schema()), json!({"top_n": 3, "lang": "en"}));
        assert_eq!(
            effective(&schema(), Some(&json!({"top_n": 5}))),
            json!({"top_n": 5, "lang": "en"})
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let e = validate(
            "x",
            &schema(),
            &json!({"top_n": -1, "colour": "red", "lang": 3}),
            false,
        )
        .unwrap_err();
        let fields = e.fields_invalid.clone().unwrap();
        for f in ["top_n", "colour", "lang"] {
            assert!(fields.contains(&f.to_owned()), "{fields:?}");
        }
        assert!(e.message.contains("colour: unknown field"), "{}", e.message);
        assert!(validate("x", &schema(), &json!({"lang": "en", "extra": 1}), true).is_ok());
        let e = validate("x", &schema(), &json!({}), false).unwrap_err();
        assert_eq!(e.fields_invalid.unwrap(), ["lang"]);
    }
}
