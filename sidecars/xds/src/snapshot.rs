//! Snapshots: the Envoy resources of one node, per type, each type versioned by a hash of its
//! content (so an unchanged type is never pushed again, and a restarted control plane serves
//! the versions Envoy already has). [`Snapshot::build`] turns a validated [`Plan`] into
//! resources; [`Snapshot::consistent`] is go-control-plane's `Consistent()`: every EDS, RDS
//! and ECDS name a resource refers to is in the snapshot, and so is every routed cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, async_data_source, config_source, data_source, grpc_service, socket_address,
    AggregatedConfigSource, ApiVersion, AsyncDataSource, BackoffStrategy, ConfigSource, DataSource,
    ExtensionConfigSource, GrpcService, Http2ProtocolOptions, SocketAddress, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{ext_authz, ExtAuthz};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, EnvironmentVariables, FailurePolicy, PluginConfig, ReloadConfig, VmConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    regex_matcher, string_matcher, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, StringValue};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::validate::{
    Issue, OriginMatch, PathMatch, Plan, PlanCors, PlanFilter, PlanFilterKind,
    RouteAction as PlanAction,
};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
pub const CORS_POLICY: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
/// The name of Envoy's CORS filter, and the key of its per-virtual-host policy.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const EXT_AUTHZ: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub const DYNAMIC_MODULE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
/// `dynamic_module_config.metrics_namespace` of the native filters: their counters are
/// `edgeguard.<name>` on `/stats` (`envoy_edgeguard_<name>` in Prometheus form).
pub const NATIVE_METRICS_NAMESPACE: &str = "edgeguard";
/// Backoff between reloads of a wasm VM that failed (`reload_config.backoff`).
pub const VM_RELOAD_BASE: Duration = Duration::from_secs(1);
pub const VM_RELOAD_MAX: Duration = Duration::from_secs(10);
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The xDS resource types served, in Envoy's make-before-break push order
/// (CDS, EDS, LDS, RDS, ECDS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    ExtensionConfig,
}

impl ResourceType {
    pub const ORDER: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::ExtensionConfig,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => CLUSTER,
            ResourceType::Endpoint => ENDPOINT,
            ResourceType::Listener => LISTENER,
            ResourceType::Route => ROUTE,
            ResourceType::ExtensionConfig => EXTENSION_CONFIG,
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ORDER
            .into_iter()
            .find(|t| t.type_url() == url)
    }

    /// The short name used in logs and metric labels.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::ExtensionConfig => "ecds",
        }
    }

    /// LDS and CDS requests with no names (or `*`) ask for everything.
    pub fn wildcard_capable(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

/// The resources of one type, with their version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub version: String,
    pub items: BTreeMap<String, Any>,
}

/// One node's configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<ResourceType, Resources>,
}

