//! The gatekeeper mints certificate-bound tokens (RFC 8705) end to end, with real parts: a
//! real Envoy terminating mutual TLS (certificates made by the real `openssl`) that forwards
//! the client certificate's details in `x-forwarded-client-cert` (SANITIZE_SET) to a real
//! `edgeguard gatekeeper` on `/gatekeeper/`, and checks the tokens on `/v1/shape` with
//! jwt-shape (wasm and native, `flavoured!`) verifying the gatekeeper's JWKS; the client is the
//! real `curl` presenting its certificate.

use edgeguard_tests::envoy::{cluster, Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::gatekeeper::{claims_of, shape_path, token_of, workdir, Gatekeeper};
use edgeguard_tests::http;
use edgeguard_tests::mtls::{self, CertKey, CurlResult, Pki};
use edgeguard_tests::process::Echo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://gatekeeper.test";

const POLICY: &str = r#"
rules:
  - name: devices
    table: items
    columns: [id, title]
...
"#;

/// A development-mode gatekeeper (everyone is `device`) binding tokens in `mode`.
fn start_gk(dir: &std::path::Path, mode: &str) -> Gatekeeper {
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let policy = dir.join("policy.yaml");
    let keys = dir.join("keys");
    let args = [
        "--policy",
        policy.to_str().unwrap(),
        "--key-dir",
        keys.to_str().unwrap(),
        "--shape-url",
        "https://127.0.0.1/v1/shape",
        "--issuer",
        ISSUER,
        "--dev-allow-anyone",
        "--dev-claims",
        r#"{"sub":"device"}"#,
    ];
    Gatekeeper::start(
        &args,
        &[("EDGEGUARD_GATEKEEPER_BIND_TOKENS", mode)],
        &dir.join("gatekeeper.log"),
    )
}

/// jwt-shape trusting the gatekeeper's JWKS on `/v1/shape`; everything else (the gatekeeper's
/// route) passes.
fn jwt_shape_config() -> String {
    json!({
        "providers": {"gk": {
            "issuer": ISSUER,
            "audiences": ["electric"],
            "algorithms": ["ES256"],
            "remote_jwks": {"cluster": "gatekeeper", "uri": "http://gatekeeper/.well-known/jwks.json",
                "timeout_ms": 1000, "refresh_interval_s": 60, "retry_interval_s": 1}
        }},
        "rules": [{"match": {"path": "/v1/shape"}, "provider": "gk", "bind_shape": true}],
        "unmatched": "allow"
    })
    .to_string()
}

/// Envoy terminating TLS (client certificates from the fleet CA, required or optional),
/// `/gatekeeper/` to the gatekeeper, the rest to the echo upstream, XFCC sanitized and set.
fn start_envoy(
    filters: Vec<Value>,
    echo: &Echo,
    gk: &Gatekeeper,
    pki: &Pki,
    require_client_certificate: bool,
) -> Envoy {
    let mut cfg = EnvoyConfig::new(echo.port, filters)
        .with_tls(
            &pki.server.cert,
            &pki.server.key,
            &pki.ca.cert,
            require_client_certificate,
        )
        .with_route("/gatekeeper/", "gatekeeper")
        .forwarding_client_cert();
    cfg.clusters.push(cluster("gatekeeper", gk.port));
    Envoy::start(&cfg)
}

/// Hex SHA-256 of a certificate's DER (what Envoy puts in XFCC's `Hash`).
fn hex_hash(cert: &CertKey) -> String {
    Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Device<'a> {
    envoy: &'a Envoy,
    pki: &'a Pki,
}

impl Device<'_> {
    /// `POST /gatekeeper/items` through Envoy as `cert`, with `headers`.
    fn ask(&self, cert: Option<&CertKey>, headers: &[(&str, &str)]) -> CurlResult {
        mtls::curl_method(
            self.envoy.port,
            &self.pki.ca.cert,
            cert,
            "POST",
            "/gatekeeper/items",
            headers,
        )
    }

    /// A token for `cert` (asserting the 200); its answer.
    fn token(&self, cert: &CertKey, headers: &[(&str, &str)]) -> Value {
        let r = self.ask(Some(cert), headers);
        assert_eq!(r.status(), Some(200), "{r:?}\n{}", self.envoy.log());
        serde_json::from_str(r.body()).expect("a JSON answer")
    }

    /// The shape the answer allows, through Envoy as `cert` with its token.
    fn shape(&self, cert: &CertKey, answer: &Value) -> CurlResult {
        mtls::curl(
            self.envoy.port,
            &self.pki.ca.cert,
            Some(cert),
            &shape_path(answer),
            &[("authorization", &format!("Bearer {}", token_of(answer)))],
        )
    }
}

