//! `edgeguard xds` against real Envoys started from `envoy/xds/bootstrap.yaml`: the demo's
//! configuration delivered over ADS (jwt-shape's config over ECDS) and traffic through it,
//! file edits live within 2 s (a filter change without draining the listener), inconsistent
//! files refused with the problem named while traffic stays, a configuration Envoy NACKs
//! parked without a resend loop, a control-plane restart under a serving Envoy, per-node
//! snapshots, the native builds (`runtime: native`: jwt-shape and portal-auth as Envoy
//! dynamic modules over ECDS) and a live switch between the builds, and the `make run-xds`
//! script's curl lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeguard_tests::authz::Authz;
use edgeguard_tests::envoy::metric_value;
use edgeguard_tests::http::{self, Resp};
use edgeguard_tests::keys::{now, TestKey};
use edgeguard_tests::process::{free_port, Echo};
use edgeguard_tests::tools;
use edgeguard_tests::xds::{self, wait_until, write_atomic, XdsEnvoy, XdsServer};
use serde_json::{json, Value};

const DEMO_SECRET: &str = "edgeguard-demo-secret-not-for-production-0001";
const ECDS_REJECTED: &str = "extension_config_discovery.http_filter.jwt-shape.update_rejected";

/// The test's xds file: the `make run` demo (jwt-shape on /v1/shape in front of the echo
/// upstream), with requests no rule matches let through so route changes are visible.
struct Cfg {
    listen: u16,
    echo: u16,
    electric_secret: String,
    hmac_secret: String,
    module: Option<String>,
    shape_upstream: String,
    extra_routes: String,
    extra: String,
}

impl Cfg {
    fn new(echo: u16) -> Cfg {
        Cfg {
            listen: free_port(),
            echo,
            electric_secret: "demo-electric-secret".into(),
            hmac_secret: DEMO_SECRET.into(),
            module: None,
            shape_upstream: "electric".into(),
            extra_routes: String::new(),
            extra: String::new(),
        }
    }

    fn jwt_config(&self) -> Value {
        let mut v: Value =
            serde_json::from_str(&tools::repo_file("envoy/demo/jwt-shape.json")).unwrap();
        v["unmatched"] = json!("allow");
        v["shape"]["electric_secret"] = json!(self.electric_secret);
        v["providers"]["demo"]["hmac"]["secret"] = json!(self.hmac_secret);
        v
    }

    fn render(&self) -> String {
        let wasm_dir = tools::wasm("jwt_shape").parent().unwrap().to_path_buf();
        let module = self
            .module
            .as_ref()
            .map(|m| format!("    module: {m}\n"))
            .unwrap_or_default();
        format!(
            r#"wasm_dir: {wasm_dir}
upstreams:
  - {{ name: electric, endpoints: ["127.0.0.1:{echo}"] }}
filters:
  - name: jwt-shape
    type: jwt-shape
{module}    config: {config}
listeners:
  - {{ name: main, address: "127.0.0.1:{listen}", filters: [jwt-shape] }}
routes:
  - {{ match: {{ path: /v1/shape }}, upstream: {up}, timeout: 15s }}
{extra_routes}{extra}"#,
            wasm_dir = wasm_dir.display(),
            echo = self.echo,
            config = self.jwt_config(),
            listen = self.listen,
            up = self.shape_upstream,
            extra_routes = self.extra_routes,
            extra = self.extra,
        )
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

fn write_config(cfg: &Cfg) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.yaml");
    write_atomic(&file, &cfg.render());
    Setup { _dir: dir, file }
}

fn token() -> String {
    let n = now();
    TestKey::hmac("demo", DEMO_SECRET.as_bytes()).sign(
        "HS256",
        &json!({"iss": "edgeguard-demo", "aud": "electric", "sub": "user-1", "iat": n, "exp": n + 600,
                "shape": {"namespace": null, "table": "items", "where": null, "columns": null}}),
    )
}

fn shape(port: u16, token: Option<&str>) -> Option<Resp> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    xds::get(port, "/v1/shape?table=items&offset=-1", &headers)
}

