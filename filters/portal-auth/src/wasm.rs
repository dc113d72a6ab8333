//! proxy-wasm glue: the root context keeps the store copy current from a timer; HTTP contexts
//! decide requests with [`crate::engine`].

use std::cell::RefCell;
use std::rc::Rc;

use edgeguard_host::{
    call_response_status, log_line, now, CounterBuffer, Host, Level, ProcessEnv,
    ProxyWasmBackground, ProxyWasmHost, WasmMetrics,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::config::Config;
use crate::engine::{self, Copy};
use crate::meter::Meter;
use crate::metrics;
use crate::report::Reporter;
use crate::sync::{self, Sync};

/// Largest store update read (100k apps are ~8 MiB).
const MAX_UPDATE_BYTES: usize = 256 << 20;

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        log_line(Level::Critical, &format!("edgeguard portal-auth: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None, sync: Sync::default(), reporter: Reporter::new() }) });
}}

struct Shared {
    config: Config,
    copy: RefCell<Copy>,
    metrics: WasmMetrics,
    /// The request path's counters, flushed to `metrics` on every tick.
    request_metrics: CounterBuffer,
    /// Allowed requests per app, reported by the root's [`Reporter`].
    meter: Meter,
}

struct Root {
    shared: Option<Rc<Shared>>,
    sync: Sync,
    reporter: Reporter,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let status = call_response_status();
        let body = if body_size > MAX_UPDATE_BYTES {
            None
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
        };
        let call = u64::from(token_id);
        let mut copy = shared.copy.borrow_mut();
        if !self.sync.answer(
            &mut copy,
            call,
            status.as_deref(),
            body.as_deref(),
            &ProxyWasmBackground,
            &shared.metrics,
        ) {
            self.reporter.answer(
                call,
                status.as_deref(),
                body.as_deref(),
                &ProxyWasmBackground,
                &shared.metrics,
            );
        }
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
                    &format!("edgeguard portal-auth: configuration refused: {e}"),
                );
                return false;
            }
        };
        let m = WasmMetrics::default();
        for name in metrics::counters() {
            m.define(&name);
        }
        let tick = sync::tick_period(&config.store);
        let metering = if config.metering.enabled {
            format!(
                "; metering as reporter {} every {} ms",
                self.reporter.id(),
                config.metering.report_interval_ms
            )
        } else {
            String::new()
        };
        log_line(
            Level::Info,
            &format!(
                "edgeguard portal-auth: configured; store from cluster '{}'{metering}",
                config.store.cluster
            ),
        );
        self.shared = Some(Rc::new(Shared {
            config,
            copy: RefCell::new(Copy::default()),
            metrics: m,
            request_metrics: CounterBuffer::default(),
            meter: Meter::default(),
        }));
        if hostcalls::set_tick_period(tick).is_err() {
            log_line(
                Level::Critical,
                "edgeguard portal-auth: cannot set a tick period; the store would never load",
            );
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        shared.metrics.flush(&shared.request_metrics);
        let version = shared.copy.borrow().version;
        let t = now();
        self.sync.tick(
            &shared.config,
            version,
            &ProxyWasmBackground,
            &shared.metrics,
            t,
        );
        self.reporter.tick(
            &shared.config,
            &shared.meter,
            &ProxyWasmBackground,
            &shared.metrics,
            t,
        );
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    shared: Option<Rc<Shared>>,
    /// Quota headers for the response (`quota_headers: "all"`).
    response_headers: engine::ResponseHeaders,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            ProxyWasmHost.send_json_error(503, "portal-auth filter is not configured");
            return Action::Pause;
        };
        let copy = shared.copy.borrow();
        let cx = engine::Context {
            meter: &shared.meter,
            // one host call, made only when quota headers are written
            now: || now() as i64,
        };
        let decision = engine::on_request(
            &shared.config,
            &copy,
            &ProxyWasmHost,
            &shared.request_metrics,
            &cx,
        );
        self.response_headers = decision.response_headers;
        match decision.outcome {
            engine::Outcome::Denied => Action::Pause,
            engine::Outcome::Allowed | engine::Outcome::FailedOpen => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if !self.response_headers.is_empty() {
            engine::on_response(&ProxyWasmHost, &self.response_headers);
        }
        Action::Continue
    }
}
