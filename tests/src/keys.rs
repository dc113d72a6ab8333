//! Test keys for every JWS algorithm, their public JWKs, and token signing done directly with
//! the RustCrypto crates (independent of the code under test).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::SeedableRng;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// The claims (payload) of a compact JWS, decoded without checking anything (`Null` when it
/// is not a JWS).
pub fn claims_of(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A private key of one family.
pub enum Private {
    Hmac(Vec<u8>),
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A signing key with its kid.
pub struct TestKey {
    pub kid: String,
    pub private: Private,
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

impl TestKey {
    pub fn hmac(kid: &str, secret: &[u8]) -> TestKey {
        TestKey {
            kid: kid.into(),
            private: Private::Hmac(secret.to_vec()),
        }
    }

    /// A fresh RSA key (2048 bits unless given), seeded so runs are repeatable.
    pub fn rsa(kid: &str, bits: usize, seed: u64) -> TestKey {
        let key = rsa::RsaPrivateKey::new(&mut rng(seed), bits).expect("rsa keygen");
        TestKey {
            kid: kid.into(),
            private: Private::Rsa(Box::new(key)),
        }
    }

    pub fn p256(kid: &str, seed: u64) -> TestKey {
        TestKey {
            kid: kid.into(),
            private: Private::P256(p256::ecdsa::SigningKey::random(&mut rng(seed))),
        }
    }

    pub fn p384(kid: &str, seed: u64) -> TestKey {
        TestKey {
            kid: kid.into(),
            private: Private::P384(p384::ecdsa::SigningKey::random(&mut rng(seed))),
        }
    }

    pub fn ed25519(kid: &str, seed: u64) -> TestKey {
        TestKey {
            kid: kid.into(),
            private: Private::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng(seed))),
        }
    }

    /// The public JWK (optionally pinned to `alg`).
    pub fn jwk(&self, alg: Option<&str>) -> Value {
        let mut j = match &self.private {
            Private::Hmac(k) => json!({"kty": "oct", "k": b64(k)}),
            Private::Rsa(k) => {
                json!({"kty": "RSA", "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be())})
            }
            Private::P256(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))})
            }
            Private::P384(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-384", "x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))})
            }
            Private::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.verifying_key().as_bytes())})
            }
        };
        j["kid"] = json!(self.kid);
        j["use"] = json!("sig");
        if let Some(a) = alg {
            j["alg"] = json!(a);
        }
        j
    }

    /// Signs `claims` with `alg`, `kid` in the header.
    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": alg, "typ": "JWT", "kid": self.kid}), claims)
    }

    /// Signs with an explicit header (its `alg` picks the algorithm).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let alg = header["alg"].as_str().unwrap_or_default().to_string();
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.raw_sign(&alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn raw_sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
        match (&self.private, alg) {
            (Private::Hmac(k), _) => hmac_sign(alg, k, msg),
            (Private::Rsa(k), "RS256") => {
                rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone())
                    .sign(msg)
                    .to_vec()
            }
            (Private::Rsa(k), "RS384") => {
                rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new((**k).clone())
                    .sign(msg)
                    .to_vec()
            }
            (Private::Rsa(k), "RS512") => {
                rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new((**k).clone())
                    .sign(msg)
                    .to_vec()
            }
            (Private::Rsa(k), "PS256") => rsa::pss::SigningKey::<sha2::Sha256>::new((**k).clone())
                .sign_with_rng(&mut rng(1), msg)
                .to_vec(),
            (Private::Rsa(k), "PS384") => rsa::pss::SigningKey::<sha2::Sha384>::new((**k).clone())
                .sign_with_rng(&mut rng(1), msg)
                .to_vec(),
            (Private::Rsa(k), "PS512") => rsa::pss::SigningKey::<sha2::Sha512>::new((**k).clone())
                .sign_with_rng(&mut rng(1), msg)
                .to_vec(),
            (Private::P256(k), _) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            (Private::P384(k), _) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            (Private::Ed25519(k), _) => {
                use ed25519_dalek::Signer as _;
                k.sign(msg).to_bytes().to_vec()
            }
            (Private::Rsa(_), other) => panic!("RSA key cannot sign {other}"),
        }
    }
}

/// HMAC-SHA2 of `msg` with `key` (also used to forge HS tokens with a public key's bytes).
pub fn hmac_sign(alg: &str, key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256, Sha384, Sha512};
    // RFC 2104 HMAC, written out so the tests do not share the filter's hmac crate.
    fn hmac<D: Digest>(block: usize, key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = if key.len() > block {
            D::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        k.resize(block, 0);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = D::new().chain_update(&ipad).chain_update(msg).finalize();
        D::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .to_vec()
    }
    match alg {
        "HS384" => hmac::<Sha384>(128, key, msg),
        "HS512" => hmac::<Sha512>(128, key, msg),
        _ => hmac::<Sha256>(64, key, msg),
    }
}

/// A token with any header and signature bytes (for `alg: none` and friends).
pub fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}

/// Shared RSA keys (key generation is slow; do it once per test binary).
pub fn rsa_a() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::rsa("rsa-a", 2048, 11))
}

pub fn rsa_b() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| TestKey::rsa("rsa-b", 2048, 12))
}

/// `{"keys": [...]}`.
pub fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}
