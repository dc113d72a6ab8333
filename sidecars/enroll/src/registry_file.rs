//! The registry as a YAML file (DB-less mode), owned by this service (one replica).
//!
//! ```yaml
//! # edgeguard device registry, written by `edgeguard enroll` ...
//! format: edgeguard-devices
//! format_version: 1
//! devices:
//! - id: dev_0a1b2c3d4e5f60718293
//!   account_id: acc_1
//!   spiffe_id: spiffe://edge.example/device/dev_0a1b2c3d4e5f60718293
//!   fingerprint_sha256: 5e88...
//!   ...
//! enrollment_tokens: [...]      # digests only, never tokens
//! revoked_certificates: [...]
//! ...
//! ```
//!
//! Every change is applied to a copy of the state, the copy written to a temporary file next
//! to the registry, fsynced, renamed over it and the folder fsynced; only then does the
//! state in memory change and the request get its answer. The file ends with the YAML end
//! marker line `...` (like the portal-apps file), so a cut copy is refused at start.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::ca::Issued;
use crate::registry::{
    Device, DeviceCounts, DeviceError, DeviceState, EnrollError, Enrolled, Grant,
    RevokedCertificate, StoreError, TokenRecord,
};

const FORMAT: &str = "edgeguard-devices";
const FORMAT_VERSION: u32 = 1;
/// The largest registry file read at start.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
const HEADER: &str = "# edgeguard device registry, written by `edgeguard enroll` (atomically: temporary file + rename).\n# Do not edit while it runs. Enrollment tokens are kept as SHA-256 digests only.\n";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: String,
    format_version: u32,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    enrollment_tokens: Vec<TokenRecord>,
    #[serde(default)]
    revoked_certificates: Vec<RevokedCertificate>,
}

pub struct FileRegistry {
    path: PathBuf,
    state: Mutex<State>,
}

fn file_err(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The text of a state: header, YAML, end marker.
fn render(state: &State) -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(state)?;
    Ok(format!("{HEADER}{body}...\n"))
}

fn parse(path: &Path, text: &str) -> Result<State, StoreError> {
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    if last.map(str::trim_end) != Some("...") {
        return Err(file_err(
            path,
            "does not end with the end marker line `...`: it may be cut short (restore it from a backup; edgeguard writes it atomically)",
        ));
    }
    edgeguard_yaml_guard::check_depth(text, edgeguard_yaml_guard::MAX_DEPTH)
        .map_err(|e| file_err(path, e.to_string()))?;
    let state: State = serde_yaml_ng::from_str(text)
        .map_err(|e| file_err(path, format!("not a devices file: {e}")))?;
    if state.format != FORMAT || state.format_version != FORMAT_VERSION {
        return Err(file_err(
            path,
            format!(
                "format '{}' version {} is not '{FORMAT}' version {FORMAT_VERSION}",
                state.format, state.format_version
            ),
        ));
    }
    Ok(state)
}

