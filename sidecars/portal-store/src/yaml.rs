//! The DB-less YAML file: format, parsing, validation. See the crate docs for the format.
//!
//! A file written in place may be read while only part of it is written, or stay cut short
//! (a writer died, a disk filled up). No cut of a valid file may be accepted as something
//! *more open* than the whole file, so:
//! - the file must end with YAML's document end marker, a line `...`: any proper prefix of
//!   a file that ends with its only `...` line lacks it, so every cut is refused, whatever
//!   line it lost (a `secret_key`, a `monthly_usage`, a `plan`, an `account`) or wherever it
//!   cut a key's value;
//! - an app is public only when it says so (`public: true`, or `secret_key_required: false`):
//!   an entry with no key and no such statement is refused, since it may have lost its key;
//! - the watcher reads the file only once it has settled (see `source_yaml`).
//!
//! Size (64 MiB) and nesting depth (64) are bounded before parsing ([`edgeguard_yaml_guard`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgeguard_verdict::device::ClientAuth;
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
    #[serde(default)]
    public: Option<bool>,
    /// `key` (default), `certificate` or `either`.
    #[serde(default)]
    client_auth: Option<String>,
}

/// The largest portal apps file accepted (64 MiB: about 500,000 apps), refused before it is
/// read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The line a complete portal apps file ends with (YAML's document end marker).
pub const END_MARKER: &str = "...";

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
    let bytes = edgeguard_yaml_guard::read_limited(path, MAX_FILE_BYTES).map_err(|e| match e {
        edgeguard_yaml_guard::LimitError::Io(source) => YamlError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => YamlError::invalid(path, other.to_string()),
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|e| YamlError::invalid(path, format!("not UTF-8 ({e})")))?;
    parse_yaml(&text, path)
}

