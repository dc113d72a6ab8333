//! jwt-shape as a native Envoy dynamic module: the glue between Envoy's dynamic-module ABI
//! (`edgeguard-dynamic-module`) and the filter's engine, the same code the proxy-wasm build
//! runs. One [`JwtShape`] per Envoy filter configuration serves every worker: one key set per
//! provider, one verified-token cache, fetched by one background owner (a ticker thread that
//! wakes the configuration on Envoy's main thread, where JWKS calls start and their answers
//! arrive). A request that waits for keys parks with its stream's scheduler and is decided
//! again on its own worker when they arrive. A `POST` to a bound shape route stops its headers
//! and buffers its body (at most [`engine::MAX_BODY_BYTES`]) until the body has been checked;
//! every other request is decided on its headers alone.
//!
//! Environment variables (`secret_env`, `electric_secret_env`) are read from Envoy's process
//! environment (a native module has no VM environment to filter them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use edgeguard_dynamic_module::{
    declare_http_filter, BodyStatus, CalloutResponse, CalloutResult, ConfigEnv, ConfigScheduler,
    EnvoyFilterConfig, EnvoyHttpFilter, Filter, FilterConfig, FilterScheduler, HeadersStatus,
    Ticker, TrailersStatus,
};
use edgeguard_host::{
    callout_answer, native_log, native_now, Host, Level, NativeBackground, NativeHost,
    NativeMetrics, ProcessEnv,
};
use jwt_shape::config::Config;
use jwt_shape::engine::{self, BodyCheck, BodyOutcome, Outcome};
use jwt_shape::state::Shared;
use jwt_shape::{jwks, metrics};

declare_http_filter!(new_config);

/// The configuration's scheduler event: a JWKS tick.
const TICK_EVENT: u64 = 1;
/// A stream's scheduler event: its provider's keys arrived (or will not); decide again.
const RESUME_EVENT: u64 = 2;

struct State {
    config: Config,
    shared: Shared<FilterScheduler>,
    metrics: NativeMetrics,
    next_stream: AtomicU64,
}

/// One Envoy filter configuration.
struct JwtShape {
    state: Arc<State>,
    /// Stops (and joins) the tick thread when Envoy destroys the configuration.
    _ticker: Option<Ticker>,
}

fn new_config(_name: &str, bytes: &[u8], env: &ConfigEnv) -> Result<Box<dyn FilterConfig>, String> {
    let config = Config::parse(bytes, &ProcessEnv)
        .map_err(|e| format!("edgeguard jwt-shape: configuration refused: {e}"))?;
    let metrics = NativeMetrics::define(env, &metrics::all(), &[]);
    let ticker = if jwks::needs_tick(&config) {
        let scheduler: Arc<ConfigScheduler> =
            Arc::new(env.scheduler().ok_or(
                "edgeguard jwt-shape: Envoy gave no scheduler; remote JWKS would never load",
            )?);
        Some(
            Ticker::start("edgeguard-jwks", scheduler, jwks::TICK, TICK_EVENT)
                .map_err(|e| format!("edgeguard jwt-shape: cannot start the JWKS thread: {e}"))?,
        )
    } else {
        None
    };
    native_log(
        Level::Info,
        &format!(
            "edgeguard jwt-shape (native): configured {} provider(s), {} rule(s), concurrency {}",
            config.providers.len(),
            config.rules.len(),
            env.concurrency()
        ),
    );
    Ok(Box::new(JwtShape {
        state: Arc::new(State {
            shared: Shared::new(&config),
            config,
            metrics,
            next_stream: AtomicU64::new(1),
        }),
        _ticker: ticker,
    }))
}

impl JwtShape {
    /// Wakes every stream parked for `provider` on its own worker.
    fn resume(&self, provider: usize) {
        for (_, scheduler) in self.state.shared.take_waiting(provider) {
            scheduler.commit(RESUME_EVENT);
        }
    }
}

impl FilterConfig for JwtShape {
    fn new_filter(&self) -> Box<dyn Filter> {
        Box::new(Stream {
            state: Arc::clone(&self.state),
            id: self.state.next_stream.fetch_add(1, Ordering::Relaxed),
            vary: false,
            parked: false,
            body: None,
            body_ended: false,
        })
    }

    fn on_scheduled(&self, config: &mut EnvoyFilterConfig, event_id: u64) {
        if event_id != TICK_EVENT {
            return;
        }
        let s = &self.state;
        let bg = NativeBackground::new(config, &s.metrics);
        let failed = jwks::tick(&s.config, &s.shared, &bg, &bg, native_now());
        for provider in failed {
            self.resume(provider);
        }
    }

    fn on_callout_done(
        &self,
        config: &mut EnvoyFilterConfig,
        callout_id: u64,
        result: CalloutResult,
        response: &CalloutResponse<'_>,
    ) {
        let s = &self.state;
        let (status, body) = callout_answer(result, response);
        let bg = NativeBackground::new(config, &s.metrics);
        if let Some(answered) = jwks::answer(
            &s.config,
            &s.shared,
            &bg,
            &bg,
            callout_id,
            status.as_deref(),
            body.as_deref(),
            native_now(),
        ) {
            self.resume(answered.provider);
        }
    }
}

