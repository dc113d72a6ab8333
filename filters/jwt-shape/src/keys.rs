//! Per-provider key state and the schedule of background JWKS fetches. Pure: the wasm root
//! context asks [`ProviderKeys::fetch_due`] on every tick and reports results back.

use std::sync::Arc;

use edgeguard_verdict::jwk::{JwksError, KeySet};

use crate::config::{KeySource, RemoteJwks};

/// Most bytes read from a JWKS response.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why a fetch is starting (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchReason {
    Initial,
    Retry,
    Refresh,
    UnknownKid,
}

/// State of one provider's keys.
#[derive(Debug)]
pub struct ProviderKeys {
    /// The current set; `None` until a remote JWKS loaded once.
    pub set: Option<Arc<KeySet>>,
    /// Bumped whenever the set changes, so cached verdicts of an old set are not reused.
    pub generation: u64,
    pub remote: Option<RemoteState>,
}

/// Fetch bookkeeping of a remote JWKS (times in Unix seconds).
#[derive(Clone, Debug, Default)]
pub struct RemoteState {
    pub config: Option<RemoteJwks>,
    pub in_flight_since: Option<f64>,
    pub last_start: Option<f64>,
    pub last_success: Option<f64>,
    pub last_failure: Option<f64>,
    /// A token named a kid we do not hold; fetch again as soon as the rate limit allows.
    pub refetch_wanted: bool,
    pub last_kid_refetch: Option<f64>,
    /// The critical line about an unknown cluster was written.
    pub unknown_cluster_logged: bool,
}

impl ProviderKeys {
    pub fn new(source: &KeySource) -> ProviderKeys {
        match source {
            KeySource::Static(set) => ProviderKeys {
                set: Some(Arc::new(set.clone())),
                generation: 1,
                remote: None,
            },
            KeySource::Remote(r) => ProviderKeys {
                set: None,
                generation: 0,
                remote: Some(RemoteState {
                    config: Some(r.clone()),
                    ..Default::default()
                }),
            },
        }
    }

    /// Whether a fetch should start now, and why.
    pub fn fetch_due(&self, now: f64) -> Option<FetchReason> {
        let r = self.remote.as_ref()?;
        let cfg = r.config.as_ref()?;
        if let Some(since) = r.in_flight_since {
            // Envoy enforces the call timeout; this only guards against a lost callback.
            if now - since < cfg.timeout_ms as f64 / 1000.0 + 5.0 {
                return None;
            }
        }
        let since = |t: Option<f64>| t.map_or(f64::INFINITY, |t| now - t);
        let Some(_) = r.last_start else {
            return Some(FetchReason::Initial);
        };
        let failing = self.set.is_none()
            || match (r.last_failure, r.last_success) {
                (Some(f), Some(s)) => f > s,
                (Some(_), None) => true,
                _ => false,
            };
        if r.refetch_wanted
            && self.set.is_some()
            && since(r.last_kid_refetch) >= cfg.unknown_kid_refetch_interval_s as f64
        {
            return Some(FetchReason::UnknownKid);
        }
        if failing {
            return (since(r.last_start) >= cfg.retry_interval_s as f64)
                .then_some(FetchReason::Retry);
        }
        (since(r.last_success) >= cfg.refresh_interval_s as f64).then_some(FetchReason::Refresh)
    }

    /// Marks a fetch as started.
    pub fn fetch_started(&mut self, reason: FetchReason, now: f64) {
        if let Some(r) = self.remote.as_mut() {
            r.in_flight_since = Some(now);
            r.last_start = Some(now);
            if reason == FetchReason::UnknownKid {
                r.last_kid_refetch = Some(now);
                r.refetch_wanted = false;
            }
        }
    }

    /// Records a fetch result: a new key set, or why there is none. The last good set stays
    /// in place when a fetch fails.
    pub fn fetch_finished(&mut self, result: Result<KeySet, String>, now: f64) {
        let Some(r) = self.remote.as_mut() else {
            return;
        };
        r.in_flight_since = None;
        match result {
            Ok(set) => {
                r.last_success = Some(now);
                self.set = Some(Arc::new(set));
                self.generation += 1;
            }
            Err(_) => r.last_failure = Some(now),
        }
    }

    /// Adopts a key set another worker fetched at `fetched_at`, when it is newer than ours.
    /// Returns true when the set changed.
    pub fn adopt(&mut self, set: KeySet, fetched_at: f64) -> bool {
        let Some(r) = self.remote.as_mut() else {
            return false;
        };
        if r.last_success.is_some_and(|t| t >= fetched_at) {
            return false;
        }
        r.last_success = Some(fetched_at);
        self.set = Some(Arc::new(set));
        self.generation += 1;
        true
    }

    /// Records that the JWKS cluster does not exist; true the first time (log it then).
    pub fn note_unknown_cluster(&mut self) -> bool {
        match self.remote.as_mut() {
            Some(r) if !r.unknown_cluster_logged => {
                r.unknown_cluster_logged = true;
                true
            }
            _ => false,
        }
    }

