//! The store's own thread. Refreshes (row decoding, diffs, index builds, freeing replaced
//! snapshots) run on a single-threaded Tokio runtime on a dedicated OS thread,
//! `edgeguard-store`, at a lower CPU priority (nice +10 on Linux). The runtime that answers
//! Check requests never runs refresh code, and under CPU pressure the scheduler serves
//! requests first: a full reload of a million apps then takes longer instead of stalling
//! requests.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;

/// How long a replaced snapshot is kept before it is freed on the store thread. Readers hold
/// a snapshot for microseconds; without the grace period the last reader of a replaced
/// snapshot would free it (a million apps: hundreds of milliseconds) on a request thread.
const RETIRE_GRACE: Duration = Duration::from_millis(200);

/// The niceness of the store thread (Linux; elsewhere the thread runs at normal priority).
const NICE: i32 = 10;

static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();

/// The store thread's runtime, started on first use; the caller's runtime if the thread
/// cannot be started (logged once).
pub(crate) fn handle() -> Handle {
    match HANDLE.get_or_init(start) {
        Some(h) => h.clone(),
        None => Handle::current(),
    }
}

fn start() -> Option<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("edgeguard-store".into())
        .spawn(move || {
            lower_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the store runtime; refreshing on the request runtime");
                    let _ = tx.send(None);
                    return;
                }
            };
            let _ = tx.send(Some(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the store thread; refreshing on the request runtime");
        return None;
    }
    rx.recv().ok().flatten()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // two libc calls on the thread's own id
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "store thread keeps the normal CPU priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Frees a replaced value on the store thread after [`RETIRE_GRACE`] (inline when not
/// called from a Tokio runtime).
pub(crate) fn retire<T: Send + Sync + 'static>(old: Arc<T>) {
    match Handle::try_current() {
        Ok(h) => {
            h.spawn(async move {
                tokio::time::sleep(RETIRE_GRACE).await;
                drop(old);
            });
        }
        Err(_) => drop(old),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)] // reads the thread's own priority
    fn the_store_thread_runs_tasks_at_lower_priority() {
        let h = handle();
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            let name = std::thread::current().name().map(str::to_string);
            #[cfg(target_os = "linux")]
            // SAFETY: reads the calling thread's own priority.
            let nice = unsafe {
                libc::getpriority(
                    libc::PRIO_PROCESS,
                    libc::syscall(libc::SYS_gettid) as libc::id_t,
                )
            };
            #[cfg(not(target_os = "linux"))]
            let nice = NICE;
            let _ = tx.send((name, nice));
        });
        let (name, nice) = rx.recv_timeout(Duration::from_secs(5)).unwrap_or((None, 0));
        assert_eq!(name.as_deref(), Some("edgeguard-store"));
        assert_eq!(nice, NICE);
    }

    #[tokio::test]
    async fn retired_values_are_freed_after_the_grace_period_on_the_store_thread() {
        struct Probe(std::sync::mpsc::Sender<Option<String>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .send(std::thread::current().name().map(str::to_string));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        handle().spawn(async move { retire(Arc::new(Probe(tx))) });
        let dropped_on =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
        assert_eq!(dropped_on.as_deref(), Some("edgeguard-store"));
        assert!(started.elapsed() >= RETIRE_GRACE);
    }
}