/// Writes `text` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "devices.yaml".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl FileRegistry {
    /// Reads the registry, or creates an empty one when the file does not exist.
    pub fn open(path: &Path) -> Result<FileRegistry, StoreError> {
        let state = match std::fs::metadata(path) {
            Ok(_) => {
                let bytes = edgeguard_yaml_guard::read_limited(path, MAX_FILE_BYTES)
                    .map_err(|e| file_err(path, e.to_string()))?;
                let text = String::from_utf8(bytes).map_err(|_| file_err(path, "not UTF-8"))?;
                parse(path, &text)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = State {
                    format: FORMAT.into(),
                    format_version: FORMAT_VERSION,
                    ..State::default()
                };
                let text = render(&state).map_err(|e| file_err(path, e.to_string()))?;
                write_atomically(path, &text)
                    .map_err(|e| file_err(path, format!("cannot create it: {e}")))?;
                state
            }
            Err(e) => return Err(file_err(path, e.to_string())),
        };
        Ok(FileRegistry {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    pub fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    /// Writes `next` (durably) and makes it the state.
    async fn commit(&self, current: &mut State, next: State) -> Result<(), StoreError> {
        let text = render(&next).map_err(|e| file_err(&self.path, e.to_string()))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &text))
            .await
            .map_err(|e| file_err(&self.path, e.to_string()))?
            .map_err(|e| file_err(&self.path, format!("cannot write it: {e}")))?;
        *current = next;
        Ok(())
    }

    pub async fn ready(&self) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let probe = dir.join(format!(".edgeguard-enroll-ready-{}", std::process::id()));
        tokio::task::spawn_blocking(move || {
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .await
        .map_err(|e| file_err(&self.path, e.to_string()))?
        .map_err(|e| file_err(&self.path, format!("its folder is not writable: {e}")))
    }

    pub async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        if st
            .enrollment_tokens
            .iter()
            .any(|x| x.digest == t.digest || x.id == t.id)
        {
            return Err(StoreError::Conflict("token id or digest exists".into()));
        }
        let mut next = st.clone();
        next.enrollment_tokens.push(t.clone());
        self.commit(&mut st, next).await
    }

    pub async fn create_rekey_token(&self, t: &TokenRecord) -> Result<(), DeviceError> {
        let id = t.device_id.clone().unwrap_or_default();
        {
            let st = self.state.lock().await;
            match st.devices.iter().find(|d| d.id == id) {
                None => return Err(DeviceError::NotFound(id)),
                Some(d) if d.revoked_at.is_some() => return Err(DeviceError::Revoked(id)),
                Some(_) => {}
            }
        }
        Ok(self.create_token(t).await?)
    }

    pub async fn enroll<F>(&self, digest: &str, now: i64, sign: F) -> Result<Enrolled, EnrollError>
    where
        F: FnOnce(&Grant) -> Result<(Issued, String), EnrollError> + Send,
    {
        let mut st = self.state.lock().await;
        let Some(ti) = st.enrollment_tokens.iter().position(|t| t.digest == digest) else {
            return Err(EnrollError::UnknownToken);
        };
        let token = st.enrollment_tokens[ti].clone();
        if token.expires_at <= now {
            return Err(EnrollError::TokenExpired);
        }
        if token.uses_left <= 0 {
            return Err(EnrollError::TokenUsedUp);
        }
        let (device_id, replaces) = match &token.device_id {
            Some(id) => match st.devices.iter().find(|d| &d.id == id) {
                Some(d) if d.revoked_at.is_none() => {
                    (id.clone(), Some(d.fingerprint_sha256.clone()))
                }
                _ => return Err(EnrollError::DeviceRevoked(id.clone())),
            },
            None => (crate::new_device_id(), None),
        };
        let grant = Grant {
            token_id: token.id.clone(),
            account_id: token.account_id.clone(),
            device_id,
            replaces,
        };
        let (issued, label) = sign(&grant)?;
        let mut next = st.clone();
        if let Some(t) = next.enrollment_tokens.get_mut(ti) {
            t.uses_left -= 1;
        }
        match &grant.replaces {
            Some(old) => {
                if !next
                    .revoked_certificates
                    .iter()
                    .any(|r| &r.fingerprint_sha256 == old)
                {
                    next.revoked_certificates.push(RevokedCertificate {
                        fingerprint_sha256: old.clone(),
                        device_id: grant.device_id.clone(),
                        revoked_at: now,
                    });
                }
                if let Some(d) = next.devices.iter_mut().find(|d| d.id == grant.device_id) {
                    d.fingerprint_sha256 = issued.fingerprint_sha256.clone();
                    d.serial = issued.serial.clone();
                    d.label = label.clone();
                    d.not_before = issued.not_before;
                    d.not_after = issued.not_after;
                }
            }
            None => next.devices.push(Device {
                id: grant.device_id.clone(),
                account_id: grant.account_id.clone(),
                spiffe_id: issued.spiffe_id.clone(),
                fingerprint_sha256: issued.fingerprint_sha256.clone(),
                serial: issued.serial.clone(),
                label: label.clone(),
                not_before: issued.not_before,
                not_after: issued.not_after,
                revoked_at: None,
                created_at: now,
                last_seen_at: None,
            }),
        }
        self.commit(&mut st, next).await?;
        Ok(Enrolled {
            issued,
            grant,
            label,
        })
    }

    pub async fn devices(&self, account_id: Option<&str>) -> Vec<Device> {
        let st = self.state.lock().await;
        st.devices
            .iter()
            .filter(|d| account_id.is_none_or(|a| d.account_id == a))
            .cloned()
            .collect()
    }

    pub async fn device(&self, id: &str) -> Option<Device> {
        let st = self.state.lock().await;
        st.devices.iter().find(|d| d.id == id).cloned()
    }

    /// Voids every unused enrollment or re-key token of an account; returns how many.
    pub async fn void_account_tokens(&self, account_id: &str) -> Result<u64, StoreError> {
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let mut n = 0u64;
        for t in next.enrollment_tokens.iter_mut() {
            if t.account_id == account_id && t.uses_left > 0 {
                t.uses_left = 0;
                n += 1;
            }
        }
        if n > 0 {
            self.commit(&mut st, next).await?;
        }
        Ok(n)
    }

    pub async fn revoke(&self, id: &str, now: i64) -> Result<Device, DeviceError> {
        let mut st = self.state.lock().await;
        let Some(di) = st.devices.iter().position(|d| d.id == id) else {
            return Err(DeviceError::NotFound(id.to_string()));
        };
        let mut next = st.clone();
        let mut device = next.devices[di].clone();
        if device.revoked_at.is_none() {
            device.revoked_at = Some(now);
            next.devices[di] = device.clone();
        }
        if !next
            .revoked_certificates
            .iter()
            .any(|r| r.fingerprint_sha256 == device.fingerprint_sha256)
        {
            next.revoked_certificates.push(RevokedCertificate {
                fingerprint_sha256: device.fingerprint_sha256.clone(),
                device_id: id.to_string(),
                revoked_at: now,
            });
        }
        for t in next.enrollment_tokens.iter_mut() {
            if t.device_id.as_deref() == Some(id) {
                t.uses_left = 0;
            }
        }
        self.commit(&mut st, next).await?;
        Ok(device)
    }

    pub async fn revoked_certificates(&self, device_id: Option<&str>) -> Vec<RevokedCertificate> {
        let st = self.state.lock().await;
        st.revoked_certificates
            .iter()
            .filter(|r| device_id.is_none_or(|d| r.device_id == d))
            .cloned()
            .collect()
    }

    pub async fn counts(&self, now: i64, seen_since: i64) -> DeviceCounts {
        let st = self.state.lock().await;
        let mut c = DeviceCounts::default();
        for d in &st.devices {
            match d.state(now) {
                DeviceState::Active => {
                    c.active += 1;
                    if d.last_seen_at.is_some_and(|t| t >= seen_since) {
                        c.seen += 1;
                    }
                }
                DeviceState::Expired => c.expired += 1,
                DeviceState::Revoked => c.revoked += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        let reg = FileRegistry::open(&path).unwrap();
        drop(reg);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("\n...\n"), "{text}");
        assert!(FileRegistry::open(&path).is_ok());
        let cut = &text[..text.len() - 4];
        std::fs::write(&path, cut).unwrap();
        let e = FileRegistry::open(&path).err().unwrap().to_string();
        assert!(e.contains("end marker"), "{e}");
        std::fs::write(&path, "format: other\nformat_version: 1\n...\n").unwrap();
        let e = FileRegistry::open(&path).err().unwrap().to_string();
        assert!(e.contains("edgeguard-devices"), "{e}");
    }
}
