//! JSON Web Tokens in JWS compact form: parsing, and the claim checks (exp, nbf, iat, iss,
//! aud, required claims). Signatures are checked by [`crate::jwk::KeySet`].

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// JWS algorithms (RFC 7518) edgeguard verifies. `none` is deliberately absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    /// ECDSA on P-521 with SHA-512.
    ES512,
    /// Ed25519 under the polymorphic name of RFC 8037.
    EdDSA,
    /// Ed25519 under its fully-specified name (RFC 9864; jose v6 emits it).
    Ed25519,
}

/// The family of key an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    P256,
    P384,
    P521,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 14] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::EdDSA,
        Algorithm::Ed25519,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    /// Whether a key pinned to `self` (a JWK's `alg`) may verify a token signed with `token`:
    /// the same algorithm, or Ed25519 under either of its names (RFC 9864 keeps `EdDSA` for
    /// keys published before the fully-specified name existed).
    pub fn admits(self, token: Algorithm) -> bool {
        self == token
            || matches!(
                (self, token),
                (Algorithm::EdDSA, Algorithm::Ed25519) | (Algorithm::Ed25519, Algorithm::EdDSA)
            )
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::P256,
            Algorithm::ES384 => KeyFamily::P384,
            Algorithm::ES512 => KeyFamily::P521,
            Algorithm::EdDSA | Algorithm::Ed25519 => KeyFamily::Ed25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a token was refused. Every variant is a 401 `invalid_token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    TooLarge {
        max: usize,
    },
    Malformed(&'static str),
    /// `alg` is `none`, unknown, or not allowed for this provider.
    Algorithm(String),
    /// The token names a `kid` the key set does not hold.
    UnknownKid,
    /// No key in the set can verify this algorithm.
    NoMatchingKey,
    BadSignature,
    /// The key set has never been loaded (remote JWKS unreachable).
    KeysUnavailable,
    Expired,
    NotYetValid,
    IssuedInFuture,
    MissingClaim(String),
    ClaimType {
        claim: String,
        expected: &'static str,
    },
    Issuer,
    Audience,
    /// RFC 8705 3: the token is certificate-bound (`cnf.x5t#S256`) and the connection
    /// presented no client certificate.
    NoClientCertificate,
    /// RFC 8705 3: the client certificate's SHA-256 thumbprint is not the token's
    /// `cnf.x5t#S256`.
    CertificateMismatch,
    /// The provider requires certificate-bound tokens and this one has no `cnf.x5t#S256`.
    Unbound,
    /// `cnf` names a confirmation method this filter cannot check (only `x5t#S256`).
    UnsupportedConfirmation(String),
}

impl TokenError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::NoMatchingKey => "no_matching_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::ClaimType { .. } => "claim_type",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::NoClientCertificate => "no_client_certificate",
            TokenError::CertificateMismatch => "certificate_mismatch",
            TokenError::Unbound => "unbound_token",
            TokenError::UnsupportedConfirmation(_) => "unsupported_cnf",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::TooLarge { max } => write!(f, "token is larger than {max} bytes"),
            TokenError::Malformed(what) => write!(f, "malformed token: {what}"),
            TokenError::Algorithm(alg) => write!(f, "algorithm '{alg}' is not accepted"),
            TokenError::UnknownKid => f.write_str("token signed with an unknown key id"),
            TokenError::NoMatchingKey => f.write_str("no key can verify this token's algorithm"),
            TokenError::BadSignature => f.write_str("token signature does not verify"),
            TokenError::KeysUnavailable => f.write_str("signing keys are not available"),
            TokenError::Expired => f.write_str("token has expired"),
            TokenError::NotYetValid => f.write_str("token is not valid yet"),
            TokenError::IssuedInFuture => f.write_str("token is issued in the future"),
            TokenError::MissingClaim(c) => write!(f, "token has no '{c}' claim"),
            TokenError::ClaimType { claim, expected } => {
                write!(f, "claim '{claim}' must be {expected}")
            }
            TokenError::Issuer => f.write_str("token issuer is not accepted"),
            TokenError::Audience => f.write_str("token audience is not accepted"),
            TokenError::NoClientCertificate => f.write_str(
                "token is bound to a client certificate (cnf x5t#S256) and no client certificate was presented",
            ),
            TokenError::CertificateMismatch => f.write_str(
                "the client certificate does not match the token's cnf x5t#S256 thumbprint",
            ),
            TokenError::Unbound => f.write_str(
                "a certificate-bound token (cnf x5t#S256) is required",
            ),
            TokenError::UnsupportedConfirmation(m) => write!(
                f,
                "token's cnf uses confirmation method '{m}', which cannot be checked here (only x5t#S256)"
            ),
        }
    }
}

