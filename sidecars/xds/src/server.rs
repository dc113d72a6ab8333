//! The ADS gRPC service (envoy-types' `AggregatedDiscoveryService`, state of the world): one
//! task per stream drives a [`Session`] from Envoy's requests and from cache changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{NodeKey, SnapshotCache};
use crate::metrics::Metrics;
use crate::session::{Event, Session, TypeStatus};
use crate::snapshot::ResourceType;

/// One open stream, for `/status`.
#[derive(Clone, Debug, Default)]
pub struct StreamStatus {
    pub node_id: String,
    pub node_cluster: String,
    pub snapshot: Option<NodeKey>,
    pub types: BTreeMap<ResourceType, TypeStatus>,
}

/// Open streams by id.
#[derive(Clone, Debug, Default)]
pub struct Streams(Arc<Mutex<BTreeMap<u64, StreamStatus>>>);

impl Streams {
    pub fn snapshot(&self) -> BTreeMap<u64, StreamStatus> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut StreamStatus), metrics: &Metrics) {
        if let Ok(mut m) = self.0.lock() {
            f(m.entry(id).or_default());
            Self::gauges(&m, metrics);
        }
    }

    fn remove(&self, id: u64, metrics: &Metrics) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&id);
            Self::gauges(&m, metrics);
        }
    }

    fn gauges(m: &BTreeMap<u64, StreamStatus>, metrics: &Metrics) {
        let nodes: BTreeSet<&str> = m.values().map(|s| s.node_id.as_str()).collect();
        metrics.connected_nodes.set(nodes.len() as i64);
        metrics.streams.set(m.len() as i64);
    }
}

/// The ADS service.
#[derive(Clone)]
pub struct Ads {
    cache: SnapshotCache,
    metrics: Metrics,
    streams: Streams,
    next_id: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
}

impl Ads {
    /// `stop` turning true ends every stream (shutdown).
    pub fn new(
        cache: SnapshotCache,
        metrics: Metrics,
        streams: Streams,
        stop: watch::Receiver<bool>,
    ) -> Ads {
        Ads {
            cache,
            metrics,
            streams,
            next_id: Arc::new(AtomicU64::new(1)),
            stop,
        }
    }
}

fn record(events: &[Event], node: &str, metrics: &Metrics) {
    for e in events {
        match e {
            Event::Ack { kind, version } => {
                metrics.acks.with_label_values(&[kind.short()]).inc();
                tracing::debug!(node, r#type = kind.short(), version, "ACK");
            }
            Event::Nack {
                kind,
                version,
                message,
            } => {
                metrics.nacks.with_label_values(&[kind.short()]).inc();
                tracing::warn!(
                    node,
                    r#type = kind.short(),
                    rejected_version = version.as_deref().unwrap_or("?"),
                    error = message.as_str(),
                    "NACK: Envoy rejected the configuration; keeping its last accepted version and not resending this one until the snapshot changes"
                );
            }
            Event::StaleNonce { kind, nonce } => {
                metrics
                    .stale_nonces
                    .with_label_values(&[kind.short()])
                    .inc();
                tracing::debug!(node, r#type = kind.short(), nonce, "stale nonce ignored");
            }
            Event::UnknownType { type_url } => {
                tracing::warn!(
                    node,
                    type_url,
                    "request for a type this server does not serve"
                );
            }
        }
    }
}

async fn drive(
    id: u64,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    cache: SnapshotCache,
    metrics: Metrics,
    streams: Streams,
    mut stop: watch::Receiver<bool>,
) {
    // read requests in their own task: `select!` then only waits on cancel-safe receivers
    let (req_tx, mut req_rx) = mpsc::channel::<Result<DiscoveryRequest, Status>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let item = match inbound.message().await {
                Ok(Some(r)) => Ok(r),
                Ok(None) => break,
                Err(s) => Err(s),
            };
            let end = item.is_err();
            if req_tx.send(item).await.is_err() || end {
                break;
            }
        }
    });
    let mut snapshots = cache.subscribe();
    let mut session = Session::new(id);
    let mut node: Option<(String, String)> = None;
    loop {
        let (events, responses) = tokio::select! {
            msg = req_rx.recv() => {
                let req = match msg {
                    Some(Ok(r)) => r,
                    Some(Err(status)) => {
                        tracing::debug!(stream = id, %status, "stream error");
                        break;
                    }
                    None => break,
                };
                if node.is_none() {
                    let Some(n) = req.node.as_ref().filter(|n| !n.id.is_empty()) else {
                        let _ = tx.send(Err(Status::invalid_argument("the first request of a stream must carry node.id"))).await;
                        break;
                    };
                    tracing::info!(stream = id, node = n.id.as_str(), cluster = n.cluster.as_str(), "Envoy connected");
                    node = Some((n.id.clone(), n.cluster.clone()));
                }
                let (nid, ncl) = node.clone().unwrap_or_default();
                let found = snapshots.borrow_and_update().lookup(&nid, &ncl);
                let (events, responses) = session.on_request(&req, found.as_ref().map(|(_, s)| s.as_ref()));
                streams.update(id, |s| {
                    s.node_id = nid.clone();
                    s.node_cluster = ncl.clone();
                    s.snapshot = found.map(|(k, _)| k);
                }, &metrics);
                (events, responses)
            }
            res = stop.changed() => {
                if res.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some((nid, ncl)) = node.clone() else {
                    continue;
                };
                let found = snapshots.borrow_and_update().lookup(&nid, &ncl);
                let responses = session.pump(found.as_ref().map(|(_, s)| s.as_ref()));
                streams.update(id, |s| s.snapshot = found.map(|(k, _)| k), &metrics);
                (Vec::new(), responses)
            }
        };
        let nid = node.as_ref().map(|(i, _)| i.as_str()).unwrap_or_default();
        record(&events, nid, &metrics);
        let mut closed = false;
        for r in responses {
            let kind = ResourceType::from_type_url(&r.type_url);
            let short = kind.map_or("?", ResourceType::short);
            tracing::info!(
                node = nid,
                r#type = short,
                version = r.version_info.as_str(),
                resources = r.resources.len(),
                nonce = r.nonce.as_str(),
                "push"
            );
            metrics.pushes.with_label_values(&[short]).inc();
            if tx.send(Ok(r)).await.is_err() {
                closed = true;
                break;
            }
        }
        streams.update(id, |s| s.types = session.status(), &metrics);
        if closed {
            break;
        }
    }
    reader.abort();
    streams.remove(id, &metrics);
    if let Some((nid, _)) = node {
        tracing::info!(stream = id, node = nid.as_str(), "Envoy disconnected");
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(drive(
            id,
            request.into_inner(),
            tx,
            self.cache.clone(),
            self.metrics.clone(),
            self.streams.clone(),
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "edgeguard xds serves state-of-the-world ADS only (set ads_config.api_type: GRPC)",
        ))
    }
}
