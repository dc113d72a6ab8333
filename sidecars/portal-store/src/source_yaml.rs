//! The YAML source: a file watcher (debounced) plus a poll every `app_refresh` as a safety
//! net. A file that does not change is not re-parsed; a bad file is reported once per
//! distinct content and the last good data stays.
//!
//! A file is read only once it has *settled*: its size, modification time and inode have
//! not changed for `file_settle` (a file modified more recently is looked at again after
//! that interval), and they did not change while it was read. So a file still being
//! written in place is not read; one that stays cut short is refused by the parser (it
//! lacks its end marker line, see [`crate::yaml`]).
//!
//! Usage is the file's `monthly_usage` plus the relays added through `Store::add_metered`
//! this month (kept in memory); the month is checked every second, and when it changes the
//! metered counts are dropped and the file's usage republished.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{StoreConfig, StoreOptions};
use crate::observer::{ErrorType, RefreshKind, RefreshOk, SourceType};
use crate::snapshot::Origin;
use crate::store::{lock, serve_snapshot_file, FileWriter, Published, Publisher};
use crate::yaml::{parse_yaml, YamlError, MAX_FILE_BYTES};

pub(crate) fn spawn(
    publisher: Publisher,
    path: PathBuf,
    cfg: &StoreConfig,
    options: &StoreOptions,
) -> Vec<JoinHandle<()>> {
    let w = YamlWatcher {
        publisher,
        path,
        poll: cfg.app_refresh,
        debounce: options.file_debounce,
        settle: options.file_settle,
        file: FileWriter::new(cfg.snapshot_file.clone()),
        last_hash: None,
        last_error: None,
        tried_file: false,
    };
    vec![crate::background::handle().spawn(w.run())]
}

/// How often the month is checked.
const ROLLOVER_CHECK: Duration = Duration::from_secs(1);

/// What a reload attempt concluded.
enum Loaded {
    /// Loaded, unchanged, or refused: nothing to do until the file changes.
    Done,
    /// The file is still changing: look again once it may have settled.
    Unsettled,
}

/// What tells a file's versions apart without reading it.
#[derive(Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: SystemTime,
    inode: u64,
}

async fn file_state(path: &Path) -> std::io::Result<FileState> {
    let m = tokio::fs::metadata(path).await?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileState {
        len: m.len(),
        modified: m.modified()?,
        inode,
    })
}

struct YamlWatcher {
    publisher: Publisher,
    path: PathBuf,
    poll: Duration,
    debounce: Duration,
    settle: Duration,
    file: FileWriter,
    /// Digest of the last content loaded or rejected.
    last_hash: Option<[u8; 32]>,
    last_error: Option<String>,
    tried_file: bool,
}

/// Watches the file's directory (editors and Kubernetes ConfigMaps replace files by rename,
/// which a watch on the file itself would miss).
fn watch(path: &Path, wake: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            // the store's own reads (opening the file, closing it unwritten) change nothing:
            // waking on them would re-read the file every debounce interval, forever
            Ok(ev) if is_read_only(&ev.kind) => false,
            Ok(ev) => ev.paths.iter().any(|p| {
                let f = p.file_name();
                f == name.as_deref() || f.is_some_and(|f| f.to_string_lossy().starts_with(".."))
            }),
            Err(_) => true,
        };
        if relevant {
            let _ = wake.try_send(());
        }
    })?;
    w.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(w)
}

/// Events of a file opened or read without being written.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

