//! The HTTP side: `/metrics` (Prometheus text), `/status` (JSON: snapshots, streams with
//! accepted/rejected versions per type, last reload error) and `/healthz`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::cache::SnapshotCache;
use crate::metrics::Metrics;
use crate::server::Streams;
use crate::ReloadState;

#[derive(Clone)]
pub struct WebState {
    pub metrics: Metrics,
    pub streams: Streams,
    pub cache: SnapshotCache,
    pub reload: Arc<Mutex<ReloadState>>,
    pub config: PathBuf,
}

async fn metrics(State(s): State<WebState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn status(State(s): State<WebState>) -> Json<Value> {
    let current = s.cache.current();
    let mut snapshots = Map::new();
    for (k, snap) in &current.by_key {
        let versions: Map<String, Value> = snap
            .versions()
            .into_iter()
            .map(|(t, v)| (t.short().to_string(), Value::String(v)))
            .collect();
        snapshots.insert(k.to_string(), Value::Object(versions));
    }
    let streams: Vec<Value> = s
        .streams
        .snapshot()
        .into_iter()
        .map(|(id, st)| {
            let types: Map<String, Value> = st
                .types
                .iter()
                .map(|(t, ts)| {
                    (
                        t.short().to_string(),
                        json!({"accepted": ts.accepted, "rejected": ts.rejected, "in_flight": ts.in_flight}),
                    )
                })
                .collect();
            json!({
                "stream": id,
                "node": st.node_id,
                "cluster": st.node_cluster,
                "snapshot": st.snapshot.map(|k| k.to_string()),
                "types": types,
            })
        })
        .collect();
    let reload = s.reload.lock().map(|r| r.clone()).unwrap_or_default();
    Json(json!({
        "config": s.config.display().to_string(),
        "generation": current.generation,
        "config_ok": reload.error.is_none(),
        "last_error": reload.error,
        "snapshots": snapshots,
        "streams": streams,
    }))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Serves until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: WebState) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server stopped: {e}");
    }
}
