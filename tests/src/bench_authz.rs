//! `make bench` sections `authz` (issue #3) and `portal` (issue #4).
//!
//! `authz`: `edgeguard authz` over a throwaway Postgres holding 1,000,000 portal apps
//! (generated with `generate_series`): time and memory of the load, Envoy with no auth vs
//! Envoy + ext_authz → `edgeguard authz` (wrk, alternating rounds), a direct gRPC Check load
//! ([`CheckLoad`], the same code as the `edgeguard-checkload` binary), and Check latency while
//! full store refreshes run every few seconds.
//!
//! `portal`: no auth vs the floor wasm filter vs portal-auth (wasm, local store copy) vs
//! ext_authz → `edgeguard authz` at 100,000 apps, and Envoy's memory per worker VM for a store
//! copy of 100,000 apps.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{json, Value};

use crate::authz::Authz;
use crate::bench::{median, wrk, Load, WrkResult};
use crate::envoy::{cluster, grpc_cluster, wasm_filter, Envoy, EnvoyConfig};
use crate::http;
use crate::postgres::Postgres;
use crate::process::free_port;
use crate::tools;

pub fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------------------------------
// the direct gRPC Check load generator

/// A closed-loop gRPC `Authorization/Check` load: `concurrency` requests in flight at all
/// times, spread over `connections` HTTP/2 connections, for `warmup` (not recorded) then
/// `duration` (recorded). Requests rotate over `targets` (app id, key): the app id in
/// `portal-application-id`, the key raw in `authorization`, as Envoy's ext_authz sends them.
#[derive(Clone, Debug)]
pub struct CheckLoad {
    /// `host:port` of the gRPC server.
    pub addr: String,
    pub connections: usize,
    pub concurrency: usize,
    /// Tokio worker threads of the generator (1 = a current-thread runtime).
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub targets: Vec<(String, String)>,
    /// Keep every recorded sample (start offset, latency) in the result.
    pub keep_samples: bool,
}

/// One recorded request: when it started (µs after the measured phase began) and how long
/// it took (µs).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub start_us: u64,
    pub latency_us: u32,
}

/// What a [`CheckLoad`] measured.
#[derive(Clone, Debug, Default)]
pub struct CheckLoadResult {
    /// Requests that completed inside the measured phase.
    pub requests: u64,
    /// ... of which the verdict was OK (gRPC status 0 in the CheckResponse).
    pub ok: u64,
    /// ... of which the verdict was a denial.
    pub denied: u64,
    /// RPCs that failed (transport or gRPC error).
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Wall clock at the start of the measured phase.
    pub started_at: Option<SystemTime>,
    pub samples: Vec<Sample>,
}

/// Nearest-rank percentile of sorted latencies (µs), in ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

impl CheckLoadResult {
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests, "ok": self.ok, "denied": self.denied, "errors": self.errors,
            "first_error": self.first_error, "seconds": self.seconds, "rps": self.rps,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms, "max_ms": self.max_ms,
        })
    }
}

