//! Benchmark plumbing: wrk runs against an Envoy, parsed into numbers, scenarios run side by
//! side (alternating, several rounds) and reported as a table with ratios. Used by the
//! `edgeguard-bench` binary (`make bench`); never by tests.

use std::path::Path;
use std::process::Command;

/// One wrk measurement.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
}

/// Load parameters.
#[derive(Clone, Debug)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

fn duration_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit): (String, String) = s.chars().partition(|c| c.is_ascii_digit() || *c == '.');
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit.as_str() {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => f64::NAN,
    }
}

/// Parses wrk's `--latency` output.
pub fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_ms = duration_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = duration_ms(v);
        } else if t.contains("requests in") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.errors = v
                .split(',')
                .filter_map(|p| {
                    p.split_whitespace()
                        .last()
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .sum();
        }
    }
    r
}

/// Runs wrk against `url`, optionally with a Lua script and extra headers.
pub fn wrk(url: &str, load: &Load, script: Option<&Path>, headers: &[(&str, &str)]) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &load.threads.to_string(),
        "-c",
        &load.connections.to_string(),
        "-d",
        &format!("{}s", load.seconds),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(url);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk (apt-get install wrk): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let r = parse_wrk(&text);
    if r.rps == 0.0 {
        eprintln!(
            "wrk produced no result:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    r
}

/// A wrk Lua script sending `path` with a different bearer token per request, round-robin
/// over the tokens in `tokens_file` (one per line).
pub fn token_rotation_script(path: &str, tokens_file: &Path) -> String {
    format!(
        r#"local tokens = {{}}
for line in io.lines("{file}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "{path}", {{["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]}})
end
"#,
        file = tokens_file.display(),
        path = path
    )
}

/// Median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   640.47us  121.00us   3.01ms   90.00%\n  Latency Distribution\n     50%  617.00us\n     75%  672.00us\n     90%  741.00us\n     99%    1.20ms\n  49621 requests in 2.00s, 5.12MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\nRequests/sec:  24800.62\nTransfer/sec:      2.56MB\n";
        let r = parse_wrk(out);
        assert_eq!(r.rps, 24800.62);
        assert!((r.p50_ms - 0.617).abs() < 1e-9);
        assert!((r.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(r.requests, 49621);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.errors, 3);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
