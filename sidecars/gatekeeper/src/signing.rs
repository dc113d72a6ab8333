//! Signing keys and JWS: ES256 (P-256, the default), EdDSA (Ed25519) and HS256 (Electric's
//! original example), with RustCrypto's `p256`/`ed25519-dalek`/`hmac`. Asymmetric keys are
//! stored as PKCS#8 PEM and published as JWKs (public part only).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::{json, Value as Json};
use sha2::Sha256;

/// The algorithms the gatekeeper signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SigningAlg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "HS256")]
    Hs256,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
            SigningAlg::Hs256 => "HS256",
        }
    }

    pub fn from_name(name: &str) -> Option<SigningAlg> {
        match name {
            "ES256" => Some(SigningAlg::Es256),
            "EdDSA" => Some(SigningAlg::EdDsa),
            "HS256" => Some(SigningAlg::Hs256),
            _ => None,
        }
    }

    /// Whether keys of this algorithm live in the key directory (and in the JWKS).
    pub fn asymmetric(self) -> bool {
        self != SigningAlg::Hs256
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#8 PEM {alg} private key ({reason})")]
    Pem { alg: SigningAlg, reason: String },
    #[error("cannot encode the key as PKCS#8 PEM: {0}")]
    Encode(String),
    #[error("HS256 keys are secrets from the environment or a file, not key-directory keys")]
    NotAsymmetric,
    #[error("the HS256 secret is {0} bytes; at least 32 are required")]
    WeakSecret(usize),
}

/// A private signing key.
pub enum SigningKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
    Hs256(Vec<u8>),
}

