//! Hot reload: the directories of the YAML file and of the `config_file`s it names are
//! watched (directories, so editors that replace files by rename are seen); an event for one
//! of those files reloads after a short debounce, and a 2 s poll of the files' fingerprint
//! catches whatever the watcher misses. A file that validates is published at once; one that
//! does not is refused with its problems logged, and the last good snapshots stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::cache::{NodeKey, SnapshotCache};
use crate::load;
use crate::metrics::Metrics;
use crate::snapshot::{ResourceType, Snapshot};
use crate::ReloadState;

const DEBOUNCE: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_secs(2);

/// `cds=… eds=… lds=… rds=… ecds=…` of the default snapshot, plus the node snapshots.
pub fn summary(snapshots: &BTreeMap<NodeKey, Snapshot>) -> String {
    let mut parts = Vec::new();
    if let Some(d) = snapshots.get(&NodeKey::Default) {
        for t in ResourceType::ORDER {
            parts.push(format!("{}={}", t.short(), d.version(t)));
        }
    }
    let others: Vec<String> = snapshots
        .keys()
        .filter(|k| **k != NodeKey::Default)
        .map(ToString::to_string)
        .collect();
    if !others.is_empty() {
        parts.push(format!("node snapshots: {}", others.join(", ")));
    }
    parts.join(" ")
}

fn changed_types(
    old: &BTreeMap<NodeKey, std::sync::Arc<Snapshot>>,
    new: &BTreeMap<NodeKey, Snapshot>,
) -> String {
    let mut changed = BTreeSet::new();
    for (k, s) in new {
        for t in ResourceType::ORDER {
            if old.get(k).map(|o| o.version(t)) != Some(s.version(t)) {
                changed.insert(t);
            }
        }
    }
    if old.keys().any(|k| !new.contains_key(k)) {
        changed.extend(ResourceType::ORDER);
    }
    if changed.is_empty() {
        return "no resource changed".into();
    }
    let names: Vec<&str> = changed.iter().map(|t| t.short()).collect();
    format!("changed: {}", names.join(", "))
}

/// Canonical absolute form (the watcher reports paths under the directory it was given).
fn absolute(p: &Path) -> PathBuf {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match p.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

/// The running watcher (dropping it stops watching).
pub struct Reloader {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    pub fn start(
        config: PathBuf,
        inputs: Vec<PathBuf>,
        cache: SnapshotCache,
        metrics: Metrics,
        state: Arc<Mutex<ReloadState>>,
    ) -> Result<Reloader, notify::Error> {
        let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    // reading the file (as every reload does) must not trigger a reload
                    if matches!(
                        ev.kind,
                        notify::EventKind::Access(_)
                            | notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                    ) {
                        return;
                    }
                    for p in ev.paths {
                        let _ = tx.send(p);
                    }
                }
            })?;
        let mut dirs = BTreeSet::new();
        let files = watch_inputs(&mut watcher, &mut dirs, &inputs)?;
        let task = tokio::spawn(reload_loop(
            config,
            Watched {
                watcher,
                dirs,
                files,
            },
            rx,
            cache,
            metrics,
            state,
        ));
        Ok(Reloader { task })
    }
}

/// What is watched: directories (for the watcher) and the files in them that matter.
struct Watched {
    watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
}

fn watch_inputs(
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut BTreeSet<PathBuf>,
    inputs: &[PathBuf],
) -> Result<BTreeSet<PathBuf>, notify::Error> {
    let mut files = BTreeSet::new();
    for p in inputs {
        let abs = absolute(p);
        if let Some(dir) = abs.parent() {
            if dirs.insert(dir.to_path_buf()) {
                watcher.watch(dir, RecursiveMode::NonRecursive)?;
            }
        }
        files.insert(abs);
    }
    Ok(files)
}

async fn reload_loop(
    config: PathBuf,
    mut w: Watched,
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
    cache: SnapshotCache,
    metrics: Metrics,
    state: Arc<Mutex<ReloadState>>,
) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            p = rx.recv() => {
                let Some(p) = p else { return };
                if !w.files.contains(&p) && !w.files.contains(&absolute(&p)) {
                    continue;
                }
                // let the writer finish, then take everything that queued up meanwhile
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = poll.tick() => {}
        }
        let path = config.clone();
        let Ok(attempt) = tokio::task::spawn_blocking(move || load::load(&path)).await else {
            continue;
        };
        let unchanged = state
            .lock()
            .map(|s| s.fingerprint == attempt.fingerprint)
            .unwrap_or(false);
        if unchanged {
            continue;
        }
        match watch_inputs(&mut w.watcher, &mut w.dirs, &attempt.inputs) {
            Ok(files) => w.files.extend(files),
            Err(e) => tracing::warn!(
                "cannot watch a configuration file's directory ({e}); relying on the {}s poll",
                POLL.as_secs()
            ),
        }
        match attempt.result {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                let changed = changed_types(&cache.current().by_key, &loaded.snapshots);
                tracing::info!(
                    "configuration reloaded from {} ({changed}; {})",
                    config.display(),
                    summary(&loaded.snapshots)
                );
                metrics.published(loaded.snapshots.iter());
                metrics.reloads.with_label_values(&["ok"]).inc();
                metrics.config_ok.set(1);
                cache.publish(loaded.snapshots);
                if let Ok(mut s) = state.lock() {
                    s.fingerprint = attempt.fingerprint;
                    s.error = None;
                }
            }
            Err(refused) => {
                tracing::error!(
                    "configuration refused, still serving the last good one: {}: {refused}",
                    config.display()
                );
                metrics.reloads.with_label_values(&["refused"]).inc();
                metrics.config_ok.set(0);
                if let Ok(mut s) = state.lock() {
                    s.fingerprint = attempt.fingerprint;
                    s.error = Some(refused.to_string());
                }
            }
        }
    }
}