/// The shape request is allowed and reaches the upstream with this Electric secret.
fn allowed_with_secret(port: u16, token: &str, secret: &str) -> bool {
    shape(port, Some(token))
        .is_some_and(|r| r.status == 200 && r.body.contains(&format!("secret={secret}\"")))
}

fn status_of(port: u16, path: &str) -> (u16, String) {
    xds::get(port, path, &[]).map_or((0, String::new()), |r| (r.status, r.body))
}

/// The first object (depth first) that has `key`.
fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) if m.contains_key(key) => Some(v),
        Value::Object(m) => m.values().find_map(|x| find_key(x, key)),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

#[test]
fn serves_the_demo_over_ads_and_applies_edits_within_2s() {
    let echo = Echo::start();
    let mut cfg = Cfg::new(echo.port);
    let setup = write_config(&cfg);
    let xds = XdsServer::start(&setup.file);
    let envoy = XdsEnvoy::start("edge-a", "edge", xds.port);
    let t = token();

    // traffic flows through the jwt-shape wasm whose configuration came over ECDS
    assert!(
        wait_until(Duration::from_secs(10), || allowed_with_secret(
            cfg.listen,
            &t,
            "demo-electric-secret"
        ))
        .is_some(),
        "no 200 through the delivered config; xds log:\n{}\nenvoy log:\n{}",
        xds.log(),
        envoy.log()
    );
    let r = shape(cfg.listen, Some(&t)).unwrap();
    assert_eq!(r.echoed("x-edgeguard-sub").as_deref(), Some("user-1"));
    // Envoy took the wasm filter with a VM that is reloaded (with backoff) when it fails
    let dump: Value = serde_json::from_str(
        &xds::get(envoy.admin_port, "/config_dump?resource=ecds_filters", &[])
            .unwrap()
            .body,
    )
    .unwrap();
    let plugin = find_key(&dump, "failure_policy")
        .unwrap_or_else(|| panic!("no wasm plugin config in Envoy's config dump: {dump}"));
    assert_eq!(plugin["failure_policy"], "FAIL_RELOAD", "{plugin}");
    assert_eq!(
        plugin["reload_config"],
        json!({"backoff": {"base_interval": "1s", "max_interval": "10s"}}),
        "{plugin}"
    );
    assert_eq!(shape(cfg.listen, None).unwrap().status, 401);
    assert!(envoy.stat("extension_config_discovery.http_filter.jwt-shape.config_reload") >= 1);
    assert_eq!(envoy.stat("control_plane.connected_state"), 1);
    assert_eq!(xds.metric("edgeguard_xds_connected_nodes"), 1.0);
    assert_eq!(xds.metric("edgeguard_xds_nacks_total"), 0.0);
    for t in ["cds", "eds", "lds", "rds", "ecds"] {
        let label = format!("type=\"{t}\"");
        assert_eq!(
            xds.metric_with("edgeguard_xds_pushes_total", &label),
            1.0,
            "{t}"
        );
        assert_eq!(
            xds.metric_with("edgeguard_xds_acks_total", &label),
            1.0,
            "{t}"
        );
    }
    let st = xds.status();
    assert_eq!(st["streams"][0]["node"], "edge-a");
    assert_eq!(st["streams"][0]["snapshot"], "default");
    assert_eq!(
        st["streams"][0]["types"]["ecds"]["accepted"],
        st["snapshots"]["default"]["ecds"]
    );

    // a filter configuration edit: live within 2 s, over ECDS only, no listener drained
    let modified = envoy.stat("listener_manager.listener_modified");
    cfg.electric_secret = "rotated-electric-secret".into();
    write_atomic(&setup.file, &cfg.render());
    let took = wait_until(Duration::from_secs(5), || {
        allowed_with_secret(cfg.listen, &t, "rotated-electric-secret")
    });
    let took = took.unwrap_or_else(|| panic!("filter edit not applied; xds log:\n{}", xds.log()));
    assert!(
        took < Duration::from_secs(2),
        "filter edit took {took:?}; xds log:\n{}",
        xds.log()
    );
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"ecds\""),
        2.0
    );
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"lds\""),
        1.0
    );
    assert_eq!(envoy.stat("listener_manager.listener_modified"), modified);

    // a new route: live within 2 s
    assert_eq!(status_of(cfg.listen, "/hello").0, 404);
    cfg.extra_routes =
        "  - { match: { prefix: /hello }, direct_response: { status: 200, body: hello-from-xds } }\n"
            .into();
    write_atomic(&setup.file, &cfg.render());
    let took = wait_until(Duration::from_secs(5), || {
        status_of(cfg.listen, "/hello") == (200, "hello-from-xds".into())
    })
    .unwrap_or_else(|| panic!("route edit not applied; xds log:\n{}", xds.log()));
    assert!(
        took < Duration::from_secs(2),
        "route edit took {took:?}; xds log:\n{}",
        xds.log()
    );
    assert!(allowed_with_secret(
        cfg.listen,
        &t,
        "rotated-electric-secret"
    ));
    assert_eq!(
        xds.metric_with("edgeguard_xds_config_reloads_total", "result=\"ok\""),
        3.0
    );
}

