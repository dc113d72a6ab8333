//! DB-less device certificates: `edgeguard enroll`'s registry file (`EDGEGUARD_DEVICES_FILE`,
//! the same path both services are given), watched and published like the YAML apps file.
//!
//! Only what a verdict needs is read: each device's id, account, certificate fingerprint,
//! `not_after` and `revoked_at`, and the fingerprints of `revoked_certificates` (a re-key's old
//! certificate, a revoked device's). Other members (enrollment tokens, labels) are ignored.
//! `edgeguard enroll` writes the file atomically (temporary file + rename), and it ends with
//! the YAML end marker `...`: a file without it (cut short, half written by something else) is
//! refused and the devices published before stay. A file that cannot be read never publishes
//! *more* devices than it lists.

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

/// Parses a devices file: the valid device certificates, or why the file is refused.
pub(crate) fn parse(text: &str) -> Result<DeviceMap, String> {
    if !text.trim_end().ends_with("\n...") {
        return Err("it does not end with the YAML end marker line '...' (cut short?)".into());
    }
    edgeguard_yaml_guard::check_depth(text, 64).map_err(|e| e.to_string())?;
    let doc: Doc = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if doc.format != FORMAT {
        return Err(format!("format is {:?}, not {FORMAT:?}", doc.format));
    }
    let revoked: FxHashSet<[u8; 32]> = doc
        .revoked_certificates
        .iter()
        .filter_map(|r| parse_fingerprint(&r.fingerprint_sha256))
        .collect();
    let mut interner = Interner::default();
    let mut devices = DeviceMap::default();
    for (i, e) in doc.devices.iter().enumerate() {
        let fingerprint = parse_fingerprint(&e.fingerprint_sha256)
            .ok_or_else(|| format!("devices[{i}]: fingerprint_sha256 is not 64 hex digits"))?;
        let not_after = rfc3339(&e.not_after)
            .ok_or_else(|| format!("devices[{i}]: not_after is not an RFC 3339 time"))?;
        if e.revoked_at.is_some() || revoked.contains(&fingerprint) {
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
    Ok(devices)
}

fn read(path: &Path) -> Result<DeviceMap, String> {
    let bytes =
        edgeguard_yaml_guard::read_limited(path, MAX_FILE_BYTES).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8".to_string())?;
    parse(&text)
}

/// Watches `path` and publishes its devices whenever it changes (and at start).
pub(crate) fn spawn(publisher: Publisher, path: PathBuf) -> JoinHandle<()> {
    crate::background::handle().spawn(async move {
        let mut seen: Option<(SystemTime, u64)> = None;
        let mut throttle = LogThrottle::default();
        loop {
            let stamp = tokio::fs::metadata(&path)
                .await
                .ok()
                .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
            if stamp.is_some() && stamp != seen {
                let p = path.clone();
                match tokio::task::spawn_blocking(move || read(&p)).await {
                    Ok(Ok(devices)) => {
                        seen = stamp;
                        throttle.clear();
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
                    Ok(Err(message)) => {
                        if throttle.allow(&message) {
                            tracing::warn!(file = %path.display(), error = %message, "devices file refused; the devices loaded before stay");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "devices file reader failed"),
                }
            } else if stamp.is_none() && throttle.allow("missing") {
                tracing::warn!(file = %path.display(), "devices file cannot be read (not there yet?); no device is let in until it can");
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
        let d = parse(&text).unwrap();
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
        let e = parse(&text.replace(FP1, "abc")).unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        assert!(parse(&file("", "")).unwrap().is_empty());
    }
}
