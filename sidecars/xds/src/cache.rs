//! The snapshot cache: one snapshot per node id, per node cluster, and a default; a node gets
//! the snapshot of its id, else of its cluster, else the default (go-control-plane's
//! `SnapshotCache` keyed by a node hash, with fallbacks). Streams watch the cache and re-read
//! their node's snapshot whenever it is replaced.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// Which snapshot a node gets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKey {
    Id(String),
    Cluster(String),
    Default,
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeKey::Id(id) => write!(f, "node:{id}"),
            NodeKey::Cluster(c) => write!(f, "cluster:{c}"),
            NodeKey::Default => write!(f, "default"),
        }
    }
}

/// Every snapshot, replaced as a whole on each accepted file.
#[derive(Clone, Debug, Default)]
pub struct Snapshots {
    pub by_key: BTreeMap<NodeKey, Arc<Snapshot>>,
    /// Bumped on every publish.
    pub generation: u64,
}

impl Snapshots {
    /// The snapshot for a node: by id, else by cluster, else the default.
    pub fn lookup(&self, id: &str, cluster: &str) -> Option<(NodeKey, Arc<Snapshot>)> {
        [
            NodeKey::Id(id.to_string()),
            NodeKey::Cluster(cluster.to_string()),
            NodeKey::Default,
        ]
        .into_iter()
        .find_map(|k| self.by_key.get(&k).map(|s| (k, s.clone())))
    }
}

/// The shared cache.
#[derive(Clone, Debug)]
pub struct SnapshotCache {
    tx: Arc<watch::Sender<Arc<Snapshots>>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache::new()
    }
}

impl SnapshotCache {
    pub fn new() -> SnapshotCache {
        let (tx, _) = watch::channel(Arc::new(Snapshots::default()));
        SnapshotCache { tx: Arc::new(tx) }
    }

    /// Replaces every snapshot at once; open streams re-evaluate.
    pub fn publish(&self, by_key: BTreeMap<NodeKey, Snapshot>) {
        self.tx.send_modify(|s| {
            *s = Arc::new(Snapshots {
                by_key: by_key.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
                generation: s.generation + 1,
            });
        });
    }

    /// Sets one key's snapshot, keeping the others (go-control-plane's `SetSnapshot`).
    pub fn set_snapshot(&self, key: NodeKey, snapshot: Snapshot) {
        self.tx.send_modify(|s| {
            let mut next = (**s).clone();
            next.by_key.insert(key, Arc::new(snapshot));
            next.generation += 1;
            *s = Arc::new(next);
        });
    }

    pub fn current(&self) -> Arc<Snapshots> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshots>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_falls_back_from_id_to_cluster_to_default() {
        let cache = SnapshotCache::new();
        assert!(cache.current().lookup("a", "c").is_none());
        let mut m = BTreeMap::new();
        m.insert(NodeKey::Default, Snapshot::default());
        m.insert(NodeKey::Id("a".into()), Snapshot::default());
        m.insert(NodeKey::Cluster("c".into()), Snapshot::default());
        cache.publish(m);
        let s = cache.current();
        assert_eq!(s.generation, 1);
        assert_eq!(s.lookup("a", "c").unwrap().0, NodeKey::Id("a".into()));
        assert_eq!(s.lookup("b", "c").unwrap().0, NodeKey::Cluster("c".into()));
        assert_eq!(s.lookup("b", "d").unwrap().0, NodeKey::Default);
        let mut rx = cache.subscribe();
        cache.set_snapshot(NodeKey::Id("b".into()), Snapshot::default());
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow_and_update().lookup("b", "d").unwrap().0,
            NodeKey::Id("b".into())
        );
        assert_eq!(cache.current().generation, 2);
    }
}
