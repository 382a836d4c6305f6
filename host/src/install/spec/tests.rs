use super::*;

fn problems(text: &str) -> Vec<String> {
    check(Path::new("/base"), text)
        .1
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_problem_is_listed_with_entry_and_field() {
    let p = problems(
        "capabilities:\n\
         - name: a\n  kind: wasm\n\
         - name: a\n  kind: rust\n\
         - kind: native\n  command: [x]\n\
         - name: b\n  package: p\n  colour: red\n",
    );
    assert_eq!(
        p,
        [
            "capabilities[0] (a): component: required field is missing (give `component: path.wasm` or `cargo: <package>`)",
            "capabilities[1] (a): name: duplicate capability name \"a\"",
            "capabilities[1] (a): kind: unknown kind \"rust\" (expected one of wasm, python, native)",
            "capabilities[2]: name: required field is missing",
            "capabilities[3] (b): colour: unknown key for kind python (expected one of adapters, env_file, env_manager, env_name, env_vars, interface_libs, kind, name, package, python, python_version, substrate)",
        ]
    );
}

#[test]
fn python_tool_entries_load_unchanged() {
    let (entries, p) = check(
        Path::new("/base"),
        "capabilities:\n- name: cjm-capability-x\n  env_name: x-env\n  package: cjm-capability-x>=0.1\n  python_version: 3.12\n  interface_libs: [cjm-a]\n  adapters:\n  - impl: m.a:A\n    lib: cjm-lib\n",
    );
    assert!(p.is_empty(), "{p:?}");
    let Source::Python(py) = &entries[0].source else {
        panic!("python")
    };
    assert_eq!(py.env_name, "x-env");
    assert_eq!(py.python.as_deref(), Some("3.12"));
    assert_eq!(py.adapters[0].lib.as_deref(), Some("cjm-lib"));
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let (entries, p) = check(
        Path::new("/base"),
        "capabilities:\n- {name: w, kind: wasm, component: c/x.wasm, sandbox: {max_concurrency: 2}}\n- {name: nat, kind: native, command: [bin/w, --q]}\n- {name: p, package: ./pkg}\n",
    );
    assert!(p.is_empty(), "{p:?}");
    assert!(
        matches!(&entries[0].source, Source::Wasm(w) if w.component == Component::File("/base/c/x.wasm".into()) && w.sandbox.max_concurrency == 2)
    );
    assert!(matches!(&entries[1].source, Source::Native(n) if n.command == ["/base/bin/w", "--q"]));
    assert!(matches!(&entries[2].source, Source::Python(py) if py.package == "/base/pkg"));
}

#[test]
fn bad_grants_and_adapters_are_each_reported() {
    let p = problems(
        "capabilities:\n- name: w\n  kind: wasm\n  component: x.wasm\n  sandbox: {mdoe: rw, pool_size: lots}\n- name: p\n  package: q\n  adapters: [{impl: nocolon}, {lib: 3}]\n",
    );
    assert_eq!(p.len(), 5, "{p:#?}");
    assert!(p[0].contains("sandbox.mdoe: unknown grant"));
    assert!(p[1].contains("sandbox.pool_size"));
    assert!(p[2].contains("adapters[0].impl: expected 'module:ClassName'"));
    assert!(p[3].contains("adapters[1].impl: required field is missing"));
    assert!(p[4].contains("adapters[1].lib"));
}

#[test]
fn top_level_shape_is_checked() {
    assert_eq!(
        problems("[1, 2]"),
        ["<root>: expected a mapping with a `capabilities:` list, found a list"]
    );
    assert_eq!(
        problems("caps: []"),
        [
            "<root>: caps: unknown key (expected only `capabilities`)",
            "<root>: capabilities: required field is missing"
        ]
    );
}

#[test]
fn a_native_worker_is_a_command_or_a_cargo_package() {
    let (entries, p) = check(
        Path::new("/base"),
        "capabilities:\n- {name: nat, kind: native, cargo: my-worker}\n- {name: mat, kind: native, cargo: w, workspace: ws}\n",
    );
    assert!(p.is_empty(), "{p:?}");
    let Source::Native(n) = &entries[0].source else {
        panic!("native")
    };
    assert!(n.command.is_empty());
    let c = n.cargo.as_ref().unwrap();
    assert_eq!(
        (c.package.as_str(), c.workspace.as_path()),
        ("my-worker", Path::new("/base"))
    );
    let Source::Native(m) = &entries[1].source else {
        panic!("native")
    };
    assert_eq!(
        m.cargo.as_ref().unwrap().workspace,
        Path::new("/base/ws").to_path_buf()
    );
    assert_eq!(
        problems(
            "capabilities:\n- {name: aa, kind: native, cargo: w, command: [x]}\n- {name: bb, kind: native}\n- {name: cc, kind: native, command: [x], workspace: .}\n"
        ),
        [
            "capabilities[0] (aa): command: give either `command` (a program) or `cargo` (a package to build), not both",
            "capabilities[1] (bb): command: required field is missing (expected [program, args...], or `cargo: <package>`)",
            "capabilities[2] (cc): workspace: only meaningful with `cargo`",
        ]
    );
}
