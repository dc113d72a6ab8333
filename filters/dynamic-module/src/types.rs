//! The pure part of the SDK: statuses, ids, errors and the callout response view. No host
//! calls, tested natively.

use crate::abi;

/// What Envoy does after a headers hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Go on to the next filter.
    Continue,
    /// Stop here until [`crate::EnvoyHttpFilter::continue_decoding`] (request) or
    /// [`crate::EnvoyHttpFilter::continue_encoding`] (response); body data is buffered meanwhile.
    StopIteration,
    /// Stop and buffer everything (headers, body, trailers) until resumed.
    StopAllIterationAndBuffer,
    /// Stop and buffer with flow control (watermarks) until resumed.
    StopAllIterationAndWatermark,
}

impl HeadersStatus {
    pub(crate) fn to_abi(self) -> abi::HeadersStatus {
        match self {
            HeadersStatus::Continue => abi::HEADERS_STATUS_CONTINUE,
            HeadersStatus::StopIteration => abi::HEADERS_STATUS_STOP_ITERATION,
            HeadersStatus::StopAllIterationAndBuffer => {
                abi::HEADERS_STATUS_STOP_ALL_ITERATION_AND_BUFFER
            }
            HeadersStatus::StopAllIterationAndWatermark => {
                abi::HEADERS_STATUS_STOP_ALL_ITERATION_AND_WATERMARK
            }
        }
    }
}

/// What Envoy does after a body hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStatus {
    Continue,
    StopIterationAndBuffer,
    StopIterationAndWatermark,
    StopIterationNoBuffer,
}

impl BodyStatus {
    pub(crate) fn to_abi(self) -> abi::BodyStatus {
        match self {
            BodyStatus::Continue => abi::BODY_STATUS_CONTINUE,
            BodyStatus::StopIterationAndBuffer => abi::BODY_STATUS_STOP_ITERATION_AND_BUFFER,
            BodyStatus::StopIterationAndWatermark => abi::BODY_STATUS_STOP_ITERATION_AND_WATERMARK,
            BodyStatus::StopIterationNoBuffer => abi::BODY_STATUS_STOP_ITERATION_NO_BUFFER,
        }
    }
}

/// What Envoy does after a trailers hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailersStatus {
    Continue,
    StopIteration,
}

impl TrailersStatus {
    pub(crate) fn to_abi(self) -> abi::TrailersStatus {
        match self {
            TrailersStatus::Continue => abi::TRAILERS_STATUS_CONTINUE,
            TrailersStatus::StopIteration => abi::TRAILERS_STATUS_STOP_ITERATION,
        }
    }
}

/// Envoy's log levels (the `dynamic_modules` logger).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub(crate) fn to_abi(self) -> abi::LogLevel {
        match self {
            LogLevel::Trace => abi::LOG_LEVEL_TRACE,
            LogLevel::Debug => abi::LOG_LEVEL_DEBUG,
            LogLevel::Info => abi::LOG_LEVEL_INFO,
            LogLevel::Warn => abi::LOG_LEVEL_WARN,
            LogLevel::Error => abi::LOG_LEVEL_ERROR,
            LogLevel::Critical => abi::LOG_LEVEL_CRITICAL,
        }
    }
}

/// Which header map of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMap {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

impl HeaderMap {
    pub(crate) fn to_abi(self) -> abi::HeaderType {
        match self {
            HeaderMap::RequestHeaders => abi::HEADER_TYPE_REQUEST_HEADER,
            HeaderMap::RequestTrailers => abi::HEADER_TYPE_REQUEST_TRAILER,
            HeaderMap::ResponseHeaders => abi::HEADER_TYPE_RESPONSE_HEADER,
            HeaderMap::ResponseTrailers => abi::HEADER_TYPE_RESPONSE_TRAILER,
        }
    }
}

/// Which view of a stream's body: the chunk of the current body hook (`Received*`, only during
/// that hook) or what this filter buffered so far (`Buffered*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    ReceivedRequest,
    BufferedRequest,
    ReceivedResponse,
    BufferedResponse,
}

impl BodyKind {
    pub(crate) fn to_abi(self) -> abi::BodyType {
        match self {
            BodyKind::ReceivedRequest => abi::BODY_TYPE_RECEIVED_REQUEST,
            BodyKind::BufferedRequest => abi::BODY_TYPE_BUFFERED_REQUEST,
            BodyKind::ReceivedResponse => abi::BODY_TYPE_RECEIVED_RESPONSE,
            BodyKind::BufferedResponse => abi::BODY_TYPE_BUFFERED_RESPONSE,
        }
    }
}

