//! `edgeguard xds`: an xDS control plane for Envoy. It serves listeners, routes, clusters,
//! endpoints and the edgeguard filters' configuration (ECDS) over ADS (state of the world)
//! from a declarative YAML file that it watches and hot-reloads.
//!
//! - [`model`]: the YAML file; [`validate`]: names resolved, filter configs checked with the
//!   filters' own parsers, every problem named by its field; [`snapshot`]: Envoy resources per
//!   type, versioned by content, checked for consistency; [`load`]: file → snapshots.
//! - [`cache`]: one snapshot per node id / node cluster / default; [`session`]: the per-stream
//!   ACK/NACK state machine (pure); [`server`]: the tonic ADS service.
//! - [`metrics`]: Prometheus text on `/metrics`, plus `/status` (JSON) and `/healthz`.

pub mod cache;
pub mod load;
pub mod metrics;
pub mod model;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod validate;
mod watch;
mod web;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

use crate::cache::SnapshotCache;
use crate::metrics::Metrics;
use crate::server::{Ads, Streams};

/// `edgeguard xds` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct XdsArgs {
    /// The YAML file to serve; watched and hot-reloaded (an edit that does not validate is
    /// refused and the last good configuration stays).
    #[arg(long, env = "EDGEGUARD_XDS_CONFIG")]
    pub config: PathBuf,
    /// ADS (gRPC) port.
    #[arg(long, env = "EDGEGUARD_XDS_PORT", default_value_t = 18000)]
    pub port: u16,
    /// Port of `/metrics` (Prometheus), `/status` (JSON) and `/healthz`.
    #[arg(long, env = "EDGEGUARD_XDS_METRICS_PORT", default_value_t = 18001)]
    pub metrics_port: u16,
    /// Address both ports listen on.
    #[arg(
        long,
        env = "EDGEGUARD_XDS_LISTEN_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub listen_address: IpAddr,
}

/// Why `edgeguard xds` stopped.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("configuration {path} refused: {refused}")]
    Config {
        path: PathBuf,
        refused: load::Refused,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("ADS server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("server task: {0}")]
    Task(String),
}

/// What the reload loop and `/status` share.
#[derive(Clone, Debug, Default)]
pub struct ReloadState {
    pub fingerprint: String,
    /// The refusal of the file on disk, if it was refused.
    pub error: Option<String>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the control plane until SIGINT/SIGTERM.
pub async fn run(args: XdsArgs) -> Result<(), XdsError> {
    init_logging();
    let metrics = Metrics::new()?;
    let cache = SnapshotCache::new();
    let attempt = load::load(&args.config);
    let loaded = match attempt.result {
        Ok(l) => l,
        Err(refused) => {
            return Err(XdsError::Config {
                path: args.config.clone(),
                refused,
            })
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    metrics.published(loaded.snapshots.iter());
    metrics.reloads.with_label_values(&["ok"]).inc();
    metrics.config_ok.set(1);
    let summary = watch::summary(&loaded.snapshots);
    cache.publish(loaded.snapshots);
    let state = Arc::new(std::sync::Mutex::new(ReloadState {
        fingerprint: attempt.fingerprint,
        error: None,
    }));

    let ads_addr = SocketAddr::new(args.listen_address, args.port);
    let ads_listener = tokio::net::TcpListener::bind(ads_addr)
        .await
        .map_err(|source| XdsError::Bind {
            addr: ads_addr,
            source,
        })?;
    let web_addr = SocketAddr::new(args.listen_address, args.metrics_port);
    let web_listener = tokio::net::TcpListener::bind(web_addr)
        .await
        .map_err(|source| XdsError::Bind {
            addr: web_addr,
            source,
        })?;

    let streams = Streams::default();
    let watcher = watch::Reloader::start(
        args.config.clone(),
        attempt.inputs,
        cache.clone(),
        metrics.clone(),
        state.clone(),
    )
    .map_err(|source| XdsError::Watch {
        path: args.config.clone(),
        source,
    })?;

    tracing::info!(
        "edgeguard xds: ADS on {ads_addr}, metrics on http://{web_addr}/metrics, serving {} ({summary})",
        args.config.display()
    );

    let web = web::serve(
        web_listener,
        web::WebState {
            metrics: metrics.clone(),
            streams: streams.clone(),
            cache: cache.clone(),
            reload: state,
            config: args.config.clone(),
        },
    );
    let web_task = tokio::spawn(web);

    // Streams end when told to stop: a graceful shutdown would otherwise wait for Envoy to
    // close its (never-ending) ADS streams.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ads = Ads::new(cache, metrics, streams, stop_rx.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(ads_listener);
    let mut stopped = stop_rx;
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }),
    );
    let served = tokio::select! {
        r = &mut server => r,
        _ = edgeguard_shutdown::signal() => {
            tracing::info!("stopping: closing ADS streams");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(std::time::Duration::from_secs(3), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    web_task.abort();
    drop(watcher);
    tracing::info!("edgeguard xds stopped");
    match served {
        Ok(r) => r.map_err(XdsError::from),
        Err(e) => Err(XdsError::Task(e.to_string())),
    }
}
