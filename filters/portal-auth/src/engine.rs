//! The request path, against [`Host`]: the portal verdict on the local store copy.

use edgeguard_host::{Host, Level, Metrics};
use edgeguard_verdict::device::Peer;
use edgeguard_verdict::portal::{self, CheckOptions, Denial, Headers, PortalView};
use edgeguard_verdict::portal_wire::StoreCopy;
use edgeguard_verdict::quota::{QuotaHeaders, QuotaState};
use rustc_hash::FxBuildHasher;

use crate::config::Config;
use crate::meter::Meter;
use crate::metrics;

/// The per-VM copy of the store.
pub type Copy = StoreCopy<FxBuildHasher>;

/// Request headers as ext_authz sees them: lower-case names, repeated headers joined with
/// `,`. Values are bytes; the verdict reads only values that are UTF-8 (one that is not is
/// as good as absent: no app id, no key), so a Latin-1 byte can neither crash nor open anything.
pub struct RequestHeaders(Vec<(String, Vec<u8>)>);

impl RequestHeaders {
    pub fn new(raw: Vec<(String, Vec<u8>)>) -> RequestHeaders {
        let mut merged: Vec<(String, Vec<u8>)> = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let k = k.to_ascii_lowercase();
            match merged.iter_mut().find(|(mk, _)| *mk == k) {
                Some((_, mv)) => {
                    mv.push(b',');
                    mv.extend_from_slice(&v);
                }
                None => merged.push((k, v)),
            }
        }
        RequestHeaders(merged)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

impl Headers for RequestHeaders {
    fn get(&self, name: &str) -> Option<&str> {
        self.raw(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// The store never loaded and `fail_open` let the request through unstamped.
    FailedOpen,
}

/// Response headers an allowed request's answer gets (`quota_headers: "all"`): set them in
/// the response-headers callback with [`on_response`]. Empty (no allocation) otherwise.
pub type ResponseHeaders = Vec<(&'static str, String)>;

/// What the request path needs besides the host: the meter (counted into when metering is on)
/// and the clock (Unix seconds), asked only when quota headers are written or a device
/// certificate is judged.
pub struct Context<'a, N: Fn() -> i64> {
    pub meter: &'a Meter,
    pub now: N,
}

/// A decision: the outcome, and the headers the response gets when it was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub response_headers: ResponseHeaders,
}

impl From<Outcome> for Decision {
    fn from(outcome: Outcome) -> Decision {
        Decision {
            outcome,
            response_headers: Vec::new(),
        }
    }
}

/// Sets the headers [`on_request`] kept for the response.
pub fn on_response<H: Host>(host: &H, headers: &[(&'static str, String)]) {
    for (k, v) in headers {
        host.set_response_header(k, v.as_bytes());
    }
}

/// The quota headers of `app`'s account (none without a monthly limit; the clock is asked
/// only when there is one).
fn quota_headers<N: Fn() -> i64>(
    copy: &Copy,
    app: &portal::PortalApp,
    now: &N,
    retry_after: bool,
) -> ResponseHeaders {
    if app.monthly_limit().is_none() {
        return Vec::new();
    }
    QuotaState::of(app, copy.usage(&app.account_id), now())
        .map(|q| q.headers(retry_after))
        .unwrap_or_default()
}

/// Answers a denial locally; a 429 carries `Retry-After`, `RateLimit-Policy` and `RateLimit`.
fn deny<H: Host, N: Fn() -> i64>(copy: &Copy, host: &H, d: &Denial, now: &N) {
    let status = u32::from(d.http_status());
    let quota = match d {
        Denial::RateLimited { app_id, .. } => copy
            .app(app_id)
            .map(|app| quota_headers(copy, app, now, true))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if quota.is_empty() {
        host.send_json_error(status, d.message());
        return;
    }
    let body = edgeguard_verdict::reply::json_body(d.http_status(), d.message());
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(quota.iter().map(|(k, v)| (*k, v.as_str())));
    host.send_response(status, &headers, &body);
}

/// Decides one request.
pub fn on_request<H: Host, M: Metrics, N: Fn() -> i64>(
    config: &Config,
    copy: &Copy,
    host: &H,
    metrics: &M,
    cx: &Context<'_, N>,
) -> Decision {
    let headers = RequestHeaders::new(host.request_headers());
    for n in headers.names().filter(|n| config.strip.matches(n)) {
        host.remove_request_header(n);
    }
    let owned: Vec<String> = headers
        .names()
        .filter(|n| portal::is_owned_header(n))
        .map(str::to_string)
        .collect();
    if !copy.loaded && config.fail_open {
        for n in &owned {
            host.remove_request_header(n);
        }
        metrics.increment(metrics::FAILED_OPEN);
        return Outcome::FailedOpen.into();
    }
    let path = headers.get(":path").unwrap_or("").to_string();
    let options = CheckOptions {
        rate_limit_headers: config.rate_limit_headers,
    };
    // the client certificate, asked only for apps that accept one (a host call each)
    let peer = || {
        host.peer_certificate_sha256().map(|fingerprint| Peer {
            fingerprint,
            now: (cx.now)(),
        })
    };
    match portal::check(Some((&path, &headers)), copy, options, &peer) {
        Ok(allowed) => {
            for n in &owned {
                if !allowed
                    .headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case(n))
                {
                    host.remove_request_header(n);
                }
            }
            for (k, v) in &allowed.headers {
                // a header the client already sent with exactly this value (typically
                // Portal-Application-ID) is left as it is: one host call less
                if headers.raw(k) != Some(v.as_bytes()) {
                    host.set_request_header(&k.to_ascii_lowercase(), v);
                }
            }
            metrics.increment(metrics::ALLOWED);
            if config.metering.enabled {
                cx.meter.count(&allowed.app_id, &allowed.app.account_id);
                if let Some(d) = allowed.device {
                    cx.meter.seen(&d.id, (cx.now)());
                }
            }
            let response_headers = if config.quota_headers == QuotaHeaders::All {
                quota_headers(copy, allowed.app, &cx.now, false)
            } else {
                Vec::new()
            };
            Decision {
                outcome: Outcome::Allowed,
                response_headers,
            }
        }
        Err(d) => {
            host.log(
                Level::Debug,
                &format!("edgeguard portal-auth: {d} ({})", d.error_type()),
            );
            metrics.increment(&metrics::denied(&d));
            deny(copy, host, &d, &cx.now);
            Outcome::Denied.into()
        }
    }
}