#[test]
fn refuses_an_inconsistent_file_and_keeps_serving_the_last_good_one() {
    // an invalid file at start: nothing to serve, a clear error, a non-zero exit
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let mut cfg = Cfg::new(1);
    cfg.shape_upstream = "api".into();
    write_atomic(&bad, &cfg.render());
    let err = XdsServer::try_start(&bad)
        .err()
        .expect("a refused file must not be served");
    assert!(
        err.contains("routes[0].upstream: no upstream named 'api'"),
        "{err}"
    );

    let echo = Echo::start();
    let mut cfg = Cfg::new(echo.port);
    let setup = write_config(&cfg);
    let xds = XdsServer::start(&setup.file);
    let envoy = XdsEnvoy::start("edge-a", "edge", xds.port);
    let t = token();
    assert!(wait_until(Duration::from_secs(10), || allowed_with_secret(
        cfg.listen,
        &t,
        "demo-electric-secret"
    ))
    .is_some());
    let pushes = xds.metric("edgeguard_xds_pushes_total");
    let good_versions = xds.status()["snapshots"].clone();

    type Edit = Box<dyn Fn(&mut Cfg)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c: &mut Cfg| {
                c.extra_routes = "  - { match: { prefix: /api }, upstream: api }\n".into()
            }),
            "routes[1].upstream: no upstream named 'api'",
        ),
        (
            Box::new(|c: &mut Cfg| c.hmac_secret = "too-short".into()),
            "filters[0].config: jwt-shape refuses it: providers.demo.hmac.secret",
        ),
        (
            Box::new(|c: &mut Cfg| {
                c.extra = "  - { match: { prefix: /x }, upstream: electric }\nnodes:\n  - node: edge-b\n    upstreams: [{ name: a, endpoints: [\"127.0.0.1:1\"] }, { name: a, endpoints: [\"127.0.0.1:2\"] }]\n".into()
            }),
            "nodes[0].upstreams[1].name: duplicate upstream name 'a'",
        ),
        // hostile YAML is refused before it is parsed (it used to block reloads for ~20 s)
        (
            Box::new(|c: &mut Cfg| c.extra = format!("deep: {}\n", "[".repeat(100_000))),
            "invalid YAML: nested more than 64 levels deep at line",
        ),
        (
            Box::new(|c: &mut Cfg| c.extra = format!("deep: {}\n", "{a: ".repeat(100_000))),
            "invalid YAML: nested more than 64 levels deep at line",
        ),
        (
            Box::new(|c: &mut Cfg| c.extra = format!("# {}\n", "x".repeat(17 << 20))),
            "bytes, more than the limit of 16777216 bytes",
        ),
    ];
    for (n, (edit, want)) in cases.iter().enumerate() {
        let mut c = Cfg::new(echo.port);
        c.listen = cfg.listen;
        edit(&mut c);
        write_atomic(&setup.file, &c.render());
        let refused = (n + 1) as f64;
        assert!(
            wait_until(Duration::from_secs(5), || {
                xds.metric_with("edgeguard_xds_config_reloads_total", "result=\"refused\"")
                    == refused
            })
            .is_some(),
            "edit {n} not refused; log:\n{}",
            xds.log()
        );
        assert!(
            xds.log().contains(want),
            "log lacks {want:?}:\n{}",
            xds.log()
        );
        let st = xds.status();
        assert!(
            st["last_error"].as_str().unwrap_or_default().contains(want),
            "{st}"
        );
        assert_eq!(
            st["snapshots"], good_versions,
            "refused file must not be published"
        );
        assert_eq!(xds.metric("edgeguard_xds_config_ok"), 0.0);
        // traffic unchanged, nothing pushed
        assert!(allowed_with_secret(cfg.listen, &t, "demo-electric-secret"));
        assert_eq!(shape(cfg.listen, None).unwrap().status, 401);
        assert_eq!(xds.metric("edgeguard_xds_pushes_total"), pushes);
    }
    assert!(xds
        .log()
        .contains("configuration refused, still serving the last good one"));

    // a good edit after the refusals is served
    cfg.electric_secret = "fixed".into();
    write_atomic(&setup.file, &cfg.render());
    assert!(wait_until(Duration::from_secs(5), || allowed_with_secret(
        cfg.listen, &t, "fixed"
    ))
    .is_some());
    assert_eq!(xds.metric("edgeguard_xds_config_ok"), 1.0);
    assert_eq!(xds.status()["last_error"], Value::Null);
    assert_eq!(envoy.stat("control_plane.connected_state"), 1);
}

