//! Query-string parsing with the decoding rules a Plug (Elixir) backend such as Electric uses:
//! `application/x-www-form-urlencoded`, `+` is a space, `%XX` is a byte, names and values are
//! decoded once and must be UTF-8. The raw text of every parameter is kept so a proxy can
//! forward exactly what it checked.

use std::borrow::Cow;
use std::fmt;

/// At most this many parameters are parsed; more is an error (bounds the work per request).
pub const MAX_PARAMS: usize = 256;

/// One `name=value` pair of a query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryParam<'a> {
    /// The segment as it appeared between `&`s, e.g. `params%5B1%5D=a+b`.
    pub raw: &'a str,
    /// The name before decoding.
    pub raw_name: &'a str,
    /// The decoded name.
    pub name: Cow<'a, str>,
    /// The decoded value (`""` when the segment has no `=`).
    pub value: Cow<'a, str>,
}

impl QueryParam<'_> {
    /// True when the raw name percent-encodes a character other than `[` or `]`
    /// (brackets are legitimately encoded by `URLSearchParams`, letters never are).
    pub fn name_has_encoded_letters(&self) -> bool {
        let bytes = self.raw_name.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes.get(i) {
                Some(b'%') => {
                    let hex = bytes.get(i + 1..i + 3).unwrap_or(&[]);
                    let decoded = decode_hex_pair(hex);
                    if !matches!(decoded, Some(b'[') | Some(b']')) {
                        return true;
                    }
                    i += 3;
                }
                Some(b'+') => return true,
                _ => i += 1,
            }
        }
        false
    }
}

/// Why a query string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    BadPercentEncoding { segment: String },
    /// Decoded bytes are not UTF-8.
    NotUtf8 { segment: String },
    /// More than [`MAX_PARAMS`] parameters.
    TooManyParams,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::BadPercentEncoding { segment } => {
                write!(
                    f,
                    "malformed percent-encoding in query parameter '{segment}'"
                )
            }
            QueryError::NotUtf8 { segment } => {
                write!(
                    f,
                    "query parameter '{segment}' is not valid UTF-8 once decoded"
                )
            }
            QueryError::TooManyParams => {
                write!(f, "query string has more than {MAX_PARAMS} parameters")
            }
        }
    }
}

impl std::error::Error for QueryError {}

fn decode_hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_hex_pair(hex: &[u8]) -> Option<u8> {
    match hex {
        [h, l] => Some(decode_hex_digit(*h)? << 4 | decode_hex_digit(*l)?),
        _ => None,
    }
}

/// Decodes one form-urlencoded component. Borrows when nothing needs decoding.
pub fn decode_component(s: &str) -> Result<Cow<'_, str>, QueryError> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).unwrap_or(&[]);
                let decoded =
                    decode_hex_pair(hex).ok_or_else(|| QueryError::BadPercentEncoding {
                        segment: printable(s),
                    })?;
                out.push(decoded);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| QueryError::NotUtf8 {
            segment: printable(s),
        })
}

/// A short, log-safe rendering of client input for error messages.
fn printable(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().take(MAX).filter(|c| !c.is_control()).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// Parses a query string (without the leading `?`). Empty segments are skipped.
pub fn parse_query(query: &str) -> Result<Vec<QueryParam<'_>>, QueryError> {
    let mut params = Vec::new();
    for raw in query.split('&') {
        if raw.is_empty() {
            continue;
        }
        if params.len() == MAX_PARAMS {
            return Err(QueryError::TooManyParams);
        }
        let (raw_name, raw_value) = match raw.split_once('=') {
            Some((n, v)) => (n, v),
            None => (raw, ""),
        };
        let name = decode_component(raw_name)?;
        let value = decode_component(raw_value)?;
        params.push(QueryParam {
            raw,
            raw_name,
            name,
            value,
        });
    }
    Ok(params)
}

/// Splits a request path into the path and the query string (without `?`).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// Characters left alone when encoding a query component (the unreserved set of RFC 3986).
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query component.
pub fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_plus_and_percent() {
        let p = parse_query("table=items&where=id+%3D+1&params%5B1%5D=a%2Bb").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "table");
        assert_eq!(p[1].value, "id = 1");
        assert_eq!(p[2].name, "params[1]");
        assert_eq!(p[2].value, "a+b");
        assert!(!p[2].name_has_encoded_letters());
    }

    #[test]
    fn flags_encoded_letters_in_names() {
        let p = parse_query("%74able=x&ta%62le=y&tab+le=z&%5Bx%5D=1").unwrap();
        assert!(p[0].name_has_encoded_letters());
        assert_eq!(p[0].name, "table");
        assert!(p[1].name_has_encoded_letters());
        assert!(p[2].name_has_encoded_letters());
        assert!(!p[3].name_has_encoded_letters());
    }

    #[test]
    fn segments_without_value_and_empty_segments() {
        let p = parse_query("&live&&offset=-1&").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "live");
        assert_eq!(p[0].value, "");
        assert_eq!(p[1].raw, "offset=-1");
    }

    #[test]
    fn rejects_bad_percent_and_utf8() {
        assert!(matches!(
            parse_query("where=%zz"),
            Err(QueryError::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse_query("where=%4"),
            Err(QueryError::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse_query("where=%"),
            Err(QueryError::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse_query("where=%ff%fe"),
            Err(QueryError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn bounds_the_number_of_params() {
        let q = vec!["a=1"; MAX_PARAMS + 1].join("&");
        assert_eq!(parse_query(&q), Err(QueryError::TooManyParams));
        let q = vec!["a=1"; MAX_PARAMS].join("&");
        assert_eq!(parse_query(&q).unwrap().len(), MAX_PARAMS);
    }

    #[test]
    fn split_path_works() {
        assert_eq!(split_path("/v1/shape?x=1?y"), ("/v1/shape", Some("x=1?y")));
        assert_eq!(split_path("/v1/shape"), ("/v1/shape", None));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(s in "\\PC*") {
            let enc = encode_component(&s);
            prop_assert_eq!(decode_component(&enc).unwrap(), s);
        }

        #[test]
        fn parse_never_panics_and_keeps_raw(q in "[a-z%+=&0-9A-F\\[\\]]{0,64}") {
            if let Ok(params) = parse_query(&q) {
                for p in params {
                    prop_assert!(q.contains(p.raw));
                    prop_assert!(!p.raw.is_empty());
                }
            }
        }

        #[test]
        fn pairs_round_trip(pairs in proptest::collection::vec(("\\PC{1,8}", "\\PC{0,8}"), 0..10)) {
            let q = pairs.iter().map(|(n, v)| format!("{}={}", encode_component(n), encode_component(v))).collect::<Vec<_>>().join("&");
            let parsed = parse_query(&q).unwrap();
            prop_assert_eq!(parsed.len(), pairs.len());
            for (p, (n, v)) in parsed.iter().zip(pairs.iter()) {
                prop_assert_eq!(&p.name, n);
                prop_assert_eq!(&p.value, v);
            }
        }
    }
}
