//! The one module with `unsafe`: the safe handles over Envoy's callbacks ([`EnvoyHttpFilter`],
//! [`EnvoyFilterConfig`], [`ConfigEnv`], the schedulers, [`log`]), the hook bodies behind
//! [`crate::declare_http_filter!`] (each a `catch_unwind` barrier), and the macro itself.
//!
//! Invariants every `unsafe` block below relies on (Envoy's documented contract):
//! - I1: a filter pointer Envoy passes to a hook (`HttpFilterEnvoyPtr`) is live for that hook;
//!   a configuration pointer (`HttpFilterConfigEnvoyPtr`) is live until `config_destroy`.
//! - I2: a module pointer Envoy passes back is one we returned from `config_new` / `filter_new`,
//!   not yet passed to the matching `*_destroy`; we only ever make *shared* references from it,
//!   so re-entrant hooks (Envoy runs our response hook while we are inside `send_response`)
//!   never alias a `&mut`.
//! - I3: every in-module filter is created from a live in-module configuration, and Envoy's
//!   filter holds a `shared_ptr` to its configuration, so the configuration outlives the filter.
//! - I4: buffers Envoy hands us (`EnvoyBuffer`, header arrays) are valid until the end of the
//!   hook, or until a setter changes the same map; getters borrow `&self`, setters take
//!   `&mut self`, and a handle only lives for the hook it was made for.
//! - I5: buffers we hand Envoy (`ModuleBuffer`, header arrays) only need to live for the call.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::time::Duration;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer, ModuleHttpHeader};
use crate::types::{
    internal_error_body, local_reply_status, panic_message, Attribute, BodyKind, CalloutInitError,
    CalloutResponse, CalloutResult, CounterId, GaugeId, HeaderMap, HistogramId, LogLevel,
    MetricsError,
};
use crate::{Filter, FilterConfig};

/// The module-defined factory [`crate::declare_http_filter!`] registers: the filter name
/// (`filter_name` in Envoy's configuration), the configuration bytes (`filter_config`,
/// unwrapped from its `Any`), and the configuration-time environment.
pub type FactoryFn =
    fn(name: &str, config: &[u8], env: &ConfigEnv) -> Result<Box<dyn FilterConfig>, String>;

/// The counter every configuration defines for panics caught at the ABI boundary
/// (`<metrics_namespace>.module_panics`).
pub const PANIC_COUNTER: &str = "module_panics";

fn module_buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr().cast::<c_char>(),
        length: bytes.len(),
    }
}

const NULL_MODULE_BUFFER: ModuleBuffer = ModuleBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

fn module_headers(headers: &[(&[u8], &[u8])]) -> Vec<ModuleHttpHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHttpHeader {
            key_ptr: k.as_ptr().cast::<c_char>(),
            key_length: k.len(),
            value_ptr: v.as_ptr().cast::<c_char>(),
            value_length: v.len(),
        })
        .collect()
}

fn millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

/// Bytes of an Envoy buffer (empty for a null buffer).
///
/// # Safety
/// `buf` must be null or point to `buf.length` readable bytes that stay unchanged for `'a`.
unsafe fn envoy_bytes<'a>(buf: EnvoyBuffer) -> &'a [u8] {
    if buf.ptr.is_null() || buf.length == 0 {
        return &[];
    }
    // SAFETY: non-null, and the caller guarantees `length` readable bytes for 'a.
    unsafe { std::slice::from_raw_parts(buf.ptr.cast::<u8>(), buf.length) }
}

/// An array of Envoy headers as slices (empty for a null array).
///
/// # Safety
/// `ptr` must be null or point to `len` headers whose buffers stay valid for `'a` (I4).
unsafe fn envoy_headers<'a>(ptr: *const EnvoyHttpHeader, len: usize) -> Vec<(&'a [u8], &'a [u8])> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: non-null, and the caller guarantees `len` initialised headers for 'a.
    let raw = unsafe { std::slice::from_raw_parts(ptr, len) };
    raw.iter()
        .map(|h| {
            // SAFETY: each key/value buffer is valid for 'a (same guarantee).
            unsafe {
                (
                    envoy_bytes(EnvoyBuffer {
                        ptr: h.key_ptr,
                        length: h.key_length,
                    }),
                    envoy_bytes(EnvoyBuffer {
                        ptr: h.value_ptr,
                        length: h.value_length,
                    }),
                )
            }
        })
        .collect()
}

/// An array of Envoy buffers as slices (empty for a null array).
///
/// # Safety
/// `ptr` must be null or point to `len` buffers valid for `'a` (I4).
unsafe fn envoy_chunks<'a>(ptr: *const EnvoyBuffer, len: usize) -> Vec<&'a [u8]> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: non-null, and the caller guarantees `len` initialised buffers for 'a.
    let raw = unsafe { std::slice::from_raw_parts(ptr, len) };
    raw.iter()
        // SAFETY: each chunk is valid for 'a (same guarantee).
        .map(|b| unsafe { envoy_bytes(*b) })
        .collect()
}

// ----------------------------------------------------------------------------------- logging

/// Logs one line under Envoy's `dynamic_modules` logger (shown with
/// `--component-log-level dynamic_modules:<level>`), with the caller's file and line. Any thread.
/// (Unit tests of this crate run without Envoy: there the line goes to stderr.)
#[track_caller]
pub fn log(level: LogLevel, message: &str) {
    let location = std::panic::Location::caller();
    #[cfg(test)]
    eprintln!(
        "[{level:?}] {}:{}: {message}",
        location.file(),
        location.line()
    );
    #[cfg(not(test))]
    // SAFETY: a process-wide callback; both buffers outlive the call (I5).
    unsafe {
        abi::envoy_dynamic_module_callback_log_v2(
            level.to_abi(),
            module_buffer(message.as_bytes()),
            module_buffer(location.file().as_bytes()),
            location.line(),
        )
    }
}

