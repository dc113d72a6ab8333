//! The filter's state, shared by every request it decides: the providers' key sets, the
//! verified-token cache, the JWKS calls in flight and the requests waiting for keys.
//!
//! The wasm build holds one per VM (one thread); the native build one per Envoy filter
//! configuration, shared by all workers. So every part is safe to share: the cache is sharded
//! behind locks, a provider's key-set generation is an atomic (a cache hit takes no lock), and
//! the key sets and fetch bookkeeping sit behind one short lock per provider, taken only on a
//! cache miss or by the background owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use edgeguard_verdict::jwk::KeySet;

use crate::cache::SharedCache;
use crate::config::Config;
use crate::keys::ProviderKeys;

/// Requests parked while keys load, at most (per state).
pub const MAX_WAITING: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding a lock (caught at the native module's boundary) leaves consistent
    // data behind (every update below is a single assignment): keep using it
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One provider's keys.
pub struct ProviderSlot {
    /// Mirrors `keys.generation`, readable without the lock (the cache-hit path).
    generation: AtomicU64,
    keys: Mutex<ProviderKeys>,
}

impl ProviderSlot {
    /// The generation of the current key set (cached verdicts carry the one they were made with).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current set and its generation.
    pub fn current(&self) -> (u64, Option<Arc<KeySet>>) {
        let k = lock(&self.keys);
        (k.generation, k.set.clone())
    }

    /// Runs `f` on the fetch bookkeeping; the generation mirror follows what `f` changed.
    pub fn with_keys<R>(&self, f: impl FnOnce(&mut ProviderKeys) -> R) -> R {
        let mut k = lock(&self.keys);
        let r = f(&mut k);
        self.generation.store(k.generation, Ordering::Release);
        r
    }
}

/// A parked request: its id (to forget it when the stream ends) and what wakes it.
struct Parked<W> {
    id: u64,
    provider: usize,
    waker: W,
}

/// The shared state. `W` is how a parked request is woken: a proxy-wasm context id, a native
/// stream's scheduler, a test's marker.
pub struct Shared<W> {
    providers: Vec<ProviderSlot>,
    pub cache: SharedCache,
    /// JWKS calls in flight: call id → provider.
    calls: Mutex<Vec<(u64, usize)>>,
    waiting: Mutex<Vec<Parked<W>>>,
}

impl<W> Shared<W> {
    pub fn new(config: &Config) -> Shared<W> {
        Shared {
            providers: config
                .providers
                .iter()
                .map(|p| {
                    let keys = ProviderKeys::new(&p.keys);
                    ProviderSlot {
                        generation: AtomicU64::new(keys.generation),
                        keys: Mutex::new(keys),
                    }
                })
                .collect(),
            cache: SharedCache::for_this_build(config.cache_entries),
            calls: Mutex::new(Vec::new()),
            waiting: Mutex::new(Vec::new()),
        }
    }

    pub fn provider(&self, i: usize) -> Option<&ProviderSlot> {
        self.providers.get(i)
    }

    /// Records a JWKS call in flight for provider `i`.
    pub fn call_started(&self, call: u64, provider: usize) {
        lock(&self.calls).push((call, provider));
    }

    /// The provider a call was for (and forgets the call).
    pub fn call_finished(&self, call: u64) -> Option<usize> {
        let mut calls = lock(&self.calls);
        let at = calls.iter().position(|(c, _)| *c == call)?;
        Some(calls.swap_remove(at).1)
    }

    /// Parks a request until provider `provider`'s keys arrive. False when too many wait.
    pub fn park(&self, id: u64, provider: usize, waker: W) -> bool {
        let mut waiting = lock(&self.waiting);
        if waiting.len() >= MAX_WAITING {
            return false;
        }
        waiting.push(Parked {
            id,
            provider,
            waker,
        });
        true
    }

    /// Forgets a parked request (its stream ended).
    pub fn unpark(&self, id: u64) {
        lock(&self.waiting).retain(|p| p.id != id);
    }

    /// Takes every request parked for `provider`.
    pub fn take_waiting(&self, provider: usize) -> Vec<(u64, W)> {
        let mut waiting = lock(&self.waiting);
        let mut out = Vec::new();
        let mut i = 0;
        while i < waiting.len() {
            if waiting.get(i).is_some_and(|p| p.provider == provider) {
                let p = waiting.swap_remove(i);
                out.push((p.id, p.waker));
            } else {
                i += 1;
            }
        }
        out
    }

    pub fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}
