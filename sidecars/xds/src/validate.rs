//! Validation: the YAML sections of one snapshot become a [`Plan`] (names resolved, addresses
//! and durations parsed, filter configurations checked with the filters' own parsers), or a
//! list of [`Issue`]s, each naming the field it is about (`routes[2].upstream: no upstream
//! named 'api'`). Pure: no file system, no network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{FilterKind, FilterSpec, Runtime, Sections};

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issue {
    /// Where, e.g. `routes[2].upstream` (empty for the file as a whole).
    pub path: String,
    pub message: String,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Issue {
        Issue {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// `host:port` of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
    /// True when `host` is an IP address (EDS can carry it); false for a DNS name.
    pub is_ip: bool,
}

/// A listener ready to be turned into an Envoy `Listener`.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanListener {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    /// ECDS resource names of its HTTP filters, in order.
    pub filters: Vec<String>,
    /// The RDS route configuration it uses.
    pub route_config: String,
    pub domains: Vec<String>,
    /// Envoy's `cors` filter first in its chain (the policy is on its virtual host).
    pub cors: bool,
}

/// How an allowed origin is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginMatch {
    Exact(String),
    /// `scheme://` + any one or more labels + `.suffix` (from `scheme://*.suffix`).
    Subdomains {
        scheme: String,
        suffix: String,
    },
    Any,
}

/// A validated CORS policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanCors {
    pub origins: Vec<OriginMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Duration,
    pub allow_credentials: bool,
}

/// Methods an Electric client (GET shapes, POST subset snapshots) and an RPC caller use.
pub const CORS_METHODS: &[&str] = &["GET", "POST", "OPTIONS"];
/// Request headers a browser may send: credentials, JSON bodies, revalidation.
pub const CORS_ALLOW_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "if-none-match",
    "portal-application-id",
];
/// Response headers a page may read: Electric's protocol headers and the answers of the
/// edgeguard filters (the reason of a 401, when to retry a 429, quota headers).
pub const CORS_EXPOSE_HEADERS: &[&str] = &[
    "electric-handle",
    "electric-offset",
    "electric-schema",
    "electric-cursor",
    "electric-up-to-date",
    "electric-chunk-last-offset",
    "electric-has-data",
    "www-authenticate",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
];
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);

fn check_origin(path: &str, o: &str, issues: &mut Vec<Issue>) -> Option<OriginMatch> {
    if o == "*" {
        return Some(OriginMatch::Any);
    }
    let bad = |issues: &mut Vec<Issue>, why: &str| {
        issues.push(Issue::new(path, format!("'{o}' {why}")));
        None
    };
    let Some((scheme, host)) = o.split_once("://") else {
        return bad(issues, "is not an origin (scheme://host[:port])");
    };
    if scheme != "http" && scheme != "https" {
        return bad(issues, "must be http:// or https://");
    }
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b':'
            })
    };
    match host.strip_prefix("*.") {
        Some(suffix) if host_ok(suffix) && !suffix.contains('*') => Some(OriginMatch::Subdomains {
            scheme: scheme.to_string(),
            suffix: suffix.to_string(),
        }),
        Some(_) => bad(issues, "has an invalid host after '*.'"),
        None if host_ok(host) => Some(OriginMatch::Exact(o.to_string())),
        None => bad(
            issues,
            "has an invalid host (lower case, no path, no trailing slash; '*.' only as the first label)",
        ),
    }
}

