//! Test-only Envoy dynamic module, `libedgeguard_dm_smoke.so`: exercises every part of
//! `edgeguard-dynamic-module` inside the real Envoy (`tests/tests/dynamic_module_abi.rs`).
//!
//! The filter named `smoke` (Envoy's `filter_name`), on each request:
//! - counts it (`<metrics_namespace>.smoke_requests`);
//! - `x-smoke-panic` → panics in the request hook (the SDK answers 500, Envoy keeps running);
//!   `x-smoke-panic-in: response | scheduled | callout` panics in that hook instead;
//! - `x-smoke-in: <bytes>` → request header `x-smoke-len: <byte length>` (and on the response),
//!   gauge `<metrics_namespace>.smoke_in_len`;
//! - `x-smoke-reply: <code>` → a local reply with that status and a JSON body;
//! - removes request header `x-smoke-remove-me`; stamps `x-smoke-path`, `x-smoke-method`,
//!   `x-smoke-source` (attributes), `x-smoke-worker`, `x-smoke-header-count` (all headers),
//!   `x-smoke-multi-count` (values of `x-smoke-multi`);
//! - `x-smoke-callout: <path>` → GET `<path>` on cluster `upstream` (or `x-smoke-callout-cluster`)
//!   from the stream, waits, then stamps `x-smoke-callout-status` and resumes (a callout that
//!   cannot start stamps the error and goes on at once);
//! - `x-smoke-park: <ms>` → stops the request, a thread wakes it through the stream scheduler
//!   after `<ms>`, then stamps `x-smoke-parked` and resumes;
//! - on the response: `x-smoke-config` (the configuration bytes as received, or `hex:...` when
//!   they are not printable), `x-smoke-background` (configuration-level callouts so far), and
//!   `x-smoke-strip-vary` removes the upstream's `vary`.
//!
//! Any other `filter_name` only echoes its configuration bytes in `x-smoke-config-<name>` (to
//! show what Envoy passes for each `Any` type). Configuration JSON of `smoke`:
//! `{"refuse": "<reason>"}` refuses, `{"panic": true}` panics in the factory,
//! `{"panic_in_new_filter": true}` panics whenever a stream starts,
//! `{"callout_cluster": "<cluster>", "tick_ms": <ms>}` starts background callouts: a ticker
//! thread commits a main-thread event every `tick_ms`, which sends GET `/smoke-background` to
//! the cluster from the configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeguard_dynamic_module::{
    declare_http_filter, log, Attribute, CalloutResponse, CalloutResult, ConfigEnv,
    ConfigScheduler, CounterId, EnvoyFilterConfig, EnvoyHttpFilter, Filter, FilterConfig, GaugeId,
    HeadersStatus, LogLevel, Ticker,
};
use serde_json::Value;

declare_http_filter!(new_config);

fn new_config(name: &str, config: &[u8], env: &ConfigEnv) -> Result<Box<dyn FilterConfig>, String> {
    if name != "smoke" {
        return Ok(Box::new(EchoConfig {
            header: format!("x-smoke-config-{name}"),
            echo: printable(config),
        }));
    }
    let json: Value =
        serde_json::from_slice(config).map_err(|e| format!("configuration is not JSON: {e}"))?;
    if let Some(reason) = json.get("refuse").and_then(Value::as_str) {
        return Err(reason.to_string());
    }
    if json.get("panic").and_then(Value::as_bool) == Some(true) {
        boom("panic requested by the configuration");
    }
    let requests = env
        .define_counter("smoke_requests")
        .map_err(|e| format!("smoke_requests: {e}"))?;
    let in_len = env
        .define_gauge("smoke_in_len")
        .map_err(|e| format!("smoke_in_len: {e}"))?;
    let background_ok = env
        .define_counter("smoke_background_callouts")
        .map_err(|e| format!("smoke_background_callouts: {e}"))?;
    let shared = Arc::new(Shared {
        config_echo: printable(config),
        panic_in_new_filter: json.get("panic_in_new_filter").and_then(Value::as_bool) == Some(true),
        requests,
        in_len,
        background_ok,
        callouts_ok: AtomicU64::new(0),
        callouts_failed: AtomicU64::new(0),
        last_status: AtomicU64::new(0),
    });
    let mut background = None;
    if let Some(cluster) = json.get("callout_cluster").and_then(Value::as_str) {
        let tick =
            Duration::from_millis(json.get("tick_ms").and_then(Value::as_u64).unwrap_or(100));
        let scheduler: Arc<ConfigScheduler> = Arc::new(
            env.scheduler()
                .ok_or("Envoy gave no configuration scheduler")?,
        );
        let ticker = Ticker::start("smoke-ticker", scheduler, tick, TICK_EVENT)
            .map_err(|e| format!("cannot start the ticker thread: {e}"))?;
        background = Some(Background {
            cluster: cluster.to_string(),
            _ticker: ticker,
        });
    }
    log(
        LogLevel::Info,
        &format!(
            "smoke configuration ready ({} bytes, concurrency {})",
            config.len(),
            env.concurrency()
        ),
    );
    Ok(Box::new(SmokeConfig { shared, background }))
}

