//! The request path of the filter, written against [`Host`] so it runs the same natively (in
//! unit tests) and inside Envoy. One call decides one request: allow (after rewriting headers),
//! deny with a local reply, wait for keys that are being fetched, or (a `POST` to a bound
//! shape route only) check the request body before it may go on ([`on_request_body`]).

use std::sync::Arc;

use edgeguard_host::{header_text, Host, Level, Metrics, NotUtf8};
use edgeguard_verdict::binding;
use edgeguard_verdict::query::{self, QueryParam};
use edgeguard_verdict::reply::json_body;
use edgeguard_verdict::shape::{self, ClaimError};
use edgeguard_verdict::subset::{self, SubsetGrant};
use edgeguard_verdict::token::{self, TokenError};

use crate::cache::Verified;
use crate::config::{Config, Provider, Requirement, TokenLocation, Unmatched};
use crate::metrics;
use crate::state::Shared;

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Continue upstream. `vary` asks for `Vary: Authorization` on the response.
    Allowed { vary: bool },
    /// A local reply was sent.
    Denied,
    /// Keys of this provider are being fetched: pause, and decide again when they arrive.
    Wait { provider: usize },
    /// The headers are fine, but the body may hold a subset (`POST /v1/shape`): stop the
    /// headers, buffer the body and decide with [`on_request_body`] once it ended.
    CheckBody(BodyCheck),
}

/// What the body phase of a request needs from its headers' verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyCheck {
    /// Add `Vary: Authorization` to the response when the body passes.
    pub vary: bool,
    /// What the token lets a subset do.
    pub grant: SubsetGrant,
}

/// What became of a request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyOutcome {
    /// The body has not ended: keep buffering it.
    Buffer,
    /// The body passed: let the request (headers and body) go on.
    Allowed,
    /// A local reply was sent.
    Denied,
}

/// The largest request body jwt-shape reads (a `POST /v1/shape` subset body); larger is 413.
/// Electric's subset bodies are a few hundred bytes; 64 KiB leaves room for long `IN` lists.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The RFC 6750 challenge of a denial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Challenge {
    None,
    /// No token at all: `Bearer realm=...` without an error code (RFC 6750 3.1).
    Missing,
    InvalidToken,
    InsufficientScope,
}

struct Denial {
    status: u32,
    reason: &'static str,
    message: String,
    challenge: Challenge,
}

impl Denial {
    fn bad_request(reason: &'static str, message: impl ToString) -> Denial {
        Denial {
            status: 400,
            reason,
            message: message.to_string(),
            challenge: Challenge::None,
        }
    }

    fn token(e: &TokenError) -> Denial {
        Denial {
            status: 401,
            reason: e.reason(),
            message: e.to_string(),
            challenge: Challenge::InvalidToken,
        }
    }

    fn forbidden(reason: &'static str, message: impl ToString) -> Denial {
        Denial {
            status: 403,
            reason,
            message: message.to_string(),
            challenge: Challenge::InsufficientScope,
        }
    }
}

/// Realm in `WWW-Authenticate` challenges.
pub const REALM: &str = "edgeguard";

fn challenge_value(challenge: Challenge, message: &str) -> Option<String> {
    let description: String = message
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect();
    match challenge {
        Challenge::None => None,
        Challenge::Missing => Some(format!("Bearer realm=\"{REALM}\"")),
        Challenge::InvalidToken => Some(format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\""
        )),
        Challenge::InsufficientScope => Some(format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{description}\""
        )),
    }
}

fn deny<H: Host, M: Metrics>(host: &H, metrics: &M, d: Denial) -> Outcome {
    let body = json_body(d.status as u16, &d.message);
    let www = challenge_value(d.challenge, &d.message);
    let mut headers = vec![
        ("content-type", "application/json"),
        ("vary", "Authorization"),
    ];
    if let Some(w) = www.as_deref() {
        headers.push(("www-authenticate", w));
    }
    host.log(
        Level::Debug,
        &format!(
            "edgeguard jwt-shape: {} {} ({})",
            d.status, d.message, d.reason
        ),
    );
    metrics.increment(&metrics::denied(d.reason));
    host.send_response(d.status, &headers, &body);
    Outcome::Denied
}