/// Refuses a file that does not end with its one end marker line (`...`, optionally
/// followed by a comment).
fn check_complete(text: &str, path: &Path) -> Result<(), YamlError> {
    let is_marker = |line: &str| {
        let l = line.trim_end();
        l == END_MARKER || l.starts_with("... ") || l.starts_with("...\t")
    };
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    match (last, lines.iter().position(|l| is_marker(l))) {
        (Some(last), Some(first)) if first == last => Ok(()),
        (_, Some(first)) => Err(YamlError::invalid(
            path,
            format!(
                "content after the end marker `...` on line {} (the file holds one document and ends with it)",
                first + 1
            ),
        )),
        _ => Err(YamlError::invalid(
            path,
            "the file does not end with the end marker line `...`: it may be cut short or still \
             being written, so it is refused and the last good data stays. A complete file ends \
             with a line `...`; replace the file atomically (write a temporary file next to it, \
             then rename it over)",
        )),
    }
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
            "the file is empty (write `apps: []` and a last line `...` for a store without apps)",
        ));
    }
    edgeguard_yaml_guard::check_size(text.len() as u64, MAX_FILE_BYTES)
        .map_err(|e| YamlError::invalid(path, e.to_string()))?;
    check_complete(text, path)?;
    edgeguard_yaml_guard::check_depth(text, edgeguard_yaml_guard::MAX_DEPTH)
        .map_err(|e| YamlError::invalid(path, e.to_string()))?;
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
        if e.public == Some(true) && (key_given || e.secret_key_required == Some(true)) {
            return Err(YamlError::invalid(
                path,
                format!(
                    "{}: public: true contradicts a key or secret_key_required: true",
                    at()
                ),
            ));
        }
        let client_auth = match e.client_auth.as_deref() {
            None => ClientAuth::Key,
            Some(m) => ClientAuth::parse(m).ok_or_else(|| {
                YamlError::invalid(
                    path,
                    format!(
                        "{}: client_auth must be key, certificate or either, not {m:?}",
                        at()
                    ),
                )
            })?,
        };
        // public only when said so: an entry with no key and no statement may have lost
        // its key line (an app that takes certificates only needs neither)
        let required = match (e.secret_key_required, e.public, key_given) {
            (Some(r), _, _) => r,
            (None, _, true) => true,
            (None, Some(true), false) => false,
            (None, Some(false), false) => true,
            (None, None, false) if client_auth == ClientAuth::Certificate => true,
            (None, None, false) => {
                return Err(YamlError::invalid(
                    path,
                    format!(
                        "{}: incomplete entry: give secret_key or secret_key_sha256, or say \
                         public: true (an app is public only when the file says so; an entry \
                         without either may have lost its key line)",
                        at()
                    ),
                ))
            }
        };
        let auth = match (required, digest) {
            (false, _) => AppAuth::Public,
            (true, Some(digest)) => AppAuth::ApiKey { digest },
            (true, None) => {
                if client_auth != ClientAuth::Certificate {
                    missing_keys.push(e.id.clone());
                }
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
                client_auth,
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
    fn client_auth_modes() {
        let d = parse(
            "accounts: [{id: acc1, plan: PLAN_FREE}]\n\
             apps:\n\
             - {id: cert, account: acc1, client_auth: certificate}\n\
             - {id: either, account: acc1, secret_key: k, client_auth: either}\n\
             - {id: plain, account: acc1, secret_key: k}\n...",
        )
        .unwrap();
        assert_eq!(d.apps["cert"].client_auth, ClientAuth::Certificate);
        assert_eq!(d.apps["cert"].auth, AppAuth::MissingKey, "no key opens it");
        assert!(d.missing_keys.is_empty(), "{:?}", d.missing_keys);
        assert_eq!(d.apps["either"].client_auth, ClientAuth::Either);
        assert_eq!(d.apps["plain"].client_auth, ClientAuth::Key);
        let e = parse("apps: [{id: a, public: true, client_auth: Cert}]\n...").unwrap_err();
        assert!(
            e.contains("client_auth must be key, certificate or either"),
            "{e}"
        );
        // an either/key app still needs its key or an explicit public
        let e = parse("apps: [{id: a, client_auth: either}]\n...").unwrap_err();
        assert!(e.contains("incomplete entry"), "{e}");
    }

    #[test]
    fn format() {
        let d = parse(
            r#"
accounts:
  - {id: acc1, plan: PLAN_FREE, monthly_usage: 7}
  - {id: acc2, plan: PLAN_UNLIMITED, monthly_user_limit: 40000000}
apps:
  - {id: pub, account: acc1, public: true}
  - {id: keyed, account: acc2, secret_key: s3cret}
  - {id: keyed-not-required, account: acc2, secret_key: s3cret, secret_key_required: false}
  - {id: not-required, secret_key_required: false}
  - {id: hashed, secret_key_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
  - {id: nokey, account: acc1, secret_key_required: true}
  - {id: notpublic, public: false}
  - {id: emptykey, account: acc1, secret_key: ""}
... # the end
"#,
        )
        .unwrap();
        assert_eq!(d.apps.len(), 8);
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
        assert_eq!(d.apps["pub"].auth, AppAuth::Public);
        assert_eq!(d.apps["keyed-not-required"].auth, AppAuth::Public);
        assert_eq!(d.apps["not-required"].auth, AppAuth::Public);
        assert_eq!(
            d.apps["hashed"].auth,
            AppAuth::ApiKey {
                digest: key_digest("")
            }
        );
        assert_eq!(&*d.apps["hashed"].account_id, "");
        assert_eq!(d.apps["nokey"].auth, AppAuth::MissingKey);
        assert_eq!(d.apps["notpublic"].auth, AppAuth::MissingKey);
        assert_eq!(d.apps["emptykey"].auth, AppAuth::MissingKey);
        assert_eq!(d.missing_keys, vec!["nokey", "notpublic", "emptykey"]);
        // a document start and Windows line ends are fine
        assert!(parse("---\r\napps: []\r\n...\r\n").is_ok());
    }

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            ("", "the file is empty"),
            (
                "apps: [{id: a, public: true}, {id: b, public: true}, {id: a, public: true}]\n...",
                r#"apps[2]: duplicate app id "a" (first defined at apps[0])"#,
            ),
            (
                "accounts: [{id: x}, {id: x}]\n...",
                r#"accounts[1]: duplicate account id "x" (first defined at accounts[0])"#,
            ),
            (
                "apps: [{id: a, account: nope}]\n...",
                r#"apps[0] (id "a"): unknown account "nope""#,
            ),
            ("apps: [{id: a, secret: x}]\n...", "unknown field `secret`"),
            (
                "accounts: [{id: x, monthly_user_limit: -1}]\n...",
                "monthly_user_limit",
            ),
            (
                "apps: [{id: a, secret_key: k, secret_key_sha256: k}]\n...",
                "not both",
            ),
            (
                "apps: [{id: a, secret_key_sha256: abc}]\n...",
                "64 hex digits",
            ),
            ("apps: [{id: ''}]\n...", "apps[0]: empty id"),
            ("apps: {id: a}\n...", "apps"),
            // explicit public, complete entries, complete files
            (
                "apps:\n  - id: a\n    account: x\n...",
                r#"apps[0] (id "a"): unknown account"#,
            ),
            (
                "apps:\n  - {id: a, public: true}\n  - id: b\n...",
                r#"apps[1] (id "b"): incomplete entry: give secret_key or secret_key_sha256, or say public: true"#,
            ),
            (
                "apps: [{id: a, public: true, secret_key: k}]\n...",
                "public: true contradicts a key",
            ),
            (
                "apps: [{id: a, public: true, secret_key_required: true}]\n...",
                "public: true contradicts",
            ),
            (
                "apps: [{id: a, public: true}]\n",
                "the file does not end with the end marker line `...`",
            ),
            (
                "apps: [{id: a, public: true}]\n..",
                "does not end with the end marker",
            ),
            (
                "apps: [{id: a, public: true}]\n...\napps: []\n",
                "content after the end marker `...` on line 2",
            ),
            (
                "apps: [{id: a, public: true}]\n...\n...\n",
                "content after the end marker",
            ),
            (
                &format!("apps: {}\n...", "[".repeat(100_000)),
                "nested more than 64 levels deep at line 1",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("portal apps file apps.yaml: "), "{e}");
        }
    }
}
