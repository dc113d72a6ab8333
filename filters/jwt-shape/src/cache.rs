//! A bounded cache of verified tokens, one per VM (so per Envoy worker). A hit skips base64,
//! JSON and the signature check; an entry lives no longer than the token (`exp` + skew) and no
//! longer than the key set that verified it (entries carry the key-set generation).
//!
//! Entries are compact (no claim set is kept, only what a request needs afterwards: the header
//! values to stamp and the parsed shape claim), and each token is stored once, shared between
//! the map and the eviction queue, so 4096 entries cost a few MiB per worker.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use edgeguard_verdict::shape::{ClaimError, Shape};
use rustc_hash::FxBuildHasher;

/// What a verified token gave us.
#[derive(Debug)]
pub struct Verified {
    /// Unix seconds after which the entry is stale (`None`: the token has no `exp`).
    pub not_after: Option<f64>,
    /// `claim_to_headers` values: (index into the provider's list, value).
    pub headers: Vec<(usize, Box<str>)>,
    /// The parsed shape claim, when some rule binds shapes.
    pub shape: Option<Result<Shape, ClaimError>>,
}

struct Entry {
    provider: usize,
    generation: u64,
    verified: Rc<Verified>,
}

/// FIFO-evicted map from token to verification result. Only verified tokens are inserted, so
/// clients cannot choose the keys; the fast non-cryptographic hash is therefore safe, and the
/// full token is compared on lookup.
pub struct TokenCache {
    max: usize,
    map: HashMap<Rc<str>, Entry, FxBuildHasher>,
    order: VecDeque<Rc<str>>,
}

impl TokenCache {
    pub fn new(max: usize) -> TokenCache {
        TokenCache {
            max,
            map: HashMap::with_capacity_and_hasher(max.min(1024), FxBuildHasher),
            order: VecDeque::with_capacity(max.min(1024)),
        }
    }

    /// A cached result for this token, provider and key-set generation, still valid at `now`.
    pub fn get(
        &mut self,
        token: &str,
        provider: usize,
        generation: u64,
        now: f64,
    ) -> Option<Rc<Verified>> {
        let entry = self.map.get(token)?;
        let fresh = entry.provider == provider
            && entry.generation == generation
            && entry.verified.not_after.is_none_or(|t| now <= t);
        if fresh {
            Some(entry.verified.clone())
        } else {
            self.map.remove(token);
            None
        }
    }

    pub fn insert(
        &mut self,
        token: &str,
        provider: usize,
        generation: u64,
        verified: Rc<Verified>,
    ) {
        if self.max == 0 {
            return;
        }
        while self.map.len() >= self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // `order` may hold tokens already removed (expired); trim it so it stays bounded.
        if self.order.len() >= self.max.saturating_mul(2) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        let key: Rc<str> = Rc::from(token);
        let entry = Entry {
            provider,
            generation,
            verified,
        };
        if self.map.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(not_after: Option<f64>) -> Rc<Verified> {
        Rc::new(Verified {
            not_after,
            headers: Vec::new(),
            shape: None,
        })
    }

    #[test]
    fn hits_respect_expiry_provider_and_generation() {
        let mut c = TokenCache::new(10);
        c.insert("t", 0, 1, v(Some(100.0)));
        assert!(c.get("t", 0, 1, 99.0).is_some());
        assert!(c.get("t", 1, 1, 99.0).is_none());
        c.insert("t", 0, 1, v(Some(100.0)));
        assert!(c.get("t", 0, 2, 99.0).is_none());
        c.insert("t", 0, 1, v(Some(100.0)));
        assert!(c.get("t", 0, 1, 101.0).is_none());
        assert!(
            c.get("t", 0, 1, 50.0).is_none(),
            "expired entry was dropped"
        );
        c.insert("u", 0, 1, v(None));
        assert!(c.get("u", 0, 1, 1e12).is_some());
    }

    #[test]
    fn stays_bounded() {
        let mut c = TokenCache::new(3);
        for i in 0..100 {
            c.insert(&format!("t{i}"), 0, 0, v(None));
            assert!(c.len() <= 3);
            assert!(c.order.len() <= 6);
        }
        assert!(c.get("t99", 0, 0, 0.0).is_some());
        assert!(c.get("t0", 0, 0, 0.0).is_none());
        let mut none = TokenCache::new(0);
        none.insert("t", 0, 0, v(None));
        assert!(none.is_empty());
    }
}
