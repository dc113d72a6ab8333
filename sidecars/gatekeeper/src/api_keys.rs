//! API keys: for services and scripts that have no OpenID Connect token. Each key has an id
//! (the caller's `sub` unless its claims say otherwise) and claims the policy sees like a
//! token's. Keys are kept as SHA-256 digests and compared in constant time; a presented key is
//! checked against every key, and no key is ever logged.
//!
//! From the environment (`EDGEGUARD_GATEKEEPER_API_KEYS`): `id=key,id2=key2` (claims: `sub`).
//! From a file (`--api-keys-file`, YAML):
//!
//! ```yaml
//! keys:
//!   - id: reporting-job
//!     key_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     claims: { roles: [reader], org_id: acme }
//!   - id: backfill
//!     key: "a-long-random-secret-at-least-16-bytes"
//! ```

use std::path::Path;

use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 16;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One key.
#[derive(Clone)]
pub struct ApiKey {
    pub id: String,
    digest: [u8; 32],
    /// The claims the policy sees (an object with at least `sub`).
    pub claims: Json,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", self.id)
    }
}

/// The configured keys.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

/// Why keys could not be loaded (never contains a key).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiKeyError(String);

fn claims_for(id: &str, extra: Option<Map<String, Json>>) -> Json {
    let mut claims = extra.unwrap_or_default();
    claims.entry("sub").or_insert_with(|| json!(id));
    Json::Object(claims)
}

fn check_id(id: &str, at: &str) -> Result<(), ApiKeyError> {
    if id.is_empty() || id.chars().any(|c| c.is_control() || c == ',' || c == '=') {
        return Err(ApiKeyError(format!(
            "{at}: the id must be non-empty, without ',', '=' or control characters"
        )));
    }
    Ok(())
}

