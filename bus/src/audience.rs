//! Who watches what on this node: viewers, bytes sent and GoPs skipped, per
//! broadcast and per protocol.
//!
//! # Role
//!
//! Every part that sends media to viewers (RTMP players, WebRTC viewers, HLS
//! clients, QUIC subscribers) reports here through the [`Bus`](crate::Bus)
//! it already holds ([`Bus::audience`](crate::Bus::audience)); the control
//! plane reads it (the broadcasts API, `/metrics`). A part with a session per
//! viewer holds a [`Viewer`] (counted while it lives); one without sessions
//! (HLS) sets the count it estimates with [`Audience::set_viewers`].
//!
//! # Contract
//!
//! - Counting costs no lock, no map lookup and no shared write per frame: a
//!   [`Viewer`] adds to plain counters of its own and flushes them into the
//!   shared ones every [`FLUSH_FRAMES`] frames, on a skip and when dropped
//!   (readers see bytes and frames at most that many frames late).
//! - Per-broadcast entries are bounded by the broadcasts there are: an entry
//!   without viewers for a broadcast that is not live goes at [`Audience::prune`].
//! - Totals per protocol ([`Audience::totals`]) only grow (bytes, skipped GoPs)
//!   and survive pruning, for Prometheus counters.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// How a viewer receives the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// RTMP players.
    Rtmp,
    /// WebRTC viewers.
    #[serde(rename = "webrtc")]
    WebRtc,
    /// HLS clients (those that fetched the broadcast's playlists or media lately).
    Hls,
    /// QUIC bus subscribers (edges, subscriber nodes, `gopbus dump`).
    Quic,
}

impl Protocol {
    /// Every protocol, in a fixed order.
    pub const ALL: [Self; 4] = [Self::Rtmp, Self::WebRtc, Self::Hls, Self::Quic];

    /// Its name in APIs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rtmp => "rtmp",
            Self::WebRtc => "webrtc",
            Self::Hls => "hls",
            Self::Quic => "quic",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The counters of one (broadcast, protocol).
#[derive(Debug, Default)]
struct Counters {
    viewers: AtomicI64,
    bytes: AtomicU64,
    frames: AtomicU64,
    skipped_gops: AtomicU64,
}

/// What [`Audience::of`] and [`Audience::totals`] report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Viewers now.
    pub viewers: u64,
    /// Media bytes sent to them.
    pub bytes: u64,
    /// Frames sent to them (HLS: not counted, it serves segments).
    pub frames: u64,
    /// GoPs they skipped because they fell behind.
    pub skipped_gops: u64,
}

impl Counters {
    fn counts(&self) -> Counts {
        Counts {
            viewers: self.viewers.load(Ordering::Relaxed).max(0) as u64,
            bytes: self.bytes.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            skipped_gops: self.skipped_gops.load(Ordering::Relaxed),
        }
    }
}

/// The audience of one node (see the module documentation). Cheap to clone.
#[derive(Clone, Default)]
pub struct Audience {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    by_broadcast: DashMap<(Arc<str>, Protocol), Arc<Counters>>,
    totals: [Arc<Counters>; 4],
}

impl Audience {
    fn entry(&self, broadcast: &str, protocol: Protocol) -> Arc<Counters> {
        if let Some(c) = self.inner.by_broadcast.get(&(Arc::from(broadcast), protocol)) {
            return c.clone();
        }
        self.inner.by_broadcast.entry((Arc::from(broadcast), protocol)).or_default().clone()
    }

    /// A viewer of `broadcast` over `protocol` joins; counted until the
    /// returned handle is dropped.
    pub fn join(&self, broadcast: &str, protocol: Protocol) -> Viewer {
        let counters = self.entry(broadcast, protocol);
        let total = self.inner.totals[protocol.index()].clone();
        counters.viewers.fetch_add(1, Ordering::Relaxed);
        total.viewers.fetch_add(1, Ordering::Relaxed);
        Viewer { counters, total, pending: std::cell::Cell::new((0, 0)) }
    }

    /// Sets the viewers of `broadcast` over `protocol` to an estimate (for
    /// protocols without sessions: HLS).
    pub fn set_viewers(&self, broadcast: &str, protocol: Protocol, viewers: u64) {
        let c = self.entry(broadcast, protocol);
        let old = c.viewers.swap(viewers as i64, Ordering::Relaxed);
        self.inner.totals[protocol.index()].viewers.fetch_add(viewers as i64 - old, Ordering::Relaxed);
    }

