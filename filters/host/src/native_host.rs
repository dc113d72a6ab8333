//! [`Host`], [`Metrics`] and [`Background`] over the native dynamic-module bindings
//! (`edgeguard-dynamic-module`): the request path runs against a stream's
//! [`EnvoyHttpFilter`], the background owner against the filter configuration's
//! [`EnvoyFilterConfig`] (main thread). Metrics are Envoy counters and gauges defined once,
//! when the configuration is created ([`NativeMetrics::define`]), and found by name after.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use edgeguard_dynamic_module::{
    log, Attribute, CalloutInitError, CalloutResponse, CalloutResult, ConfigEnv, CounterId,
    EnvoyFilterConfig, EnvoyHttpFilter, GaugeId, LogLevel,
};

use crate::{Background, CallError, Host, Level, Metrics};

fn to_log_level(level: Level) -> LogLevel {
    match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
        Level::Critical => LogLevel::Critical,
    }
}

/// Writes one line to Envoy's log.
pub fn native_log(level: Level, message: &str) {
    log(to_log_level(level), message);
}

/// The current time in Unix seconds.
pub fn native_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A callout's answer as the background code takes it: the `:status` as text (`None` when
/// there was no response) and the whole body.
pub fn callout_answer(
    result: CalloutResult,
    response: &CalloutResponse<'_>,
) -> (Option<String>, Option<Vec<u8>>) {
    match result {
        CalloutResult::Success => (
            response
                .header(b":status")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            Some(response.body()),
        ),
        CalloutResult::ExceedResponseBufferLimit => {
            native_log(
                Level::Warn,
                "edgeguard: a background call's answer was larger than Envoy's buffer limit for calls",
            );
            (None, None)
        }
        other => {
            native_log(
                Level::Debug,
                &format!("edgeguard: a background call got no answer ({other:?})"),
            );
            (None, None)
        }
    }
}

/// The counters and gauges of one filter configuration, by name. Envoy exports them as
/// `<metrics_namespace>.<name>`; a name that was not defined is ignored (Envoy allows
/// definitions only while the configuration is created).
#[derive(Debug, Default)]
pub struct NativeMetrics {
    counters: HashMap<String, CounterId>,
    gauges: HashMap<String, GaugeId>,
}

impl NativeMetrics {
    /// Defines `counters` and `gauges` (full names such as `edgeguard_jwt_shape.allowed`:
    /// with the metrics namespace `edgeguard`'s prefix dropped when present, so Envoy's
    /// `edgeguard.jwt_shape.allowed` matches the wasm build's name). Failures are logged.
    pub fn define(env: &ConfigEnv, counters: &[String], gauges: &[&str]) -> NativeMetrics {
        let mut m = NativeMetrics::default();
        for name in counters {
            match env.define_counter(&stat_name(name)) {
                Ok(id) => {
                    m.counters.insert(name.clone(), id);
                }
                Err(e) => native_log(
                    Level::Warn,
                    &format!("edgeguard: cannot define counter {name}: {e:?}"),
                ),
            }
        }
        for name in gauges {
            match env.define_gauge(&stat_name(name)) {
                Ok(id) => {
                    m.gauges.insert(name.to_string(), id);
                }
                Err(e) => native_log(
                    Level::Warn,
                    &format!("edgeguard: cannot define gauge {name}: {e:?}"),
                ),
            }
        }
        m
    }

    pub fn counter(&self, name: &str) -> Option<CounterId> {
        self.counters.get(name).copied()
    }

    pub fn gauge(&self, name: &str) -> Option<GaugeId> {
        self.gauges.get(name).copied()
    }
}

/// `edgeguard_jwt_shape.allowed` → `jwt_shape.allowed` (the module's metrics namespace is
/// `edgeguard`, so Envoy names it `edgeguard.jwt_shape.allowed`).
fn stat_name(name: &str) -> String {
    name.strip_prefix("edgeguard_").unwrap_or(name).to_string()
}

/// One stream, as the request path's [`Host`] and [`Metrics`].
pub struct NativeHost<'a> {
    filter: RefCell<&'a mut EnvoyHttpFilter>,
    metrics: &'a NativeMetrics,
}

impl<'a> NativeHost<'a> {
    pub fn new(filter: &'a mut EnvoyHttpFilter, metrics: &'a NativeMetrics) -> NativeHost<'a> {
        NativeHost {
            filter: RefCell::new(filter),
            metrics,
        }
    }
}

