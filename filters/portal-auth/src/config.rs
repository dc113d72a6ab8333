//! The filter's JSON configuration, validated in `on_configure`.

use std::fmt;

use serde::Deserialize;

pub use edgeguard_host::{ConfigError, Env, HeaderStrip, ProcessEnv, Secret};
pub use edgeguard_verdict::quota::QuotaHeaders;

fn err(field: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError::new(field, message)
}

/// Where the store copy comes from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreSource {
    /// Envoy cluster of `edgeguard authz`'s HTTP port.
    pub cluster: String,
    /// `:authority` of the fetch.
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// How often to ask for changes.
    #[serde(default = "default_refresh_ms")]
    pub refresh_interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The VM environment variable holding the bearer token `edgeguard authz` requires on
    /// its store endpoint (the same `EDGEGUARD_STORE_TOKEN` both sides read).
    #[serde(default = "default_token_env")]
    pub token_env: String,
}

/// The store endpoint's credential: the same variable `edgeguard authz` reads.
pub const DEFAULT_TOKEN_ENV: &str = "EDGEGUARD_STORE_TOKEN";
/// Shortest store token accepted (the server refuses shorter ones too).
pub const MIN_TOKEN_BYTES: usize = 32;

fn default_token_env() -> String {
    DEFAULT_TOKEN_ENV.to_string()
}

fn default_authority() -> String {
    "edgeguard-authz".to_string()
}
fn default_path() -> String {
    edgeguard_verdict::portal_wire::PATH.to_string()
}
fn default_refresh_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    5000
}

/// Usage metering: allowed requests counted per app and reported to `edgeguard authz`
/// (`POST` to the store cluster, same authority and token as the store feed).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Metering {
    #[serde(default)]
    pub enabled: bool,
    /// How often counts are reported (and an unacknowledged report resent).
    #[serde(default = "default_report_interval_ms")]
    pub report_interval_ms: u64,
    /// The usage endpoint on `edgeguard authz`'s HTTP port.
    #[serde(default = "default_usage_path")]
    pub path: String,
}

impl Default for Metering {
    fn default() -> Metering {
        Metering {
            enabled: false,
            report_interval_ms: default_report_interval_ms(),
            path: default_usage_path(),
        }
    }
}

fn default_report_interval_ms() -> u64 {
    1000
}
fn default_usage_path() -> String {
    edgeguard_verdict::portal_wire::USAGE_PATH.to_string()
}

/// The validated configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreSource,
    /// Stamp `Rl-Plan-Free` / `Rl-User-Limit-<millions>` on allowed requests.
    #[serde(default)]
    pub rate_limit_headers: bool,
    /// Let requests through (unstamped) while the store has never loaded, instead of 503.
    #[serde(default)]
    pub fail_open: bool,
    /// Headers other filters own (e.g. jwt-shape's `x-edgeguard-*`), removed from every request.
    #[serde(default, rename = "strip_request_headers")]
    strip_patterns: Vec<String>,
    #[serde(skip)]
    pub strip: HeaderStrip,
    /// Usage metering (off unless `metering.enabled`).
    #[serde(default)]
    pub metering: Metering,
    /// Which answers carry `RateLimit-Policy` / `RateLimit`: `denied` (429 only, with
    /// `Retry-After`) or `all` (also allowed requests of accounts with a monthly limit).
    #[serde(default, rename = "quota_headers")]
    quota_headers_name: Option<String>,
    #[serde(skip)]
    pub quota_headers: QuotaHeaders,
    /// The store token (from `store.token_env`).
    #[serde(skip)]
    pub store_token: Secret,
}

