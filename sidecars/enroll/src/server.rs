//! Assembly and the HTTP API.
//!
//! Admin (Bearer admin token; 401 otherwise):
//! - `POST /admin/v1/enrollment-tokens` `{"account_id", "ttl_seconds"?, "uses"?}` → 201
//!   `{"id", "token", "account_id", "expires_at", "uses"}` (the token is shown once);
//! - `GET /admin/v1/devices[?account_id=]` → `{"devices": [...]}`; `GET /admin/v1/devices/{id}`;
//! - `POST /admin/v1/devices/{id}/revoke` → 200 the device (idempotent);
//! - `POST /admin/v1/devices/{id}/rekey` `{"ttl_seconds"?}` → 201 a one-use token bound to
//!   the device;
//! - `GET /admin/v1/revoked-certificates[?device_id=]`.
//!
//! Device: `POST /enroll/v1` with `Authorization: Bearer <enrollment token>` and a PEM (or
//! DER) CSR → 200 `application/pem-certificate-chain` (device certificate, then the CA's).
//!
//! Errors are `{"code": N, "error": "<code>", "message": "..."}`. Also `/healthz`, `/readyz`,
//! `/metrics`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::ca::{Ca, CaError};
use crate::config::{check_trust_domain, AdminToken, EnrollArgs, MAX_ENROLLMENT_TOKEN_TTL};
use crate::csr::{self, MAX_CSR_BYTES};
use crate::metrics::Metrics;
use crate::registry::{Device, DeviceError, EnrollError as Refused, Registry, TokenRecord};
use crate::registry_file::FileRegistry;
use crate::registry_pg::PgRegistry;
use crate::{hex, now, random_hex, rfc3339};

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Ca(#[from] CaError),
    #[error("device registry: {0}")]
    Registry(#[from] crate::registry::StoreError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The largest admin request body.
const MAX_ADMIN_BODY: usize = 16 * 1024;
/// Uses one enrollment token may have.
pub const MAX_USES: i64 = 10_000;
/// The longest account id.
pub const MAX_ACCOUNT_ID: usize = 128;

/// Everything a request needs.
pub struct App {
    pub registry: Registry,
    pub ca: Ca,
    pub admin: AdminToken,
    pub metrics: Arc<Metrics>,
    pub default_token_ttl: i64,
    /// Seconds before a certificate's end from which a device counts as expiring.
    pub expiry_warning: i64,
    /// Seconds a heartbeat counts a device as seen.
    pub seen_window: i64,
}

const JSON_TYPE: &str = "application/json";
const CHAIN_TYPE: &str = "application/pem-certificate-chain";

fn respond(status: u16, body: String, extra: Vec<(HeaderName, HeaderValue)>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in extra {
        r.headers_mut().append(k, v);
    }
    r
}

/// `{"code", "error", "message"}`; a 401 carries a Bearer challenge.
fn refusal(status: u16, error: &str, message: impl Into<String>) -> Response {
    let body = json!({"code": status, "error": error, "message": message.into()}).to_string();
    let mut extra = Vec::new();
    if status == 401 {
        let challenge = if error.starts_with("missing") {
            "Bearer realm=\"edgeguard-enroll\""
        } else {
            "Bearer realm=\"edgeguard-enroll\", error=\"invalid_token\""
        };
        extra.push((
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        ));
    }
    respond(status, body, extra)
}

/// The bearer credential of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl App {
    /// `None` when the admin token is presented; the 401 otherwise.
    fn admin_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        match bearer(headers) {
            None => {
                self.metrics
                    .admin_refused
                    .with_label_values(&["missing_credentials"])
                    .inc();
                Some(refusal(
                    401,
                    "missing_credentials",
                    "the admin API needs `Authorization: Bearer <EDGEGUARD_ENROLL_ADMIN_TOKEN>`",
                ))
            }
            Some(t) if self.admin.matches(t) => None,
            Some(_) => {
                self.metrics
                    .admin_refused
                    .with_label_values(&["invalid_admin_token"])
                    .inc();
                warn!("admin request with a wrong token refused");
                Some(refusal(
                    401,
                    "invalid_admin_token",
                    "the bearer token is not the admin token",
                ))
            }
        }
    }

    /// A token's lifetime from a request (`None`: the default), checked; the error is the
    /// message of a 400.
    fn token_ttl(&self, ttl_seconds: Option<i64>) -> Result<i64, String> {
        let ttl = ttl_seconds.unwrap_or(self.default_token_ttl);
        let max = i64::try_from(MAX_ENROLLMENT_TOKEN_TTL.as_secs()).unwrap_or(i64::MAX);
        if ttl < 1 || ttl > max {
            return Err(format!("ttl_seconds must be from 1 to {max} (7 days)"));
        }
        Ok(ttl)
    }
}

