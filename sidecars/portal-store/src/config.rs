//! Configuration and errors.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

/// Where portal apps come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A Portal DB with PEAS's Grove tables (`POSTGRES_CONNECTION_STRING`). Any libpq-style
    /// URL sqlx accepts; unlike PEAS a password is not required.
    Postgres { url: String },
    /// The DB-less YAML file (see the crate docs for the format), hot-reloaded.
    Yaml { path: PathBuf },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .finish(),
            Source::Yaml { path } => f.debug_struct("Yaml").field("path", path).finish(),
        }
    }
}

/// What to load and how often (the PEAS environment maps onto it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub source: Source,
    /// Full reload interval (`PORTAL_APP_STORE_REFRESH_INTERVAL`, PEAS default 30 s): the
    /// safety net under LISTEN/NOTIFY, and the YAML file's poll interval.
    pub app_refresh: Duration,
    /// Usage reload interval (`RATE_LIMIT_STORE_REFRESH_INTERVAL`, PEAS default 5 m).
    pub usage_refresh: Duration,
    /// Last-good snapshot file: written (atomically) after each full load that changed the
    /// data, served when the source cannot be read at start.
    pub snapshot_file: Option<PathBuf>,
    /// DB-less device certificates: `edgeguard enroll`'s registry file, watched
    /// (`EDGEGUARD_DEVICES_FILE`). With Postgres, devices come from `edgeguard_devices`.
    pub devices_file: Option<PathBuf>,
}

impl StoreConfig {
    /// PEAS's defaults (30 s, 5 m), no snapshot file.
    pub fn new(source: Source) -> StoreConfig {
        StoreConfig {
            source,
            app_refresh: DEFAULT_APP_REFRESH,
            usage_refresh: DEFAULT_USAGE_REFRESH,
            snapshot_file: None,
            devices_file: None,
        }
    }
}

/// PEAS's `PORTAL_APP_STORE_REFRESH_INTERVAL` default.
pub const DEFAULT_APP_REFRESH: Duration = Duration::from_secs(30);
/// PEAS's `RATE_LIMIT_STORE_REFRESH_INTERVAL` default.
pub const DEFAULT_USAGE_REFRESH: Duration = Duration::from_secs(300);

/// Tuning knobs with sensible defaults ([`crate::start`] uses `StoreOptions::default()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// LISTEN for change notifications (Postgres only). Harmless without the triggers.
    pub listen: bool,
    /// How long notifications are collected before one delta re-query.
    pub notify_debounce: Duration,
    /// A batch naming more ids than this becomes a full reload instead.
    pub notify_max_batch: usize,
    /// How long the YAML watcher waits for a burst of file events to settle.
    pub file_debounce: Duration,
    /// The YAML file is read only once its size and modification time have not changed for
    /// this long (a file still being written is not read), and only if they did not change
    /// while it was read.
    pub file_settle: Duration,
    /// Timeout of one Postgres connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of one query (the full load of every app included).
    pub query_timeout: Duration,
    /// First and longest wait between retries after a failure.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// An idle LISTEN connection is probed (`SELECT 1`) this often.
    pub listen_keepalive: Duration,
    /// Entries kept for `changes_since`.
    pub change_log_capacity: usize,
    /// Seconds added to the system clock wherever the store asks "what month is it"
    /// ([`crate::Store::now_unix`]): the month of the usage it loads and the rollover to the
    /// next. Default 0. A test knob: a store started with the offset that puts "now" 5 s
    /// before the end of a month rolls over 5 s later. The database clock is not shifted
    /// (the incremental poll compares `updated_at` with it).
    pub usage_clock_offset_secs: i64,
    /// Postgres: also read, this often, just the usage rows changed since the last read
    /// (`updated_at`, migration 0004's index), between the full usage reloads of
    /// `usage_refresh`. Default `None` (full reloads only). With metering, ~1 s makes a quota
    /// crossed through one `edgeguard authz` replica enforced by all of them within ~1 s.
    /// Ignored in YAML mode.
    pub usage_poll: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            listen: true,
            notify_debounce: Duration::from_millis(75),
            notify_max_batch: 10_000,
            file_debounce: Duration::from_millis(100),
            file_settle: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(120),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            listen_keepalive: Duration::from_secs(30),
            change_log_capacity: 10_000,
            usage_clock_offset_secs: 0,
            usage_poll: None,
        }
    }
}

