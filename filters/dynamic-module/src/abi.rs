//! Raw C ABI of Envoy's dynamic modules (HTTP filter part), ABI version `v0.2.0` (Envoy 1.40).
//!
//! Written by us from the ABI documentation and checked against the symbols the Envoy binary
//! exports (`tests/tests/dynamic_module_abi.rs`). Only the subset edgeguard uses is declared.
//! Nothing here is called directly by filter code: [`crate::bindings`] is the one module that
//! calls these functions (and the only one with `unsafe`).
//!
//! Conventions of the ABI, as documented:
//! - Hooks (`envoy_dynamic_module_on_*`) are exported by the module and called by Envoy;
//!   callbacks (`envoy_dynamic_module_callback_*`) are exported by Envoy and called by the module.
//! - A "module buffer" is memory owned by the module, read by Envoy during the call only; an
//!   "Envoy buffer" is owned by Envoy and valid until the end of the current hook (or until a
//!   setter on the same header map is called).
//! - C enums are passed as 32-bit integers. Values Envoy passes *to* us are declared as `u32`
//!   and decoded with a `match` (an unknown value is never transmuted into a Rust enum).

use std::ffi::{c_char, c_void};

/// The ABI version this crate is written against, NUL-terminated, returned from
/// `envoy_dynamic_module_on_program_init`.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

// ------------------------------------------------------------------------------------ types

/// Envoy's `DynamicModuleHttpFilterConfig` (owned by Envoy).
pub type HttpFilterConfigEnvoyPtr = *mut c_void;
/// Our in-module filter configuration (owned by the module, released in `config_destroy`).
pub type HttpFilterConfigModulePtr = *const c_void;
/// Envoy's `DynamicModuleHttpFilter` for one stream (owned by Envoy, valid until `destroy`).
pub type HttpFilterEnvoyPtr = *mut c_void;
/// Our in-module filter for one stream (owned by the module, released in `filter_destroy`).
pub type HttpFilterModulePtr = *const c_void;
/// A per-stream scheduler, allocated by Envoy, deleted by the module.
pub type HttpFilterSchedulerPtr = *mut c_void;
/// A per-configuration (main thread) scheduler, allocated by Envoy, deleted by the module.
pub type HttpFilterConfigSchedulerPtr = *mut c_void;

/// Bytes owned by the module (Envoy reads them during the call).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// Bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// A header (name, value) owned by the module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// A header (name, value) owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