fn check_cors(path: &str, c: &crate::model::CorsSpec, issues: &mut Vec<Issue>) -> Option<PlanCors> {
    let before = issues.len();
    if c.allow_origins.is_empty() {
        issues.push(Issue::new(
            format!("{path}.allow_origins"),
            "list at least one origin",
        ));
    }
    let origins: Vec<OriginMatch> = c
        .allow_origins
        .iter()
        .enumerate()
        .filter_map(|(i, o)| check_origin(&format!("{path}.allow_origins[{i}]"), o, issues))
        .collect();
    if c.allow_credentials && origins.contains(&OriginMatch::Any) {
        issues.push(Issue::new(
            format!("{path}.allow_credentials"),
            "browsers refuse credentials with the '*' origin: list the origins",
        ));
    }
    let list = |field: &str, v: &Option<Vec<String>>, default: &[&str], issues: &mut Vec<Issue>| {
        let items: Vec<String> = match v {
            Some(v) => v.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        };
        for (i, h) in items.iter().enumerate() {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                issues.push(Issue::new(
                    format!("{path}.{field}[{i}]"),
                    format!("'{h}' is not a header or method name"),
                ));
            }
        }
        items
    };
    let allow_methods = list("allow_methods", &c.allow_methods, CORS_METHODS, issues);
    let allow_headers = list(
        "allow_headers",
        &c.allow_headers,
        CORS_ALLOW_HEADERS,
        issues,
    );
    let expose_headers = list(
        "expose_headers",
        &c.expose_headers,
        CORS_EXPOSE_HEADERS,
        issues,
    );
    let max_age = match &c.max_age {
        Some(m) => duration(&format!("{path}.max_age"), m, issues).unwrap_or(DEFAULT_CORS_MAX_AGE),
        None => DEFAULT_CORS_MAX_AGE,
    };
    (issues.len() == before).then_some(PlanCors {
        origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: c.allow_credentials,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    Upstream {
        cluster: String,
        timeout: Option<Duration>,
    },
    Direct {
        status: u32,
        body: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanRoute {
    pub matcher: PathMatch,
    pub action: RouteAction,
}

/// One RDS route configuration (one per listener).
#[derive(Clone, Debug, PartialEq)]
pub struct PlanRouteConfig {
    pub name: String,
    pub listener: String,
    pub domains: Vec<String>,
    pub routes: Vec<PlanRoute>,
    /// The listener's CORS policy, on its virtual host.
    pub cors: Option<PlanCors>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanCluster {
    pub name: String,
    pub endpoints: Vec<HostPort>,
    pub connect_timeout: Duration,
    pub http2: bool,
}

impl PlanCluster {
    /// IP endpoints only: served over EDS. Otherwise STRICT_DNS with inline endpoints.
    pub fn uses_eds(&self) -> bool {
        self.endpoints.iter().all(|e| e.is_ip)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlanFilterKind {
    Wasm {
        module: PathBuf,
        /// The JSON text `on_configure` receives.
        configuration: String,
        env: Vec<String>,
        fail_open: bool,
    },
    /// A native Envoy dynamic module (`runtime: native`): no VM, so no failure policy, no
    /// environment list.
    Native {
        /// `dynamic_module_config.name`: Envoy loads `lib<module>.so` from its
        /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
        module: String,
        /// `filter_name` (which filter of the module).
        filter_name: String,
        /// The JSON text the module's configuration hook receives (as the wasm build's
        /// `on_configure` would).
        configuration: String,
    },
    ExtAuthz {
        cluster: String,
        timeout: Duration,
        failure_mode_allow: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanFilter {
    pub name: String,
    pub kind: PlanFilterKind,
    /// jwt-shape and portal-auth: the listener accepts both their wasm and native
    /// configuration types over ECDS, so a `runtime` switch is an ECDS update only (the
    /// listener is not modified, nothing drains).
    pub either_runtime: bool,
}

/// A validated snapshot description.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub listeners: Vec<PlanListener>,
    pub route_configs: Vec<PlanRouteConfig>,
    pub clusters: Vec<PlanCluster>,
    pub filters: Vec<PlanFilter>,
    /// Not errors, but worth a log line (e.g. a module file missing on this host).
    pub warnings: Vec<String>,
}

/// The cluster `type: authz` filters call.
pub const AUTHZ_CLUSTER: &str = "edgeguard-authz";
/// The default per-check timeout of the authz service.
pub const DEFAULT_AUTHZ_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What validation needs from outside: where modules live, and the environment.
pub struct Context<'a> {
    /// Absolute directory relative `module` paths are resolved against.
    pub wasm_dir: &'a Path,
    /// Where the native modules are on this host, when the file says (`native_dir`; only used
    /// for warnings).
    pub native_dir: Option<&'a Path>,
    /// Reads environment variables (filter configurations may name `*_env` variables).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Does this file exist on this host? (only used for warnings)
    pub exists: &'a dyn Fn(&Path) -> bool,
}

/// The route configuration name of a listener.
pub fn route_config_name(listener: &str) -> String {
    format!("{listener}-routes")
}

fn duration(path: &str, s: &str, issues: &mut Vec<Issue>) -> Option<Duration> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            issues.push(Issue::new(path, format!("'{s}' is not a duration ({e})")));
            None
        }
    }
}

fn host_port(path: &str, s: &str, issues: &mut Vec<Issue>) -> Option<HostPort> {
    let bad = |issues: &mut Vec<Issue>| {
        issues.push(Issue::new(path, format!("'{s}' is not host:port")));
        None
    };
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return bad(issues);
        }
        return Some(HostPort {
            host: sa.ip().to_string(),
            port: sa.port(),
            is_ip: true,
        });
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad(issues);
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Some(HostPort {
            host: host.to_string(),
            port: p,
            is_ip: false,
        }),
        _ => bad(issues),
    }
}

fn unique_names<'a>(
    section: &str,
    what: &str,
    names: impl Iterator<Item = &'a str>,
    issues: &mut Vec<Issue>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        let path = format!("{section}[{i}].name");
        if n.trim().is_empty() {
            issues.push(Issue::new(path, format!("{what} name is empty")));
        } else if !seen.insert(n) {
            issues.push(Issue::new(path, format!("duplicate {what} name '{n}'")));
        }
    }
    seen
}

