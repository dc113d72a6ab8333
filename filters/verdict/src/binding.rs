//! Certificate-bound access tokens (RFC 8705 section 3): a token whose `cnf` claim carries
//! `x5t#S256`, the base64url (unpadded) SHA-256 of the DER of the client certificate it was
//! issued to, may only be used on a mutual-TLS connection whose client certificate has that
//! thumbprint.
//!
//! What is implemented (the resource-server side of RFC 8705 3 and 3.1):
//! - the thumbprint of the certificate the client presented in the TLS handshake (as the proxy
//!   terminating TLS computed it) is compared, in constant time, with `cnf.x5t#S256`; a
//!   mismatch, or no certificate at all, refuses the request with 401 `invalid_token`;
//! - `cnf` must be a JSON object and `x5t#S256` a string of exactly 43 base64url characters
//!   without padding (32 bytes, canonical encoding); anything else is 401;
//! - `cnf` holding a confirmation method other than `x5t#S256` (`jkt`, `jwk`, `kid`, ...) is
//!   refused: the token was meant to be bound to a key this code cannot check, and treating it
//!   as a bearer token would open what the issuer closed (RFC 7800 3 leaves unknown methods to
//!   the recipient; failing closed is the safe reading);
//! - a provider may require bound tokens: a token without `cnf.x5t#S256` is then refused
//!   (RFC 8705 3: "the protected resource MUST ... reject" tokens not bound to the
//!   certificate when it requires binding). Without that option a token without `cnf` is a
//!   plain bearer token, as before.
//!
//! Only the thumbprint binding is checked here: that the certificate chains to a trusted CA is
//! the TLS layer's job (Envoy's `require_client_certificate` + `validation_context`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::token::TokenError;

/// The confirmation-method member of `cnf` for certificate thumbprints.
pub const X5T_S256: &str = "x5t#S256";

/// A SHA-256 certificate thumbprint (of the certificate's DER).
pub type Thumbprint = [u8; 32];

/// The certificate thumbprint a verified token is bound to: `Ok(None)` for an unbound token
/// (refused with [`TokenError::Unbound`] when `require_bound` is set), `Err` for a malformed or
/// unsupported `cnf`.
pub fn confirmation(claims: &Value, require_bound: bool) -> Result<Option<Thumbprint>, TokenError> {
    let cnf = match claims.get("cnf") {
        None | Some(Value::Null) => {
            return if require_bound {
                Err(TokenError::Unbound)
            } else {
                Ok(None)
            }
        }
        Some(Value::Object(cnf)) => cnf,
        Some(_) => {
            return Err(TokenError::ClaimType {
                claim: "cnf".into(),
                expected: "a JSON object",
            })
        }
    };
    if let Some(other) = cnf.keys().find(|k| k.as_str() != X5T_S256) {
        return Err(TokenError::UnsupportedConfirmation(
            other.chars().take(32).filter(|c| !c.is_control()).collect(),
        ));
    }
    let Some(value) = cnf.get(X5T_S256) else {
        // an empty `cnf` object binds to nothing
        return if require_bound {
            Err(TokenError::Unbound)
        } else {
            Err(TokenError::ClaimType {
                claim: "cnf".into(),
                expected: "an object with an x5t#S256 member",
            })
        };
    };
    let bad = || TokenError::ClaimType {
        claim: "cnf.x5t#S256".into(),
        expected: "the unpadded base64url SHA-256 (32 bytes) of a certificate",
    };
    let Value::String(text) = value else {
        return Err(bad());
    };
    if text.len() != 43 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    Thumbprint::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|_| bad())
}

/// Checks a bound token against the client certificate of the connection (`presented`: its
/// SHA-256 thumbprint, `None` when the client presented none). Constant time in the bytes.
pub fn check(bound: &Thumbprint, presented: Option<&Thumbprint>) -> Result<(), TokenError> {
    let Some(presented) = presented else {
        return Err(TokenError::NoClientCertificate);
    };
    if bool::from(bound.ct_eq(presented)) {
        Ok(())
    } else {
        Err(TokenError::CertificateMismatch)
    }
}

/// The thumbprint in the hex form Envoy exposes (`connection.sha256_peer_certificate_digest`:
/// 64 hex digits, lower case; upper case accepted). `None` for anything else, the empty string
/// Envoy gives when no certificate was presented included.
pub fn thumbprint_from_hex(hex: &[u8]) -> Option<Thumbprint> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (pair.first().copied()?, pair.get(1).copied()?);
        *o = (digit(hi)? << 4) | digit(lo)?;
    }
    Some(out)
}

/// The thumbprint of a certificate's DER.
pub fn thumbprint_of_der(der: &[u8]) -> Thumbprint {
    Sha256::digest(der).into()
}

