//! The DB-less YAML file: format, parsing, validation. See the crate docs for the format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgeguard_verdict::portal::{key_digest, AppAuth, KeyDigest, PortalApp};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::snapshot::{count_accounts, AppMap, Interner, UsageMap};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    accounts: Vec<AccountEntry>,
    #[serde(default)]
    apps: Vec<AppEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    id: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    monthly_user_limit: u64,
    #[serde(default)]
    monthly_usage: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    id: String,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    secret_key: Option<String>,
    #[serde(default)]
    secret_key_sha256: Option<String>,
    #[serde(default)]
    secret_key_required: Option<bool>,
}

/// A valid portal apps file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlData {
    pub apps: AppMap,
    /// `monthly_usage` of the accounts that set it.
    pub usage: UsageMap,
    /// Accounts declared in the file.
    pub accounts: usize,
    /// Distinct accounts that have apps.
    pub accounts_with_apps: usize,
    /// Apps that require a key but have none (denied).
    pub missing_keys: Vec<String>,
}

/// Why a portal apps file was rejected. Every message names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("cannot read portal apps file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("portal apps file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl YamlError {
    fn invalid(path: &Path, message: impl Into<String>) -> YamlError {
        YamlError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads and validates a portal apps file.
pub fn load_yaml(path: &Path) -> Result<YamlData, YamlError> {
    let text = std::fs::read_to_string(path).map_err(|source| YamlError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(&text, path)
}

fn parse_hex_digest(s: &str) -> Option<KeyDigest> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Validates a portal apps document (`path` only names it in errors).
pub fn parse_yaml(text: &str, path: &Path) -> Result<YamlData, YamlError> {
    if text.trim().is_empty() {
        return Err(YamlError::invalid(
            path,
            "the file is empty (write `apps: []` for a store without apps)",
        ));
    }
    let doc: FileDoc =
        serde_yaml_ng::from_str(text).map_err(|e| YamlError::invalid(path, e.to_string()))?;

    let mut interner = Interner::default();
    // id → (index in the file, id, plan, limit)
    type Account = (usize, Arc<str>, Arc<str>, u64);
    let mut accounts: FxHashMap<&str, Account> = FxHashMap::default();
    let mut usage = UsageMap::default();
    for (i, a) in doc.accounts.iter().enumerate() {
        if a.id.is_empty() {
            return Err(YamlError::invalid(path, format!("accounts[{i}]: empty id")));
        }
        if let Some((first, ..)) = accounts.get(a.id.as_str()) {
            return Err(YamlError::invalid(
                path,
                format!(
                    "accounts[{i}]: duplicate account id {:?} (first defined at accounts[{first}])",
                    a.id
                ),
            ));
        }
        let id = interner.get(&a.id);
        if let Some(u) = a.monthly_usage {
            usage.insert(id.clone(), u);
        }
        accounts.insert(&a.id, (i, id, interner.get(&a.plan), a.monthly_user_limit));
    }

    let mut apps = AppMap::default();
    let mut first_index: FxHashMap<&str, usize> = FxHashMap::default();
    let mut missing_keys = Vec::new();
    for (i, e) in doc.apps.iter().enumerate() {
        let at = || format!("apps[{i}] (id {:?})", e.id);
        if e.id.is_empty() {
            return Err(YamlError::invalid(path, format!("apps[{i}]: empty id")));
        }
        if let Some(first) = first_index.get(e.id.as_str()) {
            return Err(YamlError::invalid(
                path,
                format!(
                    "apps[{i}]: duplicate app id {:?} (first defined at apps[{first}])",
                    e.id
                ),
            ));
        }
        first_index.insert(&e.id, i);
        let (account_id, plan, limit) = match &e.account {
            None => (interner.get(""), interner.get(""), 0),
            Some(acc) => match accounts.get(acc.as_str()) {
                Some((_, id, plan, limit)) => (id.clone(), plan.clone(), *limit),
                None => {
                    return Err(YamlError::invalid(
                        path,
                        format!(
                            "{}: unknown account {acc:?} (declare it under `accounts:`)",
                            at()
                        ),
                    ))
                }
            },
        };
        let digest = match (&e.secret_key, &e.secret_key_sha256) {
            (Some(_), Some(_)) => {
                return Err(YamlError::invalid(
                    path,
                    format!(
                        "{}: set either secret_key or secret_key_sha256, not both",
                        at()
                    ),
                ))
            }
            (Some(k), None) if !k.is_empty() => Some(key_digest(k)),
            (None, Some(h)) => Some(parse_hex_digest(h).ok_or_else(|| {
                YamlError::invalid(
                    path,
                    format!("{}: secret_key_sha256 must be 64 hex digits", at()),
                )
            })?),
            _ => None,
        };
        let key_given = e.secret_key.is_some() || e.secret_key_sha256.is_some();
        let required = e.secret_key_required.unwrap_or(key_given);
        let auth = match (required, digest) {
            (false, _) => AppAuth::Public,
            (true, Some(digest)) => AppAuth::ApiKey { digest },
            (true, None) => {
                missing_keys.push(e.id.clone());
                AppAuth::MissingKey
            }
        };
        apps.insert(
            Arc::from(e.id.as_str()),
            PortalApp {
                account_id,
                plan,
                auth,
                monthly_user_limit: limit,
            },
        );
    }
    let accounts_with_apps = count_accounts(apps.values());
    Ok(YamlData {
        apps,
        usage,
        accounts: doc.accounts.len(),
        accounts_with_apps,
        missing_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<YamlData, String> {
        parse_yaml(text, Path::new("apps.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn format() {
        let d = parse(
            r#"
accounts:
  - {id: acc1, plan: PLAN_FREE, monthly_usage: 7}
  - {id: acc2, plan: PLAN_UNLIMITED, monthly_user_limit: 40000000}
apps:
  - {id: pub, account: acc1}
  - {id: keyed, account: acc2, secret_key: s3cret}
  - {id: keyed-not-required, account: acc2, secret_key: s3cret, secret_key_required: false}
  - {id: hashed, secret_key_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
  - {id: nokey, account: acc1, secret_key_required: true}
  - {id: emptykey, account: acc1, secret_key: ""}
"#,
        )
        .unwrap();
        assert_eq!(d.apps.len(), 6);
        assert_eq!((d.accounts, d.accounts_with_apps), (2, 2));
        assert_eq!(d.usage.get("acc1"), Some(&7));
        let keyed = &d.apps["keyed"];
        assert_eq!(
            keyed.auth,
            AppAuth::ApiKey {
                digest: key_digest("s3cret")
            }
        );
        assert_eq!(
            (&*keyed.plan, keyed.monthly_user_limit),
            ("PLAN_UNLIMITED", 40_000_000)
        );
        assert_eq!(d.apps["keyed-not-required"].auth, AppAuth::Public);
        assert_eq!(
            d.apps["hashed"].auth,
            AppAuth::ApiKey {
                digest: key_digest("")
            }
        );
        assert_eq!(&*d.apps["hashed"].account_id, "");
        assert_eq!(d.apps["nokey"].auth, AppAuth::MissingKey);
        assert_eq!(d.apps["emptykey"].auth, AppAuth::MissingKey);
        assert_eq!(d.missing_keys, vec!["nokey", "emptykey"]);
    }

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            ("", "the file is empty"),
            (
                "apps: [{id: a}, {id: b}, {id: a}]",
                r#"apps[2]: duplicate app id "a" (first defined at apps[0])"#,
            ),
            (
                "accounts: [{id: x}, {id: x}]",
                r#"accounts[1]: duplicate account id "x" (first defined at accounts[0])"#,
            ),
            (
                "apps: [{id: a, account: nope}]",
                r#"apps[0] (id "a"): unknown account "nope""#,
            ),
            ("apps: [{id: a, secret: x}]", "unknown field `secret`"),
            (
                "accounts: [{id: x, monthly_user_limit: -1}]",
                "monthly_user_limit",
            ),
            (
                "apps: [{id: a, secret_key: k, secret_key_sha256: k}]",
                "not both",
            ),
            ("apps: [{id: a, secret_key_sha256: abc}]", "64 hex digits"),
            ("apps: [{id: ''}]", "apps[0]: empty id"),
            ("apps: {id: a}", "apps"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("portal apps file apps.yaml: "), "{e}");
        }
    }
}
