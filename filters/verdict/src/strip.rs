//! Headers a component removes from every request before it decides: the headers *other*
//! filters or services own (portal-auth's `portal-*`/`rl-*` on a route only jwt-shape guards,
//! jwt-shape's `x-edgeguard-*` on the ext_authz path), so no route lets a client forge them.
//! Configured as a list of names; a trailing `*` makes a prefix (`"portal-*"`).

/// A validated list of exact names and prefixes (lower-case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderStrip {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

/// Why a pattern was refused: its index in the list and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub index: usize,
    pub message: String,
}

impl HeaderStrip {
    /// Validates the patterns: header-name characters, a trailing `*` for a prefix of at least
    /// two characters, never a header every request needs.
    pub fn parse(patterns: &[String]) -> Result<HeaderStrip, PatternError> {
        let mut strip = HeaderStrip::default();
        for (index, p) in patterns.iter().enumerate() {
            let err = |message: String| PatternError { index, message };
            let lower = p.trim().to_ascii_lowercase();
            let (name, prefix) = match lower.strip_suffix('*') {
                Some(n) => (n, true),
                None => (lower.as_str(), false),
            };
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&b));
            if !valid {
                return Err(err(format!(
                    "'{p}' is not a header name (or a prefix ending in '*')"
                )));
            }
            let essential = ["host", "content-length", "transfer-encoding", "connection"];
            if essential.contains(&name) || (prefix && name.len() < 2) {
                return Err(err(format!(
                    "'{p}' would remove headers every request needs"
                )));
            }
            if prefix {
                strip.prefixes.push(name.to_string());
            } else {
                strip.exact.push(name.to_string());
            }
        }
        Ok(strip)
    }

    /// Parses a comma-separated list (an environment variable).
    pub fn parse_list(list: &str) -> Result<HeaderStrip, PatternError> {
        let patterns: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        HeaderStrip::parse(&patterns)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The exact names (lower-case).
    pub fn exact(&self) -> &[String] {
        &self.exact
    }

    pub fn has_prefixes(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// Whether a header name is stripped (names compare case-insensitively).
    pub fn matches(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e.eq_ignore_ascii_case(name))
            || self.prefixes.iter().any(|p| {
                name.as_bytes()
                    .get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let s = HeaderStrip::parse_list(" Portal-*, rl-* ,x-edgeguard-sub,").unwrap();
        for name in [
            "portal-application-id",
            "Portal-Account-ID",
            "rl-user-limit-40",
            "X-Edgeguard-Sub",
        ] {
            assert!(s.matches(name), "{name}");
        }
        for name in ["portalx", "x-edgeguard-other", "rl", "authorization"] {
            assert!(!s.matches(name), "{name}");
        }
        assert_eq!(s.exact(), ["x-edgeguard-sub"]);
        assert!(s.has_prefixes());
        for bad in ["", "*", "a*b", "a b", "host", "x:y", "é", "p*"] {
            let e = HeaderStrip::parse(&["ok".into(), bad.to_string()]).unwrap_err();
            assert_eq!(e.index, 1, "{bad}");
        }
        assert!(HeaderStrip::parse_list("").unwrap().is_empty());
    }
}