#[test]
fn a_config_envoy_nacks_leaves_the_last_good_one_and_is_not_resent() {
    let echo = Echo::start();
    let mut cfg = Cfg::new(echo.port);
    let setup = write_config(&cfg);
    let xds = XdsServer::start(&setup.file);
    let envoy = XdsEnvoy::start("edge-a", "edge", xds.port);
    let t = token();
    assert!(wait_until(Duration::from_secs(10), || allowed_with_secret(
        cfg.listen,
        &t,
        "demo-electric-secret"
    ))
    .is_some());
    let good_ecds = xds.status()["snapshots"]["default"]["ecds"].clone();

    // valid to the control plane, but the module does not exist where Envoy runs
    cfg.module = Some("/nonexistent/edgeguard/jwt_shape.wasm".into());
    cfg.electric_secret = "never-served".into();
    write_atomic(&setup.file, &cfg.render());
    assert!(
        wait_until(Duration::from_secs(5), || xds
            .metric_with("edgeguard_xds_nacks_total", "type=\"ecds\"")
            == 1.0)
        .is_some(),
        "no NACK counted; xds log:\n{}",
        xds.log()
    );
    assert!(xds.log().contains("NACK"), "{}", xds.log());
    assert!(
        xds.log().contains("/nonexistent/edgeguard/jwt_shape.wasm"),
        "{}",
        xds.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || envoy.stat(ECDS_REJECTED) == 1).is_some(),
        "Envoy did not count the rejection"
    );
    let bad_ecds = xds.status()["snapshots"]["default"]["ecds"].clone();
    assert_ne!(bad_ecds, good_ecds);
    // give a resend loop time to show: it would NACK again and again
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(1500) {
        assert!(
            allowed_with_secret(cfg.listen, &t, "demo-electric-secret"),
            "traffic left the last good config"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"ecds\""),
        2.0
    );
    assert_eq!(
        xds.metric_with("edgeguard_xds_nacks_total", "type=\"ecds\""),
        1.0
    );
    assert_eq!(xds.metric("edgeguard_xds_nacks_total"), 1.0);
    assert_eq!(envoy.stat(ECDS_REJECTED), 1);
    let types = &xds.status()["streams"][0]["types"]["ecds"];
    assert_eq!(types["accepted"], good_ecds, "{types}");
    assert_eq!(types["rejected"], bad_ecds, "{types}");
    assert_eq!(shape(cfg.listen, None).unwrap().status, 401);

    // the next change is pushed and accepted
    cfg.module = None;
    cfg.electric_secret = "after-the-nack".into();
    write_atomic(&setup.file, &cfg.render());
    assert!(wait_until(Duration::from_secs(5), || allowed_with_secret(
        cfg.listen,
        &t,
        "after-the-nack"
    ))
    .is_some());
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"ecds\""),
        3.0
    );
    assert_eq!(xds.metric("edgeguard_xds_nacks_total"), 1.0);
    assert_eq!(envoy.stat(ECDS_REJECTED), 1);
}

