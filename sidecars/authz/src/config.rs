//! `edgeguard authz` settings: PEAS's environment variables (same names, same defaults, `0`
//! meaning "default" as PEAS does), each also a flag. A bad value stops start-up with a
//! message naming the variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use edgeguard_verdict::strip::HeaderStrip;

/// Parses a Go-style duration (`300ms`, `30s`, `5m`, `1h30m`); `0` means "use the default".
pub fn go_duration(
    var: &'static str,
    default: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s: &str| {
        let s = s.trim();
        if s == "0" {
            return Ok(default);
        }
        let d = humantime::parse_duration(&s.replace("us", "µs"))
            .map_err(|e| format!("{var} must be a duration like 30s, 5m or 1h30m ({e})"))?;
        if d.is_zero() {
            return Ok(default);
        }
        Ok(d)
    }
}

/// Parses a TCP port; `0` means the default (PEAS semantics).
pub fn port(var: &'static str, default: u16) -> impl Fn(&str) -> Result<u16, String> + Clone {
    move |s: &str| match s.trim().parse::<u16>() {
        Ok(0) => Ok(default),
        Ok(p) => Ok(p),
        Err(_) => Err(format!(
            "{var} must be a port number between 1 and 65535 (0 = default {default})"
        )),
    }
}

fn log_level(s: &str) -> Result<String, String> {
    let l = s.trim().to_ascii_lowercase();
    match l.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(l),
        "warning" => Ok("warn".into()),
        "fatal" | "panic" => Ok("error".into()),
        _ => Err("LOGGER_LEVEL must be one of trace, debug, info, warn, error".into()),
    }
}

fn postgres_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("postgres://") || s.starts_with("postgresql://"))
        && s.len() > "postgres://".len();
    if ok {
        Ok(s.to_string())
    } else {
        Err(
            "POSTGRES_CONNECTION_STRING must look like postgres://user:password@host:5432/database"
                .into(),
        )
    }
}

/// The bearer token `/store/v1/snapshot` requires (`EDGEGUARD_STORE_TOKEN`). Parsed without
/// validation so that clap never echoes it in an error; [`StoreToken::validate`] checks it at
/// start with a message that does not contain it. Never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreToken(String);

/// The shortest store token accepted: 32 bytes (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_STORE_TOKEN_BYTES: usize = 32;

impl StoreToken {
    pub fn new(token: impl Into<String>) -> StoreToken {
        StoreToken(token.into())
    }

    /// The token, for comparison only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `None` when unset or empty (the feed is off); an error naming the variable when it
    /// is too short or not a token (the message never contains it).
    pub fn validate(token: Option<&StoreToken>) -> Result<Option<&StoreToken>, String> {
        let Some(t) = token.filter(|t| !t.0.is_empty()) else {
            return Ok(None);
        };
        if t.0.len() < MIN_STORE_TOKEN_BYTES {
            return Err(format!(
                "EDGEGUARD_STORE_TOKEN (--store-token) must be at least {MIN_STORE_TOKEN_BYTES} bytes, it has {}: generate one with `openssl rand -hex 32`",
                t.0.len()
            ));
        }
        if !t.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "EDGEGUARD_STORE_TOKEN (--store-token) must be printable ASCII without spaces (it is sent as `Authorization: Bearer <token>`); check for a trailing newline"
                    .into(),
            );
        }
        Ok(Some(t))
    }
}

impl std::fmt::Debug for StoreToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreToken(***)")
    }
}

fn store_token(s: &str) -> Result<StoreToken, String> {
    Ok(StoreToken(s.to_string()))
}

pub use edgeguard_logging::LogFormat;

#[derive(Args, Clone, Debug)]
pub struct AuthzArgs {
    /// Postgres with the Grove schema (PEAS's source). Without it, --portal-apps-file is used.
    #[arg(long, env = "POSTGRES_CONNECTION_STRING", value_parser = postgres_url, hide_env_values = true)]
    pub postgres_connection_string: Option<String>,