    pub fn in_flight(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| r.in_flight_since.is_some())
    }

    /// With no key set yet: is a fetch running or about to start (so a request may wait)?
    pub fn first_load_pending(&self, now: f64) -> bool {
        self.set.is_none() && (self.in_flight() || self.fetch_due(now).is_some())
    }

    /// A token named an unknown kid. Returns true when a fetch will run soon (the request may
    /// wait for it), false when the rate limit says no.
    pub fn want_refetch(&mut self, now: f64) -> bool {
        let Some(r) = self.remote.as_mut() else {
            return false;
        };
        let Some(cfg) = r.config.as_ref() else {
            return false;
        };
        if r.in_flight_since.is_some() {
            return true;
        }
        let allowed = r
            .last_kid_refetch
            .is_none_or(|t| now - t >= cfg.unknown_kid_refetch_interval_s as f64);
        if allowed {
            r.refetch_wanted = true;
        }
        allowed
    }
}

/// Parses a fetched JWKS response.
pub fn parse_response(
    status: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(KeySet, Vec<String>), String> {
    match status {
        Some("200") => {}
        Some(s) => return Err(format!("JWKS endpoint answered HTTP {s}")),
        None => return Err("JWKS endpoint unreachable (no response)".to_string()),
    }
    let body = body.ok_or("JWKS response has no body")?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "JWKS response is larger than {MAX_JWKS_BYTES} bytes"
        ));
    }
    KeySet::from_jwks(body).map_err(|e: JwksError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> ProviderKeys {
        ProviderKeys::new(&KeySource::Remote(RemoteJwks {
            cluster: "c".into(),
            https: false,
            authority: "a".into(),
            path: "/".into(),
            timeout_ms: 1000,
            refresh_interval_s: 600,
            retry_interval_s: 5,
            unknown_kid_refetch_interval_s: 30,
        }))
    }

    #[test]
    fn schedule() {
        let mut k = remote();
        assert_eq!(k.fetch_due(0.0), Some(FetchReason::Initial));
        assert!(k.first_load_pending(0.0));
        k.fetch_started(FetchReason::Initial, 0.0);
        assert_eq!(k.fetch_due(1.0), None);
        assert!(k.first_load_pending(1.0));
        k.fetch_finished(Err("down".into()), 1.0);
        assert!(
            !k.first_load_pending(2.0),
            "failed, and the retry is not due yet"
        );
        assert_eq!(k.fetch_due(5.0), Some(FetchReason::Retry));
        k.fetch_started(FetchReason::Retry, 5.0);
        k.fetch_finished(Ok(KeySet::default()), 5.1);
        assert_eq!(k.generation, 1);
        assert_eq!(k.fetch_due(100.0), None);
        assert_eq!(k.fetch_due(605.2), Some(FetchReason::Refresh));
        // unknown kid: one refetch, then rate limited
        assert!(k.want_refetch(10.0));
        assert_eq!(k.fetch_due(10.0), Some(FetchReason::UnknownKid));
        k.fetch_started(FetchReason::UnknownKid, 10.0);
        assert!(k.want_refetch(10.5), "a fetch is running: wait for it");
        k.fetch_finished(Ok(KeySet::default()), 10.6);
        assert!(!k.want_refetch(11.0));
        assert_eq!(k.fetch_due(11.0), None);
        assert!(k.want_refetch(41.0));
        // a failed refresh keeps the last good keys
        k.fetch_started(FetchReason::UnknownKid, 41.0);
        k.fetch_finished(Err("x".into()), 41.5);
        assert!(k.set.is_some());
        assert_eq!(k.generation, 2);
    }

    #[test]
    fn adopts_only_newer_sets() {
        let mut k = remote();
        assert!(k.adopt(KeySet::default(), 10.0));
        assert_eq!(k.generation, 1);
        assert!(!k.adopt(KeySet::default(), 9.0));
        assert!(!k.adopt(KeySet::default(), 10.0));
        assert!(k.adopt(KeySet::default(), 11.0));
        assert_eq!(k.generation, 2);
        assert_eq!(
            k.fetch_due(12.0),
            Some(FetchReason::Initial),
            "adopting does not replace our own first fetch"
        );
    }

    #[test]
    fn lost_callback_does_not_block_forever() {
        let mut k = remote();
        k.fetch_started(FetchReason::Initial, 0.0);
        assert_eq!(k.fetch_due(3.0), None);
        assert_eq!(k.fetch_due(7.0), Some(FetchReason::Retry));
    }

    #[test]
    fn responses() {
        assert!(parse_response(None, None)
            .unwrap_err()
            .contains("unreachable"));
        assert!(parse_response(Some("503"), Some(b"{}"))
            .unwrap_err()
            .contains("503"));
        assert!(parse_response(Some("200"), Some(b"<html>"))
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_response(Some("200"), Some(b"{\"keys\": []}"))
            .unwrap_err()
            .contains("no usable key"));
    }
}