#[test]
fn envoy_keeps_serving_while_xds_restarts_and_then_gets_the_new_version() {
    let echo = Echo::start();
    let mut cfg = Cfg::new(echo.port);
    let setup = write_config(&cfg);
    let mut xds = XdsServer::start(&setup.file);
    let envoy = XdsEnvoy::start("edge-a", "edge", xds.port);
    let t = token();
    assert!(wait_until(Duration::from_secs(10), || allowed_with_secret(
        cfg.listen,
        &t,
        "demo-electric-secret"
    ))
    .is_some());

    xds.kill();
    assert!(
        wait_until(Duration::from_secs(5), || envoy
            .stat("control_plane.connected_state")
            == 0)
        .is_some(),
        "Envoy did not notice the control plane going away"
    );
    for _ in 0..5 {
        assert!(
            allowed_with_secret(cfg.listen, &t, "demo-electric-secret"),
            "Envoy stopped serving without xds"
        );
    }

    // the file changes while the control plane is down; it comes back with the new version
    cfg.extra_routes =
        "  - { match: { prefix: /hello }, direct_response: { status: 200, body: after-restart } }\n".into();
    write_atomic(&setup.file, &cfg.render());
    xds.restart();
    assert!(
        wait_until(Duration::from_secs(10), || status_of(cfg.listen, "/hello")
            == (200, "after-restart".into()))
        .is_some(),
        "no new version after the restart; xds log:\n{}\nenvoy log:\n{}",
        xds.log(),
        envoy.log()
    );
    assert_eq!(envoy.stat("control_plane.connected_state"), 1);
    assert_eq!(xds.metric("edgeguard_xds_connected_nodes"), 1.0);
    // Envoy announced the versions it runs: only what changed (RDS) is pushed again
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"rds\""),
        1.0
    );
    for t in ["cds", "eds", "lds", "ecds"] {
        assert_eq!(
            xds.metric_with("edgeguard_xds_pushes_total", &format!("type=\"{t}\"")),
            0.0,
            "{t}"
        );
    }
    assert!(allowed_with_secret(cfg.listen, &t, "demo-electric-secret"));
    assert_eq!(xds.metric("edgeguard_xds_nacks_total"), 0.0);
}

