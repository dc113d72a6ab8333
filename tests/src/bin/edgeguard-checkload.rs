//! `edgeguard-checkload`: a closed-loop gRPC `envoy.service.auth.v3.Authorization/Check` load
//! generator (tonic) for `edgeguard authz` or any ext_authz server. N requests in flight over
//! a few HTTP/2 connections for a fixed time; prints req/s and latency percentiles as JSON.
//! `make bench` section `authz` runs the same code in-process (`bench_authz::CheckLoad`).
//!
//! usage: edgeguard-checkload --addr 127.0.0.1:10001 [--connections 4] [--concurrency 32]
//!          [--threads 1] [--seconds 10] [--warmup 2]
//!          (--app ID [--key KEY] | --targets FILE)   FILE: one `app_id key` per line

use std::time::Duration;

use edgeguard_tests::bench_authz::CheckLoad;

fn usage(msg: &str) -> ! {
    eprintln!("edgeguard-checkload: {msg}");
    eprintln!(
        "usage: edgeguard-checkload --addr HOST:PORT [--connections 4] [--concurrency 32] [--threads 1] \
         [--seconds 10] [--warmup 2] (--app ID [--key KEY] | --targets FILE)"
    );
    std::process::exit(2);
}

fn main() {
    let mut load = CheckLoad {
        addr: String::new(),
        connections: 4,
        concurrency: 32,
        threads: 1,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        targets: Vec::new(),
        keep_samples: false,
    };
    let mut app: Option<String> = None;
    let mut key = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let num = |v: String| -> f64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--addr" => load.addr = value(),
            "--connections" => load.connections = num(value()) as usize,
            "--concurrency" => load.concurrency = num(value()) as usize,
            "--threads" => load.threads = num(value()) as usize,
            "--seconds" => load.duration = Duration::from_secs_f64(num(value())),
            "--warmup" => load.warmup = Duration::from_secs_f64(num(value())),
            "--app" => app = Some(value()),
            "--key" => key = value(),
            "--targets" => {
                let file = value();
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| usage(&format!("cannot read {file}: {e}")));
                load.targets.extend(text.lines().filter_map(|l| {
                    let mut p = l.split_whitespace();
                    let a = p.next()?;
                    Some((a.to_string(), p.next().unwrap_or("").to_string()))
                }));
            }
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if load.addr.is_empty() {
        usage("--addr is required");
    }
    if let Some(a) = app {
        load.targets.push((a, key));
    }
    if load.targets.is_empty() {
        usage("give --app or --targets");
    }
    match load.run() {
        Ok(r) => {
            let mut v = r.to_json();
            v["addr"] = load.addr.clone().into();
            v["connections"] = load.connections.into();
            v["concurrency"] = load.concurrency.into();
            v["threads"] = load.threads.into();
            println!("{v}");
            if r.errors > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("edgeguard-checkload: {e}");
            std::process::exit(1);
        }
    }
}
