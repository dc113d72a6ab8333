//! Remote JWKS in the background: which fetches are due on a tick, and what an answer changes.
//! Written against [`Background`], so the same code runs from the proxy-wasm root context (one
//! owner per VM), from the native filter configuration (one owner per Envoy process) and in
//! unit tests, where the clock and the answers are the test's.

use std::time::Duration;

use edgeguard_host::{Background, CallError, Level, Metrics};

use crate::config::{Config, KeySource};
use crate::keys::{self, FetchReason};
use crate::metrics;
use crate::state::Shared;

/// How often the owner calls [`tick`].
pub const TICK: Duration = Duration::from_millis(100);

/// What an answer did for its provider: the requests parked for it can be decided now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub provider: usize,
    /// A new key set was loaded (false: the fetch failed; the last good set stays).
    pub loaded: bool,
}

/// Whether any provider fetches its keys (then the owner needs a tick).
pub fn needs_tick(config: &Config) -> bool {
    config
        .providers
        .iter()
        .any(|p| matches!(p.keys, KeySource::Remote(_)))
}

/// Starts every fetch that is due. Returns the providers whose fetch could not even start:
/// their parked requests must be decided now (without new keys).
pub fn tick<W>(
    config: &Config,
    shared: &Shared<W>,
    bg: &dyn Background,
    metrics: &dyn Metrics,
    now: f64,
) -> Vec<usize> {
    let mut failed = Vec::new();
    for (i, provider) in config.providers.iter().enumerate() {
        let KeySource::Remote(remote) = &provider.keys else {
            continue;
        };
        let Some(slot) = shared.provider(i) else {
            continue;
        };
        slot.with_keys(|k| {
            let Some(reason) = k.fetch_due(now) else {
                return;
            };
            let headers = [
                (":method", "GET"),
                (":path", remote.path.as_str()),
                (":authority", remote.authority.as_str()),
                ("accept", "application/json"),
                ("user-agent", "edgeguard-jwt-shape"),
            ];
            k.fetch_started(reason, now);
            match bg.http_call(
                &remote.cluster,
                &headers,
                &[],
                Duration::from_millis(remote.timeout_ms),
            ) {
                Ok(call) => {
                    if reason != FetchReason::Refresh {
                        bg.log(
                            Level::Debug,
                            &format!(
                                "edgeguard jwt-shape: provider '{}': fetching JWKS ({reason:?})",
                                provider.name
                            ),
                        );
                    }
                    shared.call_started(call, i);
                }
                Err(e) => {
                    metrics.increment(metrics::JWKS_FETCH_FAILED);
                    if e == CallError::UnknownCluster {
                        // a configuration mistake: say it loudly, once per provider, and
                        // count it, rather than a quiet 401 for every request
                        metrics.increment(metrics::JWKS_CLUSTER_UNKNOWN);
                        if k.note_unknown_cluster() {
                            bg.log(
                                Level::Critical,
                                &format!(
                                    "edgeguard jwt-shape: provider '{}': remote_jwks.cluster '{}' is not a cluster this Envoy knows: its JWKS can never load and every token of this provider is refused (401); define the cluster",
                                    provider.name, remote.cluster
                                ),
                            );
                        }
                    } else {
                        bg.log(
                            Level::Warn,
                            &format!(
                                "edgeguard jwt-shape: provider '{}': cannot call cluster '{}' ({e})",
                                provider.name, remote.cluster
                            ),
                        );
                    }
                    k.fetch_finished(Err("dispatch failed".into()), now);
                    failed.push(i);
                }
            }
        });
    }
    failed
}

/// Applies the answer to call `call` (`status`: the response's `:status`, `None` when there
/// was no response). `None` when the call is not one of ours.
#[allow(clippy::too_many_arguments)]
pub fn answer<W>(
    config: &Config,
    shared: &Shared<W>,
    bg: &dyn Background,
    metrics: &dyn Metrics,
    call: u64,
    status: Option<&str>,
    body: Option<&[u8]>,
    now: f64,
) -> Option<Answered> {
    let provider = shared.call_finished(call)?;
    let slot = shared.provider(provider)?;
    let spec = config.providers.get(provider);
    let name = spec.map_or("?", |p| p.name.as_str());
    // a failed fetch of an https:// URI over a cluster without TLS looks like a reset or a
    // 400 from the IdP; the filter cannot see the cluster's settings, so the line says it
    let tls_hint = match spec.map(|p| &p.keys) {
        Some(KeySource::Remote(r))
            if r.https && matches!(status, None | Some("400") | Some("503")) =>
        {
            format!(
            " (the uri is https://: cluster '{}' needs a TLS transport_socket, Envoy speaks plaintext to a cluster without one)",
                r.cluster
            )
        }
        _ => String::new(),
    };
    let result = keys::parse_response(status, body);
    let loaded = slot.with_keys(|k| match result {
        Ok((set, skipped)) => {
            metrics.increment(metrics::JWKS_FETCH_OK);
            let kids = set.kids().join(", ");
            bg.log(
                Level::Info,
                &format!(
                    "edgeguard jwt-shape: provider '{name}': JWKS loaded, {} key(s) [{kids}]",
                    set.keys.len()
                ),
            );
            for s in skipped {
                bg.log(
                    Level::Warn,
                    &format!("edgeguard jwt-shape: provider '{name}': JWKS key skipped: {s}"),
                );
            }
            k.fetch_finished(Ok(set), now);
            true
        }
        Err(e) => {
            metrics.increment(metrics::JWKS_FETCH_FAILED);
            let keeping = if k.set.is_some() {
                "keeping the last good keys"
            } else {
                "no keys yet"
            };
            bg.log(
                Level::Warn,
                &format!(
                    "edgeguard jwt-shape: provider '{name}': JWKS fetch failed: {e}; {keeping}{tls_hint}"
                ),
            );
            k.fetch_finished(Err(e), now);
            false
        }
    });
    Some(Answered { provider, loaded })
}
