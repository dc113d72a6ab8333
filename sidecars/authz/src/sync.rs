//! The store's change log turned into the wire updates the portal-auth filter applies.

use edgeguard_portal_store::{ChangeKind, Snapshot, Store};
use edgeguard_verdict::portal_wire::{AppChange, Update, UsageChange};

/// The update that brings a copy at `since` to the current data: `None` when it is already
/// current, a delta when the change log can answer, else the full store.
pub fn update_since(store: &Store, snap: &Snapshot, since: u64) -> Option<Update> {
    if since != 0 {
        if let Some(cs) = store.changes_since(since) {
            if cs.to_version == since {
                return None;
            }
            let mut update = Update {
                from: cs.from_version,
                version: cs.to_version,
                full: false,
                apps: Vec::new(),
                usage: Vec::new(),
            };
            for c in cs.changes {
                match c.kind {
                    ChangeKind::App { id, app } => update.apps.push(AppChange {
                        id: id.to_string(),
                        app,
                    }),
                    ChangeKind::Usage { account_id, relays } => update.usage.push(UsageChange {
                        account_id: account_id.to_string(),
                        relays,
                    }),
                }
            }
            return Some(update);
        }
    }
    Some(full(snap))
}

/// The whole store as one update.
pub fn full(snap: &Snapshot) -> Update {
    Update {
        from: 0,
        version: snap.version(),
        full: true,
        apps: snap
            .apps()
            .map(|(id, app)| AppChange {
                id: id.to_string(),
                app: Some(app.clone()),
            })
            .collect(),
        usage: snap
            .usages()
            .map(|(account_id, relays)| UsageChange {
                account_id: account_id.to_string(),
                relays: Some(relays),
            })
            .collect(),
    }
}
