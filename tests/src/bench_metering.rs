//! `make bench SECTIONS=metering` (issue #12): what usage metering costs.
//!
//! 1. portal-auth (wasm and native) with metering on vs off, through Envoy (wrk, alternating
//!    rounds): target on ≥ 0.95× off.
//! 2. `edgeguard authz` direct gRPC Check with metering on vs off (alternating rounds):
//!    target on ≥ 0.9× off.
//! 3. Postgres load with 10,000 active accounts: a Check load rotating over one app of each of
//!    10,000 accounts against the metering replica; flushes per second, rows touched per flush
//!    and flush time, from the replica's metrics.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::authz::{Authz, STORE_TOKEN};
use crate::bench::Load;
use crate::bench_authz::{
    env_u32, populate, start_authz_timed, start_envoy, wait_for, wrk_rounds, CheckLoad,
};
use crate::envoy::{cluster, metric_value, Envoy};
use crate::flavour::Flavour;
use crate::postgres::Postgres;
use crate::tools;

fn portal_auth(flavour: Flavour, metering: bool) -> Value {
    let config = json!({
        "store": {"cluster": "authz_http", "authority": "edgeguard-authz", "refresh_interval_ms": 1000, "timeout_ms": 10000},
        "rate_limit_headers": true,
        "metering": {"enabled": metering}
    });
    flavour.filter(
        "portal_auth",
        &config.to_string(),
        &["EDGEGUARD_STORE_TOKEN"],
    )
}

fn authz_metric(a: &Authz, name: &str) -> f64 {
    metric_value(&a.metrics(), name)
}