impl Config {
    pub fn parse(json: &[u8], env: &dyn Env) -> Result<Config, ConfigError> {
        let mut c: Config = serde_json::from_slice(json)
            .map_err(|e| err("", format!("invalid configuration: {e}")))?;
        if c.store.cluster.is_empty() {
            return Err(err("store.cluster", "must name an Envoy cluster"));
        }
        if !c.store.path.starts_with('/') {
            return Err(err("store.path", "must start with '/'"));
        }
        if !(100..=3_600_000).contains(&c.store.refresh_interval_ms) {
            return Err(err(
                "store.refresh_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if !(1..=60_000).contains(&c.store.timeout_ms) {
            return Err(err("store.timeout_ms", "must be between 1 and 60000"));
        }
        if !(100..=60_000).contains(&c.metering.report_interval_ms) {
            return Err(err(
                "metering.report_interval_ms",
                "must be between 100 and 60000",
            ));
        }
        if !c.metering.path.starts_with('/') {
            return Err(err("metering.path", "must start with '/'"));
        }
        if let Some(name) = &c.quota_headers_name {
            c.quota_headers = name
                .parse::<QuotaHeaders>()
                .map_err(|e| err("quota_headers", e))?;
        }
        c.strip = edgeguard_host::parse_header_strip("strip_request_headers", &c.strip_patterns)?;
        if let Some(n) = c.strip_patterns.iter().find(|p| {
            let p = p.to_ascii_lowercase();
            p.starts_with("portal-") || p.starts_with("rl-") || p == "authorization"
        }) {
            return Err(err(
                "strip_request_headers",
                format!("'{n}' is a header portal-auth reads or sets itself"),
            ));
        }
        let var = &c.store.token_env;
        let token = env.var(var).unwrap_or_default();
        if token.len() < MIN_TOKEN_BYTES {
            let problem = if token.is_empty() {
                "is not set".to_string()
            } else {
                format!("holds {} bytes, fewer than {MIN_TOKEN_BYTES}", token.len())
            };
            return Err(err(
                "store.token_env",
                format!("environment variable {var} {problem} in the wasm VM: set the store token `edgeguard authz` requires (EDGEGUARD_STORE_TOKEN) in Envoy's environment and pass it with vm_config.environment_variables.host_env_keys"),
            ));
        }
        c.store_token = Secret::new(token);
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestEnv;
    impl Env for TestEnv {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "EDGEGUARD_STORE_TOKEN" => Some("t".repeat(32)),
                "SHORT" => Some("t".repeat(31)),
                _ => None,
            }
        }
    }

    impl Config {
        fn parse_test(json: &[u8]) -> Result<Config, ConfigError> {
            Config::parse(json, &TestEnv)
        }
    }

    #[test]
    fn store_token_and_strip_list() {
        let c = Config::parse_test(
            br#"{"store": {"cluster": "a"}, "strip_request_headers": ["x-edgeguard-*"]}"#,
        )
        .unwrap();
        assert_eq!(c.store_token.expose().len(), 32);
        assert!(
            !format!("{c:?}").contains("tttt"),
            "the token stays out of Debug"
        );
        assert!(c.strip.matches("x-edgeguard-sub"));
        let e =
            Config::parse_test(br#"{"store": {"cluster": "a", "token_env": "NOPE"}}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("store.token_env: environment variable NOPE is not set"),
            "{e}"
        );
        let e = Config::parse_test(br#"{"store": {"cluster": "a", "token_env": "SHORT"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("holds 31 bytes"), "{e}");
        let e = Config::parse_test(
            br#"{"store": {"cluster": "a"}, "strip_request_headers": ["Portal-*"]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("strip_request_headers:"), "{e}");
    }

    #[test]
    fn parses_and_validates() {
        let c = Config::parse_test(br#"{"store": {"cluster": "authz"}}"#).unwrap();
        assert_eq!(c.store.path, "/store/v1/snapshot");
        assert_eq!(c.store.refresh_interval_ms, 1000);
        assert!(!c.fail_open);
        let e = Config::parse_test(br#"{"store": {"cluster": ""}}"#).unwrap_err();
        assert_eq!(e.to_string(), "store.cluster: must name an Envoy cluster");
        let e = Config::parse_test(br#"{"store": {"cluster": "a", "refresh_interval_ms": 5}}"#)
            .unwrap_err();
        assert!(e.to_string().starts_with("store.refresh_interval_ms"));
        let e = Config::parse_test(br#"{"store": {"cluster": "a"}, "typo": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `typo`"));
        assert!(Config::parse_test(b"[]").is_err());
    }

    #[test]
    fn metering_and_quota_headers() {
        let c = Config::parse_test(br#"{"store": {"cluster": "a"}}"#).unwrap();
        assert_eq!(c.metering, Metering::default());
        assert!(!c.metering.enabled);
        assert_eq!(c.metering.report_interval_ms, 1000);
        assert_eq!(c.metering.path, "/store/v1/usage");
        assert_eq!(c.quota_headers, QuotaHeaders::Denied);
        let c = Config::parse_test(
            br#"{"store": {"cluster": "a"}, "quota_headers": "all",
                 "metering": {"enabled": true, "report_interval_ms": 250, "path": "/u"}}"#,
        )
        .unwrap();
        assert!(c.metering.enabled);
        assert_eq!(c.metering.report_interval_ms, 250);
        assert_eq!(c.metering.path, "/u");
        assert_eq!(c.quota_headers, QuotaHeaders::All);
        let refused = |json: &str| {
            Config::parse_test(format!(r#"{{"store": {{"cluster": "a"}}, {json}}}"#).as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(r#""metering": {"report_interval_ms": 99}"#),
            "metering.report_interval_ms: must be between 100 and 60000"
        );
        assert_eq!(
            refused(r#""metering": {"report_interval_ms": 60001}"#),
            "metering.report_interval_ms: must be between 100 and 60000"
        );
        assert_eq!(
            refused(r#""metering": {"path": "store/v1/usage"}"#),
            "metering.path: must start with '/'"
        );
        assert_eq!(
            refused(r#""quota_headers": "sometimes""#),
            "quota_headers: 'sometimes' is not one of denied, all"
        );
        assert!(refused(r#""metering": {"enable": true}"#).contains("unknown field `enable`"));
    }
}
