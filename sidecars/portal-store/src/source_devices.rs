//! DB-less device certificates: `edgeguard enroll`'s registry file (`EDGEGUARD_DEVICES_FILE`,
//! the same path both services are given), watched and published like the YAML apps file.
//!
//! Only what a verdict needs is read: each device's id, account, certificate fingerprint,
//! `not_after` and `revoked_at`, and the fingerprints of `revoked_certificates` (a re-key's old
//! certificate, a revoked device's). Other members (enrollment tokens, labels) are ignored.
//! `edgeguard enroll` writes the file atomically (temporary file + rename), and it ends with
//! the YAML end marker `...`. A file that is missing, cannot be read, lacks the marker (cut
//! short, half written by something else) or is not the registry format publishes **no**
//! devices: it may have lost a revocation, so keeping the devices read before could let a
//! revoked one in. An entry that cannot be used (a fingerprint that is not 64 hex digits, an
//! unreadable `not_after`) is skipped (that device is refused) and counted; a fingerprint listed
//! revoked anywhere (a revoked entry, `revoked_certificates`) is refused wherever else it
//! appears.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeguard_verdict::device::{parse_fingerprint, Device};
use rustc_hash::FxHashSet;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::snapshot::{DeviceMap, Interner};
use crate::store::{LogThrottle, Publisher};

/// The registry format `edgeguard enroll` writes.
const FORMAT: &str = "edgeguard-devices";
/// The largest devices file read.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// How often the file's size and modification time are looked at.
const POLL: Duration = Duration::from_millis(250);

#[derive(Deserialize)]
struct Doc {
    format: String,
    #[serde(default)]
    devices: Vec<Entry>,
    #[serde(default)]
    revoked_certificates: Vec<Revoked>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    account_id: String,
    fingerprint_sha256: String,
    not_after: String,
    #[serde(default)]
    revoked_at: Option<String>,
}

#[derive(Deserialize)]
struct Revoked {
    fingerprint_sha256: String,
}

