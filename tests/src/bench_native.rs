//! `make bench native`: portal-auth built both ways side by side (the proxy-wasm filter and
//! the native dynamic module) against no auth, the two floors and ext_authz, at Envoy
//! `--concurrency` 1 and 2; then the native module holding a large store (1,000,000 apps by
//! default): Envoy's RSS growth at `--concurrency 2` and how fast a change in Postgres reaches
//! the verdict.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::authz::STORE_TOKEN;
use crate::bench::Load;
use crate::bench_authz::{
    env_u32, ext_authz_filter as ext_authz, mib, populate, sample_targets, start_authz_timed,
    start_envoy, wait_for,
};
use crate::envoy::{cluster, dynamic_module_filter, grpc_cluster, wasm_filter, Envoy};
use crate::flavour::Flavour;
use crate::postgres::Postgres;
use crate::process::free_port;
use crate::tools;

fn portal_auth(flavour: Flavour) -> Value {
    let config = json!({
        "store": {"cluster": "authz_http", "authority": "edgeguard-authz", "refresh_interval_ms": 1000, "timeout_ms": 10000},
        "rate_limit_headers": true
    });
    flavour.filter(
        "portal_auth",
        &config.to_string(),
        &["EDGEGUARD_STORE_TOKEN"],
    )
}

fn floor(flavour: Flavour) -> Value {
    match flavour {
        Flavour::Wasm => wasm_filter("floor", &tools::wasm("floor"), "", &[]),
        Flavour::Native => {
            tools::native_module("edgeguard_floor");
            dynamic_module_filter("edgeguard_floor", "floor", "")
        }
    }
}

