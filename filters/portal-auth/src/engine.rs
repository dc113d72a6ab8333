//! The request path, against [`Host`]: the portal verdict on the local store copy.

use edgeguard_host::{Host, Level, Metrics};
use edgeguard_verdict::portal::{self, CheckOptions, Headers};
use edgeguard_verdict::portal_wire::StoreCopy;
use rustc_hash::FxBuildHasher;

use crate::config::Config;
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

/// Decides one request.
pub fn on_request<H: Host, M: Metrics>(
    config: &Config,
    copy: &Copy,
    host: &H,
    metrics: &M,
) -> Outcome {
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
        return Outcome::FailedOpen;
    }
    let path = headers.get(":path").unwrap_or("").to_string();
    let options = CheckOptions {
        rate_limit_headers: config.rate_limit_headers,
    };
    match portal::check(Some((&path, &headers)), copy, options) {
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
            Outcome::Allowed
        }
        Err(d) => {
            host.log(
                Level::Debug,
                &format!("edgeguard portal-auth: {d} ({})", d.error_type()),
            );
            metrics.increment(&metrics::denied(&d));
            host.send_json_error(u32::from(d.http_status()), d.message());
            Outcome::Denied
        }
    }
}
