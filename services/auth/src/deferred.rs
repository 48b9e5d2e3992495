//! Work done after its request was answered (see `Auth::answer_first`): tracked, so
//! that shutdown waits for it, and bounded. Each piece may hold a database
//! connection for as long as it waits (email tokens are issued under a per-account
//! lock), so a flood of reset requests for one address would otherwise take every
//! connection of the pool and stall logins. At most half the pool's worth runs at
//! once, a bounded number waits, and work beyond that is dropped, counted and
//! logged (its request was answered already; the user can ask again).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Pieces of work that may wait for a turn, per running one.
const WAITING_PER_RUNNING: usize = 64;

/// Runs work after answers, boundedly.
#[derive(Clone)]
pub(crate) struct Deferred {
    tracker: TaskTracker,
    running: Arc<Semaphore>,
    places: Arc<Semaphore>,
}

impl Deferred {
    /// For a service whose database pool has `pool_size` connections.
    pub(crate) fn for_pool(tracker: TaskTracker, pool_size: usize) -> Self {
        let running = (pool_size / 2).max(1);
        Self::new(tracker, running, running * WAITING_PER_RUNNING)
    }

    fn new(tracker: TaskTracker, running: usize, waiting: usize) -> Self {
        Self {
            tracker,
            running: Arc::new(Semaphore::new(running)),
            places: Arc::new(Semaphore::new(running + waiting)),
        }
    }

    /// Runs `work` when a turn comes, or drops it when too much waits; true if taken.
    pub(crate) fn spawn(
        &self,
        what: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        let Ok(place) = Arc::clone(&self.places).try_acquire_owned() else {
            metrics::counter!("auth_deferred_work_dropped_total", "work" => what).increment(1);
            tracing::warn!(
                work = what,
                "too much work waits after its answers: dropped"
            );
            return false;
        };
        let running = Arc::clone(&self.running);
        self.tracker.spawn(async move {
            let _place = place;
            // The semaphore is never closed.
            if let Ok(_turn) = running.acquire_owned().await {
                work.await;
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_the_running_share_runs_and_the_rest_past_the_waiting_room_is_dropped() {
        let tracker = TaskTracker::new();
        let deferred = Deferred::new(tracker.clone(), 2, 3);
        let (release, hold) = tokio::sync::watch::channel(false);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken: Vec<bool> = (0..7)
            .map(|_| {
                let (mut hold, started) = (hold.clone(), Arc::clone(&started));
                deferred.spawn("test", async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = hold.wait_for(|released| *released).await;
                })
            })
            .collect();
        assert_eq!(taken, [true, true, true, true, true, false, false]);
        // Two start (however slow the machine), and no third while they run.
        let running = || started.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while running() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(running(), 2);
        let _ = release.send(true);
        tracker.close();
        tracker.wait().await;
        assert_eq!(running(), 5);
        // Room again once the work is done.
        assert!(deferred.spawn("test", async {}));
    }
}