impl std::error::Error for TokenError {}

/// A parsed but not yet verified JWS.
#[derive(Clone, Debug)]
pub struct Jws<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub payload_b64: &'a str,
    pub signature: Vec<u8>,
}

/// Parses a compact JWS. Refuses tokens over `max_len` bytes before any decoding.
pub fn parse(token: &str, max_len: usize) -> Result<Jws<'_>, TokenError> {
    if token.len() > max_len {
        return Err(TokenError::TooLarge { max: max_len });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three '.'-separated parts"));
    };
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(TokenError::Malformed("expected three '.'-separated parts"))?;
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|_| TokenError::Malformed("header is not JSON"))?;
    let header = header
        .as_object()
        .ok_or(TokenError::Malformed("header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => {
            Algorithm::from_name(a).ok_or_else(|| TokenError::Algorithm(printable(a)))?
        }
        _ => return Err(TokenError::Malformed("header has no 'alg'")),
    };
    if header.contains_key("crit") {
        // RFC 7515 4.1.11: we understand no extensions, so a critical one must be refused.
        return Err(TokenError::Malformed(
            "header has unsupported 'crit' extensions",
        ));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed("header 'kid' is not a string")),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    if payload_b64.is_empty() {
        return Err(TokenError::Malformed("empty payload"));
    }
    Ok(Jws {
        alg,
        kid,
        signing_input,
        payload_b64,
        signature,
    })
}

fn printable(s: &str) -> String {
    s.chars().take(32).filter(|c| !c.is_control()).collect()
}

/// Decodes the payload of a verified JWS into a JSON object.
pub fn decode_claims(jws: &Jws<'_>) -> Result<Value, TokenError> {
    let payload = URL_SAFE_NO_PAD
        .decode(jws.payload_b64)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let claims: Value = serde_json::from_slice(&payload)
        .map_err(|_| TokenError::Malformed("payload is not JSON"))?;
    if !claims.is_object() {
        return Err(TokenError::Malformed("payload is not a JSON object"));
    }
    Ok(claims)
}

/// What the claims must satisfy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// Exact `iss` required when set.
    pub issuer: Option<String>,
    /// One of these must appear in `aud` (string or array) when non-empty.
    pub audiences: Vec<String>,
    pub clock_skew_seconds: u64,
    pub require_expiration: bool,
    /// Claims that must be present and not null.
    pub required_claims: Vec<String>,
}

/// Validity window of a token that passed [`validate_claims`], in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validity {
    /// Accept until this instant (exp + skew); `None` for a token without `exp`.
    pub not_after: Option<f64>,
}

fn numeric_date(claims: &Value, name: &str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(TokenError::ClaimType {
                claim: name.to_string(),
                expected: "a NumericDate",
            }),
        },
        Some(_) => Err(TokenError::ClaimType {
            claim: name.to_string(),
            expected: "a NumericDate (number of seconds)",
        }),
    }
}