pub fn section(report: &mut String) {
    let seconds = env_u32("EDGEGUARD_BENCH_SECONDS", 10);
    let rounds = env_u32("EDGEGUARD_BENCH_ROUNDS", 3);
    let accounts = env_u32("EDGEGUARD_BENCH_METERING_ACCOUNTS", 10_000);

    eprintln!("metering: Postgres with {accounts} accounts ...");
    let pg = Postgres::start();
    populate(&pg, accounts * 2, accounts);
    pg.psql(&tools::repo_file(
        "sidecars/portal-store/migrations/0004_metering.sql",
    ));
    // the measured app: keyed, on an account with a limit it never reaches
    pg.psql(
        "INSERT INTO accounts (id, plan_type, monthly_user_limit) VALUES ('acbench', 'PLAN_UNLIMITED', 2000000000);
         INSERT INTO portal_applications (id, account_id) VALUES ('appbench', 'acbench');
         INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required) VALUES ('appbench', 'bench-key', true);",
    );
    let (off, _) = start_authz_timed(&pg, &[("EDGEGUARD_STORE_TOKEN", STORE_TOKEN)]);
    let (on, _) = start_authz_timed(
        &pg,
        &[
            ("EDGEGUARD_STORE_TOKEN", STORE_TOKEN),
            ("EDGEGUARD_METERING", "true"),
        ],
    );
    let path = "/relay";
    let headers = [
        ("portal-application-id", "appbench"),
        ("authorization", "bench-key"),
    ];
    let load = Load {
        threads: 1,
        connections: 16,
        seconds,
    };

    // ---- 1. portal-auth, metering on vs off
    let _ = writeln!(
        report,
        "### Usage metering: portal-auth with metering on vs off\n\nwrk -t1 -c16 -d{seconds}s, Envoy --concurrency 1, direct_response route, `GET {path}` of one keyed app (allowed, counted), median of {rounds} alternating rounds. Target: on ≥ 0.95× off.\n"
    );
    let _ = writeln!(
        report,
        "| build | off req/s | on req/s | on p99 ms | on / off | target |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---|");
    let mut summary = Vec::new();
    for flavour in [Flavour::Native, Flavour::Wasm] {
        let envoys = [
            start_envoy(
                vec![portal_auth(flavour, false)],
                vec![cluster("authz_http", off.metrics_port)],
                1,
            ),
            start_envoy(
                vec![portal_auth(flavour, true)],
                vec![cluster("authz_http", on.metrics_port)],
                1,
            ),
        ];
        for e in &envoys {
            wait_for("portal-auth store loaded", Duration::from_secs(60), || {
                e.get(path, &headers).status == 200
            });
        }
        let names = [
            format!("portal-auth {} metering off", flavour.name()),
            format!("portal-auth {} metering on", flavour.name()),
        ];
        let pairs: Vec<(&str, &Envoy)> = names
            .iter()
            .map(String::as_str)
            .zip(envoys.iter())
            .collect();
        let r = wrk_rounds("metering", &pairs, path, &headers, &load, rounds);
        let ratio = r[1].rps / r[0].rps;
        let met = if ratio >= 0.95 { "met" } else { "MISSED" };
        let _ = writeln!(
            report,
            "| {} | {:.0} | {:.0} | {:.2} | {:.3} | ≥ 0.95 {met} |",
            flavour.name(),
            r[0].rps,
            r[1].rps,
            r[1].p99_ms,
            ratio
        );
        summary.push(format!(
            "portal-auth {} on/off {ratio:.3} ({met})",
            flavour.name()
        ));
        for (n, x) in names.iter().zip(&r) {
            assert_eq!(x.non_2xx, 0, "{n}: every request must be allowed");
        }
    }
    // the metered Envoys' counts reached the table
    let metered: u64 = pg
        .psql("SELECT coalesce(sum(metered_relays), 0) FROM account_monthly_usage WHERE account_id = 'acbench'")
        .trim()
        .parse()
        .unwrap_or(0);
    let _ = writeln!(
        report,
        "\nRelays the metered Envoys reported and the replica wrote for the measured account: {metered}.\n"
    );

    // ---- 2. direct Check, metering on vs off
    let (connections, concurrency) = (4usize, 32usize);
    let check = |a: &Authz, targets: Vec<(String, String)>| CheckLoad {
        addr: a.addr(),
        connections,
        concurrency,
        threads: 1,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(u64::from(seconds)),
        targets,
        keep_samples: false,
    };
    let one = vec![("appbench".to_string(), "bench-key".to_string())];
    let (mut off_rps, mut on_rps, mut on_p99) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (name, a, out) in [("off", &off, &mut off_rps), ("on", &on, &mut on_rps)] {
            let r = check(a, one.clone()).run().expect("check load");
            assert_eq!(r.errors + r.denied, 0, "{name}: {:?}", r.first_error);
            eprintln!(
                "metering check round {round}/{rounds} {name}: {:.0} req/s p99 {:.3} ms",
                r.rps, r.p99_ms
            );
            out.push(r.rps);
            if name == "on" {
                on_p99.push(r.p99_ms);
            }
        }
    }
    let (off_m, on_m) = (crate::bench::median(off_rps), crate::bench::median(on_rps));
    let ratio = on_m / off_m;
    let met = if ratio >= 0.9 { "met" } else { "MISSED" };
    let _ = writeln!(
        report,
        "### Usage metering: `edgeguard authz` direct Check, metering on vs off\n\nThe direct gRPC Check load ({connections} connections, {concurrency} in flight, {seconds} s, one allowed app), median of {rounds} alternating rounds. Target: on ≥ 0.9× off.\n\n| off req/s | on req/s | on p99 ms | on / off | target |\n|---:|---:|---:|---:|---|\n| {off_m:.0} | {on_m:.0} | {:.3} | {ratio:.3} | ≥ 0.9 {met} |\n",
        crate::bench::median(on_p99)
    );
    summary.push(format!("authz Check on/off {ratio:.3} ({met})"));

    // ---- 3. Postgres load, 10,000 active accounts
    let targets: Vec<(String, String)> = pg
        .psql(&format!(
            "SELECT DISTINCT ON (pa.account_id) pa.id, coalesce(s.secret_key, '')
             FROM portal_applications pa
             LEFT JOIN portal_application_settings s ON s.application_id = pa.id
             LEFT JOIN account_monthly_usage u
               ON u.account_id = pa.account_id AND u.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
             WHERE NOT pa.deleted AND pa.account_id LIKE 'ac%' AND coalesce(u.relays, 0) <= 1000000
               AND (s.secret_key_required IS NOT TRUE OR s.secret_key IS NOT NULL)
             ORDER BY pa.account_id, pa.id LIMIT {accounts}"
        ))
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, k)| (a.to_string(), k.to_string()))
        .collect();
    let active = targets.len();
    let before = |a: &Authz| {
        (
            authz_metric(a, "edgeguard_usage_flushes_total{result=\"ok\"}"),
            authz_metric(a, "edgeguard_usage_flush_rows_total"),
            authz_metric(a, "edgeguard_usage_flush_duration_seconds_sum"),
            authz_metric(a, "edgeguard_usage_flush_duration_seconds_count"),
        )
    };
    let (f0, r0, s0, c0) = before(&on);
    let r = check(&on, targets).run().expect("check load");
    std::thread::sleep(Duration::from_millis(1500));
    let (f1, r1, s1, c1) = before(&on);
    let flushes = f1 - f0;
    let window = f64::from(seconds) + 2.5;
    let rows_per_flush = if flushes > 0.0 {
        (r1 - r0) / flushes
    } else {
        0.0
    };
    let flush_ms = if c1 > c0 {
        (s1 - s0) / (c1 - c0) * 1000.0
    } else {
        0.0
    };
    let touched: u64 = pg
        .psql("SELECT count(*) FROM account_monthly_usage WHERE metered_relays > 0")
        .trim()
        .parse()
        .unwrap_or(0);
    let _ = writeln!(
        report,
        "### Usage metering: Postgres load at {active} active accounts\n\nA direct Check load ({connections} connections, {concurrency} in flight, {seconds} s) rotating over one allowed app of each of {active} accounts, against the metering replica (flush every 1 s, usage poll every 500 ms).\n\n| Checks/s | flushes/s | rows touched per flush | mean flush ms | accounts with metered relays |\n|---:|---:|---:|---:|---:|\n| {:.0} | {:.2} | {rows_per_flush:.0} | {flush_ms:.1} | {touched} |\n",
        r.rps,
        flushes / window
    );
    summary.push(format!(
        "{active} active accounts: {:.2} flushes/s, {rows_per_flush:.0} rows per flush, {flush_ms:.1} ms per flush",
        flushes / window
    ));
    let _ = writeln!(report, "Summary: {}\n", summary.join("; "));
    eprintln!("metering: {}", summary.join("; "));
}
