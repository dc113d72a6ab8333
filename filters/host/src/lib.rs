//! The host surface edgeguard's filters use, behind a trait (as Kuadrant's wasm-shim does):
//! filter logic is written against [`Host`] and tested natively with [`TestHost`]; inside
//! Envoy it runs against [`ProxyWasmHost`], which calls proxy-wasm hostcalls directly and turns
//! every host error into a value (the SDK's convenience methods would panic).

use std::cell::RefCell;
use std::collections::BTreeMap;

#[cfg(feature = "native")]
mod native_host;
#[cfg(feature = "native")]
pub use native_host::{
    callout_answer, native_log, native_now, NativeBackground, NativeHost, NativeMetrics,
};
#[cfg(target_arch = "wasm32")]
pub mod abi;
#[cfg(target_arch = "wasm32")]
mod proxy_wasm_host;
#[cfg(target_arch = "wasm32")]
pub use proxy_wasm_host::{
    call_response_status, log_line, now, ProxyWasmBackground, ProxyWasmHost, WasmMetrics,
};

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

/// Reads environment variables (inside Envoy: the wasm VM's environment, which holds what
/// `vm_config.environment_variables` passes in).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment (the VM's, inside Envoy).
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A secret read from configuration (a token, a key): kept out of `Debug` output and logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

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
///
/// Header values are bytes: HTTP allows any visible Latin-1 byte in a value, so nothing here
/// assumes UTF-8 (a filter decides what a value that is not UTF-8 means). Header names are
/// ASCII on every codec Envoy runs; a name that is not is handed over lossily.
pub trait Host {
    /// A request header (pseudo-headers such as `:path` included), first value.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every request header, in order (names lower-case, as Envoy hands them over).
    fn request_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// Sets (replaces) a request header.
    fn set_request_header(&self, name: &str, value: &str);
    /// Removes every value of a request header.
    fn remove_request_header(&self, name: &str);
    /// A response header, first value (while the response headers are being processed).
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets (replaces) a response header.
    fn set_response_header(&self, name: &str, value: &[u8]);
    /// Answers the request locally; the request does not go upstream.
    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str);
    /// The request body the proxy holds for this filter: what earlier request-body callbacks
    /// buffered plus the chunk being handed over now (all of it once the stream ended), at
    /// most `max` bytes. `None` when the host cannot read it. Only a filter that keeps the
    /// request in its body phase (it stopped the headers and buffers the body) calls this,
    /// from a request-body callback, or after the body ended while the request waited;
    /// requests decided on their headers never touch the body.
    fn request_body(&self, max: usize) -> Option<Vec<u8>>;
    /// The SHA-256 thumbprint (of the DER) of the client certificate the downstream connection
    /// presented in a mutual-TLS handshake; `None` without TLS, without a client certificate,
    /// or when the host cannot say. Costs a host call: read it only when a decision needs it.
    fn peer_certificate_sha256(&self) -> Option<edgeguard_verdict::binding::Thumbprint>;
    /// Answers locally with edgeguard's JSON error body.
    fn send_json_error(&self, status: u32, message: &str) {
        let body =
            edgeguard_verdict::reply::json_body(u16::try_from(status).unwrap_or(500), message);
        self.send_response(status, &[("content-type", "application/json")], &body);
    }
    /// Writes a log line.
    fn log(&self, level: Level, message: &str);
}

/// What a filter's background owner needs from the proxy: the proxy-wasm root context (one
/// per VM) or the native filter configuration (one per Envoy process, on the main thread).
/// JWKS fetches and store syncs run against it, so they are tested natively with
/// [`TestBackground`].
pub trait Background {
    /// Starts an HTTP call through an Envoy cluster with `body` as the request body (empty:
    /// none); the answer comes back (to the owner's callback) with the returned id. `Err` when
    /// the call cannot even start.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Result<u64, CallError>;
    /// Writes a log line.
    fn log(&self, level: Level, message: &str);
}

/// Why an HTTP call could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Envoy has no cluster of that name: a configuration mistake, not a transient failure.
    UnknownCluster,
    /// Anything else (the host's own words).
    Refused(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::UnknownCluster => f.write_str("Envoy has no cluster of that name"),
            CallError::Refused(why) => f.write_str(why),
        }
    }
}

/// An HTTP call recorded by [`TestBackground`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub id: u64,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    /// The request body (empty: none).
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A background owner for unit tests: records the calls started (answer them by calling the
/// filter's callback with their ids) and the log lines; `refuse_calls` makes starting fail,
/// `known_clusters` (when set) lists the clusters Envoy would know.
#[derive(Debug, Default)]
pub struct TestBackground {
    pub calls: RefCell<Vec<Call>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub refuse_calls: std::cell::Cell<bool>,
    pub known_clusters: RefCell<Option<Vec<String>>>,
    next_id: std::cell::Cell<u64>,
}

impl TestBackground {
    /// The calls started since the last time this was asked.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.logs.borrow().iter().any(|(_, l)| l.contains(needle))
    }
}