/// Stream and connection attributes Envoy can answer (CEL attribute names in the docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribute {
    /// `request.path` (string, with the query)
    RequestPath,
    /// `request.method` (string)
    RequestMethod,
    /// `request.protocol` (string, e.g. `HTTP/1.1`)
    RequestProtocol,
    /// `source.address` (string, `ip:port`)
    SourceAddress,
    /// `source.port` (int)
    SourcePort,
    /// `connection.id` (int)
    ConnectionId,
    /// `connection.mtls` (bool)
    ConnectionMtls,
    /// `connection.requested_server_name` (string, SNI)
    RequestedServerName,
    /// `connection.subject_peer_certificate` (string)
    PeerCertificateSubject,
    /// `connection.uri_san_peer_certificate` (string)
    PeerCertificateUriSan,
    /// `connection.sha256_peer_certificate_digest` (string, hex)
    PeerCertificateSha256,
}

impl Attribute {
    pub(crate) fn to_abi(self) -> abi::AttributeId {
        match self {
            Attribute::RequestPath => abi::ATTRIBUTE_REQUEST_PATH,
            Attribute::RequestMethod => abi::ATTRIBUTE_REQUEST_METHOD,
            Attribute::RequestProtocol => abi::ATTRIBUTE_REQUEST_PROTOCOL,
            Attribute::SourceAddress => abi::ATTRIBUTE_SOURCE_ADDRESS,
            Attribute::SourcePort => abi::ATTRIBUTE_SOURCE_PORT,
            Attribute::ConnectionId => abi::ATTRIBUTE_CONNECTION_ID,
            Attribute::ConnectionMtls => abi::ATTRIBUTE_CONNECTION_MTLS,
            Attribute::RequestedServerName => abi::ATTRIBUTE_CONNECTION_REQUESTED_SERVER_NAME,
            Attribute::PeerCertificateSubject => abi::ATTRIBUTE_CONNECTION_SUBJECT_PEER_CERTIFICATE,
            Attribute::PeerCertificateUriSan => abi::ATTRIBUTE_CONNECTION_URI_SAN_PEER_CERTIFICATE,
            Attribute::PeerCertificateSha256 => {
                abi::ATTRIBUTE_CONNECTION_SHA256_PEER_CERTIFICATE_DIGEST
            }
        }
    }
}

/// A counter defined in [`crate::ConfigEnv::define_counter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterId(pub(crate) usize);

/// A gauge defined in [`crate::ConfigEnv::define_gauge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaugeId(pub(crate) usize);

/// A histogram defined in [`crate::ConfigEnv::define_histogram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramId(pub(crate) usize);

/// Why a metric call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsError {
    /// The id does not name a metric of this configuration.
    NotFound,
    /// Label values do not match the definition.
    InvalidLabels,
    /// Definitions are only possible while the configuration is created.
    Frozen,
    /// A result this crate does not know (a newer ABI).
    Unknown(u32),
}

impl MetricsError {
    /// `Ok(())` for success, the error otherwise.
    pub(crate) fn check(result: abi::MetricsResult) -> Result<(), MetricsError> {
        match result {
            abi::METRICS_SUCCESS => Ok(()),
            abi::METRICS_NOT_FOUND => Err(MetricsError::NotFound),
            abi::METRICS_INVALID_LABELS => Err(MetricsError::InvalidLabels),
            abi::METRICS_FROZEN => Err(MetricsError::Frozen),
            other => Err(MetricsError::Unknown(other)),
        }
    }
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsError::NotFound => write!(f, "metric not found"),
            MetricsError::InvalidLabels => write!(f, "invalid labels"),
            MetricsError::Frozen => {
                write!(
                    f,
                    "metrics can only be defined while the configuration is created"
                )
            }
            MetricsError::Unknown(v) => write!(f, "unknown metrics result {v}"),
        }
    }
}

impl std::error::Error for MetricsError {}

/// Why Envoy did not start an HTTP callout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutInitError {
    /// `:method`, `:path` or `host` is missing.
    MissingRequiredHeaders,
    /// No cluster of that name.
    ClusterNotFound,
    DuplicateCalloutId,
    /// Envoy could not create the request (e.g. no healthy host).
    CannotCreateRequest,
    Unknown(u32),
}