/// Where the token of a request came from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    Header(String),
    Param(String),
}

/// What the token locations of a provider hold.
enum Lookup {
    Found(String, Found),
    Missing,
    /// A location holds a token whose bytes are not UTF-8 (so not a JWS).
    NotUtf8,
}

/// Finds the token in the provider's locations, in order. Header values are bytes: the prefix
/// is matched on bytes, and a token that is not UTF-8 is reported, never decoded lossily.
fn find_token<H: Host>(host: &H, provider: &Provider, params: &[QueryParam<'_>]) -> Lookup {
    for loc in &provider.locations {
        match loc {
            TokenLocation::Header { name, prefix } => {
                let Some(value) = host.request_header(name) else {
                    continue;
                };
                let rest = match value.get(..prefix.len()) {
                    Some(head) if head.eq_ignore_ascii_case(prefix.as_bytes()) => {
                        value.get(prefix.len()..).unwrap_or_default()
                    }
                    _ => continue,
                };
                let token = rest.trim_ascii();
                if token.is_empty() {
                    continue;
                }
                return match std::str::from_utf8(token) {
                    Ok(t) => Lookup::Found(t.to_string(), Found::Header(name.clone())),
                    Err(_) => Lookup::NotUtf8,
                };
            }
            TokenLocation::Param(name) => {
                if let Some(p) = params.iter().find(|p| p.name == name.as_str()) {
                    if !p.value.is_empty() {
                        return Lookup::Found(p.value.to_string(), Found::Param(name.clone()));
                    }
                }
            }
        }
    }
    Lookup::Missing
}

/// Lets a request through that needs no token (CORS preflight, a public rule, an unmatched
/// request with `unmatched: allow`). In front of Electric the client's `secret`/`api_secret`
/// are still removed: only the proxy may hold Electric's secret.
fn pass_through<H: Host, M: Metrics>(
    config: &Config,
    host: &H,
    metrics: &M,
    full_path: &str,
) -> Outcome {
    if config.guards_electric() {
        let (path, raw_query) = query::split_path(full_path);
        if let Some(q) = raw_query {
            let params = match query::parse_query(q) {
                Ok(p) => p,
                Err(e) => return deny(host, metrics, Denial::bad_request("bad_query", e)),
            };
            if params.iter().any(|p| is_secret_param(&p.name)) {
                let kept: Vec<&str> = params
                    .iter()
                    .filter(|p| !is_secret_param(&p.name))
                    .map(|p| p.raw)
                    .collect();
                host.set_request_header(":path", &with_query(path, &kept.join("&")));
            }
        }
    }
    metrics.increment(metrics::BYPASSED);
    Outcome::Allowed { vary: false }
}

fn is_secret_param(name: &str) -> bool {
    shape::SECRET_PARAMS.contains(&name)
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// Verifies a token (or finds it in the cache).
enum Verification {
    Ok(Arc<Verified>),
    Err(TokenError),
    Wait,
}

#[allow(clippy::too_many_arguments)]
fn verify<W, M: Metrics>(
    config: &Config,
    shared: &Shared<W>,
    metrics: &M,
    provider_index: usize,
    provider: &Provider,
    token: &str,
    now: f64,
    may_wait: bool,
) -> Verification {
    let Some(slot) = shared.provider(provider_index) else {
        return Verification::Err(TokenError::KeysUnavailable);
    };
    if let Some(hit) = shared
        .cache
        .get(token, provider_index, slot.generation(), now)
    {
        metrics.increment(metrics::CACHE_HIT);
        return Verification::Ok(hit);
    }
    metrics.increment(metrics::CACHE_MISS);
    let jws = match token::parse(token, config.max_token_bytes) {
        Ok(j) => j,
        Err(e) => return Verification::Err(e),
    };
    let (generation, set) = slot.current();
    let Some(set) = set else {
        if may_wait && slot.with_keys(|k| k.first_load_pending(now)) {
            return Verification::Wait;
        }
        return Verification::Err(TokenError::KeysUnavailable);
    };
    if let Err(e) = set.verify(&jws, &provider.algorithms) {
        if e == TokenError::UnknownKid && may_wait && slot.with_keys(|k| k.want_refetch(now)) {
            return Verification::Wait;
        }
        return Verification::Err(e);
    }
    let claims = match token::decode_claims(&jws) {
        Ok(c) => c,
        Err(e) => return Verification::Err(e),
    };
    let validity = match token::validate_claims(&claims, &provider.rules, now) {
        Ok(v) => v,
        Err(e) => return Verification::Err(e),
    };
    let x5t_s256 = match binding::confirmation(&claims, provider.require_bound_tokens) {
        Ok(t) => t,
        Err(e) => return Verification::Err(e),
    };
    let shape = config
        .binds_shapes()
        .then(|| shape::shape_from_claim(&config.shape_claim, &claims));
    let headers = provider
        .claim_to_headers
        .iter()
        .enumerate()
        .filter_map(|(i, ch)| {
            token::claim_at(&claims, &ch.claim)
                .and_then(token::claim_header_value)
                .map(|v| (i, v.into_boxed_str()))
        })
        .collect();
    let verified = Arc::new(Verified {
        not_after: validity.not_after,
        headers,
        shape,
        x5t_s256,
    });
    shared
        .cache
        .insert(token, provider_index, generation, verified.clone());
    Verification::Ok(verified)
}

/// RFC 8705 3: a certificate-bound token is only good on a connection whose client
/// certificate has the token's thumbprint. The host is asked for the certificate only for
/// bound tokens (an unbound token costs no host call here).
fn check_holder<H: Host>(host: &H, verified: &Verified) -> Result<(), TokenError> {
    match &verified.x5t_s256 {
        None => Ok(()),
        Some(bound) => binding::check(bound, host.peer_certificate_sha256().as_ref()),
    }
}

/// Decides one request. `may_wait` is false when the request already waited for keys once.
pub fn on_request<W, H: Host, M: Metrics>(
    config: &Config,
    shared: &Shared<W>,
    host: &H,
    metrics: &M,
    now: f64,
    may_wait: bool,
) -> Outcome {
    // Headers this filter sets (and headers other filters own) never come from the client.
    for h in &config.owned_headers {
        host.remove_request_header(h);
    }
    edgeguard_host::strip_request_headers(&config.strip, host);
    // Methods are tokens; a byte that is not UTF-8 simply matches no method rule.
    let method = host
        .request_header(":method")
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .unwrap_or_default();
    let full_path = match header_text(host, ":path") {
        Ok(p) => p.unwrap_or_default(),
        Err(NotUtf8) => {
            return deny(
                host,
                metrics,
                Denial::bad_request("bad_path", "the request path is not valid UTF-8"),
            )
        }
    };
    let (path, raw_query) = query::split_path(&full_path);

    if config.bypass_cors_preflight
        && method == "OPTIONS"
        && host.request_header("origin").is_some()
        && host
            .request_header("access-control-request-method")
            .is_some()
    {
        return pass_through(config, host, metrics, &full_path);
    }

    let Some(rule) = config.rule_for(&method, path) else {
        return match config.unmatched {
            Unmatched::Allow => pass_through(config, host, metrics, &full_path),
            Unmatched::Deny => deny(
                host,
                metrics,
                Denial {
                    status: 403,
                    reason: "no_rule",
                    message: format!("no rule allows {method} {path}"),
                    challenge: Challenge::None,
                },
            ),
        };
    };
    let provider_index = match rule.requires {
        Requirement::Public => return pass_through(config, host, metrics, &full_path),
        Requirement::Provider(i) => i,
    };
    let Some(provider) = config.providers.get(provider_index) else {
        return deny(host, metrics, Denial::token(&TokenError::KeysUnavailable));
    };

    let needs_query = rule.bind_shape || config.guards_electric() || config.has_param_locations();
    let params = if needs_query {
        match query::parse_query(raw_query.unwrap_or("")) {
            Ok(p) => p,
            Err(e) => return deny(host, metrics, Denial::bad_request("bad_query", e)),
        }
    } else {
        Vec::new()
    };

    let (token, found) = match find_token(host, provider, &params) {
        Lookup::Found(token, found) => (token, found),
        Lookup::NotUtf8 => {
            return deny(
                host,
                metrics,
                Denial::token(&TokenError::Malformed("the token is not valid UTF-8")),
            )
        }
        Lookup::Missing => {
            return deny(
                host,
                metrics,
                Denial {
                    status: 401,
                    reason: "missing_token",
                    message: "a bearer token is required".to_string(),
                    challenge: Challenge::Missing,
                },
            )
        }
    };

    let requested_shape = if rule.bind_shape {
        match shape::shape_from_query(&params) {
            Ok(s) => Some(s),
            Err(e) => {
                // Check the token first: an anonymous client learns nothing about the query rules.
                match verify(
                    config,
                    shared,
                    metrics,
                    provider_index,
                    provider,
                    &token,
                    now,
                    may_wait,
                ) {
                    Verification::Wait => {
                        return Outcome::Wait {
                            provider: provider_index,
                        }
                    }
                    Verification::Err(te) => return deny(host, metrics, Denial::token(&te)),
                    Verification::Ok(v) => {
                        if let Err(te) = check_holder(host, &v) {
                            return deny(host, metrics, Denial::token(&te));
                        }
                    }
                }
                return deny(host, metrics, Denial::bad_request("bad_query", e));
            }
        }
    } else {
        None
    };

    let verified = match verify(
        config,
        shared,
        metrics,
        provider_index,
        provider,
        &token,
        now,
        may_wait,
    ) {
        Verification::Ok(v) => v,
        Verification::Wait => {
            return Outcome::Wait {
                provider: provider_index,
            }
        }
        Verification::Err(e) => return deny(host, metrics, Denial::token(&e)),
    };
    if let Err(e) = check_holder(host, &verified) {
        return deny(host, metrics, Denial::token(&e));
    }

    // A POST to a bound route may carry a subset in its body: checked before it goes on.
    let mut body_grant = None;
    if let Some(requested) = &requested_shape {
        let allowed = match &verified.shape {
            Some(Ok(allowed)) => allowed,
            Some(Err(e)) => return deny(host, metrics, Denial::forbidden("shape_claim", e)),
            None => {
                return deny(
                    host,
                    metrics,
                    Denial::forbidden(
                        "shape_claim",
                        ClaimError::Missing(config.shape_claim.clone()),
                    ),
                )
            }
        };
        if let Err(m) = shape::compare(allowed, requested) {
            return deny(host, metrics, Denial::forbidden("shape_mismatch", m));
        }
        let grant = SubsetGrant::of(allowed);
        let query_subset = match subset::subset_from_query(&params) {
            Ok(s) => s,
            Err(e) => return deny(host, metrics, Denial::bad_request("bad_query", e)),
        };
        if let Err(r) = subset::check(&grant, &query_subset) {
            return deny(host, metrics, Denial::forbidden(r.reason(), r));
        }
        if method == "POST" {
            body_grant = Some(grant);
        }
    }

    // Allowed: stamp claims, forward or strip the token, rewrite the query when needed.
    for (i, value) in &verified.headers {
        if let Some(ch) = provider.claim_to_headers.get(*i) {
            host.set_request_header(&ch.header, value);
        }
    }
    if let Some(h) = &provider.forward_payload_header {
        if let Some(payload) = token.split('.').nth(1) {
            host.set_request_header(h, payload);
        }
    }
    // The token leaves every configured location (a second, unchecked token in another
    // location must not reach upstream either); with `forward` the one checked stays.
    let kept = provider.forward.then_some(&found);
    for name in &config.token_headers {
        if kept != Some(&Found::Header(name.clone())) {
            host.remove_request_header(name);
        }
    }
    let drop_param = |name: &str| {
        config.token_params.iter().any(|p| p == name)
            && kept != Some(&Found::Param(name.to_string()))
    };
    if needs_query {
        let forwarded: Vec<QueryParam<'_>> = params
            .iter()
            .filter(|p| !drop_param(&p.name))
            .cloned()
            .collect();
        let upstream = if rule.bind_shape {
            shape::upstream_query(&forwarded, config.electric_secret.as_deref())
        } else {
            forwarded
                .iter()
                .filter(|p| !(config.guards_electric() && is_secret_param(&p.name)))
                .map(|p| p.raw)
                .collect::<Vec<_>>()
                .join("&")
        };
        let new_path = with_query(path, &upstream);
        if new_path != full_path {
            host.set_request_header(":path", &new_path);
        }
    }
    if let Some(grant) = body_grant {
        return Outcome::CheckBody(BodyCheck { vary: true, grant });
    }
    metrics.increment(metrics::ALLOWED);
    Outcome::Allowed { vary: true }
}

/// The body phase of a request [`on_request`] answered with [`Outcome::CheckBody`]. Called by
/// the glue for every body chunk (`body_size`: the bytes held so far, this chunk included) and
/// once more with `end_of_stream` (with 0 bytes when the request had no body at all). Refuses
/// a body over [`MAX_BODY_BYTES`] at once (413); once the body ended it must be what Electric
/// reads as a subset body (400 otherwise) and the subset must pass the token (403 otherwise).
pub fn on_request_body<H: Host, M: Metrics>(
    host: &H,
    metrics: &M,
    check: &BodyCheck,
    body_size: usize,
    end_of_stream: bool,
) -> BodyOutcome {
    let too_large = || {
        deny(
            host,
            metrics,
            Denial {
                status: 413,
                reason: "body_too_large",
                message: format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                challenge: Challenge::None,
            },
        );
        BodyOutcome::Denied
    };
    if body_size > MAX_BODY_BYTES {
        return too_large();
    }
    if !end_of_stream {
        return BodyOutcome::Buffer;
    }
    let body = if body_size == 0 {
        Vec::new()
    } else {
        match host.request_body(MAX_BODY_BYTES + 1) {
            Some(b) if b.len() >= body_size => b,
            read => {
                // never decide on part of a body
                host.log(
                    Level::Warn,
                    &format!(
                        "edgeguard jwt-shape: could read {} of the {body_size} request body bytes",
                        read.map_or(0, |b| b.len())
                    ),
                );
                deny(
                    host,
                    metrics,
                    Denial {
                        status: 500,
                        reason: "body_unreadable",
                        message: "the request body could not be read".to_string(),
                        challenge: Challenge::None,
                    },
                );
                return BodyOutcome::Denied;
            }
        }
    };
    if body.len() > MAX_BODY_BYTES {
        return too_large();
    }
    let body_subset = match subset::subset_from_body(&body) {
        Ok(s) => s,
        Err(e) => {
            deny(host, metrics, Denial::bad_request("bad_body", e));
            return BodyOutcome::Denied;
        }
    };
    if let Err(r) = subset::check(&check.grant, &body_subset) {
        deny(host, metrics, Denial::forbidden(r.reason(), r));
        return BodyOutcome::Denied;
    }
    metrics.increment(metrics::ALLOWED);
    BodyOutcome::Allowed
}

/// The response side: adds `Authorization` to `Vary` when the request was decided on a token.
pub fn on_response<H: Host>(host: &H, vary: bool) {
    if !vary {
        return;
    }
    let existing = host.response_header("vary");
    if let Some(v) = vary_value(existing.as_deref()) {
        host.set_response_header("vary", &v);
    }
}

/// Adds `Authorization` to the response's `Vary` (keeping what upstream set, byte for byte:
/// an upstream value that is not UTF-8 is extended, not decoded).
pub fn vary_value(existing: Option<&[u8]>) -> Option<Vec<u8>> {
    const NAME: &[u8] = b"Authorization";
    match existing {
        None => Some(NAME.to_vec()),
        Some(v)
            if v.split(|b| *b == b',').any(|p| {
                let p = p.trim_ascii();
                p.eq_ignore_ascii_case(b"authorization") || p == b"*"
            }) =>
        {
            None
        }
        Some(v) if v.trim_ascii().is_empty() => Some(NAME.to_vec()),
        Some(v) => {
            let mut out = v.to_vec();
            out.extend_from_slice(b", ");
            out.extend_from_slice(NAME);
            Some(out)
        }
    }
}

/// The answer when a request would wait for keys but too many already do.
pub fn too_many_waiting<H: Host, M: Metrics>(host: &H, metrics: &M) {
    host.send_response(
        503,
        &[("content-type", "application/json"), ("retry-after", "1")],
        &json_body(503, "too many requests waiting for signing keys"),
    );
    metrics.increment(&metrics::denied("keys_unavailable"));
}
