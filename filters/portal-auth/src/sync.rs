//! Keeping the store copy current: when to ask, what to ask, what to do with the answer.

use std::time::Duration;

use edgeguard_host::{Background, CallError, Level, Metrics};
use edgeguard_verdict::portal_wire::{Update, UpdateError};

use crate::config::{Config, StoreSource};
use crate::engine::Copy;
use crate::metrics;

/// A full copy arriving in parts, assembled aside until the last one.
#[derive(Clone)]
pub struct Paging {
    pub copy: Copy,
    /// The part to ask for next, of `parts`.
    pub next: u32,
    pub parts: u32,
    /// The lowest version among the parts received: the copy's version once complete, so the
    /// next deltas replay whatever changed while it paged.
    pub version: u64,
}

impl std::fmt::Debug for Paging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paging")
            .field("next", &self.next)
            .field("parts", &self.parts)
            .field("version", &self.version)
            .field("apps", &self.copy.app_count())
            .finish()
    }
}

/// Fetch bookkeeping (times in Unix seconds).
#[derive(Clone, Debug, Default)]
pub struct Sync {
    pub in_flight_since: Option<f64>,
    pub last_start: Option<f64>,
    /// Ask for everything next time (after a version gap or a decode error).
    pub want_full: bool,
    pub consecutive_failures: u64,
    /// The call in flight.
    pub call: Option<u64>,
    /// A full copy being assembled from parts.
    pub paging: Option<Paging>,
}

/// What a fetch brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    Unchanged,
    Applied {
        version: u64,
        apps: usize,
    },
    /// A part of a full copy arrived; the copy in use is unchanged until the last one.
    Part {
        part: u32,
        parts: u32,
    },
}

/// How often the owner calls [`Sync::tick`] (at most; the refresh interval decides fetches).
pub fn tick_period(source: &StoreSource) -> Duration {
    Duration::from_millis(source.refresh_interval_ms.min(100))
}

