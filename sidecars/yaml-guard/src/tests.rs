#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use super::*;
use proptest::prelude::*;
use serde_yaml_ng::Value;

/// The real nesting depth of a parsed document (collections only).
fn depth(v: &Value) -> usize {
    match v {
        Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
        Value::Mapping(m) => {
            1 + m
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => depth(&t.value),
        _ => 0,
    }
}

/// Asserts the bound holds for a document serde_yaml_ng parses.
fn bound_holds(text: &str) {
    if let Ok(v) = serde_yaml_ng::from_str::<Value>(text) {
        let (real, bound) = (depth(&v), depth_bound(text));
        assert!(
            real <= bound,
            "real depth {real} > bound {bound} for {text:?}"
        );
    }
}

#[test]
fn counts_flow_and_block_nesting() {
    let cases: &[(&str, usize)] = &[
        ("[[[1]]]", 3),
        ("a: {b: [c, {d: 1}]}", 4),
        ("a:\n  b:\n    c: 1\n", 3),
        // a sequence at the key's column is a level of its own
        ("a:\n- b:\n  - c:\n    - d:\n      - 1\n", 8),
        ("- - - - x\n", 4),
        ("- a: 1\n  b:\n  - [x]\n", 4),
        ("[\n [\n  [1]\n ]\n]\n", 3),
        ("? [a, [b]]\n: 1\n", 3),
    ];
    for (text, real) in cases {
        let v: Value = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(depth(&v), *real, "{text:?}");
        let bound = depth_bound(text);
        assert!(
            bound >= *real && bound <= 2 * real + 1,
            "{text:?}: bound {bound}"
        );
    }
}

#[test]
fn text_that_only_looks_nested_does_not_count() {
    let deep = "[".repeat(200);
    let cases = [
        format!("a: \"{deep}\"\n"),
        format!("a: '{deep}''{deep}'\n"),
        format!("a: \"x\\\"{deep}\"\n"),
        format!("a: x # {deep}\n"),
        format!("# {deep}\na: 1\n"),
        format!("a: x{deep}\n"),
        format!("a: |\n  {deep}\n  {deep}\nb: 1\n"),
        format!("- >-\n   {deep}\n\n   {deep}\n- 1\n"),
        format!("a: first line\n  {deep}\n  '{deep}\nb: 1\n"),
        format!("a: \"multi\n  line {deep}\n  \"\n"),
        format!("a: !tag{deep} x\n"),
    ];
    for text in &cases {
        let bound = depth_bound(text);
        assert!(bound < 10, "{text:?}: bound {bound}");
        bound_holds(text);
    }
}

/// Documents the property tests found where an earlier scanner counted too little.
#[test]
fn found_by_fuzzing() {
    for text in [
        "?\n  &- : \n  - ",
        "&bb: 0  ab0aa\n  ba- 0ba\n    0- - |  - ",
        "[a: b\n  \n-   b'x''x'|\n  !t     0a]\n  ",
        "{a: 0!t b}: |\n  a\n",
    ] {
        let v: Value = serde_yaml_ng::from_str(text).unwrap();
        assert!(depth(&v) <= depth_bound(text), "{text:?}");
    }
}

#[test]
fn hostile_nesting_is_refused_at_once() {
    let n = 100_000;
    for text in [
        "[".repeat(n),
        format!("apps: {}", "[".repeat(n)),
        "{a: ".repeat(n),
        "[\n".repeat(n),
        "- ".repeat(n) + "x",
        (0..n)
            .map(|i| format!("{}k:\n", " ".repeat(i % 2000)))
            .collect(),
        format!("a: x\n  'y\nb: {}\nc: '\n", "[".repeat(n)),
        format!("a: x\r  'y\rb: {}\rc: '\r", "[".repeat(n)),
        format!("a: x\u{2028}  'y\u{2028}b: {}", "[".repeat(n)),
    ] {
        let e = check_depth(&text, MAX_DEPTH).unwrap_err().to_string();
        assert!(
            e.starts_with("nested more than 64 levels deep at line "),
            "{e}"
        );
    }
    let e = check_depth(&format!("apps:\n  - {}", "[".repeat(100)), 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at line 2 column "), "{e}");
    // a flow sequence counts two levels, plus one where it may be a mapping key
    assert!(check_depth(&"[".repeat(31), 64).is_ok());
    assert!(check_depth(&"[".repeat(32), 64).is_err());
}

#[test]
fn sizes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.yaml");
    std::fs::write(&p, "x".repeat(100)).unwrap();
    assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
    let e = read_limited(&p, 99).unwrap_err().to_string();
    assert_eq!(e, "the file is 100 bytes, more than the limit of 99 bytes");
    assert!(read_limited(&dir.path().join("none"), 1).is_err());
}

#[test]
fn shipped_files_are_far_from_the_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for f in [
        "envoy/demo/portal-apps.yaml",
        "envoy/xds/demo.yaml",
        "compose/xds/xds.yaml",
    ] {
        let p = root.join(f);
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let bound = depth_bound(&text);
        assert!(bound <= 16, "{f}: {bound}");
        bound_holds(&text);
    }
}

fn value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i32>().prop_map(serde_json::Value::from),
        "[a-z\\[\\]{}#:' \"-]{0,6}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z#:\\[]{1,3}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Documents written by a YAML emitter (block style), as JSON (flow style), and the two
    /// mixed: the bound is never below the real depth.
    #[test]
    fn never_below_the_real_depth_of_emitted_documents(v in value(), w in value()) {
        let block = serde_yaml_ng::to_string(&v).unwrap();
        bound_holds(&block);
        bound_holds(&v.to_string());
        let mixed = format!("a:\n  b: {}\n  c:\n{}", w, block.lines().map(|l| format!("  {l}\n")).collect::<String>());
        bound_holds(&mixed);
        let seq = format!("- {}\n- - {}\n", w, v);
        bound_holds(&seq);
    }

    /// Arbitrary text over YAML's structural characters: whenever it parses, the bound is
    /// never below the real depth.
    #[test]
    fn never_below_the_real_depth_of_arbitrary_text(
        text in "([-:?\\[\\]{},'\"#|>&*! \\n\\r\\t]|a|b|0|  |- |: |\\n  |\\n- |k: |&a |\\*a|!t |\\|\\n  |'x'|\"y\"){0,60}"
    ) {
        bound_holds(&text);
    }
}