fn message(r: &CurlResult) -> String {
    serde_json::from_str::<Value>(r.body())
        .map(|v| v["message"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn gatekeeper_binds_tokens_to_the_client_certificate(flavour: Flavour) {
    let (_t, dir) = workdir();
    let pki = Pki::make(&dir);
    let device = pki.client(&dir, "device-1");
    let sibling = pki.client(&dir, "device-2");
    let gk = start_gk(&dir, "when-presented");
    let echo = Echo::start();
    let filter = flavour.filter("jwt_shape", &jwt_shape_config(), &[]);
    let envoy = start_envoy(vec![filter], &echo, &gk, &pki, true);
    let d = Device {
        envoy: &envoy,
        pki: &pki,
    };

    // the device's token is bound to its certificate
    let answer = d.token(&device, &[]);
    let claims = claims_of(&token_of(&answer));
    assert_eq!(claims["cnf"], json!({"x5t#S256": device.x5t_s256()}));
    assert_eq!(claims["sub"], "device");

    // the device uses it: 200 (jwt-shape verified the signature with the gatekeeper's JWKS,
    // the shape and the certificate binding)
    let good = || {
        let r = d.shape(&device, &answer);
        assert_eq!(r.status(), Some(200), "{r:?}\n{}", envoy.log());
    };
    good();
    // another device of the same CA with the stolen token: 401
    let r = d.shape(&sibling, &answer);
    assert_eq!(r.status(), Some(401), "{r:?}");
    assert!(
        message(&r).contains("does not match the token's cnf"),
        "{r:?}"
    );
    good();

    // a forged x-forwarded-client-cert naming the first device is dropped by Envoy: the
    // sibling's token is bound to the sibling's own certificate ...
    let forged = format!(
        "By=spiffe://edge/gk;Hash={};Subject=\"CN=device-1\"",
        hex_hash(&device)
    );
    let theirs = d.token(&sibling, &[("x-forwarded-client-cert", &forged)]);
    let claims = claims_of(&token_of(&theirs));
    assert_eq!(claims["cnf"], json!({"x5t#S256": sibling.x5t_s256()}));
    assert_ne!(sibling.x5t_s256(), device.x5t_s256());
    // ... so it opens nothing as the first device, and works for the sibling
    let r = d.shape(&device, &theirs);
    assert_eq!(r.status(), Some(401), "{r:?}");
    let r = d.shape(&sibling, &theirs);
    assert_eq!(r.status(), Some(200), "{r:?}");
    // a malformed one is dropped as well (no 400: the gatekeeper never sees it)
    let garbage = d.token(&sibling, &[("x-forwarded-client-cert", "Hash=\"nonsense")]);
    assert_eq!(
        claims_of(&token_of(&garbage))["cnf"],
        json!({"x5t#S256": sibling.x5t_s256()})
    );
    good();
}

edgeguard_tests::flavoured!(gatekeeper_binds_tokens_to_the_client_certificate);

#[test]
fn required_binding_refuses_callers_without_a_certificate() {
    let (_t, dir) = workdir();
    let pki = Pki::make(&dir);
    let device = pki.client(&dir, "device-1");
    let gk = start_gk(&dir, "required");
    let echo = Echo::start();
    // client certificates optional on this listener
    let envoy = start_envoy(Vec::new(), &echo, &gk, &pki, false);
    let d = Device {
        envoy: &envoy,
        pki: &pki,
    };

    // TLS without a client certificate: 401, saying why
    let r = d.ask(None, &[]);
    assert_eq!(r.status(), Some(401), "{r:?}");
    assert!(
        message(&r).contains("a client certificate is required"),
        "{r:?}"
    );
    // ... even with a forged x-forwarded-client-cert (Envoy drops it)
    let forged = format!("Hash={}", hex_hash(&device));
    let r = d.ask(None, &[("x-forwarded-client-cert", &forged)]);
    assert_eq!(r.status(), Some(401), "{r:?}");
    // with one: a bound token
    let answer = d.token(&device, &[]);
    assert_eq!(
        claims_of(&token_of(&answer))["cnf"],
        json!({"x5t#S256": device.x5t_s256()})
    );

    // a malformed header (only possible around Envoy, which the README forbids): 400, never a
    // token bound to garbage
    for bad in ["Hash=\"abc", "By=x;Subject=y", "Hash=xyz", "Hash"] {
        let r = http::request(
            gk.port,
            "POST",
            "/gatekeeper/items",
            &[("x-forwarded-client-cert", bad)],
            "",
        )
        .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        let v = r.json();
        assert_eq!(v["reason"], "bad_client_certificate", "{bad}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cannot bind the token to the client certificate"),
            "{v}"
        );
    }
    assert!(
        gk.metric("edgeguard_gatekeeper_requests_refused_total") >= 6.0,
        "{}",
        gk.get("/metrics").body
    );
    let log = gk.log();
    assert!(log.contains("certificate_bound=true"), "{log}");
}
