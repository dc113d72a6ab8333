//! The policy in force, and its file watched for changes.
//!
//! The file is polled (every `--policy-poll-interval`, 1 s by default; a poll reads at most
//! 1 MiB and hashes it). A changed file is applied once it has *settled*: the same bytes on two
//! polls in a row, and ending with the line `...`, so a file caught half written is not applied (edit by atomic replacement
//! all the same: write a new file and `mv` it over the old one; Kubernetes ConfigMaps already
//! do). A file that does not validate is refused with every problem named by its field,
//! logged and counted (`edgeguard_gatekeeper_policy_reloads_total{result="failed"}`), and the
//! last good policy stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError, MAX_POLICY_BYTES};

/// Why the policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("policy file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("policy file {path} refused: {source}")]
    Invalid { path: PathBuf, source: PolicyError },
}

#[derive(Default)]
struct Seen {
    /// Hash of the bytes read at the last poll.
    last_read: Option<[u8; 32]>,
    /// Hash of the bytes last applied or refused (not tried again).
    last_decided: Option<[u8; 32]>,
}

pub struct PolicyStore {
    path: PathBuf,
    current: ArcSwapOption<Policy>,
    seen: Mutex<Seen>,
    metrics: Arc<Metrics>,
}

fn read(path: &Path) -> Result<(String, [u8; 32]), PolicyFileError> {
    let bytes = edgeguard_yaml_guard::read_limited(path, MAX_POLICY_BYTES).map_err(|e| {
        PolicyFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    // (parsed with Policy::from_file_text: the file must end with the line `...`)
    let text = String::from_utf8(bytes).map_err(|_| PolicyFileError::Read {
        path: path.to_path_buf(),
        reason: "not UTF-8".into(),
    })?;
    Ok((text, hash))
}

impl PolicyStore {
    /// Loads the file at start: an error (refusing to start) when it is missing or invalid.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Arc<PolicyStore>, PolicyFileError> {
        let (text, hash) = read(path)?;
        let policy = Policy::from_file_text(&text).map_err(|source| {
            metrics.policy_reloads.with_label_values(&["failed"]).inc();
            PolicyFileError::Invalid {
                path: path.to_path_buf(),
                source,
            }
        })?;
        metrics.policy_reloads.with_label_values(&["ok"]).inc();
        metrics.policy_loaded.set(1);
        metrics
            .policy_rules
            .set(i64::try_from(policy.rules.len()).unwrap_or(i64::MAX));
        info!(path = %path.display(), rules = policy.rules.len(), "policy loaded");
        Ok(Arc::new(PolicyStore {
            path: path.to_path_buf(),
            current: ArcSwapOption::from_pointee(policy),
            seen: Mutex::new(Seen {
                last_read: Some(hash),
                last_decided: Some(hash),
            }),
            metrics,
        }))
    }

    /// The policy in force.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current.load_full()
    }

    /// One poll: reads the file, and applies or refuses it once it has settled.
    pub fn poll(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (text, hash) = match read(&self.path) {
            Ok(r) => r,
            Err(e) => {
                // a file being replaced may be briefly missing; only a lasting problem counts
                if seen.last_read.is_none() && seen.last_decided.is_some() {
                    error!(error = %e, "policy file unreadable; keeping the last good policy");
                    self.metrics
                        .policy_reloads
                        .with_label_values(&["failed"])
                        .inc();
                    seen.last_decided = None;
                }
                seen.last_read = None;
                return;
            }
        };
        let settled = seen.last_read == Some(hash);
        seen.last_read = Some(hash);
        if !settled || seen.last_decided == Some(hash) {
            return;
        }
        seen.last_decided = Some(hash);
        match Policy::from_file_text(&text) {
            Ok(policy) => {
                info!(path = %self.path.display(), rules = policy.rules.len(), "policy reloaded");
                self.metrics.policy_reloads.with_label_values(&["ok"]).inc();
                self.metrics
                    .policy_rules
                    .set(i64::try_from(policy.rules.len()).unwrap_or(i64::MAX));
                self.current.store(Some(Arc::new(policy)));
            }
            Err(e) => {
                error!(path = %self.path.display(), error = %e, "policy file refused; keeping the last good policy");
                self.metrics
                    .policy_reloads
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
    }

    /// Polls forever (spawn it).
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            // file reads off the async workers
            let _ = tokio::task::spawn_blocking(move || me.poll()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_once_settled_and_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "rules:\n  - table: a\n...\n").unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let store = PolicyStore::open(&path, metrics.clone()).unwrap();
        let tables = |s: &PolicyStore| -> Vec<String> {
            s.current()
                .unwrap()
                .rules
                .iter()
                .map(|r| r.table.clone())
                .collect()
        };
        assert_eq!(tables(&store), vec!["a"]);

        std::fs::write(&path, "rules:\n  - table: b\n...\n").unwrap();
        store.poll();
        assert_eq!(tables(&store), vec!["a"], "applied before it settled");
        store.poll();
        assert_eq!(tables(&store), vec!["b"]);

        // broken: refused, counted, last good kept; not re-reported on every poll
        std::fs::write(
            &path,
            "rules:\n  - table: c\n    replica: [sometimes]\n...\n",
        )
        .unwrap();
        store.poll();
        store.poll();
        store.poll();
        assert_eq!(tables(&store), vec!["b"]);
        assert_eq!(
            metrics.policy_reloads.with_label_values(&["failed"]).get(),
            1
        );
        assert_eq!(metrics.policy_reloads.with_label_values(&["ok"]).get(), 2);

        // a missing file keeps the policy too
        std::fs::remove_file(&path).unwrap();
        store.poll();
        store.poll();
        assert_eq!(tables(&store), vec!["b"]);

        // fixed: applied
        std::fs::write(&path, "rules:\n  - table: d\n...\n").unwrap();
        store.poll();
        store.poll();
        assert_eq!(tables(&store), vec!["d"]);
    }

    #[test]
    fn an_invalid_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "rules:\n  - table: t\n    where: { sql: \"a = $1\", params: { 1: { env: X } } }\n...\n").unwrap();
        let e = PolicyStore::open(&path, Arc::new(Metrics::new().unwrap()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("rules[0].where.params[1]: unknown claim source"),
            "{e}"
        );
        let e = PolicyStore::open(
            &dir.path().join("none.yaml"),
            Arc::new(Metrics::new().unwrap()),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.starts_with("policy file"), "{e}");
    }
}
