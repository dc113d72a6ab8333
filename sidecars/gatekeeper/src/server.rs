//! Assembly: configuration checks, logging, the policy, authentication, the signer and the HTTP
//! server (`POST /gatekeeper/:table`, `/.well-known/jwks.json`,
//! `/.well-known/openid-configuration`, `/healthz`, `/readyz`, `/metrics`); graceful shutdown
//! on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use edgeguard_verdict::token::Algorithm;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::answer::{self, TokenSettings};
use crate::api_keys::{ApiKeyError, ApiKeys};
use crate::caller::Authenticator;
use crate::client_cert::{self, BindTokens};
use crate::config::{ServeArgs, JWT_SHAPE_DEFAULT_REFRESH};
use crate::keyring::{self, KeyDirError, Lifecycle};
use crate::metrics::Metrics;
use crate::oidc::{default_algorithms, Oidc, OidcConfig, OidcError};
use crate::policy_store::{PolicyFileError, PolicyStore};
use crate::refusal::{Reason, Refusal};
use crate::signer::{KeyDir, Signer};
use crate::signing::{KeyError, SigningAlg, SigningKey};
use crate::{decision, request, shape_claim};

/// Why the gatekeeper could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatekeeperError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Policy(#[from] PolicyFileError),
    #[error("{0}")]
    ApiKeys(#[from] ApiKeyError),
    #[error("{0}")]
    KeyDir(#[from] KeyDirError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("OpenID Connect: {0}")]
    Oidc(#[from] OidcError),
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

/// Everything a request needs.
pub struct App {
    pub policy: Arc<PolicyStore>,
    pub signer: Signer,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub shape_url: String,
    pub tokens: TokenSettings,
    pub public_url: String,
    pub cors_origins: Vec<String>,
    pub bind_tokens: BindTokens,
}

const JSON: &str = "application/json";

fn respond(status: u16, body: String, extra: Vec<(HeaderName, HeaderValue)>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    for (k, v) in extra {
        r.headers_mut().append(k, v);
    }
    r
}

impl App {
    /// CORS headers for an allowed `Origin`.
    fn cors(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Vec::new();
        };
        let allowed = self
            .cors_origins
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin.as_bytes());
        if !allowed {
            return Vec::new();
        }
        vec![
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
            (header::VARY, HeaderValue::from_static("Origin")),
        ]
    }

    fn refuse(&self, refusal: &Refusal, headers: &HeaderMap, subject: Option<&str>) -> Response {
        self.metrics.refused(refusal.reason);
        info!(reason = refusal.reason.as_str(), sub = subject.unwrap_or(""), detail = %refusal.message, "request refused");
        let mut extra = self.cors(headers);
        extra.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if refusal.reason.status() == 401 {
            let challenge = if matches!(
                refusal.reason,
                Reason::MissingCredentials | Reason::ClientCertificateRequired
            ) {
                "Bearer realm=\"edgeguard-gatekeeper\""
            } else {
                "Bearer realm=\"edgeguard-gatekeeper\", error=\"invalid_token\""
            };
            extra.push((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            ));
        }
        respond(refusal.reason.status(), refusal.body(), extra)
    }

    async fn issue(&self, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
        let Some(policy) = self.policy.current() else {
            return self.refuse(
                &Refusal::new(Reason::NotReady, "no policy is loaded"),
                headers,
                None,
            );
        };
        let now = keyring::unix_now().unwrap_or(0);
        let Some(current) = self.signer.current(now) else {
            return self.refuse(
                &Refusal::new(Reason::NotReady, "no signing key is in force yet"),
                headers,
                None,
            );
        };
        let caller = match self.auth.authenticate(headers).await {
            Ok(c) => c,
            Err(r) => return self.refuse(&r, headers, None),
        };
        let sub = caller.subject();
        let cnf = match client_cert::binding(self.bind_tokens, headers) {
            Ok(c) => c,
            Err(r) => return self.refuse(&r, headers, sub),
        };
        let segment = uri.path().strip_prefix("/gatekeeper/").unwrap_or_default();
        let content_type = headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
        let req = match request::read(segment, uri.query(), content_type, body) {
            Ok(r) => r,
            Err(r) => return self.refuse(&r, headers, sub),
        };
        let grant = match decision::decide(&policy, &caller.claims, &req) {
            Ok(g) => g,
            Err(r) => return self.refuse(&r, headers, sub),
        };
        let shape = match shape_claim::claim(&grant) {
            Ok(s) => s,
            Err(e) => {
                return self.refuse(
                    &Refusal::new(
                        Reason::Internal,
                        format!("the shape cannot be minted as a claim jwt-shape reads: {e}"),
                    ),
                    headers,
                    sub,
                )
            }
        };
        let jti = answer::new_jti();
        let mut claims = answer::claims(&self.tokens, shape, sub, now, &jti);
        let bound = cnf.is_some();
        if let (Some(cnf), Some(c)) = (cnf, claims.as_object_mut()) {
            c.insert("cnf".into(), cnf);
        }
        let token = current.key.jws(current.kid.as_deref(), &claims);
        let expires_at = now.saturating_add(self.tokens.ttl_s);
        let body = answer::configuration(&self.shape_url, &token, &grant, expires_at);
        self.metrics
            .issued
            .with_label_values(&[caller.method.as_str()])
            .inc();
        info!(
            auth = caller.method.as_str(),
            sub = sub.unwrap_or(""),
            table = %grant.table,
            namespace = grant.namespace.as_deref().unwrap_or(""),
            rule = %grant.rule,
            kid = current.kid.as_deref().unwrap_or(""),
            alg = current.key.alg().name(),
            jti = %jti,
            exp = expires_at,
            certificate_bound = bound,
            "token issued"
        );
        let mut extra = self.cors(headers);
        extra.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        respond(200, body.to_string(), extra)
    }
}

async fn gatekeeper(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::OPTIONS {
        let mut cors = app.cors(&headers);
        if cors.is_empty() {
            return respond(
                405,
                json!({"code": 405, "reason": "method_not_allowed", "message": "CORS is not enabled (--cors-origins)"}).to_string(),
                vec![(header::ALLOW, HeaderValue::from_static("POST"))],
            );
        }
        cors.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        ));
        cors.push((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key"),
        ));
        cors.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ));
        let mut r = respond(204, String::new(), cors);
        r.headers_mut().remove(header::CONTENT_TYPE);
        return r;
    }
    if method != Method::POST {
        return respond(
            405,
            json!({"code": 405, "reason": "method_not_allowed", "message": "use POST /gatekeeper/<table>"}).to_string(),
            vec![(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"))],
        );
    }
    app.issue(&uri, &headers, &body).await
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    let now = keyring::unix_now().unwrap_or(0);
    respond(
        200,
        app.signer.jwks(now).to_string(),
        vec![(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        )],
    )
}

async fn discovery(State(app): State<Arc<App>>) -> Response {
    let now = keyring::unix_now().unwrap_or(0);
    let doc = json!({
        "issuer": app.tokens.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", app.public_url),
        "id_token_signing_alg_values_supported": app.signer.algorithms(now),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "gatekeeper_endpoint": format!("{}/gatekeeper/{{table}}", app.public_url),
    });
    respond(
        200,
        doc.to_string(),
        vec![(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        )],
    )
}

async fn healthz() -> Response {
    respond(
        200,
        json!({"status": "ok", "service": "edgeguard-gatekeeper"}).to_string(),
        Vec::new(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let now = keyring::unix_now().unwrap_or(0);
    let policy = app.policy.current().is_some();
    let signing = app.signer.current(now).map(|c| c.kid.unwrap_or_default());
    let oidc = app.auth.oidc.as_ref().map(|o| o.loaded());
    let ready = policy && signing.is_some() && oidc.unwrap_or(true);
    let body = json!({
        "ready": ready,
        "policy_loaded": policy,
        "signing_key": signing,
        "oidc_keys_loaded": oidc,
    });
    respond(if ready { 200 } else { 503 }, body.to_string(), Vec::new())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    respond(
        404,
        json!({"code": 404, "reason": "not_found", "message": "POST /gatekeeper/<table>, GET /.well-known/jwks.json, /.well-known/openid-configuration, /healthz, /readyz, /metrics"}).to_string(),
        Vec::new(),
    )
}

/// The router (for the server and tests).
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .route("/gatekeeper/{table}", any(gatekeeper))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
}

fn init_logging(args: &ServeArgs) {
    edgeguard_logging::init(
        &args.log_level,
        "hyper=warn,reqwest=warn,rustls=warn",
        args.log_format,
        edgeguard_logging::stdout_is_terminal(),
    );
}

fn config(message: impl Into<String>) -> GatekeeperError {
    GatekeeperError::Config(message.into())
}

fn http_url(flag: &str, url: &str) -> Result<String, GatekeeperError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
        return Err(config(format!(
            "{flag} must be an http:// or https:// URL, not '{url}'"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn whole_seconds(flag: &str, d: Duration) -> Result<u64, GatekeeperError> {
    let s = d.as_secs();
    if s == 0 || d.subsec_nanos() != 0 {
        return Err(config(format!(
            "{flag} must be a whole number of seconds, at least 1s"
        )));
    }
    Ok(s)
}

fn oidc_config(args: &ServeArgs, issuer: &str) -> Result<OidcConfig, GatekeeperError> {
    let algorithms = if args.oidc_algorithms.is_empty() {
        default_algorithms()
    } else {
        let mut algs = Vec::new();
        for name in &args.oidc_algorithms {
            let alg = Algorithm::from_name(name.trim()).ok_or_else(|| {
                config(format!(
                    "--oidc-algorithms: '{name}' is not a JWS algorithm edgeguard verifies"
                ))
            })?;
            if alg.family() == edgeguard_verdict::token::KeyFamily::Hmac {
                return Err(config(format!(
                    "--oidc-algorithms: {name} is refused: an issuer's JWKS publishes public keys, and a shared secret in it would let anyone mint tokens"
                )));
            }
            algs.push(alg);
        }
        algs
    };
    Ok(OidcConfig {
        issuer: issuer.to_string(),
        audiences: args
            .oidc_audience
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect(),
        jwks_uri: args
            .oidc_jwks_uri
            .as_deref()
            .map(|u| http_url("--oidc-jwks-uri", u))
            .transpose()?,
        algorithms,
        refresh_interval_s: whole_seconds("--oidc-refresh-interval", args.oidc_refresh_interval)?,
        retry_interval_s: whole_seconds("--oidc-retry-interval", args.oidc_retry_interval)?,
        unknown_kid_refetch_interval_s: whole_seconds(
            "--oidc-unknown-kid-refetch-interval",
            args.oidc_unknown_kid_refetch_interval,
        )?,
        timeout: args.oidc_timeout,
        clock_skew_s: args.oidc_clock_skew.as_secs(),
    })
}

fn hs256_secret(args: &ServeArgs) -> Result<Vec<u8>, GatekeeperError> {
    let secret = match (&args.hs256_secret, &args.hs256_secret_file) {
        (Some(s), _) => s.0.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| config(format!("--hs256-secret-file {}: {e}", path.display())))?
            .trim_ascii_end()
            .to_vec(),
        (None, None) => {
            return Err(config(
                "--signing-alg HS256 needs a secret: EDGEGUARD_GATEKEEPER_HS256_SECRET or --hs256-secret-file",
            ))
        }
    };
    Ok(secret)
}

fn key_dir_path(dir: Option<&PathBuf>) -> Result<PathBuf, GatekeeperError> {
    dir.cloned().ok_or_else(|| {
        config("ES256/EdDSA signing needs --key-dir (EDGEGUARD_GATEKEEPER_KEY_DIR): the directory of the signing keys")
    })
}

/// Creates the key directory (owner only) when missing.
pub fn ensure_dir(dir: &std::path::Path) -> Result<(), GatekeeperError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| {
        config(format!(
            "cannot create the key directory {}: {e}",
            dir.display()
        ))
    })
}

/// Runs `edgeguard gatekeeper` until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> Result<(), GatekeeperError> {
    init_logging(&args);
    let policy_path = args.policy.clone().ok_or_else(|| {
        config("--policy (EDGEGUARD_GATEKEEPER_POLICY) is required: the policy file")
    })?;
    let shape_url = http_url(
        "--shape-url",
        args.shape_url.as_deref().ok_or_else(|| {
            config("--shape-url (EDGEGUARD_GATEKEEPER_SHAPE_URL) is required: the shape URL clients request, e.g. https://api.example.com/v1/shape")
        })?,
    )?;
    let public_url = http_url(
        "--public-url",
        &args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", args.listen)),
    )?;
    let issuer = args.issuer.clone().unwrap_or_else(|| public_url.clone());
    if issuer.is_empty() {
        return Err(config("--issuer must not be empty"));
    }
    let ttl_s = whole_seconds("--token-ttl", args.keys.token_ttl)?;
    let lifecycle = Lifecycle {
        token_ttl: ttl_s,
        clock_skew: args.keys.clock_skew.as_secs(),
    };
    let dev_claims = if args.dev_allow_anyone {
        let v: Json = serde_json::from_str(&args.dev_claims)
            .map_err(|e| config(format!("--dev-claims must be a JSON object: {e}")))?;
        if !v.is_object() {
            return Err(config("--dev-claims must be a JSON object"));
        }
        Some(v)
    } else {
        None
    };
    let mut api_keys = ApiKeys::default();
    if let Some(list) = &args.api_keys {
        api_keys.merge(ApiKeys::parse_list(&list.0)?)?;
    }
    if let Some(path) = &args.api_keys_file {
        api_keys.merge(ApiKeys::load_file(path)?)?;
    }
    if args.oidc_issuer.is_none() && api_keys.is_empty() && dev_claims.is_none() {
        return Err(config(
            "no way to authenticate callers: set --oidc-issuer, API keys (EDGEGUARD_GATEKEEPER_API_KEYS or --api-keys-file), or --dev-allow-anyone for development",
        ));
    }

    let metrics = Arc::new(Metrics::new()?);
    let policy = PolicyStore::open(&policy_path, metrics.clone())?;

    let oidc = match &args.oidc_issuer {
        Some(issuer) => {
            let cfg = oidc_config(&args, issuer)?;
            info!(issuer = %cfg.issuer, jwks_uri = cfg.jwks_uri.as_deref().unwrap_or("(discovered)"), "OpenID Connect callers accepted");
            let o = Oidc::new(cfg, metrics.clone())?;
            tokio::spawn(o.clone().run());
            Some(o)
        }
        None => None,
    };
    if !api_keys.is_empty() {
        info!(keys = api_keys.len(), "API keys accepted");
    }
    if args.bind_tokens != BindTokens::Off {
        info!(
            mode = args.bind_tokens.as_str(),
            "tokens are bound to the caller's client certificate from x-forwarded-client-cert: only the Envoy in front (forward_client_cert_details: SANITIZE_SET) may reach this service"
        );
    }
    if let Some(claims) = &dev_claims {
        warn!(
            dev_claims = %claims,
            "DEVELOPMENT MODE (--dev-allow-anyone): EVERY request is authenticated; callers without valid credentials get the development claims. Never run this in production."
        );
    }

    let alg = args.keys.signing_alg;
    let publish_delay = args.keys.publish_delay.as_secs();
    let signer = if alg == SigningAlg::Hs256 {
        let key = SigningKey::hs256(hs256_secret(&args)?)?;
        info!(
            kid = args.hs256_kid.as_deref().unwrap_or(""),
            "signing with HS256 (shared secret; nothing is published in the JWKS)"
        );
        Signer::Hmac {
            key: Arc::new(key),
            kid: args.hs256_kid.clone(),
        }
    } else {
        let dir = key_dir_path(args.keys.key_dir.as_ref())?;
        if !args.no_init_key {
            ensure_dir(&dir)?;
        }
        if args.keys.publish_delay < JWT_SHAPE_DEFAULT_REFRESH {
            warn!(
                publish_delay_s = publish_delay,
                "the publish delay is shorter than jwt-shape's default JWKS refresh (600 s): make sure it exceeds every verifier's remote_jwks.refresh_interval_s, or a new key signs before verifiers know it"
            );
        }
        let rotate_every = match args.rotate_every {
            Some(d) => Some(whole_seconds("--rotate-every", d)?),
            None => None,
        };
        let kd = Arc::new(KeyDir::new(
            dir.clone(),
            alg,
            lifecycle,
            publish_delay,
            rotate_every,
            metrics.clone(),
        ));
        let now = keyring::unix_now()?;
        kd.rescan(now);
        if !args.no_init_key {
            kd.init(now);
        }
        kd.maintain(now);
        tokio::spawn(kd.clone().watch(args.key_rescan_interval));
        info!(dir = %dir.display(), alg = %alg, publish_delay_s = publish_delay, token_ttl_s = ttl_s, "signing with the key directory");
        Signer::Dir(kd)
    };

    let app = Arc::new(App {
        policy: policy.clone(),
        signer,
        auth: Authenticator {
            oidc,
            api_keys,
            dev_claims,
        },
        metrics,
        shape_url,
        tokens: TokenSettings {
            issuer,
            audiences: args
                .audience
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
            ttl_s,
        },
        public_url,
        cors_origins: args.cors_origins.clone(),
        bind_tokens: args.bind_tokens,
    });
    tokio::spawn(policy.watch(args.policy_poll_interval));

    let listener =
        TcpListener::bind(args.listen)
            .await
            .map_err(|source| GatekeeperError::Listen {
                addr: args.listen,
                source,
            })?;
    info!(listen = %args.listen, issuer = %app.tokens.issuer, shape_url = %app.shape_url, "edgeguard gatekeeper listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(edgeguard_shutdown::signal())
        .await
        .map_err(GatekeeperError::Serve)
}
