//! The key directory and the key lifecycle.
//!
//! Each asymmetric signing key is two files in one directory (a plain folder, a shared volume,
//! or a mounted Kubernetes Secret: the same thing on disk):
//!
//! - `<kid>.pem`: the private key, PKCS#8 PEM (`openssl genpkey` writes the same format);
//! - `<kid>.json`: its metadata, `{"kid": "<kid>", "alg": "ES256", "created_at": <unix s>,
//!   "sign_from": <unix s>}`; written last, so a key whose `.json` exists is complete.
//!
//! Everything else follows from these files, the clock and two settings (token lifetime and
//! clock skew), so every replica reading the directory serves the same JWKS and signs with
//! the same key, with no coordination:
//!
//! - keys are ordered by (`sign_from`, `created_at`, `kid`); a key signs from its
//!   `sign_from` until the next key's `sign_from` (its `sign_until`);
//! - a key is **published** (in the JWKS) from `created_at` until `retire_at` =
//!   `sign_until` + token lifetime + clock skew: until the last token it signed has expired;
//! - the **signing** key at time t is the last key, in that order, that is published and
//!   whose `sign_from` has passed.
//!
//! A rotation writes a key with `sign_from` = now + publish delay: published at once, signing
//! only once every verifier has had time to fetch the JWKS that holds it. The first key of an
//! empty directory signs at once (nothing can hold tokens yet).
//!
//! Files are written atomically (a temporary file, then a hard link to the final name, which
//! also fails if the name exists: two writers of the same kid cannot both win).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::signing::{KeyError, SigningAlg, SigningKey};

/// The most keys read from a directory, and published (jwt-shape refuses larger JWKS).
pub const MAX_KEYS: usize = edgeguard_verdict::jwk::MAX_KEYS;
const MAX_PEM_BYTES: u64 = 16 * 1024;
const MAX_META_BYTES: u64 = 4 * 1024;

/// A key's metadata file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMeta {
    pub kid: String,
    pub alg: String,
    /// Published from (Unix seconds).
    pub created_at: u64,
    /// Signs from (Unix seconds), unless a later key has started signing.
    pub sign_from: u64,
}

/// The settings the lifecycle depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// Lifetime of the tokens the gatekeeper signs (seconds).
    pub token_ttl: u64,
    /// How long past `exp` verifiers still accept a token (jwt-shape's `clock_skew_seconds`).
    pub clock_skew: u64,
}

/// A key's place in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTimes {
    pub kid: String,
    pub created_at: u64,
    pub sign_from: u64,
    /// When the next key takes over; `None`: no later key.
    pub sign_until: Option<u64>,
    /// When it leaves the JWKS; `None`: not while it is the last key.
    pub retire_at: Option<u64>,
}

/// Where a key is in its life at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Created in the future (another host's clock is ahead): not published yet.
    Pending,
    /// Published, not signing yet.
    Published,
    /// Published and signing.
    Signing,
    /// Published, no longer signing (its tokens are still valid).
    Retiring,
    /// Out of the JWKS.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Published => "published",
            KeyState::Signing => "signing",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        }
    }
}

impl KeyTimes {
    pub fn published(&self, now: u64) -> bool {
        self.created_at <= now && self.retire_at.is_none_or(|r| now < r)
    }
}

/// The timeline of a set of keys, in signing order.
pub fn timeline(metas: &[KeyMeta], lc: Lifecycle) -> Vec<KeyTimes> {
    let mut sorted: Vec<&KeyMeta> = metas.iter().collect();
    sorted.sort_by(|a, b| {
        (a.sign_from, a.created_at, &a.kid).cmp(&(b.sign_from, b.created_at, &b.kid))
    });
    let mut out: Vec<KeyTimes> = Vec::with_capacity(sorted.len());
    for (i, m) in sorted.iter().enumerate() {
        let sign_until = sorted
            .get(i + 1)
            .map(|next| next.sign_from.max(m.sign_from));
        out.push(KeyTimes {
            kid: m.kid.clone(),
            created_at: m.created_at,
            sign_from: m.sign_from,
            sign_until,
            retire_at: sign_until
                .map(|u| u.saturating_add(lc.token_ttl).saturating_add(lc.clock_skew)),
        });
    }
    out
}