/// A hash of the resources (names, type URLs, bytes): the version of their type.
pub fn content_version(items: &BTreeMap<String, Any>) -> String {
    let mut h = Sha256::new();
    for (name, any) in items {
        for part in [name.as_bytes(), any.type_url.as_bytes(), &any.value] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(16);
    for b in digest.iter().take(8) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Packs a message as `Any`.
pub fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn socket(host: &str, port: u16) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

impl Snapshot {
    /// A snapshot of the given resources; each type's version is the hash of its content.
    pub fn from_resources(resources: BTreeMap<ResourceType, BTreeMap<String, Any>>) -> Snapshot {
        let mut types = BTreeMap::new();
        for t in ResourceType::ORDER {
            let items = resources.get(&t).cloned().unwrap_or_default();
            types.insert(
                t,
                Resources {
                    version: content_version(&items),
                    items,
                },
            );
        }
        Snapshot { types }
    }

    /// Builds the Envoy resources of a validated plan and checks they are consistent.
    pub fn build(plan: &Plan) -> Result<Snapshot, Vec<Issue>> {
        let mut r: BTreeMap<ResourceType, BTreeMap<String, Any>> = BTreeMap::new();
        for c in &plan.clusters {
            let (cluster, endpoints) = build_cluster(c);
            r.entry(ResourceType::Cluster)
                .or_default()
                .insert(c.name.clone(), pack(CLUSTER, &cluster));
            if let Some(cla) = endpoints {
                r.entry(ResourceType::Endpoint)
                    .or_default()
                    .insert(c.name.clone(), pack(ENDPOINT, &cla));
            }
        }
        for l in &plan.listeners {
            let type_urls = |name: &str| -> Vec<String> {
                match plan.filters.iter().find(|f| f.name == name) {
                    Some(PlanFilter {
                        kind: PlanFilterKind::ExtAuthz { .. },
                        ..
                    }) => vec![EXT_AUTHZ.to_string()],
                    // both builds, whichever runs now: switching `runtime` is then an ECDS
                    // update only (Envoy checks a new filter configuration against the
                    // listener's type URLs, and a listener change would drain it)
                    Some(PlanFilter {
                        either_runtime: true,
                        ..
                    }) => vec![WASM.to_string(), DYNAMIC_MODULE.to_string()],
                    _ => vec![WASM.to_string()],
                }
            };
            r.entry(ResourceType::Listener).or_default().insert(
                l.name.clone(),
                pack(LISTENER, &build_listener(l, &type_urls)),
            );
        }
        for rc in &plan.route_configs {
            r.entry(ResourceType::Route)
                .or_default()
                .insert(rc.name.clone(), pack(ROUTE, &build_routes(rc)));
        }
        for f in &plan.filters {
            r.entry(ResourceType::ExtensionConfig)
                .or_default()
                .insert(f.name.clone(), pack(EXTENSION_CONFIG, &build_filter(f)));
        }
        let snap = Snapshot::from_resources(r);
        snap.consistent()?;
        Ok(snap)
    }

    pub fn resources(&self, t: ResourceType) -> Option<&Resources> {
        self.types.get(&t)
    }

    /// The version of a type ("" when the snapshot has no such type).
    pub fn version(&self, t: ResourceType) -> &str {
        self.types.get(&t).map_or("", |r| r.version.as_str())
    }

    /// Versions of every type, for status pages and metrics.
    pub fn versions(&self) -> BTreeMap<ResourceType, String> {
        self.types
            .iter()
            .map(|(t, r)| (*t, r.version.clone()))
            .collect()
    }

    /// go-control-plane's `Consistent()`, extended to ECDS and routed clusters.
    pub fn consistent(&self) -> Result<(), Vec<Issue>> {
        let names = |t: ResourceType| -> BTreeSet<&str> {
            self.types
                .get(&t)
                .map(|r| r.items.keys().map(String::as_str).collect())
                .unwrap_or_default()
        };
        let clusters = names(ResourceType::Cluster);
        let endpoints = names(ResourceType::Endpoint);
        let routes = names(ResourceType::Route);
        let filters = names(ResourceType::ExtensionConfig);
        let mut issues = Vec::new();
        let undecodable = |t: ResourceType, name: &str| {
            Issue::new(
                "snapshot",
                format!("{} resource '{name}' does not decode", t.short()),
            )
        };
        let items = |t: ResourceType| {
            self.types
                .get(&t)
                .map(|r| r.items.iter())
                .into_iter()
                .flatten()
        };
        for (name, any) in items(ResourceType::Cluster) {
            let Ok(c) = Cluster::decode(any.value.as_slice()) else {
                issues.push(undecodable(ResourceType::Cluster, name));
                continue;
            };
            let eds = matches!(
                c.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
            );
            if eds {
                let service = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(c.name.as_str());
                if !endpoints.contains(service) {
                    issues.push(Issue::new(
                        "snapshot",
                        format!("cluster '{name}' uses EDS, but there is no endpoint assignment '{service}'"),
                    ));
                }
            }
        }
        for (name, any) in items(ResourceType::Listener) {
            let Ok(l) = Listener::decode(any.value.as_slice()) else {
                issues.push(undecodable(ResourceType::Listener, name));
                continue;
            };
            for f in l.filter_chains.iter().flat_map(|fc| fc.filters.iter()) {
                let Some(filter::ConfigType::TypedConfig(tc)) = &f.config_type else {
                    continue;
                };
                if tc.type_url != HCM {
                    continue;
                }
                let Ok(hcm) = HttpConnectionManager::decode(tc.value.as_slice()) else {
                    issues.push(undecodable(ResourceType::Listener, name));
                    continue;
                };
                if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                    &hcm.route_specifier
                {
                    if !routes.contains(rds.route_config_name.as_str()) {
                        issues.push(Issue::new(
                            "snapshot",
                            format!(
                                "listener '{name}' uses route configuration '{}', which is not in the snapshot",
                                rds.route_config_name
                            ),
                        ));
                    }
                }
                for hf in &hcm.http_filters {
                    if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = hf.config_type {
                        if !filters.contains(hf.name.as_str()) {
                            issues.push(Issue::new(
                                "snapshot",
                                format!(
                                    "listener '{name}' uses filter configuration '{}', which is not in the snapshot",
                                    hf.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for (name, any) in items(ResourceType::Route) {
            let Ok(rc) = RouteConfiguration::decode(any.value.as_slice()) else {
                issues.push(undecodable(ResourceType::Route, name));
                continue;
            };
            for r in rc.virtual_hosts.iter().flat_map(|v| v.routes.iter()) {
                if let Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)),
                    ..
                })) = &r.action
                {
                    if !clusters.contains(c.as_str()) {
                        issues.push(Issue::new(
                            "snapshot",
                            format!("route configuration '{name}' routes to cluster '{c}', which is not in the snapshot"),
                        ));
                    }
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}

fn build_cluster(c: &crate::validate::PlanCluster) -> (Cluster, Option<ClusterLoadAssignment>) {
    let cla = ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: c
                .endpoints
                .iter()
                .map(|e| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&e.host, e.port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut cluster = Cluster {
        name: c.name.clone(),
        connect_timeout: Some(duration(c.connect_timeout)),
        ..Default::default()
    };
    if c.http2 {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS_KEY.to_string(),
            pack(HTTP_PROTOCOL_OPTIONS, &opts),
        );
    }
    if c.uses_eds() {
        cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        ));
        cluster.eds_cluster_config = Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        });
        (cluster, Some(cla))
    } else {
        cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32,
        ));
        cluster.load_assignment = Some(cla);
        (cluster, None)
    }
}

fn build_listener(
    l: &crate::validate::PlanListener,
    type_urls: &dyn Fn(&str) -> Vec<String>,
) -> Listener {
    let mut http_filters: Vec<HttpFilter> = l
        .filters
        .iter()
        .map(|name| HttpFilter {
            name: name.clone(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource {
                    config_source: Some(ads()),
                    type_urls: type_urls(name),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .collect();
    if l.cors {
        // first: a 401/403/429 a later filter answers goes back through it and gets the
        // CORS headers, so the page can read it
        http_filters.insert(
            0,
            HttpFilter {
                name: CORS_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                    CORS,
                    &Cors::default(),
                ))),
                ..Default::default()
            },
        );
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            ROUTER,
            &Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: l.name.clone(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: l.route_config.clone(),
        })),
        http_filters,
        ..Default::default()
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket(&l.ip.to_string(), l.port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(HCM, &hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn build_routes(rc: &crate::validate::PlanRouteConfig) -> RouteConfiguration {
    let routes = rc
        .routes
        .iter()
        .map(|r| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(match &r.matcher {
                    PathMatch::Exact(p) => route_match::PathSpecifier::Path(p.clone()),
                    PathMatch::Prefix(p) => route_match::PathSpecifier::Prefix(p.clone()),
                }),
                ..Default::default()
            }),
            action: Some(match &r.action {
                PlanAction::Upstream { cluster, timeout } => route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.clone(),
                    )),
                    timeout: timeout.map(duration),
                    ..Default::default()
                }),
                PlanAction::Direct { status, body } => {
                    route::Action::DirectResponse(DirectResponseAction {
                        status: *status,
                        body: body.as_ref().map(|b| DataSource {
                            specifier: Some(data_source::Specifier::InlineString(b.clone())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                }
            }),
            ..Default::default()
        })
        .collect();
    let mut typed_per_filter_config = std::collections::HashMap::new();
    if let Some(cors) = &rc.cors {
        typed_per_filter_config.insert(
            CORS_FILTER.to_string(),
            pack(CORS_POLICY, &cors_policy(cors)),
        );
    }
    RouteConfiguration {
        name: rc.name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: rc.listener.clone(),
            domains: rc.domains.clone(),
            routes,
            typed_per_filter_config,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Escapes RE2 metacharacters in a literal.
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn cors_policy(c: &PlanCors) -> CorsPolicy {
    let regex = |r: String| StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: r,
            engine_type: None::<regex_matcher::EngineType>,
        })),
        ..Default::default()
    };
    CorsPolicy {
        allow_origin_string_match: c
            .origins
            .iter()
            .map(|o| match o {
                OriginMatch::Exact(e) => StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(e.clone())),
                    ..Default::default()
                },
                OriginMatch::Subdomains { scheme, suffix } => regex(format!(
                    "{}://[a-z0-9-]+(\\.[a-z0-9-]+)*\\.{}",
                    regex_literal(scheme),
                    regex_literal(suffix)
                )),
                OriginMatch::Any => regex(".*".into()),
            })
            .collect(),
        allow_methods: c.allow_methods.join(", "),
        allow_headers: c.allow_headers.join(", "),
        expose_headers: c.expose_headers.join(", "),
        max_age: c.max_age.as_secs().to_string(),
        allow_credentials: Some(BoolValue {
            value: c.allow_credentials,
        }),
        ..Default::default()
    }
}

