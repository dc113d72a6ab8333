//! proxy-wasm glue: root context (configuration, JWKS fetches on ticks) and HTTP contexts
//! (one per request). All decisions are in [`crate::engine`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use edgeguard_host::{
    call_response_status, log_line, now, Host, Level, Metrics, ProxyWasmHost, WasmMetrics,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::config::{Config, KeySource, ProcessEnv, RemoteJwks};
use crate::engine::{self, Outcome, State};
use crate::keys::{self, FetchReason};
use crate::metrics;

const TICK: Duration = Duration::from_millis(100);
/// Requests parked while keys load, per VM, at most.
const MAX_WAITING: usize = 10_000;

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        log_line(Level::Critical, &format!("edgeguard jwt-shape: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, shared: None, callouts: HashMap::new(), seen: HashMap::new() }) });
}}

struct Shared {
    config: Config,
    state: RefCell<State>,
    metrics: WasmMetrics,
    /// HTTP contexts paused until a provider's keys arrive: (context id, provider).
    waiting: RefCell<Vec<(u32, usize)>>,
    /// Contexts decided by the root after waiting: context id → add `Vary`.
    decided: RefCell<HashMap<u32, bool>>,
}

impl Shared {
    fn remote(&self, provider: usize) -> Option<&RemoteJwks> {
        match &self.config.providers.get(provider)?.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Static(_) => None,
        }
    }
}

/// Shared-data key under which workers publish a remote JWKS they fetched, so every worker
/// (every VM with this vm_id) uses the newest keys any of them has seen.
fn remote_key(r: &RemoteJwks) -> String {
    format!(
        "edgeguard.jwt_shape.jwks|{}|{}{}",
        r.cluster, r.authority, r.path
    )
}

fn publish(key: &str, fetched_at: f64, body: &[u8]) {
    let mut value = format!("{fetched_at}\n").into_bytes();
    value.extend_from_slice(body);
    if hostcalls::set_shared_data(key, Some(&value), None).is_err() {
        log_line(
            Level::Debug,
            "edgeguard jwt-shape: could not share the JWKS with other workers",
        );
    }
}

/// Reads a published JWKS: (fetched_at, body, cas).
fn read_published(key: &str) -> Option<(f64, Vec<u8>, u32)> {
    let (value, cas) = hostcalls::get_shared_data(key).ok()?;
    let value = value?;
    let nl = value.iter().position(|b| *b == b'\n')?;
    let at = std::str::from_utf8(value.get(..nl)?).ok()?.parse().ok()?;
    Some((at, value.get(nl + 1..)?.to_vec(), cas?))
}

struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
    /// JWKS calls in flight: token → provider.
    callouts: HashMap<u32, usize>,
    /// Shared-data versions already looked at, per provider.
    seen: HashMap<usize, u32>,
}