/// Whether `level` is enabled (skip building a message nobody will see). Any thread.
pub fn log_enabled(level: LogLevel) -> bool {
    #[cfg(test)]
    return level >= LogLevel::Trace;
    #[cfg(not(test))]
    // SAFETY: a process-wide callback without pointers.
    unsafe {
        abi::envoy_dynamic_module_callback_log_enabled(level.to_abi())
    }
}

// ----------------------------------------------------------------------- the stream handle

/// One HTTP stream inside Envoy, handed to [`Filter`] hooks for the duration of the hook.
///
/// Header values are bytes (a value need not be UTF-8). Borrowed getters stay valid until the
/// next call that changes the stream (those take `&mut self`).
pub struct EnvoyHttpFilter {
    ptr: abi::HttpFilterEnvoyPtr,
    replied: bool,
    /// Bound to the worker thread of its stream.
    _not_send: PhantomData<*mut ()>,
}

impl EnvoyHttpFilter {
    fn new(ptr: abi::HttpFilterEnvoyPtr) -> EnvoyHttpFilter {
        EnvoyHttpFilter {
            ptr,
            replied: false,
            _not_send: PhantomData,
        }
    }

    /// Value number `index` of `name` in `map` and the number of values.
    fn header_at(&self, map: HeaderMap, name: &[u8], index: usize) -> (Option<&[u8]>, usize) {
        let mut out = EnvoyBuffer::NULL;
        let mut count = 0usize;
        // SAFETY: live filter (I1); `name` outlives the call (I5); `out`, `count` are valid places.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                map.to_abi(),
                module_buffer(name),
                &mut out,
                index,
                &mut count,
            )
        };
        if !ok || out.ptr.is_null() {
            return (None, count);
        }
        // SAFETY: Envoy's value stays valid while `self` is borrowed (I4).
        (Some(unsafe { envoy_bytes(out) }), count)
    }

    /// The first value of header `name` in `map` (`None` when absent or when the map is not
    /// available in this phase, e.g. response headers while decoding).
    pub fn header(&self, map: HeaderMap, name: &[u8]) -> Option<&[u8]> {
        self.header_at(map, name, 0).0
    }

    /// Every value of header `name` in `map`, in order.
    pub fn header_values(&self, map: HeaderMap, name: &[u8]) -> Vec<&[u8]> {
        let (first, count) = self.header_at(map, name, 0);
        let Some(first) = first else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(count);
        out.push(first);
        for i in 1..count {
            if let (Some(v), _) = self.header_at(map, name, i) {
                out.push(v);
            }
        }
        out
    }

    /// All headers of `map` as (name, value) pairs, one pair per value, in order.
    pub fn headers(&self, map: HeaderMap) -> Vec<(&[u8], &[u8])> {
        // SAFETY: live filter (I1).
        let size = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.ptr, map.to_abi())
        };
        if size == 0 {
            return Vec::new();
        }
        let mut raw = vec![EnvoyHttpHeader::NULL; size];
        // SAFETY: live filter (I1); `raw` holds exactly `size` entries, as the ABI requires.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.ptr,
                map.to_abi(),
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy filled `raw` with buffers valid while `self` is borrowed (I4).
        unsafe { envoy_headers(raw.as_ptr(), raw.len()) }
    }

    /// Replaces every value of `name` in `map` with `value`. `false` if the map is not
    /// available in this phase.
    pub fn set_header(&mut self, map: HeaderMap, name: &[u8], value: &[u8]) -> bool {
        // SAFETY: live filter (I1); buffers outlive the call (I5).
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map.to_abi(),
                module_buffer(name),
                module_buffer(value),
            )
        }
    }

    /// Appends a value of `name` in `map`.
    pub fn add_header(&mut self, map: HeaderMap, name: &[u8], value: &[u8]) -> bool {
        // SAFETY: live filter (I1); buffers outlive the call (I5).
        unsafe {
            abi::envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                map.to_abi(),
                module_buffer(name),
                module_buffer(value),
            )
        }
    }

    /// Removes every value of `name` in `map` (a set with a null value, as the ABI defines).
    pub fn remove_header(&mut self, map: HeaderMap, name: &[u8]) -> bool {
        // SAFETY: live filter (I1); `name` outlives the call (I5); a null value means remove.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map.to_abi(),
                module_buffer(name),
                NULL_MODULE_BUFFER,
            )
        }
    }

    pub fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.header(HeaderMap::RequestHeaders, name)
    }

    pub fn request_header_owned(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.request_header(name).map(<[u8]>::to_vec)
    }

    pub fn request_header_values(&self, name: &[u8]) -> Vec<&[u8]> {
        self.header_values(HeaderMap::RequestHeaders, name)
    }

    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        self.headers(HeaderMap::RequestHeaders)
    }

    pub fn set_request_header(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.set_header(HeaderMap::RequestHeaders, name, value)
    }

    pub fn add_request_header(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.add_header(HeaderMap::RequestHeaders, name, value)
    }

    pub fn remove_request_header(&mut self, name: &[u8]) -> bool {
        self.remove_header(HeaderMap::RequestHeaders, name)
    }

    pub fn response_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.header(HeaderMap::ResponseHeaders, name)
    }

    pub fn response_header_owned(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.response_header(name).map(<[u8]>::to_vec)
    }

    pub fn response_header_values(&self, name: &[u8]) -> Vec<&[u8]> {
        self.header_values(HeaderMap::ResponseHeaders, name)
    }

    pub fn response_headers(&self) -> Vec<(&[u8], &[u8])> {
        self.headers(HeaderMap::ResponseHeaders)
    }

    pub fn set_response_header(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.set_header(HeaderMap::ResponseHeaders, name, value)
    }

    pub fn add_response_header(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.add_header(HeaderMap::ResponseHeaders, name, value)
    }

    pub fn remove_response_header(&mut self, name: &[u8]) -> bool {
        self.remove_header(HeaderMap::ResponseHeaders, name)
    }

    /// Bytes in one view of the stream's body (0 when that view is unavailable or empty).
    pub fn body_size(&self, body: BodyKind) -> usize {
        // SAFETY: live filter (I1); no pointers besides it.
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(self.ptr, body.to_abi()) }
    }

    /// The chunks of one view of the stream's body, in order (empty when that view is
    /// unavailable or empty). They borrow Envoy's buffer: valid while `self` is borrowed.
    pub fn body_chunks(&self, body: BodyKind) -> Vec<&[u8]> {
        // SAFETY: live filter (I1).
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, body.to_abi())
        };
        if count == 0 {
            return Vec::new();
        }
        let mut raw = vec![EnvoyBuffer::NULL; count];
        // SAFETY: live filter (I1); `raw` holds exactly `count` entries, the number Envoy just
        // gave for this view, which nothing can change before this call (same thread, same
        // hook, no setter in between), as the ABI's precondition requires.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.ptr,
                body.to_abi(),
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy filled `raw` with buffers valid until the end of the hook unless the
        // body changes, which needs `&mut self` (I4).
        unsafe { envoy_chunks(raw.as_ptr(), raw.len()) }
    }

    /// Whether the chunk handed to the current request-body hook is the buffered body itself
    /// (a filter before this one buffered the body and resumed).
    pub fn received_buffered_request_body(&self) -> bool {
        // SAFETY: live filter (I1).
        unsafe { abi::envoy_dynamic_module_callback_http_received_buffered_request_body(self.ptr) }
    }

    /// The request body held for this filter so far, as chunks in order: what its earlier body
    /// hooks buffered, then the chunk of the current body hook (counted once when that chunk
    /// is the buffer itself). Outside a body hook only the buffered part exists.
    pub fn request_body_chunks(&self) -> Vec<&[u8]> {
        let received = self.body_chunks(BodyKind::ReceivedRequest);
        if self.received_buffered_request_body() {
            return received;
        }
        let mut chunks = self.body_chunks(BodyKind::BufferedRequest);
        chunks.extend(received);
        chunks
    }

    /// The size of [`Self::request_body_chunks`] without reading them.
    pub fn request_body_size(&self) -> usize {
        let received = self.body_size(BodyKind::ReceivedRequest);
        if self.received_buffered_request_body() {
            return received;
        }
        received.saturating_add(self.body_size(BodyKind::BufferedRequest))
    }

    /// Answers the request locally (Envoy's `sendLocalReply`) with `status` (200–599; anything
    /// else becomes 500), `headers` and `body`. Return [`crate::HeadersStatus::StopIteration`] (or the body/trailers equivalent) from
    /// the hook afterwards.
    pub fn send_response(&mut self, status: u32, headers: &[(&[u8], &[u8])], body: &[u8]) {
        self.send_response_with_details(status, headers, body, "");
    }

    /// [`Self::send_response`] with Envoy's response code details (`%RESPONSE_CODE_DETAILS%`
    /// in access logs; empty for none).
    pub fn send_response_with_details(
        &mut self,
        status: u32,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let mut raw = module_headers(headers);
        let details = if details.is_empty() {
            NULL_MODULE_BUFFER
        } else {
            module_buffer(details.as_bytes())
        };
        self.replied = true;
        // SAFETY: live filter (I1); the header array and buffers outlive the call (I5).
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                local_reply_status(status),
                raw.as_mut_ptr(),
                raw.len(),
                module_buffer(body),
                details,
            )
        }
    }

    /// Resumes a request stopped by this filter (after a callout or a scheduled event).
    pub fn continue_decoding(&mut self) {
        // SAFETY: live filter (I1).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr) }
    }

    /// Resumes a response stopped by this filter.
    pub fn continue_encoding(&mut self) {
        // SAFETY: live filter (I1).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_encoding(self.ptr) }
    }

    /// Sends an HTTP request to `cluster` on this stream's worker; the answer arrives in
    /// [`Filter::on_callout_done`] with the returned id. `headers` must include `:method`,
    /// `:path` and `host`. Stop the request (return [`crate::HeadersStatus::StopIteration`]) to wait.
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u64, CalloutInitError> {
        let mut raw = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: live filter (I1); the header array and buffers outlive the call (I5); `id` is
        // a valid place.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_http_callout(
                self.ptr,
                &mut id,
                module_buffer(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                module_buffer(body),
                millis(timeout),
            )
        };
        CalloutInitError::check(result).map(|()| id)
    }

    /// A scheduler that wakes this stream ([`Filter::on_scheduled`]) from any thread; waking a
    /// finished stream is a no-op. `None` if Envoy could not create one.
    pub fn scheduler(&self) -> Option<FilterScheduler> {
        // SAFETY: live filter (I1).
        let ptr = unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.ptr) };
        NonNull::new(ptr).map(|ptr| FilterScheduler { ptr })
    }

    /// The index of the worker thread running this stream (0-based).
    pub fn worker_index(&self) -> u32 {
        // SAFETY: live filter (I1).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_get_worker_index(self.ptr) }
    }

    /// A string attribute of the stream or connection (`None` when unavailable).
    pub fn attribute_bytes(&self, attribute: Attribute) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::NULL;
        // SAFETY: live filter (I1); `out` is a valid place.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                attribute.to_abi(),
                &mut out,
            )
        };
        if !ok || out.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's buffer stays valid while `self` is borrowed (I4).
        Some(unsafe { envoy_bytes(out) })
    }

    /// An integer attribute (`None` when unavailable).
    pub fn attribute_int(&self, attribute: Attribute) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: live filter (I1); `out` is a valid place.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.ptr,
                attribute.to_abi(),
                &mut out,
            )
        };
        ok.then_some(out)
    }

    /// A boolean attribute (`None` when unavailable).
    pub fn attribute_bool(&self, attribute: Attribute) -> Option<bool> {
        let mut out = false;
        // SAFETY: live filter (I1); `out` is a valid place.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_bool(
                self.ptr,
                attribute.to_abi(),
                &mut out,
            )
        };
        ok.then_some(out)
    }

    pub fn increment_counter(&self, id: CounterId, by: u64) -> Result<(), MetricsError> {
        // SAFETY: live filter (I1); no labels (null, 0).
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            )
        })
    }

    pub fn set_gauge(&self, id: GaugeId, value: u64) -> Result<(), MetricsError> {
        // SAFETY: live filter (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_set_gauge(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn increment_gauge(&self, id: GaugeId, by: u64) -> Result<(), MetricsError> {
        // SAFETY: live filter (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_gauge(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            )
        })
    }

    pub fn decrement_gauge(&self, id: GaugeId, by: u64) -> Result<(), MetricsError> {
        // SAFETY: live filter (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_decrement_gauge(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            )
        })
    }

    pub fn record_histogram(&self, id: HistogramId, value: u64) -> Result<(), MetricsError> {
        // SAFETY: live filter (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                value,
            )
        })
    }
}

