//! Prometheus metrics on `/metrics`. Every label value comes from a fixed set.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::keyring::KeyState;
use crate::refusal::Reason;

/// How the caller was authenticated (label `auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Oidc,
    ApiKey,
    Dev,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Oidc => "oidc",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Dev => "dev",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub issued: IntCounterVec,
    pub refused: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_loaded: IntGauge,
    pub policy_rules: IntGauge,
    pub keys: IntGaugeVec,
    pub keys_published: IntGauge,
    pub key_dir_problems: IntGauge,
    pub rotations: IntCounter,
    pub oidc_fetches: IntCounterVec,
    pub oidc_keys_loaded: IntGauge,
}

const KEY_STATES: [KeyState; 5] = [
    KeyState::Pending,
    KeyState::Published,
    KeyState::Signing,
    KeyState::Retiring,
    KeyState::Retired,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            issued: IntCounterVec::new(
                Opts::new("edgeguard_gatekeeper_tokens_issued_total", "Shape tokens issued, by how the caller authenticated"),
                &["auth"],
            )?,
            refused: IntCounterVec::new(
                Opts::new("edgeguard_gatekeeper_requests_refused_total", "Requests answered without a token, by reason"),
                &["reason"],
            )?,
            policy_reloads: IntCounterVec::new(
                Opts::new("edgeguard_gatekeeper_policy_reloads_total", "Policy file loads, by result (ok, failed)"),
                &["result"],
            )?,
            policy_loaded: IntGauge::new("edgeguard_gatekeeper_policy_loaded", "1 once a policy is loaded (the last good one stays on a bad reload)")?,
            policy_rules: IntGauge::new("edgeguard_gatekeeper_policy_rules", "Rules in the policy in force")?,
            keys: IntGaugeVec::new(
                Opts::new("edgeguard_gatekeeper_keys", "Keys of the key directory, by state (pending, published, signing, retiring, retired)"),
                &["state"],
            )?,
            keys_published: IntGauge::new("edgeguard_gatekeeper_keys_published", "Public keys in the JWKS")?,
            key_dir_problems: IntGauge::new("edgeguard_gatekeeper_key_dir_problems", "Files of the key directory skipped at the last scan")?,
            rotations: IntCounter::new("edgeguard_gatekeeper_key_rotations_total", "Keys this process wrote (first key, scheduled rotations)")?,
            oidc_fetches: IntCounterVec::new(
                Opts::new("edgeguard_gatekeeper_oidc_jwks_fetches_total", "Fetches of the OpenID Connect issuer's JWKS, by result (ok, failed)"),
                &["result"],
            )?,
            oidc_keys_loaded: IntGauge::new("edgeguard_gatekeeper_oidc_keys_loaded", "1 once the issuer's JWKS has loaded")?,
            registry,
        };
        m.registry.register(Box::new(m.issued.clone()))?;
        m.registry.register(Box::new(m.refused.clone()))?;
        m.registry.register(Box::new(m.policy_reloads.clone()))?;
        m.registry.register(Box::new(m.policy_loaded.clone()))?;
        m.registry.register(Box::new(m.policy_rules.clone()))?;
        m.registry.register(Box::new(m.keys.clone()))?;
        m.registry.register(Box::new(m.keys_published.clone()))?;
        m.registry.register(Box::new(m.key_dir_problems.clone()))?;
        m.registry.register(Box::new(m.rotations.clone()))?;
        m.registry.register(Box::new(m.oidc_fetches.clone()))?;
        m.registry.register(Box::new(m.oidc_keys_loaded.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // every series exists from the start (a rate over a missing series is no rate)
        for r in Reason::ALL {
            m.refused.with_label_values(&[r.as_str()]);
        }
        for a in [AuthMethod::Oidc, AuthMethod::ApiKey, AuthMethod::Dev] {
            m.issued.with_label_values(&[a.as_str()]);
        }
        for r in ["ok", "failed"] {
            m.policy_reloads.with_label_values(&[r]);
            m.oidc_fetches.with_label_values(&[r]);
        }
        for s in KEY_STATES {
            m.keys.with_label_values(&[s.as_str()]);
        }
        Ok(m)
    }

    pub fn refused(&self, reason: Reason) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }

    /// Sets the key gauges from the states at some instant.
    pub fn key_states(&self, states: &[KeyState], published: usize) {
        for s in KEY_STATES {
            let n = states.iter().filter(|x| **x == s).count();
            self.keys
                .with_label_values(&[s.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.keys_published
            .set(i64::try_from(published).unwrap_or(i64::MAX));
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