    /// Counts `bytes` sent for `broadcast` over `protocol` without a session
    /// (one HTTP response).
    pub fn sent(&self, broadcast: &str, protocol: Protocol, bytes: u64) {
        self.entry(broadcast, protocol).bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inner.totals[protocol.index()].bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `broadcast`'s audience, per protocol that has one.
    pub fn of(&self, broadcast: &str) -> Vec<(Protocol, Counts)> {
        Protocol::ALL
            .into_iter()
            .filter_map(|p| Some((p, self.inner.by_broadcast.get(&(Arc::from(broadcast), p))?.counts())))
            .collect()
    }

    /// Per protocol, over every broadcast since the start (viewers: now).
    pub fn totals(&self) -> [(Protocol, Counts); 4] {
        Protocol::ALL.map(|p| (p, self.inner.totals[p.index()].counts()))
    }

    /// Drops the entries of broadcasts that are not `live` and have no viewers.
    pub fn prune(&self, live: impl Fn(&str) -> bool) {
        self.inner.by_broadcast.retain(|(name, _), c| live(name) || c.viewers.load(Ordering::Relaxed) > 0);
    }
}

/// Frames a [`Viewer`] counts on its own before it adds them to the shared counters.
pub const FLUSH_FRAMES: u64 = 64;

/// One viewer's counters ([`Audience::join`]); it leaves when dropped.
#[derive(Debug)]
pub struct Viewer {
    counters: Arc<Counters>,
    total: Arc<Counters>,
    /// (bytes, frames) not yet added to the shared counters.
    pending: std::cell::Cell<(u64, u64)>,
}

impl Viewer {
    /// A frame of `bytes` was sent to this viewer.
    pub fn sent_frame(&self, bytes: u64) {
        let (b, f) = self.pending.get();
        self.pending.set((b + bytes, f + 1));
        if f + 1 >= FLUSH_FRAMES {
            self.flush();
        }
    }

    /// This viewer skipped `gops` GoPs (it fell behind).
    pub fn skipped(&self, gops: u64) {
        self.flush();
        self.counters.skipped_gops.fetch_add(gops, Ordering::Relaxed);
        self.total.skipped_gops.fetch_add(gops, Ordering::Relaxed);
    }

    /// Adds what was counted here to the shared counters.
    pub fn flush(&self) {
        let (bytes, frames) = self.pending.replace((0, 0));
        if frames == 0 && bytes == 0 {
            return;
        }
        for c in [&self.counters, &self.total] {
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
            c.frames.fetch_add(frames, Ordering::Relaxed);
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.flush();
        self.counters.viewers.fetch_sub(1, Ordering::Relaxed);
        self.total.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_come_and_go_and_totals_outlive_pruning() {
        let a = Audience::default();
        let v1 = a.join("cam", Protocol::Rtmp);
        let v2 = a.join("cam", Protocol::Rtmp);
        v1.sent_frame(100);
        v1.flush();
        v2.sent_frame(50);
        v2.skipped(2);
        a.set_viewers("cam", Protocol::Hls, 3);
        a.sent("cam", Protocol::Hls, 7);
        assert_eq!(
            a.of("cam"),
            [
                (Protocol::Rtmp, Counts { viewers: 2, bytes: 150, frames: 2, skipped_gops: 2 }),
                (Protocol::Hls, Counts { viewers: 3, bytes: 7, frames: 0, skipped_gops: 0 }),
            ]
        );
        a.set_viewers("cam", Protocol::Hls, 1);
        drop(v1);
        assert_eq!(a.of("cam")[0].1.viewers, 1);
        assert_eq!(a.totals()[Protocol::Hls.index()].1.viewers, 1);
        // Live: kept; not live but watched: kept; neither: gone, totals stay.
        a.prune(|_| true);
        assert_eq!(a.of("cam").len(), 2);
        a.set_viewers("cam", Protocol::Hls, 0);
        a.prune(|_| false);
        assert_eq!(a.of("cam").len(), 1, "the RTMP viewer still there keeps its entry");
        drop(v2);
        a.prune(|_| false);
        assert!(a.of("cam").is_empty());
        let totals = a.totals();
        assert_eq!(totals[0].1, Counts { viewers: 0, bytes: 150, frames: 2, skipped_gops: 2 });
        assert_eq!(totals[2].1, Counts { viewers: 0, bytes: 7, frames: 0, skipped_gops: 0 });
    }
}