fn check_key(key: &str, at: &str) -> Result<[u8; 32], ApiKeyError> {
    if key.len() < MIN_KEY_BYTES || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiKeyError(format!(
            "{at}: a key must be at least {MIN_KEY_BYTES} bytes without spaces (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(Sha256::digest(key.as_bytes()).into())
}

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds the keys of another set; an id given twice is refused.
    pub fn merge(&mut self, other: ApiKeys) -> Result<(), ApiKeyError> {
        for k in other.keys {
            if self.keys.iter().any(|x| x.id == k.id) {
                return Err(ApiKeyError(format!("API key id '{}' is given twice", k.id)));
            }
            self.keys.push(k);
        }
        Ok(())
    }

    /// `id=key,id2=key2` (the environment form).
    pub fn parse_list(list: &str) -> Result<ApiKeys, ApiKeyError> {
        let mut out = ApiKeys::default();
        for (i, entry) in list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let at = format!("EDGEGUARD_GATEKEEPER_API_KEYS entry {}", i + 1);
            let (id, key) = entry
                .split_once('=')
                .map(|(id, key)| (id.trim(), key.trim()))
                .ok_or_else(|| ApiKeyError(format!("{at}: expected id=key")))?;
            check_id(id, &at)?;
            let digest = check_key(key, &at)?;
            out.merge(ApiKeys {
                keys: vec![ApiKey {
                    id: id.to_string(),
                    digest,
                    claims: claims_for(id, None),
                }],
            })?;
        }
        Ok(out)
    }

    /// The YAML file form (see the module docs).
    pub fn parse_file_text(text: &str) -> Result<ApiKeys, ApiKeyError> {
        edgeguard_yaml_guard::check_depth(text, edgeguard_yaml_guard::MAX_DEPTH)
            .map_err(|e| ApiKeyError(format!("invalid YAML: {e}")))?;
        let doc: Json =
            serde_yaml_ng::from_str(text).map_err(|e| ApiKeyError(format!("invalid YAML: {e}")))?;
        let Some(items) = doc.get("keys").and_then(Json::as_array) else {
            return Err(ApiKeyError("expected a mapping with a 'keys' list".into()));
        };
        let mut out = ApiKeys::default();
        for (i, item) in items.iter().enumerate() {
            let at = format!("keys[{i}]");
            let Some(obj) = item.as_object() else {
                return Err(ApiKeyError(format!("{at}: expected a mapping")));
            };
            if let Some(unknown) = obj
                .keys()
                .find(|k| !["id", "key", "key_sha256", "claims"].contains(&k.as_str()))
            {
                return Err(ApiKeyError(format!(
                    "{at}.{unknown}: unknown field (expected id, key or key_sha256, claims)"
                )));
            }
            let id = obj
                .get("id")
                .and_then(Json::as_str)
                .ok_or_else(|| ApiKeyError(format!("{at}.id: required (a string)")))?;
            check_id(id, &format!("{at}.id"))?;
            let digest = match (obj.get("key"), obj.get("key_sha256")) {
                (Some(Json::String(k)), None) => check_key(k, &format!("{at}.key"))?,
                (None, Some(Json::String(h))) => (0..h.len())
                    .step_by(2)
                    .map(|j| h.get(j..j + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    .ok_or_else(|| {
                        ApiKeyError(format!("{at}.key_sha256: expected 64 hex digits"))
                    })?,
                _ => {
                    return Err(ApiKeyError(format!(
                        "{at}: needs exactly one of key, key_sha256 (a string)"
                    )))
                }
            };
            let extra = match obj.get("claims") {
                None | Some(Json::Null) => None,
                Some(Json::Object(m)) => Some(m.clone()),
                Some(_) => return Err(ApiKeyError(format!("{at}.claims: expected a mapping"))),
            };
            out.merge(ApiKeys {
                keys: vec![ApiKey {
                    id: id.to_string(),
                    digest,
                    claims: claims_for(id, extra),
                }],
            })?;
        }
        Ok(out)
    }

    pub fn load_file(path: &Path) -> Result<ApiKeys, ApiKeyError> {
        let bytes = edgeguard_yaml_guard::read_limited(path, MAX_FILE_BYTES)
            .map_err(|e| ApiKeyError(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ApiKeyError(format!("{}: not UTF-8", path.display())))?;
        ApiKeys::parse_file_text(&text).map_err(|e| ApiKeyError(format!("{}: {e}", path.display())))
    }

    /// The key matching `presented`, compared with every key in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut hit = None;
        for k in &self.keys {
            let equal: bool = k.digest.ct_eq(&digest).into();
            if equal && hit.is_none() {
                hit = Some(k);
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_list() {
        let keys = ApiKeys::parse_list("svc=0123456789abcdef0123, other = fedcba9876543210fedc ,")
            .unwrap();
        assert_eq!(keys.len(), 2);
        let k = keys.check(b"0123456789abcdef0123").unwrap();
        assert_eq!(k.id, "svc");
        assert_eq!(k.claims, json!({"sub": "svc"}));
        assert_eq!(keys.check(b"fedcba9876543210fedc").unwrap().id, "other");
        assert!(keys.check(b"0123456789abcdef012").is_none());
        assert!(keys.check(b"").is_none());
        let e = ApiKeys::parse_list("svc=short").unwrap_err().to_string();
        assert!(
            e.contains("at least 16 bytes") && !e.contains("short"),
            "{e}"
        );
        assert!(ApiKeys::parse_list("novalue").is_err());
        assert!(
            ApiKeys::parse_list("a=0123456789abcdef0123,a=0123456789abcdef0124")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(ApiKeys::parse_list("").unwrap().is_empty());
    }

    #[test]
    fn file_form() {
        let text = r#"
keys:
  - id: reporting
    key_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    claims: { roles: [reader], org_id: acme }
  - id: backfill
    key: "a-long-random-secret-000"
    claims: { sub: svc-backfill }
"#;
        let keys = ApiKeys::parse_file_text(text).unwrap();
        // sha256("test")
        let k = keys.check(b"test").unwrap();
        assert_eq!(
            k.claims,
            json!({"sub": "reporting", "roles": ["reader"], "org_id": "acme"})
        );
        assert_eq!(
            keys.check(b"a-long-random-secret-000").unwrap().claims["sub"],
            "svc-backfill"
        );
        assert!(!format!("{keys:?}").contains("secret"));
        for (bad, want) in [
            (
                "keys: [{id: a}]",
                "keys[0]: needs exactly one of key, key_sha256",
            ),
            (
                "keys: [{id: a, key: x, key_sha256: y}]",
                "needs exactly one",
            ),
            (
                "keys: [{id: a, key_sha256: abc}]",
                "keys[0].key_sha256: expected 64 hex digits",
            ),
            (
                "keys: [{key: 0123456789abcdef0123}]",
                "keys[0].id: required",
            ),
            (
                "keys: [{id: a, key: 0123456789abcdef0123, role: x}]",
                "keys[0].role: unknown field",
            ),
            (
                "keys: [{id: a, key: 0123456789abcdef0123, claims: [x]}]",
                "keys[0].claims: expected a mapping",
            ),
            ("nokeys: []", "expected a mapping with a 'keys' list"),
        ] {
            let e = ApiKeys::parse_file_text(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
