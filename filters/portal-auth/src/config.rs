//! The filter's JSON configuration, validated in `on_configure`.

use std::fmt;

use serde::Deserialize;

pub use edgeguard_host::ConfigError;

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
}

impl Config {
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let c: Config = serde_json::from_slice(json)
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
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = Config::parse(br#"{"store": {"cluster": "authz"}}"#).unwrap();
        assert_eq!(c.store.path, "/store/v1/snapshot");
        assert_eq!(c.store.refresh_interval_ms, 1000);
        assert!(!c.fail_open);
        let e = Config::parse(br#"{"store": {"cluster": ""}}"#).unwrap_err();
        assert_eq!(e.to_string(), "store.cluster: must name an Envoy cluster");
        let e =
            Config::parse(br#"{"store": {"cluster": "a", "refresh_interval_ms": 5}}"#).unwrap_err();
        assert!(e.to_string().starts_with("store.refresh_interval_ms"));
        let e = Config::parse(br#"{"store": {"cluster": "a"}, "typo": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `typo`"));
        assert!(Config::parse(b"[]").is_err());
    }
}
