//! `edgeguard gatekeeper`: the first half of Electric's gatekeeper pattern, made real.
//!
//! It speaks Electric's gatekeeper contract (`POST /gatekeeper/:table` with `where`,
//! `namespace`, `columns`, `params[n]`, `replica`, `log` from the query or a JSON body; a 200
//! with `url`, `headers.Authorization`, `table`, `where`, `params`, `columns`, ...) and
//! replaces the example's stubs:
//!
//! - **who**: callers' OpenID Connect tokens ([`oidc`], verified with edgeguard's verdict code,
//!   the issuer's JWKS kept on jwt-shape's own schedule), API keys ([`api_keys`]), or, for
//!   development only, anyone ([`caller`]);
//! - **what**: a YAML policy ([`policy`], hot-reloaded by [`policy_store`]) decides the shape
//!   ([`decision`]): tables by raw name, `where` templates filled from claims, allowed columns,
//!   replica and log modes, claim conditions; asking for more is refused (403, saying what),
//!   asking for less is narrowed ([`where_clause`] appends a client's `where` safely);
//! - **the token**: a `shape` claim of raw names exactly as Electric mints it ([`shape_claim`],
//!   read back with jwt-shape's own reader before signing), signed with ES256 (default), EdDSA
//!   or HS256 ([`signing`]); asymmetric keys live in a directory ([`keyring`]) whose keys are
//!   published as JWKS before they sign and stay published until their last token expires, so
//!   rotation ([`rotate`], or `--rotate-every`) never fails a request, and replicas sharing the
//!   directory agree without talking to each other.

pub mod answer;
pub mod api_keys;
pub mod caller;
pub mod client_cert;
pub mod config;
pub mod decision;
pub mod electric;
pub mod keyring;
pub mod metrics;
pub mod oidc;
pub mod policy;
pub mod policy_store;
pub mod refusal;
pub mod request;
pub mod rotate;
pub mod server;
pub mod shape_claim;
pub mod signer;
pub mod signing;
pub mod where_clause;

pub use config::{GatekeeperArgs, GatekeeperCommand};
pub use server::GatekeeperError;

/// Runs `edgeguard gatekeeper` (serve) or `edgeguard gatekeeper rotate`.
pub fn main(args: GatekeeperArgs) -> Result<(), GatekeeperError> {
    match args.command {
        Some(GatekeeperCommand::Rotate(r)) => rotate::run(r),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(GatekeeperError::Runtime)?
            .block_on(server::run(args.serve)),
    }
}
