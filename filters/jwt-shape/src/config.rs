//! The filter's JSON configuration: parsed with serde (unknown fields refused), then validated
//! into [`Config`]. Every error names the field it is about, so Envoy's log shows one clear line.
//!
//! Field names follow Envoy's `jwt_authn` where the concept is the same (`providers`,
//! `issuer`, `audiences`, `from_headers`, `from_params`, `claim_to_headers`, `forward`,
//! `forward_payload_header`, `clock_skew_seconds`, `require_expiration`, `rules`,
//! `bypass_cors_preflight`), so a `jwt_authn` config ports over field by field.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use edgeguard_verdict::jwk::{JwksError, KeySet};
use edgeguard_verdict::token::{Algorithm, ClaimRules};
use serde::Deserialize;

/// Envoy refuses request headers over 60 KiB by default; tokens are far smaller.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;

pub use edgeguard_host::{ConfigError, Env, HeaderStrip, ProcessEnv};

fn err(field: impl Into<String>, message: impl fmt::Display) -> ConfigError {
    ConfigError::new(field, message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: BTreeMap<String, RawProvider>,
    rules: Vec<RawRule>,
    #[serde(default)]
    shape: RawShape,
    #[serde(default = "yes")]
    bypass_cors_preflight: bool,
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    cache: RawCache,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default)]
    strip_request_headers: Vec<String>,
}

fn yes() -> bool {
    true
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

/// What happens to a request no rule matches.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// 403 (the default: a filter in front of a route should not leave holes).
    #[default]
    Deny,
    /// Pass without a token, as `jwt_authn` does.
    Allow,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "default_cache_entries")]
    max_entries: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

fn default_cache_entries() -> usize {
    DEFAULT_CACHE_ENTRIES
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShape {
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    electric_secret: Option<String>,
    #[serde(default)]
    electric_secret_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Vec<String>,
    #[serde(default)]
    hmac: Option<RawHmac>,
    #[serde(default)]
    local_jwks: Option<RawLocalJwks>,
    #[serde(default)]
    remote_jwks: Option<RawRemoteJwks>,
    #[serde(default)]
    from_headers: Option<Vec<RawHeaderLocation>>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "yes")]
    require_expiration: bool,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    claim_to_headers: Vec<RawClaimHeader>,
    #[serde(default)]
    forward: bool,
    #[serde(default)]
    forward_payload_header: Option<String>,
    #[serde(default)]
    require_bound_tokens: bool,
}

fn default_skew() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHmac {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    encoding: SecretEncoding,
}

/// How an HMAC secret string is turned into key bytes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecretEncoding {
    /// The UTF-8 bytes of the string (what Electric's gatekeeper and most libraries use).
    #[default]
    Utf8,
    Base64,
    Base64url,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalJwks {
    #[serde(default)]
    inline: Option<serde_json::Value>,
    #[serde(default)]
    inline_string: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    cluster: String,
    uri: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_refresh_s")]
    refresh_interval_s: u64,
    #[serde(default = "default_retry_s")]
    retry_interval_s: u64,
    #[serde(default = "default_refetch_s")]
    unknown_kid_refetch_interval_s: u64,
}

fn default_timeout_ms() -> u64 {
    5000
}
fn default_refresh_s() -> u64 {
    600
}
fn default_retry_s() -> u64 {
    5
}
fn default_refetch_s() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderLocation {
    name: String,
    #[serde(default)]
    value_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    bind_shape: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
}

/// Where a provider's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// HMAC secret or inline JWKS: loaded once, at configuration time.
    Static(KeySet),
    /// A JWKS fetched through an Envoy cluster in the background.
    Remote(RemoteJwks),
}

/// A remote JWKS endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    /// The URI is `https://`: the cluster must carry a TLS transport socket (a filter cannot
    /// see cluster settings, so a failed fetch says so in its log line).
    pub https: bool,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    pub refresh_interval_s: u64,
    pub retry_interval_s: u64,
    pub unknown_kid_refetch_interval_s: u64,
}

/// Where a token may be found in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header; the prefix (e.g. `Bearer `) is matched case-insensitively.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
}

/// A claim copied into a request header on success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: String,
    pub claim: String,
}

/// A validated provider.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub keys: KeySource,
    pub rules: ClaimRules,
    pub algorithms: Vec<Algorithm>,
    pub locations: Vec<TokenLocation>,
    pub claim_to_headers: Vec<ClaimHeader>,
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    /// Refuse tokens that are not certificate-bound (RFC 8705: no `cnf.x5t#S256`). Bound
    /// tokens are checked against the client certificate whatever this says.
    pub require_bound_tokens: bool,
}