/// Checks time, issuer, audience and required claims at `now` (Unix seconds).
pub fn validate_claims(
    claims: &Value,
    rules: &ClaimRules,
    now: f64,
) -> Result<Validity, TokenError> {
    let skew = rules.clock_skew_seconds as f64;
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    match exp {
        Some(exp) if now > exp + skew => return Err(TokenError::Expired),
        None if rules.require_expiration => return Err(TokenError::MissingClaim("exp".into())),
        _ => {}
    }
    if matches!(nbf, Some(nbf) if now + skew < nbf) {
        return Err(TokenError::NotYetValid);
    }
    if matches!(iat, Some(iat) if now + skew < iat) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(issuer) = &rules.issuer {
        match claims.get("iss") {
            None | Some(Value::Null) => return Err(TokenError::MissingClaim("iss".into())),
            Some(Value::String(iss)) if iss == issuer => {}
            Some(Value::String(_)) => return Err(TokenError::Issuer),
            Some(_) => {
                return Err(TokenError::ClaimType {
                    claim: "iss".into(),
                    expected: "a string",
                })
            }
        }
    }
    if !rules.audiences.is_empty() {
        let accepted = |a: &str| rules.audiences.iter().any(|x| x == a);
        match claims.get("aud") {
            None | Some(Value::Null) => return Err(TokenError::MissingClaim("aud".into())),
            Some(Value::String(a)) => {
                if !accepted(a) {
                    return Err(TokenError::Audience);
                }
            }
            Some(Value::Array(items)) => {
                let mut any = false;
                for item in items {
                    match item {
                        Value::String(a) => any |= accepted(a),
                        _ => {
                            return Err(TokenError::ClaimType {
                                claim: "aud".into(),
                                expected: "a string or an array of strings",
                            })
                        }
                    }
                }
                if !any {
                    return Err(TokenError::Audience);
                }
            }
            Some(_) => {
                return Err(TokenError::ClaimType {
                    claim: "aud".into(),
                    expected: "a string or an array of strings",
                })
            }
        }
    }
    for name in &rules.required_claims {
        if matches!(claims.get(name), None | Some(Value::Null)) {
            return Err(TokenError::MissingClaim(name.clone()));
        }
    }
    Ok(Validity {
        not_after: exp.map(|e| e + skew),
    })
}

/// Looks up a claim by a dotted path (`a.b.c`), as Envoy's `claim_to_headers` does.
pub fn claim_at<'v>(claims: &'v Value, path: &str) -> Option<&'v Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, key| v.get(key))
}

