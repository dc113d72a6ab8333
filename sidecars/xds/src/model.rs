//! The declarative YAML file `edgeguard xds` serves: listeners, routes, upstreams, the edgeguard
//! filters with their configuration, the authz service, and per-node overrides.
//!
//! Parsing is strict (unknown fields are refused) and does no I/O: [`crate::load`] reads the
//! file, expands `${VAR}` / `${VAR:-default}`, and inlines `config_file`s before validation.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where filter modules are looked up when `module` is not given (relative to the file).
    #[serde(default)]
    pub wasm_dir: Option<String>,
    /// Optional: the folder holding the native modules (`lib<name>.so`) as Envoy's
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` sees it (relative to the file). Envoy does not need
    /// it (it searches its own path); when given, a `runtime: native` filter whose `.so` is not
    /// there on this host gets a warning, as a missing `.wasm` does.
    #[serde(default)]
    pub native_dir: Option<String>,
    // The sections every node gets unless a `nodes` entry replaces them (see [`Sections`];
    // written out because serde's `flatten` cannot be combined with `deny_unknown_fields`).
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSpec>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    #[serde(default)]
    pub authz: Option<AuthzSpec>,
    /// Per-node snapshots: an entry matching a node (by id, else by cluster) replaces the
    /// sections it names; the others are inherited from the top level.
    #[serde(default)]
    pub nodes: Vec<NodeOverride>,
}

impl ConfigFile {
    /// The top-level sections (the default snapshot).
    pub fn sections(&self) -> Sections {
        Sections {
            listeners: self.listeners.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
            filters: self.filters.clone(),
            authz: self.authz.clone(),
        }
    }
}

/// The sections that make one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sections {
    pub listeners: Vec<ListenerSpec>,
    pub routes: Vec<RouteSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub filters: Vec<FilterSpec>,
    pub authz: Option<AuthzSpec>,
}

/// A `nodes[]` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeOverride {
    /// Matches an Envoy whose `node.id` is this.
    #[serde(default)]
    pub node: Option<String>,
    /// Matches an Envoy whose `node.cluster` is this (when no entry matches its id).
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub listeners: Option<Vec<ListenerSpec>>,
    #[serde(default)]
    pub routes: Option<Vec<RouteSpec>>,
    #[serde(default)]
    pub upstreams: Option<Vec<UpstreamSpec>>,
    #[serde(default)]
    pub filters: Option<Vec<FilterSpec>>,
    #[serde(default)]
    pub authz: Option<AuthzSpec>,
}

/// An HTTP listener: one HTTP connection manager whose routes come over RDS and whose
/// edgeguard filters come over ECDS.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: String,
    /// `ip:port`.
    pub address: String,
    /// Names of `filters[]`, in order; the router is appended.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Virtual host domains (default `["*"]`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Browser access: Envoy's `cors` filter first in the chain (before the edgeguard filters,
    /// so their own 401/403/429 answers reach the page readable) with this policy on the
    /// listener's virtual host.
    #[serde(default)]
    pub cors: Option<CorsSpec>,
}

/// A CORS policy (Envoy's `CorsPolicy`). Unset lists take the defaults an Electric client and
/// a portal-app caller need.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Origins: exact (`https://app.example.com`), one leading wildcard label
    /// (`https://*.example.com`), or `*` (any origin; not with `allow_credentials`).
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    #[serde(default)]
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser may cache a preflight (humantime, default `10m`).
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// A route of a listener; first match wins, in file order.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The listener this route belongs to (may be omitted when there is one listener).
    #[serde(default)]
    pub listener: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Name of an `upstreams[]` entry.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Upstream timeout (humantime, e.g. `15s`; Envoy's default is 15 s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Answer directly instead of proxying.
    #[serde(default)]
    pub direct_response: Option<DirectSpec>,
}

/// Path matcher: exactly one of `path` or `prefix`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectSpec {
    pub status: u32,
    #[serde(default)]
    pub body: Option<String>,
}

