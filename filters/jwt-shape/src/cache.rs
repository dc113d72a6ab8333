//! A bounded cache of verified tokens: one per VM in the wasm build (so per Envoy worker), one
//! per Envoy process in the native build, where every worker shares it. A hit skips base64,
//! JSON and the signature check; an entry lives no longer than the token (`exp` + skew) and no
//! longer than the key set that verified it (entries carry the key-set generation).
//!
//! [`SharedCache`] splits the cache into shards by token hash, each behind its own lock, so
//! workers looking up different tokens never wait for each other (the wasm build uses one
//! shard: a VM has one thread).
//!
//! Entries are compact (no claim set is kept, only what a request needs afterwards: the header
//! values to stamp and the parsed shape claim), and each token is stored once, shared between
//! the map and the eviction queue, so 4096 entries cost a few MiB per worker.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use edgeguard_verdict::binding::Thumbprint;
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
    /// The client-certificate thumbprint the token is bound to (`cnf.x5t#S256`, RFC 8705),
    /// checked against the connection on every request, cache hits included.
    pub x5t_s256: Option<Thumbprint>,
}

struct Entry {
    provider: usize,
    generation: u64,
    verified: Arc<Verified>,
}

/// FIFO-evicted map from token to verification result. Only verified tokens are inserted, so
/// clients cannot choose the keys; the fast non-cryptographic hash is therefore safe, and the
/// full token is compared on lookup.
pub struct TokenCache {
    max: usize,
    map: HashMap<Arc<str>, Entry, FxBuildHasher>,
    order: VecDeque<Arc<str>>,
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
    ) -> Option<Arc<Verified>> {
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
        verified: Arc<Verified>,
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
        let key: Arc<str> = Arc::from(token);
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

/// Shards a native build uses (a power of two; the wasm build uses one).
pub const NATIVE_SHARDS: usize = 16;

/// A [`TokenCache`] split into shards by token hash, each behind its own lock.
pub struct SharedCache {
    shards: Box<[Mutex<TokenCache>]>,
}

fn lock(m: &Mutex<TokenCache>) -> MutexGuard<'_, TokenCache> {
    // a panic while holding the lock (caught at the native module's boundary) leaves a cache
    // whose entries are still valid results: keep using it
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SharedCache {
    /// At most `max` entries in all, over `shards` shards (at least one).
    pub fn new(max: usize, shards: usize) -> SharedCache {
        let shards = shards.max(1);
        let per_shard = if max == 0 { 0 } else { max.div_ceil(shards) };
        SharedCache {
            shards: (0..shards)
                .map(|_| Mutex::new(TokenCache::new(per_shard)))
                .collect(),
        }
    }

    /// One shard for the wasm build (one thread per VM), [`NATIVE_SHARDS`] otherwise.
    pub fn for_this_build(max: usize) -> SharedCache {
        let shards = if cfg!(target_arch = "wasm32") {
            1
        } else {
            NATIVE_SHARDS
        };
        SharedCache::new(max, shards)
    }

    fn shard(&self, token: &str) -> &Mutex<TokenCache> {
        // the high half of a multiplied hash mixes every input bit (Fx's low bits do not)
        let h = FxBuildHasher
            .hash_one(token)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 32;
        // `shards` is never empty (`new` makes at least one)
        &self.shards[h as usize % self.shards.len()]
    }

    pub fn get(
        &self,
        token: &str,
        provider: usize,
        generation: u64,
        now: f64,
    ) -> Option<Arc<Verified>> {
        lock(self.shard(token)).get(token, provider, generation, now)
    }

    pub fn insert(&self, token: &str, provider: usize, generation: u64, verified: Arc<Verified>) {
        lock(self.shard(token)).insert(token, provider, generation, verified);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(not_after: Option<f64>) -> Arc<Verified> {
        Arc::new(Verified {
            not_after,
            headers: Vec::new(),
            shape: None,
            x5t_s256: None,
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

    #[test]
    fn shards_stay_bounded_and_find_their_tokens() {
        let c = SharedCache::new(64, 16);
        for i in 0..1000 {
            c.insert(&format!("t{i}"), 0, 0, v(None));
            assert!(c.len() <= 64);
        }
        c.insert("kept", 0, 0, v(None));
        assert!(c.get("kept", 0, 0, 0.0).is_some());
        let none = SharedCache::new(0, 16);
        none.insert("t", 0, 0, v(None));
        assert!(none.is_empty());
    }
}
