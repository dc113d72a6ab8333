//! How a copy of the portal-app store travels from `edgeguard authz` to the portal-auth
//! filter: `GET /store/v1/snapshot?since=<version>` answers an [`Update`] in postcard (a
//! compact serde format): the changes since `since`, or the full store when `since` is 0 or
//! older than the server's change log. `304 Not Modified` means nothing changed.
//!
//! The update carries key *digests*, never API keys.

use std::collections::HashMap;
use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};

use crate::portal::{PortalApp, PortalView};

/// Content type of an encoded [`Update`].
pub const CONTENT_TYPE: &str = "application/x-edgeguard-portal-update";
/// Path of the snapshot endpoint on `edgeguard authz`'s HTTP port.
pub const PATH: &str = "/store/v1/snapshot";

/// A change to one app: `None` deletes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppChange {
    pub id: String,
    pub app: Option<PortalApp>,
}

/// A change to one account's monthly usage: `None` forgets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageChange {
    pub account_id: String,
    pub relays: Option<u64>,
}

/// The changes that bring a copy from `from` to `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Version the copy must be at (0 for a full update).
    pub from: u64,
    /// Version after applying.
    pub version: u64,
    /// Replace everything (ignore the copy's current content).
    pub full: bool,
    pub apps: Vec<AppChange>,
    pub usage: Vec<UsageChange>,
}

/// Why an update could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    Decode(String),
    /// The update starts at another version than the copy has (the copy must ask again).
    VersionGap {
        have: u64,
        from: u64,
    },
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateError::Decode(e) => write!(f, "store update does not decode: {e}"),
            UpdateError::VersionGap { have, from } => {
                write!(
                    f,
                    "store update starts at version {from}, the copy is at {have}"
                )
            }
        }
    }
}

impl std::error::Error for UpdateError {}

impl Update {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Update, UpdateError> {
        postcard::from_bytes(bytes).map_err(|e| UpdateError::Decode(e.to_string()))
    }
}

/// A local copy of the store, kept current by applying updates.
#[derive(Clone, Debug, Default)]
pub struct StoreCopy<S: BuildHasher + Default = std::collections::hash_map::RandomState> {
    pub version: u64,
    pub loaded: bool,
    pub apps: HashMap<Box<str>, PortalApp, S>,
    pub usage: HashMap<Box<str>, u64, S>,
}

impl<S: BuildHasher + Default> StoreCopy<S> {
    /// Applies an update; on error the copy is unchanged.
    pub fn apply(&mut self, update: Update) -> Result<(), UpdateError> {
        if !update.full && update.from != self.version {
            return Err(UpdateError::VersionGap {
                have: self.version,
                from: update.from,
            });
        }
        if update.full {
            self.apps = HashMap::with_capacity_and_hasher(update.apps.len(), S::default());
            self.usage = HashMap::with_hasher(S::default());
        }
        for c in update.apps {
            match c.app {
                Some(app) => {
                    self.apps.insert(c.id.into_boxed_str(), app);
                }
                None => {
                    self.apps.remove(c.id.as_str());
                }
            }
        }
        for u in update.usage {
            match u.relays {
                Some(r) => {
                    self.usage.insert(u.account_id.into_boxed_str(), r);
                }
                None => {
                    self.usage.remove(u.account_id.as_str());
                }
            }
        }
        self.version = update.version;
        self.loaded = true;
        Ok(())
    }
}

impl<S: BuildHasher + Default> PortalView for StoreCopy<S> {
    fn loaded(&self) -> bool {
        self.loaded
    }

    fn app(&self, id: &str) -> Option<&PortalApp> {
        self.apps.get(id)
    }

    fn usage(&self, account_id: &str) -> Option<u64> {
        self.usage.get(account_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::{key_digest, AppAuth};

    fn app(acc: &str) -> PortalApp {
        PortalApp {
            account_id: acc.into(),
            plan: "PLAN_FREE".into(),
            auth: AppAuth::ApiKey {
                digest: key_digest("k"),
            },
            monthly_user_limit: 0,
        }
    }

    #[test]
    fn full_then_deltas() {
        let mut c: StoreCopy = StoreCopy::default();
        assert!(!c.loaded());
        let full = Update {
            from: 0,
            version: 5,
            full: true,
            apps: vec![
                AppChange {
                    id: "a".into(),
                    app: Some(app("x")),
                },
                AppChange {
                    id: "b".into(),
                    app: Some(app("y")),
                },
            ],
            usage: vec![UsageChange {
                account_id: "x".into(),
                relays: Some(7),
            }],
        };
        c.apply(Update::decode(&full.encode()).unwrap()).unwrap();
        assert!(c.loaded());
        assert_eq!(c.app("a").unwrap().account_id.as_ref(), "x");
        assert_eq!(c.usage("x"), Some(7));
        let delta = Update {
            from: 5,
            version: 7,
            full: false,
            apps: vec![
                AppChange {
                    id: "a".into(),
                    app: None,
                },
                AppChange {
                    id: "c".into(),
                    app: Some(app("z")),
                },
            ],
            usage: vec![UsageChange {
                account_id: "x".into(),
                relays: None,
            }],
        };
        c.apply(delta.clone()).unwrap();
        assert!(c.app("a").is_none());
        assert!(c.app("b").is_some());
        assert!(c.app("c").is_some());
        assert_eq!(c.usage("x"), None);
        assert_eq!(c.version, 7);
        // a delta from the wrong version is refused and changes nothing
        assert_eq!(
            c.apply(delta),
            Err(UpdateError::VersionGap { have: 7, from: 5 })
        );
        assert!(c.app("c").is_some());
        // a full update replaces everything
        c.apply(Update {
            from: 0,
            version: 9,
            full: true,
            apps: vec![],
            usage: vec![],
        })
        .unwrap();
        assert!(c.apps.is_empty());
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(matches!(
            Update::decode(b"\xff\xff\xff\xff\xff\xff"),
            Err(UpdateError::Decode(_))
        ));
        assert!(Update::decode(&[]).is_err());
    }
}