/// Renders a claim as a header value: strings as they are, numbers and booleans as JSON,
/// arrays of those joined with `,`. Objects and values with control characters give `None`.
pub fn claim_header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    };
    if s.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn b64(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn tok(header: Value, payload: Value) -> String {
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes()),
            b64(b"sig")
        )
    }

    #[test]
    fn parses_header_and_keeps_signing_input() {
        let t = tok(
            json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
            json!({"sub": "a"}),
        );
        let jws = parse(&t, 8192).unwrap();
        assert_eq!(jws.alg, Algorithm::RS256);
        assert_eq!(jws.kid.as_deref(), Some("k1"));
        assert_eq!(jws.signature, b"sig");
        assert_eq!(jws.signing_input, t.rsplit_once('.').unwrap().0);
        assert_eq!(decode_claims(&jws).unwrap(), json!({"sub": "a"}));
    }

    #[test]
    fn refuses_bad_tokens() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "malformed"),
            ("abc".into(), "malformed"),
            ("a.b".into(), "malformed"),
            ("a.b.c.d".into(), "malformed"),
            ("!!!.e30.c2ln".into(), "malformed"),
            (format!("{}.e30.c2ln", b64(b"not json")), "malformed"),
            (format!("{}.e30.c2ln", b64(b"[1]")), "malformed"),
            (tok(json!({"typ": "JWT"}), json!({})), "malformed"),
            (tok(json!({"alg": "none"}), json!({})), "algorithm"),
            (tok(json!({"alg": "HS1024"}), json!({})), "algorithm"),
            (
                tok(json!({"alg": "RS256", "kid": 7}), json!({})),
                "malformed",
            ),
            (
                tok(json!({"alg": "RS256", "crit": ["exp"]}), json!({})),
                "malformed",
            ),
            (format!("{}..c2ln", b64(br#"{"alg":"HS256"}"#)), "malformed"),
            (
                format!("{}.e30.!!", b64(br#"{"alg":"HS256"}"#)),
                "malformed",
            ),
        ];
        for (t, reason) in cases {
            assert_eq!(
                parse(&t, 8192).map(|_| ()).unwrap_err().reason(),
                reason,
                "{t}"
            );
        }
        let big = "a".repeat(65536);
        assert_eq!(
            parse(&big, 8192).unwrap_err(),
            TokenError::TooLarge { max: 8192 }
        );
    }

    #[test]
    fn payload_must_be_an_object() {
        let t = format!("{}.{}.c2ln", b64(br#"{"alg":"HS256"}"#), b64(b"[1,2]"));
        let jws = parse(&t, 8192).unwrap();
        assert_eq!(decode_claims(&jws).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn time_claims() {
        let rules = ClaimRules {
            clock_skew_seconds: 60,
            require_expiration: true,
            ..Default::default()
        };
        let now = 1_000_000.0;
        assert!(validate_claims(&json!({"exp": now + 10.0}), &rules, now).is_ok());
        assert!(validate_claims(&json!({"exp": now - 30.0}), &rules, now).is_ok());
        assert_eq!(
            validate_claims(&json!({"exp": now - 61.0}), &rules, now),
            Err(TokenError::Expired)
        );
        assert_eq!(
            validate_claims(&json!({}), &rules, now),
            Err(TokenError::MissingClaim("exp".into()))
        );
        assert_eq!(
            validate_claims(&json!({"exp": now + 100.0, "nbf": now + 61.0}), &rules, now),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            validate_claims(&json!({"exp": now + 100.0, "iat": now + 61.0}), &rules, now),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(
            validate_claims(&json!({"exp": "tomorrow"}), &rules, now)
                .unwrap_err()
                .reason(),
            "claim_type"
        );
        assert_eq!(
            validate_claims(&json!({"exp": now + 9.0, "nbf": [1]}), &rules, now)
                .unwrap_err()
                .reason(),
            "claim_type"
        );
        let v = validate_claims(&json!({"exp": now + 10.5}), &rules, now).unwrap();
        assert_eq!(v.not_after, Some(now + 70.5));
        let lax = ClaimRules::default();
        assert_eq!(
            validate_claims(&json!({}), &lax, now).unwrap().not_after,
            None
        );
    }

    #[test]
    fn issuer_and_audience() {
        let rules = ClaimRules {
            issuer: Some("https://idp".into()),
            audiences: vec!["electric".into(), "api".into()],
            required_claims: vec!["sub".into()],
            ..Default::default()
        };
        let ok = json!({"iss": "https://idp", "aud": ["x", "api"], "sub": "u"});
        assert!(validate_claims(&ok, &rules, 0.0).is_ok());
        let ok = json!({"iss": "https://idp", "aud": "electric", "sub": "u"});
        assert!(validate_claims(&ok, &rules, 0.0).is_ok());
        let check = |v: Value| validate_claims(&v, &rules, 0.0).unwrap_err().reason();
        assert_eq!(check(json!({"aud": "api", "sub": "u"})), "missing_claim");
        assert_eq!(
            check(json!({"iss": "https://evil", "aud": "api", "sub": "u"})),
            "issuer"
        );
        assert_eq!(
            check(json!({"iss": 1, "aud": "api", "sub": "u"})),
            "claim_type"
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": "x", "sub": "u"})),
            "audience"
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": [], "sub": "u"})),
            "audience"
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": {"a": 1}, "sub": "u"})),
            "claim_type"
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": ["api", 3], "sub": "u"})),
            "claim_type"
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": "api"})),
            "missing_claim"
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": "api", "sub": null})),
            "missing_claim"
        );
    }

    #[test]
    fn claims_to_header_values() {
        let c = json!({"sub": "u1", "n": 5, "ok": true, "groups": ["a", "b"], "org": {"id": "o1"}, "a.b": "flat", "bad": "x\ny"});
        assert_eq!(
            claim_header_value(claim_at(&c, "sub").unwrap()).as_deref(),
            Some("u1")
        );
        assert_eq!(
            claim_header_value(claim_at(&c, "n").unwrap()).as_deref(),
            Some("5")
        );
        assert_eq!(
            claim_header_value(claim_at(&c, "ok").unwrap()).as_deref(),
            Some("true")
        );
        assert_eq!(
            claim_header_value(claim_at(&c, "groups").unwrap()).as_deref(),
            Some("a,b")
        );
        assert_eq!(
            claim_header_value(claim_at(&c, "org.id").unwrap()).as_deref(),
            Some("o1")
        );
        assert_eq!(
            claim_header_value(claim_at(&c, "a.b").unwrap()).as_deref(),
            Some("flat")
        );
        assert_eq!(claim_header_value(claim_at(&c, "org").unwrap()), None);
        assert_eq!(claim_header_value(claim_at(&c, "bad").unwrap()), None);
        assert!(claim_at(&c, "missing.x").is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "[A-Za-z0-9_\\-.=+/]{0,200}") {
            let _ = parse(&s, 8192).map(|j| decode_claims(&j));
        }
    }
}