impl Host for NativeHost<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.filter.borrow().request_header_owned(name.as_bytes())
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.filter
            .borrow()
            .request_headers()
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
            .collect()
    }

    fn set_request_header(&self, name: &str, value: &str) {
        let mut f = self.filter.borrow_mut();
        let ok = if value.is_empty() {
            // Envoy's set_header drops a header whose new value is empty; an empty value is a
            // value (PEAS stamps `Portal-Account-ID: ` for an app without account)
            f.remove_request_header(name.as_bytes());
            f.add_request_header(name.as_bytes(), b"")
        } else {
            f.set_request_header(name.as_bytes(), value.as_bytes())
        };
        if !ok {
            native_log(
                Level::Warn,
                &format!("edgeguard: could not set request header {name}"),
            );
        }
    }

    fn remove_request_header(&self, name: &str) {
        self.filter
            .borrow_mut()
            .remove_request_header(name.as_bytes());
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.filter.borrow().response_header_owned(name.as_bytes())
    }

    fn set_response_header(&self, name: &str, value: &[u8]) {
        if !self
            .filter
            .borrow_mut()
            .set_response_header(name.as_bytes(), value)
        {
            native_log(
                Level::Warn,
                &format!("edgeguard: could not set response header {name}"),
            );
        }
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str) {
        let headers: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        self.filter
            .borrow_mut()
            .send_response(status, &headers, body.as_bytes());
    }

    fn request_body(&self, max: usize) -> Option<Vec<u8>> {
        let filter = self.filter.borrow();
        let mut out = Vec::new();
        for chunk in filter.request_body_chunks() {
            let room = max.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            out.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        }
        Some(out)
    }

    fn peer_certificate_sha256(&self) -> Option<edgeguard_verdict::binding::Thumbprint> {
        // Envoy's attribute `connection.sha256_peer_certificate_digest` (lower-case hex of the
        // SHA-256 of the certificate's DER; unavailable or empty without a client certificate)
        let filter = self.filter.borrow();
        let hex = filter.attribute_bytes(Attribute::PeerCertificateSha256)?;
        edgeguard_verdict::binding::thumbprint_from_hex(hex)
    }

    fn log(&self, level: Level, message: &str) {
        native_log(level, message);
    }
}

impl NativeHost<'_> {
    /// The size of the request body [`Host::request_body`] reads (what this filter buffered
    /// plus the chunk of the current body hook).
    pub fn request_body_size(&self) -> usize {
        self.filter.borrow().request_body_size()
    }
}

impl Metrics for NativeHost<'_> {
    fn increment(&self, name: &str) {
        self.add(name, 1);
    }

    fn add(&self, name: &str, n: u64) {
        if let Some(id) = self.metrics.counter(name) {
            let _ = self.filter.borrow().increment_counter(id, n);
        }
    }

    fn set_gauge(&self, name: &str, value: u64) {
        if let Some(id) = self.metrics.gauge(name) {
            let _ = self.filter.borrow().set_gauge(id, value);
        }
    }
}

/// The filter configuration on the main thread, as the background owner.
pub struct NativeBackground<'a> {
    config: RefCell<&'a mut EnvoyFilterConfig>,
    metrics: &'a NativeMetrics,
}

impl<'a> NativeBackground<'a> {
    pub fn new(
        config: &'a mut EnvoyFilterConfig,
        metrics: &'a NativeMetrics,
    ) -> NativeBackground<'a> {
        NativeBackground {
            config: RefCell::new(config),
            metrics,
        }
    }
}

impl Background for NativeBackground<'_> {
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u64, CallError> {
        let headers: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        self.config
            .borrow_mut()
            .http_callout(cluster, &headers, body, timeout)
            .map_err(|e| match e {
                CalloutInitError::ClusterNotFound => CallError::UnknownCluster,
                other => CallError::Refused(format!("{other:?}")),
            })
    }

    fn log(&self, level: Level, message: &str) {
        native_log(level, message);
    }
}

impl Metrics for NativeBackground<'_> {
    fn increment(&self, name: &str) {
        self.add(name, 1);
    }

    fn add(&self, name: &str, n: u64) {
        if let Some(id) = self.metrics.counter(name) {
            let _ = self.config.borrow().increment_counter(id, n);
        }
    }

    fn set_gauge(&self, name: &str, value: u64) {
        if let Some(id) = self.metrics.gauge(name) {
            let _ = self.config.borrow().set_gauge(id, value);
        }
    }
}