const TICK_EVENT: u64 = 1;
const PARK_EVENT: u64 = 2;

/// A deliberate panic (this crate exists to prove they are caught).
#[allow(clippy::panic)]
fn boom(what: &str) -> ! {
    panic!("smoke: {what}")
}

/// The bytes when they are printable ASCII (a header value can carry them), `hex:...` otherwise.
fn printable(bytes: &[u8]) -> Vec<u8> {
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        bytes.to_vec()
    } else {
        let mut out = b"hex:".to_vec();
        for b in bytes {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out
    }
}

struct EchoConfig {
    header: String,
    echo: Vec<u8>,
}

impl FilterConfig for EchoConfig {
    fn new_filter(&self) -> Box<dyn Filter> {
        Box::new(EchoFilter {
            header: self.header.clone().into_bytes(),
            echo: self.echo.clone(),
        })
    }
}

struct EchoFilter {
    header: Vec<u8>,
    echo: Vec<u8>,
}

impl Filter for EchoFilter {
    fn on_response_headers(&mut self, f: &mut EnvoyHttpFilter, _eos: bool) -> HeadersStatus {
        f.set_response_header(&self.header, &self.echo);
        HeadersStatus::Continue
    }
}

struct Shared {
    config_echo: Vec<u8>,
    panic_in_new_filter: bool,
    requests: CounterId,
    in_len: GaugeId,
    background_ok: CounterId,
    callouts_ok: AtomicU64,
    callouts_failed: AtomicU64,
    last_status: AtomicU64,
}

struct Background {
    cluster: String,
    /// Stopped and joined when the configuration is dropped.
    _ticker: Ticker,
}

struct SmokeConfig {
    shared: Arc<Shared>,
    background: Option<Background>,
}

impl Drop for SmokeConfig {
    fn drop(&mut self) {
        log(LogLevel::Info, "smoke configuration dropped");
    }
}

impl FilterConfig for SmokeConfig {
    fn new_filter(&self) -> Box<dyn Filter> {
        log(LogLevel::Trace, "smoke new_filter");
        if self.shared.panic_in_new_filter {
            boom("panic requested in new_filter");
        }
        Box::new(SmokeFilter {
            shared: Arc::clone(&self.shared),
            in_len: None,
            panic_in: Vec::new(),
            strip_vary: false,
        })
    }

    fn on_scheduled(&self, config: &mut EnvoyFilterConfig, event_id: u64) {
        let Some(bg) = &self.background else { return };
        if event_id != TICK_EVENT {
            return;
        }
        log(LogLevel::Debug, "smoke background tick");
        let headers: [(&[u8], &[u8]); 3] = [
            (b":method", b"GET"),
            (b":path", b"/smoke-background"),
            (b"host", b"smoke-background"),
        ];
        if let Err(e) = config.http_callout(&bg.cluster, &headers, b"", Duration::from_secs(2)) {
            self.shared.callouts_failed.fetch_add(1, Ordering::Relaxed);
            log(LogLevel::Warn, &format!("smoke background callout: {e}"));
        }
    }

