//! Callers' bearer tokens from an OpenID Connect issuer, verified with edgeguard's verdict code
//! (JWS parsing, algorithm allow-list, signature, `exp`/`nbf`/`iat`, `iss`, `aud`) against the
//! issuer's JWKS, which is kept exactly as jwt-shape keeps a remote JWKS: the schedule is
//! jwt-shape's own [`ProviderKeys`] (first load, retry while failing, periodic refresh, a
//! rate-limited refetch when a token names an unknown `kid`, the last good keys kept when a
//! fetch fails), and a request that arrives before the first load or names an unknown kid
//! while a refetch is allowed waits for that fetch (bounded by the timeout) instead of
//! failing.
//!
//! The JWKS URI is configured, or discovered from `<issuer>/.well-known/openid-configuration`
//! (whose `issuer` must be the configured one, exactly); a failed JWKS fetch re-discovers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeguard_verdict::jwk::KeySet;
use edgeguard_verdict::token::{self, Algorithm, ClaimRules, KeyFamily, TokenError};
use jwt_shape::config::{KeySource, RemoteJwks};
use jwt_shape::keys::{parse_response, FetchReason, ProviderKeys, MAX_JWKS_BYTES};
use serde_json::Value as Json;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::refusal::{Reason, Refusal};

/// The largest caller token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// The algorithms accepted from an issuer by default: every asymmetric one the verdict code
/// knows (never HMAC: a JWKS of shared secrets would let anyone who can read it mint tokens).
pub fn default_algorithms() -> Vec<Algorithm> {
    Algorithm::ALL
        .into_iter()
        .filter(|a| a.family() != KeyFamily::Hmac)
        .collect()
}

/// What the issuer is and how its keys are kept.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// Exact `iss` of callers' tokens (and of the discovery document).
    pub issuer: String,
    /// One must appear in `aud` (none: `aud` is not checked).
    pub audiences: Vec<String>,
    /// The JWKS URI; `None`: discovered.
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub refresh_interval_s: u64,
    pub retry_interval_s: u64,
    pub unknown_kid_refetch_interval_s: u64,
    pub timeout: Duration,
    pub clock_skew_s: u64,
}

/// Why the OIDC verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

