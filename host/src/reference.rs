//! The reference of every `cjm.yaml` and `capabilities.yaml` key (`docs/reference.md`), made
//! from what the loaders accept: the config's JSON Schema (schemars, from the serde structs
//! that parse `cjm.yaml`), the capabilities file's key table
//! ([`ENTRY_KEYS`]) and the sandbox block's schema. A test
//! compares the file with this output, so the reference cannot drift from the code.

use serde_json::Value;

use crate::config::RawConfig;
use crate::install::spec::ENTRY_KEYS;
use crate::manifest::Sandbox;

/// The reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code (`cjm_host::reference`); `cargo test -p cjm-host reference` \
         checks it is current, and `CJM_BLESS=1` rewrites it.\n\n\
         ## cjm.yaml\n\n\
         The first `cjm.yaml` from the working directory upward (or `--cjm-config`, \
         `CJM_CONFIG`). Every key is optional; an unknown key is an error. Environment \
         variables `CJM_<KEY>` (`CJM_DATA_DIR`, `CJM_MAX_CONCURRENT_LANES`) and the command \
         line override the file.\n\n\
         | key | type | meaning |\n|---|---|---|\n",
    );
    let config = serde_json::to_value(schemars::schema_for!(RawConfig)).unwrap_or(Value::Null);
    rows(&config, &config, "", &mut out);
    out.push_str(
        "\n## capabilities.yaml\n\n\
         `capabilities:` is a list of entries; relative paths are relative to the file's \
         directory; an unknown key is an error naming the kind it belongs to.\n\n\
         | key | kinds | shape | meaning |\n|---|---|---|---|\n",
    );
    for k in ENTRY_KEYS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.key,
            k.kinds.join(", "),
            k.shape,
            k.doc
        ));
    }
    out.push_str(
        "\n### sandbox (a wasm entry's grants; the manifest's `install.wasm.sandbox`)\n\n\
         Every grant defaults to deny; an unknown key is an error.\n\n\
         | key | type | meaning |\n|---|---|---|\n",
    );
    let sandbox = serde_json::to_value(schemars::schema_for!(Sandbox)).unwrap_or(Value::Null);
    rows(&sandbox, &sandbox, "", &mut out);
    out
}

/// A table row per property of `schema` (nested objects as `parent.key`); `root` resolves
/// `$ref`s.
fn rows(schema: &Value, root: &Value, prefix: &str, out: &mut String) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (key, prop) in props {
        let name = format!("{prefix}{key}");
        let target = resolved(prop, root);
        if target["properties"].is_object() {
            rows(target, root, &format!("{name}."), out);
            continue;
        }
        let description = prop["description"]
            .as_str()
            .or_else(|| target["description"].as_str())
            .unwrap_or("")
            .replace('\n', " ");
        out.push_str(&format!(
            "| `{name}` | {} | {} |\n",
            type_of(target, root),
            description.replace('|', "\\|")
        ));
    }
}

/// The schema a property stands for: its `$ref`, or the non-null branch of an optional one.
fn resolved<'a>(prop: &'a Value, root: &'a Value) -> &'a Value {
    if let Some(r) = prop["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return &root["$defs"][name];
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = prop[key].as_array()
            && let Some(b) = branches.iter().find(|b| b["type"] != "null")
        {
            return resolved(b, root);
        }
    }
    prop
}

/// A short type: `string`, `number`, `list of string`, `map of path`, or the values of an
/// enum.
fn type_of(schema: &Value, root: &Value) -> String {
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        let values: Vec<String> = branches
            .iter()
            .filter_map(|b| b["const"].as_str().or_else(|| b["enum"][0].as_str()))
            .map(|v| format!("`{v}`"))
            .collect();
        if !values.is_empty() {
            return values.join(" \\| ");
        }
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_owned(),
        _ => return "object".to_owned(),
    };
    match ty.as_str() {
        "array" => format!(
            "list of {}",
            type_of(resolved(&schema["items"], root), root)
        ),
        "object" => match (
            schema["additionalProperties"].as_object(),
            schema["properties"].as_object(),
        ) {
            (Some(_), _) => format!(
                "map of {}",
                type_of(resolved(&schema["additionalProperties"], root), root)
            ),
            (None, Some(props)) => format!(
                "`{{{}}}`",
                props.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            (None, None) => "object".to_owned(),
        },
        "integer" => "integer".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    /// The sandbox keys the validators check are the ones the block's struct has.
    #[test]
    fn sandbox_keys_are_the_blocks_fields() {
        let schema = serde_json::to_value(schemars::schema_for!(crate::manifest::Sandbox)).unwrap();
        let mut fields: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = crate::manifest::Sandbox::KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn docs_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
        let now = super::markdown();
        if std::env::var_os("CJM_BLESS").is_some() {
            std::fs::write(&path, &now).unwrap();
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == now,
            "docs/reference.md is not what the code accepts: run `CJM_BLESS=1 cargo test -p cjm-host reference`"
        );
    }
}
