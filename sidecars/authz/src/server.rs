//! Assembly: logging, metrics, the store, gRPC (authz + health + reflection) and the HTTP
//! server for /metrics, /healthz and /readyz; graceful shutdown on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use edgeguard_portal_store as store;
use edgeguard_verdict::portal::{CheckOptions, PortalView};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::config::{AuthzArgs, StoreToken};
use crate::metrics::Metrics;
use crate::service::AuthzService;
use crate::{StoreHandle, EXT_AUTHZ_DESCRIPTOR};
use edgeguard_metering::{
    MemorySink, MemoryTarget, Metering, MeteringConfig, Month, PgSink, Target, UsageAck,
    UsageReport,
};

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn init_logging(args: &AuthzArgs) {
    edgeguard_logging::init(
        &args.logger_level,
        "h2=warn,hyper=warn,tower=warn,sqlx=warn",
        args.log_format,
        true,
    );
}

/// Adapts the store to the service.
struct StoreAdapter(Arc<store::Store>);

impl StoreHandle for StoreAdapter {
    fn view(&self) -> Arc<dyn PortalView + Send + Sync> {
        self.0.snapshot()
    }

    fn now_unix(&self) -> i64 {
        self.0.now_unix()
    }
}

/// Where metered totals go: this replica's store.
struct MeterTarget(Arc<store::Store>);

impl Target for MeterTarget {
    fn now_unix(&self) -> i64 {
        self.0.now_unix()
    }

    fn publish_totals(&self, month: Month, totals: Vec<(Arc<str>, u64)>) {
        self.0.publish_usage_totals(month, totals);
    }
}

impl MemoryTarget for MeterTarget {
    fn add_metered(&self, month: Month, deltas: Vec<(Arc<str>, u64)>) -> Vec<(Arc<str>, u64)> {
        self.0.add_metered(month, deltas)
    }
}

/// Feeds store events into the metrics.
struct Observer(Arc<Metrics>);

impl store::StoreObserver for Observer {
    fn refresh_ok(&self, event: &store::RefreshOk) {
        let m = &self.0;
        let source = event.source_type.as_str();
        m.refresh_duration
            .with_label_values(&[source, event.kind.as_str()])
            .observe(event.duration.as_secs_f64());
        if event.source_type == store::SourceType::PortalAppStore {
            m.store_size
                .with_label_values(&["portal_apps"])
                .set(event.apps as i64);
            m.store_size
                .with_label_values(&["accounts"])
                .set(event.accounts as i64);
        }
    }

    fn refresh_error(&self, source_type: store::SourceType, error_type: store::ErrorType) {
        self.0
            .refresh_errors
            .with_label_values(&[source_type.as_str(), error_type.as_str()])
            .inc();
    }

    fn usage(&self, summary: &[store::AccountUsage]) {
        let m = &self.0;
        let mut over = 0i64;
        let mut limited = 0i64;
        let mut usage_series = Vec::with_capacity(summary.len());
        let mut limited_series = Vec::new();
        for a in summary {
            let limit = a.limit.to_string();
            if a.usage >= edgeguard_verdict::portal::FREE_MONTHLY_RELAYS {
                over += 1;
            }
            if a.limited {
                limited += 1;
                limited_series.push((
                    vec![
                        a.account_id.clone(),
                        a.plan.clone(),
                        format!("{:.2}", a.usage as f64),
                        limit.clone(),
                    ],
                    a.usage as f64,
                ));
            }
            usage_series.push((
                vec![a.account_id.clone(), a.plan.clone(), limit],
                a.usage as f64,
            ));
        }
        // one series per account as of now: old usage values, plans and limits are removed
        m.account_usage.replace(usage_series);
        m.rate_limited_accounts.replace(limited_series);
        m.store_size
            .with_label_values(&["accounts_over_monthly_limit"])
            .set(over);
        m.store_size
            .with_label_values(&["rate_limited_accounts"])
            .set(limited);
    }