fn check_filter(
    path: &str,
    f: &FilterSpec,
    authz: Option<&(String, Duration, bool)>,
    clusters: &[PlanCluster],
    ctx: &Context<'_>,
    issues: &mut Vec<Issue>,
    warnings: &mut Vec<String>,
) -> Option<PlanFilterKind> {
    let module = |default: &str| -> PathBuf {
        let m = f.module.clone().unwrap_or_else(|| default.to_string());
        let p = Path::new(&m);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            ctx.wasm_dir.join(p)
        }
    };
    let configuration = match &f.config {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v) => Some(v.to_string()),
    };
    let wasm = |module: PathBuf, configuration: String, warnings: &mut Vec<String>| {
        if !(ctx.exists)(&module) {
            warnings.push(format!(
                "{path}: module {} does not exist on this host (Envoy will refuse the filter if it does not exist there either)",
                module.display()
            ));
        }
        PlanFilterKind::Wasm {
            module,
            configuration,
            env: f.env.clone(),
            fail_open: f.fail_open,
        }
    };
    let runtime = f.runtime.unwrap_or_default();
    match (f.kind, f.runtime) {
        (FilterKind::Authz, Some(r)) => issues.push(Issue::new(
            format!("{path}.runtime"),
            format!(
                "an authz filter is Envoy's built-in ext_authz: it has no runtime ('{}'); remove it",
                r.name()
            ),
        )),
        (FilterKind::Floor | FilterKind::Wasm, Some(Runtime::Native)) => issues.push(Issue::new(
            format!("{path}.runtime"),
            format!(
                "only jwt-shape and portal-auth have a native build; a '{}' filter runs in a wasm VM (remove it or write 'runtime: wasm')",
                f.kind.name()
            ),
        )),
        _ => {}
    }
    let native = runtime == Runtime::Native && native_capable(f.kind);
    if native {
        if f.fail_open {
            issues.push(Issue::new(
                format!("{path}.fail_open"),
                "meaningless for runtime: native: a dynamic module has no VM that could fail, \
                 be skipped or be reloaded (fail_open is the wasm failure_policy); remove it",
            ));
        }
        if !f.env.is_empty() {
            issues.push(Issue::new(
                format!("{path}.env"),
                "not for runtime: native: a native module reads Envoy's process environment \
                 itself (every variable, not only those listed), so 'env' (the wasm VM's \
                 host_env_keys) would restrict nothing; remove it and set the variables in \
                 Envoy's environment",
            ));
        }
        if let Some(m) = &f.module {
            issues.push(Issue::new(
                format!("{path}.module"),
                format!(
                    "'{m}' is a wasm module: runtime: native loads lib{}.so from Envoy's \
                     ENVOY_DYNAMIC_MODULES_SEARCH_PATH; remove it",
                    native_module_name(f.kind)
                ),
            ));
        }
    } else {
        if f.fail_open {
            if let Some(which) = auth_filter(f) {
                issues.push(Issue::new(
                    format!("{path}.fail_open"),
                    format!(
                        "refused for an authentication filter ({which}): if its VM crashed, \
                         fail_open would let every request through unauthenticated. Remove it: \
                         a crashed VM is reloaded (failure_policy FAIL_RELOAD) and requests fail \
                         closed meanwhile"
                    ),
                ));
            }
        }
        for (i, e) in f.env.iter().enumerate() {
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                issues.push(Issue::new(
                    format!("{path}.env[{i}]"),
                    format!("'{e}' is not an environment variable name"),
                ));
            }
        }
    }
    // Variables the filter reads where Envoy runs may be absent where the control plane runs:
    // stand in a placeholder that every secret encoding accepts. A wasm VM sees only the
    // variables listed in `env`; a native module sees Envoy's whole environment.
    let env = FilterEnv {
        keys: (!native).then_some(f.env.as_slice()),
        env: ctx.env,
    };
    let edgeguard = |configuration: Option<String>,
                     parse: &dyn Fn(&str) -> Result<(), String>,
                     issues: &mut Vec<Issue>,
                     warnings: &mut Vec<String>|
     -> Option<PlanFilterKind> {
        let kind = f.kind.name();
        let Some(json) = configuration else {
            issues.push(Issue::new(
                path,
                format!("a {kind} filter needs 'config' or 'config_file'"),
            ));
            return None;
        };
        if let Err(e) = parse(&json) {
            issues.push(Issue::new(
                format!("{path}.config"),
                format!("{kind} refuses it: {e}"),
            ));
            return None;
        }
        if native {
            let module = native_module_name(f.kind);
            if let Some(dir) = ctx.native_dir {
                let so = dir.join(format!("lib{module}.so"));
                if !(ctx.exists)(&so) {
                    warnings.push(format!(
                        "{path}: native module {} does not exist on this host (Envoy will refuse the filter if its ENVOY_DYNAMIC_MODULES_SEARCH_PATH lacks it too)",
                        so.display()
                    ));
                }
            }
            Some(PlanFilterKind::Native {
                module: module.to_string(),
                filter_name: native_filter_name(f.kind).to_string(),
                configuration: json,
            })
        } else {
            Some(wasm(
                module(&format!("{}.wasm", native_filter_name(f.kind))),
                json,
                warnings,
            ))
        }
    };
    match f.kind {
        FilterKind::JwtShape => {
            let remotes = std::cell::RefCell::new(Vec::new());
            let plan = edgeguard(
                configuration,
                &|json| {
                    let config = jwt_shape::config::Config::parse(json.as_bytes(), &env)
                        .map_err(|e| e.to_string())?;
                    for p in &config.providers {
                        if let jwt_shape::config::KeySource::Remote(r) = &p.keys {
                            remotes
                                .borrow_mut()
                                .push((p.name.clone(), r.cluster.clone(), r.https));
                        }
                    }
                    Ok(())
                },
                issues,
                warnings,
            );
            for (provider, cluster, https) in remotes.into_inner() {
                let known = clusters.iter().any(|c| c.name == cluster);
                let at = format!("{path}.config.providers.{provider}.remote_jwks");
                if !known {
                    warnings.push(format!(
                        "{at}: cluster '{cluster}' is not an upstream of this file: Envoy must have it from its bootstrap, or the provider's JWKS never loads and all its tokens get 401"
                    ));
                } else if https {
                    warnings.push(format!(
                        "{at}: the uri is https:// but upstream '{cluster}' has no TLS (edgeguard xds upstreams are plaintext): Envoy would speak plaintext to the IdP and the fetch fails; serve the JWKS over http inside the cluster network, or define a TLS cluster in the bootstrap"
                    ));
                }
            }
            plan
        }
        FilterKind::PortalAuth => edgeguard(
            configuration,
            &|json| {
                portal_auth::config::Config::parse(json.as_bytes(), &env)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
            issues,
            warnings,
        ),
        FilterKind::Floor => {
            if configuration.is_some() {
                issues.push(Issue::new(
                    format!("{path}.config"),
                    "the floor filter takes no configuration",
                ));
            }
            Some(wasm(module("floor.wasm"), String::new(), warnings))
        }
        FilterKind::Wasm => {
            if f.module.is_none() {
                issues.push(Issue::new(
                    format!("{path}.module"),
                    "a wasm filter needs 'module'",
                ));
                return None;
            }
            Some(wasm(
                module(""),
                configuration.unwrap_or_default(),
                warnings,
            ))
        }
        FilterKind::Authz => {
            if configuration.is_some() || f.module.is_some() {
                issues.push(Issue::new(
                    path,
                    "an authz filter takes no 'config' or 'module' (it uses the top-level 'authz' service)",
                ));
            }
            let Some((cluster, timeout, failure_mode_allow)) = authz else {
                issues.push(Issue::new(
                    format!("{path}.type"),
                    "'authz' needs the top-level 'authz' service (address of edgeguard authz)",
                ));
                return None;
            };
            Some(PlanFilterKind::ExtAuthz {
                cluster: cluster.clone(),
                timeout: *timeout,
                failure_mode_allow: *failure_mode_allow,
            })
        }
    }
}

/// Kinds with both builds (`runtime: wasm | native`).
pub fn native_capable(kind: FilterKind) -> bool {
    matches!(kind, FilterKind::JwtShape | FilterKind::PortalAuth)
}

/// The dynamic module (`lib<name>.so`) of a kind with a native build.
fn native_module_name(kind: FilterKind) -> &'static str {
    match kind {
        FilterKind::PortalAuth => "edgeguard_portal_auth",
        _ => "edgeguard_jwt_shape",
    }
}

