//! `edgeguard enroll` settings: flags, each also an environment variable. Secrets (the admin
//! token, the Postgres connection string) are parsed without validation so that clap never
//! echoes them in an error, are never printed (`Debug` shows `***`), and are better given
//! through the environment (a flag shows in `ps`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest admin token accepted: 32 bytes (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// The longest enrollment-token lifetime (setting and request alike).
pub const MAX_ENROLLMENT_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub use edgeguard_logging::LogFormat;

/// A secret from the command line or the environment: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, to use (never to log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

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
        .map_err(|e| format!("expected a duration like 30s, 20m, 1h or 30d ({e})"))
}

/// The admin token, kept only as its SHA-256 digest; requests are compared digest to digest
/// in constant time (equal lengths, no early exit on the first differing byte).
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// Checks the configured token; the error names the variable, never the value.
    pub fn new(token: Option<&Secret>) -> Result<AdminToken, String> {
        let Some(t) = token.filter(|t| !t.0.is_empty()) else {
            return Err(
                "EDGEGUARD_ENROLL_ADMIN_TOKEN (--admin-token) is required: the bearer token of the admin API, at least 32 bytes (`openssl rand -hex 32`)"
                    .into(),
            );
        };
        if t.0.len() < MIN_ADMIN_TOKEN_BYTES {
            return Err(format!(
                "EDGEGUARD_ENROLL_ADMIN_TOKEN (--admin-token) must be at least {MIN_ADMIN_TOKEN_BYTES} bytes, it has {}: generate one with `openssl rand -hex 32`",
                t.0.len()
            ));
        }
        if !t.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "EDGEGUARD_ENROLL_ADMIN_TOKEN (--admin-token) must be printable ASCII without spaces (it is sent as `Authorization: Bearer <token>`); check for a trailing newline"
                    .into(),
            );
        }
        Ok(AdminToken {
            digest: Sha256::digest(t.0.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the admin token (SHA-256 digests compared in constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        bool::from(d.ct_eq(&self.digest))
    }
}

/// `edgeguard enroll [flags]`.
#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// Address of the HTTP server (admin API, device API, health, metrics).
    #[arg(
        long,
        env = "EDGEGUARD_ENROLL_LISTEN",
        default_value = "127.0.0.1:10005"
    )]
    pub listen: SocketAddr,

    /// Postgres holding the device registry (migration 0005, `edgeguard migrate`). Without
    /// it, --devices-file is used.
    #[arg(long, env = "POSTGRES_CONNECTION_STRING", value_parser = secret, hide_env_values = true)]
    pub postgres_connection_string: Option<Secret>,

    /// DB-less mode: the device registry as a YAML file this service owns (rewritten
    /// atomically, ending with the end marker line `...`). One replica only.
    #[arg(long, env = "EDGEGUARD_DEVICES_FILE")]
    pub devices_file: Option<PathBuf>,

    /// Bearer token of the admin API, at least 32 bytes. Prefer the environment.
    #[arg(long, env = "EDGEGUARD_ENROLL_ADMIN_TOKEN", value_parser = secret, hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// The fleet CA's certificate (PEM; an intermediate may be followed by its issuers, all
    /// returned in the chain). A file or a mounted Kubernetes Secret (`tls.crt`).
    #[arg(long, env = "EDGEGUARD_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// The fleet CA's private key (PKCS#8 PEM: P-256, P-384, Ed25519 or RSA). A file or a
    /// mounted Kubernetes Secret (`tls.key`).
    #[arg(long, env = "EDGEGUARD_CA_KEY")]
    pub ca_key: Option<PathBuf>,

    /// The SPIFFE trust domain of device ids: `spiffe://<trust domain>/device/<id>`, e.g.
    /// `edge.example`.
    #[arg(long, env = "EDGEGUARD_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// Lifetime of the device certificates (from 1m; capped at the CA's own expiry).
    #[arg(long, env = "EDGEGUARD_DEVICE_CERT_TTL", default_value = "30d", value_parser = duration)]
    pub device_cert_ttl: Duration,

    /// Default lifetime of enrollment tokens (a request may ask for another, up to 7d).
    #[arg(long, env = "EDGEGUARD_ENROLLMENT_TOKEN_TTL", default_value = "1h", value_parser = duration)]
    pub enrollment_token_ttl: Duration,

    /// Devices whose certificate expires within this window are reported by the expiry scanner
    /// (a warning line each, `edgeguard_enroll_devices_expiring`, `GET
    /// /admin/v1/devices?expiring=true`) so they can be re-keyed in time.
    #[arg(long, env = "EDGEGUARD_DEVICE_EXPIRY_WARNING", default_value = "7d", value_parser = duration)]
    pub device_expiry_warning: Duration,

    /// A device counts as seen (`edgeguard_enroll_devices_seen`, `GET
    /// /admin/v1/devices?seen=true`) when its last allowed request through edgeguard (its
    /// heartbeat, from the usage reports) is at most this old.
    #[arg(long, env = "EDGEGUARD_DEVICE_SEEN_WINDOW", default_value = "15m", value_parser = duration)]
    pub device_seen_window: Duration,

    /// How often the expiry scanner walks the registry.
    #[arg(long, env = "EDGEGUARD_DEVICE_EXPIRY_SCAN_INTERVAL", default_value = "5m", value_parser = duration)]
    pub device_expiry_scan_interval: Duration,

    /// trace, debug, info, warn or error.
    #[arg(long, env = "EDGEGUARD_ENROLL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// json (default) or text.
    #[arg(
        long,
        env = "EDGEGUARD_ENROLL_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_` (SPIFFE-ID §2.1), no
/// scheme, port or path.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err("EDGEGUARD_TRUST_DOMAIN (--trust-domain) must be 1 to 255 characters, e.g. edge.example".into());
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(format!(
            "EDGEGUARD_TRUST_DOMAIN (--trust-domain) '{td}' may hold only lowercase letters, digits, '.', '-' and '_' (a SPIFFE trust domain such as edge.example: no scheme, port or path)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_rules_and_comparison() {
        assert!(AdminToken::new(None).is_err());
        let short = Secret::new("short-token");
        let e = AdminToken::new(Some(&short)).unwrap_err();
        assert!(
            e.contains("at least 32") && !e.contains("short-token"),
            "{e}"
        );
        let spaced = Secret::new(format!("{} x", "a".repeat(40)));
        let e = AdminToken::new(Some(&spaced)).unwrap_err();
        assert!(!e.contains("aaaa"), "{e}");
        let good = "0123456789abcdef0123456789abcdef";
        let t = AdminToken::new(Some(&Secret::new(good))).unwrap();
        assert!(t.matches(good.as_bytes()));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdeF"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(***)");
        assert_eq!(format!("{:?}", Secret::new(good)), "Secret(***)");
    }

    #[test]
    fn trust_domains() {
        assert!(check_trust_domain("edge.example").is_ok());
        assert!(check_trust_domain("fleet-1.corp_x").is_ok());
        for bad in ["", "Edge.example", "spiffe://edge", "edge:443", "edge/x"] {
            assert!(check_trust_domain(bad).is_err(), "{bad}");
        }
    }
}
