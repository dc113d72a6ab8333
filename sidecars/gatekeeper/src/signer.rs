//! Which key signs now: an HS256 secret, or the key directory as of its last scan (rescanned
//! periodically; with `--rotate-every` this process also writes scheduled keys and prunes
//! retired ones).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Value as Json};
use tracing::{error, info, warn};

use crate::keyring::{self, KeyState, Lifecycle, Ring};
use crate::metrics::Metrics;
use crate::signing::{SigningAlg, SigningKey};

/// Retired keys' files are removed this long after they left the JWKS.
pub const PRUNE_GRACE_S: u64 = 600;

/// The key that signs a token now.
pub struct Current {
    pub kid: Option<String>,
    pub key: Arc<SigningKey>,
}

/// The key directory, kept in memory.
pub struct KeyDir {
    pub dir: PathBuf,
    pub alg: SigningAlg,
    pub lifecycle: Lifecycle,
    pub publish_delay: u64,
    pub rotate_every: Option<u64>,
    ring: ArcSwap<Ring>,
    problems: Mutex<Vec<String>>,
    write_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

/// How tokens are signed.
pub enum Signer {
    Dir(Arc<KeyDir>),
    Hmac {
        key: Arc<SigningKey>,
        kid: Option<String>,
    },
}

impl Signer {
    /// The signing key at `now`; `None` when no key signs (not ready).
    pub fn current(&self, now: u64) -> Option<Current> {
        match self {
            Signer::Hmac { key, kid } => Some(Current {
                kid: kid.clone(),
                key: key.clone(),
            }),
            Signer::Dir(d) => {
                let ring = d.ring.load();
                ring.signing(now).map(|k| Current {
                    kid: Some(k.times.kid.clone()),
                    key: k.key.clone(),
                })
            }
        }
    }

    /// The public JWKS at `now` (empty for HS256: a shared secret is never published).
    pub fn jwks(&self, now: u64) -> Json {
        match self {
            Signer::Hmac { .. } => json!({"keys": []}),
            Signer::Dir(d) => d.ring.load().jwks(now),
        }
    }

    /// The algorithms of the published keys (for the discovery document).
    pub fn algorithms(&self, now: u64) -> Vec<&'static str> {
        match self {
            Signer::Hmac { .. } => vec![SigningAlg::Hs256.name()],
            Signer::Dir(d) => {
                let ring = d.ring.load();
                let mut algs: Vec<&'static str> = ring
                    .keys
                    .iter()
                    .filter(|k| k.times.published(now))
                    .map(|k| k.alg.name())
                    .collect();
                algs.sort_unstable();
                algs.dedup();
                if algs.is_empty() {
                    algs.push(d.alg.name());
                }
                algs
            }
        }
    }
}

impl KeyDir {
    pub fn new(
        dir: PathBuf,
        alg: SigningAlg,
        lifecycle: Lifecycle,
        publish_delay: u64,
        rotate_every: Option<u64>,
        metrics: Arc<Metrics>,
    ) -> KeyDir {
        KeyDir {
            dir,
            alg,
            lifecycle,
            publish_delay,
            rotate_every,
            ring: ArcSwap::from_pointee(Ring::default()),
            problems: Mutex::new(Vec::new()),
            write_error: Mutex::new(None),
            metrics,
        }
    }

    /// Reads the directory again; the ring in force changes only when the scan worked.
    pub fn rescan(&self, now: u64) {
        match keyring::scan(&self.dir) {
            Ok(scan) => {
                {
                    let mut last = self.problems.lock().unwrap_or_else(|p| p.into_inner());
                    if *last != scan.problems {
                        for p in &scan.problems {
                            warn!(dir = %self.dir.display(), problem = %p, "key file skipped");
                        }
                        last.clone_from(&scan.problems);
                    }
                    self.metrics
                        .key_dir_problems
                        .set(i64::try_from(scan.problems.len()).unwrap_or(i64::MAX));
                }
                let before: Vec<String> = self
                    .ring
                    .load()
                    .keys
                    .iter()
                    .map(|k| k.times.kid.clone())
                    .collect();
                let ring = Ring::from_scan(scan, self.lifecycle);
                let after: Vec<String> = ring.keys.iter().map(|k| k.times.kid.clone()).collect();
                if before != after {
                    info!(dir = %self.dir.display(), kids = %after.join(","), "key directory read");
                }
                self.ring.store(Arc::new(ring));
            }
            Err(e) => {
                error!(error = %e, "cannot read the key directory; keeping the keys read before")
            }
        }
        self.update_metrics(now);
    }

    fn update_metrics(&self, now: u64) {
        let ring = self.ring.load();
        let states: Vec<KeyState> = ring.states(now).into_iter().map(|(_, s)| s).collect();
        let published = ring.keys.iter().filter(|k| k.times.published(now)).count();
        self.metrics.key_states(&states, published);
    }

    fn note_write(&self, result: Result<(), String>) {
        let mut last = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => *last = None,
            Err(e) => {
                if last.as_deref() != Some(e.as_str()) {
                    error!(dir = %self.dir.display(), error = %e, "cannot write to the key directory");
                }
                *last = Some(e);
            }
        }
    }

    /// Writes the first key when the directory has none.
    pub fn init(&self, now: u64) {
        if !self.ring.load().keys.is_empty() {
            return;
        }
        let kid = keyring::new_kid(now);
        match keyring::add_key(&self.dir, self.alg, &kid, now, self.publish_delay) {
            Ok(Some(meta)) => {
                self.metrics.rotations.inc();
                info!(kid = %meta.kid, alg = %meta.alg, "wrote the first signing key (it signs at once)");
                self.note_write(Ok(()));
            }
            Ok(None) => {}
            Err(e) => self.note_write(Err(e.to_string())),
        }
        self.rescan(now);
    }

    /// A scheduled rotation when due, and pruning of retired keys (with `--rotate-every`).
    pub fn maintain(&self, now: u64) {
        let Some(every) = self.rotate_every.filter(|e| *e > 0) else {
            return;
        };
        let newest = self.ring.load().newest_created();
        if newest.is_some_and(|c| now >= c.saturating_add(every)) {
            // one kid per period: replicas due at once write the same name, and one wins
            let kid = format!("gk-auto-{every}s-{}", now / every);
            match keyring::add_key(&self.dir, self.alg, &kid, now, self.publish_delay) {
                Ok(Some(meta)) => {
                    self.metrics.rotations.inc();
                    info!(kid = %meta.kid, sign_from = meta.sign_from, "scheduled rotation: new key published");
                    self.note_write(Ok(()));
                }
                Ok(None) => {}
                Err(e) => self.note_write(Err(e.to_string())),
            }
            self.rescan(now);
        }
        match keyring::prune(&self.dir, self.lifecycle, now, PRUNE_GRACE_S) {
            Ok(removed) if !removed.is_empty() => {
                info!(kids = %removed.join(","), "retired keys removed");
                self.rescan(now);
            }
            Ok(_) => {}
            Err(e) => self.note_write(Err(e.to_string())),
        }
    }

    /// Rescans (and maintains) forever (spawn it).
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let now = keyring::unix_now().unwrap_or(0);
                me.rescan(now);
                me.maintain(now);
            })
            .await;
        }
    }
}