/// Why the store could not start (never because the source is down) or a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Postgres connection string: {reason}")]
    InvalidUrl { reason: String },
    #[error("invalid portal app store configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot connect to Postgres at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration {file} failed: {source}")]
    Migration {
        file: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// Parses a connection string without ever echoing it (it may hold a password).
pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    if url.trim().is_empty() {
        return Err(StoreError::InvalidUrl {
            reason: "it is empty".into(),
        });
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::InvalidUrl {
            reason: "it must start with postgres:// or postgresql://".into(),
        });
    }
    // sqlx's per-statement logs are off: the full load of a big Portal DB is a "slow
    // statement" every interval; the store logs its own failures and durations
    PgConnectOptions::from_str(url)
        .map(|o| {
            o.application_name("edgeguard-portal-store")
                .disable_statement_logging()
        })
        .map_err(|e| StoreError::InvalidUrl {
            reason: e.to_string(),
        })
}

/// `user@host:port/db`: what logs and errors show of a connection.
pub(crate) fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    )
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparsable connection string>".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!(
                "{}://{}@{}{}",
                &url[..scheme_end],
                masked,
                &authority[at + 1..],
                &rest[authority_end..].split('?').next().unwrap_or("")
            )
        }
        None => format!(
            "{}://{}{}",
            &url[..scheme_end],
            authority,
            rest[authority_end..].split('?').next().unwrap_or("")
        ),
    }
}

pub(crate) fn validate(cfg: &StoreConfig, opts: &StoreOptions) -> Result<(), StoreError> {
    if cfg.app_refresh.is_zero() {
        return Err(StoreError::InvalidConfig(
            "the portal app refresh interval must be positive".into(),
        ));
    }
    if cfg.usage_refresh.is_zero() {
        return Err(StoreError::InvalidConfig(
            "the rate limit (usage) refresh interval must be positive".into(),
        ));
    }
    if opts.retry_min.is_zero() || opts.retry_max < opts.retry_min {
        return Err(StoreError::InvalidConfig(
            "retry_min must be positive and at most retry_max".into(),
        ));
    }
    if opts.query_timeout.is_zero() || opts.connect_timeout.is_zero() {
        return Err(StoreError::InvalidConfig(
            "query and connect timeouts must be positive".into(),
        ));
    }
    if opts.usage_poll.is_some_and(|p| p.is_zero()) {
        return Err(StoreError::InvalidConfig(
            "the usage poll interval must be positive".into(),
        ));
    }
    // ten years either way is plenty for tests and keeps the arithmetic far from overflow
    if opts.usage_clock_offset_secs.unsigned_abs() > 10 * 366 * 86_400 {
        return Err(StoreError::InvalidConfig(
            "the usage clock offset must be within ten years".into(),
        ));
    }
    if let Source::Yaml { path } = &cfg.source {
        if path.as_os_str().is_empty() {
            return Err(StoreError::InvalidConfig(
                "the portal apps file path is empty".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/grove?sslmode=require"),
            "postgres://u:***@db:5432/grove"
        );
        assert_eq!(
            redact_url("postgresql://u@db/grove"),
            "postgresql://u@db/grove"
        );
        assert_eq!(redact_url("postgres://db:1/x"), "postgres://db:1/x");
        assert_eq!(redact_url("nonsense"), "<unparsable connection string>");
        assert!(!format!(
            "{:?}",
            Source::Postgres {
                url: "postgres://u:s3cret@h:1/d".into()
            }
        )
        .contains("s3cret"));
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for bad in ["", "mysql://u:p@h/d", "postgres://u:s3cret@h:notaport/d"] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid Postgres connection string"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let o = parse_url("postgres://u:p@h:6543/grove").unwrap();
        assert_eq!(describe(&o), "u@h:6543/grove");
    }
}