/// The filter name inside the module (`filter_name`), also the stem of the `.wasm` file.
fn native_filter_name(kind: FilterKind) -> &'static str {
    match kind {
        FilterKind::PortalAuth => "portal_auth",
        _ => "jwt_shape",
    }
}

/// Whether a filter authenticates requests (so a crash must never let requests through):
/// `type: jwt-shape` or `type: portal-auth`, or a `type: wasm` module that is jwt-shape or
/// portal-auth by its file name (`jwt_shape*.wasm`, `portal_auth*.wasm`, `-` or `_`) or by the
/// shape of its configuration (jwt-shape's `providers` + `rules`, portal-auth's `store`).
/// Returns its name.
pub fn auth_filter(f: &FilterSpec) -> Option<&'static str> {
    match f.kind {
        FilterKind::JwtShape => return Some("jwt-shape"),
        FilterKind::PortalAuth => return Some("portal-auth"),
        FilterKind::Floor | FilterKind::Authz => return None,
        FilterKind::Wasm => {}
    }
    let stem = f
        .module
        .as_deref()
        .and_then(|m| Path::new(m).file_stem())
        .map(|s| s.to_string_lossy().to_ascii_lowercase().replace('-', "_"))
        .unwrap_or_default();
    if stem.contains("jwt_shape") {
        return Some("jwt-shape");
    }
    if stem.contains("portal_auth") {
        return Some("portal-auth");
    }
    let config = match &f.config {
        Some(serde_json::Value::String(s)) => serde_json::from_str(s).ok(),
        Some(v) => Some(v.clone()),
        None => None,
    };
    let obj = config.as_ref().and_then(serde_json::Value::as_object)?;
    if obj.contains_key("providers") && obj.contains_key("rules") {
        Some("jwt-shape")
    } else if obj.contains_key("store") {
        Some("portal-auth")
    } else {
        None
    }
}

/// The environment an edgeguard filter sees inside Envoy, as far as the control plane can
/// tell: a wasm VM (`keys: Some`) sees the host's variables listed in `env`, nothing else; a
/// native module (`keys: None`) sees Envoy's whole process environment. A variable it may see
/// but the control plane's own environment lacks gets a placeholder.
struct FilterEnv<'a> {
    keys: Option<&'a [String]>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl jwt_shape::config::Env for FilterEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        if let Some(keys) = self.keys {
            if !keys.iter().any(|k| k == name) {
                return None;
            }
        }
        Some((self.env)(name).unwrap_or_else(|| "x".repeat(64)))
    }
}