/// Whether `d` is active and its certificate ends within `window` seconds of `t`.
fn expiring(d: &Device, t: i64, window: i64) -> bool {
    d.state(t) == crate::registry::DeviceState::Active && d.not_after.saturating_sub(t) <= window
}

/// The expiry scanner: every `interval`, counts the active devices whose certificate ends
/// within `window` (gauge) and logs each one once as it enters the window, and each device
/// whose certificate has expired once (Envoy's verdicts refuse expired certificates whatever
/// the TLS settings; this is the operator's early warning to re-key).
async fn scan_expiry(app: Arc<App>, interval: std::time::Duration) {
    let mut warned: std::collections::HashSet<(String, i64)> = Default::default();
    let mut expired_logged: std::collections::HashSet<(String, i64)> = Default::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let list = match tokio::time::timeout(
            std::time::Duration::from_secs(30),
            app.registry.devices(None),
        )
        .await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                warn!(error = %e, "device expiry scan: cannot read the registry");
                continue;
            }
            Err(_) => {
                warn!("device expiry scan: reading the registry timed out");
                continue;
            }
        };
        let t = now();
        let mut count = 0i64;
        for d in &list {
            let key = (d.id.clone(), d.not_after);
            if expiring(d, t, app.expiry_warning) {
                count += 1;
                if warned.insert(key) {
                    warn!(
                        device_id = %d.id,
                        account_id = %d.account_id,
                        not_after = %crate::rfc3339::format(d.not_after),
                        expires_in_s = d.not_after - t,
                        "device certificate expires soon: re-key it (POST /admin/v1/devices/{{id}}/rekey)"
                    );
                }
            } else if d.state(t) == crate::registry::DeviceState::Expired
                && expired_logged.insert(key)
            {
                info!(
                    device_id = %d.id,
                    account_id = %d.account_id,
                    not_after = %crate::rfc3339::format(d.not_after),
                    "device certificate expired"
                );
            }
        }
        app.metrics.expiring.set(count);
        // forget devices no longer in the registry or re-keyed (a new not_after)
        let current: std::collections::HashSet<(String, i64)> =
            list.iter().map(|d| (d.id.clone(), d.not_after)).collect();
        warned.retain(|k| current.contains(k));
        expired_logged.retain(|k| current.contains(k));
    }
}

fn device_json(d: &Device) -> Json {
    serde_json::to_value(d).unwrap_or(Json::Null)
}

/// The JSON body (empty: the defaults); the error is the message of a 400.
fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, String> {
    if body.trim_ascii().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("the body must be a JSON object: {e}"))
}

