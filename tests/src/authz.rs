//! `edgeguard authz` as a real process on free ports, and the real grpcurl against it.

use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use serde_json::{json, Value};

use crate::http;
use crate::postgres::Postgres;
use crate::process::{free_port, wait_for_port, Proc};

/// The store feed token every `edgeguard authz` the harness starts gets
/// (`EDGEGUARD_STORE_TOKEN`) unless the test sets the variable itself: portal-auth filters
/// in tests send it (`Authorization: Bearer <STORE_TOKEN>`).
pub const STORE_TOKEN: &str = "edgeguard-test-store-token-0123456789abcdef";

/// A running `edgeguard authz`.
pub struct Authz {
    pub port: u16,
    pub metrics_port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Authz {
    /// Starts it with `env` on top of free ports, loopback, text logs at debug level and
    /// `EDGEGUARD_STORE_TOKEN=`[`STORE_TOKEN`] (unless `env` sets it; an empty value leaves it
    /// unset: the store feed is off).
    pub fn start(env: &[(&str, &str)]) -> Authz {
        let dir = tempfile::tempdir().expect("tempdir");
        // PORT / METRICS_PORT in `env` win (a restart on the same ports)
        let given = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse::<u16>().ok())
        };
        let port = given("PORT").unwrap_or_else(free_port);
        let metrics_port = given("METRICS_PORT").unwrap_or_else(free_port);
        let mut cmd = Command::new(crate::tools::edgeguard());
        cmd.arg("authz")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .env("LISTEN_ADDRESS", "127.0.0.1")
            .env("LOG_FORMAT", "text")
            .env("LOGGER_LEVEL", "debug")
            .env("EDGEGUARD_STORE_TOKEN", STORE_TOKEN);
        for (k, v) in env {
            if *k == "EDGEGUARD_STORE_TOKEN" && v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let proc = Proc::spawn("edgeguard authz", cmd, &dir.path().join("authz.log"));
        let mut a = Authz {
            port,
            metrics_port,
            proc,
            _dir: dir,
        };
        let ok = wait_for_port(port, Duration::from_secs(20))
            && wait_for_port(metrics_port, Duration::from_secs(5));
        assert!(
            ok && a.proc.running(),
            "edgeguard authz did not start:\n{}",
            a.log()
        );
        a
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// GET on the HTTP port.
    pub fn http(&self, path: &str) -> http::Resp {
        http::get(self.metrics_port, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn metrics(&self) -> String {
        self.http("/metrics").body
    }

    /// GET `/store/v1/snapshot` (`?since=...` in `query`) with `Authorization: Bearer
    /// <token>` when a token is given.
    pub fn store_feed(&self, query: &str, token: Option<&str>) -> http::Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        http::get(
            self.metrics_port,
            &format!("/store/v1/snapshot{query}"),
            &headers,
        )
        .unwrap_or_else(|e| panic!("GET /store/v1/snapshot: {e}"))
    }

    /// Waits for /readyz to answer 200.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if http::get(self.metrics_port, "/readyz", &[])
                .map(|r| r.status == 200)
                .unwrap_or(false)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Runs grpcurl with `args` then the address and `rpc`; returns (exit code, stdout, stderr).
    pub fn grpcurl(&self, args: &[&str], rpc: &str) -> (i32, String, String) {
        let out = Command::new(crate::tools::grpcurl())
            .arg("-plaintext")
            .args(args)
            .arg(self.addr())
            .arg(rpc)
            .output()
            .expect("run grpcurl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// PEAS's documented grpcurl Check (method GET, path /v1/<app>, the key raw in
    /// `authorization`), with optional extra headers; returns grpcurl's JSON.
    pub fn check_request(&self, request: &Value) -> Value {
        let (code, out, err) = self.grpcurl(
            &["-d", &request.to_string()],
            "envoy.service.auth.v3.Authorization/Check",
        );
        assert_eq!(code, 0, "grpcurl failed: {err}\n{out}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("grpcurl output is not JSON ({e}): {out}"))
    }

    pub fn check(&self, path: &str, headers: &[(&str, &str)]) -> Value {
        let h: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.check_request(&json!({"attributes": {"request": {"http": {"method": "GET", "path": path, "headers": h}}}}))
    }

    /// `grpc.health.v1.Health/Check` status string for `service` ("" = overall).
    pub fn health(&self, service: &str) -> String {
        let (_, out, err) = self.grpcurl(
            &["-d", &json!({"service": service}).to_string()],
            "grpc.health.v1.Health/Check",
        );
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("error: {err}{out}"))
    }
}

/// A direct gRPC Check client (tonic, one HTTP/2 connection) for tests that send many
/// requests or poll without pause; grpcurl starts a process per call.
pub struct CheckClient {
    rt: tokio::runtime::Runtime,
    client: AuthorizationClient<tonic::transport::Channel>,
}

impl CheckClient {
    /// A client of `addr` (`host:port`); connects on first use and reconnects as needed.
    pub fn new(addr: &str) -> CheckClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        let channel = {
            let _guard = rt.enter();
            endpoint.connect_lazy()
        };
        CheckClient {
            rt,
            client: AuthorizationClient::new(channel),
        }
    }

    /// Sends `request`; the response, or the gRPC error as text.
    pub fn send(&mut self, request: CheckRequest) -> Result<CheckResponse, String> {
        let client = &mut self.client;
        self.rt
            .block_on(client.check(request))
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    }

    /// Sends every request, `concurrency` at a time on the one connection; the status of
    /// each verdict in order (0 for a gRPC error).
    pub fn statuses(&mut self, requests: Vec<CheckRequest>, concurrency: usize) -> Vec<u16> {
        let n = requests.len();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(
            requests.into_iter().enumerate().collect::<Vec<_>>(),
        ));
        let client = self.client.clone();
        self.rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let queue = queue.clone();
                let mut client = client.clone();
                tasks.spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                        let Some((i, req)) = next else { break };
                        let status = client
                            .check(req)
                            .await
                            .map(|r| response_status(r.get_ref()))
                            .unwrap_or(0);
                        out.push((i, status));
                    }
                    out
                });
            }
            let mut all = vec![0u16; n];
            while let Some(Ok(part)) = tasks.join_next().await {
                for (i, status) in part {
                    all[i] = status;
                }
            }
            all
        })
    }

    /// The HTTP status of the verdict for app `app` (in `Portal-Application-ID`) with the
    /// key `key` in `Authorization` (`""`: none): 200, or the denied status.
    pub fn status(&mut self, app: &str, key: &str) -> Result<u16, String> {
        let r = self.send(crate::bench_authz::check_request(app, key))?;
        Ok(response_status(&r))
    }
}

