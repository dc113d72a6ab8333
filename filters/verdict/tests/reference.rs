//! Differential tests of edgeguard's JWS/JWK verification and claim checks against an
//! independent implementation, the `jsonwebtoken` crate (RustCrypto backend).
//!
//! Tokens are minted by `jsonwebtoken`, the public keys are written by hand as JWK JSON, and
//! the same token and key go through both sides:
//!
//! - ours: `KeySet::from_jwks` + `token::parse` + `KeySet::verify` + `token::decode_claims`
//!   (+ `token::validate_claims` for the claim table);
//! - theirs: `jsonwebtoken::decode` with `DecodingKey::from_jwk` (or the raw components) and a
//!   `Validation` that allows the key's whole algorithm family.
//!
//! Every verdict must be the same, except for the differences listed (and asserted) in
//! `documented_differences_*` and in the claim table, which are intentional: edgeguard is
//! stricter than the reference where RFC 7515/7518/7519 allow it to be.
//!
//! Our RSA is our own Montgomery code (`src/rsa.rs`), so the RSA keys cover a 2048-bit key
//! with e = 3 (the generic exponentiation path), a 2049-bit key (the PSS encoded message is one
//! byte shorter than the modulus), and 3072- and 4096-bit keys.

// The crate denies these lints for its own code; clippy's test exemption (clippy.toml) only
// covers `#[test]` functions, not the helpers of an integration test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgeguard_verdict::jwk::{Backend, JwksError, KeySet};
use edgeguard_verdict::token::{self, Algorithm, ClaimRules, TokenError};
use jsonwebtoken as jwt;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

/// Our size limit in these tests (a 4096-bit signature alone is 683 characters).
const MAX_LEN: usize = 64 * 1024;

// ------------------------------------------------------------------------------ helpers

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn jwt_alg(alg: Algorithm) -> jwt::Algorithm {
    match alg {
        Algorithm::HS256 => jwt::Algorithm::HS256,
        Algorithm::HS384 => jwt::Algorithm::HS384,
        Algorithm::HS512 => jwt::Algorithm::HS512,
        Algorithm::RS256 => jwt::Algorithm::RS256,
        Algorithm::RS384 => jwt::Algorithm::RS384,
        Algorithm::RS512 => jwt::Algorithm::RS512,
        Algorithm::PS256 => jwt::Algorithm::PS256,
        Algorithm::PS384 => jwt::Algorithm::PS384,
        Algorithm::PS512 => jwt::Algorithm::PS512,
        Algorithm::ES256 => jwt::Algorithm::ES256,
        Algorithm::ES384 => jwt::Algorithm::ES384,
        // the fully-specified name signs as EdDSA; only the header's `alg` differs
        Algorithm::EdDSA | Algorithm::Ed25519 => jwt::Algorithm::EdDSA,
        Algorithm::ES512 => panic!("jsonwebtoken has no ES512: see es512_agrees_with_openssl"),
    }
}

/// The algorithms jsonwebtoken implements under the names we read (it has no ES512 and knows
/// Ed25519 only as `EdDSA`); ES512 and the `Ed25519` name are tested against OpenSSL and by
/// re-signing below.
fn reference_algs() -> impl Iterator<Item = Algorithm> {
    Algorithm::ALL
        .into_iter()
        .filter(|a| !matches!(a, Algorithm::ES512 | Algorithm::Ed25519))
}

/// The three base64url parts of a compact token.
fn split(token: &str) -> (String, String, String) {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("not a compact JWS: {token}");
    };
    (h.to_string(), p.to_string(), s.to_string())
}

fn join(h: &str, p: &str, s: &str) -> String {
    format!("{h}.{p}.{s}")
}

fn flip_bit(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 0x80 >> (bit % 8);
    out
}

/// The token with one bit of the decoded header / payload / signature flipped.
fn flip_header(token: &str, bit: usize) -> String {
    let (h, p, s) = split(token);
    join(&b64(&flip_bit(&unb64(&h), bit)), &p, &s)
}

fn flip_payload(token: &str, bit: usize) -> String {
    let (h, p, s) = split(token);
    join(&h, &b64(&flip_bit(&unb64(&p), bit)), &s)
}

fn flip_signature(token: &str, bit: usize) -> String {
    let (h, p, s) = split(token);
    join(&h, &p, &b64(&flip_bit(&unb64(&s), bit)))
}

fn with_signature(token: &str, sig: &[u8]) -> String {
    let (h, p, _) = split(token);
    join(&h, &p, &b64(sig))
}

/// Our whole verdict: parse, verify with any algorithm, decode the claims. Every signature
/// check runs through every verifier compiled in (the portable one the wasm build uses and,
/// natively, `ring`): they must agree on every input, or the test fails here.
fn ours(set: &KeySet, token: &str) -> Result<Value, TokenError> {
    let jws = token::parse(token, MAX_LEN)?;
    verify_all(set, &jws, &[])?;
    token::decode_claims(&jws)
}

/// `set.verify_using` with each backend; asserts they agree and returns the answer.
fn verify_all(set: &KeySet, jws: &token::Jws<'_>, allowed: &[Algorithm]) -> Result<(), TokenError> {
    let answers: Vec<(Backend, Result<(), TokenError>)> = Backend::ALL
        .iter()
        .map(|b| (*b, set.verify_using(jws, allowed, *b)))
        .collect();
    for (b, a) in &answers[1..] {
        assert_eq!(
            a, &answers[0].1,
            "verifiers disagree on {}: {:?} says {a:?}, {:?} says {:?}",
            jws.signing_input, b, answers[0].0, answers[0].1
        );
    }
    answers[0].1.clone()
}

/// Our key set from a JWKS document; every key must load.
fn our_set(jwks: &Value) -> KeySet {
    let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty(), "skipped keys: {skipped:?}");
    set
}

/// jsonwebtoken's key from a JWK document.
fn their_key(jwk: &Value) -> jwt::DecodingKey {
    let jwk: jwt::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    jwt::DecodingKey::from_jwk(&jwk).unwrap()
}

/// A validation that checks the signature only: every algorithm of the key's family, no
/// time, audience or required claims.
fn signature_only(family: jwt::AlgorithmFamily) -> jwt::Validation {
    let mut v = jwt::Validation::new_for_family(family);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v.leeway = 0;
    v
}

/// jsonwebtoken's whole verdict with this key.
fn theirs(key: &jwt::DecodingKey, token: &str) -> Result<Value, jwt::errors::Error> {
    jwt::decode::<Value>(token, key, &signature_only(key.family())).map(|d| d.claims)
}

/// Asserts that both sides reach the same verdict (and the same claims when they accept);
/// returns the claims when they accept.
fn agree(set: &KeySet, key: &jwt::DecodingKey, token: &str, what: &str) -> Option<Value> {
    let a = ours(set, token);
    let b = theirs(key, token);
    match (a, b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(x, y, "{what}: decoded claims differ");
            Some(x)
        }
        (Err(_), Err(_)) => None,
        (a, b) => panic!(
            "{what}: verdicts differ\n  ours:         {a:?}\n  jsonwebtoken: {b:?}\n  token: {token}"
        ),
    }
}

/// Asserts that both sides refuse the token.
fn both_reject(set: &KeySet, key: &jwt::DecodingKey, token: &str, what: &str) {
    let a = ours(set, token);
    let b = theirs(key, token);
    assert!(
        a.is_err() && b.is_err(),
        "{what}: must be rejected by both\n  ours:         {a:?}\n  jsonwebtoken: {b:?}\n  token: {token}"
    );
}

fn header(alg: Algorithm, kid: Option<&str>) -> jwt::Header {
    let mut h = jwt::Header::new(jwt_alg(alg));
    h.kid = kid.map(str::to_string);
    h
}

fn mint(alg: Algorithm, fixture: &Fixture, kid: Option<&str>, claims: &Value) -> String {
    jwt::encode(&header(alg, kid), claims, &fixture.encoding).unwrap()
}

/// Signs an arbitrary header and payload (bytes as they are) with jsonwebtoken.
fn mint_raw(alg: Algorithm, fixture: &Fixture, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = jwt::crypto::sign(input.as_bytes(), &fixture.encoding, jwt_alg(alg)).unwrap();
    format!("{input}.{sig}")
}

fn sample_claims() -> Value {
    json!({
        "sub": "user-42",
        "iss": "https://idp.example",
        "aud": ["electric", "api"],
        "iat": 1_700_000_000u64,
        "exp": 4_000_000_000u64,
        "scope": "read write",
        "n": -17,
        "ratio": 0.25,
        "admin": false,
        "nothing": null,
        "tables": ["public.items", "public.users"],
        "org": {"id": "o1", "roles": ["a", "b"]},
        "unicode": "h\u{e9}llo \u{1f600} \"quoted\" \\ /",
    })
}