fn bad_request(message: String) -> Response {
    refusal(400, "bad_request", message)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    account_id: String,
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    uses: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyRequest {
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

fn new_token(
    account_id: &str,
    device_id: Option<&str>,
    ttl: i64,
    uses: i64,
) -> (String, TokenRecord) {
    let token = format!("egenr_{}", random_hex(32));
    let at = now();
    let record = TokenRecord {
        id: format!("tok_{}", random_hex(8)),
        digest: hex(&Sha256::digest(token.as_bytes())),
        account_id: account_id.to_string(),
        device_id: device_id.map(str::to_string),
        expires_at: at.saturating_add(ttl),
        uses_left: uses,
        created_at: at,
    };
    (token, record)
}

fn token_answer(token: &str, t: &TokenRecord) -> Json {
    let mut v = json!({
        "id": t.id,
        "token": token,
        "account_id": t.account_id,
        "expires_at": rfc3339::format(t.expires_at),
        "uses": t.uses_left,
    });
    if let Some(d) = &t.device_id {
        v["device_id"] = json!(d);
    }
    v
}

fn store_failure(e: &dyn std::fmt::Display) -> Response {
    error!(error = %e, "device registry failed");
    refusal(
        503,
        "store_unavailable",
        "the device registry is unavailable; retry later",
    )
}

async fn create_token(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    let req: TokenRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    let account = req.account_id.trim();
    if account.is_empty()
        || account.chars().count() > MAX_ACCOUNT_ID
        || account.chars().any(char::is_control)
    {
        return refusal(
            400,
            "bad_request",
            format!(
                "account_id is required: 1 to {MAX_ACCOUNT_ID} characters, no control characters"
            ),
        );
    }
    let ttl = match app.token_ttl(req.ttl_seconds) {
        Ok(t) => t,
        Err(m) => return bad_request(m),
    };
    let uses = req.uses.unwrap_or(1);
    if !(1..=MAX_USES).contains(&uses) {
        return refusal(
            400,
            "bad_request",
            format!("uses must be from 1 to {MAX_USES}"),
        );
    }
    let (token, record) = new_token(account, None, ttl, uses);
    if let Err(e) = app.registry.create_token(&record).await {
        return store_failure(&e);
    }
    app.metrics
        .tokens_created
        .with_label_values(&["enroll"])
        .inc();
    info!(token_id = %record.id, account_id = %record.account_id, uses, expires_at = %rfc3339::format(record.expires_at), "enrollment token created");
    respond(201, token_answer(&token, &record).to_string(), Vec::new())
}

#[derive(Deserialize)]
struct DeviceFilter {
    account_id: Option<String>,
    /// Only active devices whose certificate expires within the expiry warning window.
    #[serde(default)]
    expiring: bool,
    /// Only devices seen (a heartbeat) within EDGEGUARD_DEVICE_SEEN_WINDOW.
    #[serde(default)]
    seen: bool,
}

async fn list_devices(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<DeviceFilter>,
) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    match app.registry.devices(q.account_id.as_deref()).await {
        Ok(list) => {
            let t = now();
            let devices: Vec<Json> = list
                .iter()
                .filter(|d| !q.expiring || expiring(d, t, app.expiry_warning))
                .filter(|d| {
                    !q.seen
                        || d.last_seen_at
                            .is_some_and(|s| s >= t.saturating_sub(app.seen_window))
                })
                .map(device_json)
                .collect();
            respond(200, json!({ "devices": devices }).to_string(), Vec::new())
        }
        Err(e) => store_failure(&e),
    }
}

async fn get_device(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    match app.registry.device(&id).await {
        Ok(Some(d)) => respond(200, device_json(&d).to_string(), Vec::new()),
        Ok(None) => refusal(404, "device_not_found", format!("no device {id}")),
        Err(e) => store_failure(&e),
    }
}

fn device_error(e: DeviceError) -> Response {
    match e {
        DeviceError::NotFound(id) => refusal(404, "device_not_found", format!("no device {id}")),
        DeviceError::Revoked(id) => refusal(
            409,
            "device_revoked",
            format!("the device {id} is revoked: enroll a new device instead"),
        ),
        DeviceError::Store(e) => store_failure(&e),
    }
}

async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    let at = now();
    match app.registry.revoke(&id, at).await {
        Ok(d) => {
            let fresh = d.revoked_at == Some(at);
            let result = if fresh { "revoked" } else { "already_revoked" };
            app.metrics.revocations.with_label_values(&[result]).inc();
            info!(device_id = %d.id, account_id = %d.account_id, fingerprint_sha256 = %d.fingerprint_sha256, result, "device revoked");
            respond(200, device_json(&d).to_string(), Vec::new())
        }
        Err(e) => device_error(e),
    }
}

