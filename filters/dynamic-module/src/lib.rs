//! edgeguard's own minimal bindings for Envoy's dynamic-module HTTP filter ABI (Envoy 1.40,
//! ABI `v0.2.0`), so a filter can be built as a native shared library (`lib<name>.so`) that
//! Envoy loads with `envoy.filters.http.dynamic_modules`.
//!
//! - [`abi`]: the raw `extern "C"` declarations and C types (ours, from the ABI documentation;
//!   [`abi::IMPORTED`] / [`abi::EXPORTED_HOOKS`] list what we use and provide).
//! - The safe layer: [`EnvoyHttpFilter`] (one stream), [`EnvoyFilterConfig`] / [`ConfigEnv`]
//!   (the configuration, main thread), [`FilterScheduler`] / [`ConfigScheduler`] (cross-thread
//!   wake-ups), [`Ticker`] (periodic background work), [`log`].
//! - Registration: a module implements [`FilterConfig`] and [`Filter`], writes a [`FactoryFn`],
//!   and calls [`declare_http_filter!`] once; the macro exports every hook Envoy resolves, each
//!   behind a panic barrier.
//!
//! Threading (Envoy 1.40): the factory, [`FilterConfig::on_scheduled`] and
//! [`FilterConfig::on_callout_done`] run on the main thread; [`FilterConfig::new_filter`] and
//! every [`Filter`] hook run on the worker thread of the stream. One [`FilterConfig`] is shared
//! by all workers (hence `Send + Sync`); a [`Filter`] never leaves its worker.
//!
//! Panics: a panic in any hook is caught (the crate must be built with `panic = "unwind"`: the
//! workspace's `native` profile). A request whose hook panicked gets a 500 with a JSON body,
//! Envoy logs one line naming the filter and the hook, and `<metrics_namespace>.module_panics`
//! counts it; the module's filter is not called again for that stream. A panicking factory
//! refuses the configuration.
//!
//! `unsafe` lives in one module (`bindings`), each block with its invariant.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

// With `panic = "abort"` (the workspace's release profile, meant for wasm) `catch_unwind` catches
// nothing and the first panic in a hook would abort Envoy. Build modules with the `native`
// profile: `cargo build --profile native -p <module>` (`make native-modules`).
#[cfg(all(panic = "abort", not(target_family = "wasm")))]
compile_error!(
    "edgeguard-dynamic-module needs panic = \"unwind\": build with `--profile native` \
     (make native-modules), not --release"
);

pub mod abi;
#[allow(unsafe_code)]
mod bindings;
mod ticker;
mod types;

pub use bindings::{
    hooks, log, log_enabled, ConfigEnv, ConfigScheduler, EnvoyFilterConfig, EnvoyHttpFilter,
    FactoryFn, FilterScheduler, PANIC_COUNTER,
};
pub use ticker::{Commit, Ticker};
pub use types::{
    Attribute, BodyKind, BodyStatus, CalloutInitError, CalloutResponse, CalloutResult, CounterId,
    GaugeId, HeaderMap, HeadersStatus, HistogramId, LogLevel, MetricsError, TrailersStatus,
};

/// A filter configuration: created once per Envoy filter configuration on the main thread by
/// the module's [`FactoryFn`], shared by every worker, dropped when Envoy destroys the
/// configuration (listener update, shutdown).
pub trait FilterConfig: Send + Sync {
    /// A filter for one HTTP stream (worker thread).
    fn new_filter(&self) -> Box<dyn Filter>;

    /// An event committed through a [`ConfigScheduler`] (main thread).
    fn on_scheduled(&self, _config: &mut EnvoyFilterConfig, _event_id: u64) {}

    /// The answer to [`EnvoyFilterConfig::http_callout`] (main thread). `response` is empty
    /// unless `result` is [`CalloutResult::Success`].
    fn on_callout_done(
        &self,
        _config: &mut EnvoyFilterConfig,
        _callout_id: u64,
        _result: CalloutResult,
        _response: &CalloutResponse<'_>,
    ) {
    }
}

/// The filter of one HTTP stream. Every hook has a default that lets the stream through.
pub trait Filter {
    fn on_request_headers(
        &mut self,
        _f: &mut EnvoyHttpFilter,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }

    fn on_request_body(&mut self, _f: &mut EnvoyHttpFilter, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }

    fn on_request_trailers(&mut self, _f: &mut EnvoyHttpFilter) -> TrailersStatus {
        TrailersStatus::Continue
    }

    fn on_response_headers(
        &mut self,
        _f: &mut EnvoyHttpFilter,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }

    fn on_response_body(&mut self, _f: &mut EnvoyHttpFilter, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }

    fn on_response_trailers(&mut self, _f: &mut EnvoyHttpFilter) -> TrailersStatus {
        TrailersStatus::Continue
    }

    /// The stream is done (before the filter is dropped and access logs are written).
    fn on_stream_complete(&mut self, _f: &mut EnvoyHttpFilter) {}

    /// The answer to [`EnvoyHttpFilter::http_callout`]. `response` is empty unless `result`
    /// is [`CalloutResult::Success`].
    fn on_callout_done(
        &mut self,
        _f: &mut EnvoyHttpFilter,
        _callout_id: u64,
        _result: CalloutResult,
        _response: &CalloutResponse<'_>,
    ) {
    }

    /// An event committed through this stream's [`FilterScheduler`].
    fn on_scheduled(&mut self, _f: &mut EnvoyHttpFilter, _event_id: u64) {}
}
