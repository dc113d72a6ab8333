//! 1,000,000 apps build into a snapshot (no database); prints time and memory. No timing
//! assertions: this is a smoke test and a measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
#![allow(unsafe_code)] // a counting global allocator over System

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use edgeguard_portal_store::{AppAuth, AppMap, PortalApp, PortalView, Snapshot, UsageMap};
use edgeguard_verdict::portal::key_digest;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn a_million_apps() {
    const APPS: usize = 1_000_000;
    const ACCOUNTS: usize = 200_000;
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let free: Arc<str> = Arc::from("PLAN_FREE");
    let unlimited: Arc<str> = Arc::from("PLAN_UNLIMITED");
    let accounts: Vec<Arc<str>> = (0..ACCOUNTS)
        .map(|i| Arc::from(format!("a{i:08}")))
        .collect();
    let mut apps = AppMap::default();
    apps.reserve(APPS);
    let digest = key_digest("k");
    for i in 0..APPS {
        let acc = i % ACCOUNTS;
        apps.insert(
            Arc::from(format!("{i:024x}")), // Grove app ids are 24 characters
            PortalApp {
                account_id: accounts[acc].clone(),
                plan: if acc.is_multiple_of(10) {
                    unlimited.clone()
                } else {
                    free.clone()
                },
                auth: if i.is_multiple_of(3) {
                    AppAuth::ApiKey { digest }
                } else {
                    AppAuth::Public
                },
                monthly_user_limit: if acc.is_multiple_of(10) {
                    40_000_000
                } else {
                    0
                },
                client_auth: Default::default(),
            },
        );
    }
    let mut usage = UsageMap::default();
    for (i, a) in accounts.iter().enumerate().step_by(7) {
        usage.insert(a.clone(), (i as u64) * 10);
    }
    drop(accounts);
    let snap = Snapshot::from_parts(1, apps, usage);
    let built = t.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "1M apps ({ACCOUNTS} accounts): built in {built:?}, {:.1} MiB live ({} bytes/app)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / APPS as isize
    );
    assert_eq!(snap.app_count(), APPS);
    assert_eq!(snap.account_count(), ACCOUNTS);
    assert!(snap.app(&format!("{:024x}", 123_456)).is_some());
    assert!(snap.app("nope").is_none());
    let t = Instant::now();
    assert_eq!(snap.apps().count(), APPS);
    let summary = snap.usage_summary();
    println!(
        "iterate + usage summary ({} accounts): {:?}",
        summary.len(),
        t.elapsed()
    );
    assert!(!summary.is_empty());
}