impl Background for TestBackground {
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Result<u64, CallError> {
        if self.refuse_calls.get() {
            return Err(CallError::Refused(format!("refused calling {cluster}")));
        }
        if let Some(known) = self.known_clusters.borrow().as_ref() {
            if !known.iter().any(|k| k == cluster) {
                return Err(CallError::UnknownCluster);
            }
        }
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        self.calls.borrow_mut().push(Call {
            id,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            timeout,
        });
        Ok(id)
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

/// A request header as text: `Ok(None)` when absent, `Err(NotUtf8)` when present but not UTF-8.
pub fn header_text<H: Host + ?Sized>(host: &H, name: &str) -> Result<Option<String>, NotUtf8> {
    match host.request_header(name) {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| NotUtf8),
    }
}

/// A header value that is not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotUtf8;

/// Decodes the proxy-wasm header-map serialisation: a little-endian `u32` count, `count`
/// pairs of `u32` sizes, then each name and value followed by a NUL byte. Names that are not
/// UTF-8 are converted lossily; truncated input yields the pairs read before the damage.
/// Never panics.
pub fn decode_header_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let read_u32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let arr: [u8; 4] = b.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(arr)).ok()
    };
    let Some(count) = read_u32(0) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count.min(256));
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return out;
    };
    for n in 0..count {
        let s = 4 + n * 8;
        let (Some(name_len), Some(value_len)) = (read_u32(s), read_u32(s + 4)) else {
            break;
        };
        let Some(name) = p.checked_add(name_len).and_then(|end| bytes.get(p..end)) else {
            break;
        };
        p += name_len + 1;
        let Some(value) = p.checked_add(value_len).and_then(|end| bytes.get(p..end)) else {
            break;
        };
        p = p.saturating_add(value_len + 1);
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    out
}

pub use edgeguard_verdict::strip::HeaderStrip;

/// Parses `strip_request_headers` into a [`HeaderStrip`]; errors name `field[i]`.
pub fn parse_header_strip(field: &str, patterns: &[String]) -> Result<HeaderStrip, ConfigError> {
    HeaderStrip::parse(patterns)
        .map_err(|e| ConfigError::new(format!("{field}[{}]", e.index), e.message))
}

/// Removes the request headers `strip` matches. Exact names cost one host call each;
/// prefixes need the header list, read once and only when there are prefixes.
pub fn strip_request_headers<H: Host + ?Sized>(strip: &HeaderStrip, host: &H) {
    for name in strip.exact() {
        host.remove_request_header(name);
    }
    if !strip.has_prefixes() {
        return;
    }
    let mut names: Vec<String> = host
        .request_headers()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| strip.matches(k))
        .collect();
    names.dedup();
    for name in names {
        host.remove_request_header(&name);
    }
}