    /// DB-less mode: a YAML file of accounts and apps, hot-reloaded on change.
    #[arg(
        long,
        env = "PORTAL_APPS_FILE",
        conflicts_with = "postgres_connection_string"
    )]
    pub portal_apps_file: Option<PathBuf>,

    /// gRPC port of the ext_authz service.
    #[arg(long, env = "PORT", default_value = "10001", value_parser = port("PORT", 10001))]
    pub port: u16,

    /// Port of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_PORT", default_value = "9090", value_parser = port("METRICS_PORT", 9090))]
    pub metrics_port: u16,

    /// Address both servers listen on.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,

    /// trace, debug, info, warn or error.
    #[arg(long, env = "LOGGER_LEVEL", default_value = "info", value_parser = log_level)]
    pub logger_level: String,

    /// json (default, for log pipelines) or text.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Version shown by /healthz.
    #[arg(long, env = "IMAGE_TAG", default_value = "development")]
    pub image_tag: String,

    /// How often the portal-app store is fully reloaded (the safety net under LISTEN/NOTIFY).
    #[arg(long, env = "PORTAL_APP_STORE_REFRESH_INTERVAL", default_value = "30s",
          value_parser = go_duration("PORTAL_APP_STORE_REFRESH_INTERVAL", Duration::from_secs(30)))]
    pub portal_app_store_refresh_interval: Duration,

    /// How often monthly usage is reloaded.
    #[arg(long, env = "RATE_LIMIT_STORE_REFRESH_INTERVAL", default_value = "5m",
          value_parser = go_duration("RATE_LIMIT_STORE_REFRESH_INTERVAL", Duration::from_secs(300)))]
    pub rate_limit_store_refresh_interval: Duration,

    /// Stamp `Rl-Plan-Free` / `Rl-User-Limit-<millions>` on allowed requests (as PEAS once did).
    #[arg(long, env = "RATE_LIMIT_HEADERS", default_value_t = false)]
    pub rate_limit_headers: bool,

    /// DB-less device certificates: the registry file `edgeguard enroll` keeps (give both the
    /// same path). Watched; a revocation there reaches every Envoy like any store change. With
    /// Postgres, devices come from `edgeguard_devices` instead.
    #[arg(
        long,
        env = "EDGEGUARD_DEVICES_FILE",
        conflicts_with = "postgres_connection_string"
    )]
    pub devices_file: Option<PathBuf>,

    /// Last-good snapshot file: written after every successful load, served when Postgres is
    /// down at start.
    #[arg(long, env = "PORTAL_APP_SNAPSHOT_FILE")]
    pub snapshot_file: Option<PathBuf>,

    /// Bearer token the store feed (`/store/v1/snapshot`, what portal-auth syncs from)
    /// requires, at least 32 bytes; the same value goes to the portal-auth filters. Unset:
    /// the feed is off (404). Prefer the environment: a flag shows in `ps`.
    #[arg(long, env = "EDGEGUARD_STORE_TOKEN", value_parser = store_token, hide_env_values = true)]
    pub store_token: Option<StoreToken>,

    /// Client request headers other edgeguard components own, removed from every allowed
    /// request (comma-separated; a trailing `*` is a prefix). The default covers jwt-shape's
    /// `x-edgeguard-*` claim headers, so the ext_authz path never passes a forged one; `""`
    /// removes nothing extra. `Portal-*`/`Rl-*` are always removed unless stamped.
    #[arg(long, env = "EDGEGUARD_STRIP_REQUEST_HEADERS", default_value = "x-edgeguard-*",
          value_parser = strip_list)]
    pub strip_request_headers: HeaderStrip,

    /// Usage metering: count every request a portal-app verdict allows (this service's own
    /// Checks and the portal-auth filters' reports on `POST /store/v1/usage`) and add the
    /// counts to `account_monthly_usage.metered_relays` (Postgres; DB-less: memory). Off by
    /// default: an existing pipeline that already meters the same traffic into the table
    /// would count it twice.
    #[arg(long, env = "EDGEGUARD_METERING", default_value_t = false, action = clap::ArgAction::Set)]
    pub metering: bool,

    /// How often metered counts are written (one statement per flush).
    #[arg(long, env = "EDGEGUARD_METERING_FLUSH_INTERVAL", default_value = "1s",
          value_parser = go_duration("EDGEGUARD_METERING_FLUSH_INTERVAL", Duration::from_secs(1)))]
    pub metering_flush_interval: Duration,

    /// How often usage rows changed in the last seconds are re-read (Postgres), so a quota
    /// crossed through another replica (or an external writer that sets `updated_at`) is
    /// enforced here too. Default 500ms with metering on; `0` turns it off without metering.
    #[arg(long, env = "EDGEGUARD_USAGE_POLL_INTERVAL")]
    pub usage_poll_interval: Option<String>,

    /// Which answers carry `RateLimit-Policy` / `RateLimit` (and `Retry-After` on 429):
    /// `denied` (429 only, default) or `all` (allowed answers of accounts with a limit too).
    #[arg(long, env = "EDGEGUARD_QUOTA_HEADERS", default_value = "denied")]
    pub quota_headers: edgeguard_verdict::quota::QuotaHeaders,

    /// Read a device's client certificate from `x-forwarded-client-cert` (`Hash=`) when the
    /// CheckRequest carries none: only where TLS ends at a proxy in front that sets that
    /// header itself (Envoy `forward_client_cert_details: SANITIZE_SET`). Off by default: the
    /// certificate then comes only from the connection (`include_peer_certificate: true`).
    #[arg(long, env = "EDGEGUARD_TRUST_XFCC", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_xfcc: bool,

    /// Test only: shifts this service's clock for usage months (seconds), so a test can start
    /// just before a month ends.
    #[arg(
        long,
        env = "EDGEGUARD_TEST_CLOCK_OFFSET_SECONDS",
        default_value_t = 0,
        hide = true,
        allow_negative_numbers = true
    )]
    pub test_clock_offset_seconds: i64,
}