impl Root {
    fn resume_waiting(&self, shared: &Shared, provider: usize) {
        let ids: Vec<u32> = {
            let mut waiting = shared.waiting.borrow_mut();
            let ids = waiting
                .iter()
                .filter(|(_, p)| *p == provider)
                .map(|(id, _)| *id)
                .collect();
            waiting.retain(|(_, p)| *p != provider);
            ids
        };
        let now = now();
        for id in ids {
            if hostcalls::set_effective_context(id).is_err() {
                continue;
            }
            let outcome = {
                let mut state = shared.state.borrow_mut();
                engine::on_request(
                    &shared.config,
                    &mut state,
                    &ProxyWasmHost,
                    &shared.metrics,
                    now,
                    false,
                )
            };
            match outcome {
                Outcome::Allowed { vary } => {
                    shared.decided.borrow_mut().insert(id, vary);
                    let _ = hostcalls::resume_http_request();
                }
                Outcome::Denied => {}
                Outcome::Wait { .. } => {
                    // not reachable with may_wait = false; never leave a request hanging
                    ProxyWasmHost.send_json_error(503, "signing keys are not available");
                }
            }
        }
        let _ = hostcalls::set_effective_context(self.id);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(provider) = self.callouts.remove(&token_id) else {
            return;
        };
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let status = call_response_status();
        let body = if body_size > keys::MAX_JWKS_BYTES {
            Some(vec![0u8; keys::MAX_JWKS_BYTES + 1])
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
        };
        let name = shared
            .config
            .providers
            .get(provider)
            .map_or("?", |p| p.name.as_str())
            .to_string();
        let result = keys::parse_response(status.as_deref(), body.as_deref());
        let now = now();
        {
            let mut state = shared.state.borrow_mut();
            let Some(k) = state.keys.get_mut(provider) else {
                return;
            };
            match result {
                Ok((set, skipped)) => {
                    shared.metrics.increment(metrics::JWKS_FETCH_OK);
                    if let (Some(remote), Some(body)) = (shared.remote(provider), body.as_deref()) {
                        publish(&remote_key(remote), now, body);
                    }
                    let kids = set.kids().join(", ");
                    log_line(Level::Info, &format!("edgeguard jwt-shape: provider '{name}': JWKS loaded, {} key(s) [{kids}]", set.keys.len()));
                    for s in skipped {
                        log_line(
                            Level::Warn,
                            &format!(
                                "edgeguard jwt-shape: provider '{name}': JWKS key skipped: {s}"
                            ),
                        );
                    }
                    k.fetch_finished(Ok(set), now);
                }
                Err(e) => {
                    shared.metrics.increment(metrics::JWKS_FETCH_FAILED);
                    let keeping = if k.set.is_some() {
                        "keeping the last good keys"
                    } else {
                        "no keys yet"
                    };
                    log_line(Level::Warn, &format!("edgeguard jwt-shape: provider '{name}': JWKS fetch failed: {e}; {keeping}"));
                    k.fetch_finished(Err(e), now);
                }
            }
        }
        self.resume_waiting(&shared, provider);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&bytes, &ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                log_line(
                    Level::Critical,
                    &format!("edgeguard jwt-shape: configuration refused: {e}"),
                );
                return false;
            }
        };
        let remote = config
            .providers
            .iter()
            .any(|p| matches!(p.keys, KeySource::Remote(_)));
        let m = WasmMetrics::default();
        for name in metrics::all() {
            m.define(&name);
        }
        log_line(
            Level::Info,
            &format!(
                "edgeguard jwt-shape: configured {} provider(s), {} rule(s)",
                config.providers.len(),
                config.rules.len()
            ),
        );
        let state = RefCell::new(State::new(&config));
        self.shared = Some(Rc::new(Shared {
            config,
            state,
            metrics: m,
            waiting: RefCell::new(Vec::new()),
            decided: RefCell::new(HashMap::new()),
        }));
        if remote && hostcalls::set_tick_period(TICK).is_err() {
            log_line(
                Level::Critical,
                "edgeguard jwt-shape: cannot set a tick period; remote JWKS would never load",
            );
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = now();
        let mut resume = Vec::new();
        // adopt keys other workers fetched
        for (i, provider) in shared.config.providers.iter().enumerate() {
            let KeySource::Remote(remote) = &provider.keys else {
                continue;
            };
            let Some((at, body, cas)) = read_published(&remote_key(remote)) else {
                continue;
            };
            if self.seen.insert(i, cas) == Some(cas) {
                continue;
            }
            let adopted = match keys::parse_response(Some("200"), Some(&body)) {
                Ok((set, _)) => shared
                    .state
                    .borrow_mut()
                    .keys
                    .get_mut(i)
                    .is_some_and(|k| k.adopt(set, at)),
                Err(_) => false,
            };
            if adopted {
                resume.push(i);
            }
        }
        {
            let mut state = shared.state.borrow_mut();
            for (i, provider) in shared.config.providers.iter().enumerate() {
                let KeySource::Remote(remote) = &provider.keys else {
                    continue;
                };
                let Some(k) = state.keys.get_mut(i) else {
                    continue;
                };
                let Some(reason) = k.fetch_due(now) else {
                    continue;
                };
                let headers = vec![
                    (":method", "GET"),
                    (":path", remote.path.as_str()),
                    (":authority", remote.authority.as_str()),
                    ("accept", "application/json"),
                    ("user-agent", "edgeguard-jwt-shape"),
                ];
                k.fetch_started(reason, now);
                match hostcalls::dispatch_http_call(
                    &remote.cluster,
                    headers,
                    None,
                    vec![],
                    Duration::from_millis(remote.timeout_ms),
                ) {
                    Ok(token) => {
                        if reason != FetchReason::Refresh {
                            log_line(Level::Debug, &format!("edgeguard jwt-shape: provider '{}': fetching JWKS ({reason:?})", provider.name));
                        }
                        self.callouts.insert(token, i);
                    }
                    Err(status) => {
                        shared.metrics.increment(metrics::JWKS_FETCH_FAILED);
                        log_line(Level::Warn, &format!("edgeguard jwt-shape: provider '{}': cannot call cluster '{}' ({status:?})", provider.name, remote.cluster));
                        k.fetch_finished(Err("dispatch failed".into()), now);
                        resume.push(i);
                    }
                }
            }
        }
        for i in resume {
            self.resume_waiting(&shared, i);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            shared: self.shared.clone(),
            vary: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    shared: Option<Rc<Shared>>,
    vary: bool,
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.waiting.borrow_mut().retain(|(id, _)| *id != self.id);
            shared.decided.borrow_mut().remove(&self.id);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            ProxyWasmHost.send_json_error(503, "jwt-shape filter is not configured");
            return Action::Pause;
        };
        let outcome = {
            let mut state = shared.state.borrow_mut();
            engine::on_request(
                &shared.config,
                &mut state,
                &ProxyWasmHost,
                &shared.metrics,
                now(),
                true,
            )
        };
        match outcome {
            Outcome::Allowed { vary } => {
                self.vary = vary;
                Action::Continue
            }
            Outcome::Denied => Action::Pause,
            Outcome::Wait { provider } => {
                let mut waiting = shared.waiting.borrow_mut();
                if waiting.len() >= MAX_WAITING {
                    drop(waiting);
                    ProxyWasmHost.send_response(
                        503,
                        &[("content-type", "application/json"), ("retry-after", "1")],
                        &edgeguard_verdict::reply::json_body(
                            503,
                            "too many requests waiting for signing keys",
                        ),
                    );
                    shared
                        .metrics
                        .increment(&metrics::denied("keys_unavailable"));
                    return Action::Pause;
                }
                waiting.push((self.id, provider));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let decided = self
            .shared
            .as_ref()
            .and_then(|s| s.decided.borrow_mut().remove(&self.id))
            .unwrap_or(false);
        engine::on_response(&ProxyWasmHost, self.vary || decided);
        Action::Continue
    }
}
