//! One ADS stream's protocol state (state of the world), free of I/O: requests and snapshot
//! changes in, responses and events out.
//!
//! - **ACK/NACK** is told by `error_detail`, never by comparing versions or nonces (the
//!   protocol says so: a NACK carries the *previous* version). An ACK makes the response's
//!   version the accepted one; a NACK keeps the accepted version and *parks* the type: the
//!   rejected version is not sent again until the snapshot's version of that type changes
//!   (go-control-plane resends it in a loop, its issue #582).
//! - A request whose `response_nonce` is not the one of the response awaiting an answer is
//!   stale and ignored.
//! - One response per type is in flight at a time; the next waits for its ACK or NACK.
//! - Responses go out in make-before-break order: CDS, EDS, LDS, RDS, ECDS. When a new
//!   snapshot drops clusters the client runs, the first CDS response keeps them; the one that
//!   removes them is sent only once the other types have settled on the new snapshot.
//! - A new stream whose first request announces the snapshot's current version (Envoy
//!   reconnecting to a restarted control plane) is not sent that version again.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

use crate::snapshot::{content_version, ResourceType, Snapshot};

/// What happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Ack {
        kind: ResourceType,
        version: String,
    },
    /// `version` is the rejected one (unknown when the NACK is the first request of a stream).
    Nack {
        kind: ResourceType,
        version: Option<String>,
        message: String,
    },
    StaleNonce {
        kind: ResourceType,
        nonce: String,
    },
    UnknownType {
        type_url: String,
    },
}

#[derive(Clone, Debug)]
struct InFlight {
    nonce: String,
    version: String,
    items: BTreeMap<String, Any>,
}

#[derive(Clone, Debug, Default)]
struct TypeState {
    names: BTreeSet<String>,
    wildcard: bool,
    /// The version the client runs (ACKed, or announced in its first request).
    accepted: Option<String>,
    /// The resources of that version, as far as this stream knows them.
    accepted_items: BTreeMap<String, Any>,
    /// A version the client NACKed: parked, not sent again.
    rejected: Option<String>,
    in_flight: Option<InFlight>,
    last_nonce: Option<String>,
}

/// A type's state, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub accepted: Option<String>,
    pub rejected: Option<String>,
    pub in_flight: Option<String>,
    pub resources: usize,
}

/// Control plane identifier sent in every response.
pub const CONTROL_PLANE_ID: &str = "edgeguard-xds";

/// One stream's protocol state.
#[derive(Debug, Default)]
pub struct Session {
    types: BTreeMap<ResourceType, TypeState>,
    /// Nonce prefix (the stream id), so nonces of different streams never collide.
    prefix: String,
    counter: u64,
}

fn selected(
    snap: &Snapshot,
    kind: ResourceType,
    wildcard: bool,
    names: &BTreeSet<String>,
) -> BTreeMap<String, Any> {
    let Some(res) = snap.resources(kind) else {
        return BTreeMap::new();
    };
    if wildcard {
        return res.items.clone();
    }
    names
        .iter()
        .filter_map(|n| res.items.get(n).map(|a| (n.clone(), a.clone())))
        .collect()
}

impl Session {
    pub fn new(stream_id: u64) -> Session {
        Session {
            prefix: format!("{stream_id}-"),
            ..Default::default()
        }
    }

