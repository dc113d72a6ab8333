//! `envoy.service.auth.v3.Authorization/Check`: the PEAS-compatible verdict from
//! `edgeguard_verdict::portal`, turned into a `CheckResponse` exactly as PEAS shapes it (plus a
//! content type on denials and the removal of client-sent `Portal-*`/`Rl-*` headers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use edgeguard_verdict::device::{self, Peer};
use edgeguard_verdict::portal::{self, CheckOptions, Denial, Headers};
use edgeguard_verdict::quota::{QuotaHeaders, QuotaState};
use edgeguard_verdict::strip::HeaderStrip;
use edgeguard_verdict::xfcc;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::StoreHandle;

/// Request headers of a CheckRequest, looked up case-insensitively. Envoy sends lower-case
/// names in `headers` (or `header_map` with `encode_raw_headers`); hand-written requests
/// (grpcurl) may use any case.
pub struct CheckHeaders<'a> {
    map: &'a HashMap<String, String>,
    raw: Vec<(&'a str, String)>,
}

impl<'a> CheckHeaders<'a> {
    pub fn new(http: &'a HttpRequest) -> CheckHeaders<'a> {
        let raw = http
            .header_map
            .as_ref()
            .map(|m| {
                m.headers
                    .iter()
                    .map(|h| {
                        let v = if h.raw_value.is_empty() {
                            h.value.clone()
                        } else {
                            String::from_utf8_lossy(&h.raw_value).into_owned()
                        };
                        (h.key.as_str(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        CheckHeaders {
            map: &http.headers,
            raw,
        }
    }

    /// Every value of a header, in order, joined with `,` (how HTTP lists repeated headers):
    /// `headers` holds them joined already, `header_map` one entry per line.
    pub fn all(&self, lower_case_name: &str) -> Option<String> {
        let raw: Vec<&str> = self
            .raw
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(lower_case_name))
            .map(|(_, v)| v.as_str())
            .collect();
        if !raw.is_empty() {
            return Some(raw.join(","));
        }
        self.get(lower_case_name).map(str::to_string)
    }

    /// Every header name the client sent.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map
            .keys()
            .map(String::as_str)
            .chain(self.raw.iter().map(|(k, _)| *k))
    }
}

impl Headers for CheckHeaders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        if let Some(v) = self.map.get(name) {
            return Some(v);
        }
        if let Some((_, v)) = self.raw.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            return Some(v);
        }
        self.map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The OK response: PEAS's two headers (plus the optional `Rl-*` one), overwriting client
/// copies, and removal of every other client-sent `Portal-*`/`Rl-*` header and of every
/// header `strip` names (headers other edgeguard components own, e.g. `x-edgeguard-*`).
pub fn ok_response(
    stamped: &[(String, String)],
    client_names: Vec<&str>,
    strip: &HeaderStrip,
    response_headers: &[(&str, String)],
) -> CheckResponse {
    let mut headers_to_remove: Vec<String> = client_names
        .into_iter()
        .filter(|n| portal::is_owned_header(n) || strip.matches(n))
        .filter(|n| !stamped.iter().any(|(k, _)| k.eq_ignore_ascii_case(n)))
        .map(|n| n.to_ascii_lowercase())
        .collect();
    headers_to_remove.sort();
    headers_to_remove.dedup();
    CheckResponse {
        status: Some(RpcStatus {
            code: portal::GRPC_OK,
            message: "ok".to_string(),
            details: vec![],
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: stamped.iter().map(|(k, v)| header(k, v)).collect(),
            headers_to_remove,
            response_headers_to_add: response_headers.iter().map(|(k, v)| header(k, v)).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The denied response: PEAS's status, code and message, the body as valid JSON, plus
/// `extra` headers (the quota headers of a 429).
pub fn denied_response(d: &Denial, extra: &[(&str, String)]) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: d.grpc_code(),
            message: d.message().to_string(),
            details: vec![],
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(d.http_status()),
            }),
            headers: std::iter::once(header("content-type", "application/json"))
                .chain(extra.iter().map(|(k, v)| header(k, v)))
                .collect(),
            body: d.body(),
        })),
        ..Default::default()
    }
}

/// The `portal_app_id` label of requests whose app id is not in the store: every made-up id
/// shares it, so label values come only from the store and stay bounded by it.
pub const UNKNOWN_APP_LABEL: &str = "unknown";

/// The `portal_app_id` label for the app id a request named: the id when the store has that
/// app, [`UNKNOWN_APP_LABEL`] otherwise, `""` when the request named none (PEAS).
pub fn app_label<'a>(view: &dyn portal::PortalView, id: &'a str) -> &'a str {
    if id.is_empty() {
        ""
    } else if view.app(id).is_some() {
        id
    } else {
        UNKNOWN_APP_LABEL
    }
}

