//! `edgeguard enroll` end to end: the real binary, a real throwaway Postgres migrated with
//! the real `edgeguard migrate`, a fleet CA made by the real `openssl req -x509`, and devices
//! played by the real `openssl req` (key + CSR) and the real `curl`.
//!
//! - a device enrolls with its token; `openssl verify` accepts its certificate against the
//!   CA, which carries the assigned identity (CN = device id, one URI SAN
//!   `spiffe://edge.example/device/<id>`, clientAuth, CA:FALSE), and the registry row in
//!   Postgres has its fingerprint; the trigger notifies the change feed;
//! - tokens: reuse of a one-use token (403), expiry (403), unknown (401), a refused CSR does
//!   not consume a use, concurrent enrollments never over-use a token;
//! - the CSR policy: weak RSA, other curves, a SAN request, a SPIFFE-looking CN, a broken
//!   signature, garbage: each a 400 with its code;
//! - the admin API: no or a wrong token is a 401; revoke (idempotent); re-key (same SPIFFE
//!   id, new certificate, old fingerprint moved to the revoked certificates);
//! - SIGKILL mid-run: every certificate a client received has its device row;
//! - DB-less: the YAML devices file, ending with `...`, survives a restart;
//! - start-up refuses an unusable CA or a short admin token, clearly and without echoing it.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use edgeguard_tests::enroll::{
    curl_enroll, fingerprint_of, openssl_describe, openssl_verifies, run, Enroll, TestCa,
    TestDevice, ADMIN_TOKEN, TRUST_DOMAIN,
};
use edgeguard_tests::postgres::{self, Postgres};
use edgeguard_tests::process::free_port;
use edgeguard_tests::tools;
use serde_json::{json, Value};

/// A migrated throwaway Postgres (`edgeguard migrate --grove-schema`, twice: the migrations
/// are idempotent), or `None` (skip) where Postgres is not installed.
fn migrated_postgres() -> Option<Postgres> {
    // a test that passes without its database would prove nothing: `make test` installs it
    assert!(
        postgres::available(),
        "Postgres is not installed here: run `make postgres` (make test does)"
    );
    let pg = Postgres::start();
    for _ in 0..2 {
        run(
            "edgeguard migrate",
            Command::new(tools::edgeguard())
                .args(["migrate", "--grove-schema"])
                .env("POSTGRES_CONNECTION_STRING", pg.url()),
        );
    }
    Some(pg)
}

fn start_pg(dir: &Path, pg: &Postgres, ca: &TestCa) -> Enroll {
    Enroll::start(
        ca,
        &["--postgres-connection-string", &pg.url()],
        &dir.join(format!("enroll-{}.log", free_port())),
    )
}