/// The CheckRequest Envoy's ext_authz would send for `GET /relay` of `app` with `key`.
pub fn check_request(app: &str, key: &str) -> CheckRequest {
    let path = "/relay";
    let headers: HashMap<String, String> = [
        (":authority", "bench.edgeguard"),
        (":method", "GET"),
        (":path", path),
        (":scheme", "http"),
        ("user-agent", "edgeguard-checkload"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5f0c6a9e-2b7d-4c1e-9a3f-8d2e1b0c4a77"),
        ("portal-application-id", app),
        ("authorization", key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "1".into(),
                    method: "GET".into(),
                    headers,
                    path: path.into(),
                    host: "bench.edgeguard".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[derive(Default)]
struct TaskStats {
    ok: u64,
    denied: u64,
    errors: u64,
    first_error: Option<String>,
    samples: Vec<Sample>,
}

impl CheckLoad {
    /// Runs the load on its own Tokio runtime (blocking the caller).
    pub fn run(&self) -> Result<CheckLoadResult, String> {
        let rt = if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .enable_all()
                .build()
        }
        .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(self.run_async())
    }

    async fn run_async(&self) -> Result<CheckLoadResult, String> {
        if self.targets.is_empty() {
            return Err("no targets".into());
        }
        let mut channels = Vec::new();
        for _ in 0..self.connections.max(1) {
            // one Endpoint::connect = one HTTP/2 connection
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            channels.push(ch);
        }
        let requests: Arc<Vec<CheckRequest>> = Arc::new(
            self.targets
                .iter()
                .map(|(a, k)| check_request(a, k))
                .collect(),
        );
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        let measure_from = t0 + self.warmup;
        let deadline = measure_from + self.duration;
        let mut tasks = Vec::new();
        for i in 0..self.concurrency.max(1) {
            let mut client = AuthorizationClient::new(channels[i % channels.len()].clone());
            let requests = requests.clone();
            let stride = self.concurrency.max(1);
            tasks.push(tokio::spawn(async move {
                let mut st = TaskStats::default();
                let mut idx = i;
                loop {
                    let started = Instant::now();
                    if started >= deadline {
                        break;
                    }
                    let req = requests[idx % requests.len()].clone();
                    idx += stride;
                    let result = client.check(req).await;
                    let ended = Instant::now();
                    if started < measure_from || ended > deadline {
                        continue;
                    }
                    match result {
                        Ok(resp) => {
                            let code = resp.get_ref().status.as_ref().map_or(-1, |s| s.code);
                            if code == 0 {
                                st.ok += 1;
                            } else {
                                st.denied += 1;
                            }
                        }
                        Err(e) => {
                            st.errors += 1;
                            if st.first_error.is_none() {
                                st.first_error = Some(e.to_string());
                            }
                        }
                    }
                    st.samples.push(Sample {
                        start_us: started.duration_since(measure_from).as_micros() as u64,
                        latency_us: ended
                            .duration_since(started)
                            .as_micros()
                            .min(u128::from(u32::MAX)) as u32,
                    });
                }
                st
            }));
        }
        let mut all = TaskStats::default();
        for t in tasks {
            let st = t.await.map_err(|e| format!("load task: {e}"))?;
            all.ok += st.ok;
            all.denied += st.denied;
            all.errors += st.errors;
            if all.first_error.is_none() {
                all.first_error = st.first_error;
            }
            all.samples.extend(st.samples);
        }
        let seconds = self.duration.as_secs_f64();
        let mut lat: Vec<u32> = all.samples.iter().map(|s| s.latency_us).collect();
        lat.sort_unstable();
        all.samples.sort_unstable_by_key(|s| s.start_us);
        let requests = all.samples.len() as u64;
        Ok(CheckLoadResult {
            requests,
            ok: all.ok,
            denied: all.denied,
            errors: all.errors,
            first_error: all.first_error,
            seconds,
            rps: requests as f64 / seconds,
            p50_ms: percentile_ms(&lat, 50.0),
            p90_ms: percentile_ms(&lat, 90.0),
            p99_ms: percentile_ms(&lat, 99.0),
            p999_ms: percentile_ms(&lat, 99.9),
            max_ms: lat.last().map_or(f64::NAN, |v| f64::from(*v) / 1000.0),
            started_at: Some(wall0 + self.warmup),
            samples: if self.keep_samples {
                all.samples
            } else {
                Vec::new()
            },
        })
    }
}

// ------------------------------------------------------------------------------------------
// data, processes, measurements

/// Fills the Grove tables with `apps` portal apps over `accounts` accounts (one in ten on
/// PLAN_UNLIMITED with a 40M limit), 1% of apps deleted, 30% with a required key
/// (`md5('key' || n)`), 10% with settings but no key required, this month's usage for a
/// quarter of the accounts (one in 500 of those over the free limit).
pub fn populate(pg: &Postgres, apps: u32, accounts: u32) {
    for f in ["0001_grove_schema.sql", "0002_account_monthly_usage.sql"] {
        pg.psql(&tools::repo_file(&format!(
            "sidecars/portal-store/migrations/{f}"
        )));
    }
    pg.psql(&format!(
        "BEGIN;
         INSERT INTO accounts (id, plan_type, monthly_user_limit)
           SELECT 'ac' || i,
                  CASE WHEN i % 10 = 0 THEN 'PLAN_UNLIMITED' ELSE 'PLAN_FREE' END,
                  CASE WHEN i % 10 = 0 THEN 40000000 ELSE NULL END
           FROM generate_series(1, {accounts}) AS i;
         INSERT INTO portal_applications (id, account_id, deleted)
           SELECT 'app' || i, 'ac' || (1 + (i::bigint * 7919) % {accounts}), i % 100 = 99
           FROM generate_series(1, {apps}) AS i;
         INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required)
           SELECT 'app' || i, md5('key' || i), i % 10 < 3
           FROM generate_series(1, {apps}) AS i WHERE i % 10 < 4;
         INSERT INTO account_monthly_usage (account_id, month, relays)
           SELECT 'ac' || i, date_trunc('month', now() AT TIME ZONE 'UTC')::date,
                  CASE WHEN i % 500 = 1 THEN 1500000 ELSE (i::bigint * 7919) % 900000 END
           FROM generate_series(1, {accounts}) AS i WHERE i % 4 = 1;
         COMMIT;
         VACUUM ANALYZE;"
    ));
}

/// `n` keyed apps that are allowed (not deleted, key required, account under its limit),
/// spread over the id space: (app id, key).
pub fn sample_targets(pg: &Postgres, n: u32) -> Vec<(String, String)> {
    let out = pg.psql(&format!(
        "SELECT pa.id, s.secret_key
         FROM portal_applications pa
         JOIN portal_application_settings s ON s.application_id = pa.id
         LEFT JOIN account_monthly_usage u
           ON u.account_id = pa.account_id AND u.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
         WHERE NOT pa.deleted AND s.secret_key_required AND coalesce(u.relays, 0) <= 1000000
         ORDER BY md5(pa.id) LIMIT {n};"
    ));
    out.lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, k)| (a.to_string(), k.to_string()))
        .collect()
}

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM), 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Starts `edgeguard authz` on Postgres and waits for /readyz 200; returns it and the time
/// from spawning the process to the first 200.
pub fn start_authz_timed(pg: &Postgres, extra: &[(&str, &str)]) -> (Authz, Duration) {
    let url = pg.peas_url();
    let mut env: Vec<(&str, &str)> = vec![
        ("POSTGRES_CONNECTION_STRING", &url),
        ("RATE_LIMIT_HEADERS", "true"),
        ("NO_COLOR", "1"),
    ];
    env.extend_from_slice(extra);
    let t0 = Instant::now();
    let a = Authz::start(&env);
    let deadline = t0 + Duration::from_secs(180);
    loop {
        if http::get(a.metrics_port, "/readyz", &[])
            .map(|r| r.status == 200)
            .unwrap_or(false)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edgeguard authz not ready after 180 s:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (a, t0.elapsed())
}

/// A full reload the authz log reports: when it ended, how long it took, how many apps.
#[derive(Clone, Debug)]
pub struct Reload {
    pub ended: SystemTime,
    pub took: Duration,
    pub apps: u64,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-23T19:20:25.578700Z` → SystemTime.
fn parse_utc(ts: &str) -> Option<SystemTime> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // days from civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60;
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_secs_f64(sec))
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!(" {name}=");
    let i = line.find(&pat)? + pat.len();
    line[i..].split_whitespace().next()
}

/// The full reloads in an authz text log (`portal apps reloaded ... took_ms=N`, debug level).
pub fn reloads(log: &str) -> Vec<Reload> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("portal apps reloaded"))
        .filter_map(|l| {
            let ended = parse_utc(l.split_whitespace().next()?)?;
            let took = Duration::from_millis(field(&l, "took_ms")?.parse().ok()?);
            let apps = field(&l, "apps").and_then(|v| v.parse().ok()).unwrap_or(0);
            Some(Reload { ended, took, apps })
        })
        .collect()
}

pub fn start_envoy(filters: Vec<Value>, clusters: Vec<Value>, concurrency: u32) -> Envoy {
    let mut cfg = EnvoyConfig::new(1, filters);
    cfg.clusters = clusters;
    cfg.direct_response = true;
    cfg.concurrency = concurrency;
    cfg.log_level = "warning";
    Envoy::start(&cfg)
}

pub fn ext_authz_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"},
            "failure_mode_allow": false
        }
    })
}

fn floor_filter() -> Value {
    wasm_filter("floor", &tools::wasm("floor"), "", &[])
}

fn portal_auth_filter() -> Value {
    let config = json!({
        "store": {"cluster": "authz_http", "authority": "edgeguard-authz", "refresh_interval_ms": 1000, "timeout_ms": 10000},
        "rate_limit_headers": true
    });
    crate::envoy::portal_auth_filter(&config.to_string())
}

/// Envoy's plain `/stats` counters and gauges whose names contain `filter`.
fn envoy_stats(e: &Envoy, filter: &str) -> HashMap<String, f64> {
    http::get(e.admin_port, &format!("/stats?filter={filter}"), &[])
        .map(|r| r.body)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn stat(stats: &HashMap<String, f64>, name: &str) -> f64 {
    stats.get(name).copied().unwrap_or(0.0)
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

fn combine(runs: &[WrkResult]) -> WrkResult {
    WrkResult {
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
        requests: runs.iter().map(|r| r.requests).sum(),
        non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// wrk against every Envoy in turn, `rounds` times (after a 2 s warm-up each); the medians.
pub fn wrk_rounds(
    section: &str,
    envoys: &[(&str, &Envoy)],
    path: &str,
    headers: &[(&str, &str)],
    load: &Load,
    rounds: u32,
) -> Vec<WrkResult> {
    let warm = Load {
        seconds: 2,
        ..load.clone()
    };
    for (_, e) in envoys {
        wrk(
            &format!("http://127.0.0.1:{}{path}", e.port),
            &warm,
            None,
            headers,
        );
    }
    let mut runs: Vec<Vec<WrkResult>> = vec![Vec::new(); envoys.len()];
    for round in 1..=rounds {
        for (i, (name, e)) in envoys.iter().enumerate() {
            let r = wrk(
                &format!("http://127.0.0.1:{}{path}", e.port),
                load,
                None,
                headers,
            );
            eprintln!(
                "{section} round {round}/{rounds} {name:40} {:>9.0} req/s p50 {:.2} ms p99 {:.2} ms non-2xx {} errors {}",
                r.rps, r.p50_ms, r.p99_ms, r.non_2xx, r.errors
            );
            runs[i].push(r);
        }
    }
    runs.iter().map(|r| combine(r)).collect()
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn check_settings() -> (usize, usize, usize) {
    (
        env_u32("EDGEGUARD_BENCH_CHECK_CONNECTIONS", 4) as usize,
        env_u32("EDGEGUARD_BENCH_CHECK_CONCURRENCY", 32) as usize,
        env_u32("EDGEGUARD_BENCH_CHECK_THREADS", 1) as usize,
    )
}

fn run_check(load: &CheckLoad, label: &str) -> CheckLoadResult {
    let r = load
        .run()
        .unwrap_or_else(|e| panic!("check load ({label}): {e}"));
    eprintln!(
        "authz check {label:34} conns {} in-flight {:>3}: {:>8.0} req/s p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.1} ms ok {} denied {} errors {}{}",
        load.connections, load.concurrency, r.rps, r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms, r.ok, r.denied, r.errors,
        r.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
    );
    r
}

fn check_row(report: &mut String, label: &str, load: &CheckLoad, r: &CheckLoadResult) {
    let _ = writeln!(
        report,
        "| {label} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {}/{} |",
        load.connections,
        load.concurrency,
        r.rps,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.denied,
        r.errors
    );
}

// ------------------------------------------------------------------------------------------
// section `authz` (issue #3)

/// `make bench` section `authz`.
pub fn authz_section(report: &mut String) {
    let seconds = env_u32("EDGEGUARD_BENCH_SECONDS", 10);
    let rounds = env_u32("EDGEGUARD_BENCH_ROUNDS", 3);
    let apps = env_u32("EDGEGUARD_BENCH_AUTHZ_APPS", 1_000_000);
    let accounts = (apps / 5).max(1);
    let (connections, concurrency, threads) = check_settings();
    let load_before = load_avg();

    eprintln!("authz: Postgres with {apps} apps over {accounts} accounts ...");
    let pg = Postgres::start();
    let t = Instant::now();
    populate(&pg, apps, accounts);
    let gen_time = t.elapsed();
    let counts = pg.psql(
        "SELECT (SELECT count(*) FROM portal_applications WHERE NOT deleted),
                (SELECT count(*) FROM portal_application_settings WHERE secret_key_required),
                (SELECT count(*) FROM accounts)",
    );
    eprintln!(
        "authz: generated in {:.1} s (live apps|keyed|accounts: {counts})",
        gen_time.as_secs_f64()
    );
    let targets = sample_targets(&pg, 1000);
    assert!(!targets.is_empty(), "no keyed apps sampled");

    // 1. load time and memory; this instance does no periodic reload during the runs
    let (a, ready_after) = start_authz_timed(&pg, &[("PORTAL_APP_STORE_REFRESH_INTERVAL", "1h")]);
    let pid = a.proc.child.id();
    let first_load = reloads(&a.log()).first().cloned();
    std::thread::sleep(Duration::from_secs(1));
    let rss_loaded = proc_status_kib(pid, "VmRSS");
    let hwm_loaded = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "authz: ready after {:.2} s (full load {:?}); VmRSS {:.0} MiB, VmHWM {:.0} MiB",
        ready_after.as_secs_f64(),
        first_load.as_ref().map(|r| r.took),
        mib(rss_loaded),
        mib(hwm_loaded)
    );
    let (app0, key0) = targets[0].clone();
    let v = a.check(
        "/relay",
        &[("portal-application-id", &app0), ("authorization", &key0)],
    );
    assert!(v.get("okResponse").is_some(), "{app0} not allowed: {v}");

    // 2. through Envoy: no auth vs ext_authz → edgeguard authz
    let plain = start_envoy(vec![], vec![], 1);
    let ext = start_envoy(
        vec![ext_authz_filter()],
        vec![grpc_cluster("authz", a.port)],
        1,
    );
    let path = "/relay";
    let headers = [
        ("portal-application-id", app0.as_str()),
        ("authorization", key0.as_str()),
    ];
    for e in [&plain, &ext] {
        let r = e.get(path, &headers);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = ext.get(path, &[("portal-application-id", &app0)]);
    assert_eq!(
        r.status, 401,
        "ext_authz must deny without the key: {}",
        r.body
    );
    let wrk_load = Load {
        threads: 1,
        connections: 16,
        seconds,
    };
    let names = ["(a) no auth", "(e) ext_authz → edgeguard authz"];
    let envoys = [(names[0], &plain), (names[1], &ext)];
    let wrk_results = wrk_rounds("authz", &envoys, path, &headers, &wrk_load, rounds);
    drop(plain);
    drop(ext);

    // 3. direct gRPC Check, idle store
    let base = CheckLoad {
        addr: a.addr(),
        connections,
        concurrency,
        threads,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(u64::from(seconds)),
        targets: targets.clone(),
        keep_samples: false,
    };
    let mut idle_runs = Vec::new();
    for round in 1..=rounds {
        idle_runs.push(run_check(&base, &format!("idle round {round}/{rounds}")));
    }
    let sweep_secs = (u64::from(seconds) / 2).max(2);
    let mut sweep = Vec::new();
    for c in [1usize, 8, 128] {
        let l = CheckLoad {
            concurrency: c,
            connections: connections.min(c),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(sweep_secs),
            ..base.clone()
        };
        let r = run_check(&l, &format!("idle sweep in-flight {c}"));
        sweep.push((l, r));
    }
    let rss_after_runs = proc_status_kib(pid, "VmRSS");
    let hwm_after_runs = proc_status_kib(pid, "VmHWM");
    drop(a);

    // 4. Check latency while full reloads run every 3 s
    let (b, ready_b) = start_authz_timed(&pg, &[("PORTAL_APP_STORE_REFRESH_INTERVAL", "3s")]);
    let pid_b = b.proc.child.id();
    let rss_b = proc_status_kib(pid_b, "VmRSS");
    wait_for("a periodic reload", Duration::from_secs(60), || {
        reloads(&b.log()).len() >= 2
    });
    let refresh_secs = u64::from(seconds).max(10) + 5;
    let during = CheckLoad {
        duration: Duration::from_secs(refresh_secs),
        keep_samples: true,
        addr: b.addr(),
        ..base.clone()
    };
    let rr = run_check(&during, "during 3 s reloads");
    std::thread::sleep(Duration::from_millis(300));
    let log_b = b.log();
    let all_reloads = reloads(&log_b);
    let hwm_b = proc_status_kib(pid_b, "VmHWM");
    let rss_b_end = proc_status_kib(pid_b, "VmRSS");
    drop(b);
    drop(pg);

    // requests started while a reload ran (+250 ms for dropping the old snapshot) vs the rest
    let start = rr.started_at.unwrap_or(UNIX_EPOCH);
    let end = start + Duration::from_secs(refresh_secs);
    let grace = Duration::from_millis(250);
    let windows: Vec<(u64, u64)> = all_reloads
        .iter()
        .filter(|r| r.ended + grace >= start && r.ended - r.took <= end)
        .map(|r| {
            let s = (r.ended - r.took)
                .duration_since(start)
                .unwrap_or_default()
                .as_micros() as u64;
            let e = (r.ended + grace)
                .duration_since(start)
                .unwrap_or_default()
                .as_micros() as u64;
            (s, e)
        })
        .collect();
    let (mut inside, mut outside): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
    for s in &rr.samples {
        if windows
            .iter()
            .any(|(a, b)| s.start_us >= *a && s.start_us <= *b)
        {
            inside.push(s.latency_us);
        } else {
            outside.push(s.latency_us);
        }
    }
    inside.sort_unstable();
    outside.sort_unstable();
    let reload_ms: Vec<f64> = all_reloads
        .iter()
        .skip(1)
        .map(|r| r.took.as_secs_f64() * 1000.0)
        .collect();

    // report
    let idle = CheckLoadResult {
        rps: median(idle_runs.iter().map(|r| r.rps).collect()),
        p50_ms: median(idle_runs.iter().map(|r| r.p50_ms).collect()),
        p90_ms: median(idle_runs.iter().map(|r| r.p90_ms).collect()),
        p99_ms: median(idle_runs.iter().map(|r| r.p99_ms).collect()),
        p999_ms: median(idle_runs.iter().map(|r| r.p999_ms).collect()),
        max_ms: idle_runs.iter().map(|r| r.max_ms).fold(0.0, f64::max),
        denied: idle_runs.iter().map(|r| r.denied).sum(),
        errors: idle_runs.iter().map(|r| r.errors).sum(),
        ..Default::default()
    };
    let load_after = load_avg();
    let _ = writeln!(
        report,
        "### edgeguard authz (ext_authz) with {apps} portal apps from Postgres\n"
    );
    let _ = writeln!(
        report,
        "Store: {counts} (live apps | keyed apps | accounts; `|`-separated), generated with `generate_series` in a throwaway Postgres in {:.0} s. Load average before/after the section: {load_before} / {load_after} (2 cores).\n",
        gen_time.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| store load (`edgeguard authz`, release) | measured | target | |"
    );
    let _ = writeln!(report, "|---|---:|---:|---|");
    let _ = writeln!(
        report,
        "| process start → /readyz 200 | {:.2} s | < 10 s | {} |",
        ready_after.as_secs_f64(),
        yes(ready_after < Duration::from_secs(10))
    );
    let _ = writeln!(
        report,
        "| ... second start (refresh run) | {:.2} s | < 10 s | {} |",
        ready_b.as_secs_f64(),
        yes(ready_b < Duration::from_secs(10))
    );
    if let Some(r) = &first_load {
        let _ = writeln!(
            report,
            "| ... of which the full load (query + build + publish, `took_ms`) | {:.2} s | | |",
            r.took.as_secs_f64()
        );
    }
    let _ = writeln!(
        report,
        "| VmRSS 1 s after ready | {:.0} MiB | < 600 MB | {} |",
        mib(rss_loaded),
        yes(rss_loaded * 1024 < 600_000_000)
    );
    let _ = writeln!(
        report,
        "| VmHWM (peak) after the load | {:.0} MiB | < 600 MB | {} |",
        mib(hwm_loaded),
        yes(hwm_loaded * 1024 < 600_000_000)
    );
    let _ = writeln!(
        report,
        "| VmRSS / VmHWM after all idle load runs | {:.0} / {:.0} MiB | | |",
        mib(rss_after_runs),
        mib(hwm_after_runs)
    );
    let _ = writeln!(
        report,
        "| VmRSS at ready / end, VmHWM with reloads every 3 s ({} reloads) | {:.0} / {:.0}, {:.0} MiB | < 600 MB | {} |",
        all_reloads.len().saturating_sub(1),
        mib(rss_b),
        mib(rss_b_end),
        mib(hwm_b),
        yes(hwm_b * 1024 < 600_000_000)
    );
    if !reload_ms.is_empty() {
        let _ = writeln!(
            report,
            "| periodic full reload (`took_ms`), median / max | {:.0} / {:.0} ms | | |",
            median(reload_ms.clone()),
            reload_ms.iter().copied().fold(0.0, f64::max)
        );
    }
    let _ = writeln!(
        report,
        "\nThrough Envoy (--concurrency 1, direct_response route, `GET /relay` with `portal-application-id` + `authorization` of one keyed app), wrk -t1 -c16 -d{seconds}s, median of {rounds} alternating rounds:\n"
    );
    let _ = writeln!(
        report,
        "| scenario | req/s | p50 ms | p99 ms | × (a) | non-2xx |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|");
    let a_rps = wrk_results[0].rps;
    for (name, r) in names.iter().zip(&wrk_results) {
        let _ = writeln!(
            report,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.rps / a_rps,
            r.non_2xx
        );
    }
    let _ = writeln!(
        report,
        "\nDirect gRPC `Authorization/Check` (in-process generator = `edgeguard-checkload`: tonic client, {threads} generator thread(s), closed loop, requests rotate over {} allowed keyed apps; authz uses its default 2 Tokio workers; generator and authz share the 2 cores):\n",
        targets.len()
    );
    let _ = writeln!(
        report,
        "| run | connections | in flight | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | denied/errors |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    check_row(
        report,
        &format!("idle, median of {rounds} × {seconds} s"),
        &base,
        &idle,
    );
    for (l, r) in &sweep {
        check_row(report, &format!("idle, {sweep_secs} s"), l, r);
    }
    check_row(
        report,
        &format!("full reloads every 3 s, {refresh_secs} s, all requests"),
        &during,
        &rr,
    );
    let p99_in = percentile_ms(&inside, 99.0);
    let p99_out = percentile_ms(&outside, 99.0);
    let _ = writeln!(
        report,
        "| ... requests started during one of {} reloads (+250 ms) | | | {} req | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | |",
        windows.len(),
        inside.len(),
        percentile_ms(&inside, 50.0),
        percentile_ms(&inside, 90.0),
        p99_in,
        percentile_ms(&inside, 99.9),
        inside.last().map_or(f64::NAN, |v| f64::from(*v) / 1000.0),
    );
    let _ = writeln!(
        report,
        "| ... requests started outside reloads | | | {} req | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | |",
        outside.len(),
        percentile_ms(&outside, 50.0),
        percentile_ms(&outside, 90.0),
        p99_out,
        percentile_ms(&outside, 99.9),
        outside.last().map_or(f64::NAN, |v| f64::from(*v) / 1000.0),
    );
    let ratio = wrk_results[1].rps / a_rps;
    let _ = writeln!(
        report,
        "\ntargets: (e) >= 0.6x (a): {ratio:.2}x [{}]; direct Check >= 20k req/s: {:.0} [{}], p99 < 2 ms: {:.2} ms [{}]; load < 10 s: {:.1} s [{}]; RSS < 600 MB: {:.0} MiB, peak {:.0} MiB [{}]; p99 during reloads < 2x idle p99: {:.2} / {:.2} ms = {:.2}x [{}] (reload windows vs outside, same run: {:.2} / {:.2} ms = {:.2}x)\n",
        yes(ratio >= 0.6),
        idle.rps,
        yes(idle.rps >= 20_000.0),
        idle.p99_ms,
        yes(idle.p99_ms < 2.0),
        ready_after.as_secs_f64(),
        yes(ready_after < Duration::from_secs(10)),
        mib(rss_loaded),
        mib(hwm_b.max(hwm_loaded)),
        yes(hwm_b.max(hwm_loaded) * 1024 < 600_000_000),
        rr.p99_ms,
        idle.p99_ms,
        rr.p99_ms / idle.p99_ms,
        yes(rr.p99_ms < 2.0 * idle.p99_ms),
        p99_in,
        p99_out,
        p99_in / p99_out,
    );
}

// ------------------------------------------------------------------------------------------
// section `portal` (issue #4)

/// `make bench` section `portal`.
pub fn portal_section(report: &mut String) {
    let seconds = env_u32("EDGEGUARD_BENCH_SECONDS", 10);
    let rounds = env_u32("EDGEGUARD_BENCH_ROUNDS", 3);
    let apps = env_u32("EDGEGUARD_BENCH_PORTAL_APPS", 100_000);
    let accounts = (apps / 5).max(1);
    let load_before = load_avg();

    eprintln!("portal: Postgres with {apps} apps over {accounts} accounts ...");
    let pg = Postgres::start();
    populate(&pg, apps, accounts);
    let live: u64 = pg
        .psql("SELECT count(*) FROM portal_applications WHERE NOT deleted")
        .trim()
        .parse()
        .unwrap_or(0);
    let targets = sample_targets(&pg, 1);
    let (app0, key0) = targets.first().cloned().expect("a keyed app");
    let path = "/relay";
    let headers = [
        ("portal-application-id", app0.as_str()),
        ("authorization", key0.as_str()),
    ];

    // 1. memory: Envoy --concurrency 2 with portal-auth, first with nothing behind the store
    //    cluster, then with authz started on the very port the cluster names
    let grpc_port = free_port();
    let http_port = free_port();
    let mem_rss = |filters: Vec<Value>| {
        let e = start_envoy(filters, vec![cluster("authz_http", http_port)], 2);
        std::thread::sleep(Duration::from_secs(2));
        e.rss_kib()
    };
    let rss_plain_c2 = mem_rss(vec![]);
    let rss_floor_c2 = mem_rss(vec![floor_filter()]);
    let mem = start_envoy(
        vec![portal_auth_filter()],
        vec![cluster("authz_http", http_port)],
        2,
    );
    std::thread::sleep(Duration::from_secs(3));
    let rss_empty = mem.rss_kib();
    let wasm_stats = envoy_stats(&mem, "wasm");
    let r = mem.get(path, &headers);
    assert_eq!(r.status, 503, "store not loaded yet: {}", r.body);

    let (gp, hp) = (grpc_port.to_string(), http_port.to_string());
    let (a, ready_after) = start_authz_timed(&pg, &[("PORT", &gp), ("METRICS_PORT", &hp)]);
    let authz_rss = proc_status_kib(a.proc.child.id(), "VmRSS");
    let synced = wait_for("every VM's copy loaded", Duration::from_secs(60), || {
        let s = envoy_stats(&mem, "authz_http");
        stat(&s, "cluster.authz_http.upstream_rq_200") >= 2.0
            && stat(&s, "cluster.authz_http.upstream_rq_304") >= 2.0
    });
    // let every copy settle (a VM whose first fetch failed asks again within a second)
    std::thread::sleep(Duration::from_secs(3));
    let s0 = envoy_stats(&mem, "authz_http");
    let rss_full = mem.rss_kib();
    std::thread::sleep(Duration::from_secs(10));
    let s1 = envoy_stats(&mem, "authz_http");
    let rss_full_later = mem.rss_kib();
    let full_copies = stat(&s1, "cluster.authz_http.upstream_rq_200");
    let fetches_10s = stat(&s1, "cluster.authz_http.upstream_rq_total")
        - stat(&s0, "cluster.authz_http.upstream_rq_total");
    let store_apps = mem.metric("edgeguard_portal_auth_store_apps");
    let r = mem.get(path, &headers);
    assert_eq!(r.status, 200, "portal-auth at --concurrency 2: {}", r.body);
    drop(mem);
    eprintln!(
        "portal: authz ready in {:.1} s; Envoy c2 RSS empty {:.1} MiB → {:.1} MiB with {store_apps} apps; full copies fetched {full_copies}; fetches in 10 s {fetches_10s}; wasm stats {wasm_stats:?}",
        ready_after.as_secs_f64(),
        mib(rss_empty),
        mib(rss_full)
    );

    // 2. throughput at --concurrency 1
    let plain = start_envoy(vec![], vec![], 1);
    let floor = start_envoy(vec![floor_filter()], vec![], 1);
    let portal = start_envoy(
        vec![portal_auth_filter()],
        vec![cluster("authz_http", a.metrics_port)],
        1,
    );
    let ext = start_envoy(
        vec![ext_authz_filter()],
        vec![grpc_cluster("authz", a.port)],
        1,
    );
    wait_for("portal-auth copy loaded", Duration::from_secs(60), || {
        portal.get(path, &headers).status == 200
    });
    for (n, e) in [("plain", &plain), ("floor", &floor), ("ext", &ext)] {
        let r = e.get(path, &headers);
        assert_eq!(r.status, 200, "{n}: {}", r.body);
    }
    for e in [&portal, &ext] {
        let r = e.get(
            path,
            &[("portal-application-id", &app0), ("authorization", "wrong")],
        );
        assert_eq!(r.status, 401, "a wrong key must be denied: {}", r.body);
    }
    let load = Load {
        threads: 1,
        connections: 16,
        seconds,
    };
    let names = [
        "(a) no auth",
        "(f) floor: trivial wasm filter",
        "(p) portal-auth (wasm, local copy)",
        "(e) ext_authz → edgeguard authz",
    ];
    let envoys = [
        (names[0], &plain),
        (names[1], &floor),
        (names[2], &portal),
        (names[3], &ext),
    ];
    let results = wrk_rounds("portal", &envoys, path, &headers, &load, rounds);
    let allowed = portal.metric("edgeguard_portal_auth_allowed");
    drop((plain, floor, portal, ext));
    drop(a);
    drop(pg);

    let rps = |i: usize| results[i].rps;
    let load_after = load_avg();
    let _ = writeln!(
        report,
        "### portal-auth (wasm, local store copy) vs ext_authz, {live} live portal apps\n"
    );
    let _ = writeln!(
        report,
        "wrk -t1 -c16 -d{seconds}s, Envoy --concurrency 1, direct_response route, `GET {path}` with `portal-application-id` + `authorization` of one keyed app (allowed, `Rl-*` headers on in both), median of {rounds} alternating rounds. Load average before/after: {load_before} / {load_after} (2 cores; wrk, Envoy and authz share them).\n"
    );
    let _ = writeln!(
        report,
        "| scenario | req/s | p50 ms | p99 ms | × (a) | × (f) | × (e) | non-2xx |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (name, r)) in names.iter().zip(&results).enumerate() {
        let _ = writeln!(
            report,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            rps(i) / rps(0),
            rps(i) / rps(1),
            rps(i) / rps(3),
            r.non_2xx
        );
    }
    let vms = full_copies.max(1.0);
    let growth = mib(rss_full) - mib(rss_empty);
    let created = stat(&wasm_stats, "wasm.envoy.wasm.runtime.v8.created");
    let active = stat(&wasm_stats, "wasm.envoy.wasm.runtime.v8.active");
    let _ = writeln!(
        report,
        "\nEnvoy memory, --concurrency 2 (2 workers), store copy of {store_apps} apps (`edgeguard authz` over Postgres, ready {:.1} s after start, authz VmRSS {:.0} MiB):\n",
        ready_after.as_secs_f64(),
        mib(authz_rss)
    );
    let _ = writeln!(report, "| Envoy --concurrency 2 | VmRSS MiB |");
    let _ = writeln!(report, "|---|---:|");
    let _ = writeln!(report, "| (a) no auth, idle | {:.1} |", mib(rss_plain_c2));
    let _ = writeln!(report, "| (f) floor, idle | {:.1} |", mib(rss_floor_c2));
    let _ = writeln!(
        report,
        "| (p) portal-auth, store not reachable yet (empty copy) | {:.1} |",
        mib(rss_empty)
    );
    let _ = writeln!(
        report,
        "| (p) portal-auth, 3 s after every copy loaded ({:.1} s after authz was ready) | {:.1} |",
        synced.as_secs_f64(),
        mib(rss_full)
    );
    let _ = writeln!(
        report,
        "| (p) ... 10 s later | {:.1} |",
        mib(rss_full_later)
    );
    let _ = writeln!(
        report,
        "\nV8 VMs: created {created}, active {active}. Full copies fetched (`cluster.authz_http.upstream_rq_200`, each VM's first `?since=0`): {full_copies}; store requests in 10 s at refresh_interval_ms 1000 (`upstream_rq_total` delta): {fetches_10s} (≈ {:.1} VMs polling). RSS growth {growth:.1} MiB / {vms} copies = {:.1} MiB per VM.\n",
        fetches_10s / 10.0,
        growth / vms
    );
    let _ = writeln!(
        report,
        "targets: (p) >= 0.85x (a): {:.2}x [{}]; (p) >= 2x (e): {:.2}x [{}]; (p) vs floor (f): {:.2}x; 100k apps <= 50 MB per worker VM: {:.1} MiB [{}] (portal-auth allowed counter after the runs: {allowed})\n",
        rps(2) / rps(0),
        yes(rps(2) / rps(0) >= 0.85),
        rps(2) / rps(3),
        yes(rps(2) / rps(3) >= 2.0),
        rps(2) / rps(1),
        growth / vms,
        yes(growth / vms * 1.048_576 <= 50.0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_lines_and_timestamps() {
        let t = parse_utc("1970-01-02T00:00:01.500000Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(86_401_500)
        );
        let t = parse_utc("2026-11-23T19:20:25.578700Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_461_625
        );
        let log = "\u{1b}[2m2026-11-23T19:20:25.578700Z\u{1b}[0m DEBUG portal apps reloaded apps=990000 changed=0 version=7 took_ms=1234\nother\n";
        let r = reloads(log);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].took, Duration::from_millis(1234));
        assert_eq!(r[0].apps, 990_000);
        assert_eq!(percentile_ms(&[1000, 2000, 3000, 4000], 50.0), 2.0);
        assert_eq!(percentile_ms(&[1000, 2000, 3000, 4000], 99.0), 4.0);
    }
}
