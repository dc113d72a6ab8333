//! The store's change log turned into the wire updates the portal-auth filter applies.

use std::hash::BuildHasher;

use edgeguard_portal_store::{ChangeKind, Snapshot, Store};
use edgeguard_verdict::portal_wire::{AppChange, DeviceChange, Update, UsageChange, PART_APPS};
use rustc_hash::FxBuildHasher;

/// Most parts a full copy is split into (10M apps at [`PART_APPS`] each).
pub const MAX_PARTS: u32 = 100;

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
                ..Default::default()
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
                    ChangeKind::Device {
                        fingerprint,
                        device,
                    } => update.devices.push(DeviceChange {
                        fingerprint,
                        device,
                    }),
                }
            }
            return Some(update);
        }
    }
    let parts = u32::try_from(snap.app_count().div_ceil(PART_APPS))
        .unwrap_or(MAX_PARTS)
        .clamp(1, MAX_PARTS);
    Some(full_part(snap, 0, parts))
}

/// Part `part` of `parts` of the whole store: the apps whose id hashes to `part` (a stable
/// hash, so the split is the same at every version), and in part 0 the usage and the device
/// certificates.
pub fn full_part(snap: &Snapshot, part: u32, parts: u32) -> Update {
    let parts = parts.max(1);
    let mine = |id: &str| FxBuildHasher.hash_one(id) % u64::from(parts) == u64::from(part);
    Update {
        from: 0,
        version: snap.version(),
        full: true,
        apps: snap
            .apps()
            .filter(|(id, _)| parts == 1 || mine(id))
            .map(|(id, app)| AppChange {
                id: id.to_string(),
                app: Some(app.clone()),
            })
            .collect(),
        usage: if part == 0 {
            snap.usages()
                .map(|(account_id, relays)| UsageChange {
                    account_id: account_id.to_string(),
                    relays: Some(relays),
                })
                .collect()
        } else {
            Vec::new()
        },
        devices: if part == 0 {
            snap.devices()
                .iter()
                .map(|(fingerprint, device)| DeviceChange {
                    fingerprint: *fingerprint,
                    device: Some(device.clone()),
                })
                .collect()
        } else {
            Vec::new()
        },
        part,
        parts,
    }
}

/// The whole store as one update.
pub fn full(snap: &Snapshot) -> Update {
    full_part(snap, 0, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeguard_portal_store::{AppAuth, AppMap, PortalApp, UsageMap};

    #[test]
    fn parts_split_the_store_without_overlap_and_usage_rides_in_part_0() {
        let mut apps = AppMap::default();
        for i in 0..1000 {
            apps.insert(
                format!("app{i}").into(),
                PortalApp {
                    account_id: "acc".into(),
                    plan: "PLAN_FREE".into(),
                    auth: AppAuth::Public,
                    monthly_user_limit: 0,
                    client_auth: Default::default(),
                },
            );
        }
        let mut usage = UsageMap::default();
        usage.insert("acc".into(), 5);
        let snap = Snapshot::from_parts(7, apps, usage);
        let mut seen = std::collections::BTreeSet::new();
        for part in 0..4 {
            let u = full_part(&snap, part, 4);
            assert_eq!((u.part, u.parts, u.version, u.full), (part, 4, 7, true));
            assert_eq!(u.usage.len(), usize::from(part == 0));
            assert!(u.apps.len() > 150, "a roughly even split: {}", u.apps.len());
            for a in u.apps {
                assert!(seen.insert(a.id), "an app in two parts");
            }
            // the same split at every call (a stable hash, not a random one)
            assert_eq!(
                full_part(&snap, part, 4)
                    .apps
                    .iter()
                    .map(|a| a.id.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                full_part(&snap, part, 4).apps.len()
            );
        }
        assert_eq!(seen.len(), 1000);
        let whole = full(&snap);
        assert_eq!((whole.parts, whole.apps.len()), (1, 1000));
    }
}