    /// Handles one request; returns what happened and the responses to send, in order.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: Option<&Snapshot>,
    ) -> (Vec<Event>, Vec<DiscoveryResponse>) {
        let mut events = Vec::new();
        let Some(kind) = ResourceType::from_type_url(&req.type_url) else {
            events.push(Event::UnknownType {
                type_url: req.type_url.clone(),
            });
            return (events, Vec::new());
        };
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = kind.wildcard_capable() && (names.is_empty() || names.contains("*"));
        let error = req.error_detail.as_ref().map(|e| e.message.clone());
        match self.types.get_mut(&kind) {
            None => {
                let mut st = TypeState {
                    accepted: (!req.version_info.is_empty()).then(|| req.version_info.clone()),
                    names,
                    wildcard,
                    ..Default::default()
                };
                if let Some(message) = error {
                    events.push(Event::Nack {
                        kind,
                        version: None,
                        message,
                    });
                }
                if let Some(snap) = snap {
                    if st.accepted.as_deref() == Some(snap.version(kind)) {
                        st.accepted_items = selected(snap, kind, st.wildcard, &st.names);
                    }
                }
                self.types.insert(kind, st);
            }
            Some(st) => {
                let nonce = &req.response_nonce;
                let answers_in_flight = st.in_flight.as_ref().is_some_and(|f| &f.nonce == nonce);
                if answers_in_flight {
                    if let Some(f) = st.in_flight.take() {
                        match error {
                            Some(message) => {
                                events.push(Event::Nack {
                                    kind,
                                    version: Some(f.version.clone()),
                                    message,
                                });
                                st.rejected = Some(f.version);
                            }
                            None => {
                                events.push(Event::Ack {
                                    kind,
                                    version: f.version.clone(),
                                });
                                st.accepted = Some(f.version);
                                st.accepted_items = f.items;
                                st.rejected = None;
                            }
                        }
                    }
                } else if !nonce.is_empty()
                    && (st.in_flight.is_some() || st.last_nonce.as_ref() != Some(nonce))
                {
                    events.push(Event::StaleNonce {
                        kind,
                        nonce: nonce.clone(),
                    });
                    return (events, Vec::new());
                }
                st.names = names;
                st.wildcard = wildcard;
            }
        }
        let responses = self.pump(snap);
        (events, responses)
    }

    /// True when every subscribed type but `except` has nothing in flight and runs (or has
    /// rejected) the snapshot's version.
    fn settled_except(&self, except: ResourceType, snap: &Snapshot) -> bool {
        self.types
            .iter()
            .filter(|(t, _)| **t != except)
            .all(|(t, st)| {
                let v = Some(snap.version(*t));
                st.in_flight.is_none()
                    && (st.accepted.as_deref() == v || st.rejected.as_deref() == v)
            })
    }

    /// Sends whatever the snapshot has that the client lacks (called on every request and on
    /// every snapshot change).
    pub fn pump(&mut self, snap: Option<&Snapshot>) -> Vec<DiscoveryResponse> {
        let Some(snap) = snap else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for kind in ResourceType::ORDER {
            let settled = self.settled_except(kind, snap);
            let Some(st) = self.types.get(&kind) else {
                continue;
            };
            if st.in_flight.is_some() {
                continue;
            }
            let mut items = selected(snap, kind, st.wildcard, &st.names);
            let mut version = snap.version(kind).to_string();
            if kind == ResourceType::Cluster && !settled {
                // make before break: clusters the client runs stay until the rest moved on
                let mut kept = false;
                for (name, any) in &st.accepted_items {
                    if !items.contains_key(name) {
                        items.insert(name.clone(), any.clone());
                        kept = true;
                    }
                }
                if kept {
                    let h = content_version(&items);
                    version = format!("{version}.keep.{}", h.get(..8).unwrap_or(&h));
                }
            }
            let new_names =
                !st.wildcard && items.keys().any(|n| !st.accepted_items.contains_key(n));
            let differs = st.accepted.as_deref() != Some(version.as_str())
                && st.rejected.as_deref() != Some(version.as_str());
            if !(differs || new_names) {
                continue;
            }
            self.counter += 1;
            let nonce = format!("{}{}", self.prefix, self.counter);
            let resp = DiscoveryResponse {
                version_info: version.clone(),
                resources: items.values().cloned().collect(),
                type_url: kind.type_url().to_string(),
                nonce: nonce.clone(),
                control_plane: Some(ControlPlane {
                    identifier: CONTROL_PLANE_ID.to_string(),
                }),
                ..Default::default()
            };
            if let Some(st) = self.types.get_mut(&kind) {
                st.in_flight = Some(InFlight {
                    nonce: nonce.clone(),
                    version,
                    items,
                });
                st.last_nonce = Some(nonce);
            }
            out.push(resp);
        }
        out
    }

    /// Per type: accepted, rejected and in-flight versions.
    pub fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        self.types
            .iter()
            .map(|(t, st)| {
                (
                    *t,
                    TypeStatus {
                        accepted: st.accepted.clone(),
                        rejected: st.rejected.clone(),
                        in_flight: st.in_flight.as_ref().map(|f| f.version.clone()),
                        resources: st.accepted_items.len(),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc;

    fn snap(clusters: &[(&str, &str)], routes: &[(&str, &str)]) -> Snapshot {
        let mut r: BTreeMap<ResourceType, BTreeMap<String, Any>> = BTreeMap::new();
        let any = |t: ResourceType, v: &str| Any {
            type_url: t.type_url().into(),
            value: v.as_bytes().to_vec(),
        };
        for (n, v) in clusters {
            r.entry(ResourceType::Cluster)
                .or_default()
                .insert(n.to_string(), any(ResourceType::Cluster, v));
        }
        for (n, v) in routes {
            r.entry(ResourceType::Route)
                .or_default()
                .insert(n.to_string(), any(ResourceType::Route, v));
        }
        Snapshot::from_resources(r)
    }

    fn req(kind: ResourceType, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            response_nonce: nonce.into(),
            type_url: kind.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn nack(kind: ResourceType, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(rpc::Status {
                code: 3,
                message: "rejected: bad".into(),
                ..Default::default()
            }),
            ..req(kind, version, nonce, names)
        }
    }

    const CDS: ResourceType = ResourceType::Cluster;
    const RDS: ResourceType = ResourceType::Route;

    fn names(r: &DiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|a| String::from_utf8(a.value.clone()).unwrap())
            .collect()
    }

    #[test]
    fn ack_then_nothing_more_until_the_snapshot_changes() {
        let s1 = snap(&[("a", "a1")], &[]);
        let mut s = Session::new(7);
        let (ev, out) = s.on_request(&req(CDS, "", "", &[]), Some(&s1));
        assert!(ev.is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].nonce, "7-1");
        assert_eq!(out[0].version_info, s1.version(CDS));
        assert_eq!(
            out[0].control_plane.as_ref().unwrap().identifier,
            "edgeguard-xds"
        );
        let (ev, out) = s.on_request(&req(CDS, s1.version(CDS), "7-1", &[]), Some(&s1));
        assert_eq!(
            ev,
            vec![Event::Ack {
                kind: CDS,
                version: s1.version(CDS).into()
            }]
        );
        assert!(out.is_empty());
        assert!(s.pump(Some(&s1)).is_empty());
        let s2 = snap(&[("a", "a2")], &[]);
        let out = s.pump(Some(&s2));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].version_info, s2.version(CDS));
    }

    #[test]
    fn a_nack_parks_the_rejected_version_until_the_snapshot_changes() {
        let good = snap(&[("a", "good")], &[]);
        let bad = snap(&[("a", "bad")], &[]);
        let mut s = Session::new(1);
        let (_, out) = s.on_request(&req(CDS, "", "", &[]), Some(&good));
        s.on_request(
            &req(CDS, &out[0].version_info, &out[0].nonce, &[]),
            Some(&good),
        );
        let out = s.pump(Some(&bad));
        assert_eq!(out.len(), 1);
        // Envoy NACKs with the previous version: told by error_detail, not by the version
        let (ev, out2) = s.on_request(
            &nack(CDS, good.version(CDS), &out[0].nonce, &[]),
            Some(&bad),
        );
        assert_eq!(
            ev,
            vec![Event::Nack {
                kind: CDS,
                version: Some(bad.version(CDS).into()),
                message: "rejected: bad".into()
            }]
        );
        assert!(out2.is_empty(), "the rejected version must not be resent");
        // more requests or snapshot wake-ups with the same snapshot: still nothing
        assert!(s.pump(Some(&bad)).is_empty());
        let st = &s.status()[&CDS];
        assert_eq!(st.accepted.as_deref(), Some(good.version(CDS)));
        assert_eq!(st.rejected.as_deref(), Some(bad.version(CDS)));
        // a changed snapshot is sent
        let fixed = snap(&[("a", "fixed")], &[]);
        let out = s.pump(Some(&fixed));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].version_info, fixed.version(CDS));
        // going back to the version the client still runs sends nothing
        s.on_request(
            &nack(CDS, good.version(CDS), &out[0].nonce, &[]),
            Some(&fixed),
        );
        assert!(s.pump(Some(&good)).is_empty());
        // while the once-rejected version is offered again after a change
        let out = s.pump(Some(&bad));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].version_info, bad.version(CDS));
    }

    #[test]
    fn stale_nonces_are_ignored_and_one_response_per_type_is_in_flight() {
        let s1 = snap(&[("a", "1")], &[]);
        let s2 = snap(&[("a", "2")], &[]);
        let mut s = Session::new(1);
        let (_, out) = s.on_request(&req(CDS, "", "", &[]), Some(&s1));
        assert_eq!(out.len(), 1);
        // a new snapshot while the first response is unanswered: wait
        assert!(s.pump(Some(&s2)).is_empty());
        // an answer to a nonce never sent: stale
        let (ev, out) = s.on_request(&nack(CDS, "", "bogus", &[]), Some(&s2));
        assert_eq!(
            ev,
            vec![Event::StaleNonce {
                kind: CDS,
                nonce: "bogus".into()
            }]
        );
        assert!(out.is_empty());
        assert_eq!(s.status()[&CDS].rejected, None);
        // the ACK of the first releases the second
        let (_, out) = s.on_request(&req(CDS, s1.version(CDS), "1-1", &[]), Some(&s2));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].version_info, s2.version(CDS));
        // a late repeat of the old nonce is stale now
        let (ev, _) = s.on_request(&req(CDS, s1.version(CDS), "1-1", &[]), Some(&s2));
        assert!(matches!(ev[0], Event::StaleNonce { .. }));
    }

    #[test]
    fn newly_requested_names_are_sent_even_at_the_same_version() {
        let s1 = snap(&[], &[("r1", "r1"), ("r2", "r2")]);
        let mut s = Session::new(1);
        let (_, out) = s.on_request(&req(RDS, "", "", &["r1"]), Some(&s1));
        assert_eq!(names(&out[0]), vec!["r1"]);
        s.on_request(&req(RDS, s1.version(RDS), "1-1", &["r1"]), Some(&s1));
        // a new listener asks for r2 too, after its ACK (nonce is the last one)
        let (ev, out) = s.on_request(&req(RDS, s1.version(RDS), "1-1", &["r1", "r2"]), Some(&s1));
        assert!(ev.is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), vec!["r1", "r2"]);
        // unknown names are not invented
        s.on_request(&req(RDS, s1.version(RDS), "1-2", &["r1", "r2"]), Some(&s1));
        let (_, out) = s.on_request(&req(RDS, s1.version(RDS), "1-2", &["r3"]), Some(&s1));
        assert!(out.is_empty());
    }

    #[test]
    fn a_reconnecting_client_on_the_current_version_gets_nothing_again() {
        let s1 = snap(&[("a", "1")], &[("r", "r")]);
        let mut s = Session::new(2);
        let (_, out) = s.on_request(&req(CDS, s1.version(CDS), "", &[]), Some(&s1));
        assert!(out.is_empty());
        let (_, out) = s.on_request(&req(RDS, s1.version(RDS), "", &["r"]), Some(&s1));
        assert!(out.is_empty());
        // but an older version is updated
        let mut s = Session::new(3);
        let (_, out) = s.on_request(&req(CDS, "old", "", &[]), Some(&s1));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn removed_clusters_stay_until_the_other_types_moved_on() {
        let s1 = snap(&[("old", "old")], &[("r", "to-old")]);
        let s2 = snap(&[("new", "new")], &[("r", "to-new")]);
        let mut s = Session::new(1);
        let (_, out) = s.on_request(&req(CDS, "", "", &[]), Some(&s1));
        s.on_request(
            &req(CDS, &out[0].version_info, &out[0].nonce, &[]),
            Some(&s1),
        );
        let (_, out) = s.on_request(&req(RDS, "", "", &["r"]), Some(&s1));
        s.on_request(
            &req(RDS, &out[0].version_info, &out[0].nonce, &["r"]),
            Some(&s1),
        );

        let out = s.pump(Some(&s2));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].type_url, CDS.type_url());
        assert_eq!(names(&out[0]), vec!["new", "old"], "make before break");
        assert_eq!(out[1].type_url, RDS.type_url());
        let (_, more) = s.on_request(
            &req(CDS, &out[0].version_info, &out[0].nonce, &[]),
            Some(&s2),
        );
        assert!(more.is_empty(), "RDS has not moved on yet");
        let (_, more) = s.on_request(
            &req(RDS, &out[1].version_info, &out[1].nonce, &["r"]),
            Some(&s2),
        );
        assert_eq!(more.len(), 1);
        assert_eq!(names(&more[0]), vec!["new"], "break after make");
        assert_eq!(more[0].version_info, s2.version(CDS));
    }

    #[test]
    fn unknown_types_and_missing_snapshots_send_nothing() {
        let mut s = Session::new(1);
        let r = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            ..Default::default()
        };
        let (ev, out) = s.on_request(&r, None);
        assert!(matches!(ev[0], Event::UnknownType { .. }));
        assert!(out.is_empty());
        let (_, out) = s.on_request(&req(CDS, "", "", &[]), None);
        assert!(out.is_empty());
        // once a snapshot appears, the waiting request is answered
        assert_eq!(s.pump(Some(&snap(&[("a", "1")], &[]))).len(), 1);
    }
}