// ------------------------------------------------------------------------------ keys

/// A signing key: what jsonwebtoken signs with, the public JWK both sides verify with, and
/// jsonwebtoken's key built from the raw components (not from the JWK).
struct Fixture {
    name: String,
    encoding: jwt::EncodingKey,
    /// Public JWK without `kid`, `alg` or `use`.
    jwk: Value,
    components: jwt::DecodingKey,
    /// The RSA public key (key confusion, signatures not below the modulus).
    rsa_public: Option<rsa::RsaPublicKey>,
}

impl Fixture {
    /// The public JWK with these optional members added.
    fn jwk_with(&self, kid: Option<&str>, alg: Option<Algorithm>) -> Value {
        let mut jwk = self.jwk.clone();
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg.name());
            jwk["use"] = json!("sig");
        }
        jwk
    }
}

/// (name, bits, public exponent, seed). Each key is generated once, on first use.
const RSA_SPECS: [(&str, usize, u64, u64); 6] = [
    ("rsa2048", 2048, 65537, 1),
    ("rsa2048-b", 2048, 65537, 2),
    ("rsa2048-e3", 2048, 3, 3),
    ("rsa2049", 2049, 65537, 4),
    ("rsa3072", 3072, 65537, 5),
    ("rsa4096", 4096, 65537, 6),
];
const RSA2048: usize = 0;
const RSA2048_B: usize = 1;
const RSA3072: usize = 4;

fn rsa_fixture(i: usize) -> &'static Fixture {
    static KEYS: [OnceLock<Fixture>; RSA_SPECS.len()] =
        [const { OnceLock::new() }; RSA_SPECS.len()];
    KEYS[i].get_or_init(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let (name, bits, e, seed) = RSA_SPECS[i];
        let mut rng = StdRng::seed_from_u64(seed);
        let private =
            rsa::RsaPrivateKey::new_with_exp(&mut rng, bits, &rsa::BigUint::from(e)).unwrap();
        let public = private.to_public_key();
        assert_eq!(public.n().bits(), bits);
        let (n, e) = (public.n().to_bytes_be(), public.e().to_bytes_be());
        Fixture {
            name: name.to_string(),
            encoding: jwt::EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
            jwk: json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)}),
            components: jwt::DecodingKey::from_rsa_components(&b64(&n), &b64(&e)).unwrap(),
            rsa_public: Some(public),
        }
    })
}

/// Generates every RSA key, in parallel (key generation dominates the run time).
fn all_rsa_fixtures() -> Vec<&'static Fixture> {
    std::thread::scope(|scope| {
        for i in 0..RSA_SPECS.len() {
            scope.spawn(move || rsa_fixture(i));
        }
    });
    (0..RSA_SPECS.len()).map(rsa_fixture).collect()
}

fn ec_fixture(name: String, der: Vec<u8>, x: &[u8], y: &[u8], crv: &str) -> Fixture {
    Fixture {
        name,
        encoding: jwt::EncodingKey::from_ec_der(&der),
        jwk: json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)}),
        components: jwt::DecodingKey::from_ec_components(&b64(x), &b64(y)).unwrap(),
        rsa_public: None,
    }
}

fn p256_fixture(i: usize) -> &'static Fixture {
    static KEYS: [OnceLock<Fixture>; 2] = [const { OnceLock::new() }; 2];
    KEYS[i].get_or_init(|| {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::ecdsa::SigningKey::random(&mut StdRng::seed_from_u64(100 + i as u64));
        let der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let point = key.verifying_key().to_encoded_point(false);
        ec_fixture(
            format!("p256-{i}"),
            der,
            point.x().unwrap(),
            point.y().unwrap(),
            "P-256",
        )
    })
}

fn p384_fixture(i: usize) -> &'static Fixture {
    static KEYS: [OnceLock<Fixture>; 2] = [const { OnceLock::new() }; 2];
    KEYS[i].get_or_init(|| {
        use p384::pkcs8::EncodePrivateKey;
        let key = p384::ecdsa::SigningKey::random(&mut StdRng::seed_from_u64(200 + i as u64));
        let der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let point = key.verifying_key().to_encoded_point(false);
        ec_fixture(
            format!("p384-{i}"),
            der,
            point.x().unwrap(),
            point.y().unwrap(),
            "P-384",
        )
    })
}

fn ed25519_fixture(i: usize) -> &'static Fixture {
    static KEYS: [OnceLock<Fixture>; 2] = [const { OnceLock::new() }; 2];
    KEYS[i].get_or_init(|| {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let mut seed = [0u8; 32];
        StdRng::seed_from_u64(300 + i as u64).fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let x = key.verifying_key().to_bytes();
        Fixture {
            name: format!("ed25519-{i}"),
            encoding: jwt::EncodingKey::from_ed_der(&der),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&x)}),
            components: jwt::DecodingKey::from_ed_components(&b64(&x)).unwrap(),
            rsa_public: None,
        }
    })
}

fn hmac_fixture(i: usize) -> &'static Fixture {
    static KEYS: [OnceLock<Fixture>; 2] = [const { OnceLock::new() }; 2];
    KEYS[i].get_or_init(|| {
        let mut secret = [0u8; 64];
        StdRng::seed_from_u64(400 + i as u64).fill_bytes(&mut secret);
        Fixture {
            name: format!("hmac-{i}"),
            encoding: jwt::EncodingKey::from_secret(&secret),
            jwk: json!({"kty": "oct", "k": b64(&secret)}),
            components: jwt::DecodingKey::from_secret(&secret),
            rsa_public: None,
        }
    })
}

/// The keys each algorithm is tested with (the first is the "main" one).
fn fixtures_for(alg: Algorithm) -> Vec<&'static Fixture> {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => vec![hmac_fixture(0)],
        Algorithm::ES256 => vec![p256_fixture(0)],
        Algorithm::ES384 => vec![p384_fixture(0)],
        Algorithm::EdDSA => vec![ed25519_fixture(0)],
        _ => {
            let all = all_rsa_fixtures();
            // The second 2048-bit key only serves as "another key of the same size".
            all.into_iter()
                .enumerate()
                .filter(|&(i, _)| i != RSA2048_B)
                .map(|(_, f)| f)
                .collect()
        }
    }
}

/// A second key of the same family and size as `fixtures_for(alg)[0]`.
fn other_fixture(alg: Algorithm) -> &'static Fixture {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => hmac_fixture(1),
        Algorithm::ES256 => p256_fixture(1),
        Algorithm::ES384 => p384_fixture(1),
        Algorithm::EdDSA => ed25519_fixture(1),
        _ => rsa_fixture(RSA2048_B),
    }
}

// ------------------------------------------------------------------------------ 1. valid tokens

/// Every algorithm, every key: a token minted by jsonwebtoken verifies on both sides (with
/// the key from the JWK and from the raw components) and decodes to the same claims, whether
/// or not the token and the JWK carry a `kid` and the JWK pins an `alg`.
#[test]
fn minted_tokens_verify_on_both_sides_for_every_algorithm() {
    let claims = sample_claims();
    for alg in reference_algs() {
        for (i, fixture) in fixtures_for(alg).into_iter().enumerate() {
            // (token kid, JWK kid, JWK alg). Our RSA runs unoptimised in this test build, so
            // the extra RSA keys get one variant each.
            let variants: &[(Option<&str>, Option<&str>, Option<Algorithm>)] = if i == 0 {
                &[
                    (None, None, None),
                    (Some("k1"), Some("k1"), None),
                    (Some("k1"), Some("k1"), Some(alg)),
                    (Some("k1"), None, Some(alg)),
                ]
            } else {
                &[(Some("k1"), Some("k1"), Some(alg))]
            };
            for &(token_kid, jwk_kid, jwk_alg) in variants {
                let what = format!(
                    "{alg} {} token kid {token_kid:?} jwk kid {jwk_kid:?} jwk alg {jwk_alg:?}",
                    fixture.name
                );
                let jwk = fixture.jwk_with(jwk_kid, jwk_alg);
                let set = our_set(&json!({"keys": [jwk]}));
                let token = mint(alg, fixture, token_kid, &claims);
                let verdict = ours(&set, &token);
                assert_eq!(verdict.as_ref(), Ok(&claims), "{what}: ours");
                // jsonwebtoken with the key from the same JWK and from the raw components.
                for (how, key) in [
                    ("jwk", &their_key(&jwk)),
                    ("components", &fixture.components),
                ] {
                    let reference = theirs(key, &token);
                    assert_eq!(
                        reference.as_ref().ok(),
                        Some(&claims),
                        "{what}: jsonwebtoken ({how}) {reference:?}"
                    );
                }
                if i == 0 {
                    // A single JWK (not in a set) loads the same.
                    let (single, _) = KeySet::from_jwks(jwk.to_string().as_bytes()).unwrap();
                    assert_eq!(
                        ours(&single, &token).as_ref(),
                        Ok(&claims),
                        "{what}: single JWK"
                    );
                }
            }
        }
    }
}