/// The HTTP status a CheckResponse carries: 200 for OK, else the denied status.
pub fn response_status(r: &CheckResponse) -> u16 {
    match &r.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d
            .status
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .unwrap_or(403),
        _ => 0,
    }
}

/// The HTTP status code a Check verdict carries: 200 for OK, else the denied status.
pub fn verdict_status(v: &Value) -> u16 {
    if v.get("okResponse").is_some() {
        return 200;
    }
    let name = v["deniedResponse"]["status"]["code"]
        .as_str()
        .unwrap_or_default();
    match name {
        "BadRequest" => 400,
        "Unauthorized" => 401,
        "NotFound" => 404,
        "TooManyRequests" => 429,
        "ServiceUnavailable" => 503,
        other => panic!("unexpected denied status {other:?} in {v}"),
    }
}

/// The denied body of a Check verdict, parsed.
pub fn verdict_body(v: &Value) -> Value {
    serde_json::from_str(v["deniedResponse"]["body"].as_str().unwrap_or("null"))
        .unwrap_or(Value::Null)
}

/// The headers an OK verdict sets: (key, value) pairs.
pub fn verdict_headers(v: &Value) -> Vec<(String, String)> {
    v["okResponse"]["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["header"]["key"].as_str().unwrap_or_default().to_string(),
                        h["header"]["value"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Grove schema, our usage table and (optionally) the NOTIFY triggers, then the test rows:
/// a public free app, a keyed unlimited app (`sk_live_123`), an over-quota free app, an app
/// without account, a key-required-but-missing app, a deleted app and an app whose key has a
/// quote. All in one transaction: a store polling meanwhile sees all of it or nothing.
pub fn seed(pg: &Postgres, with_triggers: bool) {
    pg.psql(&format!("BEGIN;\n{}\nCOMMIT;\n", seed_sql(with_triggers)));
}

/// The SQL of [`seed`], without the transaction around it.
pub fn seed_sql(with_triggers: bool) -> String {
    let mut sql = String::new();
    for f in ["0001_grove_schema.sql", "0002_account_monthly_usage.sql"] {
        sql.push_str(&crate::tools::repo_file(&format!(
            "sidecars/portal-store/migrations/{f}"
        )));
        sql.push('\n');
    }
    if with_triggers {
        sql.push_str(&crate::tools::repo_file(
            "sidecars/portal-store/migrations/0003_change_notify.sql",
        ));
        sql.push('\n');
    }
    sql.push_str(
        "INSERT INTO accounts (id, plan_type, monthly_user_limit) VALUES
           ('acc_free', 'PLAN_FREE', NULL), ('acc_unl', 'PLAN_UNLIMITED', 40000000),
           ('acc_over', 'PLAN_FREE', 0), ('acc_null', NULL, NULL);
         INSERT INTO portal_applications (id, account_id) VALUES
           ('app_public', 'acc_free'), ('app_keyed', 'acc_unl'), ('app_over', 'acc_over'),
           ('app_noacct', NULL), ('app_nokey', 'acc_free'), ('app_deleted', 'acc_free'), ('app_quote', 'acc_null');
         UPDATE portal_applications SET deleted = true WHERE id = 'app_deleted';
         INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required) VALUES
           ('app_keyed', 'sk_live_123', true), ('app_nokey', NULL, true), ('app_public', 'unused', false),
           ('app_quote', 'k\"ey', true);
         INSERT INTO account_monthly_usage (account_id, month, relays) VALUES
           ('acc_over', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 1500000),
           ('acc_free', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 1000000);",
    );
    sql
}