/// Path matcher of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// What a matched rule requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    Public,
    /// Index into [`Config::providers`].
    Provider(usize),
}

/// A validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub path: PathMatch,
    /// Upper-case methods; empty matches every method.
    pub methods: Vec<String>,
    pub requires: Requirement,
    pub bind_shape: bool,
}

impl Rule {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// The validated filter configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub shape_claim: String,
    pub electric_secret: Option<String>,
    pub bypass_cors_preflight: bool,
    pub unmatched: Unmatched,
    pub cache_entries: usize,
    pub max_token_bytes: usize,
    /// Every header the filter may set; removed from client requests first.
    pub owned_headers: Vec<String>,
    /// Headers other parts of the deployment own (`strip_request_headers`), removed from every
    /// request this filter sees.
    pub strip: HeaderStrip,
    /// Every header and query parameter any provider takes tokens from: emptied on success.
    pub token_headers: Vec<String>,
    pub token_params: Vec<String>,
}

fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    let valid = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(err(field, format!("'{name}' is not a valid header name")));
    }
    if matches!(
        lower.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection"
    ) {
        return Err(err(field, format!("'{name}' cannot be set by this filter")));
    }
    Ok(lower)
}

fn secret_bytes(field: &str, s: &str, encoding: SecretEncoding) -> Result<Vec<u8>, ConfigError> {
    match encoding {
        SecretEncoding::Utf8 => Ok(s.as_bytes().to_vec()),
        SecretEncoding::Base64 => STANDARD
            .decode(s.trim())
            .map_err(|_| err(field, "is not valid base64")),
        SecretEncoding::Base64url => URL_SAFE_NO_PAD
            .decode(s.trim().trim_end_matches('='))
            .map_err(|_| err(field, "is not valid base64url")),
    }
}

fn env_value(field: &str, name: &str, env: &dyn Env) -> Result<String, ConfigError> {
    match env.var(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(err(
            field,
            format!("environment variable {name} is not set in the wasm VM (pass it with vm_config.environment_variables.host_env_keys)"),
        )),
    }
}

/// Splits `http://host:port/path` into authority and path.
fn split_uri(field: &str, uri: &str) -> Result<(String, String), ConfigError> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or_else(|| err(field, "must start with http:// or https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(err(field, "has no host"));
    }
    Ok((authority.to_string(), path.to_string()))
}