/// One JWKS with every key under its own kid: each token verifies with the key its kid
/// names (jsonwebtoken: `JwkSet::find`), and a token without a kid with ours (we try every key
/// that fits the algorithm).
#[test]
fn mixed_key_set_selects_by_kid() {
    let mut fixtures = all_rsa_fixtures();
    fixtures.extend([
        p256_fixture(0),
        p256_fixture(1),
        p384_fixture(0),
        ed25519_fixture(0),
        hmac_fixture(0),
    ]);
    let keys: Vec<Value> = fixtures
        .iter()
        .map(|f| f.jwk_with(Some(&f.name), None))
        .collect();
    let jwks = json!({ "keys": keys });
    let set = our_set(&jwks);
    let their_set: jwt::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let claims = json!({"sub": "mixed"});
    for alg in reference_algs() {
        for fixture in fixtures_for(alg) {
            let what = format!("{alg} {}", fixture.name);
            let token = mint(alg, fixture, Some(&fixture.name), &claims);
            let jwk = their_set.find(&fixture.name).unwrap();
            let key = jwt::DecodingKey::from_jwk(jwk).unwrap();
            assert_eq!(
                agree(&set, &key, &token, &what),
                Some(claims.clone()),
                "{what}"
            );
            let no_kid = mint(alg, fixture, None, &claims);
            assert_eq!(
                ours(&set, &no_kid),
                Ok(claims.clone()),
                "{what} without kid"
            );
            // A kid the set does not hold.
            let unknown = mint(alg, fixture, Some("nobody"), &claims);
            assert_eq!(ours(&set, &unknown), Err(TokenError::UnknownKid), "{what}");
        }
    }
}

