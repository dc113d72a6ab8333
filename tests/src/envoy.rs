//! A real Envoy, started from a bootstrap the test builds: one listener (HTTP/1.1 and h2c)
//! routing everything to an upstream cluster, the HTTP filters under test before the router,
//! admin on an ephemeral port.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http;
use crate::process::Proc;

/// A static cluster on 127.0.0.1.
pub fn cluster(name: &str, port: u16) -> Value {
    cluster_opts(name, port, false)
}

/// A static cluster speaking HTTP/2 (gRPC).
pub fn grpc_cluster(name: &str, port: u16) -> Value {
    cluster_opts(name, port, true)
}

fn cluster_opts(name: &str, port: u16, h2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        }
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// The store token every test Envoy (`EDGEGUARD_STORE_TOKEN` in its environment, passed into
/// portal-auth's VM) and every test `edgeguard authz` share.
pub use crate::authz::STORE_TOKEN;

/// A dead VM is replaced after this backoff (as in every shipped configuration).
pub fn reload_config() -> Value {
    json!({"backoff": {"base_interval": "0.2s", "max_interval": "2s"}})
}

/// The HTTP wasm filter loading `wasm_file` with `configuration` (a JSON string, exactly what
/// `on_configure` receives). `env` lists host environment variables passed into the VM.
/// A VM that dies is reloaded (`FAIL_RELOAD`), as the shipped configurations do.
pub fn wasm_filter(name: &str, wasm_file: &Path, configuration: &str, env: &[&str]) -> Value {
    wasm_filter_with_policy(name, wasm_file, configuration, env, "FAIL_RELOAD")
}

/// portal-auth with `configuration`, its VM given the store token.
pub fn portal_auth_filter(configuration: &str) -> Value {
    wasm_filter(
        "portal_auth",
        &crate::tools::wasm("portal_auth"),
        configuration,
        &["EDGEGUARD_STORE_TOKEN"],
    )
}

/// [`wasm_filter`] with another `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`).
pub fn wasm_filter_with_policy(
    name: &str,
    wasm_file: &Path,
    configuration: &str,
    env: &[&str],
    failure_policy: &str,
) -> Value {
    let mut vm = json!({
        "vm_id": name,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": wasm_file.to_string_lossy()}}
    });
    if !env.is_empty() {
        vm["environment_variables"] = json!({"host_env_keys": env});
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                "vm_config": vm,
                "failure_policy": failure_policy,
                "reload_config": reload_config()
            }
        }
    })
}

/// The metrics namespace of the harness's dynamic-module filters: their metrics appear as
/// `envoy_edgeguard_<name>` on `/stats/prometheus`.
pub const DYNAMIC_MODULE_METRICS_NAMESPACE: &str = "edgeguard";

/// The HTTP dynamic-module filter loading `lib<module>.so` (from the search path the harness
/// gives Envoy, [`crate::tools::native_dir`]) with `filter_name` and `config_json` as a
/// `google.protobuf.StringValue` (the module receives exactly these bytes).
pub fn dynamic_module_filter(module: &str, filter_name: &str, config_json: &str) -> Value {
    dynamic_module_filter_any(
        module,
        filter_name,
        json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config_json}),
    )
}

/// [`dynamic_module_filter`] with any `filter_config` (an `Any` in JSON form). The module is
/// kept loaded (`do_not_close`: its background threads must never outlive the code).
pub fn dynamic_module_filter_any(module: &str, filter_name: &str, filter_config: Value) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "name": module,
                "do_not_close": true,
                "metrics_namespace": DYNAMIC_MODULE_METRICS_NAMESPACE
            },
            "filter_name": filter_name,
            "filter_config": filter_config
        }
    })
}

/// TLS on the listener (an `envoy.transport_sockets.tls` DownstreamTlsContext): the server's
/// certificate chain and key, and the CA client certificates must chain to. With
/// `require_client_certificate` the handshake fails without a valid client certificate;
/// without it a client may present none (and one that does not chain to `client_ca` still
/// fails the handshake).
#[derive(Clone, Debug)]
pub struct DownstreamTls {
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_ca: std::path::PathBuf,
    pub require_client_certificate: bool,
    /// `allow_expired_certificate`: the handshake accepts an expired client certificate (a
    /// loosely configured listener; the verdict must still refuse it).
    pub allow_expired: bool,
}

