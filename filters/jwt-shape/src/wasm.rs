//! proxy-wasm glue: the root context owns the VM's state and runs the JWKS background work
//! ([`crate::jwks`]) on its tick; HTTP contexts (one per request) decide with
//! [`crate::engine`]. A request parked while keys load is decided again by the root, on the
//! request's behalf, when they arrive. A `POST` to a bound shape route buffers its body (at
//! most [`engine::MAX_BODY_BYTES`]) until the body has been checked; every other request is
//! decided on its headers alone.
//!
//! Unlike the native build, the wasm build lets the *headers* of such a POST go on before the
//! body is checked: Envoy turns a proxy-wasm `Pause` on request headers into
//! `StopAllIterationAndWatermark` (unless the Wasm filter sets `allow_on_headers_stop_iteration`,
//! which Istio and Envoy Gateway cannot), and then hands this filter no body until the headers
//! continue. So the headers continue, the body is held (`Pause` on body chunks buffers them),
//! and a refused body ends the request with the local reply, which resets the upstream stream:
//! Electric reads the whole body before it does anything with a POST, so it never acts on a
//! refused one (the way proxy-wasm WAFs inspect bodies).

use std::collections::HashMap;
use std::rc::Rc;

use edgeguard_host::{
    call_response_status, log_line, now, Host, Level, ProxyWasmBackground, ProxyWasmHost,
    WasmMetrics,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::config::{Config, KeySource, ProcessEnv, RemoteJwks};
use crate::engine::{self, BodyCheck, BodyOutcome, Outcome};
use crate::jwks;
use crate::keys;
use crate::metrics;
use crate::state::Shared;

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        log_line(Level::Critical, &format!("edgeguard jwt-shape: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, vm: None, seen: HashMap::new(), decided: Rc::default(), ended: Rc::default() }) });
}}

/// What the root context and its HTTP contexts share. A parked request is woken by its
/// context id.
struct Vm {
    config: Config,
    shared: Shared<u32>,
    metrics: WasmMetrics,
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

/// What the root decided for a request that waited for keys, for its HTTP context.
#[derive(Clone, Debug)]
enum Decided {
    /// Let through (and resumed): add `Vary` to the response when `vary`.
    Allowed { vary: bool },
    /// Its body must pass first, and it had not ended yet: the context checks it.
    AwaitBody(BodyCheck),
}

type DecidedMap = Rc<std::cell::RefCell<HashMap<u32, Decided>>>;
/// Requests whose body ended while they waited for keys: context id → body size.
type EndedMap = Rc<std::cell::RefCell<HashMap<u32, usize>>>;

struct Root {
    id: u32,
    vm: Option<Rc<Vm>>,
    /// Shared-data versions already looked at, per provider.
    seen: HashMap<usize, u32>,
    /// Contexts decided by the root after waiting.
    decided: DecidedMap,
    ended: EndedMap,
}

impl Root {
    /// Decides every request parked for `provider` (keys arrived, or will not).
    fn resume_waiting(&self, vm: &Vm, provider: usize) {
        let now = now();
        for (id, _) in vm.shared.take_waiting(provider) {
            let Ok(context) = u32::try_from(id) else {
                continue;
            };
            if hostcalls::set_effective_context(context).is_err() {
                continue;
            }
            match engine::on_request(
                &vm.config,
                &vm.shared,
                &ProxyWasmHost,
                &vm.metrics,
                now,
                false,
            ) {
                Outcome::Allowed { vary } => {
                    self.decided
                        .borrow_mut()
                        .insert(context, Decided::Allowed { vary });
                    let _ = hostcalls::resume_http_request();
                }
                Outcome::Denied => {}
                Outcome::Wait { .. } => {
                    // not reachable with may_wait = false; never leave a request hanging
                    ProxyWasmHost.send_json_error(503, "signing keys are not available");
                }
                Outcome::CheckBody(check) => {
                    let ended = self.ended.borrow_mut().remove(&context);
                    match ended {
                        // the body is all buffered: check it now, on the request's behalf
                        Some(size) => match engine::on_request_body(
                            &ProxyWasmHost,
                            &vm.metrics,
                            &check,
                            size,
                            true,
                        ) {
                            BodyOutcome::Allowed => {
                                self.decided
                                    .borrow_mut()
                                    .insert(context, Decided::Allowed { vary: check.vary });
                                let _ = hostcalls::resume_http_request();
                            }
                            BodyOutcome::Denied => {}
                            BodyOutcome::Buffer => {
                                // not reachable at the end of the stream
                                ProxyWasmHost.send_json_error(500, "request body not checked");
                            }
                        },
                        None => {
                            // the headers go on; Envoy hands the body to the context, which
                            // holds and checks it
                            self.decided
                                .borrow_mut()
                                .insert(context, Decided::AwaitBody(check));
                            let _ = hostcalls::resume_http_request();
                        }
                    }
                }
            }
        }
        let _ = hostcalls::set_effective_context(self.id);
    }

    /// Adopts keys other workers of this VM id fetched; returns the providers that changed.
    fn adopt_published(&mut self, vm: &Vm) -> Vec<usize> {
        let mut changed = Vec::new();
        for (i, provider) in vm.config.providers.iter().enumerate() {
            let KeySource::Remote(remote) = &provider.keys else {
                continue;
            };
            let Some((at, body, cas)) = read_published(&remote_key(remote)) else {
                continue;
            };
            if self.seen.insert(i, cas) == Some(cas) {
                continue;
            }
            let Ok((set, _)) = keys::parse_response(Some("200"), Some(&body)) else {
                continue;
            };
            let adopted = vm
                .shared
                .provider(i)
                .is_some_and(|slot| slot.with_keys(|k| k.adopt(set, at)));
            if adopted {
                changed.push(i);
            }
        }
        changed
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
        let Some(vm) = self.vm.clone() else {
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
        let now = now();
        let Some(answered) = jwks::answer(
            &vm.config,
            &vm.shared,
            &ProxyWasmBackground,
            &vm.metrics,
            u64::from(token_id),
            status.as_deref(),
            body.as_deref(),
            now,
        ) else {
            return;
        };
        if answered.loaded {
            let remote = vm
                .config
                .providers
                .get(answered.provider)
                .and_then(|p| match &p.keys {
                    KeySource::Remote(r) => Some(r),
                    KeySource::Static(_) => None,
                });
            if let (Some(remote), Some(body)) = (remote, body.as_deref()) {
                publish(&remote_key(remote), now, body);
            }
        }
        self.resume_waiting(&vm, answered.provider);
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
        let tick = jwks::needs_tick(&config);
        self.vm = Some(Rc::new(Vm {
            shared: Shared::new(&config),
            config,
            metrics: m,
        }));
        if tick && hostcalls::set_tick_period(jwks::TICK).is_err() {
            log_line(
                Level::Critical,
                "edgeguard jwt-shape: cannot set a tick period; remote JWKS would never load",
            );
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        let mut resume = self.adopt_published(&vm);
        resume.extend(jwks::tick(
            &vm.config,
            &vm.shared,
            &ProxyWasmBackground,
            &vm.metrics,
            now(),
        ));
        for provider in resume {
            self.resume_waiting(&vm, provider);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            vm: self.vm.clone(),
            decided: self.decided.clone(),
            ended: self.ended.clone(),
            vary: false,
            parked: false,
            body: None,
            body_size: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    vm: Option<Rc<Vm>>,
    decided: DecidedMap,
    ended: EndedMap,
    vary: bool,
    /// Waiting for keys (until the root decides).
    parked: bool,
    /// The body must pass this check before the request goes on.
    body: Option<BodyCheck>,
    /// Body bytes held so far (the last body callback's count).
    body_size: usize,
}

impl Http {
    /// Picks up what the root decided for this request while it waited; `true` while it still
    /// waits.
    fn still_parked(&mut self) -> bool {
        if !self.parked {
            return false;
        }
        let mut decided = self.decided.borrow_mut();
        let await_body = match decided.get(&self.id) {
            None => return true,
            Some(Decided::AwaitBody(_)) => true,
            // resumed by the root; the entry stays for the response's `Vary`
            Some(Decided::Allowed { .. }) => false,
        };
        if await_body {
            if let Some(Decided::AwaitBody(check)) = decided.remove(&self.id) {
                self.body = Some(check);
            }
        }
        self.parked = false;
        false
    }

    /// Runs the body check; `Action::Continue` once the request may go on.
    fn check_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.still_parked() {
            if end_of_stream {
                self.ended.borrow_mut().insert(self.id, body_size);
            }
            return Action::Pause;
        }
        let (Some(vm), Some(check)) = (self.vm.clone(), self.body.clone()) else {
            return Action::Continue;
        };
        match engine::on_request_body(
            &ProxyWasmHost,
            &vm.metrics,
            &check,
            body_size,
            end_of_stream,
        ) {
            BodyOutcome::Buffer => Action::Pause,
            BodyOutcome::Allowed => {
                self.vary = check.vary;
                self.body = None;
                Action::Continue
            }
            BodyOutcome::Denied => {
                self.body = None;
                Action::Pause
            }
        }
    }
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if let Some(vm) = &self.vm {
            vm.shared.unpark(u64::from(self.id));
        }
        self.decided.borrow_mut().remove(&self.id);
        self.ended.borrow_mut().remove(&self.id);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(vm) = self.vm.clone() else {
            ProxyWasmHost.send_json_error(503, "jwt-shape filter is not configured");
            return Action::Pause;
        };
        match engine::on_request(
            &vm.config,
            &vm.shared,
            &ProxyWasmHost,
            &vm.metrics,
            now(),
            true,
        ) {
            Outcome::Allowed { vary } => {
                self.vary = vary;
                Action::Continue
            }
            Outcome::Denied => Action::Pause,
            Outcome::Wait { provider } => {
                if vm.shared.park(u64::from(self.id), provider, self.id) {
                    self.parked = true;
                    if end_of_stream {
                        self.ended.borrow_mut().insert(self.id, 0);
                    }
                } else {
                    engine::too_many_waiting(&ProxyWasmHost, &vm.metrics);
                }
                Action::Pause
            }
            Outcome::CheckBody(check) => {
                self.body = Some(check);
                if end_of_stream {
                    // no body at all
                    return self.check_body(0, true);
                }
                // the headers go on (a Pause here would stop the body from reaching this
                // filter, see the module's notes); the body is held and checked
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body_size = body_size;
        self.check_body(body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        // trailers end the request: the body (buffered so far) is complete
        self.check_body(self.body_size, true)
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let decided = matches!(
            self.decided.borrow_mut().remove(&self.id),
            Some(Decided::Allowed { vary: true })
        );
        engine::on_response(&ProxyWasmHost, self.vary || decided);
        Action::Continue
    }
}
