//! Reporting the meter's counts to `edgeguard authz` (`POST /store/v1/usage`), from the same
//! background tick as the store sync.
//!
//! One report is out at a time. A report is kept until `edgeguard authz` acknowledges it
//! (200 with a [`UsageAck`] naming this reporter and the report's `seq`), and resent unchanged
//! (same `seq`, same entries) on every later interval until then: the server applies a
//! `(reporter, seq)` at most once, so a resend whose first attempt was in fact recorded costs
//! nothing. Counts taken meanwhile stay in the meter for the next report.

use std::hash::BuildHasher;
use std::time::Duration;

use edgeguard_host::{Background, CallError, Level, Metrics};
use edgeguard_verdict::portal_wire::{
    UsageAck, UsageReport, MAX_REPORT_ENTRIES, USAGE_CONTENT_TYPE,
};

use crate::config::Config;
use crate::meter::Meter;
use crate::metrics;

/// A report sent and not yet acknowledged.
#[derive(Clone, Debug)]
struct Unacked {
    seq: u64,
    relays: u64,
    /// The encoded [`UsageReport`], resent as it is.
    body: Vec<u8>,
}

/// The reporting bookkeeping (times in Unix seconds).
#[derive(Debug)]
pub struct Reporter {
    id: String,
    /// The last `seq` used (reports count from 1).
    seq: u64,
    unacked: Option<Unacked>,
    /// The call in flight.
    call: Option<u64>,
    in_flight_since: Option<f64>,
    last_start: Option<f64>,
    pub consecutive_failures: u64,
    /// [`Meter::total`] when last seen (for the metered-relays counter).
    counted_seen: u64,
    /// Relays acknowledged, ever.
    acked: u64,
    /// The last value of the pending gauge set.
    pending_seen: Option<u64>,
}

impl Default for Reporter {
    fn default() -> Reporter {
        Reporter::new()
    }
}

/// A random reporter id: `pa-` and 32 hex digits. `RandomState` takes its keys from the
/// operating system (natively) or from WASI `random_get` (in the VM, which Envoy implements);
/// each `RandomState` of a thread after the first has other keys, so two configurations of
/// one process get two ids.
fn random_id() -> String {
    let a = std::collections::hash_map::RandomState::new();
    let b = std::collections::hash_map::RandomState::new();
    format!(
        "pa-{:016x}{:016x}",
        a.hash_one("edgeguard-reporter"),
        b.hash_one("edgeguard-reporter")
    )
}

impl Reporter {
    /// A reporter with a fresh random id.
    pub fn new() -> Reporter {
        Reporter::with_id(random_id())
    }