/// The `cnf.x5t#S256` value for a thumbprint (unpadded base64url).
pub fn x5t_s256(thumbprint: &Thumbprint) -> String {
    URL_SAFE_NO_PAD.encode(thumbprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: Thumbprint = [7u8; 32];

    #[test]
    fn bound_tokens_need_the_matching_certificate() {
        let claims = json!({"sub": "d1", "cnf": {"x5t#S256": x5t_s256(&T)}});
        let bound = confirmation(&claims, false).unwrap().unwrap();
        assert_eq!(bound, T);
        assert_eq!(check(&bound, Some(&T)), Ok(()));
        let mut other = T;
        other[31] ^= 1;
        assert_eq!(
            check(&bound, Some(&other)),
            Err(TokenError::CertificateMismatch)
        );
        assert_eq!(check(&bound, None), Err(TokenError::NoClientCertificate));
        for e in [
            TokenError::CertificateMismatch,
            TokenError::NoClientCertificate,
        ] {
            assert!(e.to_string().contains("x5t#S256"), "{e}");
        }
    }

    #[test]
    fn unbound_tokens_and_the_requirement() {
        for claims in [json!({"sub": "x"}), json!({"sub": "x", "cnf": null})] {
            assert_eq!(confirmation(&claims, false), Ok(None));
            assert_eq!(confirmation(&claims, true), Err(TokenError::Unbound));
        }
        assert_eq!(
            confirmation(&json!({"cnf": {}}), true),
            Err(TokenError::Unbound)
        );
        assert!(matches!(
            confirmation(&json!({"cnf": {}}), false),
            Err(TokenError::ClaimType { .. })
        ));
        // bound tokens pass the requirement
        let claims = json!({"cnf": {"x5t#S256": x5t_s256(&T)}});
        assert_eq!(confirmation(&claims, true), Ok(Some(T)));
    }

    #[test]
    fn malformed_cnf_is_refused() {
        let padded = format!("{}=", x5t_s256(&T));
        let standard = base64::engine::general_purpose::STANDARD_NO_PAD.encode([0xfbu8; 32]);
        let short = URL_SAFE_NO_PAD.encode([1u8; 31]);
        let long = URL_SAFE_NO_PAD.encode([1u8; 33]);
        // 43 characters whose last one carries bits past the 32 bytes (not canonical)
        let mut noncanonical = x5t_s256(&[0u8; 32]);
        noncanonical.pop();
        noncanonical.push('B');
        for cnf in [
            json!("abc"),
            json!(["x5t#S256"]),
            json!(42),
            json!({"x5t#S256": 1}),
            json!({"x5t#S256": null}),
            json!({"x5t#S256": padded}),
            json!({"x5t#S256": standard}),
            json!({"x5t#S256": short}),
            json!({"x5t#S256": long}),
            json!({"x5t#S256": noncanonical}),
            json!({"x5t#S256": ""}),
            json!({"x5t#S256": hex_of(&T)}),
        ] {
            let claims = json!({ "cnf": cnf });
            for require in [false, true] {
                let e = confirmation(&claims, require).unwrap_err();
                assert_eq!(e.reason(), "claim_type", "{cnf} -> {e}");
            }
        }
        assert_eq!(
            confirmation(
                &json!({"cnf": {"jkt": "abc", "x5t#S256": x5t_s256(&T)}}),
                false
            ),
            Err(TokenError::UnsupportedConfirmation("jkt".into()))
        );
        assert_eq!(
            confirmation(&json!({"cnf": {"jwk": {}}}), false)
                .unwrap_err()
                .reason(),
            "unsupported_cnf"
        );
    }

    fn hex_of(t: &Thumbprint) -> String {
        t.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn envoy_hex_digests() {
        let t: Thumbprint = core::array::from_fn(|i| (i * 37 + 5) as u8);
        let hex = hex_of(&t);
        assert_eq!(thumbprint_from_hex(hex.as_bytes()), Some(t));
        assert_eq!(thumbprint_from_hex(hex.to_uppercase().as_bytes()), Some(t));
        assert_eq!(thumbprint_from_hex(b""), None);
        assert_eq!(thumbprint_from_hex(&hex.as_bytes()[..62]), None);
        let mut bad = hex.into_bytes();
        bad[10] = b'g';
        assert_eq!(thumbprint_from_hex(&bad), None);
        bad[10] = 0xff;
        assert_eq!(thumbprint_from_hex(&bad), None);
        assert_eq!(thumbprint_from_hex(&[b'a'; 65]), None);
    }

    #[test]
    fn thumbprint_of_der_is_sha256() {
        // SHA-256("abc")
        assert_eq!(
            hex_of(&thumbprint_of_der(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            x5t_s256(&thumbprint_of_der(b"abc")),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest::proptest! {
        #[test]
        fn cnf_parsing_never_panics(s in "\\PC{0,64}") {
            let _ = confirmation(&json!({"cnf": {"x5t#S256": s.clone()}}), true);
            let _ = thumbprint_from_hex(s.as_bytes());
        }
    }
}
