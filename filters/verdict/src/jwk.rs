//! Verification keys: JSON Web Key sets (RFC 7517/7518) and HMAC secrets, parsed once into
//! ready-to-use key material, and JWS signature checks with strict algorithm/key binding
//! (an HS token never meets an RSA key, a key's own `alg` pins it, `none` does not exist).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::rsa::{HashAlg, RsaPublicKey};
use crate::token::{Algorithm, Jws, KeyFamily, TokenError};

/// HMAC secrets shorter than this are refused (RFC 7518 3.2 asks for at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The shortest key RFC 7518 3.2 allows for an HMAC algorithm: the size of its hash (32, 48
/// and 64 bytes for HS256/384/512). A shorter key does not verify that algorithm at all.
pub fn min_hmac_key_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => MIN_HMAC_SECRET_BYTES,
    }
}
/// A JWKS with more keys than this is refused (bounds parsing and per-token work).
pub const MAX_KEYS: usize = 64;

/// Key material of one verification key.
#[derive(Clone)]
pub enum KeyMaterial {
    Hmac(Vec<u8>),
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(Box<p521::ecdsa::VerifyingKey>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl KeyMaterial {
    pub fn family(&self) -> KeyFamily {
        match self {
            KeyMaterial::Hmac(_) => KeyFamily::Hmac,
            KeyMaterial::Rsa(_) => KeyFamily::Rsa,
            KeyMaterial::P256(_) => KeyFamily::P256,
            KeyMaterial::P384(_) => KeyFamily::P384,
            KeyMaterial::P521(_) => KeyFamily::P521,
            KeyMaterial::Ed25519(_) => KeyFamily::Ed25519,
        }
    }
}

impl fmt::Debug for KeyMaterial {
    // Never prints secret bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Hmac(k) => write!(f, "Hmac({} bytes)", k.len()),
            KeyMaterial::Rsa(k) => write!(f, "Rsa({} bits)", k.bits()),
            KeyMaterial::P256(_) => f.write_str("P256"),
            KeyMaterial::P384(_) => f.write_str("P384"),
            KeyMaterial::P521(_) => f.write_str("P521"),
            KeyMaterial::Ed25519(_) => f.write_str("Ed25519"),
        }
    }
}

/// One verification key.
#[derive(Clone, Debug)]
pub struct Key {
    pub kid: Option<String>,
    /// When the JWK names an algorithm, only that algorithm may use the key.
    pub alg: Option<Algorithm>,
    pub material: KeyMaterial,
    /// The key as the native verifier takes it.
    #[cfg(feature = "ring")]
    native: crate::native_crypto::NativeKey,
}

/// Which code checks signatures. The native builds use `ring` ([`Backend::Ring`], the default
/// when the `ring` feature is on); the wasm build the pure-Rust verifiers
/// ([`Backend::Portable`]). Both give the same answers (tests run every vector through both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Portable,
    #[cfg(feature = "ring")]
    Ring,
}

impl Backend {
    /// The verifier this build uses.
    pub const DEFAULT: Backend = {
        #[cfg(feature = "ring")]
        {
            Backend::Ring
        }
        #[cfg(not(feature = "ring"))]
        {
            Backend::Portable
        }
    };

    /// Every verifier compiled in (for tests and benchmarks).
    pub const ALL: &'static [Backend] = &[
        Backend::Portable,
        #[cfg(feature = "ring")]
        Backend::Ring,
    ];
}

impl Key {
    pub fn new(kid: Option<String>, alg: Option<Algorithm>, material: KeyMaterial) -> Key {
        Key {
            kid,
            alg,
            #[cfg(feature = "ring")]
            native: crate::native_crypto::NativeKey::of(&material),
            material,
        }
    }

    /// Whether this key may verify `alg`: the same family, the JWK's pinned `alg` if any, and
    /// for HMAC a key at least as long as the hash (so a 32-byte secret verifies HS256 only).
    pub fn accepts(&self, alg: Algorithm) -> bool {
        let long_enough = match &self.material {
            KeyMaterial::Hmac(k) => k.len() >= min_hmac_key_bytes(alg),
            _ => true,
        };
        self.material.family() == alg.family()
            && self.alg.is_none_or(|a| a.admits(alg))
            && long_enough
    }
}

/// Why a key set or a key could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksError {
    NotJson(String),
    NoKeys,
    TooManyKeys,
    /// Every key was skipped; the reasons of the skipped keys.
    NoUsableKeys(Vec<String>),
    WeakSecret {
        bytes: usize,
    },
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJson(e) => write!(f, "JWKS is not valid JSON: {e}"),
            JwksError::NoKeys => f.write_str("JWKS has no 'keys' array"),
            JwksError::TooManyKeys => write!(f, "JWKS has more than {MAX_KEYS} keys"),
            JwksError::NoUsableKeys(reasons) => {
                write!(f, "JWKS has no usable key ({})", reasons.join("; "))
            }
            JwksError::WeakSecret { bytes } => write!(
                f,
                "HMAC secret is {bytes} bytes; at least {MIN_HMAC_SECRET_BYTES} are required"
            ),
        }
    }
}