pub struct Oidc {
    config: OidcConfig,
    rules: ClaimRules,
    keys: Mutex<ProviderKeys>,
    discovered: Mutex<Option<String>>,
    /// Counts finished fetches: requests waiting for keys watch it.
    fetched: watch::Sender<u64>,
    wake: Notify,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn invalid(e: &TokenError) -> Refusal {
    match e {
        TokenError::KeysUnavailable => Refusal::new(
            Reason::KeysUnavailable,
            "the issuer's signing keys are not available yet",
        ),
        e => Refusal::new(Reason::InvalidToken, e.to_string()),
    }
}

impl Oidc {
    pub fn new(config: OidcConfig, metrics: Arc<Metrics>) -> Result<Arc<Oidc>, OidcError> {
        let remote = RemoteJwks {
            cluster: String::new(),
            https: false,
            authority: String::new(),
            path: String::new(),
            timeout_ms: u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
            refresh_interval_s: config.refresh_interval_s,
            retry_interval_s: config.retry_interval_s,
            unknown_kid_refetch_interval_s: config.unknown_kid_refetch_interval_s,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent("edgeguard-gatekeeper")
            .build()
            .map_err(|e| OidcError::Client(e.to_string()))?;
        let rules = ClaimRules {
            issuer: Some(config.issuer.clone()),
            audiences: config.audiences.clone(),
            clock_skew_seconds: config.clock_skew_s,
            require_expiration: true,
            required_claims: Vec::new(),
        };
        let (fetched, _) = watch::channel(0);
        Ok(Arc::new(Oidc {
            keys: Mutex::new(ProviderKeys::new(&KeySource::Remote(remote))),
            rules,
            config,
            discovered: Mutex::new(None),
            fetched,
            wake: Notify::new(),
            client,
            metrics,
        }))
    }

    fn keys(&self) -> MutexGuard<'_, ProviderKeys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the issuer's keys have loaded once.
    pub fn loaded(&self) -> bool {
        self.keys().set.is_some()
    }

    /// Runs the fetch schedule forever (spawn it).
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = now_f64();
            let due = {
                let mut k = self.keys();
                let due = k.fetch_due(now);
                if let Some(reason) = due {
                    k.fetch_started(reason, now);
                }
                due
            };
            if let Some(reason) = due {
                let result = self.fetch().await;
                let had_keys = self.loaded();
                match result {
                    Ok((set, skipped)) => {
                        self.metrics.oidc_fetches.with_label_values(&["ok"]).inc();
                        if reason != FetchReason::Refresh || !had_keys {
                            info!(issuer = %self.config.issuer, keys = set.keys.len(), kids = %set.kids().join(","), ?reason, "issuer JWKS loaded");
                        }
                        for s in skipped {
                            warn!(issuer = %self.config.issuer, skipped = %s, "issuer JWKS key skipped");
                        }
                        self.keys().fetch_finished(Ok(set), now_f64());
                    }
                    Err(e) => {
                        self.metrics
                            .oidc_fetches
                            .with_label_values(&["failed"])
                            .inc();
                        let keeping = if had_keys {
                            "keeping the last good keys"
                        } else {
                            "no keys yet"
                        };
                        warn!(issuer = %self.config.issuer, error = %e, "issuer JWKS fetch failed; {keeping}");
                        self.keys().fetch_finished(Err(e), now_f64());
                    }
                }
                self.metrics.oidc_keys_loaded.set(i64::from(self.loaded()));
                self.fetched.send_modify(|n| *n += 1);
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn get(&self, uri: &str) -> Result<(u16, Vec<u8>), String> {
        let mut resp = self
            .client
            .get(uri)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {uri}: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "GET {uri}: the answer is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    async fn discover(&self) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let (status, body) = self.get(&url).await?;
        if status != 200 {
            return Err(format!("discovery {url} answered HTTP {status}"));
        }
        let doc: Json = serde_json::from_slice(&body)
            .map_err(|e| format!("discovery {url} is not JSON: {e}"))?;
        if doc["issuer"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(format!(
                "discovery {url} names issuer {}, not {}",
                doc["issuer"], self.config.issuer
            ));
        }
        let jwks_uri = doc["jwks_uri"]
            .as_str()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| format!("discovery {url} has no http(s) jwks_uri"))?;
        info!(issuer = %self.config.issuer, jwks_uri, "issuer discovered");
        Ok(jwks_uri.to_string())
    }

    fn discovered(&self) -> MutexGuard<'_, Option<String>> {
        self.discovered.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self) -> Result<(KeySet, Vec<String>), String> {
        let configured = self.config.jwks_uri.clone();
        let cached = self.discovered().clone();
        let uri = match configured.or(cached) {
            Some(u) => u,
            None => {
                let u = self.discover().await?;
                *self.discovered() = Some(u.clone());
                u
            }
        };
        let result = match self.get(&uri).await {
            Ok((status, body)) => {
                let status = status.to_string();
                parse_response(Some(status.as_str()), Some(body.as_slice()))
            }
            Err(e) => Err(e),
        };
        if result.is_err() && self.config.jwks_uri.is_none() {
            // the issuer may have moved its keys: discover again next time
            *self.discovered() = None;
        }
        result
    }

    /// Waits (bounded) until a fetch that finishes after now has finished.
    async fn wait_for_fetch(&self) {
        let mut rx = self.fetched.subscribe();
        let seen = *rx.borrow();
        self.wake.notify_one();
        let _ = tokio::time::timeout(
            self.config.timeout + Duration::from_secs(1),
            rx.wait_for(|n| *n > seen),
        )
        .await;
    }

    /// Verifies a caller's token; its claims on success.
    pub async fn verify(&self, token: &str) -> Result<Json, Refusal> {
        let jws = token::parse(token, MAX_TOKEN_BYTES).map_err(|e| invalid(&e))?;
        let mut waited = false;
        loop {
            let now = now_f64();
            let (set, first_pending) = {
                let k = self.keys();
                (k.set.clone(), k.first_load_pending(now))
            };
            let Some(set) = set else {
                if !waited && first_pending {
                    waited = true;
                    self.wait_for_fetch().await;
                    continue;
                }
                return Err(invalid(&TokenError::KeysUnavailable));
            };
            match set.verify(&jws, &self.config.algorithms) {
                Ok(()) => break,
                Err(TokenError::UnknownKid) if !waited => {
                    let refetch = self.keys().want_refetch(now);
                    if !refetch {
                        return Err(invalid(&TokenError::UnknownKid));
                    }
                    waited = true;
                    self.wait_for_fetch().await;
                }
                Err(e) => return Err(invalid(&e)),
            }
        }
        let claims = token::decode_claims(&jws).map_err(|e| invalid(&e))?;
        token::validate_claims(&claims, &self.rules, now_f64()).map_err(|e| invalid(&e))?;
        Ok(claims)
    }
}
