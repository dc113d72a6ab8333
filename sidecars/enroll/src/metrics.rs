//! Prometheus metrics on `/metrics`. Every label value comes from a fixed set.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::registry::{DeviceCounts, DeviceState};

/// The `result` label values of the enrollments counter.
pub const RESULTS: [&str; 14] = [
    "issued",
    "rekeyed",
    "missing_token",
    "unknown_token",
    "token_expired",
    "token_used_up",
    "device_revoked",
    "csr_unparsable",
    "csr_bad_signature",
    "weak_key",
    "identity_requested",
    "bad_label",
    "internal",
    "store_unavailable",
];

pub struct Metrics {
    pub registry: Registry,
    pub enrollments: IntCounterVec,
    pub tokens_created: IntCounterVec,
    pub revocations: IntCounterVec,
    pub admin_refused: IntCounterVec,
    pub devices: IntGaugeVec,
    pub ca_not_after: IntGauge,
    pub expiring: IntGauge,
    pub seen: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            enrollments: IntCounterVec::new(
                Opts::new("edgeguard_enroll_enrollments_total", "Enrollment requests (POST /enroll/v1), by result (issued, rekeyed, or the refusal's error code)"),
                &["result"],
            )?,
            tokens_created: IntCounterVec::new(
                Opts::new("edgeguard_enroll_tokens_created_total", "Enrollment tokens created, by kind (enroll, rekey)"),
                &["kind"],
            )?,
            revocations: IntCounterVec::new(
                Opts::new("edgeguard_enroll_revocations_total", "Revoke requests, by result (revoked, already_revoked)"),
                &["result"],
            )?,
            admin_refused: IntCounterVec::new(
                Opts::new("edgeguard_enroll_admin_refused_total", "Admin API requests refused for their credentials, by reason"),
                &["reason"],
            )?,
            devices: IntGaugeVec::new(
                Opts::new("edgeguard_enroll_devices", "Devices in the registry, by state (active, expired, revoked), counted at scrape"),
                &["state"],
            )?,
            expiring: IntGauge::new(
                "edgeguard_enroll_devices_expiring",
                "Active devices whose certificate expires within EDGEGUARD_DEVICE_EXPIRY_WARNING (last expiry scan)",
            )?,
            seen: IntGauge::new(
                "edgeguard_enroll_devices_seen",
                "Active devices that made an allowed request within EDGEGUARD_DEVICE_SEEN_WINDOW (heartbeats from the usage reports), counted at scrape",
            )?,
            ca_not_after: IntGauge::new("edgeguard_enroll_ca_not_after_seconds", "Expiry of the fleet CA certificate (Unix seconds)")?,
            registry: Registry::new(),
        };
        m.registry.register(Box::new(m.enrollments.clone()))?;
        m.registry.register(Box::new(m.tokens_created.clone()))?;
        m.registry.register(Box::new(m.revocations.clone()))?;
        m.registry.register(Box::new(m.admin_refused.clone()))?;
        m.registry.register(Box::new(m.devices.clone()))?;
        m.registry.register(Box::new(m.ca_not_after.clone()))?;
        m.registry.register(Box::new(m.expiring.clone()))?;
        m.registry.register(Box::new(m.seen.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // every series exists from the start (a rate over a missing series is no rate)
        for r in RESULTS {
            m.enrollments.with_label_values(&[r]);
        }
        for k in ["enroll", "rekey"] {
            m.tokens_created.with_label_values(&[k]);
        }
        for r in ["revoked", "already_revoked"] {
            m.revocations.with_label_values(&[r]);
        }
        for r in ["missing_credentials", "invalid_admin_token"] {
            m.admin_refused.with_label_values(&[r]);
        }
        for s in DeviceState::ALL {
            m.devices.with_label_values(&[s.as_str()]);
        }
        Ok(m)
    }

    pub fn enrollment(&self, result: &'static str) {
        self.enrollments.with_label_values(&[result]).inc();
    }

    pub fn set_devices(&self, c: DeviceCounts) {
        for (s, n) in [
            (DeviceState::Active, c.active),
            (DeviceState::Expired, c.expired),
            (DeviceState::Revoked, c.revoked),
        ] {
            self.devices.with_label_values(&[s.as_str()]).set(n);
        }
        self.seen.set(c.seen);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
