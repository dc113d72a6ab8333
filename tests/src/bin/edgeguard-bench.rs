//! `make bench`: side-by-side load tests through one Envoy binary. Every scenario runs in its
//! own Envoy (started together, loaded in turn, several rounds), and the table gives medians
//! and ratios. Absolute numbers on shared machines are noise; the ratios are the result.
//!
//! usage: edgeguard-bench [SECTION...]   (sections: jwt xds authz portal native; default: all)
//! env:   EDGEGUARD_BENCH_SECONDS (10), EDGEGUARD_BENCH_ROUNDS (3), EDGEGUARD_BENCH_OUT (target/bench)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use edgeguard_tests::bench::{median, token_rotation_script, wrk, Load, WrkResult};
use edgeguard_tests::envoy::{dynamic_module_filter, wasm_filter, Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::keys::{jwks, now, TestKey};
use edgeguard_tests::tools;
use serde_json::{json, Value};

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Scenario {
    name: &'static str,
    filters: Vec<Value>,
}

fn start(filters: &[Value], concurrency: u32) -> Envoy {
    let mut cfg = EnvoyConfig::new(1, filters.to_vec());
    cfg.direct_response = true;
    cfg.concurrency = concurrency;
    cfg.log_level = "warning";
    Envoy::start(&cfg)
}

fn out_dir() -> PathBuf {
    let dir = std::env::var_os("EDGEGUARD_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::root().join("target/bench"));
    std::fs::create_dir_all(&dir).expect("bench output dir");
    dir
}

const ISSUER: &str = "https://bench.edgeguard";
const PATH: &str = "/v1/shape?table=items&offset=-1";
const DISTINCT_TOKENS: usize = 6000;

/// The cheapest proxy-wasm filter (filters/floor): what any wasm filter costs.
fn floor() -> Value {
    wasm_filter("floor", &tools::wasm("floor"), "", &[])
}

/// The same work as a native dynamic module (filters/floor-native): what any module costs.
fn native_floor() -> Value {
    tools::native_module("edgeguard_floor");
    dynamic_module_filter("edgeguard_floor", "floor", "")
}

fn jwt_authn(jwks: &Value, cache: bool) -> Value {
    let mut provider = json!({
        "issuer": ISSUER,
        "local_jwks": {"inline_string": jwks.to_string()},
        "forward": false
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 4096});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
        }
    })
}

fn jwt_shape(flavour: Flavour, jwks: &Value, bind_shape: bool) -> Value {
    let rule = if bind_shape {
        json!({"match": {"path": "/v1/shape"}, "provider": "bench", "bind_shape": true})
    } else {
        json!({"match": {"prefix": "/"}, "provider": "bench"})
    };
    let config = json!({
        "providers": {"bench": {"issuer": ISSUER, "local_jwks": {"inline": jwks}}},
        "rules": [rule],
        "cache": {"max_entries": 4096}
    });
    flavour.filter("jwt_shape", &config.to_string(), &[])
}

struct Row {
    scenario: &'static str,
    mode: &'static str,
    concurrency: u32,
    result: WrkResult,
}