impl CalloutInitError {
    pub(crate) fn check(result: abi::CalloutInitResult) -> Result<(), CalloutInitError> {
        match result {
            abi::CALLOUT_INIT_SUCCESS => Ok(()),
            abi::CALLOUT_INIT_MISSING_REQUIRED_HEADERS => {
                Err(CalloutInitError::MissingRequiredHeaders)
            }
            abi::CALLOUT_INIT_CLUSTER_NOT_FOUND => Err(CalloutInitError::ClusterNotFound),
            abi::CALLOUT_INIT_DUPLICATE_CALLOUT_ID => Err(CalloutInitError::DuplicateCalloutId),
            abi::CALLOUT_INIT_CANNOT_CREATE_REQUEST => Err(CalloutInitError::CannotCreateRequest),
            other => Err(CalloutInitError::Unknown(other)),
        }
    }
}

impl std::fmt::Display for CalloutInitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalloutInitError::MissingRequiredHeaders => {
                write!(f, "callout needs :method, :path and host")
            }
            CalloutInitError::ClusterNotFound => write!(f, "cluster not found"),
            CalloutInitError::DuplicateCalloutId => write!(f, "duplicate callout id"),
            CalloutInitError::CannotCreateRequest => write!(f, "cannot create the request"),
            CalloutInitError::Unknown(v) => write!(f, "unknown callout init result {v}"),
        }
    }
}

impl std::error::Error for CalloutInitError {}

/// How a callout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutResult {
    /// A response arrived (any status: look at [`CalloutResponse::status`]).
    Success,
    /// The request was reset (connection failure, timeout, cancelled).
    Reset,
    /// The response was larger than the buffer limit.
    ExceedResponseBufferLimit,
    Unknown(u32),
}

impl CalloutResult {
    pub(crate) fn from_abi(v: abi::CalloutResult) -> CalloutResult {
        match v {
            abi::CALLOUT_RESULT_SUCCESS => CalloutResult::Success,
            abi::CALLOUT_RESULT_RESET => CalloutResult::Reset,
            abi::CALLOUT_RESULT_EXCEED_RESPONSE_BUFFER_LIMIT => {
                CalloutResult::ExceedResponseBufferLimit
            }
            other => CalloutResult::Unknown(other),
        }
    }
}

/// The response of a callout, borrowed from Envoy for the duration of the hook (empty when the
/// callout failed).
#[derive(Clone, Debug, Default)]
pub struct CalloutResponse<'a> {
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body_chunks: Vec<&'a [u8]>,
}

