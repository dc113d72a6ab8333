//! portal-auth as a native Envoy dynamic module: the glue between Envoy's dynamic-module ABI
//! (`edgeguard-dynamic-module`) and the filter's engine, the same code the proxy-wasm build
//! runs. One store copy per Envoy filter configuration serves every worker: a ticker thread
//! wakes the configuration on Envoy's main thread, which asks `edgeguard authz` for changes,
//! applies them to its own copy and publishes a snapshot (a cheap clone) that workers read
//! without a lock.
//!
//! The store token (`store.token_env`, default `EDGEGUARD_STORE_TOKEN`) is read from Envoy's
//! process environment.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use edgeguard_dynamic_module::{
    declare_http_filter, CalloutResponse, CalloutResult, ConfigEnv, ConfigScheduler,
    EnvoyFilterConfig, EnvoyHttpFilter, Filter, FilterConfig, HeadersStatus, Ticker,
};
use edgeguard_host::{
    callout_answer, native_log, native_now, Level, NativeBackground, NativeHost, NativeMetrics,
    ProcessEnv,
};
use portal_auth::config::Config;
use portal_auth::engine::{self, Copy, Outcome};
use portal_auth::meter::Meter;
use portal_auth::metrics;
use portal_auth::report::Reporter;
use portal_auth::sync::{self, Sync};

declare_http_filter!(new_config);

/// The configuration's scheduler event: a store sync tick.
const TICK_EVENT: u64 = 1;

/// What only the background owner (main thread) touches: the sync bookkeeping, the copy
/// updates apply to, and the usage reporter.
struct Writer {
    sync: Sync,
    copy: Copy,
    reporter: Reporter,
}

struct State {
    config: Config,
    /// The snapshot every worker reads.
    published: ArcSwap<Copy>,
    writer: Mutex<Writer>,
    metrics: NativeMetrics,
    /// Allowed requests per app, counted by every worker, reported by the main thread.
    meter: Meter,
}

/// One Envoy filter configuration.
struct PortalAuth {
    state: Arc<State>,
    /// Stops (and joins) the tick thread when Envoy destroys the configuration.
    _ticker: Ticker,
}

fn new_config(_name: &str, bytes: &[u8], env: &ConfigEnv) -> Result<Box<dyn FilterConfig>, String> {
    let config = Config::parse(bytes, &ProcessEnv)
        .map_err(|e| format!("edgeguard portal-auth: configuration refused: {e}"))?;
    let metrics = NativeMetrics::define(env, &metrics::counters(), metrics::GAUGES);
    let scheduler: Arc<ConfigScheduler> = Arc::new(
        env.scheduler()
            .ok_or("edgeguard portal-auth: Envoy gave no scheduler; the store would never load")?,
    );
    let ticker = Ticker::start(
        "edgeguard-store",
        scheduler,
        sync::tick_period(&config.store),
        TICK_EVENT,
    )
    .map_err(|e| format!("edgeguard portal-auth: cannot start the store sync thread: {e}"))?;
    let reporter = Reporter::new();
    let metering = if config.metering.enabled {
        format!(
            "; metering as reporter {} every {} ms",
            reporter.id(),
            config.metering.report_interval_ms
        )
    } else {
        String::new()
    };
    native_log(
        Level::Info,
        &format!(
            "edgeguard portal-auth (native): configured; store from cluster '{}', concurrency {}{metering}",
            config.store.cluster,
            env.concurrency()
        ),
    );
    Ok(Box::new(PortalAuth {
        state: Arc::new(State {
            config,
            published: ArcSwap::from_pointee(Copy::default()),
            writer: Mutex::new(Writer {
                sync: Sync::default(),
                copy: Copy::default(),
                reporter,
            }),
            metrics,
            meter: Meter::default(),
        }),
        _ticker: ticker,
    }))
}

impl State {
    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // only the main thread locks it; a panic there (caught at the boundary) leaves the
        // copy as the last update left it, which is still a consistent copy
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FilterConfig for PortalAuth {
    fn new_filter(&self) -> Box<dyn Filter> {
        Box::new(Stream {
            state: Arc::clone(&self.state),
            response_headers: Vec::new(),
        })
    }

    fn on_scheduled(&self, config: &mut EnvoyFilterConfig, event_id: u64) {
        if event_id != TICK_EVENT {
            return;
        }
        let s = &self.state;
        let mut guard = s.writer();
        let w = &mut *guard;
        let version = w.copy.version;
        let bg = NativeBackground::new(config, &s.metrics);
        let now = native_now();
        w.sync.tick(&s.config, version, &bg, &bg, now);
        w.reporter.tick(&s.config, &s.meter, &bg, &bg, now);
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
        let mut guard = s.writer();
        let w = &mut *guard;
        let before = (w.copy.version, w.copy.loaded);
        let bg = NativeBackground::new(config, &s.metrics);
        if !w.sync.answer(
            &mut w.copy,
            callout_id,
            status.as_deref(),
            body.as_deref(),
            &bg,
            &bg,
        ) {
            w.reporter
                .answer(callout_id, status.as_deref(), body.as_deref(), &bg, &bg);
        }
        if (w.copy.version, w.copy.loaded) != before {
            // a clone shares the bulk of the data (see StoreCopy): cheap to publish
            s.published.store(Arc::new(w.copy.clone()));
        }
    }
}

/// One HTTP stream.
struct Stream {
    state: Arc<State>,
    /// Quota headers for the response (`quota_headers: "all"`).
    response_headers: engine::ResponseHeaders,
}

impl Filter for Stream {
    fn on_request_headers(
        &mut self,
        f: &mut EnvoyHttpFilter,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        let s = &self.state;
        let copy = s.published.load();
        let host = NativeHost::new(f, &s.metrics);
        let cx = engine::Context {
            meter: &s.meter,
            now: || native_now() as i64,
        };
        let decision = engine::on_request(&s.config, &copy, &host, &host, &cx);
        self.response_headers = decision.response_headers;
        match decision.outcome {
            Outcome::Denied => HeadersStatus::StopIteration,
            Outcome::Allowed | Outcome::FailedOpen => HeadersStatus::Continue,
        }
    }

    fn on_response_headers(
        &mut self,
        f: &mut EnvoyHttpFilter,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        if !self.response_headers.is_empty() {
            let host = NativeHost::new(f, &self.state.metrics);
            engine::on_response(&host, &self.response_headers);
        }
        HeadersStatus::Continue
    }
}
