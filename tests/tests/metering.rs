//! Usage metering end to end, real parts only: two Envoys with portal-auth, an Envoy with
//! ext_authz, two `edgeguard authz` replicas with metering on, one Postgres. Exact counts in
//! the table, a quota tripping on every Envoy within 2 s, SIGKILL of a replica mid-run (no
//! acknowledged count lost, none applied twice), an Envoy killed (loses at most its last
//! unreported interval), and a month rollover with a shifted clock reopening the account.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeguard_tests::authz::{seed, Authz};
use edgeguard_tests::envoy::{Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::http::Resp;
use edgeguard_tests::postgres::Postgres;
use edgeguard_tests::process::{eventually, Echo};
use edgeguard_tests::tools;
use edgeguard_verdict::portal_wire::{
    UsageAck, UsageEntry, UsageReport, USAGE_CONTENT_TYPE, USAGE_PATH,
};
use serde_json::{json, Value};

const APP: &str = "app_meter";
const ACCOUNT: &str = "acc_meter";
/// The filters' report interval in these tests.
const REPORT_MS: u64 = 200;
/// authz's flush interval in these tests (`EDGEGUARD_METERING_FLUSH_INTERVAL`).
const FLUSH_MS: u64 = 1000;

/// Grove schema + triggers + seed, metering's migration, and a metered account with one
/// public app (PLAN_UNLIMITED, limit `limit`).
fn database(limit: u64) -> Postgres {
    let pg = Postgres::start();
    seed(&pg, true);
    pg.psql(&tools::repo_file(
        "sidecars/portal-store/migrations/0004_metering.sql",
    ));
    pg.psql(&format!(
        "INSERT INTO accounts (id, plan_type, monthly_user_limit) VALUES ('{ACCOUNT}', 'PLAN_UNLIMITED', {limit});
         INSERT INTO portal_applications (id, account_id) VALUES ('{APP}', '{ACCOUNT}');
         INSERT INTO portal_application_settings (application_id, secret_key_required) VALUES ('{APP}', false);"
    ));
    pg
}

fn start_authz(pg: &Postgres, extra: &[(&str, &str)]) -> Authz {
    let url = pg.peas_url();
    let mut env = vec![
        ("POSTGRES_CONNECTION_STRING", url.as_str()),
        ("EDGEGUARD_METERING", "true"),
        ("EDGEGUARD_METERING_FLUSH_INTERVAL", "1s"),
        ("EDGEGUARD_QUOTA_HEADERS", "all"),
    ];
    env.extend_from_slice(extra);
    let a = Authz::start(&env);
    assert!(a.wait_ready(Duration::from_secs(20)), "{}", a.log());
    a
}

/// A static cluster with one endpoint per port (round robin).
fn cluster_of(name: &str, ports: &[u16], h2: bool) -> Value {
    let endpoints: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
    });
    if !h2 {
        // what an operator gives the store cluster with several replicas behind it (a
        // Kubernetes Service does the same with readiness): a replica that stops answering is
        // ejected after two connection failures, so the reports it had not acknowledged go to
        // a live one; random picks, so a report never keeps landing on one host because the
        // store sync takes every other round-robin turn
        c["lb_policy"] = json!("RANDOM");
        c["outlier_detection"] = json!({
            "split_external_local_origin_errors": true,
            "consecutive_local_origin_failure": 2,
            "interval": "0.5s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 50
        });
    }
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

/// Envoy with portal-auth (metering on, quota headers on every answer) syncing from and
/// reporting to every replica in `authz_http_ports`.
fn filter_envoy(flavour: Flavour, echo: &Echo, authz_http_ports: &[u16]) -> Envoy {
    let config = json!({
        "store": {"cluster": "authz_http", "refresh_interval_ms": 200, "timeout_ms": 2000},
        "metering": {"enabled": true, "report_interval_ms": REPORT_MS},
        "quota_headers": "all"
    })
    .to_string();
    let filter = flavour.filter("portal_auth", &config, &["EDGEGUARD_STORE_TOKEN"]);
    let mut cfg = EnvoyConfig::new(echo.port, vec![filter]);
    cfg.clusters
        .push(cluster_of("authz_http", authz_http_ports, false));
    cfg.concurrency = 2;
    Envoy::start(&cfg)
}

/// Envoy with ext_authz to every replica in `authz_grpc_ports`.
fn ext_authz_envoy(echo: &Echo, authz_grpc_ports: &[u16]) -> Envoy {
    let f = json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"},
            "failure_mode_allow": false
        }
    });
    let mut cfg = EnvoyConfig::new(echo.port, vec![f]);
    cfg.clusters
        .push(cluster_of("authz", authz_grpc_ports, true));
    Envoy::start(&cfg)
}