#[test]
fn nodes_get_their_own_snapshots() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.yaml");
    let direct = |body: &str| {
        format!("[{{ match: {{ prefix: / }}, direct_response: {{ status: 200, body: {body} }} }}]")
    };
    let listener = |port: u16| format!("[{{ name: main, address: \"127.0.0.1:{port}\" }}]");
    write_atomic(
        &file,
        &format!(
            "listeners: {}\nroutes: {}\nnodes:\n  - node: edge-b\n    listeners: {}\n    routes: {}\n  - cluster: canary\n    listeners: {}\n    routes: {}\n",
            listener(pa),
            direct("default-snapshot"),
            listener(pb),
            direct("node-edge-b"),
            listener(pc),
            direct("cluster-canary"),
        ),
    );
    let xds = XdsServer::start(&file);
    let a = XdsEnvoy::start("edge-a", "edge", xds.port);
    let b = XdsEnvoy::start("edge-b", "canary", xds.port);
    let c = XdsEnvoy::start("edge-c", "canary", xds.port);
    let want = [
        (pa, "default-snapshot"),
        (pb, "node-edge-b"),
        (pc, "cluster-canary"),
    ];
    for (port, body) in want {
        assert!(
            wait_until(Duration::from_secs(10), || status_of(port, "/")
                == (200, body.into()))
            .is_some(),
            "port {port} does not answer {body}: {:?}\nxds log:\n{}",
            status_of(port, "/"),
            xds.log()
        );
    }
    let st = xds.status();
    let mut by_node: Vec<(String, String)> = st["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_string(),
                s["snapshot"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_node.sort();
    assert_eq!(
        by_node,
        vec![
            ("edge-a".to_string(), "default".to_string()),
            ("edge-b".to_string(), "node:edge-b".to_string()),
            ("edge-c".to_string(), "cluster:canary".to_string()),
        ]
    );
    assert_eq!(xds.metric("edgeguard_xds_connected_nodes"), 3.0);
    // each Envoy runs only its own listener
    for (e, own) in [(&a, pa), (&b, pb), (&c, pc)] {
        let listeners = http::get(e.admin_port, "/listeners", &[]).unwrap().body;
        for p in [pa, pb, pc] {
            assert_eq!(
                listeners.contains(&format!(":{p}")),
                p == own,
                "{listeners}"
            );
        }
    }
}

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const NATIVE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// Two listeners: `shape` behind jwt-shape (the demo's configuration) and `portal` behind
/// portal-auth (synced from `edgeguard authz` on `authz_http`), each filter with the given
/// extra fields (its `runtime`, and for portal-auth under wasm the store token's `env`).
struct Runtimes {
    shape: u16,
    portal: u16,
    echo: u16,
    authz_http: u16,
}

impl Runtimes {
    fn render(&self, jwt: &str, portal: &str) -> String {
        let wasm_dir = tools::wasm("jwt_shape").parent().unwrap().to_path_buf();
        let portal_config = json!({
            "store": {"cluster": "authz_http", "authority": "edgeguard-authz",
                      "refresh_interval_ms": 200, "timeout_ms": 2000},
            "rate_limit_headers": true
        });
        format!(
            r#"wasm_dir: {wasm_dir}
native_dir: {native_dir}
upstreams:
  - {{ name: electric, endpoints: ["127.0.0.1:{echo}"] }}
  - {{ name: authz_http, endpoints: ["127.0.0.1:{authz}"] }}
filters:
  - name: jwt-shape
    type: jwt-shape
    {jwt}
    config: {jwt_config}
  - name: portal-auth
    type: portal-auth
    {portal}
    config: {portal_config}
listeners:
  - {{ name: shape, address: "127.0.0.1:{shape}", filters: [jwt-shape] }}
  - {{ name: portal, address: "127.0.0.1:{portal_port}", filters: [portal-auth] }}
routes:
  - {{ listener: shape, match: {{ path: /v1/shape }}, upstream: electric, timeout: 15s }}
  - {{ listener: portal, match: {{ prefix: / }}, upstream: electric, timeout: 15s }}
"#,
            wasm_dir = wasm_dir.display(),
            native_dir = tools::native_dir().display(),
            echo = self.echo,
            authz = self.authz_http,
            jwt_config = Cfg::new(self.echo).jwt_config(),
            shape = self.shape,
            portal_port = self.portal,
        )
    }

    /// jwt-shape answers: 401 without a token, 200 (and the Electric secret injected) with one.
    fn shape_answers(&self, token: &str) -> bool {
        shape(self.shape, None).is_some_and(|r| r.status == 401)
            && allowed_with_secret(self.shape, token, "demo-electric-secret")
    }

    /// portal-auth answers from the demo's portal apps (`envoy/demo/portal-apps.yaml`).
    fn portal_answers(&self) -> bool {
        let status = |path: &str, headers: &[(&str, &str)]| {
            xds::get(self.portal, path, headers).map_or(0, |r| r.status)
        };
        let public = xds::get(self.portal, "/v1/demo_public", &[]);
        public.is_some_and(|r| {
            r.status == 200 && r.echoed("portal-application-id").as_deref() == Some("demo_public")
        }) && status("/v1/demo_keyed", &[]) == 401
            && status(
                "/v1/demo_keyed",
                &[("authorization", "demo-secret-key-0001")],
            ) == 200
            && status("/v1/no_such_app", &[]) == 404
    }
}

#[test]
fn native_filters_are_delivered_and_switching_runtime_is_live() {
    let echo = Echo::start();
    let apps = tools::root().join("envoy/demo/portal-apps.yaml");
    let authz = Authz::start(&[("PORTAL_APPS_FILE", apps.to_str().unwrap())]);
    assert!(authz.wait_ready(Duration::from_secs(10)), "{}", authz.log());
    let rt = Runtimes {
        shape: free_port(),
        portal: free_port(),
        echo: echo.port,
        authz_http: authz.metrics_port,
    };
    let wasm_portal = "runtime: wasm\n    env: [EDGEGUARD_STORE_TOKEN]";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.yaml");
    // jwt-shape as wasm (runtime left out: the default), portal-auth native
    write_atomic(&file, &rt.render("", "runtime: native"));
    let xds = XdsServer::start(&file);
    let envoy = XdsEnvoy::start("edge-a", "edge", xds.port);
    let t = token();
    assert_eq!(envoy.ecds_type("jwt-shape"), WASM_TYPE);
    assert_eq!(envoy.ecds_type("portal-auth"), NATIVE_TYPE);
    assert!(
        wait_until(Duration::from_secs(15), || rt.shape_answers(&t)
            && rt.portal_answers())
        .is_some(),
        "the delivered filters do not answer; xds log:\n{}\nenvoy log:\n{}",
        xds.log(),
        envoy.log()
    );
    // each request was decided by the build Envoy was given: native counters are the
    // module's (`envoy_edgeguard_*`, metrics namespace `edgeguard`), wasm ones the VM's
    let counters = |envoy: &XdsEnvoy| {
        let text = envoy.prometheus();
        [
            "edgeguard_jwt_shape_allowed",
            "envoy_edgeguard_jwt_shape_allowed",
            "edgeguard_portal_auth_allowed",
            "envoy_edgeguard_portal_auth_allowed",
        ]
        .map(|name| metric_value(&text, name))
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let [jwt_wasm, jwt_native, portal_wasm, portal_native] = counters(&envoy);
            jwt_wasm >= 1.0 && jwt_native == 0.0 && portal_wasm == 0.0 && portal_native >= 1.0
        })
        .is_some(),
        "{:?}",
        counters(&envoy)
    );

    // switch both: jwt-shape to native, portal-auth to wasm, by editing the file
    let modified = envoy.stat("listener_manager.listener_modified");
    let ecds_pushes = xds.metric_with("edgeguard_xds_pushes_total", "type=\"ecds\"");
    write_atomic(&file, &rt.render("runtime: native", wasm_portal));
    assert!(
        wait_until(Duration::from_secs(10), || {
            envoy.ecds_type("jwt-shape") == NATIVE_TYPE
                && envoy.ecds_type("portal-auth") == WASM_TYPE
        })
        .is_some(),
        "the runtime switch was not applied; xds log:\n{}\nenvoy log:\n{}",
        xds.log(),
        envoy.log()
    );
    assert!(
        wait_until(Duration::from_secs(15), || rt.shape_answers(&t)
            && rt.portal_answers())
        .is_some(),
        "the switched filters do not answer; envoy log:\n{}",
        envoy.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let [_, jwt_native, portal_wasm, _] = counters(&envoy);
            jwt_native >= 1.0 && portal_wasm >= 1.0
        })
        .is_some(),
        "{:?}",
        counters(&envoy)
    );
    // an ECDS update only: the listeners were not touched, nothing was rejected
    assert_eq!(envoy.stat("listener_manager.listener_modified"), modified);
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"lds\""),
        1.0
    );
    assert_eq!(
        xds.metric_with("edgeguard_xds_pushes_total", "type=\"ecds\""),
        ecds_pushes + 1.0
    );
    assert_eq!(xds.metric("edgeguard_xds_nacks_total"), 0.0);
    for name in ["jwt-shape", "portal-auth"] {
        let stat = format!("extension_config_discovery.http_filter.{name}.update_rejected");
        assert_eq!(envoy.stat(&stat), 0, "{name}");
    }

    // and back: jwt-shape to wasm again (runtime: wasm written out)
    write_atomic(&file, &rt.render("runtime: wasm", wasm_portal));
    assert!(
        wait_until(Duration::from_secs(10), || envoy.ecds_type("jwt-shape")
            == WASM_TYPE)
        .is_some(),
        "xds log:\n{}",
        xds.log()
    );
    assert!(
        wait_until(Duration::from_secs(15), || rt.shape_answers(&t)).is_some(),
        "envoy log:\n{}",
        envoy.log()
    );
    assert_eq!(envoy.stat("listener_manager.listener_modified"), modified);
    assert_eq!(xds.metric("edgeguard_xds_nacks_total"), 0.0);
}

fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

#[test]
fn make_run_xds_prints_working_curl_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let wasm = tools::wasm("jwt_shape");
    let wasm_dir: &Path = wasm.parent().unwrap();
    let mut child = Command::new(tools::root().join("envoy/xds/run.sh"))
        .env("EDGEGUARD_BIN", tools::edgeguard())
        .env("EDGEGUARD_ENVOY", tools::envoy())
        .env("EDGEGUARD_WASM_DIR", wasm_dir)
        .env("EDGEGUARD_DEMO_PORT", ports[0].to_string())
        .env("EDGEGUARD_DEMO_ADMIN_PORT", ports[1].to_string())
        .env("EDGEGUARD_DEMO_ECHO_PORT", ports[2].to_string())
        .env("EDGEGUARD_XDS_PORT", ports[3].to_string())
        .env("EDGEGUARD_XDS_METRICS_PORT", ports[4].to_string())
        .env("EDGEGUARD_DEMO_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout).lines();
    for line in reader.by_ref() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        lines.push(line);
    }
    let curls: Vec<String> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl ") && l.contains("/v1/shape"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        curls.len(),
        3,
        "expected three curl lines in:\n{}",
        lines.join("\n")
    );
    let run = |cmd: &str| {
        let out = Command::new("bash")
            .args(["-c", &format!("{cmd} -w '\\n%{{http_code}}'")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = run(&curls[0]);
    assert!(ok.ends_with("\n200"), "{ok}");
    assert!(ok.contains("secret=demo-electric-secret"), "{ok}");
    assert!(run(&curls[1]).ends_with("\n401"));
    assert!(run(&curls[2]).ends_with("\n403"));
    // the listener's `cors:` put Envoy's cors filter before jwt-shape: its 401 carries the CORS
    // headers for a listed origin (and a preflight is answered), not for another origin
    let page = "http://localhost:5173";
    let unauth = run(&format!("{} -i -H 'Origin: {page}'", curls[1])).to_ascii_lowercase();
    assert!(unauth.ends_with("\n401"), "{unauth}");
    assert!(
        unauth.contains(&format!("access-control-allow-origin: {page}")),
        "{unauth}"
    );
    assert!(unauth.contains("www-authenticate"), "{unauth}");
    let preflight = run(&format!(
        "curl -si -X OPTIONS -H 'Origin: {page}' -H 'Access-Control-Request-Method: GET' 'http://127.0.0.1:{}/v1/shape?table=items'",
        ports[0]
    ))
    .to_ascii_lowercase();
    assert!(preflight.ends_with("\n200"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-methods: get, post, options"),
        "{preflight}"
    );
    let foreign = run(&format!(
        "{} -i -H 'Origin: https://evil.example'",
        curls[1]
    ))
    .to_ascii_lowercase();
    assert!(
        foreign.ends_with("\n401") && !foreign.contains("access-control-allow-origin"),
        "{foreign}"
    );
    let status = http::get(ports[4], "/status", &[]).unwrap().json();
    assert_eq!(status["streams"][0]["node"], "edgeguard-demo");

    send_signal(child.id(), 15);
    let rest: Vec<String> = reader.map_while(Result::ok).collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("edgeguard xds demo stopped")),
        "{rest:?}"
    );
    let _ = child.wait();
}
