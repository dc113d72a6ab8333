//! Certificate-bound tokens (RFC 8705) for callers who present a client certificate.
//!
//! The gatekeeper speaks plain HTTP behind Envoy; Envoy terminates mutual TLS and forwards the
//! client certificate's details in `x-forwarded-client-cert` (XFCC). With
//! `forward_client_cert_details: SANITIZE_SET` Envoy drops whatever XFCC a client sent and sets
//! its own element, which always carries `Hash=<hex SHA-256 of the certificate's DER>`: exactly
//! the RFC 8705 `x5t#S256` thumbprint, hex instead of base64url. The header is trusted only
//! because nothing reaches the gatekeeper except through that Envoy.
//! The header is read by [`edgeguard_verdict::xfcc`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::ValueEnum;
use serde_json::{json, Value as Json};

use edgeguard_verdict::xfcc::{self, last_hash, XfccError};

use crate::refusal::{Reason, Refusal};

/// The header Envoy forwards the client certificate's details in.
pub const XFCC: &str = xfcc::HEADER;

/// Whether minted tokens are bound to the caller's client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BindTokens {
    /// Never: `x-forwarded-client-cert` is ignored, tokens are bearer tokens.
    #[default]
    Off,
    /// Bind to the certificate when the caller presented one; a bearer token otherwise.
    WhenPresented,
    /// Bind always: a caller without a client certificate gets a 401.
    Required,
}

impl BindTokens {
    pub fn as_str(self) -> &'static str {
        match self {
            BindTokens::Off => "off",
            BindTokens::WhenPresented => "when-presented",
            BindTokens::Required => "required",
        }
    }
}

/// The `cnf` claim binding a token to a certificate with this SHA-256.
pub fn cnf(hash: &[u8; 32]) -> Json {
    json!({"x5t#S256": URL_SAFE_NO_PAD.encode(hash)})
}

/// What `mode` makes of the request's XFCC headers: `Ok(Some(cnf))` to bind the token,
/// `Ok(None)` for a bearer token, a refusal when a certificate is required and absent (401) or
/// the header cannot be read (400: never a token bound to garbage).
pub fn binding(mode: BindTokens, headers: &axum::http::HeaderMap) -> Result<Option<Json>, Refusal> {
    if mode == BindTokens::Off {
        return Ok(None);
    }
    let values: Vec<_> = headers.get_all(XFCC).iter().collect();
    if values.is_empty() {
        return match mode {
            BindTokens::Required => Err(Refusal::new(
                Reason::ClientCertificateRequired,
                "a client certificate is required: tokens are bound to the caller's certificate (RFC 8705), and this request came without one",
            )),
            _ => Ok(None),
        };
    }
    // several header lines are one list, in order
    let mut joined = String::new();
    for v in values {
        let text = v.to_str().map_err(|_| bad_header(XfccError::NotUtf8))?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
    }
    let hash = last_hash(&joined).map_err(bad_header)?;
    Ok(Some(cnf(&hash)))
}

fn bad_header(e: XfccError) -> Refusal {
    Refusal::new(
        Reason::BadClientCertificate,
        format!("cannot bind the token to the client certificate: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const H1: &str = "4bb8a3a2f2f4ab4e8f4a6fbb5b3aa4f57f0b7d1f2d0d0f76f0c6b4a0d6e7c812";
    const H2: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn bytes(hex_str: &str) -> [u8; 32] {
        xfcc::hex32(hex_str).unwrap()
    }

    #[test]
    fn cnf_is_base64url_of_the_hash() {
        let c = cnf(&bytes(H2));
        assert_eq!(
            c,
            json!({"x5t#S256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE"})
        );
    }

    #[test]
    fn modes() {
        let mut h = HeaderMap::new();
        assert_eq!(binding(BindTokens::Off, &h), Ok(None));
        assert_eq!(binding(BindTokens::WhenPresented, &h), Ok(None));
        let r = binding(BindTokens::Required, &h).unwrap_err();
        assert_eq!(r.reason, Reason::ClientCertificateRequired);
        assert_eq!(r.reason.status(), 401);

        h.insert(XFCC, HeaderValue::from_static("garbage"));
        assert_eq!(binding(BindTokens::Off, &h), Ok(None));
        let r = binding(BindTokens::WhenPresented, &h).unwrap_err();
        assert_eq!(r.reason, Reason::BadClientCertificate);
        assert!(r.message.contains("without '='"), "{}", r.message);

        h.insert(XFCC, HeaderValue::from_str(&format!("Hash={H2}")).unwrap());
        h.append(XFCC, HeaderValue::from_str(&format!("Hash={H1}")).unwrap());
        assert_eq!(binding(BindTokens::Required, &h), Ok(Some(cnf(&bytes(H1)))));
    }
}