/// Revokes an account: voids its unused enrollment and re-key tokens, then revokes every device
/// of it (each durably, one after the other; a retry finishes what a failure left): the
/// account's devices are refused by every Envoy within the store's propagation time.
async fn revoke_account(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(account_id): UrlPath<String>,
) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    // first the tokens (no device of the account can enroll from now on), then the devices
    let voided = match app.registry.void_account_tokens(&account_id).await {
        Ok(n) => n,
        Err(e) => return store_failure(&e),
    };
    let devices = match app.registry.devices(Some(&account_id)).await {
        Ok(d) => d,
        Err(e) => return store_failure(&e),
    };
    let at = now();
    let mut revoked = Vec::new();
    let mut already = 0usize;
    for d in devices {
        if d.revoked_at.is_some() {
            already += 1;
            continue;
        }
        match app.registry.revoke(&d.id, at).await {
            Ok(done) => {
                app.metrics
                    .revocations
                    .with_label_values(&["revoked"])
                    .inc();
                info!(device_id = %done.id, account_id = %done.account_id, fingerprint_sha256 = %done.fingerprint_sha256, "device revoked (account revoked)");
                revoked.push(done.id);
            }
            Err(e) => return device_error(e),
        }
    }
    info!(account_id = %account_id, revoked = revoked.len(), already_revoked = already, tokens_voided = voided, "account's devices revoked");
    respond(
        200,
        json!({"account_id": account_id, "revoked": revoked, "already_revoked": already, "tokens_voided": voided})
            .to_string(),
        Vec::new(),
    )
}

async fn rekey(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    let req: RekeyRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    let ttl = match app.token_ttl(req.ttl_seconds) {
        Ok(t) => t,
        Err(m) => return bad_request(m),
    };
    let device = match app.registry.device(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => return refusal(404, "device_not_found", format!("no device {id}")),
        Err(e) => return store_failure(&e),
    };
    let (token, record) = new_token(&device.account_id, Some(&device.id), ttl, 1);
    if let Err(e) = app.registry.create_rekey_token(&record).await {
        return device_error(e);
    }
    app.metrics
        .tokens_created
        .with_label_values(&["rekey"])
        .inc();
    info!(token_id = %record.id, device_id = %device.id, account_id = %device.account_id, expires_at = %rfc3339::format(record.expires_at), "re-key token created");
    respond(201, token_answer(&token, &record).to_string(), Vec::new())
}

#[derive(Deserialize)]
struct RevokedFilter {
    device_id: Option<String>,
}

async fn revoked_certificates(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<RevokedFilter>,
) -> Response {
    if let Some(r) = app.admin_refusal(&headers) {
        return r;
    }
    match app
        .registry
        .revoked_certificates(q.device_id.as_deref())
        .await
    {
        Ok(list) => respond(
            200,
            json!({ "revoked_certificates": list }).to_string(),
            Vec::new(),
        ),
        Err(e) => store_failure(&e),
    }
}

/// The status, error code and message of a refused enrollment.
fn enroll_refusal(e: &Refused) -> (u16, &'static str, String) {
    match e {
        Refused::UnknownToken => (
            401,
            "unknown_token",
            "the enrollment token is unknown".into(),
        ),
        Refused::TokenExpired => (
            403,
            "token_expired",
            "the enrollment token has expired: ask for a new one".into(),
        ),
        Refused::TokenUsedUp => (
            403,
            "token_used_up",
            "the enrollment token has been used as often as it allows: ask for a new one".into(),
        ),
        Refused::DeviceRevoked(id) => (
            403,
            "device_revoked",
            format!("the device {id} this re-key token is for has been revoked"),
        ),
        Refused::Csr(c) => (400, c.error, c.message.clone()),
        Refused::Issue(_) => (
            500,
            "internal",
            "the certificate could not be signed".into(),
        ),
        Refused::Store(_) => (
            503,
            "store_unavailable",
            "the device registry is unavailable; nothing was issued, retry later".into(),
        ),
    }
}