/// An upstream cluster. IP endpoints are served over EDS; a hostname makes it a STRICT_DNS
/// cluster with inline endpoints.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub name: String,
    /// `host:port` entries.
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Speak HTTP/2 (gRPC) to the upstream.
    #[serde(default)]
    pub http2: bool,
}

/// What kind of filter a `filters[]` entry is.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FilterKind {
    /// edgeguard's jwt-shape filter (wasm or native, see [`Runtime`]); its `config` is
    /// validated with the filter's own parser.
    JwtShape,
    /// edgeguard's portal-auth filter (wasm or native, see [`Runtime`]); its `config` is
    /// validated with the filter's own parser.
    PortalAuth,
    /// The benchmark floor wasm filter (no configuration).
    Floor,
    /// Any other proxy-wasm module (`module` required; `config` passed as is, not validated).
    Wasm,
    /// Envoy's ext_authz filter calling the `authz` service (edgeguard authz).
    Authz,
}

impl FilterKind {
    /// The name written in the file (`type:`).
    pub fn name(self) -> &'static str {
        match self {
            FilterKind::JwtShape => "jwt-shape",
            FilterKind::PortalAuth => "portal-auth",
            FilterKind::Floor => "floor",
            FilterKind::Wasm => "wasm",
            FilterKind::Authz => "authz",
        }
    }
}