fn jwt_section(report: &mut String) {
    let seconds = env_u32("EDGEGUARD_BENCH_SECONDS", 10);
    let rounds = env_u32("EDGEGUARD_BENCH_ROUNDS", 3);
    let load = Load {
        threads: 1,
        connections: 16,
        seconds,
    };
    eprintln!("jwt: generating an RSA-2048 key and {DISTINCT_TOKENS} RS256 tokens ...");
    let key = TestKey::rsa("bench-key", 2048, 4242);
    let set = jwks(&[key.jwk(Some("RS256"))]);
    let claims = |i: usize| {
        json!({"iss": ISSUER, "sub": format!("user-{i}"), "jti": format!("jti-{i}"), "exp": now() + 7200,
            "shape": {"table": "items", "namespace": null, "where": null, "columns": null}})
    };
    let reused = key.sign("RS256", &claims(0));
    let dir = out_dir();
    let tokens_file = dir.join("jwt-tokens.txt");
    let tokens: Vec<String> = (1..=DISTINCT_TOKENS)
        .map(|i| key.sign("RS256", &claims(i)))
        .collect();
    std::fs::write(&tokens_file, tokens.join("\n") + "\n").expect("write tokens");
    let script = dir.join("jwt-distinct.lua");
    std::fs::write(&script, token_rotation_script(PATH, &tokens_file)).expect("write script");

    let scenarios = [
        Scenario {
            name: "(a) no auth",
            filters: vec![],
        },
        Scenario {
            name: "(f) floor: trivial wasm filter",
            filters: vec![floor()],
        },
        Scenario {
            name: "(fn) floor: trivial native module",
            filters: vec![native_floor()],
        },
        Scenario {
            name: "(b) jwt_authn",
            filters: vec![jwt_authn(&set, false)],
        },
        Scenario {
            name: "(b') jwt_authn + jwt_cache",
            filters: vec![jwt_authn(&set, true)],
        },
        Scenario {
            name: "(c) jwt-shape RS256, wasm",
            filters: vec![jwt_shape(Flavour::Wasm, &set, false)],
        },
        Scenario {
            name: "(cn) jwt-shape RS256, native",
            filters: vec![jwt_shape(Flavour::Native, &set, false)],
        },
        Scenario {
            name: "(d) jwt-shape + shape binding, wasm",
            filters: vec![jwt_shape(Flavour::Wasm, &set, true)],
        },
        Scenario {
            name: "(dn) jwt-shape + shape binding, native",
            filters: vec![jwt_shape(Flavour::Native, &set, true)],
        },
    ];
    let auth = format!("Bearer {reused}");
    let mut rows = Vec::new();
    for concurrency in [1u32, 2] {
        let envoys: Vec<Envoy> = scenarios
            .iter()
            .map(|s| start(&s.filters, concurrency))
            .collect();
        // every scenario must really allow the request, or the numbers mean nothing
        for (s, e) in scenarios.iter().zip(&envoys) {
            let r = e.get(PATH, &[("authorization", &format!("Bearer {reused}"))]);
            assert_eq!(r.status, 200, "{}: {}", s.name, r.body);
            let r = e.get(PATH, &[("authorization", &format!("Bearer {}", tokens[0]))]);
            assert_eq!(r.status, 200, "{}: {}", s.name, r.body);
        }
        // warm-up: V8 tiers hot wasm functions up to optimised code under load; measure after
        let warm = Load {
            threads: 1,
            connections: 16,
            seconds: 2,
        };
        for e in &envoys {
            let url = format!("http://127.0.0.1:{}{PATH}", e.port);
            wrk(&url, &warm, None, &[("Authorization", &auth)]);
            wrk(&url, &warm, Some(&script), &[]);
        }
        let mut results: BTreeMap<(usize, &'static str), Vec<WrkResult>> = BTreeMap::new();
        for round in 1..=rounds {
            for mode in ["reused token", "distinct tokens"] {
                for (i, (s, e)) in scenarios.iter().zip(&envoys).enumerate() {
                    let url = format!("http://127.0.0.1:{}{PATH}", e.port);
                    let r = if mode == "reused token" {
                        wrk(&url, &load, None, &[("Authorization", &auth)])
                    } else {
                        wrk(&url, &load, Some(&script), &[])
                    };
                    eprintln!("jwt c{concurrency} round {round}/{rounds} {mode:15} {:40} {:>9.0} req/s p50 {:.2} ms p99 {:.2} ms non-2xx {} cache hit/miss {}/{}",
                        s.name, r.rps, r.p50_ms, r.p99_ms, r.non_2xx,
                        e.metric("edgeguard_jwt_shape_cache_hit"), e.metric("edgeguard_jwt_shape_cache_miss"));
                    results.entry((i, mode)).or_default().push(r);
                }
            }
        }
        drop(envoys);
        for mode in ["reused token", "distinct tokens"] {
            for (i, s) in scenarios.iter().enumerate() {
                let runs = &results[&(i, mode)];
                rows.push(Row {
                    scenario: s.name,
                    mode,
                    concurrency,
                    result: WrkResult {
                        rps: median(runs.iter().map(|r| r.rps).collect()),
                        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
                        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
                        requests: runs.iter().map(|r| r.requests).sum(),
                        non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
                        errors: runs.iter().map(|r| r.errors).sum(),
                    },
                });
            }
        }
    }
    let rps_at = |concurrency: u32, mode: &str, prefix: &str| {
        rows.iter()
            .find(|r| {
                r.concurrency == concurrency
                    && r.mode == mode
                    && r.scenario.starts_with(&format!("{prefix} "))
            })
            .map_or(f64::NAN, |r| r.result.rps)
    };
    let _ = writeln!(
        report,
        "### jwt-shape vs Envoy jwt_authn (RS256, 2048-bit key)\n"
    );
    let _ = writeln!(
        report,
        "wrk -t1 -c16 -d{seconds}s, direct_response route, median of {rounds} alternating rounds per Envoy --concurrency; {DISTINCT_TOKENS} distinct tokens rotate round-robin (more than any cache holds). (…n) rows are the native dynamic modules.\n"
    );
    let _ = writeln!(
        report,
        "| scenario | tokens | workers | req/s | p50 ms | p99 ms | × (a) | × (b) | × (b') | non-2xx |"
    );
    let _ = writeln!(report, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let a = rps_at(r.concurrency, r.mode, "(a)");
        let b = rps_at(r.concurrency, r.mode, "(b)");
        let bc = rps_at(r.concurrency, r.mode, "(b')");
        let _ = writeln!(
            report,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.scenario,
            r.mode,
            r.concurrency,
            r.result.rps,
            r.result.p50_ms,
            r.result.p99_ms,
            r.result.rps / a,
            r.result.rps / b,
            r.result.rps / bc,
            r.result.non_2xx
        );
    }

    // memory: RSS of Envoy at 2 workers, idle and after a distinct-token load
    let mem_load = Load {
        threads: 1,
        connections: 16,
        seconds: 5.min(seconds),
    };
    let _ = writeln!(
        report,
        "\nEnvoy RSS, --concurrency 2 (after {}s of distinct-token load):\n",
        mem_load.seconds
    );
    let _ = writeln!(
        report,
        "| scenario | RSS idle MiB | RSS after load MiB | growth vs (a) MiB |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|");
    let mut base_after = None;
    for s in scenarios
        .iter()
        .filter(|s| !s.name.starts_with("(b')") && !s.name.starts_with("(d"))
    {
        let e = start(&s.filters, 2);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let idle = e.rss_kib() as f64 / 1024.0;
        let url = format!("http://127.0.0.1:{}{PATH}", e.port);
        let _ = wrk(&url, &mem_load, Some(&script), &[]);
        let after = e.rss_kib() as f64 / 1024.0;
        let base = *base_after.get_or_insert(after);
        let _ = writeln!(
            report,
            "| {} | {:.1} | {:.1} | {:+.1} |",
            s.name,
            idle,
            after,
            after - base
        );
    }
    let _ = writeln!(report);
    for c in [1u32, 2] {
        let r = |mode: &str, p: &str| rps_at(c, mode, p);
        let _ = writeln!(
            report,
            "targets, --concurrency {c}: native reused (cn) >= 0.90x (a): {:.2}x; native distinct (cn) >= 1.0x (b): {:.2}x (x (b') {:.2}); native binding reused (dn) >= 0.85x (a): {:.2}x; wasm reused (c): {:.2}x (a), floors (f) {:.2}x / (fn) {:.2}x (a)\n",
            r("reused token", "(cn)") / r("reused token", "(a)"),
            r("distinct tokens", "(cn)") / r("distinct tokens", "(b)"),
            r("distinct tokens", "(cn)") / r("distinct tokens", "(b')"),
            r("reused token", "(dn)") / r("reused token", "(a)"),
            r("reused token", "(c)") / r("reused token", "(a)"),
            r("reused token", "(f)") / r("reused token", "(a)"),
            r("reused token", "(fn)") / r("reused token", "(a)"),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = ["jwt", "xds", "authz", "portal", "native", "metering"];
    let sections: Vec<&str> = if args.is_empty() {
        all.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let mut report = String::new();
    let _ = writeln!(report, "## edgeguard bench ({})\n", std::env::consts::ARCH);
    let path = out_dir().join("report.md");
    for s in sections {
        match s {
            "jwt" => jwt_section(&mut report),
            "xds" => edgeguard_tests::bench_xds::section(&mut report),
            "authz" => edgeguard_tests::bench_authz::authz_section(&mut report),
            "portal" => edgeguard_tests::bench_authz::portal_section(&mut report),
            "native" => edgeguard_tests::bench_native::section(&mut report),
            "metering" => edgeguard_tests::bench_metering::section(&mut report),
            other => {
                eprintln!("unknown section {other}; sections: {}", all.join(", "));
                std::process::exit(2);
            }
        }
        // after every section, so a later section that fails loses nothing measured before
        std::fs::write(&path, &report).expect("write report");
    }
    println!("{report}");
    eprintln!("report written to {}", path.display());
}