// ------------------------------------------------------------------ the configuration handles

/// A filter configuration inside Envoy, handed to [`FilterConfig`]'s background hooks (main
/// thread) for the duration of the hook.
pub struct EnvoyFilterConfig {
    ptr: abi::HttpFilterConfigEnvoyPtr,
    _not_send: PhantomData<*mut ()>,
}

impl EnvoyFilterConfig {
    fn new(ptr: abi::HttpFilterConfigEnvoyPtr) -> EnvoyFilterConfig {
        EnvoyFilterConfig {
            ptr,
            _not_send: PhantomData,
        }
    }

    /// Sends an HTTP request to `cluster` from the configuration (main thread, not tied to a
    /// request); the answer arrives in [`FilterConfig::on_callout_done`] with the returned id.
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u64, CalloutInitError> {
        let mut raw = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: live configuration (I1), main thread (config hooks run there); the header
        // array and buffers outlive the call (I5); `id` is a valid place.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.ptr,
                &mut id,
                module_buffer(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                module_buffer(body),
                millis(timeout),
            )
        };
        CalloutInitError::check(result).map(|()| id)
    }

    /// A scheduler that runs [`FilterConfig::on_scheduled`] on the main thread, committed from
    /// any thread. `None` if Envoy could not create one.
    pub fn scheduler(&self) -> Option<ConfigScheduler> {
        // SAFETY: live configuration (I1).
        let ptr = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr)
        };
        NonNull::new(ptr).map(|ptr| ConfigScheduler { ptr })
    }

    pub fn increment_counter(&self, id: CounterId, by: u64) -> Result<(), MetricsError> {
        // SAFETY: live configuration (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            )
        })
    }

    pub fn set_gauge(&self, id: GaugeId, value: u64) -> Result<(), MetricsError> {
        // SAFETY: live configuration (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn increment_gauge(&self, id: GaugeId, by: u64) -> Result<(), MetricsError> {
        // SAFETY: live configuration (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            )
        })
    }

    pub fn decrement_gauge(&self, id: GaugeId, by: u64) -> Result<(), MetricsError> {
        // SAFETY: live configuration (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            )
        })
    }

    pub fn record_histogram(&self, id: HistogramId, value: u64) -> Result<(), MetricsError> {
        // SAFETY: live configuration (I1); no labels.
        MetricsError::check(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                self.ptr,
                id.0,
                std::ptr::null_mut(),
                0,
                value,
            )
        })
    }
}

