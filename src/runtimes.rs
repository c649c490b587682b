//! The hub's runtimes: one single-threaded tokio runtime per thread (`server.threads`,
//! `--threads`), and the rule that places each WebSocket session on one of them.
//!
//! Runtime 0 is the *home* runtime, the one [`crate::run`] is called on. It runs what
//! there is one of: the accept loop, the handshakes, the HTTP routes, the MQTT bridges,
//! the sweeper, retention, the SIGHUP reload and the shutdown. The others are *workers*:
//! each is a current-thread runtime on a thread of its own that only runs sessions.
//!
//! A session is placed by its room: room `r` lives on runtime `hash(r) % threads`. A
//! device's reading is then fanned out to dashboards whose writer tasks are on the same
//! thread, so a delivery wakes a task on the local run queue (no futex, no eventfd, no
//! work stealing), which is what a single thread costs; several rooms spread over every
//! core. Plain TCP sockets move to their runtime after the handshake (deregistered from
//! the home runtime's epoll, registered on the worker's); a TLS session stays on the
//! home runtime (its stream cannot be taken apart and rebuilt), and MQTT readings are
//! published from the home runtime, so those wake their dashboards across threads,
//! which is correct and only dearer. `docs/DESIGN.md` ("Runtimes") says why this design.

use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::warn;

/// Threads at most (`server.threads`): more than any machine this hub targets has cores.
pub(crate) const MAX_THREADS: usize = 256;

/// The worker runtimes' threads; dropping this stops them (after [`crate::run`] has
/// waited for every session within the grace period, so anything still running is
/// abandoned). Only `run` holds it; sessions hold the [`Placement`].
pub(crate) struct Runtimes {
    placement: Arc<Placement>,
    workers: Vec<Worker>,
}

struct Worker {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Which runtime each room's sessions run on: the handles of the workers.
pub(crate) struct Placement {
    workers: Vec<Handle>,
}

/// How many runtimes `server.threads = 0` means: one per core.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Runtimes {
    /// Starts `threads - 1` worker runtimes beside the home one (`0` means one per core).
    pub(crate) fn start(threads: usize) -> std::io::Result<Runtimes> {
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        }
        .min(MAX_THREADS);
        let mut workers = Vec::with_capacity(threads.saturating_sub(1));
        let mut handles = Vec::with_capacity(threads.saturating_sub(1));
        for i in 1..threads {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("telehub-rt-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let _ = stopped.await;
                    });
                    // Dropped here, on its own thread: any session still running past
                    // the grace period is cancelled.
                })?;
            handles.push(handle);
            workers.push(Worker {
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Runtimes {
            placement: Arc::new(Placement { workers: handles }),
            workers,
        })
    }

    /// What sessions need to find their runtime.
    pub(crate) fn placement(&self) -> &Arc<Placement> {
        &self.placement
    }
}

impl Placement {
    /// How many runtimes there are, the home one included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// The runtime a room's sessions run on: 0 is the home runtime.
    pub(crate) fn place(&self, room: &str) -> usize {
        if self.workers.is_empty() {
            return 0;
        }
        // A fixed hash (not a random seed), so a room has one runtime for the process's
        // life and the placement is the same from run to run.
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(room);
        (hash % self.threads() as u64) as usize
    }

    /// The worker runtime a room's sessions run on, or `None` for the home runtime.
    pub(crate) fn worker_for(&self, room: &str) -> Option<&Handle> {
        self.place(room).checked_sub(1).map(|w| &self.workers[w])
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(thread) = w.thread.take() {
                if thread.join().is_err() {
                    warn!("a worker runtime panicked");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_has_no_workers_and_places_everything_at_home() {
        let owner = Runtimes::start(1).expect("start");
        let rts = owner.placement();
        assert_eq!(rts.threads(), 1);
        assert!(rts.worker_for("r0").is_none());
    }

    #[test]
    fn rooms_spread_over_every_runtime_and_keep_their_place() {
        let owner = Runtimes::start(4).expect("start");
        let rts = owner.placement();
        assert_eq!(rts.threads(), 4);
        let place = |room: &str| rts.place(room);
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            let room = format!("r{i}");
            assert_eq!(place(&room), place(&room), "a room keeps its runtime");
            seen.insert(place(&room));
        }
        assert_eq!(seen.len(), 4, "64 rooms use all 4 runtimes: {seen:?}");
    }

    #[test]
    fn a_worker_runs_what_is_spawned_on_it_and_stops_when_dropped() {
        let owner = Runtimes::start(2).expect("start");
        let rts = owner.placement();
        let room = (0..64)
            .map(|i| format!("r{i}"))
            .find(|r| rts.worker_for(r).is_some())
            .expect("some room is placed on the worker");
        let (tx, rx) = std::sync::mpsc::channel();
        rts.worker_for(&room).expect("worker").spawn(async move {
            let name = std::thread::current().name().map(str::to_string);
            let _ = tx.send(name);
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("ran");
        assert_eq!(name.as_deref(), Some("telehub-rt-1"));
        drop(owner);
    }
}
