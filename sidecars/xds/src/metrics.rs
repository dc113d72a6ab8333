//! Prometheus metrics of the control plane (text format on `/metrics`).

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::cache::NodeKey;
use crate::snapshot::{ResourceType, Snapshot};

/// Every metric `edgeguard xds` exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Distinct node ids with an open ADS stream.
    pub connected_nodes: IntGauge,
    /// Open ADS streams.
    pub streams: IntGauge,
    /// `1` per (snapshot, type, version) currently served.
    pub snapshot_version: IntGaugeVec,
    /// Bumped on every published configuration.
    pub generation: IntGauge,
    pub pushes: IntCounterVec,
    pub acks: IntCounterVec,
    pub nacks: IntCounterVec,
    pub stale_nonces: IntCounterVec,
    /// `result="ok"|"refused"`.
    pub reloads: IntCounterVec,
    /// 1 when the file on disk is what is served, 0 after a refused edit.
    pub config_ok: IntGauge,
}

fn name(s: &str) -> String {
    format!("edgeguard_xds_{s}")
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |n: &str, help: &str| IntGauge::new(name(n), help);
        let by_type = |n: &str, help: &str| IntCounterVec::new(Opts::new(name(n), help), &["type"]);
        let m = Metrics {
            connected_nodes: gauge("connected_nodes", "Distinct Envoy node ids with an open ADS stream")?,
            streams: gauge("streams", "Open ADS streams")?,
            snapshot_version: IntGaugeVec::new(
                Opts::new(
                    name("snapshot_version_info"),
                    "Versions served: 1 per snapshot (node:<id>, cluster:<name>, default), type and version",
                ),
                &["snapshot", "type", "version"],
            )?,
            generation: gauge("config_generation", "Configurations published since start")?,
            pushes: by_type("pushes_total", "Discovery responses sent, per type")?,
            acks: by_type("acks_total", "Responses Envoy accepted, per type")?,
            nacks: by_type("nacks_total", "Responses Envoy rejected (error_detail), per type")?,
            stale_nonces: by_type("stale_nonces_total", "Requests ignored for a stale response nonce, per type")?,
            reloads: IntCounterVec::new(
                Opts::new(name("config_reloads_total"), "Configuration file loads, by result (ok, refused)"),
                &["result"],
            )?,
            config_ok: gauge(
                "config_ok",
                "1 when the configuration file on disk is the one served; 0 after a refused edit",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.connected_nodes.clone()))?;
        m.registry.register(Box::new(m.streams.clone()))?;
        m.registry.register(Box::new(m.snapshot_version.clone()))?;
        m.registry.register(Box::new(m.generation.clone()))?;
        for c in [&m.pushes, &m.acks, &m.nacks, &m.stale_nonces] {
            m.registry.register(Box::new(c.clone()))?;
            for t in ResourceType::ORDER {
                c.with_label_values(&[t.short()]);
            }
        }
        m.registry.register(Box::new(m.reloads.clone()))?;
        m.reloads.with_label_values(&["ok"]);
        m.reloads.with_label_values(&["refused"]);
        m.registry.register(Box::new(m.config_ok.clone()))?;
        Ok(m)
    }

    /// Records the snapshots now served.
    pub fn published<'a>(&self, snapshots: impl Iterator<Item = (&'a NodeKey, &'a Snapshot)>) {
        self.snapshot_version.reset();
        for (key, snap) in snapshots {
            for (t, v) in snap.versions() {
                self.snapshot_version
                    .with_label_values(&[key.to_string().as_str(), t.short(), v.as_str()])
                    .set(1);
            }
        }
        self.generation.inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_from_the_start() {
        let m = Metrics::new().unwrap();
        m.nacks.with_label_values(&["ecds"]).inc();
        let snap = Snapshot::from_resources(Default::default());
        m.published(std::iter::once((&NodeKey::Default, &snap)));
        let text = m.render();
        assert!(
            text.contains("edgeguard_xds_nacks_total{type=\"ecds\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgeguard_xds_pushes_total{type=\"cds\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("edgeguard_xds_config_reloads_total{result=\"refused\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("edgeguard_xds_snapshot_version_info{snapshot=\"default\",type=\"lds\""),
            "{text}"
        );
        assert!(text.contains("edgeguard_xds_connected_nodes 0"), "{text}");
    }
}