impl std::error::Error for JwksError {}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v.as_deref().ok_or_else(|| format!("missing '{field}'"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("'{field}' is not base64url"))
}

fn fixed<const N: usize>(field: &str, bytes: Vec<u8>) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(bytes).map_err(|_| format!("'{field}' must be {N} bytes"))
}

fn parse_jwk(raw: &RawJwk) -> Result<Key, String> {
    if let Some(u) = &raw.use_ {
        if u != "sig" {
            return Err(format!("use '{u}' is not 'sig'"));
        }
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return Err("key_ops does not include 'verify'".into());
        }
    }
    let alg = match &raw.alg {
        None => None,
        Some(a) => Some(Algorithm::from_name(a).ok_or_else(|| format!("unsupported alg '{a}'"))?),
    };
    let kty = raw.kty.as_deref().ok_or("missing 'kty'")?;
    let material = match (kty, raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = b64("n", &raw.n)?;
            let e = b64("e", &raw.e)?;
            KeyMaterial::Rsa(RsaPublicKey::from_be_bytes(&n, &e).map_err(|e| e.to_string())?)
        }
        ("EC", Some("P-256")) => {
            let x = fixed::<32>("x", b64("x", &raw.x)?)?;
            let y = fixed::<32>("y", b64("y", &raw.y)?)?;
            let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            KeyMaterial::P256(
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "P-256 point is not on the curve".to_string())?,
            )
        }
        ("EC", Some("P-384")) => {
            let x = fixed::<48>("x", b64("x", &raw.x)?)?;
            let y = fixed::<48>("y", b64("y", &raw.y)?)?;
            let point = p384::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            KeyMaterial::P384(
                p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "P-384 point is not on the curve".to_string())?,
            )
        }
        ("EC", Some("P-521")) => {
            // coordinates are 66 bytes (521 bits, big-endian, left-padded)
            let x = fixed::<66>("x", b64("x", &raw.x)?)?;
            let y = fixed::<66>("y", b64("y", &raw.y)?)?;
            let (mut fx, mut fy) = (p521::FieldBytes::default(), p521::FieldBytes::default());
            fx.copy_from_slice(&x);
            fy.copy_from_slice(&y);
            let point = p521::EncodedPoint::from_affine_coordinates(&fx, &fy, false);
            KeyMaterial::P521(Box::new(
                p521::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "P-521 point is not on the curve".to_string())?,
            ))
        }
        ("OKP", Some("Ed25519")) => {
            let x = fixed::<32>("x", b64("x", &raw.x)?)?;
            KeyMaterial::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| "Ed25519 key is not a valid point".to_string())?,
            )
        }
        ("oct", _) => {
            let k = b64("k", &raw.k)?;
            if k.len() < MIN_HMAC_SECRET_BYTES {
                return Err(JwksError::WeakSecret { bytes: k.len() }.to_string());
            }
            KeyMaterial::Hmac(k)
        }
        ("EC", crv) | ("OKP", crv) => {
            return Err(format!("unsupported curve '{}'", crv.unwrap_or("none")))
        }
        (other, _) => return Err(format!("unsupported kty '{other}'")),
    };
    let key = Key::new(raw.kid.clone(), alg, material);
    if let Some(a) = alg {
        if let KeyMaterial::Hmac(k) = &key.material {
            if a.family() == KeyFamily::Hmac && k.len() < min_hmac_key_bytes(a) {
                return Err(format!(
                    "HMAC key is {} bytes; {a} needs at least {} (RFC 7518 3.2)",
                    k.len(),
                    min_hmac_key_bytes(a)
                ));
            }
        }
        if !key.accepts(a) {
            return Err(format!("alg '{a}' does not fit kty '{kty}'"));
        }
    }
    Ok(key)
}