async fn enroll(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = bearer(&headers) else {
        app.metrics.enrollment("missing_token");
        return refusal(
            401,
            "missing_token",
            "send the enrollment token as `Authorization: Bearer <token>`",
        );
    };
    let digest = hex(&Sha256::digest(token));
    let at = now();
    let ca = &app.ca;
    let result = app
        .registry
        .enroll(&digest, at, |grant| {
            let accepted = csr::check(&body)?;
            let issued = ca.issue(&accepted, &grant.device_id, at)?;
            Ok((issued, accepted.label))
        })
        .await;
    match result {
        Ok(done) => {
            let rekeyed = done.grant.replaces.is_some();
            app.metrics
                .enrollment(if rekeyed { "rekeyed" } else { "issued" });
            info!(
                device_id = %done.grant.device_id,
                account_id = %done.grant.account_id,
                token_id = %done.grant.token_id,
                spiffe_id = %done.issued.spiffe_id,
                fingerprint_sha256 = %done.issued.fingerprint_sha256,
                serial = %done.issued.serial,
                not_after = %rfc3339::format(done.issued.not_after),
                label = %done.label,
                replaced = done.grant.replaces.as_deref().unwrap_or(""),
                "device {}", if rekeyed { "re-keyed" } else { "enrolled" }
            );
            let mut r = Response::new(Body::from(done.issued.chain_pem));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CHAIN_TYPE));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            for (name, value) in [
                ("edgeguard-device-id", &done.grant.device_id),
                ("edgeguard-spiffe-id", &done.issued.spiffe_id),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    r.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            r
        }
        Err(e) => {
            let (status, code, message) = enroll_refusal(&e);
            app.metrics.enrollment(code);
            match &e {
                Refused::Store(_) | Refused::Issue(_) => {
                    error!(error = %e, "enrollment failed")
                }
                _ => info!(error = code, detail = %e, "enrollment refused"),
            }
            refusal(status, code, message)
        }
    }
}

async fn healthz() -> Response {
    respond(
        200,
        json!({"status": "ok", "service": "edgeguard-enroll"}).to_string(),
        Vec::new(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let ready = tokio::time::timeout(Duration::from_secs(2), app.registry.ready()).await;
    let (ok, problem) = match ready {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (
            false,
            Some("the registry did not answer within 2 s".to_string()),
        ),
    };
    let body = json!({
        "ready": ok,
        "registry": app.registry.describe(),
        "problem": problem,
        "ca": app.ca.subject(),
    });
    respond(if ok { 200 } else { 503 }, body.to_string(), Vec::new())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let t = now();
    let counts = app.registry.counts(t, t.saturating_sub(app.seen_window));
    match tokio::time::timeout(Duration::from_secs(2), counts).await {
        Ok(Ok(c)) => app.metrics.set_devices(c),
        Ok(Err(e)) => warn!(error = %e, "cannot count devices for /metrics"),
        Err(_) => warn!("counting devices for /metrics timed out"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    refusal(
        404,
        "not_found",
        "POST /enroll/v1; admin: POST /admin/v1/enrollment-tokens, GET /admin/v1/devices[/{id}], POST /admin/v1/devices/{id}/revoke, POST /admin/v1/devices/{id}/rekey, POST /admin/v1/accounts/{id}/revoke, GET /admin/v1/revoked-certificates; /healthz, /readyz, /metrics",
    )
}

/// The router (for the server and tests).
pub fn router(app: Arc<App>) -> axum::Router {
    let admin = axum::Router::new()
        .route("/admin/v1/enrollment-tokens", post(create_token))
        .route("/admin/v1/devices", get(list_devices))
        .route("/admin/v1/devices/{id}", get(get_device))
        .route("/admin/v1/devices/{id}/revoke", post(revoke))
        .route("/admin/v1/devices/{id}/rekey", post(rekey))
        .route("/admin/v1/accounts/{id}/revoke", post(revoke_account))
        .route("/admin/v1/revoked-certificates", get(revoked_certificates))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY));
    axum::Router::new()
        .route(
            "/enroll/v1",
            post(enroll).layer(DefaultBodyLimit::max(MAX_CSR_BYTES)),
        )
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
}

fn init_logging(args: &EnrollArgs) {
    edgeguard_logging::init(
        &args.log_level,
        "hyper=warn,sqlx=warn",
        args.log_format,
        edgeguard_logging::stdout_is_terminal(),
    );
}

fn config(message: impl Into<String>) -> EnrollError {
    EnrollError::Config(message.into())
}

fn seconds(flag: &str, d: Duration, min: u64, max: u64) -> Result<i64, EnrollError> {
    let s = d.as_secs();
    if s < min || s > max || d.subsec_nanos() != 0 {
        return Err(config(format!(
            "{flag} must be a whole number of seconds from {min}s to {max}s"
        )));
    }
    i64::try_from(s).map_err(|_| config(format!("{flag} is too large")))
}

fn required<'a>(value: Option<&'a Path>, what: &str) -> Result<&'a Path, EnrollError> {
    value.ok_or_else(|| config(format!("{what} is required")))
}