/// Validates one snapshot's sections. `prefix(section)` is prepended to the paths of issues
/// in that section (`nodes[1].` for a replaced section of a node entry).
pub fn check(
    s: &Sections,
    prefix: &dyn Fn(&str) -> String,
    ctx: &Context<'_>,
) -> Result<Plan, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut plan = Plan::default();
    let p_up = prefix("upstreams") + "upstreams";
    let p_fi = prefix("filters") + "filters";
    let p_li = prefix("listeners") + "listeners";
    let p_ro = prefix("routes") + "routes";
    let p_az = prefix("authz") + "authz";

    // upstreams
    let upstream_names = unique_names(
        &p_up,
        "upstream",
        s.upstreams.iter().map(|u| u.name.as_str()),
        &mut issues,
    );
    for (i, u) in s.upstreams.iter().enumerate() {
        let path = format!("{p_up}[{i}]");
        if u.name == AUTHZ_CLUSTER {
            issues.push(Issue::new(
                format!("{path}.name"),
                format!("'{AUTHZ_CLUSTER}' is reserved for the authz service"),
            ));
        }
        if u.endpoints.is_empty() {
            issues.push(Issue::new(
                format!("{path}.endpoints"),
                "needs at least one endpoint",
            ));
        }
        let endpoints: Vec<HostPort> = u
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(j, e)| host_port(&format!("{path}.endpoints[{j}]"), e, &mut issues))
            .collect();
        let connect_timeout = match &u.connect_timeout {
            Some(t) => duration(&format!("{path}.connect_timeout"), t, &mut issues)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        plan.clusters.push(PlanCluster {
            name: u.name.clone(),
            endpoints,
            connect_timeout,
            http2: u.http2,
        });
    }

    // authz service
    let authz = s.authz.as_ref().and_then(|a| {
        let hp = host_port(&format!("{p_az}.address"), &a.address, &mut issues)?;
        let timeout = match &a.timeout {
            Some(t) => duration(&format!("{p_az}.timeout"), t, &mut issues)?,
            None => DEFAULT_AUTHZ_TIMEOUT,
        };
        plan.clusters.push(PlanCluster {
            name: AUTHZ_CLUSTER.to_string(),
            endpoints: vec![hp],
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            http2: true,
        });
        Some((AUTHZ_CLUSTER.to_string(), timeout, a.failure_mode_allow))
    });

    // filters
    let filter_names = unique_names(
        &p_fi,
        "filter",
        s.filters.iter().map(|f| f.name.as_str()),
        &mut issues,
    );
    for (i, f) in s.filters.iter().enumerate() {
        let path = format!("{p_fi}[{i}]");
        if let Some(kind) = check_filter(
            &path,
            f,
            authz.as_ref(),
            &plan.clusters,
            ctx,
            &mut issues,
            &mut plan.warnings,
        ) {
            plan.filters.push(PlanFilter {
                name: f.name.clone(),
                kind,
                either_runtime: native_capable(f.kind),
            });
        }
    }

    // listeners
    let listener_names = unique_names(
        &p_li,
        "listener",
        s.listeners.iter().map(|l| l.name.as_str()),
        &mut issues,
    );
    let mut addresses: BTreeMap<(IpAddr, u16), usize> = BTreeMap::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let path = format!("{p_li}[{i}]");
        let addr = match l.address.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                issues.push(Issue::new(
                    format!("{path}.address"),
                    format!("'{}' is not ip:port", l.address),
                ));
                None
            }
        };
        if let Some(a) = addr {
            if let Some(other) = addresses.insert((a.ip(), a.port()), i) {
                issues.push(Issue::new(
                    format!("{path}.address"),
                    format!("{a} is already used by {p_li}[{other}]"),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (j, f) in l.filters.iter().enumerate() {
            if !filter_names.contains(f.as_str()) {
                issues.push(Issue::new(
                    format!("{path}.filters[{j}]"),
                    format!("no filter named '{f}'"),
                ));
            } else if !seen.insert(f.as_str()) {
                issues.push(Issue::new(
                    format!("{path}.filters[{j}]"),
                    format!("filter '{f}' is listed twice"),
                ));
            }
        }
        let domains = if l.domains.is_empty() {
            vec!["*".to_string()]
        } else {
            l.domains.clone()
        };
        let cors = l
            .cors
            .as_ref()
            .and_then(|c| check_cors(&format!("{path}.cors"), c, &mut issues));
        if let Some(a) = addr {
            plan.listeners.push(PlanListener {
                name: l.name.clone(),
                ip: a.ip(),
                port: a.port(),
                filters: l.filters.clone(),
                route_config: route_config_name(&l.name),
                domains: domains.clone(),
                cors: cors.is_some(),
            });
        }
        plan.route_configs.push(PlanRouteConfig {
            name: route_config_name(&l.name),
            listener: l.name.clone(),
            domains,
            routes: Vec::new(),
            cors,
        });
    }

    // routes
    for (i, r) in s.routes.iter().enumerate() {
        let path = format!("{p_ro}[{i}]");
        let listener = match (&r.listener, s.listeners.len()) {
            (Some(l), _) if listener_names.contains(l.as_str()) => Some(l.clone()),
            (Some(l), _) => {
                issues.push(Issue::new(
                    format!("{path}.listener"),
                    format!("no listener named '{l}'"),
                ));
                None
            }
            (None, 1) => s.listeners.first().map(|l| l.name.clone()),
            (None, 0) => {
                issues.push(Issue::new(
                    path.clone(),
                    "there is no listener to add it to",
                ));
                None
            }
            (None, _) => {
                issues.push(Issue::new(
                    format!("{path}.listener"),
                    "required when there is more than one listener",
                ));
                None
            }
        };
        let matcher = match (&r.matcher.path, &r.matcher.prefix) {
            (Some(p), None) => Some(PathMatch::Exact(p.clone())),
            (None, Some(p)) => Some(PathMatch::Prefix(p.clone())),
            _ => {
                issues.push(Issue::new(
                    format!("{path}.match"),
                    "needs exactly one of 'path' or 'prefix'",
                ));
                None
            }
        };
        if let Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) = &matcher {
            if !p.starts_with('/') {
                issues.push(Issue::new(
                    format!("{path}.match"),
                    format!("'{p}' must start with '/'"),
                ));
            }
        }
        let action = match (&r.upstream, &r.direct_response) {
            (Some(u), None) => {
                if !upstream_names.contains(u.as_str()) {
                    issues.push(Issue::new(
                        format!("{path}.upstream"),
                        format!("no upstream named '{u}'"),
                    ));
                }
                let timeout = r
                    .timeout
                    .as_ref()
                    .and_then(|t| duration(&format!("{path}.timeout"), t, &mut issues));
                Some(RouteAction::Upstream {
                    cluster: u.clone(),
                    timeout,
                })
            }
            (None, Some(d)) => {
                if !(200..=599).contains(&d.status) {
                    issues.push(Issue::new(
                        format!("{path}.direct_response.status"),
                        format!("{} is not an HTTP status (200-599)", d.status),
                    ));
                }
                if r.timeout.is_some() {
                    issues.push(Issue::new(
                        format!("{path}.timeout"),
                        "only applies to routes with an upstream",
                    ));
                }
                Some(RouteAction::Direct {
                    status: d.status,
                    body: d.body.clone(),
                })
            }
            _ => {
                issues.push(Issue::new(
                    path.clone(),
                    "needs exactly one of 'upstream' or 'direct_response'",
                ));
                None
            }
        };
        if let (Some(l), Some(matcher), Some(action)) = (listener, matcher, action) {
            if let Some(rc) = plan.route_configs.iter_mut().find(|rc| rc.listener == l) {
                rc.routes.push(PlanRoute { matcher, action });
            }
        }
    }

    if issues.is_empty() {
        Ok(plan)
    } else {
        Err(issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse;

    const JWT: &str = r#"{"providers":{"demo":{"issuer":"i","hmac":{"secret":"0123456789abcdef0123456789abcdef"}}},"rules":[{"match":{"path":"/v1/shape"},"provider":"demo","bind_shape":true}]}"#;

    fn run(yaml: &str) -> Result<Plan, Vec<String>> {
        let f = parse(yaml).unwrap();
        let env = |n: &str| match n {
            "SET" => Some("0123456789abcdef0123456789abcdef".to_string()),
            "SHORT" => Some("short".to_string()),
            _ => None,
        };
        let exists = |_: &Path| true;
        let ctx = Context {
            wasm_dir: Path::new("/wasm"),
            native_dir: None,
            env: &env,
            exists: &exists,
        };
        check(&f.sections(), &|_| String::new(), &ctx)
            .map_err(|v| v.iter().map(ToString::to_string).collect())
    }

    fn good() -> String {
        format!(
            r#"
upstreams:
  - {{ name: electric, endpoints: ["127.0.0.1:18080"] }}
  - {{ name: dns, endpoints: ["echo.internal:80"], http2: true }}
filters:
  - {{ name: jwt-shape, type: jwt-shape, config: {JWT} }}
listeners:
  - {{ name: demo, address: "127.0.0.1:10000", filters: [jwt-shape] }}
routes:
  - {{ match: {{ path: /v1/shape }}, upstream: electric, timeout: 60s }}
  - {{ match: {{ prefix: / }}, direct_response: {{ status: 404, body: nope }} }}
"#
        )
    }

    #[test]
    fn a_good_file_becomes_a_plan() {
        let plan = run(&good()).unwrap();
        assert_eq!(plan.listeners.len(), 1);
        assert_eq!(plan.listeners[0].route_config, "demo-routes");
        assert_eq!(plan.listeners[0].domains, vec!["*"]);
        assert_eq!(plan.route_configs[0].routes.len(), 2);
        assert_eq!(
            plan.route_configs[0].routes[0].action,
            RouteAction::Upstream {
                cluster: "electric".into(),
                timeout: Some(Duration::from_secs(60))
            }
        );
        assert!(plan.clusters[0].uses_eds());
        assert!(!plan.clusters[1].uses_eds());
        match &plan.filters[0].kind {
            PlanFilterKind::Wasm {
                module,
                configuration,
                ..
            } => {
                assert_eq!(module, Path::new("/wasm/jwt_shape.wasm"));
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(configuration).unwrap(),
                    serde_json::from_str::<serde_json::Value>(JWT).unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let cases: Vec<(String, &str)> = vec![
            (
                good().replace("upstream: electric", "upstream: api"),
                "routes[0].upstream: no upstream named 'api'",
            ),
            (
                good().replace("name: dns", "name: electric"),
                "upstreams[1].name: duplicate upstream name 'electric'",
            ),
            (
                good().replace("filters: [jwt-shape]", "filters: [jwt-shape, authn]"),
                "listeners[0].filters[1]: no filter named 'authn'",
            ),
            (
                good().replace("filters: [jwt-shape]", "filters: [jwt-shape, jwt-shape]"),
                "listeners[0].filters[1]: filter 'jwt-shape' is listed twice",
            ),
            (
                good().replace("0123456789abcdef0123456789abcdef", "short"),
                "filters[0].config: jwt-shape refuses it: providers.demo.hmac.secret",
            ),
            (
                good().replace("127.0.0.1:10000", "localhost"),
                "listeners[0].address: 'localhost' is not ip:port",
            ),
            (
                good().replace("127.0.0.1:18080", "127.0.0.1"),
                "upstreams[0].endpoints[0]: '127.0.0.1' is not host:port",
            ),
            (
                good().replace("60s", "soon"),
                "routes[0].timeout: 'soon' is not a duration",
            ),
            (
                good().replace("status: 404", "status: 42"),
                "routes[1].direct_response.status: 42 is not an HTTP status",
            ),
            (
                good().replace("{ prefix: / }", "{ prefix: x }"),
                "routes[1].match: 'x' must start with '/'",
            ),
            (
                good().replace("{ path: /v1/shape }", "{ path: /a, prefix: /b }"),
                "routes[0].match: needs exactly one of 'path' or 'prefix'",
            ),
            (
                good().replace(
                    "upstream: electric, timeout: 60s",
                    "upstream: electric, direct_response: { status: 200 }",
                ),
                "routes[0]: needs exactly one of 'upstream' or 'direct_response'",
            ),
            (
                good().replace("type: jwt-shape, config:", "type: authz, config:"),
                "filters[0].type: 'authz' needs the top-level 'authz' service",
            ),
            (
                good() + "  - { listener: other, match: { prefix: /x }, upstream: electric }\n",
                "routes[2].listener: no listener named 'other'",
            ),
            (
                good().replace(
                    "listeners:\n",
                    "listeners:\n  - { name: two, address: \"127.0.0.1:10001\" }\n",
                ),
                "routes[0].listener: required when there is more than one listener",
            ),
        ];
        for (yaml, want) in cases {
            let errs = run(&yaml).expect_err(want);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:?}"
            );
        }
    }

    #[test]
    fn env_variables_named_for_the_vm_are_assumed_present() {
        let cfg = JWT.replace(
            r#""secret":"0123456789abcdef0123456789abcdef""#,
            r#""secret_env":"HS_SECRET""#,
        );
        let base = good().replace(JWT, &cfg);
        // not passed into the VM: refused, as Envoy would
        let errs = run(&base).unwrap_err();
        assert!(
            errs[0].contains("HS_SECRET is not set in the wasm VM"),
            "{errs:?}"
        );
        // passed into the VM but unset here: accepted (Envoy's host has it)
        let with_env = base.replace("type: jwt-shape,", "type: jwt-shape, env: [HS_SECRET],");
        run(&with_env).unwrap();
    }

    #[test]
    fn fail_open_is_refused_for_authentication_filters_only() {
        let with = |filter: &str| {
            good().replace(
                "  - { name: jwt-shape, type: jwt-shape, config: ",
                &format!("  - {filter}\n  - {{ name: jwt-shape, type: jwt-shape, config: "),
            )
        };
        let refused = [
            (
                good().replace("type: jwt-shape,", "type: jwt-shape, fail_open: true,"),
                "filters[0].fail_open: refused for an authentication filter (jwt-shape)",
            ),
            (
                with("{ name: pa, type: wasm, module: /w/portal_auth.wasm, fail_open: true }"),
                "filters[0].fail_open: refused for an authentication filter (portal-auth)",
            ),
            (
                with("{ name: pa, type: wasm, module: /w/Portal-Auth.v2.wasm, fail_open: true }"),
                "(portal-auth)",
            ),
            (
                with("{ name: pa, type: wasm, module: /plugin.wasm, fail_open: true, config: { store: { cluster: authz } } }"),
                "(portal-auth)",
            ),
            (
                with(&format!("{{ name: js, type: wasm, module: /plugin.wasm, fail_open: true, config: {JWT} }}")),
                "(jwt-shape)",
            ),
        ];
        for (yaml, want) in refused {
            let errs = run(&yaml).expect_err(want);
            assert!(
                errs.iter()
                    .any(|e| e.contains(want) && e.contains("every request through")),
                "want {want:?} in {errs:?}"
            );
        }
        // not authentication: fail_open stays available
        for filter in [
            "{ name: f, type: floor, fail_open: true }",
            "{ name: w, type: wasm, module: /w/headers.wasm, fail_open: true, config: { add: x } }",
        ] {
            let plan = run(&with(filter)).unwrap();
            assert!(matches!(
                plan.filters[0].kind,
                PlanFilterKind::Wasm {
                    fail_open: true,
                    ..
                }
            ));
        }
    }

    const PORTAL: &str = r#"{"store":{"cluster":"electric","refresh_interval_ms":500}}"#;

    fn with_filter(filter: &str) -> String {
        good().replace(
            "  - { name: jwt-shape, type: jwt-shape, config: ",
            &format!("  - {filter}\n  - {{ name: jwt-shape, type: jwt-shape, config: "),
        )
    }

    #[test]
    fn runtime_native_plans_the_dynamic_modules() {
        let yaml = with_filter(&format!(
            "{{ name: pa, type: portal-auth, runtime: native, config: {PORTAL} }}"
        ))
        .replace(
            "type: jwt-shape, config:",
            "type: jwt-shape, runtime: native, config:",
        );
        let plan = run(&yaml).unwrap();
        assert_eq!(
            plan.filters[0].kind,
            PlanFilterKind::Native {
                module: "edgeguard_portal_auth".into(),
                filter_name: "portal_auth".into(),
                configuration: PORTAL.into(),
            }
        );
        match &plan.filters[1].kind {
            PlanFilterKind::Native {
                module,
                filter_name,
                configuration,
            } => {
                assert_eq!(module, "edgeguard_jwt_shape");
                assert_eq!(filter_name, "jwt_shape");
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(configuration).unwrap(),
                    serde_json::from_str::<serde_json::Value>(JWT).unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(plan.filters.iter().all(|f| f.either_runtime));
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

        // `runtime: wasm` is the default, written or not
        let explicit = run(&good().replace("type: jwt-shape,", "type: jwt-shape, runtime: wasm,"));
        assert_eq!(explicit, run(&good()));
        assert!(run(&good()).unwrap().filters[0].either_runtime);
        // only jwt-shape and portal-auth can switch
        let plan = run(&with_filter("{ name: f, type: floor, runtime: wasm }")).unwrap();
        assert!(!plan.filters[0].either_runtime);
    }

    #[test]
    fn portal_auth_is_a_first_class_type_checked_by_its_own_parser() {
        // wasm: the VM sees only the variables listed in `env` (the store token included)
        let wasm = |extra: &str| {
            with_filter(&format!(
                "{{ name: pa, type: portal-auth{extra}, config: {PORTAL} }}"
            ))
        };
        let errs = run(&wasm("")).unwrap_err();
        assert!(
            errs[0].starts_with(
                "filters[0].config: portal-auth refuses it: store.token_env: environment variable EDGEGUARD_STORE_TOKEN is not set in the wasm VM"
            ),
            "{errs:?}"
        );
        let plan = run(&wasm(", env: [EDGEGUARD_STORE_TOKEN]")).unwrap();
        match &plan.filters[0].kind {
            PlanFilterKind::Wasm {
                module,
                env,
                fail_open,
                ..
            } => {
                assert_eq!(module, Path::new("/wasm/portal_auth.wasm"));
                assert_eq!(env, &vec!["EDGEGUARD_STORE_TOKEN".to_string()]);
                assert!(!fail_open);
            }
            other => panic!("{other:?}"),
        }
        // native: the module reads Envoy's environment, no list needed
        run(&wasm(", runtime: native")).unwrap();
        for (yaml, want) in [
            (
                wasm(", runtime: native").replace("500", "5"),
                "filters[0].config: portal-auth refuses it: store.refresh_interval_ms: must be between 100 and 3600000",
            ),
            (
                wasm(", runtime: native").replace("\"cluster\"", "\"clustre\""),
                "filters[0].config: portal-auth refuses it: invalid configuration: unknown field `clustre`",
            ),
            (
                with_filter("{ name: pa, type: portal-auth, runtime: native }"),
                "filters[0]: a portal-auth filter needs 'config' or 'config_file'",
            ),
            (
                wasm(", env: [EDGEGUARD_STORE_TOKEN], fail_open: true"),
                "filters[0].fail_open: refused for an authentication filter (portal-auth)",
            ),
        ] {
            let errs = run(&yaml).expect_err(want);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:?}"
            );
        }
        // the old spelling keeps working, unvalidated
        let plan = run(&with_filter(
            "{ name: pa, type: wasm, module: /w/portal_auth.wasm, config: { store: { cluster: x } } }",
        ))
        .unwrap();
        assert!(matches!(plan.filters[0].kind, PlanFilterKind::Wasm { .. }));
        assert!(!plan.filters[0].either_runtime);
    }

    #[test]
    fn runtime_native_refuses_the_wasm_only_fields() {
        let native = |extra: &str| {
            good().replace(
                "type: jwt-shape,",
                &format!("type: jwt-shape, runtime: native, {extra}"),
            )
        };
        let cases = [
            (
                native("fail_open: true,"),
                "filters[0].fail_open: meaningless for runtime: native: a dynamic module has no VM",
            ),
            (
                native("env: [HS_SECRET],"),
                "filters[0].env: not for runtime: native: a native module reads Envoy's process environment itself",
            ),
            (
                native("module: /w/jwt_shape.wasm,"),
                "filters[0].module: '/w/jwt_shape.wasm' is a wasm module: runtime: native loads libedgeguard_jwt_shape.so from Envoy's ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            ),
            (
                with_filter("{ name: f, type: floor, runtime: native }"),
                "filters[0].runtime: only jwt-shape and portal-auth have a native build; a 'floor' filter runs in a wasm VM",
            ),
            (
                with_filter("{ name: w, type: wasm, module: /w/x.wasm, runtime: native }"),
                "filters[0].runtime: only jwt-shape and portal-auth have a native build; a 'wasm' filter",
            ),
            (
                good().replace(
                    "filters:\n",
                    "authz: { address: \"127.0.0.1:9000\" }\nfilters:\n  - { name: authz, type: authz, runtime: wasm }\n",
                ),
                "filters[0].runtime: an authz filter is Envoy's built-in ext_authz: it has no runtime ('wasm')",
            ),
        ];
        for (yaml, want) in cases {
            let errs = run(&yaml).expect_err(want);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want {want:?} in {errs:?}"
            );
            // one message per problem: the wasm-side refusal is not repeated
            assert!(
                !errs.iter().any(|e| e.contains("if its VM crashed")),
                "{errs:?}"
            );
        }
        // a jwt-shape secret from the environment: natively any variable of Envoy's may hold it
        let cfg = JWT.replace(
            r#""secret":"0123456789abcdef0123456789abcdef""#,
            r#""secret_env":"HS_SECRET""#,
        );
        run(&native("").replace(JWT, &cfg)).unwrap();
        // ... and a value the control plane does see is still checked
        let short = JWT.replace(
            r#""secret":"0123456789abcdef0123456789abcdef""#,
            r#""secret_env":"SHORT""#,
        );
        let errs = run(&native("").replace(JWT, &short)).unwrap_err();
        assert!(
            errs[0].starts_with("filters[0].config: jwt-shape refuses it: providers.demo.hmac"),
            "{errs:?}"
        );
        // an unknown runtime is a parse error naming the choices
        let e = parse(&native("").replace("runtime: native", "runtime: nativ")).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown variant `nativ`, expected `wasm` or `native`"),
            "{e}"
        );
    }

    #[test]
    fn a_native_module_missing_from_native_dir_is_a_warning() {
        let yaml = good().replace("type: jwt-shape,", "type: jwt-shape, runtime: native,");
        let f = parse(&yaml).unwrap();
        let env = |_: &str| None;
        let exists = |p: &Path| p == Path::new("/native/libedgeguard_portal_auth.so");
        let check_in = |native_dir: Option<&Path>| {
            let ctx = Context {
                wasm_dir: Path::new("/wasm"),
                native_dir,
                env: &env,
                exists: &exists,
            };
            check(&f.sections(), &|_| String::new(), &ctx).unwrap()
        };
        let plan = check_in(Some(Path::new("/native")));
        assert_eq!(
            plan.warnings,
            vec!["filters[0]: native module /native/libedgeguard_jwt_shape.so does not exist on this host (Envoy will refuse the filter if its ENVOY_DYNAMIC_MODULES_SEARCH_PATH lacks it too)".to_string()]
        );
        // without native_dir nothing is checked (Envoy has its own search path)
        assert!(check_in(None).warnings.is_empty());
    }

    #[test]
    fn cors_policies_are_checked() {
        let with = |cors: &str| {
            run(&good().replace(
                r#"address: "127.0.0.1:10000", filters: [jwt-shape] }"#,
                &format!(r#"address: "127.0.0.1:10000", filters: [jwt-shape], cors: {cors} }}"#),
            ))
        };
        let plan = with(r#"{ allow_origins: ["https://app.example.com", "https://*.example.org", "http://localhost:5173"], max_age: 1h }"#).unwrap();
        assert!(plan.listeners[0].cors);
        let cors = plan.route_configs[0].cors.clone().unwrap();
        assert_eq!(
            cors.origins,
            vec![
                OriginMatch::Exact("https://app.example.com".into()),
                OriginMatch::Subdomains {
                    scheme: "https".into(),
                    suffix: "example.org".into()
                },
                OriginMatch::Exact("http://localhost:5173".into()),
            ]
        );
        assert_eq!(cors.max_age, Duration::from_secs(3600));
        assert!(cors.expose_headers.iter().any(|h| h == "electric-handle"));
        assert!(cors.expose_headers.iter().any(|h| h == "www-authenticate"));
        assert!(!run(&good()).unwrap().listeners[0].cors);
        for (bad, msg) in [
            (
                r#"{ allow_origins: [] }"#,
                "listeners[0].cors.allow_origins: list at least one origin",
            ),
            (
                r#"{ allow_origins: ["app.example.com"] }"#,
                "is not an origin",
            ),
            (
                r#"{ allow_origins: ["ftp://x"] }"#,
                "must be http:// or https://",
            ),
            (
                r#"{ allow_origins: ["https://x.com/"] }"#,
                "has an invalid host",
            ),
            (
                r#"{ allow_origins: ["https://a.*.com"] }"#,
                "has an invalid host",
            ),
            (
                r#"{ allow_origins: ["*"], allow_credentials: true }"#,
                "browsers refuse credentials",
            ),
            (
                r#"{ allow_origins: ["*"], expose_headers: ["a b"] }"#,
                "listeners[0].cors.expose_headers[0]",
            ),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.iter().any(|l| l.contains(msg)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn remote_jwks_clusters_are_checked_against_the_upstreams() {
        let with = |cluster: &str, uri: &str| {
            let jwt = format!(
                r#"{{"providers":{{"idp":{{"remote_jwks":{{"cluster":"{cluster}","uri":"{uri}"}}}}}},"rules":[{{"match":{{"prefix":"/"}},"provider":"idp"}}]}}"#
            );
            run(&good().replace(JWT, &jwt)).unwrap().warnings
        };
        assert!(with("electric", "http://idp/jwks").is_empty());
        let w = with("electric", "https://idp/jwks");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("filters[0].config.providers.idp.remote_jwks: the uri is https:// but upstream 'electric' has no TLS"), "{w:?}");
        let w = with("nowhere", "http://idp/jwks");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("cluster 'nowhere' is not an upstream of this file"),
            "{w:?}"
        );
    }

    #[test]
    fn authz_filters_use_the_authz_service() {
        let yaml = good().replace(
            "filters:\n",
            "authz: { address: \"127.0.0.1:9000\", timeout: 250ms }\nfilters:\n  - { name: authz, type: authz }\n",
        );
        let plan = run(&yaml).unwrap();
        assert!(plan
            .clusters
            .iter()
            .any(|c| c.name == AUTHZ_CLUSTER && c.http2));
        assert_eq!(
            plan.filters[0].kind,
            PlanFilterKind::ExtAuthz {
                cluster: AUTHZ_CLUSTER.into(),
                timeout: Duration::from_millis(250),
                failure_mode_allow: false
            }
        );
    }
}
