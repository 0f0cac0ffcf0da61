//! RTMP event loops: single-threaded runtimes, each on its own thread, that
//! RTMP connections are spread over.
//!
//! A connection stays on the loop it was given at accept for its whole life:
//! its socket and its timers are driven by one thread, without the
//! work-stealing scheduler's hand-offs between threads. The loops fill in
//! order: a loop takes up to `fill` connections before the next one gets any,
//! and once every loop has that many, a connection goes to the loop with the
//! fewest. A lightly loaded server thus runs on one thread — one busy thread
//! sleeps and wakes less than several half-busy ones, and a publisher and its
//! first players share it — and spreads as connections grow. It is
//! nginx-rtmp's shape (a worker process per core) inside one process; the bus
//! still joins them (a publisher on one loop wakes the players and groups on
//! the others). Where player groups run is `fanout::pick_loop`'s choice: the
//! publisher's loop for the first group's worth of players while that loop is
//! not a group's worth ahead of the others, then evenly over the loops.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// The index of the loop this thread runs (0 off the loops).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The index of the loop the calling task runs on; 0 when connections run on
/// the caller's runtime ([`IngestConfig::threads`](crate::IngestConfig::threads) = 0).
pub(crate) fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Running event loops; stop them with [`stop`](Self::stop).
pub(crate) struct Loops {
    /// Shared with the player groups (`fanout::Groups`), which spawn on them.
    handles: Arc<[Handle]>,
    /// Connections on each loop now.
    load: Arc<[AtomicUsize]>,
    /// Connections a loop takes before the next one gets any.
    fill: usize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

/// Counts a connection on its loop until dropped.
pub(crate) struct Placed {
    load: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Loops {
    /// Starts `n` loops (threads `rtmp-0` … `rtmp-{n-1}`), each taking up to
    /// `fill` connections before the next one is used (0: the fewest from the
    /// first connection on).
    pub(crate) fn start(n: usize, fill: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let token = stop.clone();
            let thread = std::thread::Builder::new().name(format!("rtmp-{index}")).spawn(move || {
                CURRENT.with(|c| c.set(index));
                runtime.block_on(token.cancelled());
                // Dropping the runtime here drops what is still spawned on it
                // (groups whose players are gone).
            });
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The loops started so far end with the token.
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        let load = (0..n).map(|_| AtomicUsize::new(0)).collect();
        Ok(Self { handles: handles.into(), load, fill, stop, threads })
    }

    /// The first loop with fewer than `fill` connections, else the one with
    /// the fewest; and its count for one more.
    pub(crate) fn place(&self) -> (&Handle, Placed) {
        let load = |i: usize| self.load[i].load(Ordering::Relaxed);
        let n = self.load.len();
        let index = (0..n).find(|&i| load(i) < self.fill).or_else(|| (0..n).min_by_key(|&i| load(i))).unwrap_or(0);
        self.load[index].fetch_add(1, Ordering::Relaxed);
        (&self.handles[index], Placed { load: self.load.clone(), index })
    }

    /// The loops' runtimes, by index (the same list, not a copy).
    pub(crate) fn handles(&self) -> Arc<[Handle]> {
        self.handles.clone()
    }

    /// Counts of the connections on each loop, shared (for `/metrics`).
    pub(crate) fn counts(&self) -> Arc<[AtomicUsize]> {
        self.load.clone()
    }

    /// Connections on each loop now.
    #[cfg(test)]
    pub(crate) fn load(&self) -> Vec<usize> {
        self.load.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Stops the loops, dropping what still runs on them, and waits for their threads.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Loops {
    /// Dropped without [`stop`](Self::stop) (the task serving them aborted):
    /// the loops end on their own.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_least_loaded_loop_and_tasks_run_there() {
        let loops = Loops::start(3, 0).unwrap();
        let mut placed = Vec::new();
        for _ in 0..5 {
            let (handle, p) = loops.place();
            // A task spawned there runs on that loop's thread and sees its index.
            let index = handle.spawn(async { (current(), std::thread::current().name().map(str::to_owned)) });
            let (seen, name) = index.await.unwrap();
            assert_eq!(seen, p.index);
            assert_eq!(name.as_deref(), Some(format!("rtmp-{seen}").as_str()));
            placed.push(p);
        }
        assert_eq!(loops.load(), vec![2, 2, 1]);
        // One leaves loop 1: the next goes there.
        let i = placed.iter().position(|p| p.index == 1).unwrap();
        placed.remove(i);
        assert_eq!(loops.load(), vec![2, 1, 1]);
        let (_, p) = loops.place();
        assert_eq!(p.index, 1);
        // Stopping drops what still runs on the loops.
        let (handle, _p) = loops.place();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        loops.stop().await;
        assert!(rx.await.is_err(), "a task left on a stopped loop was not dropped");
        assert_eq!(current(), 0);
    }

    #[tokio::test]
    async fn loops_fill_in_order_then_take_the_fewest() {
        let loops = Loops::start(3, 2).unwrap();
        let mut placed: Vec<Placed> = (0..5).map(|_| loops.place().1).collect();
        // Two on the first loop, then two on the second, then the third.
        assert_eq!(loops.load(), vec![2, 2, 1]);
        placed.push(loops.place().1);
        assert_eq!(loops.load(), vec![2, 2, 2]);
        // Every loop is full: the fewest, the lowest index on a tie.
        placed.extend((0..4).map(|_| loops.place().1));
        assert_eq!(loops.load(), vec![4, 3, 3]);
        // The first loop empties: it is filled again first, then it has the fewest.
        placed.retain(|p| p.index != 0);
        assert_eq!(loops.load(), vec![0, 3, 3]);
        placed.extend((0..2).map(|_| loops.place().1));
        assert_eq!(loops.load(), vec![2, 3, 3]);
        placed.push(loops.place().1);
        assert_eq!(loops.load(), vec![3, 3, 3]);
        drop(placed);
        assert_eq!(loops.load(), vec![0, 0, 0]);
        loops.stop().await;
    }
}
