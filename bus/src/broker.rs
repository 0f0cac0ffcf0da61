//! The in-process broker: broadcast names to their shared GoP windows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::broadcast::Shared;
use crate::publisher::Publisher;
use crate::subscriber::{SubscribeOptions, Subscriber};

/// Bus settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusConfig {
    /// Past GoPs kept per broadcast besides the current one.
    pub window: usize,
    /// Default allowed lag, in GoPs: a subscriber whose GoP is more than this many
    /// GoPs older than the newest jumps to the newest. At most `window`.
    pub max_lag: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { window: 2, max_lag: 1 }
    }
}

/// A live broadcast as listed by [`Bus::broadcasts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastInfo {
    /// Public name.
    pub name: String,
    /// Subscribers attached now.
    pub subscribers: usize,
    /// Frames pushed so far.
    pub frames: u64,
    /// Payload bytes pushed so far.
    pub bytes: u64,
    /// GoPs opened so far.
    pub gops: u64,
    /// GoPs skipped by lagging subscribers.
    pub skipped_gops: u64,
    /// Payload bytes held in the GoP window now.
    pub window_bytes: usize,
}

/// The in-process bus. Cheap to clone; all clones share one set of broadcasts.
#[derive(Clone, Default)]
pub struct Bus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    config: BusConfig,
    broadcasts: DashMap<Arc<str>, Arc<Shared>>,
}

impl Bus {
    /// A bus with the given settings (`max_lag` is capped at `window`).
    pub fn new(mut config: BusConfig) -> Self {
        config.max_lag = config.max_lag.min(config.window as u64);
        Self { inner: Arc::new(Inner { config, broadcasts: DashMap::new() }) }
    }

    /// The bus settings.
    pub fn config(&self) -> BusConfig {
        self.inner.config
    }

    /// Starts publishing `name`. If another publisher holds it, this one takes
    /// over: the old handle's current GoP is cut short and its operations fail with
    /// [`BusError::TakenOver`](crate::BusError::TakenOver); subscribers stay attached.
    pub fn publish(&self, name: &str) -> Publisher {
        loop {
            let shared = self.slot(name);
            let mut st = shared.write();
            if st.ended.is_some() {
                // The slot ended after we looked it up; it was removed, look again.
                drop(st);
                self.remove_if_same(&shared);
                continue;
            }
            let takeover = st.publisher_token.is_some();
            if let Some(old) = st.publisher_token.take() {
                old.cancel();
                if let Some(gop) = st.gops.back() {
                    gop.close(crate::broadcast::GopState::CutShort);
                }
            }
            st.epoch += 1;
            let token = CancellationToken::new();
            st.publisher_token = Some(token.clone());
            let epoch = st.epoch;
            let last_dts = Some(shared.last_dts.load(Ordering::Relaxed)).filter(|&d| d != i64::MIN);
            drop(st);
            if takeover {
                shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(broadcast = %name, "publisher took over");
            }
            shared.wake_all();
            return Publisher::new(self.clone(), shared, epoch, token, last_dts);
        }
    }

    /// Subscribes to `name`. If nobody publishes it yet, the subscriber waits for
    /// the first publisher.
    pub fn subscribe(&self, name: &str, opts: SubscribeOptions) -> Subscriber {
        // Count the subscriber under the map's shard lock, so a concurrent
        // `release_if_idle` cannot drop the slot between lookup and count.
        let shared = self
            .inner
            .broadcasts
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(Shared::new(Arc::from(name), self.inner.config)));
        shared.stats.subscribers.fetch_add(1, Ordering::AcqRel);
        let shared = shared.clone();
        Subscriber::new(self.clone(), shared, opts)
    }

    /// Whether `name` has a publisher now.
    pub fn is_live(&self, name: &str) -> bool {
        self.inner.broadcasts.get(name).is_some_and(|s| s.is_live())
    }

    /// Subscribers attached to `name` now (0 if there is no such broadcast).
    pub fn subscriber_count(&self, name: &str) -> usize {
        self.inner.broadcasts.get(name).map_or(0, |s| s.stats.subscribers.load(Ordering::Relaxed))
    }

    /// The broadcasts that have a publisher now.
    pub fn broadcasts(&self) -> Vec<BroadcastInfo> {
        let mut out: Vec<BroadcastInfo> = self
            .inner
            .broadcasts
            .iter()
            .filter(|e| e.value().is_live())
            .map(|e| {
                let s = e.value();
                BroadcastInfo {
                    name: s.name.to_string(),
                    subscribers: s.stats.subscribers.load(Ordering::Relaxed),
                    frames: s.stats.frames.load(Ordering::Relaxed),
                    bytes: s.stats.bytes.load(Ordering::Relaxed),
                    gops: s.stats.gops.load(Ordering::Relaxed),
                    skipped_gops: s.stats.skipped_gops.load(Ordering::Relaxed),
                    window_bytes: s.window_bytes(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Number of broadcast slots held (live, or waited for by subscribers).
    pub fn slots(&self) -> usize {
        self.inner.broadcasts.len()
    }

    fn slot(&self, name: &str) -> Arc<Shared> {
        if let Some(s) = self.inner.broadcasts.get(name) {
            return s.clone();
        }
        self.inner
            .broadcasts
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(Shared::new(Arc::from(name), self.inner.config)))
            .clone()
    }

    /// Forgets `shared` if the map still points to it.
    pub(crate) fn remove_if_same(&self, shared: &Arc<Shared>) {
        self.inner.broadcasts.remove_if(&shared.name, |_, v| Arc::ptr_eq(v, shared));
    }

    /// Forgets a slot nobody publishes or waits for.
    pub(crate) fn release_if_idle(&self, shared: &Arc<Shared>) {
        self.inner.broadcasts.remove_if(&shared.name, |_, v| {
            Arc::ptr_eq(v, shared)
                && v.stats.subscribers.load(Ordering::Acquire) == 0
                && v.read().publisher_token.is_none()
        });
    }
}
