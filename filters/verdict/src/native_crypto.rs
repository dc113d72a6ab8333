//! Signature checks through `ring` (BoringSSL-derived, assembly-optimised, audited): the
//! native builds' verifiers. The wasm build keeps the pure-Rust ones (`ring` needs native code),
//! and the test suites run every JWS vector through both and require the same answer.
//!
//! `ring` hashes the signing input itself and enforces what RFC 7518 asks for: RSA moduli of
//! 2048 to 8192 bits, PSS with a salt as long as the hash, fixed-size `r || s` ECDSA.
//!
//! Ed25519 stays with `ed25519-dalek`'s `verify_strict` in every build: `ring` accepts
//! signatures under small-order public keys (a JWKS could carry one, and then anybody can forge
//! tokens for it), which `verify_strict` refuses; dalek is fast natively anyway.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::jwk::KeyMaterial;
use crate::token::Algorithm;

/// A key in the form `ring` takes (derived once, when the key is loaded).
#[derive(Clone, Debug)]
pub enum NativeKey {
    /// HMAC (constant-time, no public key) and Ed25519 (see the module docs): verified with
    /// the portable code.
    None,
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// The uncompressed SEC1 point (`04 || x || y`) of a P-256 or P-384 key.
    Point(Box<[u8]>),
}

impl NativeKey {
    pub fn of(material: &KeyMaterial) -> NativeKey {
        match material {
            KeyMaterial::Hmac(_) => NativeKey::None,
            KeyMaterial::Rsa(k) => {
                let e = k.exponent().to_be_bytes();
                let first = e.iter().position(|b| *b != 0).unwrap_or(e.len());
                NativeKey::Rsa {
                    n: k.modulus_be().into_boxed_slice(),
                    e: e.get(first..).unwrap_or_default().into(),
                }
            }
            KeyMaterial::P256(k) => NativeKey::Point(k.to_encoded_point(false).as_bytes().into()),
            KeyMaterial::P384(k) => NativeKey::Point(k.to_encoded_point(false).as_bytes().into()),
            // ring has no P-521: the portable p521 verifier serves both builds
            KeyMaterial::P521(_) | KeyMaterial::Ed25519(_) => NativeKey::None,
        }
    }

    /// Verifies `sig` over `data` for `alg`; `None` when this key has no native form (HMAC).
    pub fn verify(&self, alg: Algorithm, data: &[u8], sig: &[u8]) -> Option<bool> {
        let ok = match self {
            NativeKey::None => return None,
            NativeKey::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return Some(false),
                };
                RsaPublicKeyComponents {
                    n: &n[..],
                    e: &e[..],
                }
                .verify(params, data, sig)
                .is_ok()
            }
            NativeKey::Point(point) => {
                let algorithm: &dyn signature::VerificationAlgorithm = match alg {
                    Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => return Some(false),
                };
                UnparsedPublicKey::new(algorithm, &point[..])
                    .verify(data, sig)
                    .is_ok()
            }
        };
        Some(ok)
    }
}
