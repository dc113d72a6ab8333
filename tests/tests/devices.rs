//! Device identity in verdicts, end to end with real parts only: a throwaway Postgres migrated
//! by `edgeguard migrate`, `edgeguard enroll` issuing certificates to devices that enroll with
//! the real `openssl req` + `curl`, `edgeguard authz` serving the store (and ext_authz), and
//! real Envoys terminating mutual TLS with portal-auth (both builds) and with ext_authz. The
//! device is the real `curl` presenting its certificate.
//!
//! What is shown: a device's request is stamped with its app, account and device id; a device
//! may call only the certificate-accepting apps of its own account; no certificate, another
//! CA's certificate, an expired certificate (even on a listener that lets expired ones through
//! TLS) are refused; revoking a device, or its whole account, refuses it on every Envoy within
//! 2 s; heartbeats reach the registry without a separate service.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edgeguard_tests::authz::Authz;
use edgeguard_tests::enroll::{curl_enroll, run, Enroll, TestCa, TestDevice, TRUST_DOMAIN};
use edgeguard_tests::envoy::{Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::mtls::{self, expired_client_cert, CertKey, CurlResult};
use edgeguard_tests::postgres::{self, Postgres};
use edgeguard_tests::process::{eventually, Echo};
use edgeguard_tests::tools;
use serde_json::{json, Value};

const ACCOUNT: &str = "acc_fleet";
const OTHER_ACCOUNT: &str = "acc_other";
/// How long a revocation may take to reach every Envoy (the promise).
const REVOCATION: Duration = Duration::from_secs(2);

/// Postgres with every migration and the apps: `app_cert` (certificates only), `app_either`
/// (a certificate or its key), `app_key` (its key only, the default), all of [`ACCOUNT`], and
/// `app_other` (certificates only) of another account.
fn database() -> Postgres {
    assert!(
        postgres::available(),
        "Postgres is not installed here: run `make postgres` (make test does)"
    );
    let pg = Postgres::start();
    run(
        "edgeguard migrate",
        Command::new(tools::edgeguard())
            .args(["migrate", "--grove-schema"])
            .env("POSTGRES_CONNECTION_STRING", pg.url()),
    );
    pg.psql(&format!(
        "INSERT INTO accounts (id, plan_type) VALUES ('{ACCOUNT}', 'PLAN_FREE'), ('{OTHER_ACCOUNT}', 'PLAN_FREE');
         INSERT INTO portal_applications (id, account_id) VALUES
           ('app_cert', '{ACCOUNT}'), ('app_either', '{ACCOUNT}'), ('app_key', '{ACCOUNT}'),
           ('app_other', '{OTHER_ACCOUNT}');
         INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required) VALUES
           ('app_cert', NULL, true), ('app_either', 'sk_either', true), ('app_key', 'sk_key', true),
           ('app_other', NULL, true);
         INSERT INTO edgeguard_app_client_auth (application_id, mode) VALUES
           ('app_cert', 'certificate'), ('app_either', 'either'), ('app_other', 'certificate');"
    ));
    pg
}

struct Fleet {
    dir: tempfile::TempDir,
    pg: Postgres,
    ca: TestCa,
    server: CertKey,
    other_ca: TestCa,
    enroll: Enroll,
    authz: Authz,
    echo: Echo,
}