impl<'a> CalloutResponse<'a> {
    /// The first value of a header (names compared ASCII case-insensitively).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The `:status` pseudo-header as a number.
    pub fn status(&self) -> Option<u16> {
        self.header(b":status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// The whole body, copied into one buffer.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_chunks.iter().map(|c| c.len()).sum());
        for c in &self.body_chunks {
            out.extend_from_slice(c);
        }
        out
    }
}

/// The status a local reply really gets: one Envoy can send (200–599), 500 otherwise.
pub(crate) fn local_reply_status(status: u32) -> u32 {
    if (200..=599).contains(&status) {
        status
    } else {
        500
    }
}

/// The text of a panic payload (a panic with a message carries a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// The JSON body of the 500 a request gets when a hook panicked, in edgeguard's error shape
/// (`{"code": <status>, "message": "<text>"}`, as `edgeguard_verdict::reply` renders it).
pub(crate) fn internal_error_body(filter_name: &str) -> Vec<u8> {
    let mut out = String::from("{\"code\": 500, \"message\": \"");
    for c in format!("internal error in filter {filter_name}").chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("\"}");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_abi_numbers() {
        assert_eq!(HeadersStatus::Continue.to_abi(), 0);
        assert_eq!(HeadersStatus::StopIteration.to_abi(), 1);
        assert_eq!(HeadersStatus::StopAllIterationAndBuffer.to_abi(), 3);
        assert_eq!(HeadersStatus::StopAllIterationAndWatermark.to_abi(), 4);
        assert_eq!(BodyStatus::Continue.to_abi(), 0);
        assert_eq!(BodyStatus::StopIterationAndBuffer.to_abi(), 1);
        assert_eq!(BodyStatus::StopIterationAndWatermark.to_abi(), 2);
        assert_eq!(BodyStatus::StopIterationNoBuffer.to_abi(), 3);
        assert_eq!(TrailersStatus::Continue.to_abi(), 0);
        assert_eq!(TrailersStatus::StopIteration.to_abi(), 1);
        assert_eq!(LogLevel::Trace.to_abi(), 0);
        assert_eq!(LogLevel::Critical.to_abi(), 5);
        assert_eq!(HeaderMap::RequestHeaders.to_abi(), 0);
        assert_eq!(HeaderMap::RequestTrailers.to_abi(), 1);
        assert_eq!(HeaderMap::ResponseHeaders.to_abi(), 2);
        assert_eq!(HeaderMap::ResponseTrailers.to_abi(), 3);
        assert_eq!(Attribute::RequestPath.to_abi(), 0);
        assert_eq!(Attribute::SourceAddress.to_abi(), 24);
        assert_eq!(Attribute::PeerCertificateSha256.to_abi(), 38);
    }

    #[test]
    fn results_decode_without_trusting_the_value() {
        assert_eq!(MetricsError::check(0), Ok(()));
        assert_eq!(MetricsError::check(3), Err(MetricsError::Frozen));
        assert_eq!(MetricsError::check(77), Err(MetricsError::Unknown(77)));
        assert_eq!(CalloutInitError::check(0), Ok(()));
        assert_eq!(
            CalloutInitError::check(2),
            Err(CalloutInitError::ClusterNotFound)
        );
        assert_eq!(
            CalloutInitError::check(9),
            Err(CalloutInitError::Unknown(9))
        );
        assert_eq!(CalloutResult::from_abi(0), CalloutResult::Success);
        assert_eq!(CalloutResult::from_abi(1), CalloutResult::Reset);
        assert_eq!(CalloutResult::from_abi(5), CalloutResult::Unknown(5));
    }

    #[test]
    fn callout_response_view() {
        let r = CalloutResponse {
            headers: vec![
                (b":status".as_slice(), b"204".as_slice()),
                (b"Content-Type", b"application/json"),
                (b"x-bytes", b"caf\xe9"),
            ],
            body_chunks: vec![b"{\"a\":", b"1}"],
        };
        assert_eq!(r.status(), Some(204));
        assert_eq!(
            r.header(b"content-type"),
            Some(b"application/json".as_slice())
        );
        assert_eq!(r.header(b"x-bytes"), Some(b"caf\xe9".as_slice()));
        assert_eq!(r.header(b"missing"), None);
        assert_eq!(r.body(), b"{\"a\":1}");
        assert_eq!(CalloutResponse::default().status(), None);
        let bad = CalloutResponse {
            headers: vec![(b":status".as_slice(), b"2\xff0".as_slice())],
            body_chunks: vec![],
        };
        assert_eq!(bad.status(), None);
    }

    #[test]
    fn local_reply_statuses() {
        assert_eq!(local_reply_status(200), 200);
        assert_eq!(local_reply_status(418), 418);
        assert_eq!(local_reply_status(599), 599);
        for bad in [0, 99, 100, 199, 600, 1000, u32::MAX] {
            assert_eq!(local_reply_status(bad), 500, "{bad}");
        }
    }

    #[test]
    fn panic_messages() {
        let r = std::panic::catch_unwind(|| panic!("boom {}", 1));
        assert_eq!(panic_message(r.unwrap_err().as_ref()), "boom 1");
        let r = std::panic::catch_unwind(|| panic!("static"));
        assert_eq!(panic_message(r.unwrap_err().as_ref()), "static");
        let r = std::panic::catch_unwind(|| std::panic::panic_any(42u8));
        assert_eq!(
            panic_message(r.unwrap_err().as_ref()),
            "panic with a non-string payload"
        );
    }

    #[test]
    fn internal_error_body_is_json() {
        assert_eq!(
            internal_error_body("smoke"),
            b"{\"code\": 500, \"message\": \"internal error in filter smoke\"}"
        );
        let odd = String::from_utf8(internal_error_body("a\"b\\c\n")).unwrap();
        assert_eq!(
            odd,
            "{\"code\": 500, \"message\": \"internal error in filter a\\\"b\\\\c\\u000a\"}"
        );
    }
}
