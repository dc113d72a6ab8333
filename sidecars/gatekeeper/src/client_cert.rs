//! Certificate-bound tokens (RFC 8705) for callers who present a client certificate.
//!
//! The gatekeeper speaks plain HTTP behind Envoy; Envoy terminates mutual TLS and forwards the
//! client certificate's details in `x-forwarded-client-cert` (XFCC). With
//! `forward_client_cert_details: SANITIZE_SET` Envoy drops whatever XFCC a client sent and sets
//! its own element, which always carries `Hash=<hex SHA-256 of the certificate's DER>`: exactly
//! the RFC 8705 `x5t#S256` thumbprint, hex instead of base64url. The header is trusted only
//! because nothing reaches the gatekeeper except through that Envoy.
//!
//! XFCC as Envoy documents it: elements separated by `,` (one per proxy, the nearest last),
//! `key=value` pairs by `;`, keys case-insensitive, a value containing `,`, `;` or `=` in double
//! quotes with `\"` for a quote inside.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::ValueEnum;
use serde_json::{json, Value as Json};

use crate::refusal::{Reason, Refusal};

/// The header Envoy forwards the client certificate's details in.
pub const XFCC: &str = "x-forwarded-client-cert";

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

/// Why an XFCC header cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error("x-forwarded-client-cert is not valid UTF-8")]
    NotUtf8,
    #[error("x-forwarded-client-cert is empty")]
    Empty,
    #[error("x-forwarded-client-cert has an unterminated quoted value")]
    UnterminatedQuote,
    #[error("x-forwarded-client-cert has a pair without '=': '{0}'")]
    NotAPair(String),
    #[error("x-forwarded-client-cert's last element has no Hash")]
    NoHash,
    #[error("x-forwarded-client-cert's last element has more than one Hash")]
    DuplicateHash,
    #[error("x-forwarded-client-cert's Hash is not 64 hex digits (a SHA-256)")]
    BadHash,
}

/// Splits `s` at `sep` outside double quotes (a `\` inside quotes escapes the next character).
fn split_unquoted(s: &str, sep: char) -> Result<Vec<&str>, XfccError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted || escaped {
        return Err(XfccError::UnterminatedQuote);
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A value without its quotes (`"a\"b"` is `a"b`).
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `key=value` pairs of every element of an XFCC header value, keys lower-cased.
pub fn parse(header: &str) -> Result<Vec<Vec<(String, String)>>, XfccError> {
    if header.trim().is_empty() {
        return Err(XfccError::Empty);
    }
    let mut elements = Vec::new();
    for element in split_unquoted(header, ',')? {
        let mut pairs = Vec::new();
        for pair in split_unquoted(element, ';')? {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            // the value is everything after the first unquoted `=`
            let key = split_unquoted(pair, '=')?
                .into_iter()
                .next()
                .filter(|k| k.len() < pair.len())
                .ok_or_else(|| XfccError::NotAPair(pair.chars().take(40).collect()))?;
            let value = &pair[key.len() + 1..];
            pairs.push((key.trim().to_ascii_lowercase(), unquote(value.trim())));
        }
        elements.push(pairs);
    }
    Ok(elements)
}

/// The certificate's SHA-256 from the last XFCC element (the one the nearest Envoy set).
pub fn last_hash(header: &str) -> Result<[u8; 32], XfccError> {
    let elements = parse(header)?;
    let last = elements.last().ok_or(XfccError::Empty)?;
    let mut hashes = last.iter().filter(|(k, _)| k == "hash").map(|(_, v)| v);
    let hash = hashes.next().ok_or(XfccError::NoHash)?;
    if hashes.next().is_some() {
        return Err(XfccError::DuplicateHash);
    }
    hex32(hash).ok_or(XfccError::BadHash)
}

/// 64 hex digits (either case) as 32 bytes.
fn hex32(s: &str) -> Option<[u8; 32]> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
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
        hex32(hex_str).unwrap()
    }

    #[test]
    fn envoy_examples_parse() {
        // Envoy's documented examples
        let v = format!(
            r#"By=http://frontend.lyft.com;Hash={H1};Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com"#
        );
        assert_eq!(last_hash(&v), Ok(bytes(H1)));
        let two = format!(
            r#"By=http://frontend.lyft.com;Hash={H2};URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash={H1};URI=http://frontend.lyft.com"#
        );
        assert_eq!(last_hash(&two), Ok(bytes(H1)));
        let p = parse(&two).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0][1], ("hash".into(), H2.into()));
    }

    #[test]
    fn quoted_values_may_hold_separators() {
        let v = format!(
            r#"Subject="CN=a,O=\"x;y\"";hash={H1};URI=spiffe://edge/device/1;DNS=a.example"#
        );
        let p = parse(&v).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0][0], ("subject".into(), r#"CN=a,O="x;y""#.into()));
        assert_eq!(last_hash(&v), Ok(bytes(H1)));
        // the nearest element wins even when an earlier one quotes a comma
        let v = format!(r#"Hash={H2};Subject="CN=x,O=y",Hash={H1}"#);
        assert_eq!(last_hash(&v), Ok(bytes(H1)));
    }

    #[test]
    fn garbage_is_refused() {
        for (v, e) in [
            ("", XfccError::Empty),
            ("   ", XfccError::Empty),
            ("Hash=\"abc", XfccError::UnterminatedQuote),
            ("Hash", XfccError::NotAPair("Hash".into())),
            ("By=x", XfccError::NoHash),
            ("Hash=zz", XfccError::BadHash),
            (&format!("Hash={H1}00"), XfccError::BadHash),
            (&format!("Hash={}", &H1[..62]), XfccError::BadHash),
            (&format!("Hash=\"{H1} \""), XfccError::BadHash),
            (&format!("Hash={H1};Hash={H2}"), XfccError::DuplicateHash),
            // a hash only in an earlier element does not count for the last one
            (&format!("Hash={H1},By=x"), XfccError::NoHash),
            (&format!("Hash={H1},"), XfccError::NoHash),
        ] {
            assert_eq!(last_hash(v), Err(e), "{v:?}");
        }
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
