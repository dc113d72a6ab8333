//! The last-good snapshot file.
//!
//! JSON, written atomically (temporary file in the same directory, fsync, rename):
//!
//! ```json
//! {"format": "edgeguard-portal-snapshot", "format_version": 2, "origin": "postgres",
//!  "written_at_unix_ms": 1764000000000, "data_time_unix_ms": 1764000000000,
//!  "accounts": [["acc1", "PLAN_FREE", 0], ["acc2", "PLAN_UNLIMITED", 40000000]],
//!  "apps": [["app1", 0, ""], ["app2", 1, "5e88...(64 hex)"], ["app3", 0, "missing"]],
//!  "usage": [["acc1", 1500000]], "client_auth": [["app3", "certificate"]]}
//! ```
//!
//! `accounts` lists each distinct (account id, plan, monthly limit) once; an app row is
//! `[id, index into accounts, auth]` with auth `""` (public), `"missing"` (key required, none
//! configured) or the 64-hex SHA-256 digest of the key. Plaintext keys are never written.
//! `client_auth` lists the apps that are not `key` (version 2; a version 1 file has none).
//! Device certificates are not written: a file read at start may predate a revocation.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeguard_verdict::device::ClientAuth;
use edgeguard_verdict::portal::{AppAuth, PortalApp};
use rustc_hash::FxHashMap;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::snapshot::{AppMap, Interner, Snapshot, UsageMap};

const FORMAT: &str = "edgeguard-portal-snapshot";
/// Version 2 added `client_auth` (an older reader refuses the file rather than reading a
/// certificate-only app as a key app); version 1 files (no `client_auth`: every app `key`)
/// are still read.
const FORMAT_VERSION: u32 = 2;

/// Why the snapshot file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Data read back from a snapshot file.
#[derive(Debug)]
pub(crate) struct FileData {
    pub apps: AppMap,
    pub usage: UsageMap,
    pub data_time: Option<SystemTime>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(d: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

type AccountKey<'a> = (&'a str, &'a str, u64);

struct Out<'a> {
    snap: &'a Snapshot,
    accounts: Vec<AccountKey<'a>>,
    index: FxHashMap<AccountKey<'a>, usize>,
}

struct Seq<F>(F);

impl<I, F> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

fn auth_str(a: &AppAuth) -> String {
    match a {
        AppAuth::Public => String::new(),
        AppAuth::MissingKey => "missing".into(),
        AppAuth::ApiKey { digest } => hex(digest),
    }
}

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(9))?;
        m.serialize_entry("format", FORMAT)?;
        m.serialize_entry("format_version", &FORMAT_VERSION)?;
        m.serialize_entry("origin", self.snap.origin().as_str())?;
        m.serialize_entry("written_at_unix_ms", &unix_ms(SystemTime::now()))?;
        m.serialize_entry("data_time_unix_ms", &self.snap.data_time().map(unix_ms))?;
        m.serialize_entry("accounts", &self.accounts)?;
        let index = &self.index;
        m.serialize_entry(
            "apps",
            &Seq(|| {
                self.snap.apps().map(move |(id, a)| {
                    let key = (&*a.account_id, &*a.plan, a.monthly_user_limit);
                    (id, index.get(&key).copied().unwrap_or(0), auth_str(&a.auth))
                })
            }),
        )?;
        m.serialize_entry("usage", &Seq(|| self.snap.usages()))?;
        m.serialize_entry(
            "client_auth",
            &Seq(|| {
                self.snap
                    .apps()
                    .filter(|(_, a)| a.client_auth != ClientAuth::Key)
                    .map(|(id, a)| (id, a.client_auth.as_str()))
            }),
        )?;
        m.end()
    }
}