impl DownstreamTls {
    /// The listener's `transport_socket`.
    pub fn transport_socket(&self) -> Value {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": self.require_client_certificate,
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [{
                        "certificate_chain": {"filename": self.server_cert.to_string_lossy()},
                        "private_key": {"filename": self.server_key.to_string_lossy()}
                    }],
                    "validation_context": {
                        "trusted_ca": {"filename": self.client_ca.to_string_lossy()},
                        "allow_expired_certificate": self.allow_expired
                    }
                }
            }
        })
    }
}

/// What to start.
pub struct EnvoyConfig {
    pub http_filters: Vec<Value>,
    pub clusters: Vec<Value>,
    pub upstream_port: u16,
    pub concurrency: u32,
    /// Extra process environment (for filters reading host env through the VM).
    pub env: Vec<(String, String)>,
    /// Answer every request with a direct 200 instead of proxying (benchmarks: filter cost only).
    pub direct_response: bool,
    /// Log level of Envoy (`info` in tests, `warning` in benchmarks).
    pub log_level: &'static str,
    /// TLS on the listener ([`EnvoyConfig::with_mtls`]); plain HTTP (and h2c) when `None`.
    pub tls: Option<DownstreamTls>,
    /// Routes tried before the catch-all one to `upstream` ([`EnvoyConfig::with_route`]).
    pub routes: Vec<Value>,
    /// Forward the client certificate's details to upstreams in `x-forwarded-client-cert`
    /// ([`EnvoyConfig::forwarding_client_cert`]).
    pub forward_client_cert: bool,
}

impl EnvoyConfig {
    pub fn new(upstream_port: u16, http_filters: Vec<Value>) -> EnvoyConfig {
        EnvoyConfig {
            http_filters,
            clusters: Vec::new(),
            upstream_port,
            concurrency: 1,
            env: Vec::new(),
            direct_response: false,
            log_level: "info",
            tls: None,
            routes: Vec::new(),
            forward_client_cert: false,
        }
        .with_env("EDGEGUARD_STORE_TOKEN", STORE_TOKEN)
        .with_env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            &crate::tools::native_dir().to_string_lossy(),
        )
    }

    /// Adds a variable to Envoy's environment.
    pub fn with_env(mut self, key: &str, value: &str) -> EnvoyConfig {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Terminates mutual TLS on the listener: `server_cert`/`server_key` (PEM) as the server's
    /// identity, client certificates required and checked against `client_ca` (PEM). Requests
    /// then go through `curl` ([`crate::mtls::curl`]), not the plain-HTTP helpers.
    pub fn with_mtls(self, server_cert: &Path, server_key: &Path, client_ca: &Path) -> EnvoyConfig {
        self.with_tls(server_cert, server_key, client_ca, true)
    }

    /// [`EnvoyConfig::with_mtls`] choosing whether a client certificate is required (`false`:
    /// optional, checked against `client_ca` when presented).
    pub fn with_tls(
        mut self,
        server_cert: &Path,
        server_key: &Path,
        client_ca: &Path,
        require_client_certificate: bool,
    ) -> EnvoyConfig {
        self.tls = Some(DownstreamTls {
            server_cert: server_cert.to_path_buf(),
            server_key: server_key.to_path_buf(),
            client_ca: client_ca.to_path_buf(),
            require_client_certificate,
            allow_expired: false,
        });
        self
    }

    /// With [`EnvoyConfig::with_tls`]: the handshake accepts expired client certificates.
    pub fn allowing_expired_client_certificates(mut self) -> EnvoyConfig {
        if let Some(tls) = self.tls.as_mut() {
            tls.allow_expired = true;
        }
        self
    }

    /// Requests whose path starts with `prefix` go to `cluster` (added to `clusters` by the
    /// caller), before the catch-all route.
    pub fn with_route(mut self, prefix: &str, cluster: &str) -> EnvoyConfig {
        self.routes.push(
            json!({"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "15s"}}),
        );
        self
    }

    /// `forward_client_cert_details: SANITIZE_SET`: whatever `x-forwarded-client-cert` a client
    /// sends is dropped, and on an mTLS connection Envoy sets its own (with `Hash`, the SHA-256
    /// of the client certificate's DER, and the certificate's URI SANs and subject).
    pub fn forwarding_client_cert(mut self) -> EnvoyConfig {
        self.forward_client_cert = true;
        self
    }

    pub fn bootstrap(&self) -> Value {
        let mut filters = self.http_filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let route = if self.direct_response {
            json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
        } else {
            json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "15s"}})
        };
        let mut clusters = vec![cluster("upstream", self.upstream_port)];
        clusters.extend(self.clusters.iter().cloned());
        let mut bootstrap = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "codec_type": "AUTO",
                            "max_request_headers_kb": 96,
                            "normalize_path": true,
                            "merge_slashes": true,
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": self.routes.iter().cloned().chain([route]).collect::<Vec<_>>()
                            }]},
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        });
        if self.forward_client_cert {
            let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
                ["filters"][0]["typed_config"];
            hcm["forward_client_cert_details"] = json!("SANITIZE_SET");
            hcm["set_current_client_cert_details"] = json!({"subject": true, "uri": true});
        }
        if let Some(tls) = &self.tls {
            bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] =
                tls.transport_socket();
        }
        bootstrap
    }
}