pub fn section(report: &mut String) {
    let seconds = env_u32("EDGEGUARD_BENCH_SECONDS", 10);
    let rounds = env_u32("EDGEGUARD_BENCH_ROUNDS", 3);
    let apps = env_u32("EDGEGUARD_BENCH_PORTAL_APPS", 100_000);
    let big = env_u32("EDGEGUARD_BENCH_NATIVE_APPS", 1_000_000);

    // ---- throughput, both builds, --concurrency 1 and 2
    eprintln!("native: Postgres with {apps} apps ...");
    let pg = Postgres::start();
    populate(&pg, apps, (apps / 5).max(1));
    let (app0, key0) = sample_targets(&pg, 1)
        .first()
        .cloned()
        .expect("a keyed app");
    let (a, _) = start_authz_timed(&pg, &[("EDGEGUARD_STORE_TOKEN", STORE_TOKEN)]);
    let path = "/relay";
    let headers = [
        ("portal-application-id", app0.as_str()),
        ("authorization", key0.as_str()),
    ];
    let load = Load {
        threads: 1,
        connections: 16,
        seconds,
    };
    let names = [
        "(a) no auth",
        "(f) floor, wasm",
        "(fn) floor, native",
        "(p) portal-auth, wasm",
        "(pn) portal-auth, native",
        "(e) ext_authz → edgeguard authz",
    ];
    let _ = writeln!(
        report,
        "### portal-auth, wasm and native, vs ext_authz ({apps} portal apps)\n\nwrk -t1 -c16 -d{seconds}s, direct_response route, `GET {path}` with one keyed app's id and key (allowed), median of {rounds} alternating rounds per Envoy --concurrency.\n"
    );
    let _ = writeln!(
        report,
        "| scenario | workers | req/s | p50 ms | p99 ms | × (a) | × (fn) | × (e) |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut targets = Vec::new();
    for concurrency in [1u32, 2] {
        let store = || vec![cluster("authz_http", a.metrics_port)];
        let envoys = [
            start_envoy(vec![], vec![], concurrency),
            start_envoy(vec![floor(Flavour::Wasm)], vec![], concurrency),
            start_envoy(vec![floor(Flavour::Native)], vec![], concurrency),
            start_envoy(vec![portal_auth(Flavour::Wasm)], store(), concurrency),
            start_envoy(vec![portal_auth(Flavour::Native)], store(), concurrency),
            start_envoy(
                vec![ext_authz()],
                vec![grpc_cluster("authz", a.port)],
                concurrency,
            ),
        ];
        for (n, e) in names.iter().zip(&envoys) {
            wait_for(n, Duration::from_secs(60), || {
                e.get(path, &headers).status == 200
            });
        }
        for e in &envoys[3..] {
            let r = e.get(
                path,
                &[("portal-application-id", &app0), ("authorization", "wrong")],
            );
            assert_eq!(r.status, 401, "a wrong key must be denied: {}", r.body);
        }
        let pairs: Vec<(&str, &Envoy)> = names.iter().copied().zip(envoys.iter()).collect();
        let results = crate::bench_authz::wrk_rounds(
            &format!("native c{concurrency}"),
            &pairs,
            path,
            &headers,
            &load,
            rounds,
        );
        let rps = |i: usize| results[i].rps;
        for (i, (name, r)) in names.iter().zip(&results).enumerate() {
            let _ = writeln!(
                report,
                "| {name} | {concurrency} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.rps,
                r.p50_ms,
                r.p99_ms,
                rps(i) / rps(0),
                rps(i) / rps(2),
                rps(i) / rps(5)
            );
        }
        targets.push(format!(
            "--concurrency {concurrency}: native (pn) >= 0.85x (a): {:.2}x; (pn) >= 3x (e): {:.2}x; wasm (p): {:.2}x (a), {:.2}x (e)",
            rps(4) / rps(0),
            rps(4) / rps(5),
            rps(3) / rps(0),
            rps(3) / rps(5)
        ));
    }
    drop(a);
    drop(pg);
    let _ = writeln!(report, "\ntargets: {}\n", targets.join("; "));

    // ---- the native module with a big store: memory at --concurrency 2, propagation
    eprintln!("native: Postgres with {big} apps ...");
    let pg = Postgres::start();
    populate(&pg, big, (big / 5).max(1));
    // the change-notify triggers, so an edit reaches authz within ~100 ms (LISTEN/NOTIFY)
    pg.psql(&tools::repo_file(
        "sidecars/portal-store/migrations/0003_change_notify.sql",
    ));
    let targets = sample_targets(&pg, 5);
    let http_port = free_port();
    let grpc_port = free_port();
    let base = start_envoy(
        vec![floor(Flavour::Native)],
        vec![cluster("authz_http", http_port)],
        2,
    );
    let e = start_envoy(
        vec![portal_auth(Flavour::Native)],
        vec![cluster("authz_http", http_port)],
        2,
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_base = base.rss_kib();
    let rss_empty = e.rss_kib();
    let (gp, hp) = (grpc_port.to_string(), http_port.to_string());
    let (a, ready) = start_authz_timed(
        &pg,
        &[
            ("PORT", &gp),
            ("METRICS_PORT", &hp),
            ("EDGEGUARD_STORE_TOKEN", STORE_TOKEN),
        ],
    );
    let (app, key) = targets.first().cloned().expect("a keyed app");
    let loaded = wait_for("the native copy loaded", Duration::from_secs(120), || {
        e.get(
            path,
            &[("portal-application-id", &app), ("authorization", &key)],
        )
        .status
            == 200
    });
    std::thread::sleep(Duration::from_secs(5));
    let rss_loaded = e.rss_kib();
    let store_apps = e.metric("edgeguard_portal_auth_store_apps");
    // propagation: a key rotated in Postgres is refused (old) / accepted (new) through Envoy
    let mut delays = Vec::new();
    for (i, (app, key)) in targets.iter().enumerate() {
        let new_key = format!("rotated-{i}-{key}");
        let t0 = Instant::now();
        pg.psql(&format!(
            "UPDATE portal_application_settings SET secret_key = '{new_key}' WHERE application_id = '{app}';"
        ));
        wait_for("the rotated key", Duration::from_secs(30), || {
            e.get(
                path,
                &[("portal-application-id", app), ("authorization", &new_key)],
            )
            .status
                == 200
        });
        delays.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    let rss_after = e.rss_kib();
    drop(a);
    delays.sort();
    let max = delays.last().copied().unwrap_or_default();
    let growth = mib(rss_loaded) - mib(rss_base);
    let _ = writeln!(
        report,
        "### portal-auth native with {store_apps} apps (Envoy --concurrency 2)\n\n`edgeguard authz` ready {:.1} s after start; the module's copy answered {:.1} s after that.\n",
        ready.as_secs_f64(),
        loaded.as_secs_f64()
    );
    let _ = writeln!(report, "| Envoy --concurrency 2 | VmRSS MiB |");
    let _ = writeln!(report, "|---|---:|");
    let _ = writeln!(report, "| (fn) floor, native | {:.1} |", mib(rss_base));
    let _ = writeln!(
        report,
        "| (pn) portal-auth native, empty copy | {:.1} |",
        mib(rss_empty)
    );
    let _ = writeln!(
        report,
        "| (pn) portal-auth native, {store_apps} apps loaded | {:.1} |",
        mib(rss_loaded)
    );
    let _ = writeln!(
        report,
        "| (pn) ... after {} key rotations | {:.1} |",
        delays.len(),
        mib(rss_after)
    );
    let _ = writeln!(
        report,
        "\nA key rotated in Postgres (NOTIFY → authz delta → the module's next 1 s poll) is accepted through Envoy after: {} (max {:.2} s).\n",
        delays
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        max.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "targets: RSS growth over the native floor <= 400 MiB: {growth:.1} MiB [{}]; current within 2 s of a change: max {:.2} s [{}]\n",
        if growth <= 400.0 { "met" } else { "NOT met" },
        max.as_secs_f64(),
        if max <= Duration::from_secs(2) { "met" } else { "NOT met" }
    );
}
