//! jwt-shape: a proxy-wasm filter that checks JWTs (HMAC, JWKS inline or remote) and binds
//! Electric shape requests to the token's `shape` claim.
//!
//! The request logic ([`engine`]) is plain Rust against the [`edgeguard_host::Host`] trait;
//! the proxy-wasm glue (`wasm` module) only exists on `wasm32` and stays thin.

pub mod cache;
pub mod config;
pub mod engine;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod state;

#[cfg(target_arch = "wasm32")]
mod wasm;
