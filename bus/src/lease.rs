//! Leases: which worker holds a job (a rendition of a broadcast) right now.
//!
//! A worker acquires a job's lease before doing the work, renews it well
//! within its time to live, and releases it when done. A worker that dies
//! stops renewing, the lease runs out, and another worker acquires it. In one
//! process the leases are a map ([`LocalLeases`]); in a cluster they are Redis
//! keys written with `SET NX PX` (`gopbus_store::RedisLeases`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::directory::BoxFut;

/// Job → holder, each entry living for a time unless renewed.
pub trait Leases: Send + Sync + 'static {
    /// Takes `job` for `holder` for `ttl` if nobody holds it; true when taken.
    fn acquire<'a>(&'a self, job: &'a str, holder: &'a str, ttl: Duration) -> BoxFut<'a, bool>;
    /// Extends `holder`'s lease of `job` to `ttl` from now; false when it is
    /// not (or no longer) `holder`'s.
    fn renew<'a>(&'a self, job: &'a str, holder: &'a str, ttl: Duration) -> BoxFut<'a, bool>;
    /// Gives `job` up if `holder` holds it.
    fn release<'a>(&'a self, job: &'a str, holder: &'a str) -> BoxFut<'a, ()>;
    /// Publishes what `holder` can do (its capacity and load, as JSON) for
    /// `ttl`; the cluster's status pages read it back with [`workers`](Self::workers).
    fn announce<'a>(&'a self, holder: &'a str, info: &'a str, ttl: Duration) -> BoxFut<'a, ()>;
    /// Every live worker's last announcement.
    fn workers(&self) -> BoxFut<'_, Vec<String>>;
}

/// Leases in one process.
#[derive(Default)]
pub struct LocalLeases {
    held: Mutex<HashMap<String, (String, Instant)>>,
    workers: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalLeases {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>) -> T) -> T {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        held.retain(|_, (_, until)| *until > now);
        f(&mut held)
    }
}

impl Leases for LocalLeases {
    fn acquire<'a>(&'a self, job: &'a str, holder: &'a str, ttl: Duration) -> BoxFut<'a, bool> {
        let taken = self.with(|held| {
            if held.contains_key(job) {
                return false;
            }
            held.insert(job.to_owned(), (holder.to_owned(), Instant::now() + ttl));
            true
        });
        Box::pin(async move { Ok(taken) })
    }

    fn renew<'a>(&'a self, job: &'a str, holder: &'a str, ttl: Duration) -> BoxFut<'a, bool> {
        let renewed = self.with(|held| match held.get_mut(job) {
            Some((h, until)) if h == holder => {
                *until = Instant::now() + ttl;
                true
            }
            _ => false,
        });
        Box::pin(async move { Ok(renewed) })
    }

    fn release<'a>(&'a self, job: &'a str, holder: &'a str) -> BoxFut<'a, ()> {
        self.with(|held| {
            if held.get(job).is_some_and(|(h, _)| h == holder) {
                held.remove(job);
            }
        });
        Box::pin(async move { Ok(()) })
    }

    fn announce<'a>(&'a self, holder: &'a str, info: &'a str, ttl: Duration) -> BoxFut<'a, ()> {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        w.insert(holder.to_owned(), (info.to_owned(), Instant::now() + ttl));
        Box::pin(async move { Ok(()) })
    }

    fn workers(&self) -> BoxFut<'_, Vec<String>> {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        w.retain(|_, (_, until)| *until > now);
        let list = w.values().map(|(i, _)| i.clone()).collect();
        Box::pin(async move { Ok(list) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_leases_expire_and_belong_to_their_holder() {
        let l = LocalLeases::default();
        let ttl = Duration::from_millis(100);
        assert!(l.acquire("a/video/480p", "w1", ttl).await.unwrap());
        assert!(!l.acquire("a/video/480p", "w2", ttl).await.unwrap());
        assert!(!l.renew("a/video/480p", "w2", ttl).await.unwrap());
        assert!(l.renew("a/video/480p", "w1", ttl).await.unwrap());
        l.release("a/video/480p", "w2").await.unwrap();
        assert!(!l.acquire("a/video/480p", "w2", ttl).await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!l.renew("a/video/480p", "w1", ttl).await.unwrap());
        assert!(l.acquire("a/video/480p", "w2", ttl).await.unwrap());
        l.release("a/video/480p", "w2").await.unwrap();
        assert!(l.acquire("a/video/480p", "w1", ttl).await.unwrap());
    }
}
