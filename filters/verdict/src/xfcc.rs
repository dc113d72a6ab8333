//! Envoy's `x-forwarded-client-cert` (XFCC) header: the client certificate a proxy in front
//! verified, for services behind it that do not see the TLS connection themselves.
//!
//! With `forward_client_cert_details: SANITIZE_SET` Envoy drops whatever XFCC a client sent and
//! sets its own element, which always carries `Hash=<hex SHA-256 of the certificate's DER>`
//! (the RFC 8705 `x5t#S256` thumbprint and the device fingerprint `edgeguard enroll` records).
//! The header is to be trusted only where nothing reaches the reader except through that proxy.
//!
//! The format as Envoy documents it: elements separated by `,` (one per proxy, the nearest
//! last), `key=value` pairs by `;`, keys case-insensitive, a value containing `,`, `;` or `=`
//! in double quotes with `\"` for a quote inside.

use std::fmt;

/// The header's name (lower case).
pub const HEADER: &str = "x-forwarded-client-cert";

/// Why an XFCC header cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XfccError {
    NotUtf8,
    Empty,
    UnterminatedQuote,
    /// A pair without `=` (its first 40 characters).
    NotAPair(String),
    NoHash,
    DuplicateHash,
    BadHash,
}

impl fmt::Display for XfccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XfccError::NotUtf8 => f.write_str("x-forwarded-client-cert is not valid UTF-8"),
            XfccError::Empty => f.write_str("x-forwarded-client-cert is empty"),
            XfccError::UnterminatedQuote => {
                f.write_str("x-forwarded-client-cert has an unterminated quoted value")
            }
            XfccError::NotAPair(p) => {
                write!(f, "x-forwarded-client-cert has a pair without '=': '{p}'")
            }
            XfccError::NoHash => f.write_str("x-forwarded-client-cert's last element has no Hash"),
            XfccError::DuplicateHash => {
                f.write_str("x-forwarded-client-cert's last element has more than one Hash")
            }
            XfccError::BadHash => {
                f.write_str("x-forwarded-client-cert's Hash is not 64 hex digits (a SHA-256)")
            }
        }
    }
}

impl std::error::Error for XfccError {}

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
pub fn hex32(s: &str) -> Option<[u8; 32]> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    proptest::proptest! {
        #[test]
        fn hostile_headers_never_panic(s in "\\PC{0,200}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = last_hash(&s);
            let _ = parse(&s);
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = last_hash(&lossy);
        }

        #[test]
        fn a_hash_survives_any_quoted_subject(subject in "[^\\\\\"]{0,40}", h in "[0-9a-f]{64}") {
            let v = format!("By=spiffe://a;Subject=\"{subject}\";Hash={h}");
            proptest::prop_assert_eq!(last_hash(&v).ok(), hex32(&h));
        }
    }
}