/// One HTTP stream.
struct Stream {
    state: Arc<State>,
    id: u64,
    /// Add `Vary: Authorization` to the response.
    vary: bool,
    parked: bool,
    /// The body must pass this check before the request goes on.
    body: Option<BodyCheck>,
    /// The request ended (body and trailers all arrived) while it was parked.
    body_ended: bool,
}

impl Stream {
    fn decide(&mut self, f: &mut EnvoyHttpFilter, may_wait: bool) -> Outcome {
        let s = &self.state;
        let host = NativeHost::new(f, &s.metrics);
        engine::on_request(&s.config, &s.shared, &host, &host, native_now(), may_wait)
    }

    /// Runs the body check of a request that stopped for it (`None`: there is none).
    fn check_body(&mut self, f: &mut EnvoyHttpFilter, end_of_stream: bool) -> Option<BodyOutcome> {
        let check = self.body.clone()?;
        let s = Arc::clone(&self.state);
        let host = NativeHost::new(f, &s.metrics);
        let size = host.request_body_size();
        let out = engine::on_request_body(&host, &host, &check, size, end_of_stream);
        match out {
            BodyOutcome::Buffer => {}
            BodyOutcome::Allowed => {
                self.vary = check.vary;
                self.body = None;
            }
            BodyOutcome::Denied => self.body = None,
        }
        Some(out)
    }
}

impl Filter for Stream {
    fn on_request_headers(
        &mut self,
        f: &mut EnvoyHttpFilter,
        end_of_stream: bool,
    ) -> HeadersStatus {
        match self.decide(f, true) {
            Outcome::Allowed { vary } => {
                self.vary = vary;
                HeadersStatus::Continue
            }
            Outcome::Denied => HeadersStatus::StopIteration,
            Outcome::Wait { provider } => {
                let s = Arc::clone(&self.state);
                let parked = f
                    .scheduler()
                    .is_some_and(|scheduler| s.shared.park(self.id, provider, scheduler));
                if parked {
                    self.parked = true;
                    self.body_ended = end_of_stream;
                } else {
                    let host = NativeHost::new(f, &s.metrics);
                    engine::too_many_waiting(&host, &host);
                }
                HeadersStatus::StopIteration
            }
            Outcome::CheckBody(check) => {
                // stop the headers; the body is buffered and checked before anything goes on
                self.body = Some(check);
                if end_of_stream {
                    // no body at all
                    if let Some(BodyOutcome::Allowed) = self.check_body(f, true) {
                        return HeadersStatus::Continue;
                    }
                }
                HeadersStatus::StopIteration
            }
        }
    }

    fn on_request_body(&mut self, f: &mut EnvoyHttpFilter, end_of_stream: bool) -> BodyStatus {
        if self.parked {
            // keys are loading: keep the body until the request is decided
            self.body_ended = end_of_stream;
            return BodyStatus::StopIterationAndBuffer;
        }
        match self.check_body(f, end_of_stream) {
            None | Some(BodyOutcome::Allowed) => BodyStatus::Continue,
            Some(BodyOutcome::Buffer) => BodyStatus::StopIterationAndBuffer,
            Some(BodyOutcome::Denied) => BodyStatus::StopIterationNoBuffer,
        }
    }

    fn on_request_trailers(&mut self, f: &mut EnvoyHttpFilter) -> TrailersStatus {
        // trailers end the request: the body (buffered so far) is complete
        if self.parked {
            self.body_ended = true;
            return TrailersStatus::StopIteration;
        }
        match self.check_body(f, true) {
            None | Some(BodyOutcome::Allowed) => TrailersStatus::Continue,
            Some(_) => TrailersStatus::StopIteration,
        }
    }

    fn on_scheduled(&mut self, f: &mut EnvoyHttpFilter, event_id: u64) {
        if event_id != RESUME_EVENT || !self.parked {
            return;
        }
        self.parked = false;
        match self.decide(f, false) {
            Outcome::Allowed { vary } => {
                self.vary = vary;
                f.continue_decoding();
            }
            Outcome::Denied => {}
            Outcome::Wait { .. } => {
                // not reachable with may_wait = false; never leave a request hanging
                let host = NativeHost::new(f, &self.state.metrics);
                host.send_json_error(503, "signing keys are not available");
            }
            Outcome::CheckBody(check) => {
                self.body = Some(check);
                // the whole body is buffered already: check it now; otherwise the body hook
                // checks it when it ends
                if self.body_ended {
                    if let Some(BodyOutcome::Allowed) = self.check_body(f, true) {
                        f.continue_decoding();
                    }
                }
            }
        }
    }

    fn on_response_headers(
        &mut self,
        f: &mut EnvoyHttpFilter,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        if self.vary {
            let host = NativeHost::new(f, &self.state.metrics);
            engine::on_response(&host, true);
        }
        HeadersStatus::Continue
    }

    fn on_stream_complete(&mut self, _f: &mut EnvoyHttpFilter) {
        if self.parked {
            self.state.shared.unpark(self.id);
        }
    }
}