    /// A reporter with this id (tests).
    pub fn with_id(id: String) -> Reporter {
        Reporter {
            id,
            seq: 0,
            unacked: None,
            call: None,
            in_flight_since: None,
            last_start: None,
            consecutive_failures: 0,
            counted_seen: 0,
            acked: 0,
            pending_seen: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `seq` of the report waiting for its acknowledgement.
    pub fn unacked_seq(&self) -> Option<u64> {
        self.unacked.as_ref().map(|u| u.seq)
    }

    /// Updates the metered-relays counter and the pending gauge from the meter, then starts a
    /// report through `bg` when one is due and there is something to report.
    pub fn tick(
        &mut self,
        config: &Config,
        meter: &Meter,
        bg: &dyn Background,
        metrics: &dyn Metrics,
        now: f64,
    ) {
        let metering = &config.metering;
        if !metering.enabled {
            return;
        }
        self.publish(meter, metrics);
        if !self.due(config, now) {
            return;
        }
        self.last_start = Some(now);
        if self.unacked.is_none() {
            let entries = meter.drain(MAX_REPORT_ENTRIES);
            let devices = meter.drain_seen(MAX_REPORT_ENTRIES);
            if entries.is_empty() && devices.is_empty() {
                return;
            }
            self.seq += 1;
            let report = UsageReport {
                reporter: self.id.clone(),
                seq: self.seq,
                entries,
                devices,
            };
            self.unacked = Some(Unacked {
                seq: report.seq,
                relays: report.relays(),
                body: report.encode(),
            });
        }
        let Some(unacked) = &self.unacked else {
            return;
        };
        let source = &config.store;
        let authorization = format!("Bearer {}", config.store_token.expose());
        let length = unacked.body.len().to_string();
        let headers = [
            (":method", "POST"),
            (":path", metering.path.as_str()),
            (":authority", source.authority.as_str()),
            ("content-type", USAGE_CONTENT_TYPE),
            ("content-length", length.as_str()),
            ("accept", USAGE_CONTENT_TYPE),
            ("authorization", authorization.as_str()),
            ("user-agent", "edgeguard-portal-auth"),
        ];
        match bg.http_call(
            &source.cluster,
            &headers,
            &unacked.body,
            Duration::from_millis(source.timeout_ms),
        ) {
            Ok(call) => {
                self.call = Some(call);
                self.in_flight_since = Some(now);
            }
            Err(e) => {
                let why = if e == CallError::UnknownCluster {
                    format!(
                        "store.cluster '{}' is not a cluster this Envoy knows",
                        source.cluster
                    )
                } else {
                    format!("the call cannot start ({e})")
                };
                self.failed(&why, bg, metrics);
            }
        }
    }

    /// Whether a report (new or resent) should start now.
    fn due(&self, config: &Config, now: f64) -> bool {
        if let Some(since) = self.in_flight_since {
            // Envoy enforces the call timeout; this only guards against a lost callback.
            if now - since < config.store.timeout_ms as f64 / 1000.0 + 5.0 {
                return false;
            }
        }
        self.last_start
            .is_none_or(|t| now - t >= config.metering.report_interval_ms as f64 / 1000.0)
    }

    /// The metered-relays counter (what the meter counted since the last look) and the
    /// pending gauge (counted, not yet acknowledged).
    fn publish(&mut self, meter: &Meter, metrics: &dyn Metrics) {
        let counted = meter.total();
        if counted > self.counted_seen {
            metrics.add(metrics::METERED_RELAYS, counted - self.counted_seen);
            self.counted_seen = counted;
        }
        let pending = counted.saturating_sub(self.acked);
        if self.pending_seen != Some(pending) {
            metrics.set_gauge(metrics::RELAYS_PENDING, pending);
            self.pending_seen = Some(pending);
        }
    }

    /// Takes the answer to call `call`. False when the call is not ours.
    pub fn answer(
        &mut self,
        call: u64,
        status: Option<&str>,
        body: Option<&[u8]>,
        bg: &dyn Background,
        metrics: &dyn Metrics,
    ) -> bool {
        if self.call != Some(call) {
            return false;
        }
        self.call = None;
        self.in_flight_since = None;
        let Some(unacked) = &self.unacked else {
            return true;
        };
        let problem = match status {
            Some("200") => match UsageAck::decode(body.unwrap_or(&[])) {
                Ok(ack) if ack.reporter == self.id && ack.seq == unacked.seq => None,
                Ok(ack) => Some(format!(
                    "edgeguard authz acknowledged another report ({} seq {}, not seq {})",
                    ack.reporter, ack.seq, unacked.seq
                )),
                Err(e) => Some(e),
            },
            Some("404") => Some(
                "edgeguard authz answered 404: metering is off on edgeguard authz (turn it on there, or metering.enabled off here)".to_string(),
            ),
            Some(s) => Some(format!("edgeguard authz answered HTTP {s}")),
            None => Some("edgeguard authz unreachable (no response)".to_string()),
        };
        match problem {
            None => {
                let relays = unacked.relays;
                bg.log(
                    Level::Debug,
                    &format!(
                        "edgeguard portal-auth: usage report {} seq {} acknowledged ({relays} relays)",
                        self.id, unacked.seq
                    ),
                );
                self.unacked = None;
                self.consecutive_failures = 0;
                self.acked = self.acked.saturating_add(relays);
                metrics.increment(metrics::USAGE_REPORTS_ACKED);
                metrics.add(metrics::RELAYS_ACKED, relays);
            }
            Some(why) => self.failed(&why, bg, metrics),
        }
        true
    }

    fn failed(&mut self, why: &str, bg: &dyn Background, metrics: &dyn Metrics) {
        self.consecutive_failures += 1;
        metrics.increment(metrics::USAGE_REPORTS_FAILED);
        // one line per failure streak start, then every 30th, to keep the log readable
        if self.consecutive_failures == 1 || self.consecutive_failures.is_multiple_of(30) {
            let (seq, relays) = self.unacked.as_ref().map_or((0, 0), |u| (u.seq, u.relays));
            bg.log(
                Level::Warn,
                &format!(
                    "edgeguard portal-auth: usage report seq {seq} ({relays} relays) not acknowledged: {why}; it is resent every metering.report_interval_ms (failure {} in a row)",
                    self.consecutive_failures
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_read_and_differ() {
        let a = Reporter::new();
        let b = Reporter::new();
        assert!(a.id().starts_with("pa-"));
        assert_eq!(a.id().len(), 3 + 32);
        assert!(a.id()[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.id(), b.id());
    }
}
