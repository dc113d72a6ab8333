//! The bounded, versioned change log incremental consumers read.
//!
//! Every published snapshot whose data differs from the previous one gets the next version,
//! and the differences are logged under that version: one [`Change`] per app upserted or
//! deleted and one per account whose usage appeared, changed or disappeared. A consumer
//! holding version `v` asks `Store::changes_since(v)`; applying the returned changes in order
//! gives exactly the data of the returned `to_version`. `None` means the log cannot bring `v`
//! up to date (too old, from another store instance, or from before the first load) and the
//! consumer needs a full snapshot (`Snapshot::apps()` + `Snapshot::usages()`).
//!
//! A publish with more changes than the log holds (the first load, a bulk import, the month
//! rollover of usage) is not logged entry by entry: the log is emptied and only consumers
//! at that new version or later can continue incrementally.

use std::collections::VecDeque;
use std::sync::Arc;

use edgeguard_verdict::device::{Device, Fingerprint};
use edgeguard_verdict::portal::PortalApp;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// An app was added or changed (`Some`) or deleted (`None`).
    App {
        id: Arc<str>,
        app: Option<PortalApp>,
    },
    /// An account's relays this month are now `Some(n)`, or unknown (`None`: no usage row,
    /// e.g. after the month rolled over).
    Usage {
        account_id: Arc<str>,
        relays: Option<u64>,
    },
    /// A device certificate was enrolled or changed (`Some`), or is no longer valid (`None`:
    /// revoked, replaced by a re-key, deleted).
    Device {
        fingerprint: Fingerprint,
        device: Option<Device>,
    },
}

/// One change, with the version of the snapshot that first had it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub version: u64,
    pub kind: ChangeKind,
}

/// The answer to `changes_since(from)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    /// The version asked for.
    pub from_version: u64,
    /// The version the changes lead to (the latest published; `== from_version` when
    /// nothing changed).
    pub to_version: u64,
    /// In version order; later entries for the same app or account win.
    pub changes: Vec<Change>,
}

/// Bounded log; see the module docs.
#[derive(Debug)]
pub(crate) struct ChangeLog {
    entries: VecDeque<Change>,
    capacity: usize,
    /// The oldest version `since` can answer for.
    floor: u64,
    /// The latest published version.
    latest: u64,
}

impl ChangeLog {
    pub(crate) fn new(initial_version: u64, capacity: usize) -> ChangeLog {
        ChangeLog {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            floor: initial_version,
            latest: initial_version,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records the changes of a new version; `None` = too many to log (resets the log).
    pub(crate) fn record(&mut self, version: u64, changes: Option<Vec<ChangeKind>>) {
        match changes {
            Some(list) if list.len() <= self.capacity => {
                for kind in list {
                    self.entries.push_back(Change { version, kind });
                }
                while self.entries.len() > self.capacity {
                    if let Some(dropped) = self.entries.pop_front() {
                        self.floor = self.floor.max(dropped.version);
                    }
                }
            }
            _ => {
                self.entries.clear();
                self.floor = version;
            }
        }
        self.latest = version;
    }

    pub(crate) fn since(&self, from: u64) -> Option<ChangeSet> {
        if from < self.floor || from > self.latest {
            return None;
        }
        let start = self.entries.partition_point(|c| c.version <= from);
        Some(ChangeSet {
            from_version: from,
            to_version: self.latest,
            changes: self.entries.range(start..).cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(a: &str, n: u64) -> ChangeKind {
        ChangeKind::Usage {
            account_id: a.into(),
            relays: Some(n),
        }
    }

    #[test]
    fn since_semantics() {
        let mut log = ChangeLog::new(10, 3);
        assert_eq!(log.since(10).map(|c| c.changes.len()), Some(0));
        assert!(log.since(9).is_none());
        assert!(log.since(11).is_none(), "a version from the future");
        log.record(11, None); // first load: not logged
        assert!(log.since(10).is_none());
        assert_eq!(log.since(11).map(|c| c.to_version), Some(11));
        log.record(12, Some(vec![usage("a", 1), usage("b", 1)]));
        log.record(13, Some(vec![usage("a", 2)]));
        let c = log.since(11).unwrap();
        assert_eq!((c.from_version, c.to_version, c.changes.len()), (11, 13, 3));
        assert_eq!(log.since(12).unwrap().changes[0].version, 13);
        // the entries of 12 fall out: 11 can no longer be answered, 12 can
        log.record(14, Some(vec![usage("c", 1), usage("d", 1)]));
        assert!(log.since(11).is_none());
        assert_eq!(log.since(12).unwrap().changes.len(), 3);
        // a publish bigger than the log resets it
        log.record(15, Some(vec![usage("e", 1); 4]));
        assert!(log.since(14).is_none());
        assert_eq!(log.since(15).unwrap().changes.len(), 0);
    }
}