/// What a [`FactoryFn`] gets while Envoy creates the configuration (main thread): everything
/// of [`EnvoyFilterConfig`] plus the metric definitions, which are only possible now.
pub struct ConfigEnv {
    config: EnvoyFilterConfig,
}

impl std::ops::Deref for ConfigEnv {
    type Target = EnvoyFilterConfig;
    fn deref(&self) -> &EnvoyFilterConfig {
        &self.config
    }
}

impl std::ops::DerefMut for ConfigEnv {
    fn deref_mut(&mut self) -> &mut EnvoyFilterConfig {
        &mut self.config
    }
}

impl ConfigEnv {
    fn define(
        &self,
        name: &str,
        define: unsafe extern "C" fn(
            abi::HttpFilterConfigEnvoyPtr,
            ModuleBuffer,
            *mut ModuleBuffer,
            usize,
            *mut usize,
        ) -> abi::MetricsResult,
    ) -> Result<usize, MetricsError> {
        let mut id = 0usize;
        // SAFETY: `define` is one of Envoy's define_* callbacks; live configuration being
        // created (I1); `name` outlives the call (I5); no labels; `id` is a valid place.
        let result = unsafe {
            define(
                self.config.ptr,
                module_buffer(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        MetricsError::check(result).map(|()| id)
    }

    /// Defines the counter `<metrics_namespace>.<name>`.
    pub fn define_counter(&self, name: &str) -> Result<CounterId, MetricsError> {
        self.define(
            name,
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
        )
        .map(CounterId)
    }

    /// Defines the gauge `<metrics_namespace>.<name>`.
    pub fn define_gauge(&self, name: &str) -> Result<GaugeId, MetricsError> {
        self.define(
            name,
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        )
        .map(GaugeId)
    }

    /// Defines the histogram `<metrics_namespace>.<name>`.
    pub fn define_histogram(&self, name: &str) -> Result<HistogramId, MetricsError> {
        self.define(
            name,
            abi::envoy_dynamic_module_callback_http_filter_config_define_histogram,
        )
        .map(HistogramId)
    }

    /// Envoy's worker count (`--concurrency`).
    pub fn concurrency(&self) -> u32 {
        // SAFETY: a process-wide callback; configurations are created on the main thread, where
        // the ABI allows this call.
        unsafe { abi::envoy_dynamic_module_callback_get_concurrency() }
    }
}

// --------------------------------------------------------------------------------- schedulers

/// Wakes one stream on its worker thread ([`Filter::on_scheduled`]) from any thread. Deleted
/// on drop; committing after the stream ended is a no-op.
pub struct FilterScheduler {
    ptr: NonNull<c_void>,
}

// SAFETY: the ABI documents commit as callable from any thread; the object is only deleted by
// `Drop`, which has exclusive access.
unsafe impl Send for FilterScheduler {}
// SAFETY: commit only posts to the worker's dispatcher (thread-safe in Envoy) and never mutates
// the scheduler object.
unsafe impl Sync for FilterScheduler {}

impl FilterScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: created by scheduler_new and not yet deleted (we own it until Drop).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                self.ptr.as_ptr(),
                event_id,
            )
        }
    }
}

