//! The matcher against the real Python matcher's verdicts, the real sentence-segmentation
//! adapter against a Python capability and our wasm example, and every refusal.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;
use crate::contract::{ErrorCategory, StructuralSurface};
use crate::manifest::RuntimeKind;
use crate::manifest::{self, ProtocolMembers};

const SENTENCE_ADAPTER: &str =
    "cjm_sentence_segmentation_adapter_interface.generic.GenericSentenceSegmentationAdapter";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python")
}

fn adapter(file: &str) -> AdapterManifest {
    manifest::load_adapter(&fixtures().join("manifests").join(file)).unwrap()
}

fn capability(file: &str) -> CapabilityManifest {
    manifest::load_capability(&fixtures().join("manifests").join(file)).unwrap()
}

fn sentence_adapter() -> AdapterManifest {
    adapter("adapter-sentence_segmentation-GenericSentenceSegmentationAdapter.json")
}

fn echo_adapter() -> AdapterManifest {
    adapter("adapter-echo-EchoTaskAdapter.json")
}

fn pysbd() -> CapabilityManifest {
    capability("cjm-capability-pysbd.json")
}

fn echo() -> CapabilityManifest {
    capability("cjm-capability-echo.json")
}

/// The surface our wasm example reports through `info`.
fn sentence_split_surface() -> StructuralSurface {
    cjm_guest::Hosted::<sentence_split::SentenceSplit>::new().surface()
}

/// A wasm capability manifest carrying `surface`, as install records what the guest reported.
fn wasm_manifest(name: &str, surface: &StructuralSurface) -> CapabilityManifest {
    let mut m = CapabilityManifest::new(name, "0.1.0", RuntimeKind::Wasm);
    m.code.set_surface(surface);
    m
}

/// `pysbd` with `segment_text` taken out of its recorded surface.
fn pysbd_without_segment_text() -> CapabilityManifest {
    let mut m = pysbd();
    let methods = m.code.structural_surface.as_mut().unwrap()["methods"]
        .as_array_mut()
        .unwrap();
    let before = methods.len();
    methods.retain(|method| method["name"] != "segment_text");
    assert_eq!(methods.len(), before - 1);
    m.code.name = "no-segment-text".to_owned();
    m
}

fn job_error(err: Error) -> JobError {
    match err {
        Error::Job(e) => *e,
        other => panic!("expected a job error, got {other:?}"),
    }
}

