//! Harness for edgeguard's integration tests: the tools the Makefile installed, a real Envoy
//! started on free ports with the built `.wasm`, the `edgeguard` binary as echo upstream,
//! a controllable JWKS server, and key/token helpers for every JWS algorithm.
//!
//! Paths come from the environment the Makefile sets (`EDGEGUARD_ENVOY`, `EDGEGUARD_WASM_DIR`,
//! `EDGEGUARD_BIN`, `EDGEGUARD_GRPCURL`), with defaults relative to the workspace.

pub mod authz;
pub mod bench;
pub mod bench_authz;
pub mod bench_metering;
pub mod bench_native;
pub mod bench_xds;
pub mod demo;
pub mod enroll;
pub mod envoy;
pub mod flavour;
pub mod gatekeeper;
pub mod http;
pub mod jwks_server;
pub mod keys;
pub mod mtls;
pub mod postgres;
pub mod process;
pub mod tools;
pub mod xds;