/// The key signing at `now` (index into the timeline).
pub fn signing_at(times: &[KeyTimes], now: u64) -> Option<usize> {
    times
        .iter()
        .enumerate()
        .rev()
        .find(|(_, t)| t.sign_from <= now && t.published(now))
        .map(|(i, _)| i)
}

/// Every key's state at `now`.
pub fn states_at(times: &[KeyTimes], now: u64) -> Vec<KeyState> {
    let signing = signing_at(times, now);
    times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if Some(i) == signing {
                KeyState::Signing
            } else if t.created_at > now {
                KeyState::Pending
            } else if !t.published(now) {
                KeyState::Retired
            } else if t.sign_from > now {
                KeyState::Published
            } else {
                KeyState::Retiring
            }
        })
        .collect()
}

/// Why the key directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    #[error("key directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("cannot encode key metadata: {0}")]
    Meta(String),
    #[error("the system clock is before 1970")]
    Clock,
}

fn io(dir: &Path) -> impl Fn(std::io::Error) -> KeyDirError + '_ {
    move |source| KeyDirError::Io {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> Result<u64, KeyDirError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| KeyDirError::Clock)
}

/// A key read from the directory.
#[derive(Debug)]
pub struct DirKey {
    pub meta: KeyMeta,
    pub alg: SigningAlg,
    pub key: Arc<SigningKey>,
}

/// What a scan found: the complete keys, and what was skipped and why.
#[derive(Debug, Default)]
pub struct Scan {
    pub keys: Vec<DirKey>,
    pub problems: Vec<String>,
}

/// Whether a kid is safe as a file name and as a Kubernetes Secret key.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && !kid.starts_with('.')
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn read_small(path: &Path, limit: u64) -> Result<String, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut buf = String::new();
    (&mut f)
        .take(limit + 1)
        .read_to_string(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(buf)
}

fn read_key(dir: &Path, kid: &str) -> Result<DirKey, String> {
    let meta_text = read_small(&dir.join(format!("{kid}.json")), MAX_META_BYTES)?;
    let meta: KeyMeta = serde_json::from_str(&meta_text).map_err(|e| format!("metadata: {e}"))?;
    if meta.kid != kid {
        return Err(format!(
            "metadata names kid '{}', the file name says '{kid}'",
            meta.kid
        ));
    }
    let alg = SigningAlg::from_name(&meta.alg)
        .filter(|a| a.asymmetric())
        .ok_or_else(|| format!("metadata: alg '{}' is not ES256 or EdDSA", meta.alg))?;
    let pem_path = dir.join(format!("{kid}.pem"));
    let pem = read_small(&pem_path, MAX_PEM_BYTES).map_err(|e| format!("{kid}.pem: {e}"))?;
    let key = SigningKey::from_pkcs8_pem(alg, &pem).map_err(|e| format!("{kid}.pem: {e}"))?;
    Ok(DirKey {
        meta,
        alg,
        key: Arc::new(key),
    })
}

/// Reads every complete key of the directory (entries starting with `.` are skipped: temporary
/// files, and the `..data` links of a Kubernetes Secret volume).
pub fn scan(dir: &Path) -> Result<Scan, KeyDirError> {
    let mut kids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if let Some(kid) = name.strip_suffix(".json") {
            kids.push(kid.to_string());
        }
    }
    kids.sort();
    let mut scan = Scan::default();
    for kid in kids {
        if !valid_kid(&kid) {
            scan.problems.push(format!(
                "{kid}.json: a kid is 1-64 of A-Z a-z 0-9 - _ . (not starting with '.')"
            ));
            continue;
        }
        match read_key(dir, &kid) {
            Ok(k) => scan.keys.push(k),
            Err(e) => scan.problems.push(format!("{kid}: {e}")),
        }
    }
    Ok(scan)
}

fn tmp_name(dir: &Path, name: &str) -> PathBuf {
    let nonce: u64 = rand::random();
    dir.join(format!(".{name}.tmp-{nonce:016x}"))
}

