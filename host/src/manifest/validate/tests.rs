use serde_json::json;

use super::*;

#[test]
fn the_sandbox_section_checks_exactly_the_grants_the_manifest_type_has() {
    let checked: Vec<&str> = SANDBOX.fields.iter().map(|f| f.name).collect();
    assert_eq!(checked, crate::manifest::Sandbox::KEYS);
}

fn fields(problems: &[ManifestProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

fn minimal() -> Value {
    json!({
        "format_version": "2.0",
        "install": {"python_path": "/env/bin/python"},
        "code": {"name": "x", "version": "1", "description": "d", "module": "m", "class": "C"},
    })
}

#[test]
fn a_minimal_manifest_has_no_problems() {
    assert_eq!(check_capability(&minimal()), []);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let mut doc = minimal();
    doc["code"]["version"] = json!(3);
    doc["code"].as_object_mut().unwrap().remove("name");
    doc["install"]["env_vars"] = json!({"A": 1});
    doc["code"]["resources"] = json!({"requires_gpu": "yes"});
    doc["drift_tracking"] = json!({"config_schema_hash": "md5:abc"});
    let problems = check_capability(&doc);
    assert_eq!(
        fields(&problems),
        [
            "install.env_vars.A",
            "code.name",
            "code.version",
            "code.resources.requires_gpu",
            "drift_tracking.config_schema_hash"
        ],
        "{problems:?}"
    );
    assert_eq!(problems[1].message, "required field is missing");
    assert_eq!(
        problems[2].message,
        "expected a non-empty string, found a number (3)"
    );
}

#[test]
fn closed_sections_refuse_unknown_keys_and_open_ones_keep_them() {
    let doc = json!({
        "format_version": "2.0",
        "future_section": {},
        "install": {"runtime": "wasm", "future": 1,
            "wasm": {"component": "a.wasm", "sha256": format!("sha256:{}", "0".repeat(64)),
                "sandbox": {"preopens": [{"host": "/a", "guest": "/a", "mdoe": "rw"}], "netwrok": "any"}}},
        "code": {"name": "x", "version": "1"},
    });
    let problems = check_capability(&doc);
    assert_eq!(
        fields(&problems),
        [
            "install.wasm.sandbox.preopens[0].mdoe",
            "install.wasm.sandbox.netwrok"
        ],
        "{problems:?}"
    );
    assert!(
        problems[0]
            .message
            .starts_with("unknown field; expected only host, guest, mode")
    );
}

#[test]
fn runtime_blocks_must_match_the_runtime() {
    let mut doc = minimal();
    doc["install"]["native"] = json!({"command": ["/bin/w"]});
    assert_eq!(fields(&check_capability(&doc)), ["install.native"]);
    doc["install"]["runtime"] = json!("native");
    assert_eq!(check_capability(&doc), []);
    doc["install"]["native"]["command"] = json!([]);
    assert_eq!(fields(&check_capability(&doc)), ["install.native.command"]);
    doc["install"]["runtime"] = json!("wasm");
    doc["install"].as_object_mut().unwrap().remove("native");
    assert_eq!(fields(&check_capability(&doc)), ["install.wasm"]);
}

#[test]
fn sandbox_rules_need_absolute_unique_guest_paths_and_valid_names() {
    let doc = json!({
        "format_version": "2.0",
        "install": {"runtime": "wasm", "wasm": {"component": "a.wasm", "sha256": format!("sha256:{}", "a".repeat(64)),
            "sandbox": {"preopens": [{"host": "${CJM_MODELS_DIR}/m", "guest": "in"}, {"host": "$HOME", "guest": "in"}],
                "env": ["OK_1", "1BAD", "A-B"], "pool_size": 4, "max_concurrency": 2, "memory_limit_mb": 0}}},
        "code": {"name": "x", "version": "1"},
    });
    let problems = check_capability(&doc);
    assert_eq!(
        fields(&problems),
        [
            "install.wasm.sandbox.memory_limit_mb",
            "install.wasm.sandbox.preopens[0].guest",
            "install.wasm.sandbox.preopens[1].guest",
            "install.wasm.sandbox.preopens[1].guest",
            "install.wasm.sandbox.preopens[1].host",
            "install.wasm.sandbox.env[1]",
            "install.wasm.sandbox.env[2]",
            "install.wasm.sandbox.pool_size",
        ],
        "{problems:#?}"
    );
}

#[test]
fn worker_env_defaults_use_known_placeholders_and_secrets_have_none() {
    let mut doc = minimal();
    doc["code"]["worker_env"] = json!([
        {"name": "HF_HOME", "default": "${CJM_MODELS_DIR}/hf"},
        {"name": "X", "default": "${NOPE}"},
        {"name": "KEY", "secret": true, "default": "leak"},
    ]);
    assert_eq!(
        fields(&check_capability(&doc)),
        ["code.worker_env[1].default", "code.worker_env[2].default"]
    );
}

#[test]
fn adapters_need_their_identity_fields() {
    let problems = check_adapter(
        &json!({"unit": "adapter", "name": "m.C", "module": 5, "protocol_members": {"methods": [{"name": "f", "parms": []}]}}),
    );
    assert_eq!(
        fields(&problems),
        [
            "task_name",
            "module",
            "class",
            "protocol_members.methods[0].parms"
        ],
        "{problems:?}"
    );
}