fn get(envoy: &Envoy) -> Resp {
    envoy.get(&format!("/v1/{APP}"), &[])
}

/// The account's metered relays this month (the shifted month when `month` is given).
fn metered(pg: &Postgres, month: &str) -> u64 {
    pg.psql(&format!(
        "SELECT coalesce(sum(metered_relays), 0) FROM account_monthly_usage WHERE account_id = '{ACCOUNT}' AND month = {month}"
    ))
    .trim()
    .parse()
    .unwrap_or(0)
}

const THIS_MONTH: &str = "date_trunc('month', now() AT TIME ZONE 'UTC')::date";

fn metric(authz: &Authz, line_start: &str) -> f64 {
    authz
        .metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn exact_counts_and_quota_on_every_envoy(flavour: Flavour) {
    let pg = database(10_000_000);
    let a = start_authz(&pg, &[]);
    let b = start_authz(&pg, &[]);
    let echo = Echo::start();
    let e1 = filter_envoy(flavour, &echo, &[a.metrics_port, b.metrics_port]);
    let e2 = filter_envoy(flavour, &echo, &[b.metrics_port, a.metrics_port]);
    let e3 = ext_authz_envoy(&echo, &[a.port, b.port]);
    for e in [&e1, &e2] {
        eventually(
            "the filter's store copy loaded",
            Duration::from_secs(10),
            || get(e).status == 200,
        );
    }
    // those first requests were counted too: start from what the table will hold
    eventually(
        "the warm-up requests are written",
        Duration::from_secs(10),
        || metered(&pg, THIS_MONTH) >= 2,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let base = metered(&pg, THIS_MONTH);

    // exactly N allowed requests, spread over both filter Envoys and the ext_authz Envoy
    // (whose Checks round-robin over both replicas)
    const PER_ENVOY: u64 = 150;
    for i in 0..PER_ENVOY {
        for e in [&e1, &e2, &e3] {
            let r = get(e);
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
        }
    }
    let n = 3 * PER_ENVOY;
    // allowed answers carry the RateLimit fields too (quota_headers / EDGEGUARD_QUOTA_HEADERS
    // "all"), on the way back to the client, through the filter and through ext_authz
    for e in [&e1, &e3] {
        let r = get(e);
        assert_eq!(r.status, 200);
        assert!(
            r.header("ratelimit-policy")
                .is_some_and(|p| p.starts_with("\"monthly\";q=10000000;w=")),
            "{:?}",
            r.headers
        );
        assert!(r
            .header("ratelimit")
            .is_some_and(|p| p.starts_with("\"monthly\";r=")));
        assert!(r.header("retry-after").is_none());
        assert!(r.echoed("ratelimit").is_none(), "not sent upstream");
    }
    let n = n + 2;
    eventually(
        "every allowed request is in the table",
        Duration::from_secs(10),
        || metered(&pg, THIS_MONTH) >= base + n,
    );
    // ... exactly once: later flushes add nothing
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(metered(&pg, THIS_MONTH), base + n, "counted exactly once");
    let per_app: u64 = pg
        .psql(&format!(
            "SELECT relays FROM edgeguard_app_monthly_usage WHERE app_id = '{APP}' AND month = {THIS_MONTH}"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(per_app, base + n);
    // both replicas wrote reports and their own Checks
    for r in [&a, &b] {
        assert!(
            metric(r, "edgeguard_usage_relays_applied_total{source=\"check\"}") > 0.0,
            "{}",
            r.metrics()
        );
        assert!(metric(r, "edgeguard_usage_flushes_total{result=\"ok\"}") > 0.0);
    }
    let filter_relays: f64 = [&a, &b]
        .iter()
        .map(|r| metric(r, "edgeguard_usage_relays_applied_total{source=\"filter\"}"))
        .sum();
    assert!(filter_relays >= 2.0 * PER_ENVOY as f64, "{filter_relays}");

    // a report retried on the other replica (its first acknowledgement lost) is acknowledged
    // there as already applied, and not added again
    let bearer = format!("Bearer {}", edgeguard_tests::authz::STORE_TOKEN);
    let report = UsageReport {
        reporter: "pa-retried-elsewhere".into(),
        seq: 1,
        entries: vec![UsageEntry {
            app_id: APP.into(),
            account_id: ACCOUNT.into(),
            relays: 7,
        }],
        devices: vec![],
    }
    .encode();
    let post = |port: u16, auth: &str, body: &[u8]| {
        edgeguard_tests::http::request_bytes(
            port,
            "POST",
            USAGE_PATH.as_bytes(),
            &[
                ("authorization", auth.as_bytes()),
                ("content-type", USAGE_CONTENT_TYPE.as_bytes()),
            ],
            body,
        )
        .unwrap()
    };
    let ack = |r: &Resp| {
        assert_eq!(r.status, 200, "{}", r.body);
        UsageAck::decode(r.body.as_bytes()).unwrap()
    };
    assert!(ack(&post(a.metrics_port, &bearer, &report)).applied);
    assert!(
        !ack(&post(b.metrics_port, &bearer, &report)).applied,
        "applied at most once"
    );
    assert!(!ack(&post(a.metrics_port, &bearer, &report)).applied);
    assert_eq!(post(b.metrics_port, "Bearer wrong", &report).status, 401);
    let garbage = post(b.metrics_port, &bearer, b"\xff\xff\xff");
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    assert_eq!(metered(&pg, THIS_MONTH), base + n + 7);
    let n = n + 7;
    assert!(metric(&b, "edgeguard_usage_reports_total{result=\"duplicate\"}") >= 1.0);

    // the usage endpoint agrees
    let usage = edgeguard_tests::http::get(
        a.metrics_port,
        &format!("/usage/v1/accounts/{ACCOUNT}"),
        &[(
            "authorization",
            &format!("Bearer {}", edgeguard_tests::authz::STORE_TOKEN),
        )],
    )
    .unwrap();
    assert_eq!(usage.status, 200, "{}", usage.body);
    let usage = usage.json();
    assert_eq!(usage["relays"], json!(base + n));
    assert_eq!(usage["limit"], json!(10_000_000));
    assert_eq!(usage["apps"], json!([APP]));

    // a quota of (count so far + K - 1) trips after K more requests: limited once the count
    // exceeds the limit (PEAS's strict >)
    const K: u64 = 20;
    let used = base + n;
    pg.psql(&format!(
        "UPDATE accounts SET monthly_user_limit = {} WHERE id = '{ACCOUNT}'",
        used + K - 1
    ));
    eventually(
        "the new limit reached the filters",
        Duration::from_secs(5),
        || {
            get(&e1)
                .header("ratelimit-policy")
                .is_some_and(|p| p.contains(&format!("q={};", used + K - 1)))
        },
    );
    // the probes above were allowed requests too: count what the table holds now
    let mut sent_after = 0u64;
    let crossed_at = loop {
        let now_used = metered(&pg, THIS_MONTH);
        if now_used > used + K - 1 {
            break Instant::now();
        }
        let r = get(if sent_after.is_multiple_of(2) {
            &e1
        } else {
            &e2
        });
        if r.status == 200 {
            sent_after += 1;
        }
        assert!(sent_after < 10 * K, "the quota never crossed in the table");
        std::thread::sleep(Duration::from_millis(20));
    };
    // every Envoy answers 429 within 2 s of the total crossing in Postgres
    let mut extra_allowed = 0;
    for (name, e) in [
        ("filter envoy 1", &e1),
        ("filter envoy 2", &e2),
        ("ext_authz envoy", &e3),
    ] {
        loop {
            let r = get(e);
            if r.status == 429 {
                let waited = crossed_at.elapsed();
                assert!(
                    waited <= Duration::from_secs(2),
                    "{name}: 429 only after {waited:?}"
                );
                eprintln!("{name}: 429 {waited:?} after the total crossed in Postgres");
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=31 * 86_400).contains(&retry), "{retry}");
                let limit = format!("\"monthly\";q={};w=", used + K - 1);
                assert!(
                    r.header("ratelimit-policy").unwrap().starts_with(&limit),
                    "{name}: {:?}",
                    r.headers
                );
                assert!(
                    r.header("ratelimit")
                        .unwrap()
                        .starts_with("\"monthly\";r=0;t="),
                    "{name}: {:?}",
                    r.headers
                );
                break;
            }
            assert_eq!(r.status, 200, "{name}: {}", r.body);
            extra_allowed += 1;
            assert!(
                crossed_at.elapsed() <= Duration::from_secs(2),
                "{name}: still 200 after 2 s"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    eprintln!(
        "quota crossed: {extra_allowed} requests allowed after the total crossed (2 s window)"
    );
}

fn sigkill_loses_nothing_acknowledged(flavour: Flavour) {
    let pg = database(100_000_000);
    let mut a = Some(start_authz(&pg, &[]));
    let b = start_authz(&pg, &[]);
    let echo = Echo::start();
    let ports = [a.as_ref().unwrap().metrics_port, b.metrics_port];
    let e1 = Arc::new(filter_envoy(flavour, &echo, &ports));
    let e2 = filter_envoy(flavour, &echo, &ports);
    let mut doomed = filter_envoy(flavour, &echo, &ports);
    for e in [&*e1, &e2, &doomed] {
        eventually(
            "the filter's store copy loaded",
            Duration::from_secs(10),
            || get(e).status == 200,
        );
    }
    eventually(
        "the warm-up requests are written",
        Duration::from_secs(10),
        || metered(&pg, THIS_MONTH) == 3,
    );

    // 1. an Envoy killed with SIGKILL loses what its filter counted since it last sent a
    //    report (a sent one is written even though its sender is gone): a report waits for its
    //    flush to be acknowledged before the next goes out, so at most one report interval plus
    //    one flush interval (and a tick) of its traffic
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&doomed).status, 200);
        times.push(Instant::now());
    }
    doomed.proc.stop();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    let written = metered(&pg, THIS_MONTH) - 3;
    let burst = times.len() as u64;
    assert!(
        written <= burst,
        "never more than sent: {written} > {burst}"
    );
    let lost = burst - written;
    let window = Duration::from_millis(REPORT_MS + FLUSH_MS + 300);
    let last_window = times.iter().filter(|t| killed - **t <= window).count() as u64;
    eprintln!(
        "Envoy SIGKILL after {burst} requests in 3 s: {written} written, {lost} lost; {last_window} were served in its last {window:?}"
    );
    assert!(
        lost <= last_window,
        "lost {lost}, more than the {last_window} requests of the last report + flush interval ({window:?})"
    );
    let base = metered(&pg, THIS_MONTH);

    // 2. SIGKILL replica A while reports wait in its queue for the next flush: every allowed
    //    request is still counted exactly once (A's queued reports were never acknowledged, so
    //    their filters resend them to B; what A had written is not written again)
    let allowed_e1 = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (e1, allowed, stop) = (e1.clone(), allowed_e1.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&e1);
                assert_eq!(r.status, 200, "{}", r.body);
                allowed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    a.take().unwrap().proc.stop();
    let mut allowed_e2 = 0u64;
    for _ in 0..60 {
        let r = get(&e2);
        assert_eq!(r.status, 200, "{}", r.body);
        allowed_e2 += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let sent = base + allowed_e1.load(Ordering::Relaxed) + allowed_e2;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = metered(&pg, THIS_MONTH);
        assert!(
            seen <= sent,
            "{seen} written for {sent} allowed: counted twice"
        );
        if seen == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {sent} allowed requests written after 15 s\nEnvoy 1: {}\nB: {}",
            e1.prometheus()
                .lines()
                .filter(|l| l.contains("portal_auth") && !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n"),
            b.metrics()
                .lines()
                .filter(|l| l.starts_with("edgeguard_usage"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... and stays exact: nothing arrives twice later
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        metered(&pg, THIS_MONTH),
        sent,
        "exactly once across a SIGKILL"
    );
    eprintln!(
        "replica SIGKILL: {sent} allowed, {sent} in the table; reports B refused as duplicates: {}",
        metric(&b, "edgeguard_usage_reports_total{result=\"duplicate\"}")
    );
}

fn month_rollover_reopens_the_account(flavour: Flavour) {
    let pg = database(5);
    // this replica's clock is 15 s before the end of the current UTC month (14-15 s from
    // `shifted_start`: the offset is in whole seconds)
    let shifted_start = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let month = edgeguard_verdict::quota::Month::of(now);
    let offset = month.next().start() - now - 15;
    let a = start_authz(
        &pg,
        &[("EDGEGUARD_TEST_CLOCK_OFFSET_SECONDS", &offset.to_string())],
    );
    let echo = Echo::start();
    let e = filter_envoy(flavour, &echo, &[a.metrics_port]);
    let old = format!("'{}'::date", month.first_day());
    let new = format!("'{}'::date", month.next().first_day());
    // 6 requests exceed the limit of 5 ...
    let mut allowed = 0;
    eventually("the account is limited", Duration::from_secs(12), || {
        let r = get(&e);
        if r.status == 200 {
            allowed += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
        r.status == 429
    });
    assert!(
        metered(&pg, &old) > 5,
        "written to the (shifted) current month"
    );
    assert!(
        shifted_start.elapsed() < Duration::from_secs(13),
        "limited before the month ended"
    );
    // ... until the month ends: open again, without a restart
    let waited = eventually(
        "the account is open in the new month",
        Duration::from_secs(25),
        || {
            std::thread::sleep(Duration::from_millis(100));
            get(&e).status == 200
        },
    );
    assert!(
        shifted_start.elapsed() >= Duration::from_secs(14),
        "reopened only after the month ended ({waited:?})"
    );
    eventually(
        "the new month's requests are written there",
        Duration::from_secs(5),
        || metered(&pg, &new) >= 1,
    );
    assert!(a.proc.child.id() > 0);
}

edgeguard_tests::flavoured!(
    exact_counts_and_quota_on_every_envoy,
    sigkill_loses_nothing_acknowledged,
    month_rollover_reopens_the_account,
);
