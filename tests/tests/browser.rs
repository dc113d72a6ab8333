//! Electric's gatekeeper pattern in a real browser: headless Chromium (Debian's `chromium`,
//! driven by puppeteer-core) loads a page that uses `@electric-sql/client` (bundled from npm by
//! esbuild) against `make run`'s Envoy, with the Electric stand-in
//! (`tests/electric-standin/server.mjs`) playing Electric behind it. The page gets a token
//! from `edgeguard gatekeeper` (through Envoy, CORS on the way), syncs the shape the answer
//! describes, sees jwt-shape's 401 when the token expires (readable: CORS headers on the
//! filter's own answer), refreshes the token from the gatekeeper in `onError` and resumes, and
//! is refused (403, with the reason) for a shape the policy denies.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use edgeguard_tests::demo::Demo;
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::tools;
use serde_json::Value;

/// The stand-in on a free port, requiring the demo's Electric secret (jwt-shape adds it), with
/// live requests held 1 s so the page polls often.
struct StandIn {
    child: Child,
    port: u16,
}

impl StandIn {
    fn start() -> StandIn {
        let mut child = Command::new("node")
            .arg(tools::root().join("tests/electric-standin/server.mjs"))
            .args([
                "--port",
                "0",
                "--secret",
                "demo-electric-secret",
                "--live-hold-ms",
                "1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (apt nodejs) on PATH");
        let stdout = child.stdout.take().expect("piped");
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on"))
            .expect("the stand-in's listening line");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("a port");
        StandIn { child, port }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events<'a>(log: &'a [Value], event: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["event"] == event).collect()
}

fn an_electric_client_in_chromium_syncs_refreshes_and_is_refused(flavour: Flavour) {
    let standin = StandIn::start();
    let dir = tempfile::tempdir().unwrap();
    // the stand-in's table: owner instead of the demo policy's owner_id
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "rules:\n  - name: own-items\n    table: items\n    where:\n      sql: \"owner = $1\"\n      params:\n        1: { claim: sub }\n    columns: [id, title, owner]\n...\n",
    )
    .unwrap();
    // tokens live 3 s (+ the demo provider's 5 s clock skew): the page sees one expire
    let demo = Demo::start(
        flavour,
        &[
            ("EDGEGUARD_DEMO_ELECTRIC_PORT", standin.port.to_string()),
            ("EDGEGUARD_DEMO_GATEKEEPER_TOKEN_TTL", "3s".to_string()),
            (
                "EDGEGUARD_DEMO_GATEKEEPER_POLICY",
                policy.to_string_lossy().into_owned(),
            ),
        ],
    );
    let gk = format!("http://127.0.0.1:{}", demo.ports.gatekeeper_shape);
    let page = tools::root().join("tests/js/browser_page.mjs");
    let out = tools::node_script("browser_drive.mjs", &[&gk, "40", &page.to_string_lossy()]);
    let result: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let log = result["log"].as_array().cloned().unwrap_or_default();
    let all = serde_json::to_string_pretty(&result).unwrap_or_default();

    // the policy denies `secrets`: 403 with the reason, readable by the page (CORS)
    let denied = events(&log, "denied");
    assert_eq!(denied.len(), 1, "{all}");
    assert_eq!(denied[0]["status"], 403, "{all}");
    assert!(
        denied[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("secrets"),
        "{all}"
    );
    // a token, then the shape: the stand-in's rows, only the columns asked for (the policy
    // allows id, title, owner)
    assert_eq!(events(&log, "granted")[0]["status"], 200, "{all}");
    let synced: Vec<&Value> = events(&log, "messages")
        .into_iter()
        .filter(|e| e["rows"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert!(!synced.is_empty(), "no rows synced: {all}");
    assert_eq!(
        synced[0]["columns"],
        serde_json::json!(["id", "title"]),
        "{all}"
    );
    assert_eq!(synced[0]["refreshes"], 0, "{all}");
    // the token expired: jwt-shape's 401 reached the client's onError with its reason
    let errors = events(&log, "error");
    assert!(!errors.is_empty(), "the token never expired: {all}");
    assert!(errors.iter().all(|e| e["status"] == 401), "{all}");
    assert!(
        errors[0]["www"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_token"),
        "WWW-Authenticate not readable: {all}"
    );
    // ... the page refreshed from the gatekeeper and the stream resumed
    let refreshed = log
        .iter()
        .position(|e| e["event"] == "refreshed" && e["status"] == 200)
        .unwrap_or_else(|| panic!("no refresh: {all}"));
    assert!(
        log[refreshed..]
            .iter()
            .any(|e| e["event"] == "messages" && e["upToDate"] == true),
        "the stream did not resume after the refresh: {all}"
    );
    assert!(events(&log, "exception").is_empty(), "{all}");
    assert!(events(&log, "subscribe-error").is_empty(), "{all}");
}

edgeguard_tests::flavoured!(an_electric_client_in_chromium_syncs_refreshes_and_is_refused);