impl AuthzArgs {
    /// The usage poll interval: explicit, else 500 ms with metering, else none.
    pub fn usage_poll(&self) -> Result<Option<Duration>, String> {
        match self.usage_poll_interval.as_deref().map(str::trim) {
            None | Some("") => Ok(self.metering.then_some(Duration::from_millis(500))),
            Some("0") => Ok(None),
            Some(v) => go_duration("EDGEGUARD_USAGE_POLL_INTERVAL", Duration::from_millis(500))(v)
                .map(Some),
        }
    }
}

fn strip_list(s: &str) -> Result<HeaderStrip, String> {
    HeaderStrip::parse_list(s).map_err(|e| {
        format!(
            "EDGEGUARD_STRIP_REQUEST_HEADERS entry {}: {}",
            e.index + 1,
            e.message
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        let p = go_duration("X", Duration::from_secs(30));
        assert_eq!(p("0").unwrap(), Duration::from_secs(30));
        assert_eq!(p("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(p("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(p("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(p("10us").unwrap(), Duration::from_micros(10));
        assert!(p("soon").unwrap_err().starts_with("X must be a duration"));
        assert!(p("-1s").is_err());
    }

    #[test]
    fn ports_like_peas() {
        let p = port("PORT", 10001);
        assert_eq!(p("0").unwrap(), 10001);
        assert_eq!(p("8080").unwrap(), 8080);
        assert!(p("http")
            .unwrap_err()
            .starts_with("PORT must be a port number"));
        assert!(p("70000").is_err());
    }

    #[test]
    fn store_tokens() {
        let ok = StoreToken::new("0123456789abcdef0123456789abcdef");
        assert_eq!(StoreToken::validate(Some(&ok)), Ok(Some(&ok)));
        assert_eq!(StoreToken::validate(None), Ok(None));
        assert_eq!(StoreToken::validate(Some(&StoreToken::new(""))), Ok(None));
        let short = StoreToken::new("s3cret-but-short");
        let e = StoreToken::validate(Some(&short)).unwrap_err();
        assert!(e.contains("at least 32 bytes, it has 16"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let newline = StoreToken::new("0123456789abcdef0123456789abcdef\n");
        let e = StoreToken::validate(Some(&newline)).unwrap_err();
        assert!(e.contains("trailing newline"), "{e}");
        assert_eq!(format!("{ok:?}"), "StoreToken(***)");
    }

    #[test]
    fn other_values() {
        assert_eq!(log_level("WARNING").unwrap(), "warn");
        assert!(log_level("loud").is_err());
        assert!(postgres_url("postgres://u:p@h:5432/db").is_ok());
        assert!(postgres_url("mysql://x")
            .unwrap_err()
            .contains("POSTGRES_CONNECTION_STRING"));
    }
}
