//! [`Host`] over proxy-wasm hostcalls. Every call returns `Result` in the SDK's low-level API;
//! failures are logged or ignored, never unwrapped.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, MetricType};

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
pub fn log_line(level: Level, message: &str) {
    let _ = hostcalls::log(to_log_level(level), message);
}

/// The host of the HTTP context the proxy is currently calling (or the effective context set
/// with `set_effective_context`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyWasmHost;

impl Host for ProxyWasmHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        crate::abi::header_map_pairs(MapType::HttpRequestHeaders)
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        crate::abi::header_map_value(MapType::HttpRequestHeaders, name)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        if hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value.as_bytes()))
            .is_err()
        {
            log_line(
                Level::Warn,
                &format!("edgeguard: could not set request header {name}"),
            );
        }
    }

    fn remove_request_header(&self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        crate::abi::header_map_value(MapType::HttpResponseHeaders, name)
    }

    fn set_response_header(&self, name: &str, value: &[u8]) {
        if hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value)).is_err()
        {
            log_line(
                Level::Warn,
                &format!("edgeguard: could not set response header {name}"),
            );
        }
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str) {
        if hostcalls::send_http_response(status, headers.to_vec(), Some(body.as_bytes())).is_err() {
            log_line(Level::Error, "edgeguard: could not send the local reply");
        }
    }

    fn request_body(&self, max: usize) -> Option<Vec<u8>> {
        // In a body callback (or after one returned Pause) Envoy hands over the buffered body
        // including the chunk just received.
        crate::abi::buffer_bytes(proxy_wasm::types::BufferType::HttpRequestBody, 0, max)
    }

    fn peer_certificate_sha256(&self) -> Option<edgeguard_verdict::binding::Thumbprint> {
        // Envoy's attribute: the lower-case hex SHA-256 of the peer certificate's DER, empty
        // (or absent) when the client presented none; only a certificate that passed the TLS
        // layer's validation gets this far on a listener with require_client_certificate.
        let hex = crate::abi::property_bytes(&["connection", "sha256_peer_certificate_digest"])?;
        edgeguard_verdict::binding::thumbprint_from_hex(&hex)
    }

    fn log(&self, level: Level, message: &str) {
        log_line(level, message);
    }
}

/// The root context's [`Background`]: calls go out with `proxy_dispatch_http_call`, their
/// answers arrive in the root context's `on_http_call_response` with the same id.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyWasmBackground;

impl Background for ProxyWasmBackground {
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Result<u64, CallError> {
        let body = (!body.is_empty()).then_some(body);
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map(u64::from)
            .map_err(|status| match status {
                // Envoy answers an unknown cluster with BadArgument
                proxy_wasm::types::Status::BadArgument => CallError::UnknownCluster,
                other => CallError::Refused(format!("{other:?}")),
            })
    }

    fn log(&self, level: Level, message: &str) {
        log_line(level, message);
    }
}

/// The `:status` of an HTTP call's response (in `on_http_call_response`), as text (read as
/// bytes: whatever the peer sent cannot panic the VM).
pub fn call_response_status() -> Option<String> {
    let raw = crate::abi::header_map_value(MapType::HttpCallResponseHeaders, ":status")?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// The current time in Unix seconds (0 when the host does not say).
pub fn now() -> f64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Counters defined lazily through `proxy_define_metric`, cached per VM.
#[derive(Debug, Default)]
pub struct WasmMetrics {
    ids: RefCell<HashMap<String, Option<u32>>>,
}

impl WasmMetrics {
    fn id(&self, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(name) {
            return *id;
        }
        let id = hostcalls::define_metric(MetricType::Counter, name).ok();
        self.ids.borrow_mut().insert(name.to_string(), id);
        id
    }

    /// Defines a counter up front so it shows (as 0) before the first increment.
    pub fn define(&self, name: &str) {
        let _ = self.id(name);
    }
}

impl WasmMetrics {
    /// Sets a gauge (defined on first use).
    pub fn gauge(&self, name: &str, value: u64) {
        let key = format!("gauge:{name}");
        let id = match self.ids.borrow().get(&key) {
            Some(id) => *id,
            None => None,
        };
        let id = match id {
            Some(id) => Some(id),
            None => {
                let id = hostcalls::define_metric(MetricType::Gauge, name).ok();
                self.ids.borrow_mut().insert(key, id);
                id
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

impl WasmMetrics {
    /// Adds `n` to a counter (defined on first use).
    pub fn add(&self, name: &str, n: u64) {
        if let Some(id) = self.id(name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Pushes the counts of `buffer` to the host.
    pub fn flush(&self, buffer: &crate::CounterBuffer) {
        buffer.drain(|name, n| self.add(name, n));
    }
}

impl Metrics for WasmMetrics {
    fn increment(&self, name: &str) {
        WasmMetrics::add(self, name, 1);
    }

    fn add(&self, name: &str, n: u64) {
        WasmMetrics::add(self, name, n);
    }

    fn set_gauge(&self, name: &str, value: u64) {
        self.gauge(name, value);
    }
}