/// Signed payloads that are not ordinary claim sets: both sides agree on every one.
#[test]
fn unusual_signed_payloads_agree() {
    let fixture = rsa_fixture(RSA2048);
    let set = our_set(&json!({"keys": [fixture.jwk]}));
    let key = &fixture.components;
    let header = br#"{"alg":"RS256","typ":"JWT"}"#;
    let payloads: [(&[u8], bool); 14] = [
        (b"{}", true),
        (br#"{"a":{"b":{"c":[1,2,{"d":null}]}}}"#, true),
        (
            br#"{"big":18446744073709551616,"neg":-9223372036854775808}"#,
            true,
        ),
        (br#"{"exp":"not a number","nbf":true,"aud":7}"#, true),
        (br#"{"unicode":"\u00e9\ud83d\ude00"}"#, true),
        ("{\"raw\":\"é😀\"}".as_bytes(), true),
        (br#"{"lone":"\ud800"}"#, false),
        (br#"{"deep":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}"#, true),
        (b"[1,2]", false),
        (b"\"claims\"", false),
        (b"42", false),
        (b"null", false),
        (b"{\"a\":1", false),
        (b"\xff\xfe", false),
    ];
    for (payload, accepted) in payloads {
        let what = format!("payload {}", String::from_utf8_lossy(payload));
        let token = mint_raw(Algorithm::RS256, fixture, header, payload);
        assert_eq!(
            agree(&set, key, &token, &what).is_some(),
            accepted,
            "{what}"
        );
    }
    // A header with extra members (typ, cty, unknown ones) is fine on both sides.
    let extra = br#"{"alg":"RS256","typ":"at+jwt","cty":"JWT","x-extra":{"a":1}}"#;
    let token = mint_raw(Algorithm::RS256, fixture, extra, br#"{"sub":"x"}"#);
    assert!(agree(&set, key, &token, "extra header members").is_some());
}

/// ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s). RFC 7518 does not
/// ask for low-S signatures and neither side enforces it; both must agree.
#[test]
fn ecdsa_high_s_signatures_agree() {
    for (alg, fixture) in [
        (Algorithm::ES256, p256_fixture(0)),
        (Algorithm::ES384, p384_fixture(0)),
    ] {
        let set = our_set(&json!({"keys": [fixture.jwk]}));
        for i in 0..4 {
            let token = mint(alg, fixture, None, &json!({"sub": "malleable", "i": i}));
            let (_, _, s) = split(&token);
            let sig = unb64(&s);
            let negated = match alg {
                Algorithm::ES256 => {
                    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
                    let (r, s) = sig.split_scalars();
                    p256::ecdsa::Signature::from_scalars(r, -s)
                        .unwrap()
                        .to_vec()
                }
                _ => {
                    let sig = p384::ecdsa::Signature::from_slice(&sig).unwrap();
                    let (r, s) = sig.split_scalars();
                    p384::ecdsa::Signature::from_scalars(r, -s)
                        .unwrap()
                        .to_vec()
                }
            };
            assert_ne!(negated, sig);
            let token = with_signature(&token, &negated);
            let verdict = agree(
                &set,
                &fixture.components,
                &token,
                &format!("{alg} (r, n - s)"),
            );
            assert!(
                verdict.is_some(),
                "{alg}: (r, n - s) is a valid ECDSA signature"
            );
        }
    }
}

// ------------------------------------------------------------------------------ 2. tampering

/// Bit flips in header, payload and signature, truncated / extended / re-encoded signatures,
/// a signature by another key of the same size, and every other `alg` label: both refuse.
///
/// Every algorithm with its main key gets all of it; the e = 3 and 2049-bit RSA keys get the
/// signature tampering with RS256 and PS256/PS512 (our RSA is unoptimised in this build, and
/// header/payload tampering does not depend on the key).
#[test]
fn tampered_tokens_are_rejected_by_both() {
    let mut rng = StdRng::seed_from_u64(7);
    for alg in reference_algs() {
        tamper(alg, fixtures_for(alg)[0], true, &mut rng);
    }
    for i in [2, 3] {
        assert!(["rsa2048-e3", "rsa2049"].contains(&RSA_SPECS[i].0));
        for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::PS512] {
            tamper(alg, rsa_fixture(i), false, &mut rng);
        }
    }
}

fn tamper(alg: Algorithm, fixture: &Fixture, full: bool, rng: &mut StdRng) {
    let claims = sample_claims();
    let what = format!("{alg} {}", fixture.name);
    let set = our_set(&json!({"keys": [fixture.jwk_with(Some("k1"), None)]}));
    let key = &fixture.components;
    let token = mint(alg, fixture, Some("k1"), &claims);
    assert!(
        agree(&set, key, &token, &what).is_some(),
        "{what}: untampered token"
    );
    let (h, p, s) = split(&token);
    let (header_bits, payload_bits, sig_bits) = (
        unb64(&h).len() * 8,
        unb64(&p).len() * 8,
        unb64(&s).len() * 8,
    );

    if full {
        // Every bit of the header.
        for bit in 0..header_bits {
            both_reject(
                &set,
                key,
                &flip_header(&token, bit),
                &format!("{what} header bit {bit}"),
            );
        }
        // Payload: its first and last bytes fully, then random bits.
        let picks = (0..8)
            .chain(payload_bits - 8..payload_bits)
            .chain((0..16).map(|_| rng.gen_range(0..payload_bits)))
            .collect::<Vec<_>>();
        for bit in picks {
            both_reject(
                &set,
                key,
                &flip_payload(&token, bit),
                &format!("{what} payload bit {bit}"),
            );
        }
    }
    // Signature: its first and last bytes fully, then random bits.
    let picks = (0..8)
        .chain(sig_bits - 8..sig_bits)
        .chain((0..16).map(|_| rng.gen_range(0..sig_bits)))
        .collect::<Vec<_>>();
    for bit in picks {
        both_reject(
            &set,
            key,
            &flip_signature(&token, bit),
            &format!("{what} signature bit {bit}"),
        );
    }

    // Truncated, extended, emptied signatures.
    let sig = unb64(&s);
    let mut variants: Vec<(&str, Vec<u8>)> = vec![
        ("last byte dropped", sig[..sig.len() - 1].to_vec()),
        ("first byte dropped", sig[1..].to_vec()),
        ("half", sig[..sig.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("zero appended", [sig.as_slice(), &[0]].concat()),
        ("zero prepended", [&[0], sig.as_slice()].concat()),
        ("doubled", [sig.as_slice(), sig.as_slice()].concat()),
        ("all zero", vec![0; sig.len()]),
        ("all ones", vec![0xff; sig.len()]),
    ];
    if let Some(rsa) = &fixture.rsa_public {
        use rsa::traits::PublicKeyParts;
        // The modulus itself, and sig + n when it still fits in the same length.
        let n = rsa.n().to_bytes_be();
        let sum = (rsa::BigUint::from_bytes_be(&sig) + rsa.n()).to_bytes_be();
        variants.push(("n", n));
        if sum.len() == sig.len() {
            variants.push(("sig + n", sum));
        }
    }
    for (name, bad) in &variants {
        let bad = with_signature(&token, bad);
        if *name == "sig + n" && is_pss(alg) {
            // jsonwebtoken accepts this one: see
            // `documented_differences_rsa_signature_not_below_modulus`.
            assert_eq!(
                ours(&set, &bad),
                Err(TokenError::BadSignature),
                "{what} sig + n"
            );
            continue;
        }
        both_reject(&set, key, &bad, &format!("{what} signature {name}"));
    }

    // The same header and payload signed by another key (of the same size, and for RSA also
    // of another size).
    for other in [other_fixture(alg), rsa_fixture(RSA3072)] {
        if other.name == fixture.name || other.rsa_public.is_some() != fixture.rsa_public.is_some()
        {
            continue;
        }
        let (_, _, other_s) = split(&mint(alg, other, Some("k1"), &claims));
        let swapped = join(&h, &p, &other_s);
        both_reject(
            &set,
            key,
            &swapped,
            &format!("{what} signature of {}", other.name),
        );
    }
    if !full {
        return;
    }

    // Base64 text: padding, characters dropped or added, standard alphabet, extra parts.
    let text_variants = [
        ("padded", format!("{h}.{p}.{s}==")),
        ("last char dropped", join(&h, &p, &s[..s.len() - 1])),
        ("char added", join(&h, &p, &format!("{s}A"))),
        (
            "std alphabet",
            join(&h, &p, &s.replace('-', "+").replace('_', "/")),
        ),
        ("space", join(&h, &p, &format!(" {s}"))),
        ("fourth part", format!("{token}.{s}")),
        ("missing signature part", format!("{h}.{p}")),
    ];
    for (name, bad) in text_variants {
        if bad != token {
            both_reject(&set, key, &bad, &format!("{what} {name}"));
        }
    }

    // Relabelled to every other algorithm (header re-encoded, signature kept).
    let mut header_json: Value = serde_json::from_slice(&unb64(&h)).unwrap();
    for other in reference_algs().filter(|&a| a != alg) {
        header_json["alg"] = json!(other.name());
        let relabelled = join(&b64(header_json.to_string().as_bytes()), &p, &s);
        both_reject(
            &set,
            key,
            &relabelled,
            &format!("{what} relabelled {other}"),
        );
    }
}

/// Key confusion: an HS* token whose HMAC secret is the RSA public key (as DER, PEM, JWK JSON
/// or raw modulus). The forgery is a valid HMAC token for that secret, but a key set that holds
/// only the RSA key must refuse it: ours finds no key for HS* (NoMatchingKey, or UnknownKid for
/// a kid it does not hold), jsonwebtoken refuses an HMAC algorithm with an RSA key.
#[test]
fn hmac_token_forged_with_the_rsa_public_key_is_rejected() {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::traits::PublicKeyParts;
    let fixture = rsa_fixture(RSA2048);
    let public = fixture.rsa_public.as_ref().unwrap();
    let jwk = fixture.jwk_with(Some("rsa-1"), None);
    let pinned = fixture.jwk_with(Some("rsa-1"), Some(Algorithm::RS256));
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        (
            "pkcs1 der",
            public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        ),
        (
            "spki der",
            public.to_public_key_der().unwrap().as_bytes().to_vec(),
        ),
        (
            "pkcs1 pem",
            public
                .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .into_bytes(),
        ),
        (
            "spki pem",
            public
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .into_bytes(),
        ),
        ("jwk json", jwk.to_string().into_bytes()),
        ("modulus", public.n().to_bytes_be()),
        (
            "modulus b64",
            fixture.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        ),
    ];
    let claims = json!({"sub": "attacker", "admin": true});
    for doc in [&jwk, &pinned] {
        let set = our_set(&json!({"keys": [doc]}));
        let rsa_key = their_key(doc);
        for (name, secret) in &secrets {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                for kid in [None, Some("rsa-1"), Some("other")] {
                    let what = format!("{alg} with {name} as secret, kid {kid:?}");
                    let forged = jwt::encode(
                        &header(alg, kid),
                        &claims,
                        &jwt::EncodingKey::from_secret(secret),
                    )
                    .unwrap();
                    // It is a genuine HMAC token for that secret...
                    assert_eq!(
                        theirs(&jwt::DecodingKey::from_secret(secret), &forged).ok(),
                        Some(claims.clone()),
                        "{what}"
                    );
                    // ...that neither side accepts with the RSA key.
                    both_reject(&set, &rsa_key, &forged, &what);
                    let mut hmac_validation = signature_only(jwt::AlgorithmFamily::Hmac);
                    hmac_validation.algorithms = vec![jwt_alg(alg)];
                    assert!(
                        jwt::decode::<Value>(&forged, &rsa_key, &hmac_validation).is_err(),
                        "{what}"
                    );
                    let expected = match kid {
                        Some("other") => TokenError::UnknownKid,
                        _ => TokenError::NoMatchingKey,
                    };
                    assert_eq!(ours(&set, &forged), Err(expected.clone()), "{what}");
                    // Explicitly allowing the HS algorithm changes nothing.
                    let jws = token::parse(&forged, MAX_LEN).unwrap();
                    assert_eq!(
                        verify_all(&set, &jws, &[alg, Algorithm::RS256]),
                        Err(expected),
                        "{what}"
                    );
                }
            }
        }
    }
}

/// `alg: none` (any spelling), with an empty or a copied signature, and headers without a
/// usable `alg`: refused by both, whatever key the set holds.
#[test]
fn unsigned_tokens_are_rejected_by_both() {
    let claims = json!({"sub": "nobody", "admin": true});
    let payload = b64(claims.to_string().as_bytes());
    let fixtures = [
        rsa_fixture(RSA2048),
        p256_fixture(0),
        p384_fixture(0),
        ed25519_fixture(0),
        hmac_fixture(0),
    ];
    for fixture in fixtures {
        let set = our_set(&json!({"keys": [fixture.jwk]}));
        let key = &fixture.components;
        let signed = mint(Algorithm::ES256, p256_fixture(0), None, &claims);
        let (_, _, copied_sig) = split(&signed);
        let headers = [
            json!({"alg": "none"}),
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "None"}),
            json!({"alg": "NONE"}),
            json!({"alg": "nOnE"}),
            json!({"alg": ""}),
            json!({"alg": null}),
            json!({"alg": ["RS256"]}),
            json!({"typ": "JWT"}),
            json!({"alg": "rs256"}),
            json!({"alg": "HS1024"}),
        ];
        for h in headers {
            let h64 = b64(h.to_string().as_bytes());
            for sig in ["", copied_sig.as_str()] {
                let token = join(&h64, &payload, sig);
                both_reject(
                    &set,
                    key,
                    &token,
                    &format!("{} header {h} sig {sig:?}", fixture.name),
                );
            }
        }
        // The unsigned form with the header of a real token.
        let real = mint(Algorithm::HS256, hmac_fixture(0), None, &claims);
        let (h, p, _) = split(&real);
        both_reject(
            &set,
            key,
            &format!("{h}.{p}."),
            &format!("{} empty signature", fixture.name),
        );
        let none = join(&b64(br#"{"alg":"none"}"#), &payload, "");
        assert_eq!(
            token::parse(&none, MAX_LEN).map(|_| ()),
            Err(TokenError::Algorithm("none".into()))
        );
    }
}

// ------------------------------------------------------------------------------ documented differences

fn is_pss(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512)
}

/// An RSA signature s' = s + n (same length, same value mod n). RFC 8017 (8.1.2 and 8.2.2,
/// step 2 / RSAVP1) requires "signature representative out of range" for s' >= n. We refuse
/// it for RS* and PS*. jsonwebtoken refuses it for RS*, but its PSS path (the `rsa` crate's
/// `Pss::verify`, rsa 0.9) reduces s' mod n and ACCEPTS the token: a reference bug (token
/// malleability), not ours.
#[test]
fn documented_differences_rsa_signature_not_below_modulus() {
    use rsa::traits::PublicKeyParts;
    let fixture = rsa_fixture(RSA2048);
    let public = fixture.rsa_public.as_ref().unwrap();
    let set = our_set(&json!({"keys": [fixture.jwk]}));
    for alg in [
        Algorithm::RS256,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        // s + n fits in the modulus length for a fraction of signatures: try a few tokens.
        let found = (0..64).find_map(|i| {
            let token = mint(alg, fixture, None, &json!({"sub": "u", "i": i}));
            let (_, _, s) = split(&token);
            let sig = unb64(&s);
            let sum = (rsa::BigUint::from_bytes_be(&sig) + public.n()).to_bytes_be();
            (sum.len() == sig.len()).then(|| (token.clone(), with_signature(&token, &sum)))
        });
        let (token, bumped) = found.expect("no signature with s + n < 2^(8k) in 64 tries");
        assert!(agree(&set, &fixture.components, &token, "original").is_some());
        assert_eq!(ours(&set, &bumped), Err(TokenError::BadSignature), "{alg}");
        let reference = theirs(&fixture.components, &bumped);
        if is_pss(alg) {
            assert!(
                reference.is_ok(),
                "{alg}: jsonwebtoken now refuses s + n: {reference:?}"
            );
        } else {
            assert!(reference.is_err(), "{alg}: jsonwebtoken accepts s + n");
        }
    }
}

/// Inputs where edgeguard and jsonwebtoken deliberately differ. Each is asserted both ways so
/// that a change on either side is noticed.
#[test]
fn documented_differences_keys() {
    let claims = json!({"sub": "x"});

    // 1. HMAC secrets under 32 bytes: refused by us (RFC 7518 3.2 asks for at least the hash
    //    size), accepted by jsonwebtoken.
    let short = b"too-short-secret";
    assert_eq!(
        KeySet::from_hmac_secret(short).unwrap_err(),
        JwksError::WeakSecret { bytes: short.len() }
    );
    let token = jwt::encode(
        &header(Algorithm::HS256, None),
        &claims,
        &jwt::EncodingKey::from_secret(short),
    )
    .unwrap();
    assert!(theirs(&jwt::DecodingKey::from_secret(short), &token).is_ok());
    let jwk = json!({"keys": [{"kty": "oct", "k": b64(short)}]});
    assert!(matches!(
        KeySet::from_jwks(jwk.to_string().as_bytes()),
        Err(JwksError::NoUsableKeys(_))
    ));

    // 1b. A secret shorter than the algorithm's hash (RFC 7518 3.2: 48 bytes for HS384, 64 for
    //     HS512): the key verifies HS256 only; jsonwebtoken accepts any length.
    let secret32 = [7u8; 32];
    let secret48 = [7u8; 48];
    let set32 = KeySet::from_hmac_secret(&secret32).unwrap();
    let set48 = KeySet::from_hmac_secret(&secret48).unwrap();
    for (alg, set, ok) in [
        (Algorithm::HS256, &set32, true),
        (Algorithm::HS384, &set32, false),
        (Algorithm::HS512, &set32, false),
        (Algorithm::HS384, &set48, true),
        (Algorithm::HS512, &set48, false),
    ] {
        let secret: &[u8] = if std::ptr::eq(set, &set32) {
            &secret32
        } else {
            &secret48
        };
        let token = jwt::encode(
            &header(alg, None),
            &claims,
            &jwt::EncodingKey::from_secret(secret),
        )
        .unwrap();
        assert!(theirs(&jwt::DecodingKey::from_secret(secret), &token).is_ok());
        match ours(set, &token) {
            Ok(_) => assert!(ok, "{alg} with {} bytes verified", secret.len()),
            Err(e) => {
                assert!(!ok, "{alg} with {} bytes refused: {e}", secret.len());
                assert_eq!(e, TokenError::NoMatchingKey);
            }
        }
    }
    // a JWK that pins HS512 on a 32-byte key is skipped with the reason
    let jwk = json!({"keys": [{"kty": "oct", "alg": "HS512", "k": b64(&secret32)}]});
    match KeySet::from_jwks(jwk.to_string().as_bytes()) {
        Err(JwksError::NoUsableKeys(reasons)) => {
            assert!(
                reasons[0].contains("HS512 needs at least 64"),
                "{reasons:?}"
            )
        }
        other => panic!("{other:?}"),
    }

    // 2. RSA moduli under 2048 bits: the JWK is skipped by us (RFC 7518 3.3), jsonwebtoken
    //    verifies with it.
    {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut StdRng::seed_from_u64(9), 1024).unwrap();
        let public = private.to_public_key();
        let encoding = jwt::EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes());
        let token = jwt::encode(&header(Algorithm::RS256, None), &claims, &encoding).unwrap();
        let (n, e) = (
            b64(&public.n().to_bytes_be()),
            b64(&public.e().to_bytes_be()),
        );
        let jwk = json!({"kty": "RSA", "n": n, "e": e});
        assert!(theirs(&their_key(&jwk), &token).is_ok());
        match KeySet::from_jwks(json!({ "keys": [jwk] }).to_string().as_bytes()) {
            Err(JwksError::NoUsableKeys(reasons)) => {
                assert!(reasons[0].contains("too small"), "{reasons:?}")
            }
            other => panic!("1024-bit key loaded: {other:?}"),
        }
    }

    // 3. A small-order Ed25519 public key (the identity point): with it, the signature
    //    R = identity, S = 0 verifies for every message under RFC 8032's cofactorless equation,
    //    which jsonwebtoken (ed25519-dalek `verify`) uses. We use `verify_strict`, which refuses
    //    small-order keys and R, so nothing verifies with such a key.
    {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&identity)});
        let set = our_set(&json!({ "keys": [jwk] }));
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let h = b64(br#"{"alg":"EdDSA"}"#);
        let token = join(&h, &b64(br#"{"sub":"forged","admin":true}"#), &b64(&sig));
        assert_eq!(ours(&set, &token), Err(TokenError::BadSignature));
        assert_eq!(theirs(&their_key(&jwk), &token).unwrap()["sub"], "forged");
    }
}

#[test]
fn documented_differences_tokens() {
    let fixture = hmac_fixture(0);
    let set = our_set(&json!({"keys": [fixture.jwk]}));
    let key = &fixture.components;

    // 1. `crit`: RFC 7515 4.1.11 requires refusing a token whose critical extensions are not
    //    understood. We refuse any `crit`; jsonwebtoken ignores it.
    let token = mint_raw(
        Algorithm::HS256,
        fixture,
        br#"{"alg":"HS256","crit":["exp"]}"#,
        br#"{"exp":1}"#,
    );
    assert!(matches!(ours(&set, &token), Err(TokenError::Malformed(_))));
    assert!(theirs(key, &token).is_ok());

    // 2. Duplicate claim names: RFC 7519 4 allows either refusing the token or keeping the
    //    lexically last member. serde_json keeps the last one on our side; jsonwebtoken's
    //    claim validation struct refuses duplicates of the claims it knows (here `sub`), even
    //    with every validation off.
    let token = mint_raw(
        Algorithm::HS256,
        fixture,
        br#"{"alg":"HS256"}"#,
        br#"{"sub":"a","sub":"b"}"#,
    );
    assert_eq!(ours(&set, &token), Ok(json!({"sub": "b"})));
    assert!(theirs(key, &token).is_err());
    // Duplicates of other names are kept-last by both.
    let token = mint_raw(
        Algorithm::HS256,
        fixture,
        br#"{"alg":"HS256"}"#,
        br#"{"x":"a","x":"b"}"#,
    );
    assert_eq!(
        agree(&set, key, &token, "duplicate x"),
        Some(json!({"x": "b"}))
    );

    // 3. Registered claims holding an array or an object (`sub`, `exp`, `nbf`): jsonwebtoken
    //    fails to decode the claims even with every validation off (its lenient per-claim
    //    parsing leaves serde_json mid-value). We decode them; `validate_claims` then refuses
    //    a non-numeric exp/nbf, and `sub` is only a claim like any other.
    for payload in [
        br#"{"sub":["a"]}"#.as_slice(),
        br#"{"sub":{"id":1}}"#,
        br#"{"exp":[1]}"#,
        br#"{"nbf":{"t":1}}"#,
    ] {
        let token = mint_raw(Algorithm::HS256, fixture, br#"{"alg":"HS256"}"#, payload);
        let expected: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(
            ours(&set, &token),
            Ok(expected),
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert!(
            theirs(key, &token).is_err(),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }

    // 4. An empty payload: a valid JWS for jsonwebtoken's signature check, refused by our
    //    parser (a JWT payload is a JSON object).
    let token = mint_raw(Algorithm::HS256, fixture, br#"{"alg":"HS256"}"#, b"");
    let (h, _, s) = split(&token);
    assert!(
        jwt::crypto::verify(&s, format!("{h}.").as_bytes(), key, jwt::Algorithm::HS256).unwrap()
    );
    assert_eq!(
        token::parse(&token, MAX_LEN).map(|_| ()),
        Err(TokenError::Malformed("empty payload"))
    );
}

// ------------------------------------------------------------------------------ 3. properties

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    /// The algorithms with a fixed key: RS*/PS* with the 2048-bit RSA key, ES256 with P-256.
    const ALGS: [Algorithm; 7] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
    ];

    fn fixture(alg: Algorithm) -> &'static Fixture {
        match alg {
            Algorithm::ES256 => p256_fixture(0),
            _ => rsa_fixture(RSA2048),
        }
    }

    fn key_set(alg: Algorithm) -> KeySet {
        our_set(&json!({"keys": [fixture(alg).jwk_with(Some("fixed"), None)]}))
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            // Multiples of 1/8: exact in binary and short in decimal, so they survive the
            // JSON round trip bit for bit.
            (-1_000_000_000i64..1_000_000_000).prop_map(|n| json!(n as f64 / 8.0)),
            "\\PC{0,16}".prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\/\u{7f}-\u{a0}\u{2028}\u{fffd}]{0,6}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Small claim sets: registered claims with their usual types (left out at random) and
    /// private claims of any type. Validation is off on both sides, so the times do not matter.
    fn claims() -> impl Strategy<Value = Value> {
        (
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of(0u64..5_000_000_000),
            proptest::option::of(prop_oneof![
                "[a-z]{1,8}".prop_map(Value::String),
                vec("[a-z]{1,8}", 0..3).prop_map(|v| json!(v)),
            ]),
            btree_map("[a-z_][a-z0-9_]{0,9}", value(), 0..6),
        )
            .prop_map(|(sub, exp, aud, private)| {
                let mut m = serde_json::Map::new();
                for (k, v) in private {
                    if !["sub", "exp", "nbf", "iss", "aud"].contains(&k.as_str()) {
                        m.insert(k, v);
                    }
                }
                if let Some(sub) = sub {
                    m.insert("sub".into(), json!(sub));
                }
                if let Some(exp) = exp {
                    m.insert("exp".into(), json!(exp));
                    m.insert("iat".into(), json!(exp.saturating_sub(3600)));
                }
                if let Some(aud) = aud {
                    m.insert("aud".into(), aud);
                }
                Value::Object(m)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Tokens minted by jsonwebtoken always verify with ours and decode to the claims both
        /// sides see; a single flipped signature bit always fails with ours.
        #[test]
        fn minted_claims_verify_and_flipped_signatures_fail(
            claims in claims(),
            alg in prop::sample::select(ALGS.to_vec()),
            with_kid in any::<bool>(),
            flips in vec(any::<prop::sample::Index>(), 3),
        ) {
            let fixture = fixture(alg);
            let set = key_set(alg);
            let token = mint(alg, fixture, with_kid.then_some("fixed"), &claims);
            let got = ours(&set, &token);
            prop_assert_eq!(got.as_ref(), Ok(&claims));
            let reference = theirs(&fixture.components, &token).ok();
            prop_assert_eq!(reference.as_ref(), Some(&claims));
            let (_, _, s) = split(&token);
            let bits = unb64(&s).len() * 8;
            for flip in flips {
                let bad = flip_signature(&token, flip.index(bits));
                prop_assert_eq!(ours(&set, &bad), Err(TokenError::BadSignature));
                prop_assert!(theirs(&fixture.components, &bad).is_err());
            }
        }

        /// Arbitrary payload bytes (not necessarily JSON) signed by jsonwebtoken: the signature
        /// verifies on both sides; ours decodes the claims exactly when they are a JSON object;
        /// one flipped signature bit fails on both sides.
        #[test]
        fn arbitrary_messages_verify_and_flipped_signatures_fail(
            message in vec(any::<u8>(), 1..400),
            alg in prop::sample::select(ALGS.to_vec()),
            flip in any::<prop::sample::Index>(),
        ) {
            let fixture = fixture(alg);
            let set = key_set(alg);
            let header = json!({"alg": alg.name(), "kid": "fixed"}).to_string();
            let token = mint_raw(alg, fixture, header.as_bytes(), &message);
            let (h, p, s) = split(&token);
            let input = format!("{h}.{p}");
            let jws = token::parse(&token, MAX_LEN).unwrap();
            prop_assert_eq!(verify_all(&set, &jws, &[]), Ok(()));
            prop_assert!(jwt::crypto::verify(&s, input.as_bytes(), &fixture.components, jwt_alg(alg)).unwrap());
            let is_object = serde_json::from_slice::<Value>(&message).is_ok_and(|v| v.is_object());
            prop_assert_eq!(token::decode_claims(&jws).is_ok(), is_object);

            let sig = unb64(&s);
            let bad = b64(&flip_bit(&sig, flip.index(sig.len() * 8)));
            let bad_token = join(&h, &p, &bad);
            let bad_jws = token::parse(&bad_token, MAX_LEN).unwrap();
            prop_assert_eq!(verify_all(&set, &bad_jws, &[]), Err(TokenError::BadSignature));
            prop_assert!(!jwt::crypto::verify(&bad, input.as_bytes(), &fixture.components, jwt_alg(alg)).unwrap_or(false));
        }
    }
}

// ------------------------------------------------------------------------------ 4. claims

/// What the claim table expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Both accept.
    Accept,
    /// Both refuse.
    Reject,
    /// Intentional difference: we refuse, jsonwebtoken accepts (the reason says why).
    OnlyOursRejects(&'static str),
    /// Intentional difference: jsonwebtoken refuses, we accept.
    OnlyTheirsRejects(&'static str),
}

struct Case {
    claims: Value,
    rules: ClaimRules,
    expect: Expect,
}

/// jsonwebtoken's `Validation` for our rules, as close as it gets:
///
/// - leeway = our clock skew, `validate_exp` and `validate_nbf` on;
/// - `exp` required when we require it;
/// - issuer: `set_issuer` plus `iss` in `required_spec_claims` (jsonwebtoken checks `iss` only
///   when present; we require it once an issuer is configured);
/// - audiences: `set_audience` plus `aud` in `required_spec_claims` for the same reason
///   (jsonwebtoken's `aud` is a set of allowed audiences, and an `aud`-less token passes unless
///   `aud` is required: see `audience_semantics`). With no audience configured we check
///   nothing, so `validate_aud` is off (jsonwebtoken would otherwise refuse any token carrying
///   an `aud`);
/// - `required_claims`: only `sub` is mapped (jsonwebtoken knows no others).
fn validation_for(rules: &ClaimRules) -> jwt::Validation {
    let mut v = jwt::Validation::new(jwt::Algorithm::HS256);
    v.leeway = rules.clock_skew_seconds;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.required_spec_claims.clear();
    if rules.require_expiration {
        v.required_spec_claims.insert("exp".into());
    }
    if let Some(iss) = &rules.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".into());
    }
    if rules.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&rules.audiences);
        v.required_spec_claims.insert("aud".into());
    }
    for name in &rules.required_claims {
        assert_eq!(name, "sub", "only 'sub' maps to jsonwebtoken");
        v.required_spec_claims.insert(name.clone());
    }
    v
}

fn claim_cases(now: u64) -> Vec<(&'static str, Case)> {
    let n = now as i64;
    let none = ClaimRules::default();
    let need_exp = ClaimRules {
        require_expiration: true,
        ..ClaimRules::default()
    };
    let skew60 = ClaimRules {
        clock_skew_seconds: 60,
        ..ClaimRules::default()
    };
    let issuer = ClaimRules {
        issuer: Some("https://idp.example".into()),
        ..ClaimRules::default()
    };
    let audience = ClaimRules {
        audiences: vec!["electric".into(), "api".into()],
        ..ClaimRules::default()
    };
    let need_sub = ClaimRules {
        required_claims: vec!["sub".into()],
        ..ClaimRules::default()
    };
    let all = ClaimRules {
        issuer: Some("https://idp.example".into()),
        audiences: vec!["api".into()],
        require_expiration: true,
        required_claims: vec!["sub".into()],
        clock_skew_seconds: 0,
    };
    let case = |claims: Value, rules: &ClaimRules, expect: Expect| Case {
        claims,
        rules: rules.clone(),
        expect,
    };
    use Expect::*;
    vec![
        // exp / nbf / iat, no skew.
        ("empty claims", case(json!({}), &none, Accept)),
        ("exp in the future", case(json!({"exp": n + 100}), &none, Accept)),
        ("exp == now", case(json!({"exp": n}), &none, Accept)),
        ("exp == now - 1", case(json!({"exp": n - 1}), &none, Reject)),
        ("exp long past", case(json!({"exp": n - 100_000}), &none, Reject)),
        ("exp 0", case(json!({"exp": 0}), &none, Reject)),
        ("exp negative", case(json!({"exp": -1}), &none, Reject)),
        ("exp u64::MAX", case(json!({"exp": u64::MAX}), &none, Accept)),
        ("exp a string", case(json!({"exp": "tomorrow"}), &none, Reject)),
        ("exp a numeric string", case(json!({"exp": (n + 100).to_string()}), &none, Reject)),
        ("exp true", case(json!({"exp": true}), &none, Reject)),
        ("exp now + 0.4", case(json!({"exp": n as f64 + 0.4}), &none, Accept)),
        (
            "exp now - 0.4",
            case(
                json!({"exp": n as f64 - 0.4}),
                &none,
                OnlyOursRejects("we compare NumericDates exactly; jsonwebtoken rounds to whole seconds"),
            ),
        ),
        ("exp now - 0.6", case(json!({"exp": n as f64 - 0.6}), &none, Reject)),
        (
            "exp 1e300",
            case(
                json!({"exp": 1e300}),
                &none,
                OnlyTheirsRejects("jsonwebtoken needs a NumericDate that fits a u64; ours is any finite number"),
            ),
        ),
        (
            "exp null",
            case(
                json!({"exp": null}),
                &none,
                Reject,
            ),
        ),
        ("exp required, present", case(json!({"exp": n + 10}), &need_exp, Accept)),
        ("exp required, missing", case(json!({"sub": "u"}), &need_exp, Reject)),
        ("exp required, null", case(json!({"exp": null}), &need_exp, Reject)),
        ("exp required, string", case(json!({"exp": "soon"}), &need_exp, Reject)),
        ("nbf == now", case(json!({"nbf": n}), &none, Accept)),
        ("nbf == now + 1", case(json!({"nbf": n + 1}), &none, Reject)),
        ("nbf past, exp future", case(json!({"nbf": n - 100, "exp": n + 100}), &none, Accept)),
        ("nbf future, exp future", case(json!({"nbf": n + 100, "exp": n + 200}), &none, Reject)),
        ("nbf a string", case(json!({"nbf": "now"}), &none, Reject)),
        (
            "nbf negative",
            case(
                json!({"nbf": -5}),
                &none,
                OnlyTheirsRejects("jsonwebtoken needs a NumericDate >= 0; -5 is simply in the past for us"),
            ),
        ),
        ("iat past", case(json!({"iat": n - 100}), &none, Accept)),
        (
            "iat in the future",
            case(
                json!({"iat": n + 100}),
                &none,
                OnlyOursRejects("we refuse tokens issued in the future; jsonwebtoken ignores iat"),
            ),
        ),
        // With 60 s of skew / leeway.
        ("skew: exp now - 60", case(json!({"exp": n - 60}), &skew60, Accept)),
        ("skew: exp now - 61", case(json!({"exp": n - 61}), &skew60, Reject)),
        ("skew: nbf now + 60", case(json!({"nbf": n + 60}), &skew60, Accept)),
        ("skew: nbf now + 61", case(json!({"nbf": n + 61}), &skew60, Reject)),
        // Issuer.
        ("iss matches", case(json!({"iss": "https://idp.example"}), &issuer, Accept)),
        ("iss differs", case(json!({"iss": "https://evil.example"}), &issuer, Reject)),
        ("iss trailing slash", case(json!({"iss": "https://idp.example/"}), &issuer, Reject)),
        ("iss case", case(json!({"iss": "https://IDP.example"}), &issuer, Reject)),
        ("iss empty", case(json!({"iss": ""}), &issuer, Reject)),
        ("iss missing", case(json!({"sub": "u"}), &issuer, Reject)),
        ("iss null", case(json!({"iss": null}), &issuer, Reject)),
        ("iss a number", case(json!({"iss": 7}), &issuer, Reject)),
        ("iss array without match", case(json!({"iss": ["https://evil.example"]}), &issuer, Reject)),
        (
            "iss array with match",
            case(
                json!({"iss": ["https://idp.example", "x"]}),
                &issuer,
                OnlyOursRejects("iss is a single StringOrURI (RFC 7519 4.1.1); jsonwebtoken also takes an array"),
            ),
        ),
        ("iss unchecked", case(json!({"iss": "anyone"}), &none, Accept)),
        // Audience.
        ("aud string match", case(json!({"aud": "api"}), &audience, Accept)),
        ("aud string other", case(json!({"aud": "x"}), &audience, Reject)),
        ("aud string case", case(json!({"aud": "API"}), &audience, Reject)),
        ("aud array with match", case(json!({"aud": ["x", "electric"]}), &audience, Accept)),
        ("aud array both", case(json!({"aud": ["api", "electric"]}), &audience, Accept)),
        ("aud array without match", case(json!({"aud": ["x", "y"]}), &audience, Reject)),
        ("aud empty array", case(json!({"aud": []}), &audience, Reject)),
        ("aud missing", case(json!({"sub": "u"}), &audience, Reject)),
        ("aud null", case(json!({"aud": null}), &audience, Reject)),
        ("aud a number", case(json!({"aud": 5}), &audience, Reject)),
        ("aud an object", case(json!({"aud": {"api": true}}), &audience, Reject)),
        ("aud array with a number", case(json!({"aud": ["api", 3]}), &audience, Reject)),
        ("aud unchecked", case(json!({"aud": "whatever"}), &none, Accept)),
        // Required claims.
        ("sub required, present", case(json!({"sub": "u"}), &need_sub, Accept)),
        ("sub required, missing", case(json!({}), &need_sub, Reject)),
        ("sub required, null", case(json!({"sub": null}), &need_sub, Reject)),
        (
            "sub required, a number",
            case(
                json!({"sub": 5}),
                &need_sub,
                OnlyTheirsRejects("required claims only need to be present and non-null for us"),
            ),
        ),
        // Everything together.
        (
            "all rules, good",
            case(
                json!({"iss": "https://idp.example", "aud": ["api"], "sub": "u", "exp": n + 60, "nbf": n - 60}),
                &all,
                Accept,
            ),
        ),
        (
            "all rules, expired",
            case(
                json!({"iss": "https://idp.example", "aud": "api", "sub": "u", "exp": n - 60}),
                &all,
                Reject,
            ),
        ),
        (
            "all rules, bad audience",
            case(
                json!({"iss": "https://idp.example", "aud": "web", "sub": "u", "exp": n + 60}),
                &all,
                Reject,
            ),
        ),
        (
            "all rules, no sub",
            case(json!({"iss": "https://idp.example", "aud": "api", "exp": n + 60}), &all, Reject),
        ),
    ]
}

/// `validate_claims` against jsonwebtoken's `Validation` on a table of cases. jsonwebtoken
/// reads the clock itself, so the table is built around its clock and run again if the second
/// changed meanwhile (the boundary cases need the same `now` on both sides).
#[test]
fn claim_validation_matches_the_reference() {
    let fixture = hmac_fixture(0);
    for _attempt in 0..10 {
        let now = jwt::get_current_timestamp();
        let results: Vec<_> = claim_cases(now)
            .into_iter()
            .map(|(name, case)| {
                let ours = token::validate_claims(&case.claims, &case.rules, now as f64);
                let token = mint(Algorithm::HS256, fixture, None, &case.claims);
                let theirs =
                    jwt::decode::<Value>(&token, &fixture.components, &validation_for(&case.rules));
                (name, case, ours, theirs.map(|_| ()))
            })
            .collect();
        if jwt::get_current_timestamp() != now {
            continue;
        }
        for (name, case, ours, theirs) in results {
            let what = format!(
                "{name}: claims {} rules {:?}\n  ours: {ours:?}\n  jsonwebtoken: {theirs:?}",
                case.claims, case.rules
            );
            match case.expect {
                Expect::Accept => assert!(ours.is_ok() && theirs.is_ok(), "{what}"),
                Expect::Reject => assert!(ours.is_err() && theirs.is_err(), "{what}"),
                Expect::OnlyOursRejects(why) => {
                    assert!(ours.is_err() && theirs.is_ok(), "{what}\n  expected: {why}")
                }
                Expect::OnlyTheirsRejects(why) => {
                    assert!(ours.is_ok() && theirs.is_err(), "{what}\n  expected: {why}")
                }
            }
        }
        return;
    }
    panic!("the clock kept moving between the two sides");
}

/// jsonwebtoken's audience check on its own: `set_audience` is a set of accepted audiences
/// matched against a string or any member of an array; a token WITHOUT `aud` passes unless
/// `aud` is also in `required_spec_claims`, and with `validate_aud` on but no audience set,
/// any token WITH an `aud` is refused. Ours: with audiences configured, `aud` is required;
/// with none configured, `aud` is not looked at.
#[test]
fn audience_semantics() {
    let fixture = hmac_fixture(0);
    let decode = |claims: &Value, v: &jwt::Validation| {
        let token = mint(Algorithm::HS256, fixture, None, claims);
        jwt::decode::<Value>(&token, &fixture.components, v).map(|_| ())
    };
    let mut only_set = jwt::Validation::new(jwt::Algorithm::HS256);
    only_set.required_spec_claims.clear();
    only_set.validate_exp = false;
    only_set.set_audience(&["api"]);
    let rules = ClaimRules {
        audiences: vec!["api".into()],
        ..ClaimRules::default()
    };

    let no_aud = json!({"sub": "u"});
    assert!(decode(&no_aud, &only_set).is_ok());
    assert_eq!(
        token::validate_claims(&no_aud, &rules, 0.0),
        Err(TokenError::MissingClaim("aud".into()))
    );
    let mut required = only_set.clone();
    required.required_spec_claims.insert("aud".into());
    assert!(decode(&no_aud, &required).is_err());

    let mut no_audience = jwt::Validation::new(jwt::Algorithm::HS256);
    no_audience.required_spec_claims.clear();
    no_audience.validate_exp = false;
    assert!(decode(&json!({"aud": "api"}), &no_audience).is_err());
    assert!(decode(&no_aud, &no_audience).is_ok());
    assert!(token::validate_claims(&json!({"aud": "api"}), &ClaimRules::default(), 0.0).is_ok());
}

// ------------------------------------------------------------------------------ ES512, Ed25519

/// Runs `openssl` with these arguments (stdin from `input`), returning stdout.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (Debian's openssl package) on PATH");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One DER element at the start of `der`: (tag, contents, rest).
fn der_element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, start) = match der[1] {
        l if l < 0x80 => (l as usize, 2),
        0x81 => (der[2] as usize, 3),
        0x82 => (((der[2] as usize) << 8) | der[3] as usize, 4),
        l => panic!("DER length form {l:#x}"),
    };
    (tag, &der[start..start + len], &der[start + len..])
}

/// An ECDSA-Sig-Value (DER `SEQUENCE { r INTEGER, s INTEGER }`) as JWS wants it: r || s, each
/// left-padded to `n` bytes (RFC 7518 §3.4).
fn jws_ecdsa_signature(der: &[u8], n: usize) -> Vec<u8> {
    let (tag, seq, _) = der_element(der);
    assert_eq!(tag, 0x30);
    let (tag_r, r, rest) = der_element(seq);
    let (tag_s, s, _) = der_element(rest);
    assert_eq!((tag_r, tag_s), (0x02, 0x02));
    let mut out = Vec::with_capacity(2 * n);
    for int in [r, s] {
        let int = &int[int.iter().take_while(|b| **b == 0).count()..];
        out.extend(std::iter::repeat_n(0u8, n - int.len()));
        out.extend_from_slice(int);
    }
    out
}

/// ES512 (P-521, SHA-512) has no implementation in jsonwebtoken: OpenSSL generates the keys
/// and signs, and our verifier (the portable p521 code in both builds) must accept exactly the
/// genuine signatures: tampered tokens, a P-256 key under the same kid, a JWK pinned to another
/// algorithm and a signature that is not 132 bytes are refused.
#[test]
fn es512_agrees_with_openssl() {
    let dir = std::env::temp_dir().join(format!("edgeguard-es512-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = StdRng::seed_from_u64(521);
    for round in 0..3 {
        let key_pem = openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-521",
            ],
            b"",
        );
        let key_path = dir.join(format!("key{round}.pem"));
        std::fs::write(&key_path, &key_pem).unwrap();
        let key_path = key_path.to_str().unwrap();
        let spki = openssl(
            &["pkey", "-in", key_path, "-pubout", "-outform", "DER"],
            b"",
        );
        // the SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y
        let point = &spki[spki.len() - 133..];
        assert_eq!(point[0], 0x04);
        let jwk = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": b64(&point[1..67]), "y": b64(&point[67..])});
        let set = our_set(&json!({ "keys": [jwk.clone()] }));
        for _ in 0..4 {
            let mut claims = sample_claims();
            claims["n"] = json!(rng.gen_range(0..u32::MAX));
            let header = b64(br#"{"alg":"ES512","kid":"p521","typ":"JWT"}"#);
            let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
            let der = openssl(&["dgst", "-sha512", "-sign", key_path], input.as_bytes());
            let sig = jws_ecdsa_signature(&der, 66);
            let token = format!("{input}.{}", b64(&sig));
            assert_eq!(ours(&set, &token), Ok(claims.clone()), "round {round}");
            // a JWK pinned to ES512 admits it; pinned to ES384 it does not
            let mut pinned = jwk.clone();
            pinned["alg"] = json!("ES512");
            assert_eq!(
                ours(&our_set(&json!({"keys": [pinned.clone()]})), &token),
                Ok(claims.clone())
            );
            // pinned to ES384 the key does not even load (the curve does not fit the alg)
            pinned["alg"] = json!("ES384");
            assert!(KeySet::from_jwks(json!({"keys": [pinned]}).to_string().as_bytes()).is_err());
            // every tampering is refused
            for bit in [0, 7, 8 * 40 + 3, 8 * 131 + 7] {
                assert!(
                    ours(&set, &flip_signature(&token, bit)).is_err(),
                    "sig bit {bit}"
                );
            }
            assert!(ours(&set, &flip_payload(&token, 13)).is_err());
            assert!(ours(&set, &with_signature(&token, &sig[..131])).is_err());
            // the same kid on a P-256 key: the curve does not fit, refused
            let mut other = p256_fixture(0).jwk_with(Some("p521"), None);
            other["kid"] = json!("p521");
            assert!(ours(&our_set(&json!({"keys": [other]})), &token).is_err());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 9864's fully-specified `Ed25519` (jose v6 signs with it) verifies like `EdDSA`, with
/// a JWK that pins either name or none; a JWK pinned to another family still refuses it, and
/// jsonwebtoken checks the very same signature bytes as EdDSA.
#[test]
fn ed25519_is_eddsa_under_its_fully_specified_name() {
    let fixture = ed25519_fixture(0);
    let claims = sample_claims();
    let token = mint_raw(
        Algorithm::Ed25519,
        fixture,
        br#"{"alg":"Ed25519","typ":"JWT"}"#,
        claims.to_string().as_bytes(),
    );
    let (h, p, s) = split(&token);
    assert!(
        jwt::crypto::verify(
            &s,
            format!("{h}.{p}").as_bytes(),
            &fixture.components,
            jwt::Algorithm::EdDSA
        )
        .unwrap(),
        "jsonwebtoken: the signature is a plain Ed25519 one"
    );
    for pin in [None, Some(Algorithm::EdDSA), Some(Algorithm::Ed25519)] {
        let set = our_set(&json!({"keys": [fixture.jwk_with(Some("k"), pin)]}));
        assert_eq!(ours(&set, &token), Ok(claims.clone()), "pin {pin:?}");
        assert!(ours(&set, &flip_signature(&token, 9)).is_err());
    }
    // an EdDSA token verifies with a key pinned to Ed25519
    let eddsa = mint(Algorithm::EdDSA, fixture, None, &claims);
    let set = our_set(&json!({"keys": [fixture.jwk_with(None, Some(Algorithm::Ed25519))]}));
    assert_eq!(ours(&set, &eddsa), Ok(claims.clone()));
    // but never with a key of another family
    let mut wrong = fixture.jwk_with(None, None);
    wrong["alg"] = json!("ES256");
    assert!(KeySet::from_jwks(json!({"keys": [wrong]}).to_string().as_bytes()).is_err());
    // an allow-list naming either admits both names, and nothing else does
    let set = our_set(&json!({"keys": [fixture.jwk_with(None, None)]}));
    let jws = token::parse(&token, MAX_LEN).unwrap();
    assert!(verify_all(&set, &jws, &[Algorithm::EdDSA]).is_ok());
    assert!(verify_all(&set, &jws, &[Algorithm::Ed25519]).is_ok());
    assert!(verify_all(&set, &jws, &[Algorithm::ES256, Algorithm::RS256]).is_err());
}