/// Writes `snap` to `path` atomically. Blocking: call it from a blocking thread.
pub(crate) fn write(path: &Path, snap: &Snapshot) -> Result<(), SnapshotFileError> {
    let io = |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut index: FxHashMap<AccountKey<'_>, usize> = FxHashMap::default();
    let mut accounts = Vec::new();
    for (_, a) in snap.apps() {
        let key = (&*a.account_id, &*a.plan, a.monthly_user_limit);
        index.entry(key).or_insert_with(|| {
            accounts.push(key);
            accounts.len() - 1
        });
    }
    let out = Out {
        snap,
        accounts,
        index,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let f = File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        serde_json::to_writer(&mut w, &out).map_err(|e| io(std::io::Error::other(e)))?;
        w.flush().map_err(io)?;
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[derive(Deserialize)]
struct In {
    format: String,
    format_version: u32,
    #[serde(default)]
    data_time_unix_ms: Option<u64>,
    accounts: Vec<(String, String, u64)>,
    apps: Vec<(String, usize, String)>,
    #[serde(default)]
    usage: Vec<(String, u64)>,
    /// Apps whose client authentication is not `key`: (id, mode).
    #[serde(default)]
    client_auth: Vec<(String, String)>,
}

/// Reads a snapshot file. Blocking.
pub(crate) fn read(path: &Path) -> Result<FileData, SnapshotFileError> {
    let invalid = |message: String| SnapshotFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let f = File::open(path).map_err(|source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let doc: In = serde_json::from_reader(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| invalid(e.to_string()))?;
    if doc.format != FORMAT || !(1..=FORMAT_VERSION).contains(&doc.format_version) {
        return Err(invalid(format!(
            "unsupported format {:?} version {} (expected {FORMAT:?} version 1 to {FORMAT_VERSION})",
            doc.format, doc.format_version
        )));
    }
    let mut interner = Interner::default();
    let accounts: Vec<(Arc<str>, Arc<str>, u64)> = doc
        .accounts
        .iter()
        .map(|(a, p, l)| (interner.get(a), interner.get(p), *l))
        .collect();
    let mut apps = AppMap::default();
    apps.reserve(doc.apps.len());
    for (i, (id, acc, auth)) in doc.apps.into_iter().enumerate() {
        let (account_id, plan, limit) = accounts
            .get(acc)
            .cloned()
            .ok_or_else(|| invalid(format!("apps[{i}]: account index {acc} out of range")))?;
        let auth = match auth.as_str() {
            "" => AppAuth::Public,
            "missing" => AppAuth::MissingKey,
            hexed => AppAuth::ApiKey {
                digest: unhex(hexed).ok_or_else(|| {
                    invalid(format!(
                        "apps[{i}]: auth must be \"\", \"missing\" or 64 hex digits"
                    ))
                })?,
            },
        };
        apps.insert(
            Arc::from(id.as_str()),
            PortalApp {
                account_id,
                plan,
                auth,
                monthly_user_limit: limit,
                client_auth: ClientAuth::Key,
            },
        );
    }
    for (i, (id, mode)) in doc.client_auth.iter().enumerate() {
        let mode = ClientAuth::parse(mode).ok_or_else(|| {
            invalid(format!(
                "client_auth[{i}]: mode must be key, certificate or either"
            ))
        })?;
        if let Some(app) = apps.get_mut(id.as_str()) {
            app.client_auth = mode;
        }
    }
    let usage = doc
        .usage
        .into_iter()
        .map(|(a, u)| (Arc::from(a.as_str()), u))
        .collect();
    Ok(FileData {
        apps,
        usage,
        data_time: doc
            .data_time_unix_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeguard_verdict::portal::key_digest;

    #[test]
    fn round_trip_without_plaintext_keys() {
        let mut apps = AppMap::default();
        let app = |acc: &str, plan: &str, limit, auth| PortalApp {
            account_id: acc.into(),
            plan: plan.into(),
            auth,
            monthly_user_limit: limit,
            client_auth: ClientAuth::Key,
        };
        apps.insert("a".into(), app("x", "PLAN_FREE", 0, AppAuth::Public));
        apps.insert(
            "b".into(),
            app(
                "y",
                "PLAN_UNLIMITED",
                40_000_000,
                AppAuth::ApiKey {
                    digest: key_digest("plaintext-key"),
                },
            ),
        );
        apps.insert("c".into(), app("x", "PLAN_FREE", 0, AppAuth::MissingKey));
        apps.insert("d".into(), app("", "", 0, AppAuth::Public));
        let mut e = app("x", "PLAN_FREE", 0, AppAuth::MissingKey);
        e.client_auth = ClientAuth::Certificate;
        apps.insert("e".into(), e);
        let mut usage = UsageMap::default();
        usage.insert("x".into(), 1_500_000);
        let snap = Snapshot::from_parts(3, apps.clone(), usage.clone());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        write(&path, &snap).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("plaintext-key"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        let back = read(&path).unwrap();
        assert_eq!(back.apps, apps);
        assert_eq!(back.usage, usage);
        assert!(back.data_time.is_some());
        std::fs::write(&path, "{\"format\":\"other\"}").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("snap.json"));
    }
}