impl Fleet {
    fn start() -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let pg = database();
        let ca = TestCa::make(d, "fleet-ca");
        let server = mtls::server_cert(d, &ca, "envoy");
        let other_ca = TestCa::make(d, "other-ca");
        let enroll = Enroll::start(
            &ca,
            &["--postgres-connection-string", &pg.url()],
            &d.join("enroll.log"),
        );
        let url = pg.url();
        let authz = Authz::start(&[
            ("POSTGRES_CONNECTION_STRING", url.as_str()),
            ("EDGEGUARD_METERING", "true"),
            ("EDGEGUARD_METERING_FLUSH_INTERVAL", "250ms"),
        ]);
        assert!(authz.wait_ready(Duration::from_secs(20)), "{}", authz.log());
        Fleet {
            dir,
            pg,
            ca,
            server,
            other_ca,
            enroll,
            authz,
            echo: Echo::start(),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Enrolls a device of `account` as a user would: `openssl req` makes the key and CSR,
    /// `curl` posts it with a one-time token. Returns its certificate and key, and its id.
    fn enroll_device(&self, name: &str, account: &str) -> (CertKey, String) {
        let token = self.enroll.token(account, 600, 1)["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dev = TestDevice::new(self.dir(), name, name);
        let (status, body) = curl_enroll(self.enroll.port, &token, &dev.csr, &dev.cert);
        assert_eq!(status, 200, "{body}\n{}", self.enroll.log());
        let fingerprint = dev.fingerprint();
        let id = self
            .enroll
            .devices(Some(account))
            .iter()
            .find(|d| d["fingerprint_sha256"] == fingerprint.as_str())
            .and_then(|d| d["id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("device {name} not listed"));
        (
            CertKey {
                cert: dev.cert,
                key: dev.key,
            },
            id,
        )
    }

    /// Envoy with portal-auth on a listener where a client certificate is optional and
    /// expired ones pass the handshake (loose TLS: the verdict must hold the line).
    fn filter_envoy(&self, flavour: Flavour) -> Envoy {
        let config = json!({
            "store": {"cluster": "authz_http", "refresh_interval_ms": 200, "timeout_ms": 2000},
            "metering": {"enabled": true, "report_interval_ms": 200}
        })
        .to_string();
        let filter = flavour.filter("portal_auth", &config, &["EDGEGUARD_STORE_TOKEN"]);
        let mut cfg = EnvoyConfig::new(self.echo.port, vec![filter])
            .with_tls(&self.server.cert, &self.server.key, &self.ca.cert, false)
            .allowing_expired_client_certificates();
        cfg.clusters
            .push(cluster("authz_http", self.authz.metrics_port, false));
        Envoy::start(&cfg)
    }

    /// Envoy with ext_authz (`include_peer_certificate`) on a listener that requires a client
    /// certificate of the fleet CA (expired ones pass the handshake).
    fn ext_authz_envoy(&self) -> Envoy {
        let f = json!({
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"},
                "include_peer_certificate": true,
                "failure_mode_allow": false
            }
        });
        let mut cfg = EnvoyConfig::new(self.echo.port, vec![f])
            .with_mtls(&self.server.cert, &self.server.key, &self.ca.cert)
            .allowing_expired_client_certificates();
        cfg.clusters.push(cluster("authz", self.authz.port, true));
        Envoy::start(&cfg)
    }

    fn call(
        &self,
        envoy: &Envoy,
        cert: Option<&CertKey>,
        app: &str,
        key: Option<&str>,
    ) -> CurlResult {
        let mut headers = vec![("portal-device-id", "forged-by-the-client")];
        if let Some(k) = key {
            headers.push(("authorization", k));
        }
        mtls::curl(
            envoy.port,
            &self.ca.cert,
            cert,
            &format!("/v1/{app}"),
            &headers,
        )
    }
}

fn cluster(name: &str, port: u16, h2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// The headers the echo upstream received, lower-case name → first value.
fn upstream_header(r: &CurlResult, name: &str) -> Option<String> {
    let v: Value = serde_json::from_str(r.body()).ok()?;
    v["headers"][name][0].as_str().map(str::to_string)
}

fn status(r: &CurlResult) -> Option<u16> {
    r.status()
}

/// A TLS handshake the server refused (curl could not even send the request).
fn refused_by_tls(r: &CurlResult) -> bool {
    matches!(r, CurlResult::Failed { .. })
}

fn devices_are_identified_refused_and_revoked(flavour: Flavour) {
    let fleet = Fleet::start();
    let filter = fleet.filter_envoy(flavour);
    let ext = fleet.ext_authz_envoy();
    let envoys = [("portal-auth", &filter), ("ext_authz", &ext)];

    // enrollment with openssl + curl; the store carries the device to every Envoy
    let (a, a_id) = fleet.enroll_device("kiosk-a", ACCOUNT);
    for (name, envoy) in envoys {
        eventually(
            &format!("{name}: the enrolled device is let through"),
            Duration::from_secs(10),
            || status(&fleet.call(envoy, Some(&a), "app_cert", None)) == Some(200),
        );
        let r = fleet.call(envoy, Some(&a), "app_cert", None);
        assert_eq!(
            upstream_header(&r, "portal-device-id").as_deref(),
            Some(a_id.as_str()),
            "{name}: {r:?}"
        );
        assert_eq!(
            upstream_header(&r, "portal-account-id").as_deref(),
            Some(ACCOUNT),
            "{name}"
        );
        assert_eq!(
            upstream_header(&r, "portal-application-id").as_deref(),
            Some("app_cert"),
            "{name}"
        );
        assert_eq!(
            upstream_header(&r, "rl-plan-free"),
            None,
            "{name}: off by default"
        );
        // a device may call only its own account's certificate apps
        let r = fleet.call(envoy, Some(&a), "app_other", None);
        assert_eq!(
            status(&r),
            Some(401),
            "{name}: another account's app: {r:?}"
        );
        let r = fleet.call(envoy, Some(&a), "app_key", None);
        assert_eq!(
            status(&r),
            Some(401),
            "{name}: a key-only app does not take certificates"
        );
        let r = fleet.call(envoy, Some(&a), "app_key", Some("sk_key"));
        assert_eq!(status(&r), Some(200), "{name}: {r:?}");
        assert_eq!(
            upstream_header(&r, "portal-device-id"),
            None,
            "{name}: the key did it"
        );
        let r = fleet.call(envoy, Some(&a), "app_either", None);
        assert_eq!(
            upstream_header(&r, "portal-device-id").as_deref(),
            Some(a_id.as_str()),
            "{name}: {r:?}"
        );
        // another CA's certificate never gets past the handshake
        let foreign = mtls::client_cert(
            fleet.dir(),
            &fleet.other_ca,
            &format!("foreign-{name}"),
            "foreign",
            None,
        );
        let r = fleet.call(envoy, Some(&foreign), "app_cert", None);
        assert!(
            refused_by_tls(&r),
            "{name}: another CA's certificate: {r:?}"
        );
    }
    // without a certificate: the listener that requires one refuses the handshake, the one
    // where it is optional answers 401 for certificate apps and takes keys for `either` apps
    assert!(refused_by_tls(&fleet.call(&ext, None, "app_cert", None)));
    assert_eq!(
        status(&fleet.call(&filter, None, "app_cert", None)),
        Some(401)
    );
    assert_eq!(
        status(&fleet.call(&filter, None, "app_either", Some("sk_either"))),
        Some(200)
    );
    assert_eq!(
        status(&fleet.call(&filter, None, "app_either", Some("wrong"))),
        Some(401)
    );

    // an expired certificate that the (loose) listeners let through TLS is refused by the
    // verdict: one that really expired (registered with its dates), and one whose registry
    // expiry passed while it is still valid for TLS
    let old = expired_client_cert(fleet.dir(), &fleet.ca, "kiosk-old");
    let old_fp = edgeguard_tests::enroll::fingerprint_of(&old.cert);
    fleet.pg.psql(&format!(
        "INSERT INTO edgeguard_devices (id, account_id, fingerprint_sha256, spiffe_id, serial, not_before, not_after)
         VALUES ('dev_old', '{ACCOUNT}', '{old_fp}', 'spiffe://{TRUST_DOMAIN}/device/dev_old', '01',
                 '2020-01-01T00:00:00Z', '2020-01-02T00:00:00Z')"
    ));
    let (b, b_id) = fleet.enroll_device("kiosk-b", ACCOUNT);
    for (name, envoy) in envoys {
        eventually(
            &format!("{name}: device b is let through"),
            Duration::from_secs(10),
            || status(&fleet.call(envoy, Some(&b), "app_cert", None)) == Some(200),
        );
        let r = fleet.call(envoy, Some(&old), "app_cert", None);
        assert_eq!(
            status(&r),
            Some(401),
            "{name}: an expired certificate: {r:?}"
        );
    }
    fleet.pg.psql(&format!(
        "UPDATE edgeguard_devices SET not_after = now() - interval '1 minute' WHERE id = '{b_id}'"
    ));
    for (name, envoy) in envoys {
        eventually(
            &format!("{name}: device b's expiry is enforced"),
            REVOCATION,
            || status(&fleet.call(envoy, Some(&b), "app_cert", None)) == Some(401),
        );
    }
    assert!(
        fleet.authz.log().contains("device certificate expired"),
        "authz says why:\n{}",
        fleet.authz.log()
    );

    // heartbeats: the device's last allowed request reaches the registry, batched through the
    // usage reports, and the enrollment service counts it as seen
    eventually(
        "device a's heartbeat is recorded",
        Duration::from_secs(10),
        || {
            fleet
                .pg
                .psql(&format!(
                    "SELECT last_seen_at IS NOT NULL FROM edgeguard_devices WHERE id = '{a_id}'"
                ))
                .trim()
                == "t"
        },
    );
    let seen = fleet.enroll.admin("GET", "/admin/v1/devices?seen=true", "");
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains(&a_id), "{}", seen.body);
    assert!(!seen.body.contains("dev_old"), "{}", seen.body);
    assert!(fleet.enroll.metric("edgeguard_enroll_devices_seen") >= 1.0);

    // revoking a device refuses it on every Envoy within 2 s; other devices carry on
    let (c, c_id) = fleet.enroll_device("kiosk-c", ACCOUNT);
    for (name, envoy) in envoys {
        eventually(
            &format!("{name}: device c is let through"),
            Duration::from_secs(10),
            || status(&fleet.call(envoy, Some(&c), "app_cert", None)) == Some(200),
        );
    }
    let r = fleet
        .enroll
        .admin("POST", &format!("/admin/v1/devices/{a_id}/revoke"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    for (name, envoy) in envoys {
        let took = eventually(
            &format!("{name}: revoked device a is refused"),
            REVOCATION,
            || status(&fleet.call(envoy, Some(&a), "app_cert", None)) == Some(401),
        );
        eprintln!(
            "{}: {name} refused the revoked device after {took:?}",
            flavour.name()
        );
        let r = fleet.call(envoy, Some(&c), "app_cert", None);
        assert_eq!(
            status(&r),
            Some(200),
            "{name}: the next good device on the same Envoy: {r:?}"
        );
    }

    // revoking the account refuses all its devices
    let (d, d_id) = fleet.enroll_device("kiosk-d", ACCOUNT);
    let (x, _) = fleet.enroll_device("gateway-x", OTHER_ACCOUNT);
    for (name, envoy) in envoys {
        eventually(
            &format!("{name}: devices d and x are let through"),
            Duration::from_secs(10),
            || {
                status(&fleet.call(envoy, Some(&d), "app_cert", None)) == Some(200)
                    && status(&fleet.call(envoy, Some(&x), "app_other", None)) == Some(200)
            },
        );
    }
    // a token handed out before the account is revoked must not enroll a device after it
    let pending = fleet.enroll.token(ACCOUNT, 600, 5)["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = fleet
        .enroll
        .admin("POST", &format!("/admin/v1/accounts/{ACCOUNT}/revoke"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("JSON");
    let revoked: Vec<&str> = v["revoked"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        revoked.contains(&c_id.as_str()) && revoked.contains(&d_id.as_str()),
        "{v}"
    );
    assert!(
        !revoked.contains(&a_id.as_str()),
        "a was revoked before: {v}"
    );
    assert_eq!(v["already_revoked"], 1, "{v}");
    assert!(v["tokens_voided"].as_u64().unwrap_or(0) >= 1, "{v}");
    let late = TestDevice::new(fleet.dir(), "kiosk-late", "kiosk-late");
    let (late_status, body) = curl_enroll(fleet.enroll.port, &pending, &late.csr, &late.cert);
    assert_eq!(
        late_status, 403,
        "an account's token after its revocation: {body}"
    );
    for (name, envoy) in envoys {
        eventually(
            &format!("{name}: the revoked account's devices are refused"),
            REVOCATION,
            || {
                status(&fleet.call(envoy, Some(&c), "app_cert", None)) == Some(401)
                    && status(&fleet.call(envoy, Some(&d), "app_cert", None)) == Some(401)
            },
        );
        let r = fleet.call(envoy, Some(&x), "app_other", None);
        assert_eq!(
            status(&r),
            Some(200),
            "{name}: another account's device: {r:?}"
        );
    }
}

/// `edgeguard authz` called directly with grpcurl, as an Envoy would: the device's certificate
/// as `attributes.source.certificate` (URL-encoded PEM, what `include_peer_certificate` sends),
/// or as XFCC's `Hash` only where `EDGEGUARD_TRUST_XFCC=true`; garbage in either is no
/// certificate (401), and the replica keeps answering.
#[test]
fn authz_reads_the_certificate_from_the_check_or_trusted_xfcc() {
    use edgeguard_tests::authz::{verdict_headers, verdict_status};
    let fleet = Fleet::start();
    let url = fleet.pg.url();
    let trusting = Authz::start(&[
        ("POSTGRES_CONNECTION_STRING", url.as_str()),
        ("EDGEGUARD_TRUST_XFCC", "true"),
    ]);
    assert!(
        trusting.wait_ready(Duration::from_secs(20)),
        "{}",
        trusting.log()
    );
    let (a, a_id) = fleet.enroll_device("kiosk-a", ACCOUNT);
    let fingerprint = edgeguard_tests::enroll::fingerprint_of(&a.cert);
    let pem = std::fs::read_to_string(&a.cert).expect("device.pem");
    let device_pem = &pem[..pem.find("-----END CERTIFICATE-----").expect("a PEM") + 25];
    let encoded: String = url_encode(device_pem);
    let with_certificate = |cert: &str| {
        json!({"attributes": {
            "source": {"certificate": cert},
            "request": {"http": {"method": "GET", "path": "/v1/app_cert", "headers": {}}}
        }})
    };
    for authz in [&fleet.authz, &trusting] {
        eventually(
            "the device reaches the store",
            Duration::from_secs(10),
            || verdict_status(&authz.check_request(&with_certificate(&encoded))) == 200,
        );
        let v = authz.check_request(&with_certificate(&encoded));
        assert!(
            verdict_headers(&v).contains(&("Portal-Device-ID".into(), a_id.clone())),
            "{v}"
        );
        for garbage in [
            "",
            "not a pem",
            "-----BEGIN CERTIFICATE-----%0A!!!%0A-----END CERTIFICATE-----",
        ] {
            assert_eq!(
                verdict_status(&authz.check_request(&with_certificate(garbage))),
                401,
                "{garbage:?}"
            );
        }
    }
    // XFCC: only the replica told to trust it reads it
    let xfcc =
        format!("By=spiffe://x;Hash={fingerprint};URI=spiffe://{TRUST_DOMAIN}/device/{a_id}");
    assert_eq!(
        verdict_status(
            &fleet
                .authz
                .check("/v1/app_cert", &[("x-forwarded-client-cert", &xfcc)])
        ),
        401
    );
    let v = trusting.check("/v1/app_cert", &[("x-forwarded-client-cert", &xfcc)]);
    assert_eq!(verdict_status(&v), 200, "{v}");
    assert!(verdict_headers(&v).contains(&("Portal-Device-ID".into(), a_id.clone())));
    for garbage in [
        "Hash=zz",
        "Hash=\"unterminated",
        "By=x",
        &format!("Hash={fingerprint},By=x"),
    ] {
        let v = trusting.check("/v1/app_cert", &[("x-forwarded-client-cert", garbage)]);
        assert_eq!(verdict_status(&v), 401, "{garbage}: {v}");
    }
    // and the next good request on the same replica
    assert_eq!(
        verdict_status(&trusting.check("/v1/app_cert", &[("x-forwarded-client-cert", &xfcc)])),
        200
    );
}

/// Percent-encodes everything but unreserved characters (as Envoy URL-encodes the PEM).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

edgeguard_tests::flavoured!(devices_are_identified_refused_and_revoked);