#[test]
fn every_python_verdict_is_reproduced() {
    let text = std::fs::read_to_string(fixtures().join("adapter_match_verdicts.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 10, "the fixture's cases");
    let (mut pairs, mut synthetic) = (0, 0);
    for case in &cases {
        let expected = &case["verdict"];
        if let Some(adapter_file) = case["adapter_manifest"].as_str() {
            let cap_file = case["capability_manifest"].as_str().unwrap();
            let got = check(&adapter(adapter_file), &capability(cap_file));
            assert_eq!(&got.to_value(), expected, "{adapter_file} x {cap_file}");
            pairs += 1;
            continue;
        }
        let name = case["synthetic"].as_str().unwrap();
        let members: ProtocolMembers =
            serde_json::from_value(case["protocol_members"].clone()).unwrap();
        let surface = &case["structural_surface"];
        let got = match_recorded(&members, Some(surface));
        assert_eq!(&got.to_value(), expected, "synthetic {name}");
        // A verdict read back from Python's JSON is the same value.
        let parsed: Verdict = serde_json::from_value(expected.clone()).unwrap();
        assert_eq!(got, parsed, "synthetic {name}");
        // The typed form of a recorded surface gets the same verdict: one rule for both.
        if expected["reason"].is_null() {
            let typed: StructuralSurface = serde_json::from_value(surface.clone()).unwrap();
            assert_eq!(
                &match_surface(&members, &typed).to_value(),
                expected,
                "typed {name}"
            );
        }
        synthetic += 1;
    }
    assert_eq!((pairs, synthetic), (4, 6));
}

#[test]
fn sentence_adapter_fits_python_pysbd_and_wasm_sentence_split() {
    let adapter = sentence_adapter();
    assert_eq!(adapter.name, SENTENCE_ADAPTER);
    assert_eq!(adapter.task_name, "sentence_segmentation");
    let compatible = Verdict {
        compatible: true,
        ..Verdict::default()
    };

    // (a) the Python capability, from its manifest.
    assert_eq!(check(&adapter, &pysbd()), compatible);

    // (b) the wasm example: its live surface, and the manifest install writes from it.
    let surface = sentence_split_surface();
    let segment = surface.method("segment_text").unwrap();
    assert_eq!(segment.params, ["text", "kwargs"]);
    assert_eq!(
        match_surface(&adapter.protocol_members, &surface),
        compatible
    );
    let wasm = wasm_manifest("sentence-split", &surface);
    assert_eq!(check(&adapter, &wasm), compatible);

    // The query finds both kinds, and not a capability lacking the member.
    let caps = [pysbd(), wasm, pysbd_without_segment_text(), echo()];
    let names: Vec<&str> = compatible_capabilities(&adapter, &caps)
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(
        names,
        [
            "cjm-capability-pysbd",
            "sentence-split",
            "cjm-capability-echo"
        ]
    );
}

#[test]
fn a_capability_lacking_segment_text_is_refused_with_the_member_named() {
    let adapter = sentence_adapter();
    let cap = pysbd_without_segment_text();
    let verdict = check(&adapter, &cap);
    assert_eq!(
        verdict,
        Verdict {
            compatible: false,
            missing_methods: vec!["segment_text".to_owned()],
            ..Verdict::default()
        }
    );
    assert_eq!(verdict.to_string(), "missing methods: segment_text");

    let adapters = [echo_adapter(), adapter];
    assert!(auto_bind(&cap, &adapters).is_empty());
    let err = job_error(check_requested(&cap, &adapters, &[SENTENCE_ADAPTER]).unwrap_err());
    assert_eq!(err.category, ErrorCategory::UserInput);
    assert_eq!(
        err.fields_invalid.as_deref(),
        Some(&["adapters".to_owned()][..])
    );
    assert_eq!(
        err.message,
        format!(
            "adapter '{SENTENCE_ADAPTER}' (task 'sentence_segmentation') is not compatible \
             with capability 'no-segment-text': missing methods: segment_text"
        )
    );
    // The same refusal through `resolve`, as load asks.
    let err = job_error(resolve(&cap, &adapters, Some(&[SENTENCE_ADAPTER][..])).unwrap_err());
    assert!(err.message.contains("segment_text"), "{}", err.message);
}

#[test]
fn the_wasm_surface_lacking_segment_text_is_refused_too() {
    let mut surface = sentence_split_surface();
    surface.methods.retain(|m| m.name != "segment_text");
    let wasm = wasm_manifest("split-without-task", &surface);
    let adapters = [sentence_adapter()];
    let err = job_error(check_requested(&wasm, &adapters, &[SENTENCE_ADAPTER]).unwrap_err());
    assert!(
        err.message.ends_with(": missing methods: segment_text"),
        "{}",
        err.message
    );
    assert_eq!(
        match_surface(&adapters[0].protocol_members, &surface).missing_methods,
        ["segment_text"]
    );
}

#[test]
fn adapters_for_a_task_are_those_serving_it() {
    let adapters = [echo_adapter(), sentence_adapter()];
    let names = |task: &str| -> Vec<String> {
        adapters_for_task(&adapters, task)
            .iter()
            .map(|a| a.name.clone())
            .collect()
    };
    assert_eq!(names("sentence_segmentation"), [SENTENCE_ADAPTER]);
    assert_eq!(names("echo"), [adapters[0].name.clone()]);
    assert!(names("transcription").is_empty());
}

#[test]
fn auto_bind_takes_every_compatible_adapter_one_per_task() {
    let adapters = [echo_adapter(), sentence_adapter()];
    let bound = |cap: &CapabilityManifest| -> Vec<String> {
        auto_bind(cap, &adapters)
            .iter()
            .map(|a| worker_spec(a))
            .collect()
    };
    assert_eq!(
        bound(&echo()),
        [
            "cjm_capability_echo.adapter:EchoTaskAdapter",
            "cjm_sentence_segmentation_adapter_interface.generic:GenericSentenceSegmentationAdapter",
        ]
    );
    assert_eq!(
        bound(&pysbd()),
        ["cjm_sentence_segmentation_adapter_interface.generic:GenericSentenceSegmentationAdapter"]
    );
    let wasm = wasm_manifest("sentence-split", &sentence_split_surface());
    assert_eq!(bound(&wasm), bound(&pysbd()));
    // `resolve` with no request is auto-binding; an empty request binds none.
    let resolved = resolve::<&str>(&echo(), &adapters, None).unwrap();
    assert_eq!(resolved.len(), 2);
    assert!(
        resolve::<&str>(&echo(), &adapters, Some(&[]))
            .unwrap()
            .is_empty()
    );

    // Two compatible adapters of one task: the first given binds.
    let mut second = sentence_adapter();
    second.name = "other.SecondSegmenter".to_owned();
    second.class_name = "SecondSegmenter".to_owned();
    let two = [second.clone(), sentence_adapter()];
    let bound: Vec<&str> = auto_bind(&pysbd(), &two)
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(bound, ["other.SecondSegmenter"]);
    // Requesting both is refused: only one could serve the task.
    let err = job_error(
        check_requested(&pysbd(), &two, &["other.SecondSegmenter", SENTENCE_ADAPTER]).unwrap_err(),
    );
    assert_eq!(
        err.message,
        format!(
            "adapters 'other.SecondSegmenter' and '{SENTENCE_ADAPTER}' both serve task \
             'sentence_segmentation'; request one"
        )
    );
}

#[test]
fn explicit_requests_keep_their_order_and_name_each_problem() {
    let adapters = [echo_adapter(), sentence_adapter()];
    let echo_name = adapters[0].name.clone();
    let chosen = check_requested(
        &echo(),
        &adapters,
        &[SENTENCE_ADAPTER, echo_name.as_str(), SENTENCE_ADAPTER],
    )
    .unwrap();
    let names: Vec<&str> = chosen.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, [SENTENCE_ADAPTER, echo_name.as_str()]);

    // pysbd lacks echo_text, and "nope" is unknown: both are named in one refusal.
    let err =
        job_error(check_requested(&pysbd(), &adapters, &[echo_name.as_str(), "nope"]).unwrap_err());
    assert_eq!(err.category, ErrorCategory::UserInput);
    assert_eq!(
        err.message,
        format!(
            "adapter '{echo_name}' (task 'echo') is not compatible with capability \
             'cjm-capability-pysbd': missing methods: echo_text; unknown adapter 'nope' \
             (discovered: {echo_name}, {SENTENCE_ADAPTER})"
        )
    );
    let none: [AdapterManifest; 0] = [];
    let err = job_error(check_requested(&pysbd(), &none, &["nope"]).unwrap_err());
    assert_eq!(err.message, "unknown adapter 'nope' (none discovered)");
}

#[test]
fn no_recorded_surface_is_incompatible_with_the_reason() {
    let adapter = sentence_adapter();
    for surface in [None, Some(Value::Null), Some(json!({}))] {
        let mut cap = pysbd();
        cap.code.structural_surface = surface.clone();
        let verdict = check(&adapter, &cap);
        assert_eq!(
            verdict,
            Verdict::unmatched(NO_SURFACE_REASON),
            "{surface:?}"
        );
        assert!(!verdict.compatible);
        assert!(auto_bind(&cap, [&adapter]).is_empty());
        let err = job_error(check_requested(&cap, [&adapter], &[SENTENCE_ADAPTER]).unwrap_err());
        assert!(err.message.ends_with(NO_SURFACE_REASON), "{}", err.message);
    }
}

#[test]
fn a_recorded_surface_of_the_wrong_shape_is_incompatible_with_the_reason() {
    let members = sentence_adapter().protocol_members;
    for bad in [
        json!([1]),
        json!({"methods": "segment_text"}),
        json!("surface"),
    ] {
        let verdict = match_recorded(&members, Some(&bad));
        assert!(!verdict.compatible, "{bad}");
        let reason = verdict.reason.unwrap();
        assert!(
            reason.starts_with("capability manifest structural_surface is not a surface ("),
            "{reason}"
        );
    }
}

#[test]
fn parameters_are_compared_only_when_both_sides_record_them() {
    let members: ProtocolMembers = serde_json::from_value(json!({
        "methods": [{"name": "f", "params": ["a"]}, {"name": "g"}],
        "properties": ["p"],
    }))
    .unwrap();
    // The surface does not record f's params: not compared (Python's `s_params is not None`).
    let surface = json!({"methods": [{"name": "f"}, {"name": "g", "params": ["z"]}],
                         "properties": ["p"]});
    assert!(match_recorded(&members, Some(&surface)).compatible);
    // Of two surface methods with one name the last counts, as Python's name -> method dict.
    let surface = json!({"methods": [{"name": "f", "params": ["a"]},
                                     {"name": "f", "params": ["b"]},
                                     {"name": "g"}],
                         "properties": ["p"]});
    let verdict = match_recorded(&members, Some(&surface));
    assert_eq!(
        verdict.param_mismatches,
        [ParamMismatch {
            method: "f".to_owned(),
            protocol_params: vec!["a".to_owned()],
            surface_params: vec!["b".to_owned()],
        }]
    );
    assert_eq!(
        verdict.to_string(),
        "parameter mismatch in f: the protocol passes (a), the capability takes (b)"
    );
    // Properties are matched by name, each missing one named.
    let surface = json!({"methods": [{"name": "f"}, {"name": "g"}], "properties": ["q"]});
    let verdict = match_recorded(&members, Some(&surface));
    assert_eq!(verdict.missing_properties, ["p"]);
    assert_eq!(verdict.to_string(), "missing properties: p");
}