fn build_filter(f: &PlanFilter) -> TypedExtensionConfig {
    let typed_config = match &f.kind {
        PlanFilterKind::Wasm {
            module,
            configuration,
            env,
            fail_open,
        } => {
            let vm = VmConfig {
                vm_id: f.name.clone(),
                runtime: "envoy.wasm.runtime.v8".into(),
                code: Some(AsyncDataSource {
                    specifier: Some(async_data_source::Specifier::Local(DataSource {
                        specifier: Some(data_source::Specifier::Filename(
                            module.to_string_lossy().into_owned(),
                        )),
                        ..Default::default()
                    })),
                }),
                environment_variables: (!env.is_empty()).then(|| EnvironmentVariables {
                    host_env_keys: env.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let plugin = PluginConfig {
                name: f.name.clone(),
                configuration: Some(pack(
                    STRING_VALUE,
                    &StringValue {
                        value: configuration.clone(),
                    },
                )),
                failure_policy: if *fail_open {
                    FailurePolicy::FailOpen as i32
                } else {
                    FailurePolicy::FailReload as i32
                },
                // a VM that dies (a panic traps it) is replaced by a new one, with backoff;
                // requests fail closed until it is back
                reload_config: (!*fail_open).then(|| ReloadConfig {
                    backoff: Some(BackoffStrategy {
                        base_interval: Some(duration(VM_RELOAD_BASE)),
                        max_interval: Some(duration(VM_RELOAD_MAX)),
                    }),
                }),
                vm: Some(plugin_config::Vm::VmConfig(vm)),
                ..Default::default()
            };
            pack(
                WASM,
                &Wasm {
                    config: Some(plugin),
                },
            )
        }
        // a native module runs in Envoy's process: no VM, so no failure policy or reload
        // (those are wasm settings); kept loaded once loaded (it owns background work)
        PlanFilterKind::Native {
            module,
            filter_name,
            configuration,
        } => pack(
            DYNAMIC_MODULE,
            &DynamicModuleFilter {
                dynamic_module_config: Some(DynamicModuleConfig {
                    name: module.clone(),
                    do_not_close: true,
                    metrics_namespace: NATIVE_METRICS_NAMESPACE.to_string(),
                    ..Default::default()
                }),
                filter_name: filter_name.clone(),
                filter_config: Some(pack(
                    STRING_VALUE,
                    &StringValue {
                        value: configuration.clone(),
                    },
                )),
                ..Default::default()
            },
        ),
        PlanFilterKind::ExtAuthz {
            cluster,
            timeout,
            failure_mode_allow,
        } => pack(
            EXT_AUTHZ,
            &ExtAuthz {
                transport_api_version: ApiVersion::V3 as i32,
                failure_mode_allow: *failure_mode_allow,
                services: Some(ext_authz::Services::GrpcService(GrpcService {
                    timeout: Some(duration(*timeout)),
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: cluster.clone(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            },
        ),
    };
    TypedExtensionConfig {
        name: f.name.clone(),
        typed_config: Some(typed_config),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::parse;
    use crate::validate::{check, Context};

    pub(crate) fn plan(yaml: &str) -> Plan {
        let f = parse(yaml).unwrap();
        let env = |_: &str| None;
        let exists = |_: &Path| true;
        let ctx = Context {
            wasm_dir: Path::new("/wasm"),
            native_dir: None,
            env: &env,
            exists: &exists,
        };
        check(&f.sections(), &|_| String::new(), &ctx).unwrap()
    }

    const YAML: &str = r#"
upstreams:
  - { name: electric, endpoints: ["127.0.0.1:18080"] }
  - { name: dns, endpoints: ["echo.internal:80"], http2: true }
filters:
  - { name: floor, type: floor }
listeners:
  - { name: demo, address: "127.0.0.1:10000", filters: [floor] }
routes:
  - { match: { path: /v1/shape }, upstream: electric, timeout: 60s }
  - { match: { prefix: / }, upstream: dns }
"#;

    #[test]
    fn builds_every_type_with_references_that_resolve() {
        let s = Snapshot::build(&plan(YAML)).unwrap();
        let names = |t| {
            s.resources(t)
                .unwrap()
                .items
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(names(ResourceType::Cluster), vec!["dns", "electric"]);
        // only IP upstreams go over EDS
        assert_eq!(names(ResourceType::Endpoint), vec!["electric"]);
        assert_eq!(names(ResourceType::Listener), vec!["demo"]);
        assert_eq!(names(ResourceType::Route), vec!["demo-routes"]);
        assert_eq!(names(ResourceType::ExtensionConfig), vec!["floor"]);

        let l = &s.resources(ResourceType::Listener).unwrap().items["demo"];
        let l = Listener::decode(l.value.as_slice()).unwrap();
        let Some(filter::ConfigType::TypedConfig(tc)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no hcm")
        };
        let hcm = HttpConnectionManager::decode(tc.value.as_slice()).unwrap();
        assert_eq!(hcm.http_filters[0].name, "floor");
        match &hcm.http_filters[0].config_type {
            Some(http_filter::ConfigType::ConfigDiscovery(c)) => {
                assert_eq!(c.type_urls, vec![WASM.to_string()])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hcm.http_filters[1].name, "envoy.filters.http.router");
    }

    fn plugin(s: &Snapshot, name: &str) -> PluginConfig {
        let any = &s.resources(ResourceType::ExtensionConfig).unwrap().items[name];
        let tec = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
        let wasm = Wasm::decode(tec.typed_config.unwrap().value.as_slice()).unwrap();
        wasm.config.unwrap()
    }

    #[test]
    fn wasm_vms_that_fail_are_reloaded_unless_fail_open() {
        let yaml = YAML.replace(
            "  - { name: floor, type: floor }",
            "  - { name: floor, type: floor }\n  - { name: optional, type: floor, fail_open: true }",
        );
        let s = Snapshot::build(&plan(&yaml)).unwrap();
        let p = plugin(&s, "floor");
        assert_eq!(p.failure_policy, FailurePolicy::FailReload as i32);
        let backoff = p.reload_config.unwrap().backoff.unwrap();
        assert_eq!(
            backoff.base_interval,
            Some(duration(Duration::from_secs(1)))
        );
        assert_eq!(
            backoff.max_interval,
            Some(duration(Duration::from_secs(10)))
        );
        let p = plugin(&s, "optional");
        assert_eq!(p.failure_policy, FailurePolicy::FailOpen as i32);
        assert_eq!(p.reload_config, None);
    }

    const JWT: &str = r#"{"providers":{"demo":{"issuer":"i","hmac":{"secret":"0123456789abcdef0123456789abcdef"}}},"rules":[{"match":{"prefix":"/"},"provider":"demo"}]}"#;
    const PORTAL: &str = r#"{"store":{"cluster":"electric"}}"#;

    /// YAML with a jwt-shape and a portal-auth filter, both with `runtime`.
    fn two_filters(jwt_runtime: &str, portal_runtime: &str) -> String {
        YAML.replace(
            "  - { name: floor, type: floor }",
            &format!(
                "  - {{ name: floor, type: floor }}\n  - {{ name: jwt, type: jwt-shape, {jwt_runtime} config: '{JWT}' }}\n  - {{ name: pa, type: portal-auth, {portal_runtime} config: '{PORTAL}' }}"
            ),
        )
        .replace("filters: [floor]", "filters: [floor, jwt, pa]")
    }

    fn filter_config(s: &Snapshot, name: &str) -> Any {
        let any = &s.resources(ResourceType::ExtensionConfig).unwrap().items[name];
        let tec = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(tec.name, name);
        tec.typed_config.unwrap()
    }

    fn listener_type_urls(s: &Snapshot) -> Vec<(String, Vec<String>)> {
        let l = &s.resources(ResourceType::Listener).unwrap().items["demo"];
        let l = Listener::decode(l.value.as_slice()).unwrap();
        let Some(filter::ConfigType::TypedConfig(tc)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no hcm")
        };
        let hcm = HttpConnectionManager::decode(tc.value.as_slice()).unwrap();
        hcm.http_filters
            .iter()
            .filter_map(|f| match &f.config_type {
                Some(http_filter::ConfigType::ConfigDiscovery(c)) => {
                    Some((f.name.clone(), c.type_urls.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn runtime_native_builds_dynamic_module_filters() {
        let s =
            Snapshot::build(&plan(&two_filters("runtime: native,", "runtime: native,"))).unwrap();
        for (name, module, filter_name, json) in [
            ("jwt", "edgeguard_jwt_shape", "jwt_shape", JWT),
            ("pa", "edgeguard_portal_auth", "portal_auth", PORTAL),
        ] {
            let any = filter_config(&s, name);
            assert_eq!(any.type_url, DYNAMIC_MODULE);
            let dm = DynamicModuleFilter::decode(any.value.as_slice()).unwrap();
            assert_eq!(
                dm,
                DynamicModuleFilter {
                    dynamic_module_config: Some(DynamicModuleConfig {
                        name: module.into(),
                        do_not_close: true,
                        metrics_namespace: "edgeguard".into(),
                        ..Default::default()
                    }),
                    filter_name: filter_name.into(),
                    filter_config: Some(Any {
                        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                        value: StringValue { value: json.into() }.encode_to_vec(),
                    }),
                    terminal_filter: false,
                },
                "{name}"
            );
        }
        // the floor stays wasm; jwt-shape and portal-auth accept either build
        let both = vec![WASM.to_string(), DYNAMIC_MODULE.to_string()];
        assert_eq!(
            listener_type_urls(&s),
            vec![
                ("floor".to_string(), vec![WASM.to_string()]),
                ("jwt".to_string(), both.clone()),
                ("pa".to_string(), both),
            ]
        );
    }

    #[test]
    fn wasm_is_the_default_runtime_and_unchanged() {
        let absent =
            Snapshot::build(&plan(&two_filters("", "env: [EDGEGUARD_STORE_TOKEN],"))).unwrap();
        let explicit = Snapshot::build(&plan(&two_filters(
            "runtime: wasm,",
            "runtime: wasm, env: [EDGEGUARD_STORE_TOKEN],",
        )))
        .unwrap();
        assert_eq!(absent, explicit);
        for (name, file, json) in [
            ("jwt", "/wasm/jwt_shape.wasm", JWT),
            ("pa", "/wasm/portal_auth.wasm", PORTAL),
        ] {
            assert_eq!(filter_config(&absent, name).type_url, WASM);
            let p = plugin(&absent, name);
            assert_eq!(p.failure_policy, FailurePolicy::FailReload as i32);
            assert!(p.reload_config.is_some());
            let Some(plugin_config::Vm::VmConfig(vm)) = p.vm else {
                panic!("no vm config")
            };
            assert_eq!(
                vm.code.unwrap().specifier,
                Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(file.into())),
                    ..Default::default()
                }))
            );
            let conf = StringValue::decode(p.configuration.unwrap().value.as_slice()).unwrap();
            assert_eq!(conf.value, json);
        }
    }

    #[test]
    fn switching_the_runtime_is_an_ecds_update_only() {
        let wasm =
            Snapshot::build(&plan(&two_filters("", "env: [EDGEGUARD_STORE_TOKEN],"))).unwrap();
        let native = Snapshot::build(&plan(&two_filters(
            "runtime: native,",
            "env: [EDGEGUARD_STORE_TOKEN],",
        )))
        .unwrap();
        for t in ResourceType::ORDER {
            assert_eq!(
                wasm.version(t) == native.version(t),
                t != ResourceType::ExtensionConfig,
                "{t:?}"
            );
        }
        assert_eq!(filter_config(&native, "jwt").type_url, DYNAMIC_MODULE);
        assert_eq!(filter_config(&native, "pa").type_url, WASM);
    }

    #[test]
    fn versions_follow_content_per_type() {
        let a = Snapshot::build(&plan(YAML)).unwrap();
        let b = Snapshot::build(&plan(YAML)).unwrap();
        assert_eq!(a.versions(), b.versions());
        // a route change moves only RDS
        let c = Snapshot::build(&plan(&YAML.replace("timeout: 60s", "timeout: 61s"))).unwrap();
        for t in ResourceType::ORDER {
            assert_eq!(
                a.version(t) == c.version(t),
                t != ResourceType::Route,
                "{t:?}"
            );
        }
        assert_eq!(a.version(ResourceType::Route).len(), 16);
    }

    #[test]
    fn inconsistent_snapshots_are_refused() {
        let good = Snapshot::build(&plan(YAML)).unwrap();
        let mut r: BTreeMap<ResourceType, BTreeMap<String, Any>> = BTreeMap::new();
        for t in ResourceType::ORDER {
            r.insert(t, good.resources(t).unwrap().items.clone());
        }
        r.get_mut(&ResourceType::Endpoint).unwrap().clear();
        r.get_mut(&ResourceType::Route).unwrap().clear();
        r.get_mut(&ResourceType::ExtensionConfig).unwrap().clear();
        let errs: Vec<String> = Snapshot::from_resources(r)
            .consistent()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            vec![
                "snapshot: cluster 'electric' uses EDS, but there is no endpoint assignment 'electric'",
                "snapshot: listener 'demo' uses route configuration 'demo-routes', which is not in the snapshot",
                "snapshot: listener 'demo' uses filter configuration 'floor', which is not in the snapshot",
            ]
        );
    }
}
