//! The shipped manifests carry configurations that work. Every place in istio/ and compose/
//! that configures an edgeguard filter is read back here, and what it ships is loaded into a
//! real Envoy with the built `.wasm` or native module (`lib*.so`); only the module's location
//! (an OCI image or a container path there, a local file here) and network addresses are the
//! test's:
//!
//! - WasmPlugin `pluginConfig` + `vmConfig.env` (istio/istio)
//! - EnvoyFilter ECDS `typed_config`, verbatim (istio/istio/envoyfilter; the native modules'
//!   DynamicModuleFilter in istio/istio/native, loaded by name from the module folder)
//! - EnvoyExtensionPolicy `wasm[].config` + `env.hostKeys` (istio/envoy-gateway), and
//!   `dynamicModule[].config` (istio/envoy-gateway/native) loaded the way Envoy Gateway 1.9
//!   translates it: the module by the path of its EnvoyProxy allowlist entry, the configuration
//!   as JSON text, no metrics namespace
//! - the compose Envoy bootstrap's HTTP filters, verbatim (compose/envoy/envoy.yaml), and the
//!   whole bootstrap, run as shipped
//! - `filters[]` of the `edgeguard xds` files (istio/kubernetes/xds-config.yaml, compose/xds/xds.yaml)
//!
//! Each native copy carries the configuration of the wasm copy it replaces (same object name).
//!
//! jwt-shape: every copy is the documented production variant of `envoy/demo/jwt-shape.json`
//! (the same providers and rules; the HMAC and Electric secrets named by `secret_env` /
//! `electric_secret_env` instead of written out), and with the demo's secrets in the
//! environment each copy admits a token `edgeguard token` would mint and refuses the rest.
//!
//! portal-auth's copies are started the same way, each with its store cluster pointing at a
//! real `edgeguard authz` serving the demo apps (`shipped_portal_auth_configs_work_in_envoy`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgeguard_tests::authz::Authz;
use edgeguard_tests::envoy::{
    cluster, metric_value, wasm_filter, Envoy, EnvoyConfig, DYNAMIC_MODULE_METRICS_NAMESPACE,
    STORE_TOKEN,
};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::http::{self, Resp};
use edgeguard_tests::keys::{now, TestKey};
use edgeguard_tests::process::{free_port, Echo, Proc};
use edgeguard_tests::tools;
use serde::Deserialize;
use serde_json::{json, Value};

const DEMO_SECRET: &str = "edgeguard-demo-secret-not-for-production-0001";
const DEMO_ELECTRIC_SECRET: &str = "demo-electric-secret";
/// The environment variables the production variant reads its secrets from.
const JWT_SHAPE_ENV: [&str; 2] = ["EDGEGUARD_JWT_SECRET", "EDGEGUARD_ELECTRIC_SECRET"];
const DYNAMIC_MODULE_FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// Envoy's metrics namespace for a dynamic module whose configuration names none (Envoy
/// Gateway 1.9 names none).
const DEFAULT_METRICS_NAMESPACE: &str = "dynamicmodulescustom";

// ------------------------------------------------------------------------------ reading

/// Every YAML document of a shipped file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = tools::repo_file(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn shipped_yaml_files(dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "yaml") {
                out.push(p);
            }
        }
    }
    let root = tools::root();
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files);
    files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// One place that configures a filter, and the Envoy HTTP filter it amounts to.
#[derive(Clone, Debug)]
struct Shipped {
    /// file and object, for messages
    source: String,
    /// the object that carries it (`EnvoyFilter/edgeguard-jwt-shape`; empty outside istio/)
    object: String,
    /// the configuration the filter receives (`on_configure`, `config_new`), parsed
    config: Value,
    /// wasm: the host environment variables passed into the VM (exactly what it can read);
    /// native: the variables the manifest puts in Envoy's environment, which the module reads
    /// directly (none for Istio: the README's Secret patch, as for the wasm build)
    env: Vec<String>,
    /// the HTTP filter to load (module path rewritten to the built `.wasm` / `.so`)
    http_filter: Value,
    flavour: Flavour,
    /// how the filter's metric names start on `/stats/prometheus`: `edgeguard_` (wasm),
    /// `envoy_<metrics namespace>_` (native)
    metrics: String,
}

impl Shipped {
    /// The value of one of the filter's metrics, e.g. `jwt_shape_allowed`.
    fn metric(&self, envoy: &Envoy, name: &str) -> f64 {
        metric_value(&envoy.prometheus(), &format!("{}{name}", self.metrics))
    }
}

