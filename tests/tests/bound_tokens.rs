//! Certificate-bound tokens (RFC 8705) in jwt-shape, both builds, inside a real Envoy that
//! terminates mutual TLS: the CA, the server and client certificates made by the real `openssl`,
//! the client played by the real `curl` presenting its certificate. Every refusal is followed
//! by a good request on the same Envoy.

use edgeguard_tests::envoy::{Envoy, EnvoyConfig};
use edgeguard_tests::flavour::Flavour;
use edgeguard_tests::keys::{now, TestKey};
use edgeguard_tests::mtls::{self, client_cert, CertKey, CurlResult, Pki};
use edgeguard_tests::process::Echo;
use serde_json::{json, Value};

const SECRET: &str = "bound-token-test-secret-0123456789abcdef";

/// Provider `device` takes bound and unbound tokens (on `/api/...`); `strict` requires bound
/// ones (on `/strict/...`).
fn config() -> String {
    let provider = |require: bool| {
        json!({
            "issuer": "fleet",
            "hmac": {"secret": SECRET},
            "require_bound_tokens": require,
            "claim_to_headers": [{"header_name": "x-device", "claim_name": "sub"}]
        })
    };
    json!({
        "providers": {"device": provider(false), "strict": provider(true)},
        "rules": [
            {"match": {"prefix": "/strict/"}, "provider": "strict"},
            {"match": {"prefix": "/api/"}, "provider": "device"}
        ]
    })
    .to_string()
}

fn token(extra: Value) -> String {
    let n = now();
    let mut claims = json!({"iss": "fleet", "sub": "device-1", "iat": n, "exp": n + 600});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    TestKey::hmac("fleet", SECRET.as_bytes()).sign("HS256", &claims)
}

fn bound_to(cert: &CertKey) -> String {
    token(json!({"cnf": {"x5t#S256": cert.x5t_s256()}}))
}

fn start(flavour: Flavour, echo: &Echo, pki: &Pki, require_client_certificate: bool) -> Envoy {
    let filter = flavour.filter("jwt_shape", &config(), &[]);
    Envoy::start(&EnvoyConfig::new(echo.port, vec![filter]).with_tls(
        &pki.server.cert,
        &pki.server.key,
        &pki.ca.cert,
        require_client_certificate,
    ))
}

struct Client<'a> {
    envoy: &'a Envoy,
    pki: &'a Pki,
}

impl Client<'_> {
    fn call(&self, cert: Option<&CertKey>, path: &str, token: &str) -> CurlResult {
        mtls::curl(
            self.envoy.port,
            &self.pki.ca.cert,
            cert,
            path,
            &[("authorization", &format!("Bearer {token}"))],
        )
    }

    /// `status` with a message containing `part` (for refusals: the JSON body's message).
    fn expect(&self, r: &CurlResult, status: u16, part: &str) {
        assert_eq!(r.status(), Some(status), "{r:?}\n{}", self.envoy.log());
        if status >= 400 {
            let v: Value = serde_json::from_str(r.body()).expect("a JSON error body");
            let message = v["message"].as_str().unwrap_or_default();
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        } else {
            assert!(r.body().contains(part), "{} lacks {part:?}", r.body());
        }
    }

    /// The TLS handshake fails: curl gets no HTTP answer at all.
    fn expect_tls_refusal(&self, r: &CurlResult) {
        assert!(
            matches!(r, CurlResult::Failed { .. }),
            "expected a TLS refusal, got {r:?}"
        );
    }
}

fn bound_tokens_on_an_mtls_listener(flavour: Flavour) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::make(dir.path());
    let device = pki.client(dir.path(), "device-1");
    let sibling = pki.client(dir.path(), "device-2");
    let stranger = client_cert(dir.path(), &pki.other_ca, "stranger", "device-1", None);
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &pki, true);
    let c = Client {
        envoy: &envoy,
        pki: &pki,
    };
    let bound = bound_to(&device);
    let good = || {
        let r = c.call(Some(&device), "/api/x", &bound);
        c.expect(&r, 200, "device-1");
    };

    // the holder of the certificate: 200, the claim stamped for upstream (twice: the
    // second from the verified-token cache, checked against the connection again)
    good();
    good();
    let r = c.call(Some(&device), "/strict/x", &bound);
    c.expect(&r, 200, "device-1");

    // a certificate from another CA: the handshake fails, the filter never sees it
    c.expect_tls_refusal(&c.call(Some(&stranger), "/api/x", &bound));
    good();
    // no certificate: require_client_certificate refuses the handshake
    c.expect_tls_refusal(&c.call(None, "/api/x", &bound));
    good();
    // another device of the same fleet with the first device's token: 401
    let r = c.call(Some(&sibling), "/api/x", &bound);
    c.expect(&r, 401, "does not match the token's cnf");
    good();
    // ... again (the token is cached now): still 401
    let r = c.call(Some(&sibling), "/strict/x", &bound);
    c.expect(&r, 401, "does not match the token's cnf");
    good();

    // an unbound token: a bearer token where binding is optional, 401 where it is required
    let plain = token(json!({}));
    let r = c.call(Some(&sibling), "/api/x", &plain);
    c.expect(&r, 200, "device-1");
    let r = c.call(Some(&device), "/strict/x", &plain);
    c.expect(&r, 401, "certificate-bound token");
    good();

    // malformed cnf: 401 on either provider
    for cnf in [
        json!("not-an-object"),
        json!({"x5t#S256": "tooshort"}),
        json!({"x5t#S256": format!("{}=", device.x5t_s256())}),
        json!({"jkt": device.x5t_s256()}),
    ] {
        let t = token(json!({ "cnf": cnf }));
        for path in ["/api/x", "/strict/x"] {
            let r = c.call(Some(&device), path, &t);
            c.expect(&r, 401, "cnf");
        }
        good();
    }
    assert!(envoy.metric("edgeguard_jwt_shape_denied_certificate_mismatch") >= 2.0);
    assert!(envoy.metric("edgeguard_jwt_shape_denied_unbound_token") >= 1.0);
}

fn bound_tokens_when_the_client_certificate_is_optional(flavour: Flavour) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::make(dir.path());
    let device = pki.client(dir.path(), "device-1");
    let stranger = client_cert(dir.path(), &pki.other_ca, "stranger", "device-1", None);
    let echo = Echo::start();
    let envoy = start(flavour, &echo, &pki, false);
    let c = Client {
        envoy: &envoy,
        pki: &pki,
    };
    let bound = bound_to(&device);
    let good = || {
        let r = c.call(Some(&device), "/api/x", &bound);
        c.expect(&r, 200, "device-1");
    };
    good();
    // TLS without a client certificate: a bound token is refused by the filter
    let r = c.call(None, "/api/x", &bound);
    c.expect(&r, 401, "no client certificate was presented");
    good();
    // ... an unbound one passes where binding is optional, not where it is required
    let plain = token(json!({}));
    let r = c.call(None, "/api/x", &plain);
    c.expect(&r, 200, "device-1");
    let r = c.call(None, "/strict/x", &plain);
    c.expect(&r, 401, "certificate-bound token");
    good();
    // a certificate that does not chain to the CA still fails the handshake
    c.expect_tls_refusal(&c.call(Some(&stranger), "/api/x", &bound));
    good();
    assert!(envoy.metric("edgeguard_jwt_shape_denied_no_client_certificate") >= 1.0);
}

edgeguard_tests::flavoured!(
    bound_tokens_on_an_mtls_listener,
    bound_tokens_when_the_client_certificate_is_optional,
);
