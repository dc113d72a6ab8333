//! `make run`: the demo script brings everything up, and every command it prints gives the
//! answer its comment promises (jwt-shape, portal-auth, local rate limiting, ext_authz, grpcurl),
//! with either build of the filters (`EDGEGUARD_FLAVOUR`). Run on other ports so it does not
//! collide with a real demo.

use std::process::Command;
use std::time::Duration;

use edgeguard_tests::demo::{Demo, Ports};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::process::wait_for_port;
use edgeguard_tests::tools;

fn make_run_prints_working_curl_lines(flavour: Flavour) {
    let mut demo = Demo::start(flavour, &[]);
    let Ports {
        port,
        ext,
        authz,
        authz_http,
        echo,
        gatekeeper,
        gatekeeper_shape,
        ..
    } = demo.ports;
    let lines = demo.lines.clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("edgeguard demo is up ({} filters", flavour.name()))),
        "{}",
        lines.join("\n")
    );
    let commands: Vec<String> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| {
            l.starts_with("curl ") || l.starts_with("for i") || l.starts_with("make grpcurl-check")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(
        commands.len(),
        24,
        "expected twenty-four commands in:\n{}",
        lines.join("\n")
    );

    let run = |cmd: &str| {
        let cmd = if cmd.starts_with("curl ") && !cmd.contains('|') {
            format!("{cmd} -w '\\n%{{http_code}}'")
        } else {
            cmd.to_string()
        };
        let out = Command::new("bash")
            .current_dir(tools::root())
            .args(["-c", &cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // jwt-shape
    let ok = run(&commands[0]);
    assert!(ok.ends_with("\n200"), "{ok}");
    assert!(ok.contains("secret=demo-electric-secret"), "{ok}");
    assert!(ok.contains("\"x-edgeguard-sub\":[\"demo-user\"]"), "{ok}");
    let unauth = run(&commands[1]);
    assert!(unauth.ends_with("\n401"), "{unauth}");
    assert!(
        unauth.contains("www-authenticate: Bearer realm=\"edgeguard\""),
        "{unauth}"
    );
    let forbidden = run(&commands[2]);
    assert!(forbidden.ends_with("\n403"), "{forbidden}");
    assert!(forbidden.contains("'table' differs"), "{forbidden}");
    // portal-auth
    let keyed = run(&commands[3]);
    assert!(keyed.ends_with("\n200"), "{keyed}");
    assert!(
        keyed.contains("\"portal-account-id\":[\"acct_team\"]"),
        "spoofed account id replaced: {keyed}"
    );
    assert!(
        keyed.contains("\"rl-plan-free\":[\"acct_team\"]"),
        "{keyed}"
    );
    for (i, status) in [(4, 401), (5, 404), (6, 429)] {
        let out = run(&commands[i]);
        assert!(
            out.ends_with(&format!("\n{status}")),
            "{}: {out}",
            commands[i]
        );
    }
    // local_ratelimit on the stamped header: the free plan's burst, then 429
    let burst = run(&commands[7]);
    assert_eq!(burst.trim(), "200 200 200 200 200 429", "{}", commands[7]);
    // ... per account: another account still has its own bucket
    let other = run(&format!(
        "curl -s 'http://127.0.0.1:{port}/v1/demo_unlimited'"
    ));
    assert!(
        other.ends_with("\n200") && other.contains("rl-user-limit-40"),
        "{other}"
    );
    // usage metering trips demo_quota's 5-relay quota: 429 with Retry-After and RateLimit
    let quota = run(&commands[8]);
    let codes: Vec<&str> = quota.split_whitespace().collect();
    assert_eq!(codes.len(), 10, "{quota}");
    assert!(
        codes[..5].iter().all(|c| *c == "200"),
        "the first five are within the quota: {quota}"
    );
    assert_eq!(
        codes.last(),
        Some(&"429"),
        "the quota tripped within the loop: {quota}"
    );
    let headers = run(&commands[9]).to_ascii_lowercase();
    assert!(headers.contains(" 429"), "{headers}");
    assert!(headers.contains("retry-after: "), "{headers}");
    assert!(
        headers.contains("ratelimit-policy: \"monthly\";q=5;w="),
        "{headers}"
    );
    assert!(
        headers.contains("ratelimit: \"monthly\";r=0;t="),
        "{headers}"
    );
    let usage = run(&commands[10]);
    assert!(usage.ends_with("\n200"), "{usage}");
    let usage: serde_json::Value =
        serde_json::from_str(usage.trim_end_matches("200").trim()).unwrap();
    assert!(usage["relays"].as_u64().unwrap() > 5, "{usage}");
    assert_eq!(usage["limit"], 5, "{usage}");
    assert_eq!(usage["limited"], true, "{usage}");
    // ext_authz and grpcurl against edgeguard authz
    let ext_ok = run(&commands[11]);
    assert!(
        ext_ok.ends_with("\n200") && ext_ok.contains("\"portal-application-id\":[\"demo_keyed\"]"),
        "{ext_ok}"
    );
    let grpc = run(&commands[12]);
    assert!(
        grpc.contains("\"message\": \"ok\"") && grpc.contains("demo_keyed"),
        "{grpc}"
    );

    // browsers: the cors filter runs before the edgeguard filters, so their own answers reach a
    // page of an allowed origin readable (and the reason and retry headers exposed); a
    // preflight is answered by Envoy; other origins get no CORS headers
    let page = "http://localhost:5173";
    for (what, cmd, status) in [
        ("jwt-shape 401", format!("curl -si -H 'Origin: {page}' 'http://127.0.0.1:{port}/v1/shape?table=items&offset=-1'"), 401),
        ("jwt-shape 403", format!("curl -si -H 'Origin: {page}' -H 'Authorization: Bearer {}' 'http://127.0.0.1:{port}/v1/shape?table=secrets&offset=-1'", ok_token(&commands[0])), 403),
        ("portal-auth 429", format!("curl -si -H 'Origin: {page}' 'http://127.0.0.1:{port}/v1/demo_over_quota'"), 429),
        ("jwt-shape 200", format!("curl -si -H 'Origin: {page}' -H 'Authorization: Bearer {}' 'http://127.0.0.1:{port}/v1/shape?table=items&offset=-1'", ok_token(&commands[0])), 200),
    ] {
        let out = run(&cmd).to_ascii_lowercase();
        assert!(out.ends_with(&format!("\n{status}")), "{what}: {out}");
        assert!(out.contains(&format!("access-control-allow-origin: {page}")), "{what}: {out}");
        assert!(out.contains("access-control-expose-headers: ") && out.contains("www-authenticate"), "{what}: {out}");
    }
    let preflight = run(&format!(
        "curl -si -X OPTIONS -H 'Origin: {page}' -H 'Access-Control-Request-Method: GET' -H 'Access-Control-Request-Headers: authorization' 'http://127.0.0.1:{port}/v1/shape?table=items&offset=-1'"
    ))
    .to_ascii_lowercase();
    assert!(preflight.ends_with("\n200"), "{preflight}");
    assert!(
        preflight.contains(&format!("access-control-allow-origin: {page}")),
        "{preflight}"
    );
    assert!(
        preflight.contains("access-control-allow-headers: authorization"),
        "{preflight}"
    );
    let foreign = run(&format!(
        "curl -si -H 'Origin: https://evil.example' 'http://127.0.0.1:{port}/v1/shape?table=items&offset=-1'"
    ))
    .to_ascii_lowercase();
    assert!(foreign.ends_with("\n401"), "{foreign}");
    assert!(
        !foreign.contains("access-control-allow-origin"),
        "{foreign}"
    );
    // edgeguard gatekeeper (development mode: everyone is demo-user): a token for demo-user's
    // own items with the two columns asked for, and the exact request it allows
    let answer = run(&commands[13]);
    assert!(answer.ends_with("\n200"), "{answer}");
    let answer: serde_json::Value =
        serde_json::from_str(answer.trim_end_matches("200").trim()).unwrap();
    assert_eq!(answer["where"], "owner_id = $1", "{answer}");
    assert_eq!(
        answer["params"],
        serde_json::json!({"1": "demo-user"}),
        "{answer}"
    );
    assert_eq!(
        answer["columns"],
        serde_json::json!(["id", "title"]),
        "{answer}"
    );
    assert_eq!(
        answer["url"],
        format!("http://127.0.0.1:{gatekeeper_shape}/v1/shape")
    );
    // ... through Envoy: jwt-shape verified it with the gatekeeper's JWKS and let it through
    let through = run(&commands[14]);
    assert!(through.ends_with("\n200"), "{}: {through}", commands[14]);
    assert!(
        through.contains("\"x-edgeguard-sub\":[\"demo-user\"]"),
        "{through}"
    );
    assert!(
        through.contains("params%5B1%5D=demo-user")
            && through.contains("secret=demo-electric-secret"),
        "{through}"
    );
    // ... and a column the policy does not allow: 403 from the gatekeeper
    let refused = run(&commands[15]);
    assert!(refused.ends_with("\n403"), "{refused}");
    assert!(refused.contains("column_not_allowed"), "{refused}");
    let jwks = run(&commands[16]);
    assert!(
        jwks.ends_with("\n200") && jwks.contains("\"kty\":\"EC\""),
        "{jwks}"
    );
    // edgeguard enroll: the operator's token, the device's own key and CSR (the printed
    // openssl line), its certificate from the fleet CA, and the registry listing it
    let minted = run(&commands[17]);
    assert!(minted.ends_with("\n201"), "{minted}");
    let minted: serde_json::Value =
        serde_json::from_str(minted.trim_end_matches("201").trim()).unwrap();
    let enrollment_token = minted["token"].as_str().unwrap().to_string();
    let shell = |line: &str| {
        let out = Command::new("bash")
            .current_dir(tools::root())
            .args(["-c", line])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let openssl: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim().starts_with("openssl "))
        .collect();
    assert_eq!(openssl.len(), 2, "{}", lines.join("\n"));
    shell(openssl[0].trim());
    let enroll = commands[18].replace("<the token above>", &enrollment_token);
    assert!(run(&enroll).ends_with("\n200"), "{enroll}");
    assert!(shell(openssl[1].trim()).contains(": OK"));
    let devices = run(&commands[19]);
    assert!(devices.ends_with("\n200"), "{devices}");
    assert!(
        devices.contains("\"account_id\":\"acct_team\"")
            && devices.contains("spiffe://demo.edgeguard/device/dev_"),
        "{devices}"
    );
    // the token was for one use
    assert!(
        run(&enroll).ends_with("\n403"),
        "a used-up token is refused"
    );

    // the device calls through Envoy's mutual-TLS listener: its certificate maps (through the
    // store, fed from enroll's registry file) to the device, its account and the app
    let device_id = devices
        .split('"')
        .find(|s| s.starts_with("dev_"))
        .unwrap_or_default()
        .to_string();
    let mut as_device = String::new();
    edgeguard_tests::process::eventually(
        "the enrolled device is let through",
        Duration::from_secs(10),
        || {
            as_device = run(&commands[20]);
            as_device.ends_with("\n200")
        },
    );
    assert!(
        as_device.contains(&format!("\"portal-device-id\":[\"{device_id}\"]"))
            && as_device.contains("\"portal-account-id\":[\"acct_team\"]"),
        "{as_device}"
    );
    assert!(
        run(&commands[21]).ends_with("\n000"),
        "no client certificate: the handshake is refused"
    );
    let bound = run(&commands[22]);
    assert!(bound.ends_with("\n200"), "{bound}");
    let answer: serde_json::Value =
        serde_json::from_str(bound.trim_end_matches("200").trim()).unwrap();
    let jwt = answer["headers"]["Authorization"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_string();
    let claims = edgeguard_tests::keys::claims_of(&jwt);
    let thumbprint = edgeguard_tests::mtls::CertKey {
        cert: demo.run_dir().join("device.pem"),
        key: demo.run_dir().join("device.key"),
    }
    .x5t_s256();
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint.as_str(), "{claims}");
    // revoked: refused on the device listener within 2 s
    let revoke = commands[23].replace("<device id>", &device_id);
    assert!(run(&revoke).ends_with("\n200"), "{revoke}");
    edgeguard_tests::process::eventually(
        "the revoked device is refused",
        Duration::from_secs(2),
        || run(&commands[20]).ends_with("\n401"),
    );

    // the gatekeeper's routes on Envoy's listener (one origin for a browser)
    let via_envoy = run(&format!(
        "curl -s -X POST 'http://127.0.0.1:{gatekeeper_shape}/gatekeeper/items'"
    ));
    assert!(
        via_envoy.ends_with("\n200") && via_envoy.contains("demo-user"),
        "{via_envoy}"
    );

    // no route lets a client forge a header a filter (or edgeguard authz) sets: each route gets
    // every owned header forged, and nothing forged reaches the upstream
    let token = ok_token(&commands[0]);
    let forged = [
        "x-edgeguard-sub",
        "x-edgeguard-table",
        "portal-account-id",
        "rl-plan-free",
        "rl-user-limit-40",
        "portal-extra",
    ]
    .iter()
    .map(|h| format!("-H '{h}: forged-by-client'"))
    .collect::<Vec<_>>()
    .join(" ");
    for (what, cmd) in [
        (
            "jwt-shape route",
            format!("curl -s {forged} -H 'Authorization: Bearer {token}' 'http://127.0.0.1:{port}/v1/shape?table=items&offset=-1'"),
        ),
        (
            "portal-auth route",
            format!("curl -s {forged} 'http://127.0.0.1:{port}/v1/demo_unlimited'"),
        ),
        (
            "ext_authz route",
            format!("curl -s {forged} 'http://127.0.0.1:{ext}/v1/demo_unlimited'"),
        ),
    ] {
        let out = run(&cmd);
        assert!(out.ends_with("\n200"), "{what}: {out}");
        assert!(!out.contains("forged-by-client"), "{what}: a forged header reached the upstream: {out}");
    }

    // stopping the script stops everything it started
    let rest = demo.stop();
    assert!(
        rest.iter().any(|l| l.contains("edgeguard demo stopped")),
        "{rest:?}"
    );
    for p in [
        port,
        ext,
        authz,
        authz_http,
        echo,
        gatekeeper,
        gatekeeper_shape,
    ] {
        assert!(
            !wait_for_port(p, Duration::from_millis(300)),
            "port {p} still listening"
        );
    }
}

/// The token in the first printed command (`-H "Authorization: Bearer <token>"`).
fn ok_token(cmd: &str) -> String {
    cmd.split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

edgeguard_tests::flavoured!(make_run_prints_working_curl_lines);