/// Every shipped copy of a filter's configuration: `image` is the OCI image / crate name
/// (`jwt-shape`), `module` the `.wasm` file stem (`jwt_shape`).
fn shipped(image: &str, module: &str) -> Vec<Shipped> {
    let wasm = tools::wasm(module);
    let oci = format!("/{image}:");
    let native = format!("edgeguard_{module}");
    let mut out = Vec::new();
    let built = |name: &str, config: &Value, env: &[String]| -> Value {
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        wasm_filter(name, &wasm, &config.to_string(), &env)
    };
    let allowlists = envoy_proxy_allowlists();

    for file in shipped_yaml_files("istio") {
        for doc in yaml_docs(&file) {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let obj = format!(
                "{file} {kind}/{}",
                doc["metadata"]["name"].as_str().unwrap_or_default()
            );
            let spec = &doc["spec"];
            match kind {
                "WasmPlugin" if spec["url"].as_str().is_some_and(|u| u.contains(&oci)) => {
                    let config = spec["pluginConfig"].clone();
                    let env: Vec<String> = spec["vmConfig"]["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|e| e["valueFrom"] == "HOST")
                        .filter_map(|e| e["name"].as_str().map(String::from))
                        .collect();
                    assert_eq!(
                        spec["failStrategy"], "FAIL_RELOAD",
                        "{obj}: must fail closed and reload a VM that dies"
                    );
                    out.push(Shipped {
                        source: format!("{obj} pluginConfig"),
                        object: object(&doc),
                        http_filter: built(image, &config, &env),
                        config,
                        env,
                        flavour: Flavour::Wasm,
                        metrics: "edgeguard_".into(),
                    });
                }
                "EnvoyFilter" => {
                    for patch in spec["configPatches"].as_array().into_iter().flatten() {
                        let value = &patch["patch"]["value"];
                        let tc = &value["typed_config"];
                        if patch["applyTo"] == "EXTENSION_CONFIG"
                            && tc["@type"] == DYNAMIC_MODULE_FILTER
                            && tc["dynamic_module_config"]["name"] == native.as_str()
                        {
                            let name = value["name"].as_str().unwrap_or_default();
                            let source = format!("{obj} EXTENSION_CONFIG {name}");
                            assert!(
                                spec["configPatches"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .any(|p| p["applyTo"] == "HTTP_FILTER"
                                        && p["patch"]["value"]["name"] == name
                                        && p["patch"]["value"]["config_discovery"]["type_urls"][0]
                                            == DYNAMIC_MODULE_FILTER),
                                "{obj}: no HTTP_FILTER patch inserts {name}"
                            );
                            out.push(verbatim_native(&source, &doc, name, tc, module));
                            continue;
                        }
                        let uri =
                            tc["config"]["vm_config"]["code"]["remote"]["http_uri"]["uri"].as_str();
                        if patch["applyTo"] != "EXTENSION_CONFIG"
                            || !uri.is_some_and(|u| u.contains(&oci))
                        {
                            continue;
                        }
                        let name = value["name"].as_str().unwrap_or_default();
                        // the HTTP_FILTER patch that inserts it by name (over ECDS)
                        assert!(
                            spec["configPatches"].as_array().into_iter().flatten().any(|p| p["applyTo"] == "HTTP_FILTER"
                                && p["patch"]["value"]["name"] == name
                                && p["patch"]["value"]["config_discovery"]["type_urls"][0]
                                    == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"),
                            "{obj}: no HTTP_FILTER patch inserts {name}"
                        );
                        out.push(verbatim(
                            &format!("{obj} EXTENSION_CONFIG {name}"),
                            &object(&doc),
                            name,
                            &value["typed_config"],
                            &wasm,
                        ));
                    }
                }
                "EnvoyExtensionPolicy" => {
                    for w in spec["wasm"].as_array().into_iter().flatten() {
                        if !w["code"]["image"]["url"]
                            .as_str()
                            .is_some_and(|u| u.contains(&oci))
                        {
                            continue;
                        }
                        assert_ne!(w["failOpen"], true, "{obj}: must fail closed");
                        let config = w["config"].clone();
                        let env: Vec<String> = w["env"]["hostKeys"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect();
                        out.push(Shipped {
                            source: format!(
                                "{obj} wasm[{}].config",
                                w["name"].as_str().unwrap_or_default()
                            ),
                            object: object(&doc),
                            http_filter: built(image, &config, &env),
                            config,
                            env,
                            flavour: Flavour::Wasm,
                            metrics: "edgeguard_".into(),
                        });
                    }
                    for m in spec["dynamicModule"].as_array().into_iter().flatten() {
                        let name = m["name"].as_str().unwrap_or_default();
                        let Some((entry, proxy_env)) = allowlists.get(name) else {
                            panic!("{obj}: dynamicModule {name} is in no EnvoyProxy allowlist under istio/");
                        };
                        let path = entry["source"]["local"]["path"]
                            .as_str()
                            .unwrap_or_default();
                        if Path::new(path).file_name() != Some(format!("lib{native}.so").as_ref()) {
                            continue;
                        }
                        let source = format!("{obj} dynamicModule[{name}].config");
                        out.push(envoy_gateway_native(
                            &source, &doc, m, entry, proxy_env, &native,
                        ));
                    }
                }
                "ConfigMap" => {
                    for (key, text) in doc["data"].as_object().into_iter().flatten() {
                        if key.ends_with(".yaml") {
                            let xds: Value =
                                serde_yaml_ng::from_str(text.as_str().unwrap_or_default())
                                    .unwrap_or_else(|e| panic!("{obj} {key}: {e}"));
                            out.extend(from_xds(&format!("{obj} {key}"), &xds, image, &built));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // compose: the Envoy bootstrap's HTTP filters, and what edgeguard xds serves it
    let boot = compose_bootstrap();
    for f in http_filters(&boot) {
        let file = f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"].as_str();
        if file.is_some_and(|p| p.ends_with(&format!("/{module}.wasm"))) {
            let name = f["name"].as_str().unwrap_or_default();
            out.push(verbatim(
                &format!("compose/envoy/envoy.yaml http_filters {name}"),
                "",
                name,
                &f["typed_config"],
                &wasm,
            ));
        }
    }
    let xds = yaml_docs("compose/xds/xds.yaml").remove(0);
    out.extend(from_xds("compose/xds/xds.yaml", &xds, image, &built));
    out
}

/// `filters[]` entries of an `edgeguard xds` file.
fn from_xds(
    source: &str,
    xds: &Value,
    image: &str,
    built: &dyn Fn(&str, &Value, &[String]) -> Value,
) -> Vec<Shipped> {
    xds["filters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["type"] == image)
        .map(|f| {
            assert_ne!(f["fail_open"], true, "{source}: must fail closed");
            let env: Vec<String> = f["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(String::from))
                .collect();
            Shipped {
                source: format!(
                    "{source} filters[{}]",
                    f["name"].as_str().unwrap_or_default()
                ),
                object: String::new(),
                http_filter: built(image, &f["config"], &env),
                config: f["config"].clone(),
                env,
                flavour: Flavour::Wasm,
                metrics: "edgeguard_".into(),
            }
        })
        .collect()
}

/// A shipped Wasm `typed_config`, loaded as is except for where the module comes from.
fn verbatim(source: &str, object: &str, name: &str, typed_config: &Value, wasm: &Path) -> Shipped {
    let mut tc = typed_config.clone();
    let c = &tc["config"];
    assert_eq!(
        c["failure_policy"], "FAIL_RELOAD",
        "{source}: must fail closed and reload a VM that dies"
    );
    assert!(
        c["reload_config"]["backoff"]["base_interval"].is_string(),
        "{source}: FAIL_RELOAD with a backoff"
    );
    assert_eq!(
        c["allow_on_headers_stop_iteration"], false,
        "{source}: the filters pause on headers only"
    );
    let text = c["configuration"]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: configuration is not a StringValue"));
    let config: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{source}: configuration is not JSON: {e}"));
    let env: Vec<String> = c["vm_config"]["environment_variables"]["host_env_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    tc["config"]["vm_config"]["code"] = json!({"local": {"filename": wasm.to_string_lossy()}});
    Shipped {
        source: source.to_string(),
        object: object.to_string(),
        config,
        env,
        http_filter: json!({"name": name, "typed_config": tc}),
        flavour: Flavour::Wasm,
        metrics: "edgeguard_".into(),
    }
}

/// `Kind/name` of a manifest object.
fn object(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or_default(),
        doc["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The JSON text of a `google.protobuf.StringValue` configuration, parsed.
fn string_value_json(source: &str, any: &Value) -> Value {
    assert_eq!(
        any["@type"], STRING_VALUE,
        "{source}: the configuration is a StringValue of JSON text"
    );
    let text = any["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: no configuration"));
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{source}: configuration is not JSON: {e}"))
}

/// A shipped DynamicModuleFilter `typed_config` (Istio EnvoyFilter), loaded as is: Envoy finds
/// `lib<name>.so` in ENVOY_DYNAMIC_MODULES_SEARCH_PATH, which the harness points at the built
/// modules (the pod patch, at the mounted ones).
fn verbatim_native(
    source: &str,
    doc: &Value,
    name: &str,
    typed_config: &Value,
    module: &str,
) -> Shipped {
    let dmc = &typed_config["dynamic_module_config"];
    assert_eq!(
        dmc["do_not_close"], true,
        "{source}: the module runs threads: it must never be unloaded"
    );
    assert_eq!(typed_config["filter_name"], module, "{source}: filter_name");
    // fail with the harness's message when the module was not built
    tools::native_module(dmc["name"].as_str().unwrap_or_default());
    // the README's names (`envoy_edgeguard_*`), as everywhere Envoy's configuration is ours
    assert_eq!(
        dmc["metrics_namespace"], DYNAMIC_MODULE_METRICS_NAMESPACE,
        "{source}: metrics_namespace"
    );
    let namespace = DYNAMIC_MODULE_METRICS_NAMESPACE;
    Shipped {
        source: source.to_string(),
        object: object(doc),
        config: string_value_json(source, &typed_config["filter_config"]),
        env: Vec::new(),
        http_filter: json!({"name": name, "typed_config": typed_config}),
        flavour: Flavour::Native,
        metrics: format!("envoy_{namespace}_"),
    }
}

/// Every EnvoyProxy `dynamicModules` entry under istio/ by name, with the environment variables
/// its EnvoyProxy gives the Envoy container. One EnvoyProxy may be spread over files
/// (native/envoyproxy.yaml is a patch over base/gateway.yaml's): what every file with its name
/// says counts (validate.py checks the object kustomize renders).
fn envoy_proxy_allowlists() -> HashMap<String, (Value, Vec<String>)> {
    let mut modules: Vec<(String, Value)> = Vec::new();
    let mut env: HashMap<String, Vec<String>> = HashMap::new();
    for file in shipped_yaml_files("istio") {
        for doc in yaml_docs(&file) {
            if doc["kind"] != "EnvoyProxy" {
                continue;
            }
            let proxy = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let container = &doc["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"];
            env.entry(proxy.clone()).or_default().extend(
                container["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["name"].as_str().map(String::from)),
            );
            for m in doc["spec"]["dynamicModules"]
                .as_array()
                .into_iter()
                .flatten()
            {
                modules.push((proxy.clone(), m.clone()));
            }
        }
    }
    modules
        .into_iter()
        .map(|(proxy, m)| {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            (name, (m, env.get(&proxy).cloned().unwrap_or_default()))
        })
        .collect()
}

/// An EnvoyExtensionPolicy `dynamicModule` entry as Envoy Gateway 1.9 turns it into an HTTP
/// filter (internal/xds/translator/dynamicmodule.go): `dynamic_module_config.module` is the
/// allowlist entry's local path (here: the built module of the same file name),
/// `do_not_close` / `load_globally` from the entry, no `metrics_namespace`, `filter_name` from
/// the policy, and `config` as JSON text in a `google.protobuf.StringValue`.
fn envoy_gateway_native(
    source: &str,
    doc: &Value,
    module: &Value,
    entry: &Value,
    proxy_env: &[String],
    native: &str,
) -> Shipped {
    assert_eq!(
        entry["doNotClose"], true,
        "{source}: the allowlist entry must keep the module loaded (it runs threads)"
    );
    assert_eq!(entry["source"]["type"], "Local", "{source}");
    let filter_name = module["filterName"].as_str().unwrap_or_default();
    assert_eq!(
        filter_name,
        native.trim_start_matches("edgeguard_"),
        "{source}: filterName"
    );
    let config = module["config"].clone();
    let filter = json!({
        "name": format!("envoy.filters.http.dynamic_modules/{}", module["name"].as_str().unwrap_or_default()),
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER,
            "dynamic_module_config": {
                "do_not_close": entry["doNotClose"],
                "load_globally": entry["loadGlobally"].as_bool().unwrap_or(false),
                "module": {"local": {"filename": tools::native_module(native).to_string_lossy()}}
            },
            "filter_name": filter_name,
            "filter_config": {"@type": STRING_VALUE, "value": config.to_string()}
        }
    });
    Shipped {
        source: source.to_string(),
        object: object(doc),
        config,
        env: proxy_env.to_vec(),
        http_filter: filter,
        flavour: Flavour::Native,
        metrics: format!("envoy_{DEFAULT_METRICS_NAMESPACE}_"),
    }
}

fn compose_bootstrap() -> Value {
    yaml_docs("compose/envoy/envoy.yaml").remove(0)
}

fn http_filters(boot: &Value) -> Vec<Value> {
    boot["static_resources"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["filter_chains"].as_array().into_iter().flatten())
        .flat_map(|c| c["filters"].as_array().into_iter().flatten())
        .flat_map(|f| {
            f["typed_config"]["http_filters"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .cloned()
        .collect()
}

/// The compose Envoy service's environment (where the jwt-shape secrets come from there).
fn compose_envoy_env() -> Vec<(String, String)> {
    let compose = yaml_docs("compose/docker-compose.yaml").remove(0);
    compose["services"]["envoy"]["environment"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string()),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------ jwt-shape

/// `envoy/demo/jwt-shape.json` with its two secrets read from the environment instead.
fn jwt_shape_production_variant() -> Value {
    let mut v: Value =
        serde_json::from_str(&tools::repo_file("envoy/demo/jwt-shape.json")).expect("demo config");
    assert_eq!(v["providers"]["demo"]["hmac"]["secret"], DEMO_SECRET);
    assert_eq!(v["shape"]["electric_secret"], DEMO_ELECTRIC_SECRET);
    v["providers"]["demo"]["hmac"] = json!({"secret_env": JWT_SHAPE_ENV[0]});
    let shape = v["shape"].as_object_mut().expect("shape");
    shape.remove("electric_secret");
    shape.insert("electric_secret_env".into(), json!(JWT_SHAPE_ENV[1]));
    v
}

fn demo_env() -> Vec<(String, String)> {
    vec![
        (JWT_SHAPE_ENV[0].to_string(), DEMO_SECRET.to_string()),
        (
            JWT_SHAPE_ENV[1].to_string(),
            DEMO_ELECTRIC_SECRET.to_string(),
        ),
    ]
}

/// A token as `edgeguard token --table <table> --sub alice` mints it (demo secret, iss, aud).
fn demo_token(table: &str) -> String {
    let n = now();
    TestKey::hmac("demo", DEMO_SECRET.as_bytes()).sign(
        "HS256",
        &json!({"iss": "edgeguard-demo", "aud": "electric", "sub": "alice", "iat": n, "nbf": n, "exp": n + 600,
                "shape": {"namespace": null, "table": table, "where": null, "columns": null}}),
    )
}

fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: body {}", r.body);
}

/// A GET through the Envoy under test: path and request headers.
type Get<'a> = &'a dyn Fn(&str, &[(&str, &str)]) -> Resp;

/// jwt-shape's verdicts through an Envoy whose upstream is the echo server.
fn check_jwt_shape(source: &str, get: Get) {
    let token = demo_token("items");
    let bearer = format!("Bearer {token}");
    let r = get(
        "/v1/shape?table=items&offset=-1&secret=client-guess",
        &[
            ("authorization", &bearer),
            ("portal-application-id", "spoofed"),
            ("portal-account-id", "spoofed"),
            ("rl-plan-free", "spoofed"),
        ],
    );
    expect(&r, 200, &format!("{source}: a demo token for table=items"));
    for h in ["portal-application-id", "portal-account-id", "rl-plan-free"] {
        assert_eq!(r.echoed(h), None, "{source}: portal-auth's {h} is stripped");
    }
    assert_eq!(
        r.echoed_path(),
        format!("/v1/shape?table=items&offset=-1&secret={DEMO_ELECTRIC_SECRET}"),
        "{source}: the Electric secret from the environment is injected, the client's stripped"
    );
    assert_eq!(
        r.echoed("x-edgeguard-sub").as_deref(),
        Some("alice"),
        "{source}"
    );
    assert_eq!(
        r.echoed("authorization"),
        None,
        "{source}: the token is not forwarded"
    );

    let r = get("/v1/shape?table=items&offset=-1", &[]);
    expect(&r, 401, &format!("{source}: no token"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"edgeguard\""),
        "{source}"
    );

    let forged = TestKey::hmac("demo", b"not-the-secret-configured-in-the-environment").sign(
        "HS256",
        &json!({"iss": "edgeguard-demo", "aud": "electric", "exp": now() + 600, "shape": {"table": "items"}}),
    );
    let r = get(
        "/v1/shape?table=items",
        &[("authorization", &format!("Bearer {forged}"))],
    );
    expect(
        &r,
        401,
        &format!("{source}: a token signed with another secret"),
    );

    let r = get(
        "/v1/shape?table=secrets&offset=-1",
        &[("authorization", &bearer)],
    );
    expect(&r, 403, &format!("{source}: a token for another shape"));

    // and the next good request still passes
    let r = get(
        "/v1/shape?table=items&offset=-1",
        &[("authorization", &bearer)],
    );
    expect(&r, 200, &format!("{source}: good request after bad ones"));
}

/// Starts Envoy with one shipped filter in front of `upstream_port`.
fn start_shipped(
    s: &Shipped,
    upstream_port: u16,
    clusters: Vec<Value>,
    env: Vec<(String, String)>,
) -> Envoy {
    let mut cfg = EnvoyConfig::new(upstream_port, vec![s.http_filter.clone()]);
    cfg.clusters = clusters;
    for (k, v) in env {
        cfg = cfg.with_env(&k, &v);
    }
    Envoy::try_start(&cfg).unwrap_or_else(|log| {
        panic!(
            "{}: Envoy refused the shipped configuration:\n{log}",
            s.source
        )
    })
}

#[test]
fn every_shipped_jwt_shape_config_is_the_documented_production_variant() {
    let copies = shipped("jwt-shape", "jwt_shape");
    let sources: Vec<&str> = copies.iter().map(|s| s.source.as_str()).collect();
    for want in [
        "istio/istio/wasmplugin-jwt-shape.yaml",
        "istio/istio/envoyfilter/envoyfilter-jwt-shape.yaml",
        "istio/istio/native/envoyfilter-jwt-shape.yaml",
        "istio/envoy-gateway/jwt-shape.yaml",
        "istio/envoy-gateway/native/jwt-shape.yaml",
        "istio/kubernetes/xds-config.yaml",
        "compose/envoy/envoy.yaml",
        "compose/xds/xds.yaml",
    ] {
        assert!(
            sources.iter().any(|s| s.starts_with(want)),
            "no jwt-shape configuration found in {want}: {sources:#?}"
        );
    }
    let production = jwt_shape_production_variant();
    for s in &copies {
        assert_eq!(
            s.config, production,
            "{}: differs from envoy/demo/jwt-shape.json with its secrets from the environment",
            s.source
        );
        match s.flavour {
            Flavour::Wasm => assert_eq!(
                s.env, JWT_SHAPE_ENV,
                "{}: the VM must see both secret variables",
                s.source
            ),
            // the module reads Envoy's environment: the manifest that sets it must set both
            Flavour::Native => assert!(
                s.env.is_empty() || JWT_SHAPE_ENV.iter().all(|v| s.env.iter().any(|e| e == v)),
                "{}: Envoy's environment lacks a secret variable: {:?}",
                s.source,
                s.env
            ),
        }
    }
}

/// Each native copy replaces a wasm copy in place (the same object in the same target,
/// istio/envoy-gateway or istio/istio) and carries exactly its configuration.
#[test]
fn native_copies_carry_the_configuration_of_the_wasm_copies_they_replace() {
    for (image, module) in [("jwt-shape", "jwt_shape"), ("portal-auth", "portal_auth")] {
        let copies = shipped(image, module);
        let natives: Vec<&Shipped> = copies
            .iter()
            .filter(|s| s.flavour == Flavour::Native)
            .collect();
        for target in ["istio/envoy-gateway/", "istio/istio/"] {
            assert!(
                natives.iter().any(|s| s.source.starts_with(target)),
                "{image}: no native copy under {target}: {copies:#?}"
            );
        }
        for n in &natives {
            let target = ["istio/envoy-gateway/", "istio/istio/"]
                .into_iter()
                .find(|t| n.source.starts_with(t))
                .unwrap_or_else(|| panic!("{}: a native copy outside istio/", n.source));
            let twins: Vec<&Shipped> = copies
                .iter()
                .filter(|w| {
                    w.flavour == Flavour::Wasm
                        && w.source.starts_with(target)
                        && w.object == n.object
                })
                .collect();
            assert!(
                !twins.is_empty(),
                "{}: no wasm {} under {target} for it to replace",
                n.source,
                n.object
            );
            for w in twins {
                assert_eq!(n.config, w.config, "{} differs from {}", n.source, w.source);
            }
        }
    }
}

#[test]
fn shipped_jwt_shape_configs_work_in_envoy() {
    let echo = Echo::start();
    let copies = shipped("jwt-shape", "jwt_shape");
    assert!(copies.len() >= 8, "{copies:#?}");
    for s in &copies {
        let envoy = start_shipped(s, echo.port, Vec::new(), demo_env());
        check_jwt_shape(&s.source, &|path, headers| envoy.get(path, headers));
        assert!(
            s.metric(&envoy, "jwt_shape_allowed") >= 2.0,
            "{}: no {}jwt_shape_allowed",
            s.source,
            s.metrics
        );
        let log = envoy.log();
        assert!(
            !log.contains(DEMO_SECRET) && !log.contains(DEMO_ELECTRIC_SECRET),
            "{}: a secret reached Envoy's log",
            s.source
        );
    }
}

#[test]
fn shipped_jwt_shape_config_refuses_to_load_without_its_secrets() {
    // the production variant names its secrets; an Envoy that lacks them must not serve
    let echo = Echo::start();
    let copies = shipped("jwt-shape", "jwt_shape");
    for flavour in [Flavour::Wasm, Flavour::Native] {
        let s = copies
            .iter()
            .find(|s| s.flavour == flavour)
            .unwrap_or_else(|| panic!("no {} copy", flavour.name()));
        refuses_without_secret(s, echo.port);
    }
}

fn refuses_without_secret(s: &Shipped, upstream_port: u16) {
    let cfg = EnvoyConfig::new(upstream_port, vec![s.http_filter.clone()])
        .with_env(JWT_SHAPE_ENV[1], DEMO_ELECTRIC_SECRET);
    assert!(!cfg.env.iter().any(|(k, _)| k == JWT_SHAPE_ENV[0]));
    match Envoy::try_start(&cfg) {
        Err(log) => assert!(
            log.contains("EDGEGUARD_JWT_SECRET"),
            "{}: the refusal names the variable:\n{log}",
            s.source
        ),
        Ok(envoy) => {
            // Envoy may start with a failed plugin: then every request is refused (fail closed)
            let r = envoy.get(
                "/v1/shape?table=items",
                &[("authorization", &format!("Bearer {}", demo_token("items")))],
            );
            assert!(
                r.status >= 500,
                "{}: served without its secret: {} {}",
                s.source,
                r.status,
                r.body
            );
            assert!(envoy.log().contains("EDGEGUARD_JWT_SECRET"), "{}", s.source);
        }
    }
}

// ------------------------------------------------------------------------------ portal-auth

/// The configuration given to every portal-auth copy (the store is edgeguard authz's HTTP port).
fn portal_auth_config(cluster: &str) -> Value {
    json!({
        "store": {"cluster": cluster, "authority": "edgeguard-authz", "path": "/store/v1/snapshot",
                  "refresh_interval_ms": 1000, "timeout_ms": 5000},
        "rate_limit_headers": true,
        "fail_open": false,
        "strip_request_headers": ["x-edgeguard-*"]
    })
}

#[test]
fn shipped_portal_auth_configs_work_in_envoy() {
    let apps = tools::root().join("envoy/demo/portal-apps.yaml");
    let authz = Authz::start(&[
        ("PORTAL_APPS_FILE", apps.to_str().unwrap()),
        ("EDGEGUARD_STORE_TOKEN", STORE_TOKEN),
    ]);
    assert!(authz.wait_ready(Duration::from_secs(10)), "{}", authz.log());
    let echo = Echo::start();
    let copies = shipped("portal-auth", "portal_auth");
    assert!(copies.len() >= 5, "{copies:#?}");
    assert!(
        copies
            .iter()
            .filter(|s| s.flavour == Flavour::Native)
            .count()
            >= 2,
        "{copies:#?}"
    );
    for s in &copies {
        // wasm: the VM is given the variable; native: the Envoy container has it (Istio: the
        // README's Secret patch, as for the wasm build)
        assert!(
            s.env.iter().any(|e| e == "EDGEGUARD_STORE_TOKEN")
                || (s.flavour == Flavour::Native && s.env.is_empty()),
            "{}: the filter needs the store token (EDGEGUARD_STORE_TOKEN from the host): {:?}",
            s.source,
            s.env
        );
        // the copy's own store cluster name (Istio's outbound|... included), pointed at authz
        let store_cluster = s.config["store"]["cluster"].as_str().unwrap().to_string();
        let envoy = start_shipped(
            s,
            echo.port,
            vec![cluster(&store_cluster, authz.metrics_port)],
            Vec::new(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while envoy.get("/v1/no_such_app", &[]).status != 404 {
            assert!(
                Instant::now() < deadline,
                "{}: the store copy never loaded",
                s.source
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = envoy.get(
            "/v1/demo_keyed",
            &[
                ("authorization", "demo-secret-key-0001"),
                ("portal-account-id", "spoofed"),
                ("x-edgeguard-sub", "spoofed"),
                ("x-edgeguard-table", "spoofed"),
            ],
        );
        assert_eq!(r.status, 200, "{}: {}", s.source, r.body);
        for h in ["x-edgeguard-sub", "x-edgeguard-table"] {
            assert_eq!(
                r.echoed(h),
                None,
                "{}: jwt-shape's {h} is stripped",
                s.source
            );
        }
        assert_eq!(
            r.echoed("portal-account-id").as_deref(),
            Some("acct_team"),
            "{}",
            s.source
        );
        assert_eq!(
            r.echoed("rl-plan-free").as_deref(),
            Some("acct_team"),
            "{}",
            s.source
        );
        assert_eq!(
            envoy
                .get("/v1/demo_keyed", &[("authorization", "wrong")])
                .status,
            401,
            "{}",
            s.source
        );
        assert_eq!(
            envoy.get("/v1/demo_over_quota", &[]).status,
            429,
            "{}",
            s.source
        );
        // the wasm build hands its request counters to Envoy on its next tick (<= 100 ms)
        let deadline = Instant::now() + Duration::from_secs(2);
        while s.metric(&envoy, "portal_auth_allowed") < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{}: no {}portal_auth_allowed",
                s.source,
                s.metrics
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every copy is the same configuration,
/// and every store cluster it names is shipped beside it (Istio's own for the WasmPlugin).
#[test]
fn shipped_portal_auth_configs_name_clusters_that_exist() {
    let copies = shipped("portal-auth", "portal_auth");
    assert!(copies.len() >= 6, "{copies:#?}");
    // the CLUSTER patches of the EnvoyFilter carrying the copy (wasm and native builds)
    let envoy_filter_clusters = |file: &str| -> Vec<Value> {
        yaml_docs(file)
            .iter()
            .filter(|d| d["kind"] == "EnvoyFilter")
            .flat_map(|d| {
                d["spec"]["configPatches"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|p| p["applyTo"] == "CLUSTER")
            .map(|p| p["patch"]["value"].clone())
            .collect()
    };
    // Envoy Gateway (either build): the EnvoyPatchPolicy both kustomizations include
    let patch_policy_clusters: Vec<Value> =
        yaml_docs("istio/envoy-gateway/base/store-cluster.yaml")
            .iter()
            .filter(|d| d["kind"] == "EnvoyPatchPolicy")
            .flat_map(|d| {
                d["spec"]["jsonPatches"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|p| {
                p["type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
                    && p["operation"]["op"] == "add"
            })
            .map(|p| p["operation"]["value"].clone())
            .collect();
    let compose_clusters = compose_bootstrap()["static_resources"]["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut envoy_filter_shipped = Vec::new();
    for s in &copies {
        let cluster = s.config["store"]["cluster"].as_str().unwrap_or_default();
        assert_eq!(s.config, portal_auth_config(cluster), "{}", s.source);
        let file = s.source.split(' ').next().unwrap_or_default();
        let own;
        let beside: &[Value] = if s.object.starts_with("EnvoyFilter/") {
            own = envoy_filter_clusters(file);
            envoy_filter_shipped.extend(own.iter().cloned());
            &own
        } else if s.source.starts_with("istio/envoy-gateway/") {
            &patch_policy_clusters
        } else if s.source.starts_with("compose/") {
            &compose_clusters
        } else {
            assert_eq!(
                cluster, "outbound|9090||edgeguard-authz.edgeguard.svc.cluster.local",
                "{}: Istio's cluster of the authz Service",
                s.source
            );
            continue;
        };
        assert!(
            beside.iter().any(|c| c["name"] == cluster),
            "{}: cluster {cluster} is not shipped with it",
            s.source
        );
    }
    // the clusters shipped for it are valid Envoy clusters
    let mut clusters = envoy_filter_shipped;
    clusters.extend(patch_policy_clusters);
    for (i, c) in clusters.iter_mut().enumerate() {
        c["name"] = json!(format!("shipped_{i}"));
        c["load_assignment"]["cluster_name"] = c["name"].clone();
    }
    let boot = json!({"static_resources": {"clusters": clusters}});
    validate_bootstrap("shipped edgeguard_authz_http clusters", &boot, &[]);
}

// ------------------------------------------------------------------------------ compose Envoy

/// `envoy --mode validate` on a bootstrap (hostnames are not resolved in this mode; wasm
/// plugins are configured, so their environment must be there).
fn validate_bootstrap(what: &str, boot: &Value, env: &[(String, String)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, boot.to_string()).expect("write");
    let out = Command::new(tools::envoy())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "{what}: Envoy refuses it:\n{text}"
    );
}

/// What compose's `pki` service puts in its volume (the fleet CA, Envoy's server certificate
/// and key), made here with the real `openssl` under the same file names, once per test binary.
fn compose_pki() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let ca = edgeguard_tests::enroll::TestCa::make(&dir, "fleet-ca");
        let server = edgeguard_tests::mtls::server_cert(&dir, &ca, "envoy-server");
        for f in [&ca.cert, &server.cert, &server.key] {
            assert!(f.starts_with(&dir) && f.exists(), "{}", f.display());
        }
        dir
    })
}

/// The compose bootstrap with its module paths pointing at the built filters, and its TLS
/// files at [`compose_pki`].
fn compose_bootstrap_local_modules() -> Value {
    let mut boot = compose_bootstrap();
    let pki = compose_pki();
    rewrite_strings(&mut boot, &|s| {
        if let Some(f) = s.strip_prefix("/etc/envoy/pki/") {
            return Some(pki.join(f).to_string_lossy().into_owned());
        }
        s.strip_prefix("/etc/envoy/wasm/").map(|f| {
            tools::wasm(f.trim_end_matches(".wasm"))
                .to_string_lossy()
                .into_owned()
        })
    });
    boot
}

fn rewrite_strings(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(n) = f(s) {
                *s = n;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_strings(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| rewrite_strings(x, f)),
        _ => {}
    }
}

#[test]
fn compose_envoy_bootstrap_is_valid_as_shipped() {
    validate_bootstrap(
        "compose/envoy/envoy.yaml",
        &compose_bootstrap_local_modules(),
        &compose_envoy_env(),
    );
}

/// The compose bootstrap on 127.0.0.1: listeners and admin on ephemeral ports, each cluster
/// pointed at a local port (`upstream`, `edgeguard_authz_http`, `edgeguard_xds`).
fn compose_bootstrap_local(upstream: u16, authz_http: u16, xds: u16) -> Value {
    let mut boot = compose_bootstrap_local_modules();
    boot["admin"]["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners")
    {
        l["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    }
    for c in boot["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
    {
        let port = match c["name"].as_str() {
            Some("upstream") => upstream,
            Some("edgeguard_authz_http") => authz_http,
            Some("edgeguard_xds") => xds,
            other => panic!("compose bootstrap: unexpected cluster {other:?}"),
        };
        let local = cluster(c["name"].as_str().expect("name"), port);
        c["type"] = local["type"].clone();
        c["load_assignment"] = local["load_assignment"].clone();
        c.as_object_mut()
            .expect("cluster")
            .remove("dns_lookup_family");
    }
    boot
}

#[test]
fn compose_envoy_bootstrap_runs_and_serves_the_dashboard_metrics() {
    let echo = Echo::start();
    let closed = free_port(); // edgeguard authz and xds are not running: the filters must cope
    let boot = compose_bootstrap_local(echo.port, closed, closed);
    let envoy = RawEnvoy::start(&boot, &compose_envoy_env());
    let get = |path: &str, headers: &[(&str, &str)]| {
        http::get(envoy.port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };

    // /v1/shape: jwt-shape only (portal-auth is disabled on the route, so its unreachable
    // store does not matter), with the secrets from the compose file's environment
    check_jwt_shape("compose/envoy/envoy.yaml", &get);
    // /v1/<app>: portal-auth only; its store has never loaded, and it fails closed
    let r = get("/v1/app_free", &[("authorization", "Bearer demo-key-free")]);
    assert!(
        r.status >= 500,
        "portal-auth without a store must not let requests through: {} {}",
        r.status,
        r.body
    );
    assert!(r.echoed("portal-application-id").is_none());
    // anything else: no route
    expect(&get("/elsewhere", &[]), 404, "unrouted path");

    // every filter metric the Grafana dashboard queries by name is on /stats/prometheus
    let prom = http::get(envoy.admin_port, "/stats/prometheus", &[])
        .expect("prometheus")
        .body;
    let dashboard: Value = serde_json::from_str(&tools::repo_file(
        "compose/grafana/dashboards/edgeguard.json",
    ))
    .expect("dashboard");
    let mut queried = 0;
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for name in metric_names(expr, "edgeguard_jwt_shape_")
                .into_iter()
                .chain(metric_names(expr, "edgeguard_portal_auth_"))
            {
                if SET_ON_FIRST_STORE_LOAD.contains(&name.as_str()) {
                    continue;
                }
                queried += 1;
                let found = if let Some(prefix) = name.strip_suffix(".+") {
                    prom.lines().any(|l| l.starts_with(prefix))
                } else {
                    prom.lines().any(|l| {
                        l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))
                    })
                };
                assert!(
                    found,
                    "dashboard panel {:?} queries {name}, which Envoy does not export",
                    p["title"]
                );
            }
        }
    }
    assert!(queried >= 15, "{queried}");
}

/// The compose Envoy and `edgeguard xds` serving compose/xds/xds.yaml (addresses and module
/// folder rewritten to this machine's): Envoy gets the two xDS listeners over ADS, and
/// jwt-shape, delivered over ECDS, gives the same verdicts there.
#[test]
fn compose_envoy_gets_its_xds_listeners_from_edgeguard_xds() {
    let echo = Echo::start();
    let closed = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut xds = yaml_docs("compose/xds/xds.yaml").remove(0);
    let wasm_dir = tools::wasm("jwt_shape")
        .parent()
        .expect("wasm dir")
        .to_path_buf();
    xds["wasm_dir"] = json!(wasm_dir.to_string_lossy());
    xds["authz"]["address"] = json!(format!("127.0.0.1:{closed}"));
    for u in xds["upstreams"].as_array_mut().expect("upstreams") {
        u["endpoints"] = json!([format!("127.0.0.1:{}", echo.port)]);
    }
    let mut listener_ports = Vec::new();
    for l in xds["listeners"].as_array_mut().expect("listeners") {
        let port = free_port();
        l["address"] = json!(format!("127.0.0.1:{port}"));
        listener_ports.push((l["name"].as_str().expect("name").to_string(), port));
    }
    let config = dir.path().join("xds.yaml");
    std::fs::write(&config, xds.to_string()).expect("write xds.yaml");

    let (xds_port, metrics_port) = (free_port(), free_port());
    let mut cmd = Command::new(tools::edgeguard());
    cmd.arg("xds").arg("--config").arg(&config).args([
        "--port",
        &xds_port.to_string(),
        "--metrics-port",
        &metrics_port.to_string(),
        "--listen-address",
        "127.0.0.1",
    ]);
    let mut server = Proc::spawn("edgeguard xds", cmd, &dir.path().join("xds.log"));
    assert!(
        edgeguard_tests::process::wait_for_port(xds_port, Duration::from_secs(20)),
        "edgeguard xds did not start:\n{}",
        server.log_text()
    );
    assert!(server.running());

    let envoy = RawEnvoy::start(
        &compose_bootstrap_local(echo.port, closed, xds_port),
        &compose_envoy_env(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, port) in &listener_ports {
        while !http::get(envoy.admin_port, "/listeners?format=json", &[])
            .is_ok_and(|r| r.body.contains(&format!("\"{name}\"")))
        {
            assert!(
                Instant::now() < deadline,
                "Envoy never got listener {name} from edgeguard xds:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            edgeguard_tests::process::wait_for_port(*port, Duration::from_secs(10)),
            "{name} is not listening"
        );
    }
    let electric = listener_ports
        .iter()
        .find(|(n, _)| n == "xds-electric")
        .expect("xds-electric")
        .1;
    let get = |path: &str, headers: &[(&str, &str)]| {
        http::get(electric, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    check_jwt_shape("compose/xds/xds.yaml (ECDS)", &get);
    // :10081 goes through ext_authz to edgeguard authz, which is not running here: denied
    let rpc = listener_ports
        .iter()
        .find(|(n, _)| n == "xds-rpc")
        .expect("xds-rpc")
        .1;
    let r = http::get(
        rpc,
        "/v1/app_free",
        &[("authorization", "Bearer demo-key-free")],
    )
    .expect("GET");
    assert!(
        r.status == 403 || r.status >= 500,
        "ext_authz without its server let a request through: {} {}",
        r.status,
        r.body
    );
}

/// portal-auth's gauges appear when first set: the store gauges with the first store copy,
/// which this test does not serve, the metering gauge with the first report, and compose
/// ships metering off (validate.py checks that their names are defined in filters/portal-auth).
const SET_ON_FIRST_STORE_LOAD: &[&str] = &[
    "edgeguard_portal_auth_store_apps",
    "edgeguard_portal_auth_store_version",
    "edgeguard_portal_auth_relays_pending",
];

/// Metric names (or `prefix.+` regex families) starting with `prefix` in a PromQL expression.
fn metric_names(expr: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '+'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // `(.+)` capture groups in label_replace repeat a family already counted
        if !name.ends_with('_') {
            out.push(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Envoy started from a complete bootstrap (the harness's `Envoy` builds its own).
struct RawEnvoy {
    port: u16,
    admin_port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl RawEnvoy {
    fn start(boot: &Value, env: &[(String, String)]) -> RawEnvoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envoy.json");
        std::fs::write(&path, boot.to_string()).expect("write bootstrap");
        let admin_file = dir.path().join("admin.txt");
        let mut cmd = Command::new(tools::envoy());
        cmd.arg("-c")
            .arg(&path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "info",
                "--admin-address-path",
            ])
            .arg(&admin_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("envoy", cmd, &dir.path().join("envoy.log"));
        // the ADS server is not running: Envoy waits initial_fetch_timeout (5 s) per type
        let deadline = Instant::now() + Duration::from_secs(40);
        let admin_port = loop {
            assert!(proc.running(), "Envoy exited:\n{}", proc.log_text());
            if let Some(p) = std::fs::read_to_string(&admin_file).ok().and_then(|s| {
                s.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            }) {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "no admin address:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        loop {
            assert!(proc.running(), "Envoy exited:\n{}", proc.log_text());
            if http::get(admin_port, "/ready", &[]).is_ok_and(|r| r.body.trim() == "LIVE") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let listeners: Value = serde_json::from_str(
            &http::get(admin_port, "/listeners?format=json", &[])
                .expect("listeners")
                .body,
        )
        .expect("json");
        let port = listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == "edge")
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .unwrap_or_else(|| panic!("no 'edge' listener in {listeners}"))
            as u16;
        RawEnvoy {
            port,
            admin_port,
            _proc: proc,
            _dir: dir,
        }
    }
}

// ------------------------------------------------------------------------------ compose Postgres

/// compose's Postgres runs the files mounted into /docker-entrypoint-initdb.d in name order:
/// the store's migrations, then the demo data. Here they run the same way, and PEAS's query
/// (and the store's usage query) see the demo apps.
#[test]
fn compose_postgres_init_scripts_load_and_serve_the_demo_apps() {
    use edgeguard_tests::postgres::{self, Postgres};
    if !postgres::available() {
        eprintln!("SKIP: Postgres is not installed here (Debian's postgresql; `make test` installs it for the Postgres tests)");
        return;
    }
    let compose = yaml_docs("compose/docker-compose.yaml").remove(0);
    let mut scripts: Vec<(String, String)> = compose["services"]["postgres"]["volumes"]
        .as_array()
        .expect("postgres volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            dst.strip_prefix("/docker-entrypoint-initdb.d/")
                .map(|name| (name.to_string(), src.to_string()))
        })
        .collect();
    scripts.sort();
    let names: Vec<&str> = scripts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "0001_grove_schema.sql",
            "0002_account_monthly_usage.sql",
            "0003_change_notify.sql",
            "0004_metering.sql",
            "0005_devices.sql",
            "0006_client_auth.sql",
            "0100_demo_data.sql"
        ]
    );
    let pg = Postgres::start();
    for (name, src) in &scripts {
        let path = tools::root().join("compose").join(src);
        let sql =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        pg.try_psql(&sql)
            .unwrap_or_else(|e| panic!("{name} fails on a fresh database: {e}"));
    }
    // PEAS's SelectPortalApps (peas-spec §2)
    let apps = pg.psql(
        "SELECT pa.id, pas.secret_key, pas.secret_key_required, pa.account_id, a.plan_type AS plan, a.monthly_user_limit
         FROM portal_applications pa
         LEFT JOIN portal_application_settings pas ON pa.id = pas.application_id
         LEFT JOIN accounts a ON pa.account_id = a.id
         WHERE pa.deleted = false
         GROUP BY pa.id, pas.secret_key, pas.secret_key_required, a.plan_type, a.monthly_user_limit
         ORDER BY pa.id",
    );
    assert_eq!(
        apps.lines().collect::<Vec<_>>(),
        [
            "app_device||t|acc_free|PLAN_FREE|0",
            "app_free|demo-key-free|t|acc_free|PLAN_FREE|0",
            "app_over|demo-key-over|t|acc_over|PLAN_FREE|0",
            "app_public||f|acc_open|PLAN_UNLIMITED|0",
            "app_unlimited|demo-key-unlimited|t|acc_unl|PLAN_UNLIMITED|40000000",
        ]
    );
    // the store's usage query (migration 0002): only acc_over is past its 1,000,000 free relays
    let usage = pg.psql(
        "SELECT account_id, relays FROM account_monthly_usage
         WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date ORDER BY account_id",
    );
    assert_eq!(
        usage.lines().collect::<Vec<_>>(),
        ["acc_free|250000", "acc_over|1200000", "acc_unl|1500000"]
    );
}

// ------------------------------------------------------------------------------ edgeguard xds files

/// The shipped `edgeguard xds` files load with the control plane's own loader (names resolved,
/// the jwt-shape configuration checked by the filter's parser, snapshots consistent). The
/// modules live in the Envoy containers (`wasm_dir`), not here.
#[test]
fn shipped_xds_files_load_in_edgeguard_xds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let configmap = yaml_docs("istio/kubernetes/xds-config.yaml").remove(0);
    let k8s = dir.path().join("xds.yaml");
    std::fs::write(
        &k8s,
        configmap["data"]["xds.yaml"]
            .as_str()
            .expect("data.xds.yaml"),
    )
    .expect("write");
    let compose = tools::root().join("compose/xds/xds.yaml");
    let no_env = |_: &str| None;
    let modules_in_envoy = |p: &Path| p.starts_with("/etc/envoy/wasm");
    for (what, path) in [
        ("istio/kubernetes/xds-config.yaml", k8s.as_path()),
        ("compose/xds/xds.yaml", compose.as_path()),
    ] {
        let attempt = edgeguard_xds::load::load_with(path, &no_env, &modules_in_envoy);
        match attempt.result {
            Ok(loaded) => assert!(!loaded.snapshots.is_empty(), "{what}: no snapshot"),
            Err(refused) => panic!("{what}: edgeguard xds refuses it: {refused}"),
        }
    }
}