fn token_of(v: &Value) -> String {
    v["token"].as_str().unwrap_or_default().to_string()
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_device_enrolls_with_openssl_and_curl_and_its_certificate_verifies() {
    let Some(pg) = migrated_postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let svc = start_pg(d, &pg, &ca);

    let t = svc.token("acc_kiosks", 600, 1);
    assert_eq!(t["account_id"], "acc_kiosks");
    assert_eq!(t["uses"], 1);
    let token = token_of(&t);
    assert!(token.len() >= 40, "{t}");
    // only the digest is stored
    let stored = pg.psql("SELECT digest, uses_left FROM edgeguard_enrollment_tokens");
    assert!(!stored.contains(&token));
    assert!(stored.ends_with("|1"), "{stored}");

    let dev = TestDevice::new(d, "kiosk", "my-kiosk");
    let (status, body) = curl_enroll(svc.port, &token, &dev.csr, &dev.cert);
    assert_eq!(status, 200, "{body}\n{}", svc.log());
    assert_eq!(
        body.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{body}"
    );
    openssl_verifies(&ca.cert, &dev.cert).unwrap_or_else(|e| panic!("openssl verify: {e}"));

    let devices = svc.devices(None);
    assert_eq!(devices.len(), 1, "{devices:?}");
    let row = &devices[0];
    let id = row["id"].as_str().unwrap();
    assert!(id.starts_with("dev_") && id.len() == 24, "{id}");
    let spiffe = format!("spiffe://{TRUST_DOMAIN}/device/{id}");
    assert_eq!(row["spiffe_id"], spiffe.as_str());
    assert_eq!(row["account_id"], "acc_kiosks");
    assert_eq!(row["label"], "my-kiosk");
    assert_eq!(row["revoked_at"], Value::Null);
    assert_eq!(row["fingerprint_sha256"], dev.fingerprint().as_str());

    let described = openssl_describe(&dev.cert);
    assert!(described.contains(&format!("CN = {id}")), "{described}");
    assert!(described.contains(&format!("URI:{spiffe}")), "{described}");
    assert_eq!(described.matches("URI:").count(), 1, "{described}");
    assert!(!described.contains("DNS:"), "{described}");
    assert!(
        described.contains("TLS Web Client Authentication"),
        "{described}"
    );
    assert!(
        !described.contains("TLS Web Server Authentication"),
        "{described}"
    );
    assert!(described.contains("CA:FALSE"), "{described}");
    let serial = described
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(row["serial"], serial.as_str());
    assert!(serial.len() >= 16, "at least 64 bits: {serial}");
    // the certificate is for the CSR's key
    let key_pub = run(
        "openssl pkey -pubout",
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&dev.key),
    );
    let cert_pub = run(
        "openssl x509 -pubkey",
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&dev.cert),
    );
    assert_eq!(key_pub, cert_pub);
    // validity: from 5 minutes ago, 30 days (the default)
    let days = run(
        "openssl x509 -checkend",
        Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-checkend",
                &(29 * 86400).to_string(),
                "-in",
            ])
            .arg(&dev.cert),
    );
    assert!(days.contains("will not expire"), "{days}");

    // the row in Postgres, committed
    let in_pg = pg.psql(&format!(
        "SELECT account_id, spiffe_id, fingerprint_sha256 FROM edgeguard_devices WHERE id = '{id}'"
    ));
    assert_eq!(in_pg, format!("acc_kiosks|{spiffe}|{}", dev.fingerprint()));
    assert_eq!(
        pg.psql("SELECT uses_left FROM edgeguard_enrollment_tokens"),
        "0"
    );

    // the second use of the one-use token is refused, and says why
    let again = TestDevice::new(d, "again", "again");
    let (status, body) = curl_enroll(svc.port, &token, &again.csr, &again.cert);
    assert_eq!(
        (status, error_of(&body).as_str()),
        (403, "token_used_up"),
        "{body}"
    );
    let (status, body) = curl_enroll(svc.port, "egenr_nope", &again.csr, &again.cert);
    assert_eq!(
        (status, error_of(&body).as_str()),
        (401, "unknown_token"),
        "{body}"
    );
    assert_eq!(svc.devices(None).len(), 1);

    // the change feed: a change a verdict reads notifies edgeguard_portal_changes, a
    // heartbeat (last_seen_at) does not
    let quiet = pg.psql(&format!(
        "LISTEN edgeguard_portal_changes; UPDATE edgeguard_devices SET last_seen_at = now() WHERE id = '{id}';"
    ));
    assert!(!quiet.contains("edgeguard_devices"), "{quiet}");
    let notified = pg.psql(&format!(
        "LISTEN edgeguard_portal_changes; UPDATE edgeguard_devices SET not_after = not_after WHERE id = '{id}';"
    ));
    assert!(
        notified.contains(r#""table" : "edgeguard_devices""#) && notified.contains(id),
        "{notified}"
    );

    // metrics
    assert_eq!(
        svc.series(r#"edgeguard_enroll_enrollments_total{result="issued"}"#),
        1.0
    );
    assert_eq!(
        svc.series(r#"edgeguard_enroll_enrollments_total{result="token_used_up"}"#),
        1.0
    );
    assert_eq!(
        svc.series(r#"edgeguard_enroll_devices{state="active"}"#),
        1.0
    );
    // no token, no key in the log
    let log = svc.log();
    assert!(log.contains("device enrolled"), "{log}");
    assert!(!log.contains(&token) && !log.contains(ADMIN_TOKEN), "{log}");
}

#[test]
fn tokens_expire_are_used_up_and_the_admin_api_wants_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let devices = d.join("devices.yaml");
    let svc = Enroll::start(
        &ca,
        &["--devices-file", devices.to_str().unwrap()],
        &d.join("enroll.log"),
    );

    // admin without, with a wrong, with a lower-case-scheme right token
    let body = json!({"account_id": "a"}).to_string();
    for (token, error) in [
        (None, "missing_credentials"),
        (
            Some("wrong-token-wrong-token-wrong-token-x"),
            "invalid_admin_token",
        ),
    ] {
        for (method, path) in [
            ("POST", "/admin/v1/enrollment-tokens"),
            ("GET", "/admin/v1/devices"),
            ("POST", "/admin/v1/devices/dev_x/revoke"),
            ("POST", "/admin/v1/devices/dev_x/rekey"),
        ] {
            let r = svc.admin_as(token, method, path, &body);
            assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
            assert_eq!(r.json()["error"], error);
            assert_eq!(r.json()["code"], 401);
            assert!(r
                .header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")));
        }
    }
    // a prefix of the admin token is not the admin token
    let r = svc.admin_as(
        Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        "GET",
        "/admin/v1/devices",
        "",
    );
    assert_eq!(r.status, 401);

    // token requests are checked
    for (bad, what) in [
        (json!({"ttl_seconds": 60}), "account_id"),
        (
            json!({"account_id": "a", "ttl_seconds": 8 * 86400}),
            "ttl_seconds",
        ),
        (json!({"account_id": "a", "ttl_seconds": 0}), "ttl_seconds"),
        (json!({"account_id": "a", "uses": 0}), "uses"),
        (json!({"account_id": "a", "colour": "red"}), "colour"),
    ] {
        let r = svc.admin("POST", "/admin/v1/enrollment-tokens", &bad.to_string());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(
            r.json()["message"].as_str().unwrap().contains(what),
            "{}",
            r.body
        );
    }
    // the default lifetime: 1 h
    let t = svc.admin(
        "POST",
        "/admin/v1/enrollment-tokens",
        &json!({"account_id": "a"}).to_string(),
    );
    assert_eq!(t.status, 201, "{}", t.body);

    // expiry: a 1 s token, 2 s later
    let short = token_of(&svc.token("acc_a", 1, 1));
    std::thread::sleep(Duration::from_secs(2));
    let dev = TestDevice::new(d, "late", "late");
    let (status, body) = curl_enroll(svc.port, &short, &dev.csr, &dev.cert);
    assert_eq!(
        (status, error_of(&body).as_str()),
        (403, "token_expired"),
        "{body}"
    );

    // a 2-use token: twice, then used up
    let two = token_of(&svc.token("acc_a", 600, 2));
    for i in 0..2 {
        let dev = TestDevice::new(d, &format!("two{i}"), "two");
        let (status, body) = curl_enroll(svc.port, &two, &dev.csr, &dev.cert);
        assert_eq!(status, 200, "{body}");
    }
    let dev = TestDevice::new(d, "three", "three");
    let (status, body) = curl_enroll(svc.port, &two, &dev.csr, &dev.cert);
    assert_eq!(
        (status, error_of(&body).as_str()),
        (403, "token_used_up"),
        "{body}"
    );
    // no token at all
    let out = run(
        "curl",
        Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--data-binary"])
            .arg(format!("@{}", dev.csr.display()))
            .arg(format!("http://127.0.0.1:{}/enroll/v1", svc.port)),
    );
    assert!(
        out.ends_with("\n401") && out.contains("missing_token"),
        "{out}"
    );
    assert_eq!(svc.devices(Some("acc_a")).len(), 2);
    assert_eq!(svc.devices(Some("acc_other")).len(), 0);
}

#[test]
fn the_csr_policy_refuses_weak_keys_chosen_identities_and_broken_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let devices = d.join("devices.yaml");
    let svc = Enroll::start(
        &ca,
        &["--devices-file", devices.to_str().unwrap()],
        &d.join("enroll.log"),
    );
    // one use: refused CSRs must not consume it
    let token = token_of(&svc.token("acc_a", 600, 1));
    let refused: Vec<(&str, TestDevice, &str)> = vec![
        (
            "RSA 1024",
            TestDevice::with_key(d, "rsa1024", "x", &["-newkey", "rsa:1024"], &[]),
            "weak_key",
        ),
        (
            "P-521",
            TestDevice::with_key(
                d,
                "p521",
                "x",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
                &[],
            ),
            "weak_key",
        ),
        (
            "secp256k1",
            TestDevice::with_key(
                d,
                "k1",
                "x",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
                &[],
            ),
            "weak_key",
        ),
        (
            "a SPIFFE SAN",
            TestDevice::with_key(
                d,
                "san",
                "x",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                &[
                    "-addext",
                    "subjectAltName=URI:spiffe://edge.example/device/dev_chosen",
                ],
            ),
            "identity_requested",
        ),
        (
            "a DNS SAN",
            TestDevice::with_key(
                d,
                "dns",
                "x",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                &["-addext", "subjectAltName=DNS:kiosk.example"],
            ),
            "identity_requested",
        ),
        (
            "a SPIFFE CN",
            // `\/` is a `/` in openssl's -subj syntax
            TestDevice::new(d, "cn", r"spiffe:\/\/edge.example\/device\/dev_chosen"),
            "identity_requested",
        ),
    ];
    for (what, dev, error) in &refused {
        let (status, body) = curl_enroll(svc.port, &token, &dev.csr, &dev.cert);
        assert_eq!(
            (status, error_of(&body).as_str()),
            (400, *error),
            "{what}: {body}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], 400);
        if *error == "identity_requested" {
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .contains("edgeguard assigns the identity"),
                "{body}"
            );
        }
    }
    // a broken signature (proof of possession): the DER CSR with its last byte changed
    let good = TestDevice::new(d, "good", "good");
    let der = d.join("good.der");
    run(
        "openssl req -outform DER",
        Command::new("openssl")
            .args(["req", "-in"])
            .arg(&good.csr)
            .args(["-outform", "DER", "-out"])
            .arg(&der),
    );
    let mut bytes = std::fs::read(&der).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01;
    let broken = d.join("broken.der");
    std::fs::write(&broken, &bytes).unwrap();
    let (status, body) = curl_enroll(svc.port, &token, &broken, &d.join("broken.out"));
    assert_eq!(
        (status, error_of(&body).as_str()),
        (400, "csr_bad_signature"),
        "{body}"
    );
    // garbage
    let junk = d.join("junk.csr");
    std::fs::write(&junk, "hello").unwrap();
    let (status, body) = curl_enroll(svc.port, &token, &junk, &d.join("junk.out"));
    assert_eq!(
        (status, error_of(&body).as_str()),
        (400, "csr_unparsable"),
        "{body}"
    );

    // P-384 and Ed25519 and RSA 2048 are fine; the token still has its use
    let (status, body) = curl_enroll(svc.port, &token, &good.csr, &good.cert);
    assert_eq!(status, 200, "{body}");
    openssl_verifies(&ca.cert, &good.cert).unwrap();
    let more = token_of(&svc.token("acc_a", 600, 3));
    for (name, key) in [
        (
            "p384",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        ("ed25519", vec!["-newkey", "ed25519"]),
        ("rsa2048", vec!["-newkey", "rsa:2048"]),
    ] {
        let dev = TestDevice::with_key(d, name, name, &key, &[]);
        let (status, body) = curl_enroll(svc.port, &more, &dev.csr, &dev.cert);
        assert_eq!(status, 200, "{name}: {body}");
        openssl_verifies(&ca.cert, &dev.cert).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(
        svc.series(r#"edgeguard_enroll_enrollments_total{result="weak_key"}"#),
        3.0
    );
    assert_eq!(
        svc.series(r#"edgeguard_enroll_enrollments_total{result="identity_requested"}"#),
        3.0
    );
    assert_eq!(
        svc.series(r#"edgeguard_enroll_enrollments_total{result="issued"}"#),
        4.0
    );
}

#[test]
fn revoke_is_idempotent_and_rekey_keeps_the_identity_and_refuses_the_old_certificate() {
    let Some(pg) = migrated_postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let svc = start_pg(d, &pg, &ca);
    let token = token_of(&svc.token("acc_a", 600, 2));
    let a = TestDevice::new(d, "a", "a");
    let b = TestDevice::new(d, "b", "b");
    for dev in [&a, &b] {
        let (status, body) = curl_enroll(svc.port, &token, &dev.csr, &dev.cert);
        assert_eq!(status, 200, "{body}");
    }
    let id_of = |fp: &str| -> String {
        svc.devices(None)
            .iter()
            .find(|d| d["fingerprint_sha256"] == fp)
            .and_then(|d| d["id"].as_str().map(str::to_string))
            .unwrap()
    };
    let (a_id, b_id) = (id_of(&a.fingerprint()), id_of(&b.fingerprint()));

    // revoke a: revoked_at set, and kept by a second revoke
    let r = svc.admin("POST", &format!("/admin/v1/devices/{a_id}/revoke"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let revoked_at = r.json()["revoked_at"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1100));
    let again = svc.admin("POST", &format!("/admin/v1/devices/{a_id}/revoke"), "");
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["revoked_at"], revoked_at.as_str());
    let row = svc
        .admin("GET", &format!("/admin/v1/devices/{a_id}"), "")
        .json();
    assert_eq!(row["revoked_at"], revoked_at.as_str());
    assert_eq!(
        pg.psql(&format!(
            "SELECT device_id FROM edgeguard_revoked_certificates WHERE fingerprint_sha256 = '{}'",
            a.fingerprint()
        )),
        a_id
    );
    assert_eq!(
        svc.series(r#"edgeguard_enroll_devices{state="revoked"}"#),
        1.0
    );
    // a revoked device cannot be re-keyed; unknown devices are 404
    let r = svc.admin("POST", &format!("/admin/v1/devices/{a_id}/rekey"), "");
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (409, json!("device_revoked")),
        "{}",
        r.body
    );
    let r = svc.admin("POST", "/admin/v1/devices/dev_nope/revoke", "");
    assert_eq!(r.status, 404);
    let r = svc.admin("POST", "/admin/v1/devices/dev_nope/rekey", "");
    assert_eq!(r.status, 404);

    // re-key b: a one-use token bound to b
    let r = svc.admin(
        "POST",
        &format!("/admin/v1/devices/{b_id}/rekey"),
        &json!({"ttl_seconds": 300}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let rk = r.json();
    assert_eq!(rk["device_id"], b_id.as_str());
    assert_eq!(rk["account_id"], "acc_a");
    assert_eq!(rk["uses"], 1);
    let rekey_token = token_of(&rk);
    let b2 = TestDevice::new(d, "b2", "b-new-key");
    let (status, body) = curl_enroll(svc.port, &rekey_token, &b2.csr, &b2.cert);
    assert_eq!(status, 200, "{body}");
    openssl_verifies(&ca.cert, &b2.cert).unwrap();
    let described = openssl_describe(&b2.cert);
    assert!(
        described.contains(&format!("URI:spiffe://{TRUST_DOMAIN}/device/{b_id}")),
        "{described}"
    );
    assert!(described.contains(&format!("CN = {b_id}")), "{described}");
    assert_ne!(b2.fingerprint(), b.fingerprint());
    let row = svc
        .admin("GET", &format!("/admin/v1/devices/{b_id}"), "")
        .json();
    assert_eq!(row["fingerprint_sha256"], b2.fingerprint().as_str());
    assert_eq!(row["label"], "b-new-key");
    assert_eq!(row["revoked_at"], Value::Null);
    assert_eq!(svc.devices(None).len(), 2, "a re-key adds no device");
    // the old certificate is refused for good
    let revoked = svc
        .admin(
            "GET",
            &format!("/admin/v1/revoked-certificates?device_id={b_id}"),
            "",
        )
        .json();
    let fps: Vec<&str> = revoked["revoked_certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["fingerprint_sha256"].as_str())
        .collect();
    assert_eq!(fps, [b.fingerprint().as_str()]);
    assert_eq!(
        pg.psql(&format!(
            "SELECT fingerprint_sha256 FROM edgeguard_devices WHERE id = '{b_id}'"
        )),
        b2.fingerprint()
    );
    // the re-key token was for one use
    let b3 = TestDevice::new(d, "b3", "b3");
    let (status, body) = curl_enroll(svc.port, &rekey_token, &b3.csr, &b3.cert);
    assert_eq!(
        (status, error_of(&body).as_str()),
        (403, "token_used_up"),
        "{body}"
    );
    assert_eq!(
        svc.series(r#"edgeguard_enroll_enrollments_total{result="rekeyed"}"#),
        1.0
    );

    // a re-key token dies with its device
    let r = svc.admin("POST", &format!("/admin/v1/devices/{b_id}/rekey"), "");
    let pending = token_of(&r.json());
    assert_eq!(
        svc.admin("POST", &format!("/admin/v1/devices/{b_id}/revoke"), "")
            .status,
        200
    );
    let (status, body) = curl_enroll(svc.port, &pending, &b3.csr, &b3.cert);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        pg.psql(&format!(
            "SELECT fingerprint_sha256 FROM edgeguard_devices WHERE id = '{b_id}'"
        )),
        b2.fingerprint()
    );
}

#[test]
fn concurrent_enrollments_never_overuse_a_token() {
    let Some(pg) = migrated_postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let svc = start_pg(d, &pg, &ca);
    let token = token_of(&svc.token("acc_a", 600, 3));
    let devices: Vec<TestDevice> = (0..10)
        .map(|i| TestDevice::new(d, &format!("c{i}"), "c"))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .map(|dev| s.spawn(|| curl_enroll(svc.port, &token, &dev.csr, &dev.cert).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM edgeguard_devices"), "3");
    assert_eq!(
        pg.psql("SELECT uses_left FROM edgeguard_enrollment_tokens"),
        "0"
    );
}

#[test]
fn sigkill_mid_run_loses_no_device_record() {
    let Some(pg) = migrated_postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let port = free_port();
    let url = pg.url();
    let args = ["--postgres-connection-string", url.as_str()];
    let mut svc = Enroll::start_on(port, &ca, &args, &d.join("enroll-1.log"));
    let token = token_of(&svc.token("acc_a", 600, 10_000));
    // CSRs made up front (openssl is the slow part)
    let devices: Vec<TestDevice> = (0..60)
        .map(|i| TestDevice::new(d, &format!("k{i}"), "k"))
        .collect();
    let next = AtomicUsize::new(0);
    let received = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(dev) = devices.get(i) else { break };
                    started.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = curl_enroll(port, &token, &dev.csr, &dev.cert);
                    if status == 200 && body.contains("BEGIN CERTIFICATE") {
                        received.lock().unwrap().push(fingerprint_of(&dev.cert));
                    }
                }
            });
        }
        // let some enrollments through, then SIGKILL while others are in flight
        edgeguard_tests::process::eventually("some enrollments", Duration::from_secs(30), || {
            received.lock().unwrap().len() >= 8
        });
        svc.proc.stop(); // Child::kill: SIGKILL
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
    });
    let received = received.into_inner().unwrap();
    assert!(received.len() >= 8, "{}", received.len());

    let in_pg = pg.psql("SELECT fingerprint_sha256 FROM edgeguard_devices");
    for fp in &received {
        assert!(
            in_pg.lines().any(|l| l == fp),
            "a device got {fp} but has no row:\n{in_pg}"
        );
    }
    // every consumed use is a device row (and the other way round)
    let rows: i64 = pg
        .psql("SELECT count(*) FROM edgeguard_devices")
        .parse()
        .unwrap();
    let left: i64 = pg
        .psql("SELECT uses_left FROM edgeguard_enrollment_tokens")
        .parse()
        .unwrap();
    assert_eq!(rows, 10_000 - left);
    eprintln!(
        "SIGKILL: {} requests started, {} certificates received, {rows} device rows",
        started.load(Ordering::SeqCst),
        received.len()
    );
    assert!(rows as usize >= received.len());
    // back up on the same registry: the token goes on
    let svc = Enroll::start_on(port, &ca, &args, &d.join("enroll-2.log"));
    let dev = TestDevice::new(d, "after", "after");
    let (status, body) = curl_enroll(port, &token, &dev.csr, &dev.cert);
    assert_eq!(status, 200, "{body}");
    assert_eq!(svc.devices(None).len() as i64, rows + 1);
}

#[test]
fn yaml_mode_keeps_the_registry_in_a_file_that_ends_with_the_end_marker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let file = d.join("devices.yaml");
    let port = free_port();
    let args = ["--devices-file", file.to_str().unwrap()];
    let mut svc = Enroll::start_on(port, &ca, &args, &d.join("enroll-1.log"));
    let t = svc.token("acc_yaml", 600, 1);
    let token = token_of(&t);
    let dev = TestDevice::new(d, "y", "yaml-kiosk");
    let (status, body) = curl_enroll(port, &token, &dev.csr, &dev.cert);
    assert_eq!(status, 200, "{body}");
    openssl_verifies(&ca.cert, &dev.cert).unwrap();

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with("\n...\n"), "{text}");
    assert!(text.contains(&dev.fingerprint()), "{text}");
    assert!(
        text.contains(&format!("spiffe://{TRUST_DOMAIN}/device/dev_")),
        "{text}"
    );
    assert!(
        text.contains("acc_yaml") && text.contains("yaml-kiosk"),
        "{text}"
    );
    assert!(!text.contains(&token), "the token itself is never written");
    assert!(text.contains("uses_left: 0"), "{text}");
    // no temporary file is left next to it
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains("devices"))
        .collect();
    assert_eq!(names, ["devices.yaml"]);

    // revoke, restart: all of it is still there, and the used token still refused
    let id = svc.devices(None)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        svc.admin("POST", &format!("/admin/v1/devices/{id}/revoke"), "")
            .status,
        200
    );
    svc.proc.stop();
    let svc = Enroll::start_on(port, &ca, &args, &d.join("enroll-2.log"));
    let list = svc.devices(None);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["fingerprint_sha256"], dev.fingerprint().as_str());
    assert!(list[0]["revoked_at"].is_string());
    let again = TestDevice::new(d, "y2", "y2");
    let (status, body) = curl_enroll(port, &token, &again.csr, &again.cert);
    assert_eq!(
        (status, error_of(&body).as_str()),
        (403, "token_used_up"),
        "{body}"
    );
}

/// `edgeguard enroll` with `args`/`env` must exit 2 with `expect` in its error.
fn refuses_to_start(ca: &TestCa, args: &[&str], env: &[(&str, &str)], expect: &str) -> String {
    let mut cmd = Enroll::command(free_port(), ca, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(expect), "expected '{expect}' in: {stderr}");
    stderr
}

#[test]
fn it_refuses_to_start_without_a_usable_ca_or_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let file = d.join("devices.yaml");
    let reg = ["--devices-file", file.to_str().unwrap()];

    // unreadable CA files
    let missing = TestCa {
        cert: d.join("nope.pem"),
        key: ca.key.clone(),
    };
    refuses_to_start(&missing, &reg, &[], "cannot read the CA certificate");
    let missing = TestCa {
        cert: ca.cert.clone(),
        key: d.join("nope.key"),
    };
    refuses_to_start(&missing, &reg, &[], "cannot read the CA key");
    // a certificate that is not a CA (openssl's default for a leaf: CA:FALSE)
    let leaf_key = d.join("leaf.key");
    let leaf = d.join("leaf.pem");
    run(
        "openssl req -x509 (leaf)",
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "3",
            ])
            .args([
                "-subj",
                "/CN=not a CA",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
            ])
            .arg(&leaf_key)
            .arg("-out")
            .arg(&leaf),
    );
    let not_ca = TestCa {
        cert: leaf.clone(),
        key: leaf_key,
    };
    refuses_to_start(&not_ca, &reg, &[], "not a CA certificate");
    // the key of another CA
    let other = TestCa::make(d, "other");
    let mixed = TestCa {
        cert: ca.cert.clone(),
        key: other.key.clone(),
    };
    refuses_to_start(&mixed, &reg, &[], "not the private key");
    // a short admin token, never echoed
    let e = refuses_to_start(
        &ca,
        &reg,
        &[("EDGEGUARD_ENROLL_ADMIN_TOKEN", "short-secret")],
        "at least 32 bytes",
    );
    assert!(!e.contains("short-secret"), "{e}");
    // a bad trust domain, no registry, a token lifetime over 7 days
    refuses_to_start(
        &ca,
        &reg,
        &[("EDGEGUARD_TRUST_DOMAIN", "spiffe://edge")],
        "trust domain",
    );
    refuses_to_start(&ca, &[], &[], "no device registry");
    refuses_to_start(
        &ca,
        &reg,
        &[("EDGEGUARD_ENROLLMENT_TOKEN_TTL", "8d")],
        "EDGEGUARD_ENROLLMENT_TOKEN_TTL",
    );
    // --help does not show the admin token from the environment
    let out = Enroll::command(free_port(), &ca, &["--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("EDGEGUARD_ENROLL_ADMIN_TOKEN"), "{help}");
    assert!(!help.contains(ADMIN_TOKEN), "{help}");
}

#[test]
fn the_expiry_scanner_reports_devices_to_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::make(d, "fleet");
    let file = d.join("devices.yaml");
    // certificates of 1 h, a warning window of 2 h: every device is "expiring" at once
    let args = [
        "--devices-file",
        file.to_str().unwrap(),
        "--device-cert-ttl",
        "1h",
        "--device-expiry-warning",
        "2h",
        "--device-expiry-scan-interval",
        "200ms",
    ];
    let svc = Enroll::start(&ca, &args, &d.join("enroll.log"));
    assert_eq!(svc.metric("edgeguard_enroll_devices_expiring"), 0.0);
    let dev = TestDevice::new(d, "soon", "short-lived");
    let (status, body) = curl_enroll(
        svc.port,
        &token_of(&svc.token("acc_exp", 600, 1)),
        &dev.csr,
        &dev.cert,
    );
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while svc.metric("edgeguard_enroll_devices_expiring") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "{}", svc.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // one warning line per device entering the window, not one per scan
    std::thread::sleep(std::time::Duration::from_millis(700));
    let log = svc.log();
    assert_eq!(
        log.matches("device certificate expires soon").count(),
        1,
        "{log}"
    );
    // the admin API lists it under ?expiring=true; a device with a long certificate would not be
    let expiring = svc.admin("GET", "/admin/v1/devices?expiring=true", "");
    assert_eq!(expiring.status, 200, "{}", expiring.body);
    let list: Value = expiring.json();
    assert_eq!(list["devices"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["devices"][0]["account_id"], "acc_exp");
    // revoked devices are not "expiring" (they are refused anyway)
    let id = list["devices"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        svc.admin("POST", &format!("/admin/v1/devices/{id}/revoke"), "")
            .status,
        200
    );
    let after = svc
        .admin("GET", "/admin/v1/devices?expiring=true", "")
        .json();
    assert_eq!(
        after["devices"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while svc.metric("edgeguard_enroll_devices_expiring") > 0.0 {
        assert!(std::time::Instant::now() < deadline, "{}", svc.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