impl Sync {
    /// Starts a fetch through `bg` when one is due.
    pub fn tick(
        &mut self,
        config: &Config,
        copy_version: u64,
        bg: &dyn Background,
        metrics: &dyn Metrics,
        now: f64,
    ) {
        let source = &config.store;
        if !self.due(source, now) {
            return;
        }
        let path = self.path(source, copy_version);
        let authorization = format!("Bearer {}", config.store_token.expose());
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", source.authority.as_str()),
            ("accept", edgeguard_verdict::portal_wire::CONTENT_TYPE),
            ("authorization", authorization.as_str()),
            ("user-agent", "edgeguard-portal-auth"),
        ];
        self.started(now);
        match bg.http_call(
            &source.cluster,
            &headers,
            &[],
            Duration::from_millis(source.timeout_ms),
        ) {
            Ok(call) => self.call = Some(call),
            Err(e) => {
                self.in_flight_since = None;
                self.consecutive_failures += 1;
                metrics.increment(metrics::FETCH_FAILED);
                if self.consecutive_failures == 1 {
                    let (level, what) = if e == CallError::UnknownCluster {
                        (
                            Level::Critical,
                            "is not a cluster this Envoy knows: the store can never load and every request is answered 503; define the cluster".to_string(),
                        )
                    } else {
                        (Level::Warn, format!("cannot be called ({e})"))
                    };
                    bg.log(
                        level,
                        &format!(
                            "edgeguard portal-auth: store.cluster '{}' {what}",
                            source.cluster
                        ),
                    );
                }
            }
        }
    }

    /// Applies the answer to call `call` to `copy`. False when the call is not ours.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        copy: &mut Copy,
        call: u64,
        status: Option<&str>,
        body: Option<&[u8]>,
        bg: &dyn Background,
        metrics: &dyn Metrics,
    ) -> bool {
        if self.call != Some(call) {
            return false;
        }
        self.call = None;
        match self.finished(copy, status, body) {
            Ok(fetched) => {
                metrics.increment(metrics::FETCH_OK);
                if let Fetched::Applied { version, apps } = fetched {
                    metrics.set_gauge(metrics::STORE_VERSION, version);
                    metrics.set_gauge(metrics::STORE_APPS, apps as u64);
                    bg.log(
                        Level::Debug,
                        &format!(
                            "edgeguard portal-auth: store copy at version {version} ({apps} apps)"
                        ),
                    );
                }
            }
            Err(e) => {
                metrics.increment(metrics::FETCH_FAILED);
                // one line per failure streak start, then every 30th, to keep the log readable
                if self.consecutive_failures == 1 || self.consecutive_failures.is_multiple_of(30) {
                    let keeping = if copy.loaded {
                        "keeping the last copy"
                    } else {
                        "no copy yet"
                    };
                    bg.log(
                        Level::Warn,
                        &format!("edgeguard portal-auth: store fetch failed: {e}; {keeping}"),
                    );
                }
            }
        }
        true
    }

    /// Whether a fetch should start now.
    pub fn due(&self, source: &StoreSource, now: f64) -> bool {
        if let Some(since) = self.in_flight_since {
            // Envoy enforces the call timeout; this only guards against a lost callback.
            if now - since < source.timeout_ms as f64 / 1000.0 + 5.0 {
                return false;
            }
        }
        // the next part of a full copy is asked for at once
        self.paging.is_some()
            || self
                .last_start
                .is_none_or(|t| now - t >= source.refresh_interval_ms as f64 / 1000.0)
    }

    /// The request path for a copy at `version`.
    pub fn path(&self, source: &StoreSource, version: u64) -> String {
        if let Some(p) = &self.paging {
            return format!("{}?since=0&part={}&parts={}", source.path, p.next, p.parts);
        }
        let since = if self.want_full { 0 } else { version };
        format!("{}?since={since}", source.path)
    }

    pub fn started(&mut self, now: f64) {
        self.in_flight_since = Some(now);
        self.last_start = Some(now);
    }

    /// Applies a fetch result to the copy. On any error the copy keeps its last content.
    pub fn finished(
        &mut self,
        copy: &mut Copy,
        status: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Fetched, String> {
        self.in_flight_since = None;
        let result = match status {
            Some("304") => Ok(Fetched::Unchanged),
            Some("200") => match Update::decode(body.unwrap_or(&[])) {
                Ok(u) if u.full && u.parts > 1 => self.part(copy, u),
                Ok(u) => {
                    self.paging = None;
                    match copy.apply(u) {
                        Ok(()) => {
                            self.want_full = false;
                            Ok(Fetched::Applied {
                                version: copy.version,
                                apps: copy.app_count(),
                            })
                        }
                        Err(e) => {
                            self.want_full = true;
                            Err(e.to_string())
                        }
                    }
                }
                Err(e @ UpdateError::VersionGap { .. }) | Err(e @ UpdateError::Decode(_)) => {
                    self.paging = None;
                    self.want_full = true;
                    Err(e.to_string())
                }
            },
            Some(s) => Err(format!("store endpoint answered HTTP {s}")),
            None => Err("store endpoint unreachable (no response)".to_string()),
        };
        match &result {
            Ok(_) => self.consecutive_failures = 0,
            Err(_) => {
                // a failed part restarts the full copy (the next fetch starts at part 0)
                self.paging = None;
                self.consecutive_failures += 1
            }
        }
        result
    }

    /// One part of a full copy: part 0 starts assembling aside, the others extend it, the last
    /// one replaces `copy`.
    fn part(&mut self, copy: &mut Copy, u: Update) -> Result<Fetched, String> {
        let (part, parts, version) = (u.part, u.parts, u.version);
        if part == 0 {
            let mut staging = Copy::default();
            staging.apply(u).map_err(|e| e.to_string())?;
            self.paging = Some(Paging {
                copy: staging,
                next: 1,
                parts,
                version,
            });
        } else {
            let Some(p) = self
                .paging
                .as_mut()
                .filter(|p| p.next == part && p.parts == parts)
            else {
                self.want_full = true;
                return Err(format!(
                    "store part {part} of {parts} does not continue the copy being assembled"
                ));
            };
            p.copy.extend(u);
            p.version = p.version.min(version);
            p.next += 1;
        }
        match self.paging.take() {
            Some(mut p) if p.next >= p.parts => {
                p.copy.version = p.version;
                p.copy.loaded = true;
                *copy = p.copy;
                self.want_full = false;
                Ok(Fetched::Applied {
                    version: copy.version,
                    apps: copy.app_count(),
                })
            }
            other => {
                self.paging = other;
                Ok(Fetched::Part { part, parts })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeguard_verdict::portal::{AppAuth, PortalApp};
    use edgeguard_verdict::portal_wire::AppChange;

    fn source() -> StoreSource {
        StoreSource {
            cluster: "c".into(),
            authority: "a".into(),
            path: "/store/v1/snapshot".into(),
            refresh_interval_ms: 1000,
            timeout_ms: 2000,
            token_env: "T".into(),
        }
    }

    fn update(from: u64, version: u64, full: bool, ids: &[&str]) -> Vec<u8> {
        Update {
            from,
            version,
            full,
            apps: ids
                .iter()
                .map(|id| AppChange {
                    id: id.to_string(),
                    app: Some(PortalApp {
                        account_id: "acc".into(),
                        plan: "PLAN_FREE".into(),
                        auth: AppAuth::Public,
                        monthly_user_limit: 0,
                        client_auth: Default::default(),
                    }),
                })
                .collect(),
            usage: vec![],
            ..Default::default()
        }
        .encode()
    }

    #[test]
    fn schedule_and_apply() {
        let s = source();
        let mut sync = Sync::default();
        let mut copy = Copy::default();
        assert!(sync.due(&s, 0.0));
        assert_eq!(sync.path(&s, copy.version), "/store/v1/snapshot?since=0");
        sync.started(0.0);
        assert!(!sync.due(&s, 0.5));
        assert_eq!(
            sync.finished(
                &mut copy,
                Some("200"),
                Some(&update(0, 3, true, &["a", "b"]))
            ),
            Ok(Fetched::Applied {
                version: 3,
                apps: 2
            })
        );
        assert!(!sync.due(&s, 0.9));
        assert!(sync.due(&s, 1.0));
        assert_eq!(sync.path(&s, copy.version), "/store/v1/snapshot?since=3");
        assert_eq!(
            sync.finished(&mut copy, Some("304"), None),
            Ok(Fetched::Unchanged)
        );
        // failures keep the copy
        assert!(sync.finished(&mut copy, Some("503"), Some(b"x")).is_err());
        assert!(sync
            .finished(&mut copy, None, None)
            .unwrap_err()
            .contains("unreachable"));
        assert_eq!(copy.app_count(), 2);
        assert_eq!(sync.consecutive_failures, 2);
        // a delta that does not start at our version: ask for everything next time
        assert!(sync
            .finished(&mut copy, Some("200"), Some(&update(7, 8, false, &["c"])))
            .unwrap_err()
            .contains("starts at version 7"));
        assert_eq!(sync.path(&s, copy.version), "/store/v1/snapshot?since=0");
        assert!(sync
            .finished(&mut copy, Some("200"), Some(b"\xff\xff\xff"))
            .is_err());
        assert_eq!(copy.app_count(), 2);
        assert_eq!(
            sync.finished(&mut copy, Some("200"), Some(&update(0, 9, true, &["z"]))),
            Ok(Fetched::Applied {
                version: 9,
                apps: 1
            })
        );
        assert_eq!(sync.path(&s, copy.version), "/store/v1/snapshot?since=9");
    }

    #[test]
    fn lost_callback_does_not_block_forever() {
        let s = source();
        let mut sync = Sync::default();
        sync.started(0.0);
        assert!(!sync.due(&s, 6.9));
        assert!(sync.due(&s, 7.1));
    }
}
