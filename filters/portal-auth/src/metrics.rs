//! Counter and gauge names (Envoy shows them as `edgeguard_portal_auth_*`).

use edgeguard_verdict::portal::Denial;

pub const ALLOWED: &str = "edgeguard_portal_auth.allowed";
pub const FAILED_OPEN: &str = "edgeguard_portal_auth.failed_open";
pub const FETCH_OK: &str = "edgeguard_portal_auth.store_fetch_ok";
pub const FETCH_FAILED: &str = "edgeguard_portal_auth.store_fetch_failed";
pub const STORE_VERSION: &str = "edgeguard_portal_auth.store_version";
pub const STORE_APPS: &str = "edgeguard_portal_auth.store_apps";
/// Allowed requests counted by the meter (metering on).
pub const METERED_RELAYS: &str = "edgeguard_portal_auth.metered_relays";
/// Usage reports `edgeguard authz` acknowledged.
pub const USAGE_REPORTS_ACKED: &str = "edgeguard_portal_auth.usage_reports_acked";
/// Usage report attempts that failed (kept and resent).
pub const USAGE_REPORTS_FAILED: &str = "edgeguard_portal_auth.usage_reports_failed";
/// Relays in acknowledged usage reports.
pub const RELAYS_ACKED: &str = "edgeguard_portal_auth.relays_acked";
/// Gauge: relays counted but not yet acknowledged (in the meter or in the report waiting).
pub const RELAYS_PENDING: &str = "edgeguard_portal_auth.relays_pending";

/// PEAS `error_type`s, so every denial counter exists from the start.
pub const ERROR_TYPES: &[&str] = &[
    "invalid_request_http_request_not_found",
    "invalid_request_path_not_provided",
    "invalid_request_no_portal_app_id",
    "portal_app_not_found",
    "unauthorized",
    "rate_limited",
    "store_not_loaded",
];

pub fn denied(d: &Denial) -> String {
    format!("edgeguard_portal_auth.denied.{}", d.error_type())
}

pub fn counters() -> Vec<String> {
    let mut v: Vec<String> = [
        ALLOWED,
        FAILED_OPEN,
        FETCH_OK,
        FETCH_FAILED,
        METERED_RELAYS,
        USAGE_REPORTS_ACKED,
        USAGE_REPORTS_FAILED,
        RELAYS_ACKED,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(
        ERROR_TYPES
            .iter()
            .map(|e| format!("edgeguard_portal_auth.denied.{e}")),
    );
    v
}

/// Every gauge.
pub const GAUGES: &[&str] = &[STORE_VERSION, STORE_APPS, RELAYS_PENDING];
