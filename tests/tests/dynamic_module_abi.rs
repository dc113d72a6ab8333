//! The native build's foundation inside the real Envoy 1.40: `edgeguard-dynamic-module` (our
//! own bindings for the dynamic-module ABI `v0.2.0`) proven by loading the test-only smoke
//! module `libedgeguard_dm_smoke.so` (filters/dynamic-module-smoke) behind the `edgeguard echo`
//! upstream: header bytes in and out, local replies, panics caught at the ABI boundary (the
//! request gets a 500, Envoy keeps serving, a log line and a counter), a header value that is
//! not UTF-8, the configuration bytes Envoy passes for each `Any` type, metrics, callouts from a
//! stream and from the configuration (background), the schedulers, and refused configurations.
//!
//! The ABI guard: every callback the bindings import is exported by this Envoy (`nm -D`), the
//! module exports exactly the hooks the bindings list and Envoy knows each of them, and Envoy
//! refuses the module when any required hook is missing (and only then).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edgeguard_dynamic_module::abi;
use edgeguard_tests::envoy::{
    dynamic_module_filter, dynamic_module_filter_any, Envoy, EnvoyConfig,
};
use edgeguard_tests::http::Resp;
use edgeguard_tests::process::{eventually, Echo};
use edgeguard_tests::tools;
use serde_json::json;

const MODULE: &str = "edgeguard_dm_smoke";
const GOOD_AFTER_EACH: usize = 20;

fn smoke(config_json: &str) -> serde_json::Value {
    dynamic_module_filter(MODULE, "smoke", config_json)
}

fn start(echo: &Echo, filters: Vec<serde_json::Value>) -> Envoy {
    // the module must be built (make native-modules); fail with that hint otherwise
    tools::native_module(MODULE);
    let mut cfg = EnvoyConfig::new(echo.port, filters);
    cfg.concurrency = 1; // every good request after a bad one runs on the same worker
    Envoy::start(&cfg)
}

fn good(envoy: &Envoy, what: &str) {
    for i in 0..GOOD_AFTER_EACH {
        let r = envoy.get("/good", &[("x-smoke-in", "ok")]);
        assert_eq!(r.status, 200, "good request {i} after {what}: {}", r.body);
        assert_eq!(r.echoed("x-smoke-len").as_deref(), Some("2"));
    }
}