fn provider(name: &str, raw: RawProvider, env: &dyn Env) -> Result<Provider, ConfigError> {
    let f = |s: &str| format!("providers.{name}.{s}");
    let sources = [
        raw.hmac.is_some(),
        raw.local_jwks.is_some(),
        raw.remote_jwks.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources != 1 {
        return Err(err(
            format!("providers.{name}"),
            "needs exactly one of 'hmac', 'local_jwks' or 'remote_jwks'",
        ));
    }
    let mut hmac_len = None;
    let keys = if let Some(h) = raw.hmac {
        let (text, field) = match (&h.secret, &h.secret_env) {
            (Some(s), None) => (s.clone(), f("hmac.secret")),
            (None, Some(var)) => (
                env_value(&f("hmac.secret_env"), var, env)?,
                f("hmac.secret_env"),
            ),
            _ => {
                return Err(err(
                    f("hmac"),
                    "needs exactly one of 'secret' or 'secret_env'",
                ))
            }
        };
        let bytes = secret_bytes(&field, &text, h.encoding)?;
        hmac_len = Some(bytes.len());
        KeySource::Static(KeySet::from_hmac_secret(&bytes).map_err(|e| err(field, e))?)
    } else if let Some(l) = raw.local_jwks {
        let doc = match (l.inline, l.inline_string) {
            (Some(v), None) => v.to_string(),
            (None, Some(s)) => s,
            _ => {
                return Err(err(
                    f("local_jwks"),
                    "needs exactly one of 'inline' or 'inline_string'",
                ))
            }
        };
        let (set, _skipped) =
            KeySet::from_jwks(doc.as_bytes()).map_err(|e: JwksError| err(f("local_jwks"), e))?;
        KeySource::Static(set)
    } else if let Some(r) = raw.remote_jwks {
        if r.cluster.is_empty() {
            return Err(err(f("remote_jwks.cluster"), "must name an Envoy cluster"));
        }
        let (authority, path) = split_uri(&f("remote_jwks.uri"), &r.uri)?;
        if r.timeout_ms == 0 || r.timeout_ms > 60_000 {
            return Err(err(
                f("remote_jwks.timeout_ms"),
                "must be between 1 and 60000",
            ));
        }
        if r.refresh_interval_s == 0 {
            return Err(err(f("remote_jwks.refresh_interval_s"), "must be positive"));
        }
        if r.retry_interval_s == 0 {
            return Err(err(f("remote_jwks.retry_interval_s"), "must be positive"));
        }
        KeySource::Remote(RemoteJwks {
            cluster: r.cluster,
            https: r.uri.starts_with("https://"),
            authority,
            path,
            timeout_ms: r.timeout_ms,
            refresh_interval_s: r.refresh_interval_s,
            retry_interval_s: r.retry_interval_s,
            unknown_kid_refetch_interval_s: r.unknown_kid_refetch_interval_s,
        })
    } else {
        return Err(err(format!("providers.{name}"), "has no key source"));
    };

    let mut algorithms = Vec::new();
    for (i, a) in raw.algorithms.iter().enumerate() {
        let alg = Algorithm::from_name(a).ok_or_else(|| {
            err(
                f(&format!("algorithms[{i}]")),
                format!("'{a}' is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, ES512, EdDSA, Ed25519"),
            )
        })?;
        if let Some(len) = hmac_len {
            let need = edgeguard_verdict::jwk::min_hmac_key_bytes(alg);
            if alg.family() == edgeguard_verdict::token::KeyFamily::Hmac && len < need {
                return Err(err(
                    f(&format!("algorithms[{i}]")),
                    format!("{a} needs an HMAC secret of at least {need} bytes (RFC 7518 3.2); this one has {len}"),
                ));
            }
        }
        algorithms.push(alg);
    }

    let locations_raw = raw.from_headers.unwrap_or_else(|| {
        vec![RawHeaderLocation {
            name: "authorization".into(),
            value_prefix: Some("Bearer ".into()),
        }]
    });
    let mut locations = Vec::new();
    for (i, l) in locations_raw.into_iter().enumerate() {
        locations.push(TokenLocation::Header {
            name: header_name(&f(&format!("from_headers[{i}].name")), &l.name)?,
            prefix: l.value_prefix.unwrap_or_default(),
        });
    }
    for (i, p) in raw.from_params.into_iter().enumerate() {
        if p.is_empty() {
            return Err(err(f(&format!("from_params[{i}]")), "must not be empty"));
        }
        locations.push(TokenLocation::Param(p));
    }
    if locations.is_empty() {
        return Err(err(
            f("from_headers"),
            "no token location (from_headers and from_params are empty)",
        ));
    }

    let mut claim_to_headers = Vec::new();
    for (i, c) in raw.claim_to_headers.into_iter().enumerate() {
        if c.claim_name.is_empty() {
            return Err(err(
                f(&format!("claim_to_headers[{i}].claim_name")),
                "must not be empty",
            ));
        }
        claim_to_headers.push(ClaimHeader {
            header: header_name(
                &f(&format!("claim_to_headers[{i}].header_name")),
                &c.header_name,
            )?,
            claim: c.claim_name,
        });
    }
    let forward_payload_header = raw
        .forward_payload_header
        .map(|h| header_name(&f("forward_payload_header"), &h))
        .transpose()?;
    if raw.audiences.iter().any(String::is_empty) {
        return Err(err(f("audiences"), "must not contain empty strings"));
    }
    Ok(Provider {
        name: name.to_string(),
        keys,
        rules: ClaimRules {
            issuer: raw.issuer,
            audiences: raw.audiences,
            clock_skew_seconds: raw.clock_skew_seconds,
            require_expiration: raw.require_expiration,
            required_claims: raw.required_claims,
        },
        algorithms,
        locations,
        claim_to_headers,
        forward: raw.forward,
        forward_payload_header,
        require_bound_tokens: raw.require_bound_tokens,
    })
}

impl Config {
    /// Parses and validates the plugin configuration (the JSON Envoy passes to `on_configure`).
    pub fn parse(json: &[u8], env: &dyn Env) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(json)
            .map_err(|e| err("", format!("invalid configuration: {e}")))?;
        if raw.providers.is_empty() {
            return Err(err("providers", "must name at least one provider"));
        }
        let mut providers = Vec::new();
        for (name, p) in raw.providers {
            providers.push(provider(&name, p, env)?);
        }
        if raw.rules.is_empty() {
            return Err(err("rules", "must contain at least one rule"));
        }
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let f = |s: &str| format!("rules[{i}].{s}");
            let path = match (r.matcher.path, r.matcher.prefix) {
                (Some(p), None) => PathMatch::Exact(p),
                (None, Some(p)) => PathMatch::Prefix(p),
                (None, None) => PathMatch::Prefix("/".into()),
                (Some(_), Some(_)) => return Err(err(f("match"), "has both 'path' and 'prefix'")),
            };
            match &path {
                PathMatch::Exact(p) | PathMatch::Prefix(p) if !p.starts_with('/') => {
                    return Err(err(f("match"), format!("path '{p}' must start with '/'")))
                }
                _ => {}
            }
            let requires = match (r.provider, r.public) {
                (Some(name), false) => Requirement::Provider(
                    providers
                        .iter()
                        .position(|p| p.name == name)
                        .ok_or_else(|| err(f("provider"), format!("no provider named '{name}'")))?,
                ),
                (None, true) => Requirement::Public,
                _ => {
                    return Err(err(
                        format!("rules[{i}]"),
                        "needs exactly one of 'provider' or 'public: true'",
                    ))
                }
            };
            if r.bind_shape && requires == Requirement::Public {
                return Err(err(
                    f("bind_shape"),
                    "needs a provider (a public rule has no token to bind)",
                ));
            }
            rules.push(Rule {
                path,
                methods: r
                    .matcher
                    .methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
                requires,
                bind_shape: r.bind_shape,
            });
        }
        let electric_secret = match (raw.shape.electric_secret, raw.shape.electric_secret_env) {
            (Some(s), None) => Some(s),
            (None, Some(var)) => Some(env_value("shape.electric_secret_env", &var, env)?),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(err(
                    "shape",
                    "has both 'electric_secret' and 'electric_secret_env'",
                ))
            }
        };
        if raw.cache.max_entries > 1_000_000 {
            return Err(err("cache.max_entries", "must be at most 1000000"));
        }
        if raw.max_token_bytes < 64 || raw.max_token_bytes > 65536 {
            return Err(err("max_token_bytes", "must be between 64 and 65536"));
        }
        let mut owned_headers: Vec<String> = providers
            .iter()
            .flat_map(|p| {
                p.claim_to_headers
                    .iter()
                    .map(|c| c.header.clone())
                    .chain(p.forward_payload_header.clone())
            })
            .collect();
        owned_headers.sort();
        owned_headers.dedup();
        for p in &providers {
            for l in &p.locations {
                if let TokenLocation::Header { name, .. } = l {
                    if owned_headers.contains(name) {
                        return Err(err(
                            format!("providers.{}", p.name),
                            format!(
                                "header '{name}' is both a token location and set by the filter"
                            ),
                        ));
                    }
                }
            }
        }
        let strip = edgeguard_host::parse_header_strip(
            "strip_request_headers",
            &raw.strip_request_headers,
        )?;
        let mut token_headers = Vec::new();
        let mut token_params = Vec::new();
        for p in &providers {
            for l in &p.locations {
                match l {
                    TokenLocation::Header { name, .. } => {
                        if strip.matches(name) {
                            return Err(err(
                                "strip_request_headers",
                                format!(
                                    "removes '{name}', a token location of provider '{}'",
                                    p.name
                                ),
                            ));
                        }
                        token_headers.push(name.clone());
                    }
                    TokenLocation::Param(name) => token_params.push(name.clone()),
                }
            }
        }
        token_headers.sort();
        token_headers.dedup();
        token_params.sort();
        token_params.dedup();
        Ok(Config {
            providers,
            rules,
            shape_claim: raw.shape.claim.unwrap_or_else(|| "shape".to_string()),
            electric_secret,
            bypass_cors_preflight: raw.bypass_cors_preflight,
            unmatched: raw.unmatched,
            cache_entries: raw.cache.max_entries,
            max_token_bytes: raw.max_token_bytes,
            owned_headers,
            strip,
            token_headers,
            token_params,
        })
    }

    /// The first rule matching a request.
    pub fn rule_for(&self, method: &str, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(method, path))
    }

    /// Whether any rule binds shapes (so verified tokens cache their parsed shape claim).
    pub fn binds_shapes(&self) -> bool {
        self.rules.iter().any(|r| r.bind_shape)
    }

    /// Whether the filter stands in front of Electric (it binds shapes or holds Electric's
    /// secret): then no request it lets through keeps a client-sent `secret`/`api_secret`.
    pub fn guards_electric(&self) -> bool {
        self.electric_secret.is_some() || self.binds_shapes()
    }

    /// Whether any provider takes tokens from query parameters.
    pub fn has_param_locations(&self) -> bool {
        !self.token_params.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, name: &str) -> Option<String> {
            (name == "DEMO_SECRET").then(|| "0123456789abcdef0123456789abcdef".to_string())
        }
    }

    fn parse(v: serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes(), &NoEnv)
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn base() -> serde_json::Value {
        json!({
            "providers": {"demo": {"issuer": "i", "hmac": {"secret": SECRET}}},
            "rules": [{"match": {"prefix": "/v1/shape"}, "provider": "demo", "bind_shape": true}]
        })
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.providers.len(), 1);
        assert_eq!(
            c.providers[0].locations,
            vec![TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        assert!(c.providers[0].rules.require_expiration);
        assert_eq!(c.providers[0].rules.clock_skew_seconds, 60);
        assert!(c.bypass_cors_preflight);
        assert_eq!(c.unmatched, Unmatched::Deny);
        assert_eq!(c.shape_claim, "shape");
        assert_eq!(c.cache_entries, DEFAULT_CACHE_ENTRIES);
        assert!(c.rule_for("GET", "/v1/shape").is_some());
        assert!(c.rule_for("GET", "/other").is_none());
    }

    fn field_of(v: serde_json::Value) -> String {
        let e = parse(v).unwrap_err();
        format!("{e}")
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = base();
        v["providers"]["demo"]["hmac"]["secret"] = json!("short");
        assert!(field_of(v).starts_with("providers.demo.hmac.secret: HMAC secret is 5 bytes"));

        let mut v = base();
        v["providers"]["demo"]["hmac"] = json!({"secret_env": "MISSING"});
        assert!(
            field_of(v).starts_with("providers.demo.hmac.secret_env: environment variable MISSING")
        );

        let mut v = base();
        v["providers"]["demo"]["hmac"] = json!({"secret_env": "DEMO_SECRET"});
        assert!(parse(v).is_ok());

        let mut v = base();
        v["providers"]["demo"]["algorithms"] = json!(["RS256", "none"]);
        assert!(field_of(v).starts_with("providers.demo.algorithms[1]: 'none'"));

        let mut v = base();
        v["rules"][0]["provider"] = json!("nope");
        assert_eq!(field_of(v), "rules[0].provider: no provider named 'nope'");

        let mut v = base();
        v["rules"][0]["public"] = json!(true);
        assert_eq!(
            field_of(v),
            "rules[0]: needs exactly one of 'provider' or 'public: true'"
        );

        let mut v = base();
        v["providers"]["demo"]["remote_jwks"] = json!({"cluster": "c", "uri": "http://x/jwks"});
        assert_eq!(
            field_of(v),
            "providers.demo: needs exactly one of 'hmac', 'local_jwks' or 'remote_jwks'"
        );

        let mut v = base();
        v["providers"]["demo"]["hmac"] = serde_json::Value::Null;
        v["providers"]["demo"]["remote_jwks"] = json!({"cluster": "c", "uri": "ftp://x/jwks"});
        assert_eq!(
            field_of(v),
            "providers.demo.remote_jwks.uri: must start with http:// or https://"
        );

        let mut v = base();
        v["providers"]["demo"]["claim_to_headers"] =
            json!([{"header_name": "bad header", "claim_name": "sub"}]);
        assert!(field_of(v).starts_with("providers.demo.claim_to_headers[0].header_name"));

        let mut v = base();
        v["providers"]["demo"]["unknown_knob"] = json!(1);
        assert!(field_of(v).contains("unknown field `unknown_knob`"));

        let mut v = base();
        v["providers"]["demo"]["local_jwks"] = json!({"inline": {"keys": []}});
        v["providers"]["demo"]["hmac"] = serde_json::Value::Null;
        assert!(field_of(v).starts_with("providers.demo.local_jwks: JWKS has no usable key"));

        assert!(field_of(json!({"providers": {}, "rules": []})).starts_with("providers:"));
        assert!(field_of(json!("not an object")).starts_with("invalid configuration"));
    }

    #[test]
    fn remote_jwks_is_split() {
        let mut v = base();
        v["providers"]["demo"]["hmac"] = serde_json::Value::Null;
        v["providers"]["demo"]["remote_jwks"] =
            json!({"cluster": "idp", "uri": "https://idp.example:8443/.well-known/jwks.json"});
        let c = parse(v).unwrap();
        match &c.providers[0].keys {
            KeySource::Remote(r) => {
                assert_eq!(r.authority, "idp.example:8443");
                assert_eq!(r.path, "/.well-known/jwks.json");
                assert_eq!(r.refresh_interval_s, 600);
            }
            other => panic!("{other:?}"),
        }
    }
}