/// A running Envoy.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; panics with its log otherwise.
    pub fn start(cfg: &EnvoyConfig) -> Envoy {
        match Envoy::try_start(cfg) {
            Ok(e) => e,
            Err(log) => panic!("Envoy did not start:\n{log}"),
        }
    }

    /// Starts Envoy; `Err(log)` when it exits instead of becoming ready.
    pub fn try_start(cfg: &EnvoyConfig) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let bootstrap = dir.path().join("envoy.json");
        std::fs::write(&bootstrap, cfg.bootstrap().to_string()).expect("write bootstrap");
        let admin_file = dir.path().join("admin.txt");
        let mut cmd = Command::new(crate::tools::envoy());
        cmd.arg("-c")
            .arg(&bootstrap)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                &cfg.concurrency.to_string(),
            ])
            .args(["-l", cfg.log_level])
            .arg("--admin-address-path")
            .arg(&admin_file);
        if cfg.log_level == "info" {
            cmd.args(["--component-log-level", "wasm:debug"]);
        }
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("envoy", cmd, &dir.path().join("envoy.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin_port = loop {
            if !proc.running() {
                return Err(proc.log_text());
            }
            if let Some(port) = std::fs::read_to_string(&admin_file).ok().and_then(|s| {
                s.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            }) {
                break port;
            }
            if Instant::now() > deadline {
                return Err(format!("no admin address after 30 s\n{}", proc.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        loop {
            if !proc.running() {
                return Err(proc.log_text());
            }
            let ready = http::get(admin_port, "/ready", &[]).map(|r| r.body.trim() == "LIVE");
            if ready.unwrap_or(false) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after 30 s\n{}", proc.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let listeners = http::get(admin_port, "/listeners?format=json", &[])
            .map_err(|e| format!("admin /listeners: {e}"))?;
        let v: Value = serde_json::from_str(&listeners.body).map_err(|e| e.to_string())?;
        let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .ok_or_else(|| format!("no listener port in {v}"))? as u16;
        Ok(Envoy {
            port,
            admin_port,
            proc,
            _dir: dir,
        })
    }

    /// A request to the listener.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> http::Resp {
        http::get(self.port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A request with raw bytes in the path and header values.
    pub fn request_bytes(
        &self,
        method: &str,
        path: &[u8],
        headers: &[(&str, &[u8])],
    ) -> http::Resp {
        http::request_bytes(self.port, method, path, headers, b"")
            .unwrap_or_else(|e| panic!("{method} {}: {e}", String::from_utf8_lossy(path)))
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> http::Resp {
        http::request(self.port, method, path, headers, "")
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        http::get(self.admin_port, "/stats/prometheus", &[])
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// The value of a counter on `/stats/prometheus` (sum over label sets), 0 when absent.
    /// edgeguard's filter metrics (`edgeguard_*`) are found under either build's name: the
    /// wasm filters' `edgeguard_jwt_shape_allowed` is the native modules'
    /// `envoy_edgeguard_jwt_shape_allowed` (Envoy prefixes a module's metrics).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.prometheus();
        let mut v = metric_value(&text, name);
        if name.starts_with("edgeguard_") {
            v += metric_value(&text, &format!("envoy_{name}"));
        }
        v
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Resident set size of the Envoy process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Sums a metric's samples in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}