/// Runs `edgeguard enroll` until SIGINT/SIGTERM.
pub async fn run(args: EnrollArgs) -> Result<(), EnrollError> {
    init_logging(&args);
    let admin = AdminToken::new(args.admin_token.as_ref()).map_err(config)?;
    let trust_domain = args.trust_domain.clone().ok_or_else(|| {
        config("EDGEGUARD_TRUST_DOMAIN (--trust-domain) is required: the SPIFFE trust domain of device ids, e.g. edge.example")
    })?;
    check_trust_domain(&trust_domain).map_err(config)?;
    let cert_ttl = seconds(
        "EDGEGUARD_DEVICE_CERT_TTL (--device-cert-ttl)",
        args.device_cert_ttl,
        60,
        10 * 365 * 86400,
    )?;
    let token_ttl = seconds(
        "EDGEGUARD_ENROLLMENT_TOKEN_TTL (--enrollment-token-ttl)",
        args.enrollment_token_ttl,
        1,
        MAX_ENROLLMENT_TOKEN_TTL.as_secs(),
    )?;
    let ca_cert = required(
        args.ca_cert.as_deref(),
        "EDGEGUARD_CA_CERT (--ca-cert), the fleet CA certificate (PEM),",
    )?;
    let ca_key = required(
        args.ca_key.as_deref(),
        "EDGEGUARD_CA_KEY (--ca-key), the fleet CA private key (PKCS#8 PEM),",
    )?;
    let ca = Ca::load(ca_cert, ca_key, &trust_domain, cert_ttl, now())?;
    if now().saturating_add(cert_ttl) > ca.not_after() {
        warn!(
            ca_not_after = %rfc3339::format(ca.not_after()),
            "the CA expires before a device certificate's lifetime: certificates end with the CA; renew the CA"
        );
    }
    let registry = match (&args.postgres_connection_string, &args.devices_file) {
        (Some(_), Some(_)) => {
            return Err(config(
                "set either POSTGRES_CONNECTION_STRING or EDGEGUARD_DEVICES_FILE, not both",
            ))
        }
        (Some(url), None) => Registry::Postgres(PgRegistry::connect(url.expose()).map_err(config)?),
        (None, Some(path)) => Registry::File(FileRegistry::open(path)?),
        (None, None) => {
            return Err(config(
                "no device registry: set POSTGRES_CONNECTION_STRING (Postgres with migration 0005: `edgeguard migrate`) or EDGEGUARD_DEVICES_FILE (a YAML file)",
            ))
        }
    };
    let metrics = Arc::new(Metrics::new()?);
    metrics.ca_not_after.set(ca.not_after());
    info!(
        registry = %registry.describe(),
        ca = %ca.subject(),
        ca_not_after = %rfc3339::format(ca.not_after()),
        trust_domain = %trust_domain,
        device_cert_ttl_s = cert_ttl,
        enrollment_token_ttl_s = token_ttl,
        "device enrollment configured"
    );
    if let Err(e) = registry.ready().await {
        warn!(error = %e, "the device registry is not ready yet (readyz answers 503 until it is)");
    }
    let app = Arc::new(App {
        registry,
        ca,
        admin,
        metrics,
        default_token_ttl: token_ttl,
        expiry_warning: i64::try_from(args.device_expiry_warning.as_secs()).unwrap_or(i64::MAX),
        seen_window: i64::try_from(args.device_seen_window.as_secs()).unwrap_or(i64::MAX),
    });
    tokio::spawn(scan_expiry(
        app.clone(),
        args.device_expiry_scan_interval
            .max(std::time::Duration::from_millis(100)),
    ));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| EnrollError::Listen {
            addr: args.listen,
            source,
        })?;
    info!(listen = %args.listen, "edgeguard enroll listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(edgeguard_shutdown::signal())
        .await
        .map_err(EnrollError::Serve)
}