    fn notification(&self, table: &str) {
        self.0
            .notifications
            .with_label_values(&[crate::metrics::notification_table_label(table)])
            .inc();
    }
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    store: Arc<store::Store>,
    image_tag: String,
    /// SHA-256 of the store feed's bearer token; `None`: the feed is off.
    store_token: Option<[u8; 32]>,
    /// Usage metering, when on.
    metering: Option<Arc<Metering>>,
}

async fn metrics_handler(State(s): State<Http>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<Http>) -> impl IntoResponse {
    let body = serde_json::json!({"status": "healthy", "service": "edgeguard-authz", "version": s.image_tag});
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

async fn readyz(State(s): State<Http>) -> impl IntoResponse {
    let snap = s.store.snapshot();
    let staleness = s.store.staleness().map(|d| d.as_secs_f64());
    // ready = apps *and* this month's usage loaded (quotas cannot be enforced without usage)
    let body = serde_json::json!({
        "ready": snap.loaded(),
        "apps_loaded": snap.apps_loaded(),
        "usage_loaded": snap.usage_loaded(),
        "version": snap.version(),
        "staleness_seconds": staleness,
    });
    let code = if snap.loaded() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

/// The `since` of `?since=<version>` (0 when absent); `None` when it is not a number.
/// The feed's query: `since=<version>` and, for the later parts of a full copy,
/// `part=<i>&parts=<n>` (`None`: malformed).
fn feed_params(query: Option<&str>) -> Option<(u64, Option<(u32, u32)>)> {
    let (mut since, mut part, mut parts) = (0, None, None);
    for pair in query.unwrap_or_default().split('&') {
        if let Some(v) = pair.strip_prefix("since=") {
            since = v.parse().ok()?;
        } else if let Some(v) = pair.strip_prefix("part=") {
            part = Some(v.parse::<u32>().ok()?);
        } else if let Some(v) = pair.strip_prefix("parts=") {
            parts = Some(v.parse::<u32>().ok()?);
        }
    }
    match (part, parts) {
        (None, None) => Some((since, None)),
        (Some(p), Some(n)) if p < n && n <= crate::sync::MAX_PARTS => Some((since, Some((p, n)))),
        _ => None,
    }
}

/// Whether the request carries `Authorization: Bearer <token>` (scheme case-insensitive)
/// with the token whose SHA-256 is `expected`. Digests are compared in constant time, so
/// neither the token's bytes nor its length show in the timing.
fn bearer_ok(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    let Some((scheme, rest)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let presented: [u8; 32] = Sha256::digest(rest.trim_ascii()).into();
    presented.ct_eq(expected).into()
}

fn json_response(
    status: StatusCode,
    error: &str,
    message: &str,
    extra: Option<(header::HeaderName, &'static str)>,
) -> axum::response::Response {
    let body = serde_json::json!({"code": status.as_u16(), "error": error, "message": message});
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response();
    if let Some((name, value)) = extra {
        r.headers_mut()
            .insert(name, axum::http::HeaderValue::from_static(value));
    }
    r
}

/// The store feed's credential check (shared by every `/store/v1` and `/usage/v1` endpoint):
/// `Some((metric label, answer))` when the feed is off (404) or the bearer token is wrong
/// (401); `None` when the request may go on.
fn feed_refusal(s: &Http, headers: &HeaderMap) -> Option<(&'static str, axum::response::Response)> {
    let Some(expected) = &s.store_token else {
        return Some((
            "disabled",
            json_response(
                StatusCode::NOT_FOUND,
                "disabled",
                "the store feed is disabled: set EDGEGUARD_STORE_TOKEN (at least 32 bytes) on edgeguard authz, and the same token on the portal-auth filters, to enable it",
                None,
            ),
        ));
    };
    if !bearer_ok(headers, expected) {
        tracing::debug!("store feed request without a valid bearer token");
        return Some((
            "unauthorized",
            json_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the store feed requires Authorization: Bearer <EDGEGUARD_STORE_TOKEN>",
                Some((header::WWW_AUTHENTICATE, "Bearer realm=\"edgeguard-store\"")),
            ),
        ));
    }
    None
}

/// `POST /store/v1/usage`: a portal-auth filter's [`UsageReport`]. Answered `200` with a
/// [`UsageAck`] once the report is durable (or was already: a retry), so the filter may
/// forget it; `503` when it could not be written (the filter keeps it and retries); `404`
/// when metering is off; `400` when it does not decode.
async fn usage_report(
    State(s): State<Http>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if let Some((_, response)) = feed_refusal(&s, &headers) {
        return response;
    }
    let Some(metering) = &s.metering else {
        return json_response(
            StatusCode::NOT_FOUND,
            "metering_off",
            "usage metering is off on this edgeguard authz: set EDGEGUARD_METERING=true (or turn metering off in the portal-auth filters)",
            None,
        );
    };
    let report = match UsageReport::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            metering.refused();
            warn!(error = %e, "usage report refused");
            return json_response(StatusCode::BAD_REQUEST, "bad_request", &e, None);
        }
    };
    let (reporter, seq) = (report.reporter.clone(), report.seq);
    match metering.submit(report).await {
        Ok(applied) => (
            [(
                header::CONTENT_TYPE,
                edgeguard_verdict::portal_wire::USAGE_CONTENT_TYPE,
            )],
            UsageAck {
                reporter,
                seq,
                applied,
            }
            .encode(),
        )
            .into_response(),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_recorded",
            &format!("usage report not recorded, send it again: {e}"),
            None,
        ),
    }
}