impl YamlWatcher {
    async fn run(mut self) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut watcher = None;
        let shared = self.publisher.shared.clone();
        // the month rollover is checked every second, however often the file is reloaded
        let mut month_check = tokio::time::interval(ROLLOVER_CHECK);
        month_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if watcher.is_none() {
                match watch(&self.path, tx.clone()) {
                    Ok(w) => watcher = Some(w),
                    Err(e) => {
                        tracing::warn!(file = %self.path.display(), error = %e, "cannot watch the portal apps file; polling every {:?}", self.poll)
                    }
                }
            }
            // a file still changing is looked at again once it may have settled
            let next = match self.reload().await {
                Loaded::Done => self.poll,
                Loaded::Unsettled => self.settle.max(Duration::from_millis(10)),
            };
            let deadline = tokio::time::Instant::now() + next;
            loop {
                tokio::select! {
                    _ = rx.recv() => {
                        // let a burst of events (write, rename, chmod) settle
                        tokio::time::sleep(self.debounce).await;
                        while rx.try_recv().is_ok() {}
                        break;
                    }
                    // an unchanged file is current already: reload() re-reads and compares
                    _ = shared.refresh_now.notified() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    // the month rollover, without re-reading the file
                    _ = month_check.tick() => self.rollover(),
                }
            }
        }
    }

    /// Starts the clock's month if the usage counts another one.
    fn rollover(&self) {
        if let Some(m) = &self.publisher.shared.metered {
            let month = self.publisher.shared.clock_month();
            lock(m).roll_to(month, &self.publisher);
        }
    }

    /// Publishes a file's apps and usage, with this month's metered relays added, under the
    /// metered lock (so `Store::add_metered` cannot interleave).
    fn publish_file(&self, data: crate::yaml::YamlData) -> Published {
        let shared = &self.publisher.shared;
        let Some(metered) = &shared.metered else {
            let month = shared.clock_month();
            return self.publisher.publish_full(
                data.apps,
                Some((data.usage, month)),
                Origin::Yaml,
                Some(SystemTime::now()),
            );
        };
        let mut m = lock(metered);
        m.roll_to(shared.clock_month(), &self.publisher);
        let usage = m.combined(&data.usage);
        m.file = Some(data.usage);
        let month = m.month;
        self.publisher.publish_full(
            data.apps,
            Some((usage, month)),
            Origin::Yaml,
            Some(SystemTime::now()),
        )
    }

    fn fail(&mut self, message: String, hash: Option<[u8; 32]>) {
        let shared = &self.publisher.shared;
        {
            let mut st = shared.status();
            st.refresh_errors += 1;
            st.consecutive_errors += 1;
            st.last_error = Some(message.clone());
        }
        // report a given bad content (or a given read error) once, not at every poll
        let repeat = self.last_error.as_deref() == Some(message.as_str()) && self.last_hash == hash;
        if !repeat {
            let loaded = shared.current().is_loaded();
            tracing::error!(error = %message, keeping_last_good = loaded, "portal apps file rejected");
            shared
                .observer
                .refresh_error(SourceType::PortalAppStore, ErrorType::FileError);
        }
        self.last_error = Some(message);
        self.last_hash = hash;
    }

    /// Reads the file once it has settled (see the module docs).
    async fn read_settled(&self) -> Result<Option<Vec<u8>>, String> {
        let read_error = |source: std::io::Error| {
            YamlError::Read {
                path: self.path.clone(),
                source,
            }
            .to_string()
        };
        let before = file_state(&self.path).await.map_err(read_error)?;
        edgeguard_yaml_guard::check_size(before.len, MAX_FILE_BYTES)
            .map_err(|e| format!("portal apps file {}: {e}", self.path.display()))?;
        let age = SystemTime::now()
            .duration_since(before.modified)
            .unwrap_or(Duration::ZERO);
        if age < self.settle {
            // modified within the settle interval: read only if it stays unchanged for one
            tokio::time::sleep(self.settle).await;
            if file_state(&self.path).await.map_err(read_error)? != before {
                return Ok(None);
            }
        }
        let path = self.path.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            edgeguard_yaml_guard::read_limited(&path, MAX_FILE_BYTES)
        })
        .await
        .map_err(|e| format!("reading the portal apps file failed: {e}"))?
        .map_err(|e| match e {
            edgeguard_yaml_guard::LimitError::Io(source) => read_error(source),
            other => format!("portal apps file {}: {other}", self.path.display()),
        })?;
        if file_state(&self.path).await.map_err(read_error)? != before {
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    async fn reload(&mut self) -> Loaded {
        let shared = self.publisher.shared.clone();
        let started = Instant::now();
        let bytes = match self.read_settled().await {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::debug!(file = %self.path.display(), "portal apps file still changing; read once it settles");
                return Loaded::Unsettled;
            }
            Err(message) => {
                self.fail(message, None);
                self.fallback().await;
                return Loaded::Done;
            }
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.last_hash == Some(hash) {
            if self.last_error.is_none() {
                // unchanged and good: the data is confirmed fresh
                shared.status().last_success = Some(SystemTime::now());
                shared.status().usage_last_success = Some(SystemTime::now());
            }
            return Loaded::Done;
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("portal apps file {}: not UTF-8 ({e})", self.path.display());
                self.fail(msg, Some(hash));
                self.fallback().await;
                return Loaded::Done;
            }
        };
        let path = self.path.clone();
        let parsed = tokio::task::spawn_blocking(move || parse_yaml(&text, &path)).await;
        let data = match parsed {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                self.fail(e.to_string(), Some(hash));
                self.fallback().await;
                return Loaded::Done;
            }
            Err(e) => {
                self.fail(
                    format!("parsing the portal apps file failed: {e}"),
                    Some(hash),
                );
                return Loaded::Done;
            }
        };
        if !data.missing_keys.is_empty() {
            tracing::warn!(count = data.missing_keys.len(), apps = ?data.missing_keys.iter().take(10).collect::<Vec<_>>(), "apps with secret_key_required but no key: every request to them is denied (401)");
        }
        let app_count = data.apps.len();
        let accounts = data.accounts;
        let published = self.publish_file(data);
        let duration = started.elapsed();
        let had_error = self.last_error.take().is_some();
        self.last_hash = Some(hash);
        {
            let mut st = shared.status();
            st.last_success = Some(SystemTime::now());
            st.usage_last_success = st.last_success;
            st.last_refresh_duration = Some(duration);
            st.consecutive_errors = 0;
        }
        tracing::info!(
            file = %self.path.display(),
            apps = app_count,
            accounts,
            changed = published.apps_changed + published.usage_changed,
            version = published.version,
            recovered = had_error,
            "portal apps file loaded"
        );
        let snap = shared.current();
        shared.observer.refresh_ok(&RefreshOk {
            source_type: SourceType::PortalAppStore,
            kind: RefreshKind::Full,
            duration,
            apps: snap.app_count(),
            accounts: snap.account_count(),
            changed: published.apps_changed,
            version: published.version,
        });
        shared.observer.refresh_ok(&RefreshOk {
            source_type: SourceType::RateLimitStore,
            kind: RefreshKind::Full,
            duration,
            apps: snap.app_count(),
            accounts: snap.usage_count(),
            changed: published.usage_changed,
            version: published.version,
        });
        shared.observer.usage(&snap.usage_summary());
        self.file.write(&shared, snap).await;
        Loaded::Done
    }

    /// Serves the last-good snapshot file once, if nothing was ever loaded.
    async fn fallback(&mut self) {
        if self.tried_file || self.publisher.shared.current().is_loaded() {
            return;
        }
        self.tried_file = true;
        if let Some(path) = self.file.path().cloned() {
            serve_snapshot_file(&self.publisher, &path).await;
        }
    }
}
