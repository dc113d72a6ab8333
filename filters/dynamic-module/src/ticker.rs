//! Periodic background work for a filter configuration. The HTTP filter ABI has no timer, so a
//! [`Ticker`] owns one module thread that commits an event through a [`ConfigScheduler`] at
//! start and then every period; the event runs as [`crate::FilterConfig::on_scheduled`] on
//! Envoy's main thread, which is where configuration-level callouts may be started.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Anything that can post an event id somewhere (a [`crate::ConfigScheduler`] inside Envoy, a
/// recorder in tests).
pub trait Commit: Send + Sync + 'static {
    fn commit(&self, event_id: u64);
}

impl Commit for crate::ConfigScheduler {
    fn commit(&self, event_id: u64) {
        crate::ConfigScheduler::commit(self, event_id);
    }
}

/// A thread committing `event_id` now and then every `period` until dropped. Dropping stops and
/// joins the thread promptly (it waits on a condition variable, not a sleep), so the owning
/// configuration can be destroyed, and the module unloaded, without a thread left running.
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts the thread (named `name`). Fails only if the OS cannot create a thread.
    pub fn start<C: Commit>(
        name: &str,
        scheduler: Arc<C>,
        period: Duration,
        event_id: u64,
    ) -> std::io::Result<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop_in = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let (lock, cvar) = &*stop_in;
                let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if *stopped {
                        return;
                    }
                    scheduler.commit(event_id);
                    stopped = cvar
                        .wait_timeout(stopped, period)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    #[derive(Default)]
    struct Count(AtomicU64);

    impl Commit for Count {
        fn commit(&self, event_id: u64) {
            assert_eq!(event_id, 7);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn commits_at_start_and_every_period_and_stops_promptly() {
        let count = Arc::new(Count::default());
        let t = Ticker::start("t", Arc::clone(&count), Duration::from_millis(20), 7).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.0.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(count.0.load(Ordering::SeqCst) >= 3);
        let t0 = Instant::now();
        drop(t);
        let after = count.0.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            after,
            "no commit after drop"
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_long_period_does_not_delay_drop() {
        let count = Arc::new(Count::default());
        let t = Ticker::start("t", Arc::clone(&count), Duration::from_secs(3600), 7).unwrap();
        let t0 = Instant::now();
        while count.0.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(t);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