/// How Envoy runs an edgeguard filter (`runtime:` on a `jwt-shape` or `portal-auth` entry).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The proxy-wasm build (`<filter>.wasm` in Envoy's V8): portable, sandboxed.
    #[default]
    Wasm,
    /// The native Envoy dynamic module (`libedgeguard_<filter>.so`, found through Envoy's
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`): line rate, one state per Envoy process.
    Native,
}

impl Runtime {
    /// The name written in the file (`runtime:`).
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm",
            Runtime::Native => "native",
        }
    }
}

/// An HTTP filter delivered over ECDS (so a configuration change does not drain listeners).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FilterKind,
    /// The filter configuration (a YAML mapping, sent as its JSON text).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// A JSON file holding the configuration instead (relative to this file).
    #[serde(default)]
    pub config_file: Option<String>,
    /// `wasm` (default) or `native`; only `jwt-shape` and `portal-auth` have a native build.
    /// Absent and `wasm` give the same output.
    #[serde(default)]
    pub runtime: Option<Runtime>,
    /// The `.wasm` file as Envoy sees it (default: `<wasm_dir>/<kind>.wasm`). Wasm only.
    #[serde(default)]
    pub module: Option<String>,
    /// Host environment variables passed into the VM (`host_env_keys`). Wasm only: a native
    /// module reads Envoy's process environment itself.
    #[serde(default)]
    pub env: Vec<String>,
    /// Let requests through when the filter's VM has failed (`failure_policy: FAIL_OPEN`).
    /// Default: a failed VM is reloaded with backoff and requests fail closed meanwhile
    /// (`FAIL_RELOAD`). Refused for authentication filters (jwt-shape, portal-auth), and for
    /// `runtime: native` (no VM).
    #[serde(default)]
    pub fail_open: bool,
}

/// The edgeguard authz (ext_authz gRPC) service used by `type: authz` filters.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthzSpec {
    /// `host:port` of `edgeguard authz`.
    pub address: String,
    /// Per-check timeout (default `500ms`).
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub failure_mode_allow: bool,
}

/// Parses the (already expanded) YAML text.
pub fn parse(yaml: &str) -> Result<ConfigFile, serde_yaml_ng::Error> {
    if yaml.trim().is_empty() {
        // an empty document is `null`, which serde refuses with a confusing message
        return serde_yaml_ng::from_str::<ConfigFile>("{}");
    }
    serde_yaml_ng::from_str(yaml)
}

/// Expands `${NAME}` and `${NAME:-default}` from `vars`; `$${` stays a literal `${`.
/// An unset variable without default is an error naming it.
pub fn expand_env(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i + 1..).unwrap_or_default();
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err("unterminated '${' (write '$${' for a literal)".into());
        };
        let inner = body.get(..end).unwrap_or_default();
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("'${{{inner}}}' is not a variable reference"));
        }
        match (vars(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}})"
                ))
            }
        }
        rest = body.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// The sections of the snapshot for one `nodes[]` entry (top level where not replaced), and
/// for each section the path prefix its errors are reported under.
pub fn merged(
    file: &ConfigFile,
    index: usize,
) -> Option<(Sections, BTreeMap<&'static str, String>)> {
    let o = file.nodes.get(index)?;
    let here = format!("nodes[{index}].");
    let mut prefixes = BTreeMap::new();
    let top = file;
    let mut pick = |name: &'static str, replaced: bool| {
        prefixes.insert(
            name,
            if replaced {
                here.clone()
            } else {
                String::new()
            },
        );
    };
    pick("listeners", o.listeners.is_some());
    pick("routes", o.routes.is_some());
    pick("upstreams", o.upstreams.is_some());
    pick("filters", o.filters.is_some());
    pick("authz", o.authz.is_some());
    let s = Sections {
        listeners: o.listeners.clone().unwrap_or_else(|| top.listeners.clone()),
        routes: o.routes.clone().unwrap_or_else(|| top.routes.clone()),
        upstreams: o.upstreams.clone().unwrap_or_else(|| top.upstreams.clone()),
        filters: o.filters.clone().unwrap_or_else(|| top.filters.clone()),
        authz: o.authz.clone().or_else(|| top.authz.clone()),
    };
    Some((s, prefixes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("10001".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        assert_eq!(
            expand_env("a ${PORT} b ${NOPE:-7} c $${PORT} $x", &vars).unwrap(),
            "a 10001 b 7 c ${PORT} $x"
        );
        assert_eq!(expand_env("${EMPTY:-d}", &vars).unwrap(), "d");
        let e = expand_env("port: ${NOPE}", &vars).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        assert!(expand_env("${PORT", &vars)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_env("${a b}", &vars)
            .unwrap_err()
            .contains("not a variable reference"));
    }

    #[test]
    fn parses_a_full_file_and_refuses_unknown_fields() {
        let f = parse(
            r#"
wasm_dir: /w
native_dir: /n
authz: { address: "127.0.0.1:9000", timeout: 250ms }
upstreams: [{ name: api, endpoints: ["127.0.0.1:8080"], http2: true }]
filters:
  - { name: jwt, type: jwt-shape, config: { a: 1 } }
  - { name: z, type: authz }
  - { name: pa, type: portal-auth, runtime: native, config: { store: { cluster: a } } }
listeners: [{ name: main, address: "127.0.0.1:10000", filters: [jwt, z] }]
routes:
  - { match: { prefix: / }, upstream: api, timeout: 5s }
  - { match: { path: /ok }, direct_response: { status: 200, body: ok } }
nodes:
  - { node: b, routes: [] }
"#,
        )
        .unwrap();
        assert_eq!(f.filters[0].kind, FilterKind::JwtShape);
        assert_eq!(f.filters[0].config, Some(serde_json::json!({"a": 1})));
        assert_eq!(f.filters[0].runtime, None);
        assert_eq!(f.filters[2].kind, FilterKind::PortalAuth);
        assert_eq!(f.filters[2].runtime, Some(Runtime::Native));
        assert_eq!(f.native_dir.as_deref(), Some("/n"));
        assert_eq!(f.routes.len(), 2);
        assert_eq!(f.nodes[0].node.as_deref(), Some("b"));
        let (merged, prefixes) = merged(&f, 0).unwrap();
        assert!(merged.routes.is_empty());
        assert_eq!(merged.listeners.len(), 1);
        assert_eq!(prefixes["routes"], "nodes[0].");
        assert_eq!(prefixes["listeners"], "");

        let e = parse("listeners: [{ name: a, address: x, bogus: 1 }]").unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let e = parse("filters: [{ name: a, type: lua }]").unwrap_err();
        assert!(e.to_string().contains("unknown variant `lua`"), "{e}");
        assert_eq!(parse("").unwrap(), ConfigFile::default());
    }
}
