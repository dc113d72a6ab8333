//! `make run`: the demo script brings everything up, and the curl lines it prints give the
//! 200, 401 and 403 it promises. Run on other ports so it does not collide with a real demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeguard_tests::process::{free_port, wait_for_port};
use edgeguard_tests::tools;

#[test]
fn make_run_prints_working_curl_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, echo) = (free_port(), free_port(), free_port());
    let mut child = Command::new(tools::root().join("envoy/demo/run.sh"))
        .env("EDGEGUARD_BIN", tools::edgeguard())
        .env("EDGEGUARD_ENVOY", tools::envoy())
        .env("EDGEGUARD_DEMO_PORT", port.to_string())
        .env("EDGEGUARD_DEMO_ADMIN_PORT", admin.to_string())
        .env("EDGEGUARD_DEMO_ECHO_PORT", echo.to_string())
        .env("EDGEGUARD_DEMO_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reader = BufReader::new(stdout).lines();
    for line in reader.by_ref() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        lines.push(line);
        assert!(
            Instant::now() < deadline,
            "demo did not get ready:\n{}",
            lines.join("\n")
        );
    }
    let curls: Vec<String> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl ") && l.contains("/v1/shape"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        curls.len(),
        3,
        "expected three curl lines in:\n{}",
        lines.join("\n")
    );

    let run = |cmd: &str| {
        let out = Command::new("bash")
            .args(["-c", &format!("{cmd} -w '\\n%{{http_code}}'")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = run(&curls[0]);
    assert!(ok.ends_with("\n200"), "{ok}");
    assert!(ok.contains("secret=demo-electric-secret"), "{ok}");
    assert!(ok.contains("\"x-edgeguard-sub\":[\"demo-user\"]"), "{ok}");
    let unauth = run(&curls[1]);
    assert!(unauth.ends_with("\n401"), "{unauth}");
    assert!(
        unauth.contains("www-authenticate: Bearer realm=\"edgeguard\""),
        "{unauth}"
    );
    let forbidden = run(&curls[2]);
    assert!(forbidden.ends_with("\n403"), "{forbidden}");
    assert!(forbidden.contains("'table' differs"), "{forbidden}");

    // stopping the script stops everything it started
    unsafe_kill(child.id(), 15);
    let rest: Vec<String> = reader.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("edgeguard demo stopped")),
        "{rest:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !wait_for_port(port, Duration::from_millis(300)),
        "Envoy still listening"
    );
    assert!(
        !wait_for_port(echo, Duration::from_millis(300)),
        "echo still listening"
    );
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}