/// A set of verification keys.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// A set holding one HMAC secret (raw bytes).
    pub fn from_hmac_secret(secret: &[u8]) -> Result<KeySet, JwksError> {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(JwksError::WeakSecret {
                bytes: secret.len(),
            });
        }
        Ok(KeySet {
            keys: vec![Key::new(None, None, KeyMaterial::Hmac(secret.to_vec()))],
        })
    }

    /// Parses a JWKS document (`{"keys": [...]}`) or a single JWK. Keys that cannot be used
    /// are skipped and described in the returned list; a set with no usable key is an error.
    pub fn from_jwks(json: &[u8]) -> Result<(KeySet, Vec<String>), JwksError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let items = match value.get("keys") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            Some(_) => return Err(JwksError::NoKeys),
            None if value.get("kty").is_some() => vec![value],
            None => return Err(JwksError::NoKeys),
        };
        if items.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let parsed = serde_json::from_value::<RawJwk>(item)
                .map_err(|e| format!("not a JWK object: {e}"))
                .and_then(|raw| {
                    let kid = raw.kid.clone();
                    parse_jwk(&raw).map_err(|e| match kid {
                        Some(k) => format!("kid '{k}': {e}"),
                        None => e,
                    })
                });
            match parsed {
                Ok(k) => keys.push(k),
                Err(e) => skipped.push(format!("key {i}: {e}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys(skipped));
        }
        Ok((KeySet { keys }, skipped))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids in the set, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    /// Whether the set holds a key with this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Checks the JWS signature with the keys that may verify it: those with the token's `kid`
    /// or without a kid (all keys when the token has none) whose family and pinned `alg` fit
    /// the token's algorithm.
    /// `allowed` restricts the algorithms further (empty: all).
    pub fn verify(&self, jws: &Jws<'_>, allowed: &[Algorithm]) -> Result<(), TokenError> {
        self.verify_using(jws, allowed, Backend::DEFAULT)
    }

    /// [`KeySet::verify`] with a given verifier.
    pub fn verify_using(
        &self,
        jws: &Jws<'_>,
        allowed: &[Algorithm],
        backend: Backend,
    ) -> Result<(), TokenError> {
        // an allow-list naming Ed25519 under either name admits both (RFC 9864)
        if !allowed.is_empty() && !allowed.iter().any(|a| a.admits(jws.alg)) {
            return Err(TokenError::Algorithm(jws.alg.name().to_string()));
        }
        if self.keys.is_empty() {
            return Err(TokenError::KeysUnavailable);
        }
        let mut by_kid = false;
        let mut tried = false;
        let mut digest = None;
        for key in &self.keys {
            // As Envoy's jwt_authn: a key without a kid may verify any token; a key with one
            // only tokens naming it.
            if let (Some(kid), Some(key_kid)) = (&jws.kid, &key.kid) {
                if key_kid != kid {
                    continue;
                }
            }
            by_kid = true;
            if !key.accepts(jws.alg) {
                continue;
            }
            tried = true;
            if verify_key(key, jws, &mut digest, backend) {
                return Ok(());
            }
        }
        match (&jws.kid, by_kid, tried) {
            (Some(_), false, _) => Err(TokenError::UnknownKid),
            (_, _, false) => Err(TokenError::NoMatchingKey),
            _ => Err(TokenError::BadSignature),
        }
    }
}

fn hash_of(alg: Algorithm) -> HashAlg {
    match alg {
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::HS384 | Algorithm::ES384 => {
            HashAlg::Sha384
        }
        Algorithm::RS512 | Algorithm::PS512 | Algorithm::HS512 | Algorithm::ES512 => {
            HashAlg::Sha512
        }
        _ => HashAlg::Sha256,
    }
}

fn digest_of(hash: HashAlg, data: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

fn hmac_verify(alg: Algorithm, key: &[u8], data: &[u8], sig: &[u8]) -> bool {
    // `verify_slice` compares in constant time.
    match alg {
        Algorithm::HS256 => Hmac::<Sha256>::new_from_slice(key)
            .map(|m| m.chain_update(data).verify_slice(sig).is_ok())
            .unwrap_or(false),
        Algorithm::HS384 => Hmac::<Sha384>::new_from_slice(key)
            .map(|m| m.chain_update(data).verify_slice(sig).is_ok())
            .unwrap_or(false),
        Algorithm::HS512 => Hmac::<Sha512>::new_from_slice(key)
            .map(|m| m.chain_update(data).verify_slice(sig).is_ok())
            .unwrap_or(false),
        _ => false,
    }
}

fn verify_key(key: &Key, jws: &Jws<'_>, digest: &mut Option<Vec<u8>>, backend: Backend) -> bool {
    #[cfg(feature = "ring")]
    if backend == Backend::Ring {
        let data = jws.signing_input.as_bytes();
        if let Some(ok) = key.native.verify(jws.alg, data, &jws.signature) {
            return ok;
        }
    }
    let _ = backend;
    verify_with(&key.material, jws, digest)
}

fn verify_with(material: &KeyMaterial, jws: &Jws<'_>, digest: &mut Option<Vec<u8>>) -> bool {
    let data = jws.signing_input.as_bytes();
    let sig = jws.signature.as_slice();
    match material {
        KeyMaterial::Hmac(k) => hmac_verify(jws.alg, k, data, sig),
        KeyMaterial::Rsa(k) => {
            let hash = hash_of(jws.alg);
            let d = digest.get_or_insert_with(|| digest_of(hash, data));
            match jws.alg {
                Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                    k.verify_pss(hash, d, sig)
                }
                _ => k.verify_pkcs1v15(hash, d, sig),
            }
        }
        KeyMaterial::P256(k) => {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(data, &s).is_ok())
                .unwrap_or(false)
        }
        KeyMaterial::P384(k) => {
            use p384::ecdsa::signature::Verifier;
            p384::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(data, &s).is_ok())
                .unwrap_or(false)
        }
        KeyMaterial::P521(k) => {
            use p521::ecdsa::signature::Verifier;
            p521::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(data, &s).is_ok())
                .unwrap_or(false)
        }
        KeyMaterial::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
            .map(|s| k.verify_strict(data, &s).is_ok())
            .unwrap_or(false),
    }
}
