//! `edgeguard gatekeeper` settings: flags, each also an environment variable
//! (`EDGEGUARD_GATEKEEPER_*`). Secrets (the HS256 secret, API keys) are never echoed by clap
//! and are better given through the environment or files (a flag shows in `ps`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client_cert::BindTokens;
use crate::signing::SigningAlg;

/// jwt-shape's default `remote_jwks.refresh_interval_s`: the publish delay must exceed the
/// JWKS refresh of every verifier.
pub const JWT_SHAPE_DEFAULT_REFRESH: Duration = Duration::from_secs(600);

/// `edgeguard gatekeeper [flags]` serves; `edgeguard gatekeeper rotate` writes a new key.
#[derive(Args, Debug)]
pub struct GatekeeperArgs {
    #[command(subcommand)]
    pub command: Option<GatekeeperCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum GatekeeperCommand {
    /// Write a new signing key into the key directory: published at once, signing after the
    /// publish delay; prunes keys retired long enough ago.
    Rotate(RotateArgs),
}

pub use edgeguard_logging::LogFormat;

/// A secret given on the command line or in the environment: never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_string()))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration like 30s, 20m or 1h ({e})"))
}

/// The key directory and the lifecycle settings (shared by `serve` and `rotate`).
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Directory of the signing keys (`<kid>.pem` + `<kid>.json`); a shared volume or a
    /// mounted Kubernetes Secret. Required for ES256 and EdDSA.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_KEY_DIR")]
    pub key_dir: Option<PathBuf>,

    /// Algorithm of new keys (ES256, EdDSA) or HS256 with a shared secret.
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_SIGNING_ALG",
        value_enum,
        default_value = "ES256"
    )]
    pub signing_alg: SigningAlg,

    /// How long a new key is published before it signs: longer than every verifier's JWKS
    /// refresh (jwt-shape: remote_jwks.refresh_interval_s, 600 s by default).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_PUBLISH_DELAY", default_value = "20m", value_parser = duration)]
    pub publish_delay: Duration,

    /// Lifetime of the tokens the gatekeeper signs.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_TOKEN_TTL", default_value = "1h", value_parser = duration)]
    pub token_ttl: Duration,

    /// How long past `exp` verifiers accept a token (jwt-shape: clock_skew_seconds, 60 s):
    /// an old key stays published for token lifetime + this after it stops signing.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_CLOCK_SKEW", default_value = "60s", value_parser = duration)]
    pub clock_skew: Duration,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub keys: KeyArgs,

    /// The new key's id (default: gk-<UTC time>-<random>).
    #[arg(long)]
    pub kid: Option<String>,

    /// Keep the files of retired keys (by default they are removed).
    #[arg(long)]
    pub no_prune: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the HTTP server (gatekeeper, JWKS, discovery, health, metrics).
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_LISTEN",
        default_value = "127.0.0.1:10003"
    )]
    pub listen: SocketAddr,

    /// The policy file (YAML), hot-reloaded.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_POLICY")]
    pub policy: Option<PathBuf>,

    /// How often the policy file is checked for changes.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_POLICY_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub policy_poll_interval: Duration,

    /// The shape URL clients are told to request (`url` in the answer): the proxy (Envoy with
    /// jwt-shape) in front of Electric, e.g. https://api.example.com/v1/shape.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_SHAPE_URL")]
    pub shape_url: Option<String>,

    /// This service's public base URL (the discovery document's jwks_uri is built on it;
    /// default: http://<listen>).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// `iss` of the tokens (default: the public URL). jwt-shape's provider `issuer`.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_ISSUER")]
    pub issuer: Option<String>,

    /// `aud` of the tokens (repeat or comma-separate for several). jwt-shape's `audiences`.
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_AUDIENCE",
        value_delimiter = ',',
        default_value = "electric"
    )]
    pub audience: Vec<String>,

    #[command(flatten)]
    pub keys: KeyArgs,

    /// Re-read the key directory this often (new keys from `rotate` or another replica).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_KEY_RESCAN_INTERVAL", default_value = "5s", value_parser = duration)]
    pub key_rescan_interval: Duration,

    /// Rotate keys on a schedule: a new key when the newest is this old (replicas sharing the
    /// directory agree on one).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_ROTATE_EVERY", value_parser = duration)]
    pub rotate_every: Option<Duration>,

    /// Do not create a first key when the key directory has none (it then must be filled,
    /// e.g. by `edgeguard gatekeeper rotate` or a Kubernetes Secret).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_NO_INIT_KEY")]
    pub no_init_key: bool,

    /// HS256 secret (at least 32 bytes, UTF-8), with --signing-alg HS256.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_HS256_SECRET", value_parser = secret, hide_env_values = true, conflicts_with = "hs256_secret_file")]
    pub hs256_secret: Option<Secret>,

    /// File holding the HS256 secret (a trailing newline is ignored).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_HS256_SECRET_FILE")]
    pub hs256_secret_file: Option<PathBuf>,

    /// `kid` header of HS256 tokens (none by default).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_HS256_KID")]
    pub hs256_kid: Option<String>,

    /// OpenID Connect issuer whose bearer tokens authenticate callers (exact `iss`).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// Audiences accepted in callers' tokens (one must be in `aud`; none: not checked).
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_OIDC_AUDIENCE",
        value_delimiter = ','
    )]
    pub oidc_audience: Vec<String>,

    /// The issuer's JWKS URI (default: discovered from <issuer>/.well-known/openid-configuration).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_JWKS_URI")]
    pub oidc_jwks_uri: Option<String>,

    /// Algorithms accepted from the issuer (default: RS*, PS*, ES256, ES384, EdDSA; never HS*).
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_OIDC_ALGORITHMS",
        value_delimiter = ','
    )]
    pub oidc_algorithms: Vec<String>,

    /// Refresh of the issuer's JWKS (jwt-shape's refresh_interval_s).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_REFRESH_INTERVAL", default_value = "600s", value_parser = duration)]
    pub oidc_refresh_interval: Duration,

    /// Retry while the issuer's JWKS cannot be fetched.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_RETRY_INTERVAL", default_value = "5s", value_parser = duration)]
    pub oidc_retry_interval: Duration,

    /// At most one refetch per this interval when a token names an unknown kid.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_UNKNOWN_KID_REFETCH_INTERVAL", default_value = "30s", value_parser = duration)]
    pub oidc_unknown_kid_refetch_interval: Duration,

    /// Timeout of a discovery or JWKS fetch.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub oidc_timeout: Duration,

    /// Leeway for callers' `exp`, `nbf`, `iat`.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_OIDC_CLOCK_SKEW", default_value = "60s", value_parser = duration)]
    pub oidc_clock_skew: Duration,

    /// API keys, `id=key,id2=key2` (keys at least 16 bytes). Prefer the environment.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_API_KEYS", value_parser = secret, hide_env_values = true)]
    pub api_keys: Option<Secret>,

    /// API keys with claims, YAML (`keys: [{id, key | key_sha256, claims}]`).
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// DEVELOPMENT ONLY: authenticate every request (callers without valid credentials get
    /// --dev-claims). Never in production.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_DEV_ALLOW_ANYONE")]
    pub dev_allow_anyone: bool,

    /// The claims everyone gets in development mode (a JSON object).
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_DEV_CLAIMS",
        default_value = r#"{"sub":"dev-user"}"#
    )]
    pub dev_claims: String,

    /// Bind the tokens to the caller's client certificate (RFC 8705 `cnf.x5t#S256`), read from
    /// `x-forwarded-client-cert` set by the Envoy in front (SANITIZE_SET): off, when-presented,
    /// or required (no certificate: 401). Only behind that Envoy: the header is trusted.
    #[arg(
        long = "bind-tokens-to-client-certificate",
        env = "EDGEGUARD_GATEKEEPER_BIND_TOKENS",
        value_enum,
        default_value = "off"
    )]
    pub bind_tokens: BindTokens,

    /// Origins allowed to call the gatekeeper from a browser (CORS; `*` for any). None: no
    /// CORS headers.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// trace, debug, info, warn or error.
    #[arg(long, env = "EDGEGUARD_GATEKEEPER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// json (default) or text.
    #[arg(
        long,
        env = "EDGEGUARD_GATEKEEPER_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}