/// Counters a filter increments. Implementations map names to host metrics.
pub trait Metrics {
    fn increment(&self, name: &str);
    /// Adds `n` to a counter.
    fn add(&self, name: &str, n: u64);
    /// Sets a gauge (implementations that keep no gauges ignore it).
    fn set_gauge(&self, _name: &str, _value: u64) {}
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
        self.add(name, 1);
    }

    fn add(&self, name: &str, n: u64) {
        let mut pending = self.pending.borrow_mut();
        match pending.iter_mut().find(|(k, _)| k == name) {
            Some((_, count)) => *count = count.saturating_add(n),
            None => pending.push((name.to_string(), n)),
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

/// An in-memory host for unit tests: request and response header maps, the request body, the
/// reply sent, log lines and counters.
#[derive(Debug, Default)]
pub struct TestHost {
    pub headers: RefCell<Vec<(String, Vec<u8>)>>,
    /// The request body the host holds (`None`: the host cannot read it).
    pub body: RefCell<Option<Vec<u8>>>,
    /// How many times the body was read.
    pub body_reads: std::cell::Cell<usize>,
    pub response_headers: RefCell<Vec<(String, Vec<u8>)>>,
    pub reply: RefCell<Option<Reply>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub counters: RefCell<BTreeMap<String, u64>>,
    pub gauges: RefCell<BTreeMap<String, u64>>,
    /// The client certificate's thumbprint (`None`: no mutual TLS / no certificate).
    pub peer_certificate: std::cell::Cell<Option<edgeguard_verdict::binding::Thumbprint>>,
    /// How many times the peer certificate was asked for.
    pub peer_certificate_reads: std::cell::Cell<usize>,
}

impl TestHost {
    /// A host holding these request headers (names are lower-cased, as Envoy does).
    pub fn with_headers(headers: &[(&str, &str)]) -> TestHost {
        let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        TestHost::with_raw_headers(&raw)
    }

    /// A host holding these request headers, values as raw bytes.
    pub fn with_raw_headers(headers: &[(&str, &[u8])]) -> TestHost {
        let host = TestHost::default();
        *host.headers.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
            .collect();
        host
    }

    /// The same host holding `body` as the request body.
    pub fn with_body(self, body: &[u8]) -> TestHost {
        *self.body.borrow_mut() = Some(body.to_vec());
        self
    }

    /// The same host on a mutual-TLS connection whose client certificate has this thumbprint.
    pub fn with_peer_certificate(
        self,
        thumbprint: edgeguard_verdict::binding::Thumbprint,
    ) -> TestHost {
        self.peer_certificate.set(Some(thumbprint));
        self
    }

    /// A request header as text (lossy), for assertions.
    pub fn header(&self, name: &str) -> Option<String> {
        self.request_header(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// A response header as text (lossy), for assertions.
    pub fn response(&self, name: &str) -> Option<String> {
        self.response_header(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }
}

fn find(map: &RefCell<Vec<(String, Vec<u8>)>>, name: &str) -> Option<Vec<u8>> {
    let name = name.to_ascii_lowercase();
    map.borrow()
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
}

fn replace(map: &RefCell<Vec<(String, Vec<u8>)>>, name: &str, value: &[u8]) {
    let name = name.to_ascii_lowercase();
    let mut m = map.borrow_mut();
    m.retain(|(k, _)| *k != name);
    m.push((name, value.to_vec()));
}

impl Host for TestHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers.borrow().clone()
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        find(&self.headers, name)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        replace(&self.headers, name, value.as_bytes());
    }

    fn remove_request_header(&self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.headers.borrow_mut().retain(|(k, _)| *k != name);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        find(&self.response_headers, name)
    }

    fn set_response_header(&self, name: &str, value: &[u8]) {
        replace(&self.response_headers, name, value);
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

    fn request_body(&self, max: usize) -> Option<Vec<u8>> {
        self.body_reads.set(self.body_reads.get() + 1);
        self.body
            .borrow()
            .as_ref()
            .map(|b| b.get(..max.min(b.len())).unwrap_or_default().to_vec())
    }

    fn peer_certificate_sha256(&self) -> Option<edgeguard_verdict::binding::Thumbprint> {
        self.peer_certificate_reads
            .set(self.peer_certificate_reads.get() + 1);
        self.peer_certificate.get()
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

impl Metrics for TestHost {
    fn increment(&self, name: &str) {
        self.add(name, 1);
    }

    fn add(&self, name: &str, n: u64) {
        *self
            .counters
            .borrow_mut()
            .entry(name.to_string())
            .or_default() += n;
    }

    fn set_gauge(&self, name: &str, value: u64) {
        self.gauges.borrow_mut().insert(name.to_string(), value);
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
            Some(&b"Bearer x"[..])
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
        let raw = TestHost::with_raw_headers(&[("User-Agent", b"caf\xe9")]);
        assert_eq!(header_text(&raw, "user-agent"), Err(NotUtf8));
        assert_eq!(header_text(&raw, "x"), Ok(None));
        raw.set_response_header("Vary", b"a\xff");
        assert_eq!(raw.response_header("vary").as_deref(), Some(&b"a\xff"[..]));
        assert_eq!(raw.request_body(10), None);
        let b = TestHost::default().with_body(b"{\"where\": 1}");
        assert_eq!(b.request_body(3).as_deref(), Some(&b"{\"w"[..]));
        assert_eq!(b.request_body(100).map(|v| v.len()), Some(12));
        assert_eq!(b.body_reads.get(), 2);
    }

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_strip() {
        let s = parse_header_strip(
            "strip",
            &[
                "Portal-*".to_string(),
                "rl-*".to_string(),
                "x-edgeguard-sub".to_string(),
            ],
        )
        .unwrap();
        let h = TestHost::with_headers(&[
            ("portal-application-id", "a"),
            ("Portal-Account-ID", "b"),
            ("rl-user-limit-40", "c"),
            ("x-edgeguard-sub", "d"),
            ("x-edgeguard-other", "e"),
            ("portalx", "f"),
        ]);
        strip_request_headers(&s, &h);
        let left: Vec<String> = h.headers.borrow().iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(left, vec!["x-edgeguard-other", "portalx"]);
        assert_eq!(
            parse_header_strip("strip", &["a".into(), "b c".into()])
                .unwrap_err()
                .field,
            "strip[1]"
        );
    }

    #[test]
    fn header_pairs_decode_bytes_and_survive_damage() {
        let pairs: &[(&[u8], &[u8])] = &[
            (b":path", b"/a"),
            (b"user-agent", b"caf\xe9/1.0"),
            (b"x-\xff", b""),
        ];
        let bytes = encode(pairs);
        let d = decode_header_pairs(&bytes);
        assert_eq!(d.len(), 3);
        assert_eq!(d[1].1, b"caf\xe9/1.0".to_vec());
        assert_eq!(d[2].0, "x-\u{fffd}");
        for cut in 0..bytes.len() {
            let d = decode_header_pairs(&bytes[..cut]);
            assert!(d.len() <= 3);
        }
        assert!(decode_header_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(decode_header_pairs(&[]).is_empty());
    }
}