/// Writes `bytes` to `dir/name` atomically, only if `name` does not exist yet: `Ok(false)`
/// when another writer got there first.
fn write_exclusive(dir: &Path, name: &str, bytes: &[u8]) -> Result<bool, KeyDirError> {
    let tmp = tmp_name(dir, name);
    let result = (|| -> std::io::Result<bool> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match fs::hard_link(&tmp, dir.join(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let created = result.map_err(io(dir))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(created)
}

/// A new kid for a key written now: `gk-<UTC time>-<random>`.
pub fn new_kid(now: u64) -> String {
    let stamp = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now))
        .to_string()
        .replace(['-', ':'], "");
    let nonce: u16 = rand::random();
    format!("gk-{stamp}-{nonce:04x}")
}

/// Writes a new key. `Ok(None)` when a key with this kid already exists (another replica wrote
/// it). `sign_from` is `now + publish_delay`, or `now` when the directory holds no key yet.
pub fn add_key(
    dir: &Path,
    alg: SigningAlg,
    kid: &str,
    now: u64,
    publish_delay: u64,
) -> Result<Option<KeyMeta>, KeyDirError> {
    let existing = scan(dir)?;
    let sign_from = if existing.keys.is_empty() {
        now
    } else {
        now.saturating_add(publish_delay)
    };
    let key = SigningKey::generate(alg)?;
    let meta = KeyMeta {
        kid: kid.to_string(),
        alg: alg.name().to_string(),
        created_at: now,
        sign_from,
    };
    let pem = key.to_pkcs8_pem()?;
    if !write_exclusive(dir, &format!("{kid}.pem"), pem.as_bytes())? {
        return Ok(None);
    }
    let meta_json =
        serde_json::to_string_pretty(&meta).map_err(|e| KeyDirError::Meta(e.to_string()))?;
    if !write_exclusive(
        dir,
        &format!("{kid}.json"),
        format!("{meta_json}\n").as_bytes(),
    )? {
        return Ok(None);
    }
    Ok(Some(meta))
}

/// Removes the files of keys retired at least `grace` seconds before `now`. Returns the kids
/// removed.
pub fn prune(dir: &Path, lc: Lifecycle, now: u64, grace: u64) -> Result<Vec<String>, KeyDirError> {
    let found = scan(dir)?;
    let metas: Vec<KeyMeta> = found.keys.iter().map(|k| k.meta.clone()).collect();
    let mut removed = Vec::new();
    for t in timeline(&metas, lc) {
        if t.retire_at.is_some_and(|r| r.saturating_add(grace) <= now) {
            // metadata first: without it the key is ignored, whatever happens next
            fs::remove_file(dir.join(format!("{}.json", t.kid))).map_err(io(dir))?;
            let _ = fs::remove_file(dir.join(format!("{}.pem", t.kid)));
            removed.push(t.kid);
        }
    }
    Ok(removed)
}

/// A loaded key with its place in time.
#[derive(Debug)]
pub struct RingKey {
    pub alg: SigningAlg,
    pub key: Arc<SigningKey>,
    pub times: KeyTimes,
}

/// The keys of the directory as of its last scan, in signing order.
#[derive(Debug, Default)]
pub struct Ring {
    pub keys: Vec<RingKey>,
}

impl Ring {
    pub fn from_scan(scan: Scan, lc: Lifecycle) -> Ring {
        let metas: Vec<KeyMeta> = scan.keys.iter().map(|k| k.meta.clone()).collect();
        let mut by_kid: BTreeMap<String, DirKey> = scan
            .keys
            .into_iter()
            .map(|k| (k.meta.kid.clone(), k))
            .collect();
        let keys = timeline(&metas, lc)
            .into_iter()
            .filter_map(|times| {
                by_kid.remove(&times.kid).map(|k| RingKey {
                    alg: k.alg,
                    key: k.key,
                    times,
                })
            })
            .collect();
        Ring { keys }
    }

    /// The key signing at `now`.
    pub fn signing(&self, now: u64) -> Option<&RingKey> {
        let times: Vec<KeyTimes> = self.keys.iter().map(|k| k.times.clone()).collect();
        signing_at(&times, now).and_then(|i| self.keys.get(i))
    }

    /// The public JWKS at `now`: the published keys, newest first, at most [`MAX_KEYS`].
    pub fn jwks(&self, now: u64) -> Json {
        let keys: Vec<Json> = self
            .keys
            .iter()
            .rev()
            .filter(|k| k.times.published(now))
            .filter_map(|k| k.key.public_jwk(&k.times.kid))
            .take(MAX_KEYS)
            .collect();
        json!({ "keys": keys })
    }

    /// Every key's state at `now`, with its kid.
    pub fn states(&self, now: u64) -> Vec<(String, KeyState)> {
        let times: Vec<KeyTimes> = self.keys.iter().map(|k| k.times.clone()).collect();
        times
            .iter()
            .zip(states_at(&times, now))
            .map(|(t, s)| (t.kid.clone(), s))
            .collect()
    }

    /// The newest `created_at` (for scheduled rotation).
    pub fn newest_created(&self) -> Option<u64> {
        self.keys.iter().map(|k| k.times.created_at).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LC: Lifecycle = Lifecycle {
        token_ttl: 3600,
        clock_skew: 60,
    };

    fn meta(kid: &str, created_at: u64, sign_from: u64) -> KeyMeta {
        KeyMeta {
            kid: kid.into(),
            alg: "ES256".into(),
            created_at,
            sign_from,
        }
    }

    fn states(metas: &[KeyMeta], now: u64) -> Vec<(String, KeyState)> {
        let t = timeline(metas, LC);
        t.iter()
            .zip(states_at(&t, now))
            .map(|(t, s)| (t.kid.clone(), s))
            .collect()
    }

    fn s(kid: &str, st: KeyState) -> (String, KeyState) {
        (kid.to_string(), st)
    }

    #[test]
    fn a_rotation_publishes_first_signs_later_and_retires_after_the_last_token() {
        use KeyState::*;
        // k1 signs from 1000; rotation at 5000 with a 1200 s publish delay
        let keys = [meta("k1", 1000, 1000), meta("k2", 5000, 6200)];
        let t = timeline(&keys, LC);
        assert_eq!(t[0].sign_until, Some(6200));
        assert_eq!(t[0].retire_at, Some(6200 + 3600 + 60));
        assert_eq!(t[1].sign_until, None);
        assert_eq!(t[1].retire_at, None);

        assert_eq!(states(&keys[..1], 4999), vec![s("k1", Signing)]);
        // before the rotation was written: k2 does not exist anywhere yet
        assert_eq!(
            states(&keys, 4999),
            vec![s("k1", Signing), s("k2", Pending)]
        );
        // published at once, k1 still signs
        assert_eq!(
            states(&keys, 5000),
            vec![s("k1", Signing), s("k2", Published)]
        );
        assert_eq!(
            states(&keys, 6199),
            vec![s("k1", Signing), s("k2", Published)]
        );
        // k2 takes over; k1 stays published while its tokens live (ttl + skew)
        assert_eq!(
            states(&keys, 6200),
            vec![s("k1", Retiring), s("k2", Signing)]
        );
        assert_eq!(
            states(&keys, 9859),
            vec![s("k1", Retiring), s("k2", Signing)]
        );
        assert_eq!(
            states(&keys, 9860),
            vec![s("k1", Retired), s("k2", Signing)]
        );
        assert!(!t[0].published(9860) && t[0].published(9859) && t[1].published(9860));
    }

    #[test]
    fn order_and_ties() {
        use KeyState::*;
        // two rotations in a row: the middle key is superseded before or as it starts
        let keys = [meta("a", 0, 0), meta("b", 100, 1300), meta("c", 200, 1400)];
        assert_eq!(
            states(&keys, 1350),
            vec![s("a", Retiring), s("b", Signing), s("c", Published)]
        );
        assert_eq!(
            states(&keys, 1400),
            vec![s("a", Retiring), s("b", Retiring), s("c", Signing)]
        );
        // same sign_from: the later created (then the greater kid) wins, the other never signs
        let keys = [meta("x", 10, 50), meta("y", 20, 50)];
        assert_eq!(states(&keys, 60), vec![s("x", Retiring), s("y", Signing)]);
        let keys = [meta("y", 10, 50), meta("x", 10, 50)];
        assert_eq!(states(&keys, 60), vec![s("x", Retiring), s("y", Signing)]);
        // a key created "in the future" (another host's clock ahead) neither publishes nor signs;
        // the previous key keeps signing meanwhile
        let keys = [meta("a", 0, 0), meta("b", 500, 500)];
        assert_eq!(states(&keys, 400), vec![s("a", Signing), s("b", Pending)]);
        // no key whose sign_from has passed: nothing signs
        let keys = [meta("a", 0, 100)];
        assert_eq!(states(&keys, 50), vec![s("a", Published)]);
        assert_eq!(signing_at(&timeline(&keys, LC), 50), None);
        assert_eq!(signing_at(&timeline(&[], LC), 50), None);
    }

    #[test]
    fn directory_round_trip_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(scan(d).unwrap().keys.is_empty());
        // the first key signs at once
        let m1 = add_key(d, SigningAlg::Es256, "k1", 1000, 1200)
            .unwrap()
            .unwrap();
        assert_eq!((m1.created_at, m1.sign_from), (1000, 1000));
        // later keys after the publish delay
        let m2 = add_key(d, SigningAlg::EdDsa, "k2", 5000, 1200)
            .unwrap()
            .unwrap();
        assert_eq!((m2.created_at, m2.sign_from), (5000, 6200));
        // the same kid twice: the second writer loses, the first key stays
        assert!(add_key(d, SigningAlg::Es256, "k2", 5001, 1200)
            .unwrap()
            .is_none());
        let found = scan(d).unwrap();
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        let ring = Ring::from_scan(found, LC);
        assert_eq!(ring.keys.len(), 2);
        assert_eq!(ring.keys[1].alg, SigningAlg::EdDsa);
        assert_eq!(ring.signing(6199).unwrap().times.kid, "k1");
        assert_eq!(ring.signing(6200).unwrap().times.kid, "k2");
        let jwks = ring.jwks(5500);
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec!["k2", "k1"]);
        assert_eq!(ring.jwks(999_999)["keys"].as_array().unwrap().len(), 1);
        // private files are private
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(d.join("k1.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // prune removes only what is retired (+ grace)
        let retire = 6200 + LC.token_ttl + LC.clock_skew;
        assert!(prune(d, LC, retire, 60).unwrap().is_empty());
        assert_eq!(
            prune(d, LC, retire + 60, 60).unwrap(),
            vec!["k1".to_string()]
        );
        assert!(!d.join("k1.pem").exists() && !d.join("k1.json").exists());
        assert_eq!(scan(d).unwrap().keys.len(), 1);
    }

    #[test]
    fn incomplete_and_foreign_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        add_key(d, SigningAlg::Es256, "good", 1, 0)
            .unwrap()
            .unwrap();
        // a PEM without metadata (a rotation half written) is not a key yet, silently
        fs::write(d.join("half.pem"), "x").unwrap();
        // Kubernetes Secret volume internals and temporary files
        fs::create_dir(d.join("..data")).unwrap();
        fs::write(d.join(".x.json.tmp-1"), "{").unwrap();
        // metadata problems are reported
        fs::write(d.join("bad.json"), "{\"kid\": \"bad\"}").unwrap();
        fs::write(
            d.join("other.json"),
            serde_json::to_string(&meta("else", 1, 1)).unwrap(),
        )
        .unwrap();
        fs::write(
            d.join("nopem.json"),
            serde_json::to_string(&meta("nopem", 1, 1)).unwrap(),
        )
        .unwrap();
        let mut hs = meta("hs", 1, 1);
        hs.alg = "HS256".into();
        fs::write(d.join("hs.json"), serde_json::to_string(&hs).unwrap()).unwrap();
        let found = scan(d).unwrap();
        assert_eq!(found.keys.len(), 1);
        let problems = found.problems.join("\n");
        for want in [
            "bad: metadata:",
            "other: metadata names kid 'else'",
            "nopem: nopem.pem:",
            "hs: metadata: alg 'HS256'",
        ] {
            assert!(problems.contains(want), "{want} in {problems}");
        }
        assert_eq!(found.problems.len(), 4, "{problems}");
    }

    #[test]
    fn kids() {
        assert!(valid_kid("gk-20261202T011700Z-a1b2"));
        assert!(
            !valid_kid(".hidden")
                && !valid_kid("a/b")
                && !valid_kid("")
                && !valid_kid(&"a".repeat(65))
        );
        let k = new_kid(1_796_174_220);
        assert!(k.starts_with("gk-20261202T011700Z-"), "{k}");
        assert!(valid_kid(&k));
    }
}