/// The Authorization service.
pub struct AuthzService {
    pub store: Arc<dyn StoreHandle>,
    pub metrics: Arc<Metrics>,
    pub options: CheckOptions,
    /// Client headers other components own, removed from allowed requests.
    pub strip: HeaderStrip,
    /// Counts allowed Checks (usage metering), when on.
    pub metering: Option<Arc<edgeguard_metering::Metering>>,
    /// Which answers carry the quota headers.
    pub quota_headers: QuotaHeaders,
    /// Whether a client certificate may be read from `x-forwarded-client-cert` when the
    /// CheckRequest carries none (TLS ends at a proxy in front that sets that header).
    pub trust_xfcc: bool,
}

impl AuthzService {
    /// The client certificate of a CheckRequest: `attributes.source.certificate` (Envoy's
    /// ext_authz filter with `include_peer_certificate: true`: the URL-encoded PEM of the
    /// certificate the TLS handshake verified), else, when trusted, the `Hash=` of the last
    /// element of `x-forwarded-client-cert`. A certificate that cannot be read is no
    /// certificate (an app that needs one answers 401).
    fn peer(&self, req: &CheckRequest, headers: Option<&CheckHeaders<'_>>) -> Option<Peer> {
        let certificate = req
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map(|s| s.certificate.as_str())
            .unwrap_or("");
        let fingerprint = if !certificate.is_empty() {
            // the connection's certificate, when Envoy sent one, is the only one that counts:
            // unreadable, it is no certificate (never a reason to believe a header instead)
            device::pem_fingerprint(certificate)
        } else if self.trust_xfcc {
            headers
                .and_then(|h| h.all(xfcc::HEADER))
                .and_then(|v| xfcc::last_hash(&v).ok())
        } else {
            None
        }?;
        Some(Peer {
            fingerprint,
            now: self.store.now_unix(),
        })
    }

    /// Decides one CheckRequest and records PEAS's metrics.
    pub fn decide(&self, req: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let http = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let headers = http.map(CheckHeaders::new);
        let input = match (http, headers.as_ref()) {
            (Some(h), Some(hd)) => Some((h.path.as_str(), hd as &dyn Headers)),
            _ => None,
        };
        let view = self.store.view();
        let view: &dyn portal::PortalView = &*view;
        let peer = || self.peer(req, headers.as_ref());
        let (response, app_id, account_id, status, error_type, rl) =
            match portal::check(input, view, self.options, &peer) {
                Ok(allowed) => {
                    let names = headers
                        .as_ref()
                        .map(|h| h.names().collect())
                        .unwrap_or_default();
                    let plan = if allowed.rate_limit_decision == "no_limit_configured" {
                        String::new()
                    } else {
                        allowed.app.plan.to_string()
                    };
                    let rl = Some((
                        allowed.app.account_id.to_string(),
                        plan,
                        allowed.rate_limit_decision,
                    ));
                    if let Some(m) = &self.metering {
                        m.count(&allowed.app_id, &allowed.app.account_id);
                        if let Some(d) = allowed.device {
                            m.seen(&d.id, self.store.now_unix());
                        }
                    }
                    let quota = match self.quota_headers {
                        QuotaHeaders::All => QuotaState::of(
                            allowed.app,
                            view.usage(&allowed.app.account_id),
                            self.store.now_unix(),
                        )
                        .map(|q| q.headers(false))
                        .unwrap_or_default(),
                        QuotaHeaders::Denied => Vec::new(),
                    };
                    (
                        ok_response(&allowed.headers, names, &self.strip, &quota),
                        allowed.app_id.clone(),
                        allowed.app.account_id.to_string(),
                        "authorized",
                        "",
                        rl,
                    )
                }
                Err(d) => {
                    // the verdict and, for a refused certificate, why (no client input)
                    tracing::debug!(denial = %d, error_type = d.error_type(), "check denied");
                    let rl = match &d {
                        Denial::RateLimited { account_id, .. } => {
                            let plan = view
                                .app(d.app_id())
                                .map(|a| a.plan.to_string())
                                .unwrap_or_default();
                            Some((account_id.clone(), plan, "rate_limited"))
                        }
                        _ => None,
                    };
                    let quota = match &d {
                        Denial::RateLimited { account_id, .. } => view
                            .app(d.app_id())
                            .and_then(|app| {
                                QuotaState::of(app, view.usage(account_id), self.store.now_unix())
                            })
                            .map(|q| q.headers(true))
                            .unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    (
                        denied_response(&d, &quota),
                        d.app_id().to_string(),
                        d.account_id().to_string(),
                        "denied",
                        d.error_type(),
                        rl,
                    )
                }
            };
        // label values come from the store only (the account ids are the apps' own), never
        // from the request: a client inventing ids cannot grow the metrics
        let app_id = app_label(view, &app_id);
        let m = &self.metrics;
        m.auth_requests
            .with_label_values(&[app_id, account_id.as_str(), status, error_type])
            .inc();
        m.auth_duration
            .with_label_values(&[app_id, status])
            .observe(started.elapsed().as_secs_f64());
        if let Some((account, plan, decision)) = rl {
            m.rate_limit_checks
                .with_label_values(&[account.as_str(), plan.as_str(), decision])
                .inc();
        }
        response
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref())))
    }
}