impl fmt::Debug for SigningKey {
    // never prints key material
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.alg())
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(alg: SigningAlg) -> Result<SigningKey, KeyError> {
        let mut rng = rand::rngs::OsRng;
        match alg {
            SigningAlg::Es256 => Ok(SigningKey::Es256(p256::ecdsa::SigningKey::random(&mut rng))),
            SigningAlg::EdDsa => Ok(SigningKey::EdDsa(ed25519_dalek::SigningKey::generate(
                &mut rng,
            ))),
            SigningAlg::Hs256 => Err(KeyError::NotAsymmetric),
        }
    }

    /// An HS256 secret (raw bytes, at least 32).
    pub fn hs256(secret: Vec<u8>) -> Result<SigningKey, KeyError> {
        if secret.len() < edgeguard_verdict::jwk::MIN_HMAC_SECRET_BYTES {
            return Err(KeyError::WeakSecret(secret.len()));
        }
        Ok(SigningKey::Hs256(secret))
    }

    /// Reads a PKCS#8 PEM private key of `alg`.
    pub fn from_pkcs8_pem(alg: SigningAlg, pem: &str) -> Result<SigningKey, KeyError> {
        let err = |e: p256::pkcs8::Error| KeyError::Pem {
            alg,
            reason: e.to_string(),
        };
        match alg {
            SigningAlg::Es256 => p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
                .map(SigningKey::Es256)
                .map_err(err),
            SigningAlg::EdDsa => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                .map(SigningKey::EdDsa)
                .map_err(err),
            SigningAlg::Hs256 => Err(KeyError::NotAsymmetric),
        }
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let pem = match self {
            SigningKey::Es256(k) => k.to_pkcs8_pem(LineEnding::LF),
            SigningKey::EdDsa(k) => k.to_pkcs8_pem(LineEnding::LF),
            SigningKey::Hs256(_) => return Err(KeyError::NotAsymmetric),
        };
        pem.map(|p| p.to_string())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    pub fn alg(&self) -> SigningAlg {
        match self {
            SigningKey::Es256(_) => SigningAlg::Es256,
            SigningKey::EdDsa(_) => SigningAlg::EdDsa,
            SigningKey::Hs256(_) => SigningAlg::Hs256,
        }
    }

    /// The public JWK (`use: sig`, `alg` pinned); `None` for HS256.
    pub fn public_jwk(&self, kid: &str) -> Option<Json> {
        match self {
            SigningKey::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                let (x, y) = (point.x()?, point.y()?);
                Some(
                    json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y),
                            "kid": kid, "alg": "ES256", "use": "sig"}),
                )
            }
            SigningKey::EdDsa(k) => Some(json!({"kty": "OKP", "crv": "Ed25519",
                "x": b64(k.verifying_key().as_bytes()), "kid": kid, "alg": "EdDSA", "use": "sig"})),
            SigningKey::Hs256(_) => None,
        }
    }

    /// The JWS signature of `input`.
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Es256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            SigningKey::EdDsa(k) => {
                use ed25519_dalek::Signer;
                k.sign(input).to_bytes().to_vec()
            }
            SigningKey::Hs256(secret) => match Hmac::<Sha256>::new_from_slice(secret) {
                Ok(mac) => mac.chain_update(input).finalize().into_bytes().to_vec(),
                // HMAC takes keys of any length; unreachable in practice, and an empty
                // signature never verifies
                Err(_) => Vec::new(),
            },
        }
    }

    /// A compact JWS of `claims` (`typ: JWT`, `kid` when given).
    pub fn jws(&self, kid: Option<&str>, claims: &Json) -> String {
        let mut header = json!({"alg": self.alg().name(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeguard_verdict::jwk::KeySet;
    use edgeguard_verdict::token::{self, Algorithm};

    fn verify(jws: &str, jwks: &Json, alg: Algorithm) -> Json {
        let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let parsed = token::parse(jws, 8192).unwrap();
        assert_eq!(parsed.alg, alg);
        set.verify(&parsed, &[alg]).unwrap();
        token::decode_claims(&parsed).unwrap()
    }

    #[test]
    fn asymmetric_keys_sign_what_the_verdict_code_verifies() {
        for (alg, jws_alg) in [
            (SigningAlg::Es256, Algorithm::ES256),
            (SigningAlg::EdDsa, Algorithm::EdDSA),
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let jwk = key.public_jwk("k1").unwrap();
            assert_eq!(jwk["alg"], alg.name());
            assert!(jwk.get("d").is_none(), "private part published: {jwk}");
            let claims = json!({"sub": "a", "shape": {"table": "items"}});
            let t = key.jws(Some("k1"), &claims);
            assert_eq!(verify(&t, &json!({"keys": [jwk.clone()]}), jws_alg), claims);
            // another key of the same kind does not verify it
            let other = SigningKey::generate(alg).unwrap().public_jwk("k1").unwrap();
            let parsed = token::parse(&t, 8192).unwrap();
            let (set, _) =
                KeySet::from_jwks(json!({"keys": [other]}).to_string().as_bytes()).unwrap();
            assert!(set.verify(&parsed, &[jws_alg]).is_err());
            // PEM round trip keeps the key
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
            let back = SigningKey::from_pkcs8_pem(alg, &pem).unwrap();
            assert_eq!(back.public_jwk("k1").unwrap(), jwk);
            assert!(!format!("{back:?}").contains("BEGIN"));
        }
    }

    #[test]
    fn pem_of_the_wrong_kind_is_refused() {
        let es = SigningKey::generate(SigningAlg::Es256)
            .unwrap()
            .to_pkcs8_pem()
            .unwrap();
        let e = SigningKey::from_pkcs8_pem(SigningAlg::EdDsa, &es).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("not a PKCS#8 PEM EdDSA private key"),
            "{e}"
        );
        assert!(SigningKey::from_pkcs8_pem(SigningAlg::Es256, "garbage").is_err());
        assert!(SigningKey::generate(SigningAlg::Hs256).is_err());
    }

    #[test]
    fn hs256_as_electric_example() {
        assert!(SigningKey::hs256(b"short".to_vec()).is_err());
        let secret = b"NFL5*0Bc#9U6E@tnmC&E7SUN6GwHfLmY".to_vec();
        let key = SigningKey::hs256(secret.clone()).unwrap();
        assert!(key.public_jwk("x").is_none());
        let t = key.jws(None, &json!({"shape": {"table": "items"}}));
        let parsed = token::parse(&t, 8192).unwrap();
        KeySet::from_hmac_secret(&secret)
            .unwrap()
            .verify(&parsed, &[Algorithm::HS256])
            .unwrap();
        assert!(!format!("{key:?}").contains("NFL5"));
    }
}