/// `GET /usage/v1/accounts/{account_id}`: how much an account used this month, as this
/// replica's store sees it (what the verdict enforces), with its limit and when it resets.
async fn account_usage(
    State(s): State<Http>,
    headers: HeaderMap,
    axum::extract::Path(account_id): axum::extract::Path<String>,
) -> axum::response::Response {
    if let Some((_, response)) = feed_refusal(&s, &headers) {
        return response;
    }
    let snap = s.store.snapshot();
    if !snap.is_loaded() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_loaded",
            "portal app store is not loaded yet",
            None,
        );
    }
    let mut apps: Vec<&str> = Vec::new();
    let mut first = None;
    for (id, app) in snap.apps() {
        if *app.account_id == *account_id {
            first.get_or_insert(app);
            apps.push(id);
        }
    }
    let Some(app) = first else {
        return json_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no app of the store belongs to this account",
            None,
        );
    };
    apps.sort_unstable();
    let used = snap.account_usage(&account_id).unwrap_or(0);
    let now = s.store.now_unix();
    let quota = edgeguard_verdict::quota::QuotaState::of(app, Some(used), now);
    let body = serde_json::json!({
        "account_id": account_id,
        "month": edgeguard_verdict::quota::Month::of(now).to_string(),
        "relays": used,
        "plan": &*app.plan,
        "limit": quota.map(|q| q.limit),
        "remaining": quota.map(|q| q.remaining()),
        "limited": quota.is_some_and(|q| q.used > q.limit),
        "resets_in_seconds": edgeguard_verdict::quota::seconds_until_reset(now),
        "apps": apps,
        "metering": s.metering.is_some(),
        "store_version": snap.version(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The versioned store endpoint the portal-auth filter syncs from: the changes since
/// `?since=<version>` (a full copy when the change log cannot answer), `304` when nothing
/// changed, `503` before the store is loaded (apps and usage). It lists every app and
/// account with key digests (never keys), so it requires `Authorization: Bearer <token>`
/// (`EDGEGUARD_STORE_TOKEN`): `401` without it, and `404` when no token is configured.
async fn store_snapshot(
    State(s): State<Http>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let count = |result: &str| {
        s.metrics
            .store_feed_requests
            .with_label_values(&[result])
            .inc()
    };
    if let Some((result, response)) = feed_refusal(&s, &headers) {
        count(result);
        return response;
    }
    let Some((since, part)) = feed_params(query.as_deref()) else {
        count("bad_request");
        return json_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "since must be a version number, part and parts numbers with part < parts",
            None,
        );
    };
    let snap = s.store.snapshot();
    if !snap.is_loaded() {
        count("not_loaded");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "portal app store is not loaded yet\n",
        )
            .into_response();
    }
    let update = match part {
        Some((part, parts)) => Some(crate::sync::full_part(&snap, part, parts)),
        None => crate::sync::update_since(&s.store, &snap, since),
    };
    match update {
        None => {
            count("not_modified");
            StatusCode::NOT_MODIFIED.into_response()
        }
        Some(u) => {
            count(if u.full { "full" } else { "delta" });
            (
                [(
                    header::CONTENT_TYPE,
                    edgeguard_verdict::portal_wire::CONTENT_TYPE,
                )],
                u.encode(),
            )
                .into_response()
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AuthzError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AuthzError::Listen { addr, source })
}

/// Runs `edgeguard authz` until SIGINT/SIGTERM.
pub async fn run(args: AuthzArgs) -> Result<(), AuthzError> {
    init_logging(&args);
    let source = match (&args.postgres_connection_string, &args.portal_apps_file) {
        (Some(url), _) => store::Source::Postgres { url: url.clone() },
        (None, Some(path)) => store::Source::Yaml { path: path.clone() },
        (None, None) => {
            return Err(AuthzError::Config(
                "set POSTGRES_CONNECTION_STRING (Postgres with the Grove schema) or PORTAL_APPS_FILE (DB-less YAML)".into(),
            ))
        }
    };
    let store_token: Option<[u8; 32]> = StoreToken::validate(args.store_token.as_ref())
        .map_err(AuthzError::Config)?
        .map(|t| Sha256::digest(t.expose().as_bytes()).into());
    let grpc_addr = SocketAddr::new(args.listen_address, args.port);
    let http_addr = SocketAddr::new(args.listen_address, args.metrics_port);
    let grpc_listener = bind(grpc_addr).await?;
    let http_listener = bind(http_addr).await?;

    let usage_poll = args.usage_poll().map_err(AuthzError::Config)?;
    let metrics = Arc::new(Metrics::new()?);
    let pg_options = match &source {
        store::Source::Postgres { url } => Some(
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|_| {
                    AuthzError::Config(
                        "POSTGRES_CONNECTION_STRING is not a valid Postgres URL".into(),
                    )
                })?,
        ),
        store::Source::Yaml { .. } => None,
    };
    let store = store::start_with_options(
        store::StoreConfig {
            source,
            app_refresh: args.portal_app_store_refresh_interval,
            usage_refresh: args.rate_limit_store_refresh_interval,
            snapshot_file: args.snapshot_file.clone(),
            devices_file: args.devices_file.clone(),
        },
        store::StoreOptions {
            usage_poll,
            usage_clock_offset_secs: args.test_clock_offset_seconds,
            ..store::StoreOptions::default()
        },
        Arc::new(Observer(metrics.clone())),
    )
    .await?;
    let metering = if args.metering {
        let config = MeteringConfig {
            flush_interval: args.metering_flush_interval,
            ..MeteringConfig::default()
        };
        let target = Arc::new(MeterTarget(store.clone()));
        let instance = config.instance.clone();
        let m = match pg_options {
            Some(opts) => {
                let sink = PgSink::new(opts, instance.clone(), Duration::from_secs(10));
                Metering::start(config, sink, target, &metrics.registry)?
            }
            None => {
                let sink = MemorySink::new(target.clone());
                Metering::start(config, sink, target, &metrics.registry)?
            }
        };
        info!(
            instance = %instance,
            flush_interval_ms = args.metering_flush_interval.as_millis() as u64,
            usage_poll_ms = usage_poll.map(|d| d.as_millis() as u64),
            "usage metering on: allowed requests are counted and written to the usage tables"
        );
        Some(Arc::new(m))
    } else {
        None
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<AuthorizationServer<AuthzService>>()
        .await;
    {
        // health follows the store; gauges that depend on time are refreshed here too
        let store = store.clone();
        let metrics = metrics.clone();
        let mut changes = store.subscribe();
        tokio::spawn(async move {
            let mut serving = false;
            let mut summarised = 0u64;
            let mut last_summary = std::time::Instant::now();
            loop {
                let snap = store.snapshot();
                let loaded = snap.loaded();
                if loaded != serving {
                    serving = loaded;
                    let status = if loaded {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    health.set_service_status("", status).await;
                    if loaded {
                        health
                            .set_serving::<AuthorizationServer<AuthzService>>()
                            .await;
                        info!(version = snap.version(), "portal app store loaded; serving");
                    } else {
                        health
                            .set_not_serving::<AuthorizationServer<AuthzService>>()
                            .await;
                    }
                }
                metrics.store_loaded.set(i64::from(loaded));
                metrics.store_version.set(snap.version() as i64);
                if let Some(s) = store.staleness() {
                    metrics
                        .staleness
                        .with_label_values(&["portal_app_store"])
                        .set(s.as_secs_f64());
                }
                if let Some(s) = store.usage_staleness() {
                    metrics
                        .staleness
                        .with_label_values(&["rate_limit_store"])
                        .set(s.as_secs_f64());
                }
                // usage changes between full reloads (metering flushes, the usage poll) reach
                // the per-account usage gauges at most every 10 s (the summary walks every app)
                if snap.loaded()
                    && snap.version() != summarised
                    && last_summary.elapsed() >= Duration::from_secs(10)
                {
                    summarised = snap.version();
                    last_summary = std::time::Instant::now();
                    let observer = Observer(metrics.clone());
                    let snap = snap.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        store::StoreObserver::usage(&observer, &snap.usage_summary());
                    })
                    .await;
                }
                // wake up at once when the store publishes, else four times a second
                let _ = tokio::time::timeout(Duration::from_millis(250), changes.changed()).await;
            }
        });
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(EXT_AUTHZ_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(EXT_AUTHZ_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let http_state = Http {
        metrics: metrics.clone(),
        store: store.clone(),
        image_tag: args.image_tag.clone(),
        store_token,
        metering: metering.clone(),
    };
    if store_token.is_some() {
        info!(
            path = edgeguard_verdict::portal_wire::PATH,
            "store feed enabled (bearer token required)"
        );
    } else {
        info!(
            path = edgeguard_verdict::portal_wire::PATH,
            "store feed disabled (set EDGEGUARD_STORE_TOKEN to enable it for portal-auth)"
        );
    }
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz).post(healthz).head(healthz))
        .route("/readyz", get(readyz))
        .route(edgeguard_verdict::portal_wire::PATH, get(store_snapshot))
        .route(
            edgeguard_verdict::portal_wire::USAGE_PATH,
            post(usage_report).layer(axum::extract::DefaultBodyLimit::max(32 << 20)),
        )
        .route("/usage/v1/accounts/{account_id}", get(account_usage))
        .with_state(http_state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, app).await {
            error!(error = %e, "metrics server stopped");
        }
    });

    let service = AuthzService {
        store: Arc::new(StoreAdapter(store.clone())),
        metrics,
        options: CheckOptions {
            rate_limit_headers: args.rate_limit_headers,
        },
        strip: args.strip_request_headers.clone(),
        metering: metering.clone(),
        quota_headers: args.quota_headers,
        trust_xfcc: args.trust_xfcc,
    };
    info!(grpc = %grpc_addr, http = %http_addr, version = %args.image_tag, "edgeguard authz listening");
    let incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let result = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthorizationServer::new(service))
        .serve_with_incoming_shutdown(incoming, edgeguard_shutdown::signal())
        .await;
    if let Some(m) = &metering {
        // the last counts of this replica (and reports still queued) are written before exit
        m.shutdown(Duration::from_secs(5)).await;
    }
    store.shutdown();
    if let Err(e) = &result {
        warn!(error = %e, "gRPC server error");
    }
    result.map_err(AuthzError::from)
}