impl Drop for FilterScheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new, deleted exactly once, here.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(self.ptr.as_ptr())
        }
    }
}

/// Runs [`FilterConfig::on_scheduled`] on Envoy's main thread, committed from any thread (the
/// module's own background threads included). Deleted on drop; committing after the
/// configuration is gone is a no-op. Drop it before the configuration is destroyed.
pub struct ConfigScheduler {
    ptr: NonNull<c_void>,
}

// SAFETY: as for FilterScheduler: commit is documented thread-safe, delete happens in Drop.
unsafe impl Send for ConfigScheduler {}
// SAFETY: commit posts to the main dispatcher (thread-safe) and does not mutate the object.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: created by config_scheduler_new and not yet deleted.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.ptr.as_ptr(),
                event_id,
            )
        }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: created by config_scheduler_new, deleted exactly once, here.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                self.ptr.as_ptr(),
            )
        }
    }
}

// ------------------------------------------------------------------------- panic barrier

thread_local! {
    /// How many of our hooks are on this thread's stack (hooks nest: Envoy runs the response
    /// hooks of a local reply while `send_response` is still inside a request hook).
    static HOOK_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The message and location of the last panic caught on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
    let mut message = panic_message(info.payload());
    if let Some(at) = info.location() {
        message.push_str(&format!(" (at {}:{})", at.file(), at.line()));
    }
    if HOOK_DEPTH.with(Cell::get) > 0 {
        // the barrier that catches it logs one line with the hook's name
        LAST_PANIC.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                *p = Some(message);
            }
        });
    } else {
        let thread = std::thread::current();
        log(
            LogLevel::Error,
            &format!(
                "edgeguard dynamic module: panic outside an Envoy hook (thread {}): {message}",
                thread.name().unwrap_or("unnamed")
            ),
        );
    }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(panic_hook)));
}

/// Drops a panic payload without letting a panicking `Drop` escape.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Runs `body` behind the barrier: `Err(message)` if it panicked.
fn guarded<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    HOOK_DEPTH.with(|d| d.set(d.get().saturating_add(1)));
    let result = catch_unwind(AssertUnwindSafe(body));
    HOOK_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    result.map_err(|payload| {
        let message = LAST_PANIC
            .with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take()))
            .unwrap_or_else(|| panic_message(payload.as_ref()));
        drop_payload(payload);
        message
    })
}

/// Drops `value` behind the barrier (a `Drop` implementation may panic).
fn drop_guarded<T>(value: T) -> Result<(), String> {
    guarded(move || drop(value))
}

// ------------------------------------------------------------------------------ hook state

/// What `config_new` returns to Envoy.
struct ConfigSlot {
    envoy: abi::HttpFilterConfigEnvoyPtr,
    name: String,
    config: Box<dyn FilterConfig>,
    panics: Option<CounterId>,
}

impl ConfigSlot {
    /// Logs a caught panic and counts it: through the stream when there is one, else through
    /// the configuration (the ABI's call for work outside a request).
    fn report_panic(
        &self,
        stream: Option<&EnvoyHttpFilter>,
        hook: &str,
        message: &str,
        outcome: &str,
    ) {
        log(
            LogLevel::Error,
            &format!(
                "edgeguard dynamic module, filter {:?}: panic in {hook}: {message}; {outcome}",
                self.name
            ),
        );
        if let Some(id) = self.panics {
            let _ = match stream {
                Some(stream) => stream.increment_counter(id, 1),
                None => EnvoyFilterConfig::new(self.envoy).increment_counter(id, 1),
            };
        }
    }
}

enum FilterState {
    Running(Box<dyn Filter>),
    /// `new_filter` or a hook panicked: the module's filter is not called again.
    Failed,
}

/// What `filter_new` returns to Envoy. Only shared references are made from it (I2); the
/// `RefCell` turns a re-entrant hook into "skip the module's filter".
struct FilterSlot {
    config: *const ConfigSlot,
    state: RefCell<FilterState>,
    /// `new_filter` panicked: answer the request with a 500 as soon as it arrives.
    reply_on_request: Cell<bool>,
}

/// How a hook that panicked ends.
#[derive(Clone, Copy)]
enum OnPanic {
    /// Answer the request with a 500 (while the request or response is still in flight).
    Reply,
    /// Only log and count (stream complete, destroy).
    LogOnly,
}

/// Runs a [`Filter`] hook behind the barrier.
///
/// # Safety
/// `envoy` and `module` must be what Envoy passes to a stream hook (I1, I2).
unsafe fn with_filter<R: Copy>(
    envoy: abi::HttpFilterEnvoyPtr,
    module: abi::HttpFilterModulePtr,
    hook: &'static str,
    skipped: R,
    panicked: R,
    on_panic: OnPanic,
    body: impl FnOnce(&mut dyn Filter, &mut EnvoyHttpFilter) -> R,
) -> R {
    if envoy.is_null() || module.is_null() {
        return skipped;
    }
    // SAFETY: I2: `module` is our live FilterSlot; shared reference only.
    let slot = unsafe { &*module.cast::<FilterSlot>() };
    // SAFETY: I3: the configuration outlives its filters.
    let config = unsafe { &*slot.config };
    let mut handle = EnvoyHttpFilter::new(envoy);
    let Ok(mut state) = slot.state.try_borrow_mut() else {
        // re-entered while the module's filter is running (the response hooks of its own
        // local reply): the module is not called again
        if log_enabled(LogLevel::Debug) {
            log(
                LogLevel::Debug,
                &format!(
                    "filter {:?}: {hook} while the filter is running; skipped",
                    config.name
                ),
            );
        }
        return skipped;
    };
    let FilterState::Running(filter) = &mut *state else {
        return skipped;
    };
    let message = match guarded(|| body(filter.as_mut(), &mut handle)) {
        Ok(r) => return r,
        Err(message) => message,
    };
    let old = std::mem::replace(&mut *state, FilterState::Failed);
    drop(state);
    let _ = drop_guarded(old);
    match on_panic {
        OnPanic::Reply if !handle.replied => {
            config.report_panic(Some(&handle), hook, &message, "the request gets a 500");
            reply_internal_error(&mut handle, &config.name);
        }
        _ => config.report_panic(
            Some(&handle),
            hook,
            &message,
            "the filter is skipped for this stream",
        ),
    }
    panicked
}

