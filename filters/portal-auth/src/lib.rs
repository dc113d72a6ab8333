//! portal-auth: the portal-app verdict of `edgeguard authz` (PEAS-compatible), made inside
//! Envoy from a local copy of the store, with no per-request callout.
//!
//! The copy arrives in the background: the root context polls `edgeguard authz`'s snapshot
//! endpoint (`GET /store/v1/snapshot?since=<version>`) through an Envoy cluster and applies
//! the incremental updates. Requests are decided by `edgeguard_verdict::portal::check`, the
//! same function the ext_authz service runs.

pub mod config;
pub mod engine;
pub mod meter;
pub mod metrics;
pub mod report;
pub mod sync;

#[cfg(target_arch = "wasm32")]
mod wasm;