fn assert_internal_error(r: &Resp, what: &str) {
    assert_eq!(r.status, 500, "{what}: {}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    let v = r.json();
    assert_eq!(v["code"], 500, "{what}: {}", r.body);
    assert_eq!(v["message"], "internal error in filter smoke", "{what}");
}

#[test]
fn smoke_module_reads_and_writes_headers_replies_and_counts() {
    let echo = Echo::start();
    let config = r#"{"smoke": "config", "bytes": "as sent"}"#;
    let envoy = start(&echo, vec![smoke(config)]);

    let r = envoy.request(
        "GET",
        "/v1/items?x=1",
        &[
            ("x-smoke-in", "hello"),
            ("x-smoke-remove-me", "secret"),
            ("x-smoke-multi", "a"),
            ("x-smoke-multi", "b"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // request headers as the upstream saw them
    assert_eq!(r.echoed("x-smoke-len").as_deref(), Some("5"));
    assert_eq!(r.echoed("x-smoke-remove-me"), None, "removed by the module");
    assert_eq!(r.echoed("x-smoke-multi-count").as_deref(), Some("2"));
    assert_eq!(r.echoed("x-smoke-path").as_deref(), Some("/v1/items?x=1"));
    assert_eq!(r.echoed("x-smoke-method").as_deref(), Some("GET"));
    assert!(
        r.echoed("x-smoke-source")
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{:?}",
        r.echoed("x-smoke-source")
    );
    assert_eq!(r.echoed("x-smoke-worker").as_deref(), Some("0"));
    let count: usize = r
        .echoed("x-smoke-header-count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(count >= 6, "all request headers, each value once: {count}");
    // response headers
    assert_eq!(r.header("x-smoke-len"), Some("5"));
    assert_eq!(
        r.header("x-smoke-config"),
        Some(config),
        "the bytes as sent"
    );
    // a gauge set from the stream
    assert_eq!(envoy.metric("envoy_edgeguard_smoke_in_len"), 5.0);

    // removing a response header the upstream sent
    let r = envoy.get(
        "/vary",
        &[("x-echo-vary", "x-foo"), ("x-smoke-strip-vary", "1")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("vary"), None);
    let r = envoy.get("/vary", &[("x-echo-vary", "x-foo")]);
    assert_eq!(r.header("vary"), Some("x-foo"));

    // a local reply with the requested status, headers and body
    let r = envoy.get("/reply", &[("x-smoke-reply", "418")]);
    assert_eq!(r.status, 418, "{}", r.body);
    assert_eq!(r.header("x-smoke-replied"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], 418);
    let r = envoy.get("/reply", &[("x-smoke-reply", "nope")]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 400);

    // the counter defined by the module, on Envoy's stats
    let before = envoy.metric("envoy_edgeguard_smoke_requests");
    good(&envoy, "the header checks");
    let after = envoy.metric("envoy_edgeguard_smoke_requests");
    assert_eq!(after - before, GOOD_AFTER_EACH as f64);
    assert_eq!(envoy.metric("envoy_edgeguard_module_panics"), 0.0);
}

#[test]
fn a_panic_in_any_hook_is_a_500_and_envoy_keeps_serving() {
    let echo = Echo::start();
    let mut envoy = start(&echo, vec![smoke("{}")]);
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("on_request_headers", &[("x-smoke-panic", "1")]),
        ("on_response_headers", &[("x-smoke-panic-in", "response")]),
        (
            "on_scheduled",
            &[("x-smoke-panic-in", "scheduled"), ("x-smoke-park", "10")],
        ),
        (
            "on_callout_done",
            &[("x-smoke-panic-in", "callout"), ("x-smoke-callout", "/c")],
        ),
    ];
    for (n, (hook, headers)) in cases.iter().enumerate() {
        let r = envoy.get("/boom", headers);
        assert_internal_error(&r, hook);
        assert!(envoy.proc.running(), "Envoy died after a panic in {hook}");
        good(&envoy, hook);
        assert_eq!(
            envoy.metric("envoy_edgeguard_module_panics"),
            (n + 1) as f64,
            "counted: {hook}"
        );
        let log = envoy.log();
        let line = format!("filter \"smoke\": panic in {hook}: smoke: panic requested");
        assert!(log.contains(&line), "no log line {line:?} in:\n{log}");
    }
    // one line per panic, nothing else went wrong
    let log = envoy.log();
    assert_eq!(log.matches("panic in on_").count(), cases.len(), "{log}");
    assert!(!log.contains("panic outside an Envoy hook"), "{log}");
}

#[test]
fn a_panic_while_creating_the_stream_filter_is_a_500_too() {
    let echo = Echo::start();
    let mut envoy = start(&echo, vec![smoke(r#"{"panic_in_new_filter": true}"#)]);
    for i in 1..=5 {
        let r = envoy.get("/new", &[]);
        assert_internal_error(&r, "new_filter");
        assert!(envoy.proc.running());
        assert_eq!(envoy.metric("envoy_edgeguard_module_panics"), i as f64);
    }
    let log = envoy.log();
    assert!(
        log.contains("filter \"smoke\": panic in new_filter: smoke: panic requested in new_filter"),
        "{log}"
    );
}

#[test]
fn a_header_value_that_is_not_utf8_is_read_as_bytes() {
    let echo = Echo::start();
    let envoy = start(&echo, vec![smoke("{}")]);
    for (what, value) in [
        ("latin-1", b"caf\xe9".as_slice()),
        ("a lone continuation byte", b"\x80"),
        ("an overlong encoding", b"\xc0\xafx"),
    ] {
        let r = envoy.request_bytes("GET", b"/bytes", &[("x-smoke-in", value)]);
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        let len = value.len().to_string();
        assert_eq!(r.header("x-smoke-len"), Some(len.as_str()), "{what}");
        assert_eq!(r.echoed("x-smoke-len"), Some(len), "{what}");
        good(&envoy, what);
    }
    assert_eq!(envoy.metric("envoy_edgeguard_module_panics"), 0.0);
}

#[test]
fn callouts_and_schedulers_resume_paused_requests_and_the_configuration_works_in_the_background() {
    let echo = Echo::start();
    // the configuration's ticker thread commits a main-thread event every 100 ms; each event
    // sends GET /smoke-background to the upstream cluster from the configuration
    let config = json!({"callout_cluster": "upstream", "tick_ms": 100}).to_string();
    let envoy = start(&echo, vec![smoke(&config)]);

    // a stream-level callout: the request waits for it, then goes on with its result
    let r = envoy.get("/after-callout", &[("x-smoke-callout", "/inner?q=1")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echoed("x-smoke-callout-status").as_deref(), Some("200"));
    let body_len: usize = r
        .echoed("x-smoke-callout-body-bytes")
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    assert!(body_len > 20, "the echo's JSON came back: {body_len}");
    assert_eq!(r.echoed_path(), "/after-callout");
    // a callout to a cluster that does not exist fails at once, the request goes on
    let r = envoy.get(
        "/after-callout",
        &[
            ("x-smoke-callout", "/x"),
            ("x-smoke-callout-cluster", "nope"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.echoed("x-smoke-callout-status").as_deref(),
        Some("cluster not found")
    );

    // a parked request, woken from another thread through the stream scheduler
    for ms in ["1", "50"] {
        let r = envoy.get("/parked", &[("x-smoke-park", ms)]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.echoed("x-smoke-parked").as_deref(), Some("yes"));
    }

    // background: configuration-level callouts keep happening, on the main thread
    eventually("3 background callouts", Duration::from_secs(10), || {
        envoy.metric("envoy_edgeguard_smoke_background_callouts") >= 3.0
    });
    let r = envoy.get("/bg", &[]);
    let bg = r
        .header("x-smoke-background")
        .unwrap_or_default()
        .to_string();
    assert!(bg.contains("status=200"), "{bg}");
    assert!(bg.contains("failed=0"), "{bg}");
    good(&envoy, "callouts");
}

#[test]
fn configuration_bytes_for_each_any_type() {
    let echo = Echo::start();
    let filters = vec![
        dynamic_module_filter_any(
            MODULE,
            "string",
            json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"a\": [1, \"x\"]}"}),
        ),
        dynamic_module_filter_any(
            MODULE,
            "bytes",
            // base64 of b"raw\x00\xff"
            json!({"@type": "type.googleapis.com/google.protobuf.BytesValue", "value": "cmF3AP8="}),
        ),
        dynamic_module_filter_any(
            MODULE,
            "struct",
            json!({"@type": "type.googleapis.com/google.protobuf.Struct", "value": {"b": true, "a": [1, "x"]}}),
        ),
    ];
    let envoy = start(&echo, filters);
    let r = envoy.get("/cfg", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    // StringValue: the string's bytes, exactly
    assert_eq!(
        r.header("x-smoke-config-string"),
        Some("{\"a\": [1, \"x\"]}")
    );
    // BytesValue: the raw bytes, exactly
    assert_eq!(r.header("x-smoke-config-bytes"), Some("hex:72617700ff"));
    // Struct: Envoy renders it as compact JSON (key order not stable: a protobuf map)
    let rendered = r.header("x-smoke-config-struct").unwrap_or_default();
    assert!(!rendered.contains(' '), "compact: {rendered}");
    let v: serde_json::Value = serde_json::from_str(rendered).expect("Struct arrives as JSON");
    assert_eq!(v, json!({"a": [1, "x"], "b": true}));
}

#[test]
fn refused_configurations_stop_envoy_with_one_clear_line() {
    let echo = Echo::start();
    tools::native_module(MODULE);
    for (config, line) in [
        (
            r#"{"refuse": "field x: must be set"}"#,
            "filter \"smoke\": configuration refused: field x: must be set",
        ),
        (
            r#"{"panic": true}"#,
            "filter \"smoke\": panic while creating the configuration: smoke: panic requested by the configuration",
        ),
        (
            "not json",
            "filter \"smoke\": configuration refused: configuration is not JSON",
        ),
    ] {
        let cfg = EnvoyConfig::new(echo.port, vec![smoke(config)]);
        let log = match Envoy::try_start(&cfg) {
            Ok(_) => panic!("Envoy accepted {config}"),
            Err(log) => log,
        };
        assert!(log.contains(line), "no {line:?} in:\n{log}");
        assert!(
            log.contains("Failed to initialize dynamic module"),
            "Envoy's own refusal for {config}:\n{log}"
        );
    }
}

/// Names in the dynamic symbol table of an ELF file (`nm -D`, `--defined-only` or
/// `--undefined-only`).
fn dynamic_symbols(file: &Path, which: &str) -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-D", which])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (binutils): {e}"));
    assert!(out.status.success(), "nm failed on {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

#[test]
fn abi_guard_every_imported_callback_is_exported_by_this_envoy() {
    let envoy = tools::envoy();
    let exported_by_envoy = dynamic_symbols(&envoy, "--defined-only");
    let callbacks: BTreeSet<&String> = exported_by_envoy
        .iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(
        callbacks.len() > 100,
        "{} exports only {} dynamic-module callbacks: not an Envoy with dynamic modules?",
        envoy.display(),
        callbacks.len()
    );
    // 1. what the bindings declare (abi::IMPORTED, checked against the extern block by the
    //    crate's unit test) is all there
    let missing: Vec<&&str> = abi::IMPORTED
        .iter()
        .filter(|name| !exported_by_envoy.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "this Envoy ({}) does not export {missing:?}: the dynamic-module ABI changed, update \
         filters/dynamic-module/src/abi.rs",
        envoy.display()
    );

    // 2. what the built module really imports (its undefined dynamic symbols) is all there
    let module = tools::native_module(MODULE);
    let imported_by_module: Vec<String> = dynamic_symbols(&module, "--undefined-only")
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_"))
        .collect();
    assert!(!imported_by_module.is_empty());
    for name in &imported_by_module {
        assert!(
            exported_by_envoy.contains(name),
            "the module imports {name}, which this Envoy does not export"
        );
        assert!(
            abi::IMPORTED.contains(&name.as_str()),
            "{name} is not in abi::IMPORTED"
        );
    }

    // 3. the module exports exactly the hooks the bindings list, and Envoy knows each name
    let hooks: BTreeSet<String> = dynamic_symbols(&module, "--defined-only")
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_on_"))
        .collect();
    let listed: BTreeSet<String> = abi::EXPORTED_HOOKS.iter().map(|s| s.to_string()).collect();
    assert_eq!(hooks, listed, "exported hooks vs abi::EXPORTED_HOOKS");
    let strings = Command::new("strings")
        .args(["-n", "24"])
        .arg(&envoy)
        .output()
        .unwrap_or_else(|e| panic!("cannot run strings (binutils): {e}"));
    let known: BTreeSet<String> = String::from_utf8_lossy(&strings.stdout)
        .lines()
        .filter(|l| l.starts_with("envoy_dynamic_module_on_"))
        .map(str::to_string)
        .collect();
    for hook in &hooks {
        assert!(known.contains(hook), "Envoy never looks up {hook}");
    }
}

/// The experiment behind `abi::EXPORTED_HOOKS`' "first 21 are required": for each exported
/// hook, a copy of the module whose dynamic symbol of that name is renamed (one byte), loaded
/// by Envoy. Envoy must refuse the configuration naming that symbol for every hook but the two
/// configuration-level ones. 23 Envoy starts, but a refused one exits at once (~2 s in all).
/// If a new Envoy relaxes or adds a requirement this fails: update `abi::EXPORTED_HOOKS` and
/// docs/dynamic-modules.md.
#[test]
fn envoy_requires_every_hook_but_the_two_background_ones() {
    let echo = Echo::start();
    let module = std::fs::read(tools::native_module(MODULE)).expect("read module");
    let optional = [
        "envoy_dynamic_module_on_http_filter_config_scheduled",
        "envoy_dynamic_module_on_http_filter_config_http_callout_done",
    ];
    for hook in abi::EXPORTED_HOOKS {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("{hook}\0");
        let mut renamed = name.clone().into_bytes();
        renamed[0] = b'X';
        let count = module
            .windows(name.len())
            .filter(|w| *w == name.as_bytes())
            .count();
        assert_eq!(count, 1, "{hook} appears {count} times in the module");
        let at = module
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .expect("found");
        let mut patched = module.clone();
        patched[at..at + name.len()].copy_from_slice(&renamed);
        std::fs::write(dir.path().join(format!("lib{MODULE}.so")), &patched).expect("write");
        let cfg = EnvoyConfig::new(echo.port, vec![smoke("{}")]).with_env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            &dir.path().to_string_lossy(),
        );
        match Envoy::try_start(&cfg) {
            Ok(e) => {
                assert!(
                    optional.contains(hook),
                    "Envoy loaded the module without {hook}"
                );
                assert_eq!(e.get("/", &[]).status, 200);
            }
            Err(log) => {
                assert!(!optional.contains(hook), "{hook} is optional:\n{log}");
                assert!(
                    log.contains(&format!("Failed to resolve symbol {hook}")),
                    "{hook}:\n{log}"
                );
            }
        }
    }
}