fn reply_internal_error(handle: &mut EnvoyHttpFilter, filter_name: &str) {
    handle.send_response_with_details(
        500,
        &[(b"content-type", b"application/json")],
        &internal_error_body(filter_name),
        "dynamic_module_panic",
    );
}

/// The bodies of the hooks [`crate::declare_http_filter!`] exports. Not for direct use.
#[doc(hidden)]
pub mod hooks {
    use super::*;

    pub fn program_init() -> *const c_char {
        install_panic_hook();
        abi::ABI_VERSION.as_ptr().cast::<c_char>()
    }

    /// # Safety
    /// Envoy's arguments to `envoy_dynamic_module_on_http_filter_config_new` (I1).
    pub unsafe fn config_new(
        factory: FactoryFn,
        envoy: abi::HttpFilterConfigEnvoyPtr,
        name: EnvoyBuffer,
        config: EnvoyBuffer,
    ) -> abi::HttpFilterConfigModulePtr {
        if envoy.is_null() {
            return std::ptr::null();
        }
        // SAFETY: Envoy's buffers are valid for this hook (I4).
        let (name, config) = unsafe { (envoy_bytes(name), envoy_bytes(config)) };
        let Ok(name) = std::str::from_utf8(name) else {
            log(
                LogLevel::Error,
                "edgeguard dynamic module: filter_name is not UTF-8; configuration refused",
            );
            return std::ptr::null();
        };
        let env = ConfigEnv {
            config: EnvoyFilterConfig::new(envoy),
        };
        let panics = env.define_counter(PANIC_COUNTER).ok();
        match guarded(|| factory(name, config, &env)) {
            Ok(Ok(config)) => {
                let slot = Box::new(ConfigSlot {
                    envoy,
                    name: name.to_string(),
                    config,
                    panics,
                });
                Box::into_raw(slot).cast_const().cast::<c_void>()
            }
            Ok(Err(reason)) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "edgeguard dynamic module, filter {name:?}: configuration refused: {reason}"
                    ),
                );
                std::ptr::null()
            }
            Err(message) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "edgeguard dynamic module, filter {name:?}: panic while creating the \
                         configuration: {message}; configuration refused"
                    ),
                );
                std::ptr::null()
            }
        }
    }

    /// # Safety
    /// Envoy's argument to `envoy_dynamic_module_on_http_filter_config_destroy` (I2).
    pub unsafe fn config_destroy(module: abi::HttpFilterConfigModulePtr) {
        if module.is_null() {
            return;
        }
        // SAFETY: I2: our ConfigSlot from Box::into_raw, destroyed exactly once, here.
        let slot = unsafe { Box::from_raw(module.cast::<ConfigSlot>().cast_mut()) };
        let name = slot.name.clone();
        if let Err(message) = drop_guarded(slot) {
            log(
                LogLevel::Error,
                &format!(
                    "edgeguard dynamic module, filter {name:?}: panic while destroying the \
                     configuration: {message}"
                ),
            );
        }
    }

    /// # Safety
    /// Envoy's arguments to `envoy_dynamic_module_on_http_filter_new` (I1, I2).
    pub unsafe fn filter_new(
        config: abi::HttpFilterConfigModulePtr,
        envoy: abi::HttpFilterEnvoyPtr,
    ) -> abi::HttpFilterModulePtr {
        if config.is_null() {
            return std::ptr::null();
        }
        // SAFETY: I2: our live ConfigSlot; shared reference only.
        let slot = unsafe { &*config.cast::<ConfigSlot>() };
        let (state, reply) = match guarded(|| slot.config.new_filter()) {
            Ok(filter) => (FilterState::Running(filter), false),
            Err(message) => {
                let stream = (!envoy.is_null()).then(|| EnvoyHttpFilter::new(envoy));
                slot.report_panic(
                    stream.as_ref(),
                    "new_filter",
                    &message,
                    "the request gets a 500",
                );
                (FilterState::Failed, true)
            }
        };
        let filter = Box::new(FilterSlot {
            config: std::ptr::from_ref(slot),
            state: RefCell::new(state),
            reply_on_request: Cell::new(reply),
        });
        Box::into_raw(filter).cast_const().cast::<c_void>()
    }

    /// # Safety
    /// Envoy's argument to `envoy_dynamic_module_on_http_filter_destroy` (I2).
    pub unsafe fn filter_destroy(module: abi::HttpFilterModulePtr) {
        if module.is_null() {
            return;
        }
        // SAFETY: I2: our FilterSlot from Box::into_raw, destroyed exactly once, here (Envoy
        // destroys filters through deferred deletion, never inside one of our hooks).
        let slot = unsafe { Box::from_raw(module.cast::<FilterSlot>().cast_mut()) };
        let config = slot.config;
        if let Err(message) = drop_guarded(slot) {
            // SAFETY: I3: the configuration outlives its filters.
            let config = unsafe { &*config };
            config.report_panic(None, "filter drop", &message, "the filter is gone");
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn request_headers(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
        end_of_stream: bool,
    ) -> abi::HeadersStatus {
        if !envoy.is_null() && !module.is_null() {
            // SAFETY: I2: our live FilterSlot; shared reference only.
            let slot = unsafe { &*module.cast::<FilterSlot>() };
            if slot.reply_on_request.replace(false) {
                // SAFETY: I3.
                let config = unsafe { &*slot.config };
                reply_internal_error(&mut EnvoyHttpFilter::new(envoy), &config.name);
                return abi::HEADERS_STATUS_STOP_ITERATION;
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_request_headers",
                abi::HEADERS_STATUS_CONTINUE,
                abi::HEADERS_STATUS_STOP_ITERATION,
                OnPanic::Reply,
                |filter, f| filter.on_request_headers(f, end_of_stream).to_abi(),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn request_body(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
        end_of_stream: bool,
    ) -> abi::BodyStatus {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_request_body",
                abi::BODY_STATUS_CONTINUE,
                abi::BODY_STATUS_STOP_ITERATION_NO_BUFFER,
                OnPanic::Reply,
                |filter, f| filter.on_request_body(f, end_of_stream).to_abi(),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn request_trailers(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
    ) -> abi::TrailersStatus {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_request_trailers",
                abi::TRAILERS_STATUS_CONTINUE,
                abi::TRAILERS_STATUS_STOP_ITERATION,
                OnPanic::Reply,
                |filter, f| filter.on_request_trailers(f).to_abi(),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn response_headers(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
        end_of_stream: bool,
    ) -> abi::HeadersStatus {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_response_headers",
                abi::HEADERS_STATUS_CONTINUE,
                abi::HEADERS_STATUS_STOP_ITERATION,
                OnPanic::Reply,
                |filter, f| filter.on_response_headers(f, end_of_stream).to_abi(),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn response_body(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
        end_of_stream: bool,
    ) -> abi::BodyStatus {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_response_body",
                abi::BODY_STATUS_CONTINUE,
                abi::BODY_STATUS_STOP_ITERATION_NO_BUFFER,
                OnPanic::Reply,
                |filter, f| filter.on_response_body(f, end_of_stream).to_abi(),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn response_trailers(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
    ) -> abi::TrailersStatus {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_response_trailers",
                abi::TRAILERS_STATUS_CONTINUE,
                abi::TRAILERS_STATUS_STOP_ITERATION,
                OnPanic::Reply,
                |filter, f| filter.on_response_trailers(f).to_abi(),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn stream_complete(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_stream_complete",
                (),
                (),
                OnPanic::LogOnly,
                |filter, f| filter.on_stream_complete(f),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to `envoy_dynamic_module_on_http_filter_http_callout_done` (I1, I2, I4).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn callout_done(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
        callout_id: u64,
        result: abi::CalloutResult,
        headers: *const EnvoyHttpHeader,
        headers_size: usize,
        body_chunks: *const EnvoyBuffer,
        body_chunks_size: usize,
    ) {
        // SAFETY: I4: the response is valid for this hook.
        let response = unsafe {
            CalloutResponse {
                headers: envoy_headers(headers, headers_size),
                body_chunks: envoy_chunks(body_chunks, body_chunks_size),
            }
        };
        let result = CalloutResult::from_abi(result);
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_callout_done",
                (),
                (),
                OnPanic::Reply,
                |filter, f| filter.on_callout_done(f, callout_id, result, &response),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to a stream hook (I1, I2).
    pub unsafe fn scheduled(
        envoy: abi::HttpFilterEnvoyPtr,
        module: abi::HttpFilterModulePtr,
        event_id: u64,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            with_filter(
                envoy,
                module,
                "on_scheduled",
                (),
                (),
                OnPanic::Reply,
                |filter, f| filter.on_scheduled(f, event_id),
            )
        }
    }

    /// # Safety
    /// Envoy's arguments to `envoy_dynamic_module_on_http_filter_config_scheduled` (I1, I2).
    pub unsafe fn config_scheduled(
        envoy: abi::HttpFilterConfigEnvoyPtr,
        module: abi::HttpFilterConfigModulePtr,
        event_id: u64,
    ) {
        if envoy.is_null() || module.is_null() {
            return;
        }
        // SAFETY: I2: our live ConfigSlot; shared reference only.
        let slot = unsafe { &*module.cast::<ConfigSlot>() };
        let mut handle = EnvoyFilterConfig::new(envoy);
        if let Err(message) = guarded(|| slot.config.on_scheduled(&mut handle, event_id)) {
            slot.report_panic(
                None,
                "on_scheduled (configuration)",
                &message,
                "event dropped",
            );
        }
    }

    /// # Safety
    /// Envoy's arguments to `envoy_dynamic_module_on_http_filter_config_http_callout_done`
    /// (I1, I2, I4).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn config_callout_done(
        envoy: abi::HttpFilterConfigEnvoyPtr,
        module: abi::HttpFilterConfigModulePtr,
        callout_id: u64,
        result: abi::CalloutResult,
        headers: *const EnvoyHttpHeader,
        headers_size: usize,
        body_chunks: *const EnvoyBuffer,
        body_chunks_size: usize,
    ) {
        if envoy.is_null() || module.is_null() {
            return;
        }
        // SAFETY: I2: our live ConfigSlot; shared reference only.
        let slot = unsafe { &*module.cast::<ConfigSlot>() };
        // SAFETY: I4: the response is valid for this hook.
        let response = unsafe {
            CalloutResponse {
                headers: envoy_headers(headers, headers_size),
                body_chunks: envoy_chunks(body_chunks, body_chunks_size),
            }
        };
        let result = CalloutResult::from_abi(result);
        let mut handle = EnvoyFilterConfig::new(envoy);
        if let Err(message) = guarded(|| {
            slot.config
                .on_callout_done(&mut handle, callout_id, result, &response)
        }) {
            slot.report_panic(
                None,
                "on_callout_done (configuration)",
                &message,
                "response dropped",
            );
        }
    }
}

/// Exports every hook Envoy 1.40 resolves for an HTTP filter (and the two configuration-level
/// background hooks), each behind a panic barrier, delegating to `$factory` (a [`FactoryFn`]).
/// Use it once per cdylib:
///
/// ```text
/// edgeguard_dynamic_module::declare_http_filter!(new_config);
/// ```
///
/// Streamed callouts and the downstream watermark hooks are exported as no-ops (Envoy requires
/// the symbols; this SDK starts no streams). The list is [`crate::abi::EXPORTED_HOOKS`].
#[macro_export]
macro_rules! declare_http_filter {
    ($factory:expr) => {
        const _: () = {
            use $crate::abi as __abi;
            use $crate::hooks as __hooks;

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const ::std::ffi::c_char
            {
                __hooks::program_init()
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
                config_envoy: __abi::HttpFilterConfigEnvoyPtr,
                name: __abi::EnvoyBuffer,
                config: __abi::EnvoyBuffer,
            ) -> __abi::HttpFilterConfigModulePtr {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::config_new($factory, config_envoy, name, config) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
                config_module: __abi::HttpFilterConfigModulePtr,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::config_destroy(config_module) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
                config_module: __abi::HttpFilterConfigModulePtr,
                filter_envoy: __abi::HttpFilterEnvoyPtr,
            ) -> __abi::HttpFilterModulePtr {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::filter_new(config_module, filter_envoy) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
                end_of_stream: bool,
            ) -> __abi::HeadersStatus {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::request_headers(filter_envoy, filter_module, end_of_stream) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
                end_of_stream: bool,
            ) -> __abi::BodyStatus {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::request_body(filter_envoy, filter_module, end_of_stream) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
            ) -> __abi::TrailersStatus {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::request_trailers(filter_envoy, filter_module) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
                end_of_stream: bool,
            ) -> __abi::HeadersStatus {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::response_headers(filter_envoy, filter_module, end_of_stream) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
                end_of_stream: bool,
            ) -> __abi::BodyStatus {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::response_body(filter_envoy, filter_module, end_of_stream) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
            ) -> __abi::TrailersStatus {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::response_trailers(filter_envoy, filter_module) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::stream_complete(filter_envoy, filter_module) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
                filter_module: __abi::HttpFilterModulePtr,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::filter_destroy(filter_module) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
                callout_id: u64,
                result: __abi::CalloutResult,
                headers: *const __abi::EnvoyHttpHeader,
                headers_size: usize,
                body_chunks: *const __abi::EnvoyBuffer,
                body_chunks_size: usize,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe {
                    __hooks::callout_done(
                        filter_envoy,
                        filter_module,
                        callout_id,
                        result,
                        headers,
                        headers_size,
                        body_chunks,
                        body_chunks_size,
                    )
                }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
                _stream_id: u64,
                _headers: *const __abi::EnvoyHttpHeader,
                _headers_size: usize,
                _end_stream: bool,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
                _stream_id: u64,
                _data: *const __abi::EnvoyBuffer,
                _data_count: usize,
                _end_stream: bool,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
                _stream_id: u64,
                _trailers: *const __abi::EnvoyHttpHeader,
                _trailers_size: usize,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
                _stream_id: u64,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
                _stream_id: u64,
                _reason: __abi::HttpStreamResetReason,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
                filter_envoy: __abi::HttpFilterEnvoyPtr,
                filter_module: __abi::HttpFilterModulePtr,
                event_id: u64,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::scheduled(filter_envoy, filter_module, event_id) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
                _filter_envoy: __abi::HttpFilterEnvoyPtr,
                _filter_module: __abi::HttpFilterModulePtr,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
                config_envoy: __abi::HttpFilterConfigEnvoyPtr,
                config_module: __abi::HttpFilterConfigModulePtr,
                event_id: u64,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe { __hooks::config_scheduled(config_envoy, config_module, event_id) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
                config_envoy: __abi::HttpFilterConfigEnvoyPtr,
                config_module: __abi::HttpFilterConfigModulePtr,
                callout_id: u64,
                result: __abi::CalloutResult,
                headers: *const __abi::EnvoyHttpHeader,
                headers_size: usize,
                body_chunks: *const __abi::EnvoyBuffer,
                body_chunks_size: usize,
            ) {
                // SAFETY: Envoy's arguments for this hook, forwarded unchanged.
                unsafe {
                    __hooks::config_callout_done(
                        config_envoy,
                        config_module,
                        callout_id,
                        result,
                        headers,
                        headers_size,
                        body_chunks,
                        body_chunks_size,
                    )
                }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_buffers_point_at_the_bytes() {
        let b = b"caf\xe9";
        let m = module_buffer(b);
        assert_eq!(m.ptr.cast::<u8>(), b.as_ptr());
        assert_eq!(m.length, 4);
        let hs = module_headers(&[(b"a", b"1"), (b"bb", b"")]);
        assert_eq!(hs.len(), 2);
        assert_eq!((hs[1].key_length, hs[1].value_length), (2, 0));
    }

    #[test]
    fn envoy_views_round_trip() {
        let key = b"x-k";
        let value = b"v\xff";
        let raw = [EnvoyHttpHeader {
            key_ptr: key.as_ptr().cast(),
            key_length: key.len(),
            value_ptr: value.as_ptr().cast(),
            value_length: value.len(),
        }];
        // SAFETY: `raw` and the bytes it points to outlive the views.
        let views = unsafe { envoy_headers(raw.as_ptr(), raw.len()) };
        assert_eq!(views, vec![(key.as_slice(), value.as_slice())]);
        // SAFETY: a null array with length 0 is allowed.
        assert!(unsafe { envoy_headers(std::ptr::null(), 3) }.is_empty());
        let chunks = [
            EnvoyBuffer {
                ptr: key.as_ptr().cast(),
                length: 3,
            },
            EnvoyBuffer::NULL,
        ];
        // SAFETY: `chunks` and its bytes outlive the views.
        let views = unsafe { envoy_chunks(chunks.as_ptr(), chunks.len()) };
        assert_eq!(views, vec![key.as_slice(), b"".as_slice()]);
    }

    #[test]
    fn timeouts_saturate() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn the_barrier_turns_a_panic_into_its_message() {
        install_panic_hook();
        assert_eq!(guarded(|| 7), Ok(7));
        let err = guarded(|| -> u8 { panic!("boom") }).unwrap_err();
        assert!(err.starts_with("boom (at "), "{err}");
        assert!(err.contains("bindings.rs"), "{err}");
        // nested barriers: the inner one reports the inner panic, the outer sees success
        let outer = guarded(|| guarded(|| -> u8 { panic!("inner") }).unwrap_err());
        assert!(outer.unwrap().starts_with("inner"));
        assert_eq!(HOOK_DEPTH.with(Cell::get), 0);
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("drop bomb");
            }
        }
        assert!(drop_guarded(Bomb).unwrap_err().starts_with("drop bomb"));
    }
}
