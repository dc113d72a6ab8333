//! The host surface edgeguard's filters use, behind a trait (as Kuadrant's wasm-shim does):
//! filter logic is written against [`Host`] and tested natively with [`TestHost`]; inside
//! Envoy it runs against [`ProxyWasmHost`], which calls proxy-wasm hostcalls directly and turns
//! every host error into a value (the SDK's convenience methods would panic).

use std::cell::RefCell;
use std::collections::BTreeMap;

#[cfg(target_arch = "wasm32")]
mod proxy_wasm_host;
#[cfg(target_arch = "wasm32")]
pub use proxy_wasm_host::{log_line, now, ProxyWasmHost, WasmMetrics};

/// A filter configuration error: the field path and what is wrong with it, printed as
/// `field: message` (the one log line Envoy shows when a filter refuses its configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Log levels, as Envoy knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// What a filter needs from the proxy while it handles one HTTP request.
pub trait Host {
    /// A request header (pseudo-headers such as `:path` included), first value.
    fn request_header(&self, name: &str) -> Option<String>;
    /// Every request header, in order (names lower-case, as Envoy hands them over).
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (replaces) a request header.
    fn set_request_header(&self, name: &str, value: &str);
    /// Removes every value of a request header.
    fn remove_request_header(&self, name: &str);
    /// Answers the request locally; the request does not go upstream.
    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str);
    /// Answers locally with edgeguard's JSON error body.
    fn send_json_error(&self, status: u32, message: &str) {
        let body =
            edgeguard_verdict::reply::json_body(u16::try_from(status).unwrap_or(500), message);
        self.send_response(status, &[("content-type", "application/json")], &body);
    }
    /// Writes a log line.
    fn log(&self, level: Level, message: &str);
}

/// Counters a filter increments. Implementations map names to host metrics.
pub trait Metrics {
    fn increment(&self, name: &str);
}

/// Counters kept in the VM and handed to the host in batches (from the root context's
/// tick): a host call costs microseconds in Envoy's V8, a local add nanoseconds, so the
/// request path counts here and the host sees the totals at most one tick late.
#[derive(Debug, Default)]
pub struct CounterBuffer {
    pending: RefCell<Vec<(String, u64)>>,
}

impl CounterBuffer {
    /// Hands every non-zero count to `add` and resets it.
    pub fn drain(&self, mut add: impl FnMut(&str, u64)) {
        for (name, n) in self.pending.borrow_mut().iter_mut() {
            if *n > 0 {
                add(name, *n);
                *n = 0;
            }
        }
    }
}

impl Metrics for CounterBuffer {
    fn increment(&self, name: &str) {
        let mut pending = self.pending.borrow_mut();
        match pending.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => pending.push((name.to_string(), 1)),
        }
    }
}

/// A local reply recorded by [`TestHost`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An in-memory host for unit tests: a request header map, the reply sent, log lines and
/// counters.
#[derive(Debug, Default)]
pub struct TestHost {
    pub headers: RefCell<Vec<(String, String)>>,
    pub reply: RefCell<Option<Reply>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub counters: RefCell<BTreeMap<String, u64>>,
}

impl TestHost {
    /// A host holding these request headers (names are lower-cased, as Envoy does).
    pub fn with_headers(headers: &[(&str, &str)]) -> TestHost {
        let host = TestHost::default();
        *host.headers.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        host
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.request_header(name)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }
}

impl Host for TestHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        self.headers.borrow().clone()
    }

    fn request_header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .borrow()
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.remove_request_header(name);
        self.headers
            .borrow_mut()
            .push((name.to_ascii_lowercase(), value.to_string()));
    }

    fn remove_request_header(&self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.headers.borrow_mut().retain(|(k, _)| *k != name);
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str) {
        *self.reply.borrow_mut() = Some(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        });
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

impl Metrics for TestHost {
    fn increment(&self, name: &str) {
        *self
            .counters
            .borrow_mut()
            .entry(name.to_string())
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_buffer_hands_over_totals_once() {
        let b = CounterBuffer::default();
        b.increment("a");
        b.increment("b");
        b.increment("a");
        let mut seen = Vec::new();
        b.drain(|n, c| seen.push((n.to_string(), c)));
        assert_eq!(seen, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
        seen.clear();
        b.drain(|n, c| seen.push((n.to_string(), c)));
        assert!(seen.is_empty());
        b.increment("b");
        b.drain(|n, c| seen.push((n.to_string(), c)));
        assert_eq!(seen, vec![("b".to_string(), 1)]);
    }

    #[test]
    fn test_host_headers() {
        let h = TestHost::with_headers(&[("Authorization", "Bearer x"), (":path", "/a")]);
        assert_eq!(
            h.request_header("authorization").as_deref(),
            Some("Bearer x")
        );
        h.set_request_header("X-A", "1");
        h.set_request_header("x-a", "2");
        assert_eq!(h.header("x-a").as_deref(), Some("2"));
        h.remove_request_header("authorization");
        assert_eq!(h.header("authorization"), None);
        h.send_response(401, &[("www-authenticate", "Bearer")], "{}");
        assert_eq!(
            h.reply
                .borrow()
                .as_ref()
                .unwrap()
                .header("WWW-Authenticate"),
            Some("Bearer")
        );
        h.increment("a");
        h.increment("a");
        assert_eq!(h.counter("a"), 2);
    }
}
