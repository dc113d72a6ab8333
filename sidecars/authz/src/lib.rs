//! `edgeguard authz`: a PEAS-compatible Envoy ext_authz server.
//!
//! - gRPC on `PORT` (10001): `envoy.service.auth.v3.Authorization/Check`, server reflection
//!   (v1 and v1alpha, so `grpcurl` needs no .proto files) and `grpc.health.v1.Health`
//!   (NOT_SERVING until the store has data);
//! - HTTP on `METRICS_PORT` (9090): `/metrics` (PEAS's metrics), `/healthz` (liveness, PEAS's
//!   body), `/readyz` (200 once the store has data, else 503);
//! - the verdict is `edgeguard_verdict::portal::check`, the same code the portal-auth wasm
//!   filter runs; the store is `edgeguard_portal_store` (Postgres + LISTEN/NOTIFY, or YAML).

pub mod config;
pub mod metrics;
pub mod server;
pub mod service;
pub mod sync;

use std::sync::Arc;

use edgeguard_verdict::portal::PortalView;

pub use config::AuthzArgs;
pub use server::run;

/// Read access to the current store snapshot (cheap: an `Arc` clone).
pub trait StoreHandle: Send + Sync {
    fn view(&self) -> Arc<dyn PortalView + Send + Sync>;
    /// The clock quotas are counted by (Unix seconds): when the month resets.
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The reflection descriptor of the ext_authz service (built from envoy-types' .proto files).
pub const EXT_AUTHZ_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));
