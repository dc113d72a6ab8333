//! edgeguard's verdict code.
//!
//! Everything here is pure: no host calls, no clocks, no I/O. The wasm filters and the
//! native sidecars compile the same code, so they reach the same answer for the same input.
//!
//! - [`token`]: JWS compact parsing and claim checks;
//! - [`binding`]: certificate-bound tokens (RFC 8705 `cnf.x5t#S256`);
//! - [`device`]: device identity (client certificates `edgeguard enroll` issued) in verdicts;
//! - [`xfcc`]: Envoy's `x-forwarded-client-cert` header;
//! - [`jwk`]: key sets (JWKS, HMAC secrets) and signature checks with strict alg/key binding;
//! - [`rsa`]: a verify-only RSA built for speed inside V8's wasm runtime;
//! - [`query`], [`identifier`], [`shape`]: Electric shape requests and shape claims;
//! - [`subset`]: Electric subset snapshots (`subset__*`, POST bodies) against the token;
//! - [`portal`]: PEAS-compatible portal-app verdicts (ext_authz sidecar and portal-auth filter);
//! - [`quota`]: the UTC month of monthly quotas and the headers telling a client about it;
//! - [`reply`]: the JSON error bodies every edgeguard component answers with.

pub mod binding;
pub mod device;
pub mod identifier;
pub mod jwk;
#[cfg(feature = "ring")]
mod native_crypto;
pub mod portal;
pub mod portal_wire;
pub mod query;
pub mod quota;
pub mod reply;
pub mod rsa;
pub mod shape;
pub mod strip;
pub mod subset;
pub mod token;
pub mod xfcc;
