//! Counter names. Envoy shows them on `/stats/prometheus` with dots turned into underscores
//! (`edgeguard_jwt_shape_allowed`, `edgeguard_jwt_shape_denied_expired`, ...).

pub const ALLOWED: &str = "edgeguard_jwt_shape.allowed";
pub const BYPASSED: &str = "edgeguard_jwt_shape.bypassed";
pub const CACHE_HIT: &str = "edgeguard_jwt_shape.cache_hit";
pub const CACHE_MISS: &str = "edgeguard_jwt_shape.cache_miss";
pub const JWKS_FETCH_OK: &str = "edgeguard_jwt_shape.jwks_fetch_ok";
pub const JWKS_FETCH_FAILED: &str = "edgeguard_jwt_shape.jwks_fetch_failed";
/// JWKS calls refused because `remote_jwks.cluster` names no cluster of this Envoy.
pub const JWKS_CLUSTER_UNKNOWN: &str = "edgeguard_jwt_shape.jwks_cluster_unknown";

/// Denial reasons, so every counter exists (at 0) from the start.
pub const DENIAL_REASONS: &[&str] = &[
    "missing_token",
    "too_large",
    "malformed",
    "algorithm",
    "unknown_kid",
    "no_matching_key",
    "bad_signature",
    "keys_unavailable",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "missing_claim",
    "claim_type",
    "issuer",
    "audience",
    "no_client_certificate",
    "certificate_mismatch",
    "unbound_token",
    "unsupported_cnf",
    "bad_query",
    "shape_mismatch",
    "shape_claim",
    "no_rule",
    "bad_path",
    "subset_not_allowed",
    "subset_column",
    "subset_unsupported",
    "bad_body",
    "body_too_large",
    "body_unreadable",
];

/// The counter of denials for one reason.
pub fn denied(reason: &str) -> String {
    format!("edgeguard_jwt_shape.denied.{reason}")
}

/// Every counter name.
pub fn all() -> Vec<String> {
    let mut names: Vec<String> = [
        ALLOWED,
        BYPASSED,
        CACHE_HIT,
        CACHE_MISS,
        JWKS_FETCH_OK,
        JWKS_FETCH_FAILED,
        JWKS_CLUSTER_UNKNOWN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend(DENIAL_REASONS.iter().map(|r| denied(r)));
    names
}