fn rfc3339(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// Parses a devices file: the valid device certificates and how many entries were skipped,
/// or why the whole file is refused.
pub(crate) fn parse(text: &str) -> Result<(DeviceMap, usize), String> {
    if !text.trim_end().ends_with("\n...") {
        return Err("it does not end with the YAML end marker line '...' (cut short?)".into());
    }
    edgeguard_yaml_guard::check_depth(text, 64).map_err(|e| e.to_string())?;
    let doc: Doc = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if doc.format != FORMAT {
        return Err(format!("format is {:?}, not {FORMAT:?}", doc.format));
    }
    let mut revoked: FxHashSet<[u8; 32]> = doc
        .revoked_certificates
        .iter()
        .filter_map(|r| parse_fingerprint(&r.fingerprint_sha256))
        .collect();
    revoked.extend(
        doc.devices
            .iter()
            .filter(|e| e.revoked_at.is_some())
            .filter_map(|e| parse_fingerprint(&e.fingerprint_sha256)),
    );
    let mut interner = Interner::default();
    let mut devices = DeviceMap::default();
    let mut skipped = 0usize;
    for e in &doc.devices {
        let (Some(fingerprint), Some(not_after)) = (
            parse_fingerprint(&e.fingerprint_sha256),
            rfc3339(&e.not_after),
        ) else {
            skipped += 1;
            continue;
        };
        if revoked.contains(&fingerprint) {
            continue;
        }
        devices.insert(
            fingerprint,
            Device {
                id: Arc::from(e.id.as_str()),
                account_id: interner.get(&e.account_id),
                not_after,
            },
        );
    }
    Ok((devices, skipped))
}

fn read(path: &Path) -> Result<(DeviceMap, usize), String> {
    let bytes =
        edgeguard_yaml_guard::read_limited(path, MAX_FILE_BYTES).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8".to_string())?;
    parse(&text)
}

/// Watches `path` and publishes its devices whenever it changes (and at start).
pub(crate) fn spawn(publisher: Publisher, path: PathBuf) -> JoinHandle<()> {
    crate::background::handle().spawn(async move {
        // (modified, length) of the file last read; `None` also after a failure, so the file
        // is read again as soon as it changes
        let mut seen: Option<(SystemTime, u64)> = None;
        let mut throttle = LogThrottle::default();
        let mut cleared = false;
        loop {
            let stamp = tokio::fs::metadata(&path)
                .await
                .ok()
                .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
            let outcome = match stamp {
                Some(s) if Some(s) == seen => None,
                Some(s) => {
                    let p = path.clone();
                    let read = tokio::task::spawn_blocking(move || read(&p))
                        .await
                        .unwrap_or_else(|e| Err(format!("reader failed: {e}")));
                    Some((s, read))
                }
                None => Some((
                    (UNIX_EPOCH, 0),
                    Err("it cannot be read (missing?)".to_string()),
                )),
            };
            match outcome {
                None => {}
                Some((stamp, Ok((devices, skipped)))) => {
                    seen = Some(stamp);
                    cleared = false;
                    throttle.clear();
                    if skipped > 0 {
                        tracing::warn!(file = %path.display(), skipped, "devices file: entries with a fingerprint that is not 64 hex digits or an unreadable not_after were skipped; those devices are refused");
                    }
                    let count = devices.len();
                    let published = publisher.publish_devices(devices);
                    tracing::info!(
                        file = %path.display(),
                        devices = count,
                        changed = published.devices_changed,
                        version = published.version,
                        "device certificates loaded from the devices file"
                    );
                }
                Some((_, Err(message))) => {
                    seen = None;
                    if throttle.allow(&message) {
                        tracing::warn!(file = %path.display(), error = %message, "devices file refused: no device is let in until it can be read (it may have lost a revocation)");
                    }
                    if !cleared {
                        cleared = true;
                        publisher.publish_devices(DeviceMap::default());
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const FP2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const FP3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    fn file(devices: &str, revoked: &str) -> String {
        let list = |s: &str| {
            if s.is_empty() {
                " []\n".to_string()
            } else {
                format!("\n{s}")
            }
        };
        format!(
            "format: edgeguard-devices\nformat_version: 1\ndevices:{}enrollment_tokens: []\nrevoked_certificates:{}...\n",
            list(devices),
            list(revoked)
        )
    }

    fn entry(id: &str, fp: &str, revoked_at: Option<&str>) -> String {
        format!(
            "- id: {id}\n  account_id: acc\n  spiffe_id: spiffe://x/device/{id}\n  fingerprint_sha256: {fp}\n  serial: '01'\n  label: ''\n  not_before: 2026-01-01T00:00:00Z\n  not_after: 2027-01-01T00:00:00Z\n  revoked_at: {}\n  created_at: 2026-01-01T00:00:00Z\n  last_seen_at: null\n",
            revoked_at.unwrap_or("null")
        )
    }

    #[test]
    fn valid_devices_only() {
        let text = file(
            &format!(
                "{}{}{}",
                entry("d1", FP1, None),
                entry("d2", FP2, Some("2026-06-01T00:00:00Z")),
                entry("d3", FP3, None)
            ),
            &format!("- fingerprint_sha256: {FP3}\n  device_id: d3\n  revoked_at: 2026-06-01T00:00:00Z\n"),
        );
        let (d, skipped) = parse(&text).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(
            d.len(),
            1,
            "revoked devices and revoked certificates are left out"
        );
        let one = &d[&parse_fingerprint(FP1).unwrap()];
        assert_eq!((&*one.id, &*one.account_id), ("d1", "acc"));
        assert_eq!(one.not_after, 1_798_761_600);
    }

    #[test]
    fn cut_or_foreign_files_are_refused() {
        let text = file(&entry("d1", FP1, None), "");
        for cut in [text.len() / 2, text.len() - 5] {
            let e = parse(&text[..cut]).unwrap_err();
            assert!(e.contains("end marker"), "{e}");
        }
        let e = parse(&text.replace("edgeguard-devices", "something-else")).unwrap_err();
        assert!(e.contains("format"), "{e}");
        assert!(parse(&file("", "")).unwrap().0.is_empty());
    }

    #[test]
    fn bad_entries_are_skipped_and_revocations_win() {
        let text = file(
            &format!(
                "{}{}{}{}",
                entry("bad", "abc", None),
                entry("d1", FP1, None),
                // the same certificate listed again, revoked: revoked wherever it appears
                entry("d1-again", FP1, Some("2026-06-01T00:00:00Z")),
                entry("d2", FP2, None).replace("2027-01-01T00:00:00Z", "next tuesday"),
            ),
            "",
        );
        let (d, skipped) = parse(&text).unwrap();
        assert_eq!(skipped, 2, "the bad fingerprint and the bad date");
        assert!(d.is_empty(), "{d:?}");
    }
}