    fn on_callout_done(
        &self,
        config: &mut EnvoyFilterConfig,
        _callout_id: u64,
        result: CalloutResult,
        response: &CalloutResponse<'_>,
    ) {
        log(
            LogLevel::Debug,
            &format!("smoke background callout done: {result:?}"),
        );
        match (result, response.status()) {
            (CalloutResult::Success, Some(status)) => {
                self.shared.callouts_ok.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .last_status
                    .store(u64::from(status), Ordering::Relaxed);
                let _ = config.increment_counter(self.shared.background_ok, 1);
            }
            _ => {
                self.shared.callouts_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct SmokeFilter {
    shared: Arc<Shared>,
    in_len: Option<usize>,
    panic_in: Vec<u8>,
    strip_vary: bool,
}

impl SmokeFilter {
    fn maybe_panic(&self, hook: &[u8]) {
        if self.panic_in == hook {
            boom(&format!(
                "panic requested in {}",
                String::from_utf8_lossy(hook)
            ));
        }
    }
}

impl Filter for SmokeFilter {
    fn on_request_headers(&mut self, f: &mut EnvoyHttpFilter, _eos: bool) -> HeadersStatus {
        let _ = f.increment_counter(self.shared.requests, 1);
        if f.request_header(b"x-smoke-panic").is_some() {
            boom("panic requested by x-smoke-panic");
        }
        self.panic_in = f
            .request_header_owned(b"x-smoke-panic-in")
            .unwrap_or_default();
        self.strip_vary = f.request_header(b"x-smoke-strip-vary").is_some();
        if let Some(v) = f.request_header(b"x-smoke-in") {
            let len = v.len();
            self.in_len = Some(len);
            let _ = f.set_gauge(self.shared.in_len, len as u64);
            f.set_request_header(b"x-smoke-len", len.to_string().as_bytes());
        }
        if let Some(code) = f.request_header_owned(b"x-smoke-reply") {
            let status = std::str::from_utf8(&code)
                .ok()
                .and_then(|c| c.trim().parse::<u32>().ok())
                .filter(|c| (200..600).contains(c));
            let (status, body) = match status {
                Some(s) => (
                    s,
                    format!("{{\"code\": {s}, \"message\": \"smoke reply\"}}"),
                ),
                None => (
                    400,
                    "{\"code\": 400, \"message\": \"x-smoke-reply needs a status code\"}"
                        .to_string(),
                ),
            };
            f.send_response(
                status,
                &[
                    (b"content-type", b"application/json"),
                    (b"x-smoke-replied", b"yes"),
                ],
                body.as_bytes(),
            );
            return HeadersStatus::StopIteration;
        }
        f.remove_request_header(b"x-smoke-remove-me");
        let path = f
            .attribute_bytes(Attribute::RequestPath)
            .map(<[u8]>::to_vec);
        let method = f
            .attribute_bytes(Attribute::RequestMethod)
            .map(<[u8]>::to_vec);
        let source = f
            .attribute_bytes(Attribute::SourceAddress)
            .map(<[u8]>::to_vec);
        let worker = f.worker_index();
        let count = f.request_headers().len();
        let multi = f.request_header_values(b"x-smoke-multi").len();
        for (name, value) in [
            (b"x-smoke-path".as_slice(), path),
            (b"x-smoke-method", method),
            (b"x-smoke-source", source),
        ] {
            if let Some(v) = value {
                f.set_request_header(name, &v);
            }
        }
        f.set_request_header(b"x-smoke-worker", worker.to_string().as_bytes());
        f.set_request_header(b"x-smoke-header-count", count.to_string().as_bytes());
        f.set_request_header(b"x-smoke-multi-count", multi.to_string().as_bytes());

        if let Some(path) = f.request_header_owned(b"x-smoke-callout") {
            let headers: [(&[u8], &[u8]); 3] = [
                (b":method", b"GET"),
                (b":path", &path),
                (b"host", b"smoke-callout"),
            ];
            let cluster = f
                .request_header(b"x-smoke-callout-cluster")
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_else(|| "upstream".to_string());
            return match f.http_callout(&cluster, &headers, b"", Duration::from_secs(5)) {
                Ok(_) => HeadersStatus::StopIteration,
                Err(e) => {
                    f.set_request_header(b"x-smoke-callout-status", e.to_string().as_bytes());
                    HeadersStatus::Continue
                }
            };
        }
        if let Some(ms) = f.request_header(b"x-smoke-park") {
            let ms = std::str::from_utf8(ms)
                .ok()
                .and_then(|m| m.trim().parse::<u64>().ok())
                .unwrap_or(10);
            let Some(scheduler) = f.scheduler() else {
                return HeadersStatus::Continue;
            };
            let spawned = std::thread::Builder::new()
                .name("smoke-park".into())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    scheduler.commit(PARK_EVENT);
                });
            return match spawned {
                Ok(_) => HeadersStatus::StopIteration,
                Err(_) => HeadersStatus::Continue,
            };
        }
        HeadersStatus::Continue
    }

    fn on_callout_done(
        &mut self,
        f: &mut EnvoyHttpFilter,
        _callout_id: u64,
        result: CalloutResult,
        response: &CalloutResponse<'_>,
    ) {
        self.maybe_panic(b"callout");
        let status = match (result, response.status()) {
            (CalloutResult::Success, Some(s)) => s.to_string(),
            (other, _) => format!("{other:?}"),
        };
        f.set_request_header(b"x-smoke-callout-status", status.as_bytes());
        f.set_request_header(
            b"x-smoke-callout-body-bytes",
            response.body().len().to_string().as_bytes(),
        );
        f.continue_decoding();
    }

    fn on_scheduled(&mut self, f: &mut EnvoyHttpFilter, event_id: u64) {
        self.maybe_panic(b"scheduled");
        if event_id == PARK_EVENT {
            f.set_request_header(b"x-smoke-parked", b"yes");
            f.continue_decoding();
        }
    }

    fn on_response_headers(&mut self, f: &mut EnvoyHttpFilter, _eos: bool) -> HeadersStatus {
        self.maybe_panic(b"response");
        f.set_response_header(b"x-smoke-config", &self.shared.config_echo);
        if let Some(len) = self.in_len {
            f.set_response_header(b"x-smoke-len", len.to_string().as_bytes());
        }
        let bg = format!(
            "ok={} failed={} status={}",
            self.shared.callouts_ok.load(Ordering::Relaxed),
            self.shared.callouts_failed.load(Ordering::Relaxed),
            self.shared.last_status.load(Ordering::Relaxed)
        );
        f.set_response_header(b"x-smoke-background", bg.as_bytes());
        if self.strip_vary {
            f.remove_response_header(b"vary");
        }
        HeadersStatus::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_or_hex() {
        assert_eq!(printable(b"{\"a\": 1}"), b"{\"a\": 1}");
        assert_eq!(printable(b"\n\x01"), b"hex:0a01");
        assert_eq!(printable(b""), b"");
    }
}
