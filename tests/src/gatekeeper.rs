//! `edgeguard gatekeeper` as a process on a free port, and the requests the tests make to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::envoy::metric_value;
use crate::http::{self, Resp};
use crate::process::{free_port, Proc};
use crate::tools;

/// A running gatekeeper.
pub struct Gatekeeper {
    pub port: u16,
    pub proc: Proc,
}

impl Gatekeeper {
    /// Starts `edgeguard gatekeeper <args> --listen 127.0.0.1:<free port>` with `env`, its log in
    /// `log`, and waits until `/readyz` answers 200 (panics with the log otherwise).
    pub fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Gatekeeper {
        let port = free_port();
        let mut cmd = Command::new(tools::edgeguard());
        cmd.arg("gatekeeper").args(args).args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "text",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("edgeguard gatekeeper", cmd, log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !proc.running() {
                panic!("edgeguard gatekeeper exited:\n{}", proc.log_text());
            }
            if http::get(port, "/readyz", &[]).is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "edgeguard gatekeeper not ready after 20 s:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Gatekeeper { port, proc }
    }

    /// `POST /gatekeeper/<path_and_query>` with headers and a body.
    pub fn post(&self, path_and_query: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let path = format!("/gatekeeper/{path_and_query}");
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if !body.is_empty() {
            h.push(("content-type", "application/json"));
        }
        http::request(self.port, "POST", &path, &h, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        http::get(self.port, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The kids of `/.well-known/jwks.json`, newest first.
    pub fn jwks_kids(&self) -> Vec<String> {
        self.get("/.well-known/jwks.json").json()["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k["kid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A metric of `/metrics` (sum over label sets).
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.get("/metrics").body, name)
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// The token of a gatekeeper answer (`headers.Authorization` without `Bearer `).
pub fn token_of(answer: &Value) -> String {
    answer["headers"]["Authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token in {answer}"))
        .to_string()
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(p).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A token's JOSE header (not verified).
pub fn header_of(token: &str) -> Value {
    part(token, 0)
}

/// A token's claims (not verified).
pub fn claims_of(token: &str) -> Value {
    part(token, 1)
}

/// The shape request a gatekeeper answer allows: `/v1/shape?offset=-1&<its query, encoded>`.
pub fn shape_path(answer: &Value) -> String {
    let mut out = String::from("/v1/shape?offset=-1");
    if let Some(q) = answer["query"].as_object() {
        for (k, v) in q {
            out.push('&');
            out.push_str(&encode(k));
            out.push('=');
            out.push_str(&encode(v.as_str().unwrap_or_default()));
        }
    }
    out
}

/// Percent-encodes a query component (unreserved characters kept).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `edgeguard gatekeeper rotate <args>`; its report.
pub fn rotate(args: &[&str]) -> String {
    let out = Command::new(tools::edgeguard())
        .args(["gatekeeper", "rotate"])
        .args(args)
        .output()
        .expect("run edgeguard gatekeeper rotate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rotate failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The kid `rotate` reports (`new key: <kid> (<alg>)`).
pub fn rotated_kid(report: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix("new key: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no new key in {report}"))
        .to_string()
}

/// A folder for one test's files (policy, keys, logs).
pub fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    (dir, path)
}