impl EnvoyBuffer {
    /// A null buffer, written over by Envoy.
    pub const NULL: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

impl EnvoyHttpHeader {
    /// A null header, written over by Envoy.
    pub const NULL: EnvoyHttpHeader = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// `envoy_dynamic_module_type_http_header_type`: which header map.
pub type HeaderType = u32;
pub const HEADER_TYPE_REQUEST_HEADER: HeaderType = 0;
pub const HEADER_TYPE_REQUEST_TRAILER: HeaderType = 1;
pub const HEADER_TYPE_RESPONSE_HEADER: HeaderType = 2;
pub const HEADER_TYPE_RESPONSE_TRAILER: HeaderType = 3;

/// `envoy_dynamic_module_type_http_body_type`: which view of a body. The *received* body is
/// the chunk of the current body hook (only there); the *buffered* body is what this filter's
/// earlier body hooks kept with `StopIterationAndBuffer` (Envoy's decoding/encoding buffer).
pub type BodyType = u32;
pub const BODY_TYPE_RECEIVED_REQUEST: BodyType = 0;
pub const BODY_TYPE_BUFFERED_REQUEST: BodyType = 1;
pub const BODY_TYPE_RECEIVED_RESPONSE: BodyType = 2;
pub const BODY_TYPE_BUFFERED_RESPONSE: BodyType = 3;

/// `envoy_dynamic_module_type_log_level` (Envoy's spdlog levels).
pub type LogLevel = u32;
pub const LOG_LEVEL_TRACE: LogLevel = 0;
pub const LOG_LEVEL_DEBUG: LogLevel = 1;
pub const LOG_LEVEL_INFO: LogLevel = 2;
pub const LOG_LEVEL_WARN: LogLevel = 3;
pub const LOG_LEVEL_ERROR: LogLevel = 4;
pub const LOG_LEVEL_CRITICAL: LogLevel = 5;

/// `envoy_dynamic_module_type_http_callout_init_result`: whether a callout could be started.
pub type CalloutInitResult = u32;
pub const CALLOUT_INIT_SUCCESS: CalloutInitResult = 0;
pub const CALLOUT_INIT_MISSING_REQUIRED_HEADERS: CalloutInitResult = 1;
pub const CALLOUT_INIT_CLUSTER_NOT_FOUND: CalloutInitResult = 2;
pub const CALLOUT_INIT_DUPLICATE_CALLOUT_ID: CalloutInitResult = 3;
pub const CALLOUT_INIT_CANNOT_CREATE_REQUEST: CalloutInitResult = 4;

/// `envoy_dynamic_module_type_http_callout_result`: how a callout ended.
pub type CalloutResult = u32;
pub const CALLOUT_RESULT_SUCCESS: CalloutResult = 0;
pub const CALLOUT_RESULT_RESET: CalloutResult = 1;
pub const CALLOUT_RESULT_EXCEED_RESPONSE_BUFFER_LIMIT: CalloutResult = 2;

/// `envoy_dynamic_module_type_http_stream_reset_reason` (streamed callouts; unused beyond the
/// hook signature).
pub type HttpStreamResetReason = u32;

/// `envoy_dynamic_module_type_metrics_result`.
pub type MetricsResult = u32;
pub const METRICS_SUCCESS: MetricsResult = 0;
pub const METRICS_NOT_FOUND: MetricsResult = 1;
pub const METRICS_INVALID_LABELS: MetricsResult = 2;
pub const METRICS_FROZEN: MetricsResult = 3;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`.
pub type HeadersStatus = u32;
pub const HEADERS_STATUS_CONTINUE: HeadersStatus = 0;
pub const HEADERS_STATUS_STOP_ITERATION: HeadersStatus = 1;
pub const HEADERS_STATUS_CONTINUE_AND_DONT_END_STREAM: HeadersStatus = 2;
pub const HEADERS_STATUS_STOP_ALL_ITERATION_AND_BUFFER: HeadersStatus = 3;
pub const HEADERS_STATUS_STOP_ALL_ITERATION_AND_WATERMARK: HeadersStatus = 4;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_body_status`.
pub type BodyStatus = u32;
pub const BODY_STATUS_CONTINUE: BodyStatus = 0;
pub const BODY_STATUS_STOP_ITERATION_AND_BUFFER: BodyStatus = 1;
pub const BODY_STATUS_STOP_ITERATION_AND_WATERMARK: BodyStatus = 2;
pub const BODY_STATUS_STOP_ITERATION_NO_BUFFER: BodyStatus = 3;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_trailers_status`.
pub type TrailersStatus = u32;
pub const TRAILERS_STATUS_CONTINUE: TrailersStatus = 0;
pub const TRAILERS_STATUS_STOP_ITERATION: TrailersStatus = 1;

/// `envoy_dynamic_module_type_attribute_id` (the CEL attribute names in the comments). Only the
/// ones we read are listed; the numbering is the ABI's.
pub type AttributeId = u32;
/// `request.path`
pub const ATTRIBUTE_REQUEST_PATH: AttributeId = 0;
/// `request.method`
pub const ATTRIBUTE_REQUEST_METHOD: AttributeId = 4;
/// `request.protocol`
pub const ATTRIBUTE_REQUEST_PROTOCOL: AttributeId = 10;
/// `source.address`
pub const ATTRIBUTE_SOURCE_ADDRESS: AttributeId = 24;
/// `source.port`
pub const ATTRIBUTE_SOURCE_PORT: AttributeId = 25;
/// `connection.id`
pub const ATTRIBUTE_CONNECTION_ID: AttributeId = 28;
/// `connection.mtls`
pub const ATTRIBUTE_CONNECTION_MTLS: AttributeId = 29;
/// `connection.requested_server_name`
pub const ATTRIBUTE_CONNECTION_REQUESTED_SERVER_NAME: AttributeId = 30;
/// `connection.subject_peer_certificate`
pub const ATTRIBUTE_CONNECTION_SUBJECT_PEER_CERTIFICATE: AttributeId = 33;
/// `connection.uri_san_peer_certificate`
pub const ATTRIBUTE_CONNECTION_URI_SAN_PEER_CERTIFICATE: AttributeId = 37;
/// `connection.sha256_peer_certificate_digest`
pub const ATTRIBUTE_CONNECTION_SHA256_PEER_CERTIFICATE_DIGEST: AttributeId = 38;

// -------------------------------------------------------------------------------- callbacks

extern "C" {
    // ---- process-wide

    /// Logs under Envoy's `dynamic_modules` logger, with the module's source location.
    pub fn envoy_dynamic_module_callback_log_v2(
        level: LogLevel,
        message: ModuleBuffer,
        source_file: ModuleBuffer,
        source_line: u32,
    );

    /// Whether `level` is enabled on Envoy's `dynamic_modules` logger.
    pub fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;

    /// Envoy's `--concurrency` (worker count). Main thread only.
    pub fn envoy_dynamic_module_callback_get_concurrency() -> u32;

    // ---- request/response headers and trailers of one stream

    /// Value number `index` of header `key` (`result` is set to a null buffer when absent); the
    /// number of values is written to `optional_size` when it is not null.
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    /// Number of headers (all names, all values) in the map.
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
    ) -> usize;

    /// Writes every header of the map into `result_headers`, which must hold
    /// `..._get_headers_size` entries.
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;

    /// Replaces all values of `key` with `value`; a null `value.ptr` removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Appends one more value of `key`.
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    // ---- request/response bodies of one stream

    /// Bytes in the body view `body_type` (0 when it is unavailable or empty).
    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        body_type: BodyType,
    ) -> usize;

    /// Number of chunks (slices) of the body view `body_type` (0 when unavailable or empty).
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        body_type: BodyType,
    ) -> usize;

    /// Writes the chunks of `body_type` into `result_buffer_vector`, which must hold
    /// `..._get_body_chunks_size` entries; `false` when the view is unavailable. The bytes stay
    /// valid until the end of the hook unless the body is changed.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        body_type: BodyType,
        result_buffer_vector: *mut EnvoyBuffer,
    ) -> bool;

    /// Whether the received request body *is* the buffered one (a filter before this one
    /// buffered the body and resumed: the chunk handed over is the whole buffer).
    pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    ) -> bool;

    // ---- local reply, flow control

    /// Sends a local reply (`sendLocalReply`) with these headers and body; `details` is the
    /// response code details string (may be empty).
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        status_code: u32,
        headers_vector: *mut ModuleHttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    /// Resumes a request this filter stopped.
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    );

    /// Resumes a response this filter stopped.
    pub fn envoy_dynamic_module_callback_http_filter_continue_encoding(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    );

    // ---- stream information

    /// The index of the worker thread this stream runs on.
    pub fn envoy_dynamic_module_callback_http_filter_get_worker_index(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    ) -> u32;

    /// A string attribute (`false` when unavailable or not a string).
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        attribute_id: AttributeId,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// An integer attribute (`false` when unavailable or not an integer).
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        attribute_id: AttributeId,
        result: *mut u64,
    ) -> bool;

    /// A boolean attribute (`false` when unavailable or not a boolean).
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        attribute_id: AttributeId,
        result: *mut bool,
    ) -> bool;

    // ---- HTTP callouts

    /// Starts a one-shot HTTP request to `cluster_name` from this stream (worker thread); the
    /// answer arrives in `envoy_dynamic_module_on_http_filter_http_callout_done`. `headers` must
    /// hold `:method`, `:path` and `host`.
    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> CalloutInitResult;

    /// The same from the filter configuration (main thread, not tied to a request); the answer
    /// arrives in `envoy_dynamic_module_on_http_filter_config_http_callout_done`.
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> CalloutInitResult;

    // ---- schedulers

    /// A scheduler that posts events to this stream's worker thread from any thread.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    ) -> HttpFilterSchedulerPtr;

    /// Posts `event_id` to `envoy_dynamic_module_on_http_filter_scheduled` on the stream's worker
    /// (a no-op once the stream is gone). Any thread.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler_module_ptr: HttpFilterSchedulerPtr,
        event_id: u64,
    );

    /// Deletes a stream scheduler.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
        scheduler_module_ptr: HttpFilterSchedulerPtr,
    );

    /// A scheduler that posts events to the main thread for this filter configuration.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
    ) -> HttpFilterConfigSchedulerPtr;

    /// Posts `event_id` to `envoy_dynamic_module_on_http_filter_config_scheduled` on the main
    /// thread (a no-op once the configuration is gone). Any thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler_module_ptr: HttpFilterConfigSchedulerPtr,
        event_id: u64,
    );

    /// Deletes a configuration scheduler.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler_module_ptr: HttpFilterConfigSchedulerPtr,
    );

    // ---- metrics: defined while the configuration is created, recorded any time after

    /// Defines a counter `<metrics_namespace>.<name>`; only during `config_new`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> MetricsResult;

    /// Defines a gauge; only during `config_new`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> MetricsResult;

    /// Defines a histogram; only during `config_new`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        histogram_id_ptr: *mut usize,
    ) -> MetricsResult;

    /// Adds to a counter from a stream.
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Sets a gauge from a stream.
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Raises a gauge from a stream.
    pub fn envoy_dynamic_module_callback_http_filter_increment_gauge(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Lowers a gauge from a stream.
    pub fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Records a histogram value from a stream.
    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Adds to a counter from the configuration (background work, no stream).
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Sets a gauge from the configuration.
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Raises a gauge from the configuration.
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Lowers a gauge from the configuration.
    pub fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Records a histogram value from the configuration.
    pub fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;
}

/// Every callback declared in the `extern "C"` block above, in order. A unit test checks this
/// list against the block (so it cannot drift), and the real-Envoy ABI test checks each name
/// against `nm -D` of the Envoy binary.
pub const IMPORTED: &[&str] = &[
    "envoy_dynamic_module_callback_log_v2",
    "envoy_dynamic_module_callback_log_enabled",
    "envoy_dynamic_module_callback_get_concurrency",
    "envoy_dynamic_module_callback_http_get_header",
    "envoy_dynamic_module_callback_http_get_headers_size",
    "envoy_dynamic_module_callback_http_get_headers",
    "envoy_dynamic_module_callback_http_set_header",
    "envoy_dynamic_module_callback_http_add_header",
    "envoy_dynamic_module_callback_http_get_body_size",
    "envoy_dynamic_module_callback_http_get_body_chunks_size",
    "envoy_dynamic_module_callback_http_get_body_chunks",
    "envoy_dynamic_module_callback_http_received_buffered_request_body",
    "envoy_dynamic_module_callback_http_send_response",
    "envoy_dynamic_module_callback_http_filter_continue_decoding",
    "envoy_dynamic_module_callback_http_filter_continue_encoding",
    "envoy_dynamic_module_callback_http_filter_get_worker_index",
    "envoy_dynamic_module_callback_http_filter_get_attribute_string",
    "envoy_dynamic_module_callback_http_filter_get_attribute_int",
    "envoy_dynamic_module_callback_http_filter_get_attribute_bool",
    "envoy_dynamic_module_callback_http_filter_http_callout",
    "envoy_dynamic_module_callback_http_filter_config_http_callout",
    "envoy_dynamic_module_callback_http_filter_scheduler_new",
    "envoy_dynamic_module_callback_http_filter_scheduler_commit",
    "envoy_dynamic_module_callback_http_filter_scheduler_delete",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_new",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_commit",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_delete",
    "envoy_dynamic_module_callback_http_filter_config_define_counter",
    "envoy_dynamic_module_callback_http_filter_config_define_gauge",
    "envoy_dynamic_module_callback_http_filter_config_define_histogram",
    "envoy_dynamic_module_callback_http_filter_increment_counter",
    "envoy_dynamic_module_callback_http_filter_set_gauge",
    "envoy_dynamic_module_callback_http_filter_increment_gauge",
    "envoy_dynamic_module_callback_http_filter_decrement_gauge",
    "envoy_dynamic_module_callback_http_filter_record_histogram_value",
    "envoy_dynamic_module_callback_http_filter_config_increment_counter",
    "envoy_dynamic_module_callback_http_filter_config_set_gauge",
    "envoy_dynamic_module_callback_http_filter_config_increment_gauge",
    "envoy_dynamic_module_callback_http_filter_config_decrement_gauge",
    "envoy_dynamic_module_callback_http_filter_config_record_histogram_value",
];

/// Every hook [`crate::declare_http_filter!`] exports. Envoy 1.40 resolves the first 21 when it
/// creates the filter configuration (with `RTLD_NOW`; a missing one fails the configuration with
/// `Failed to resolve symbol`); the last two are optional there and needed for background work
/// (main-thread scheduler events and configuration-level callouts). A unit test checks the list
/// against the macro, the real-Envoy test against `nm -D` of the built module.
pub const EXPORTED_HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
    "envoy_dynamic_module_on_http_filter_config_scheduled",
    "envoy_dynamic_module_on_http_filter_config_http_callout_done",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The names declared after `prefix` in `source` (`pub fn <name>(`), in order.
    fn declared(source: &str, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at + prefix.len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if tail[end..].starts_with('(') {
                out.push(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn imported_lists_exactly_the_declared_callbacks() {
        let source = include_str!("abi.rs");
        let block_start = source.find("extern \"C\" {").expect("extern block");
        let block_end = source.find("pub const IMPORTED").expect("IMPORTED");
        let decls = declared(&source[block_start..block_end], "pub fn ");
        assert_eq!(
            decls, IMPORTED,
            "IMPORTED must list the extern block, in order"
        );
        assert!(IMPORTED
            .iter()
            .all(|n| n.starts_with("envoy_dynamic_module_callback_")));
    }

    #[test]
    fn exported_hooks_are_exactly_what_the_macro_defines() {
        let source = include_str!("bindings.rs");
        let start = source
            .find("macro_rules! declare_http_filter")
            .expect("macro");
        let defined = declared(&source[start..], "extern \"C\" fn ");
        assert_eq!(
            defined, EXPORTED_HOOKS,
            "declare_http_filter! must export EXPORTED_HOOKS, in order"
        );
    }

    #[test]
    fn abi_version_is_nul_terminated_v0_2_0() {
        assert_eq!(ABI_VERSION, b"v0.2.0\0");
    }

    #[test]
    fn c_layouts() {
        let w = std::mem::size_of::<usize>();
        assert_eq!(std::mem::size_of::<ModuleBuffer>(), 2 * w);
        assert_eq!(std::mem::size_of::<EnvoyBuffer>(), 2 * w);
        assert_eq!(std::mem::size_of::<ModuleHttpHeader>(), 4 * w);
        assert_eq!(std::mem::size_of::<EnvoyHttpHeader>(), 4 * w);
    }
}
