//! The HLS subscriber: every live broadcast as fMP4 (CMAF) HLS, and each
//! broadcast session recorded as a VOD playlist under the data directory.
//!
//! # Role
//!
//! [`Hls::run`] follows the bus's announcements and segments every broadcast
//! that starts; [`Hls::router`] serves:
//!
//! - `GET /hls/NAME/index.m3u8` — the live playlist (a sliding window);
//! - `GET /hls/NAME/SESSION/init-N.mp4`, `.../seg-N.m4s` — from memory while live;
//! - `GET /recordings/NAME/SESSION/index.m3u8` and its files — from disk, kept
//!   after the broadcast ends (`#EXT-X-ENDLIST`).
//!
//! # Contract
//!
//! - Segments are cut at GoP boundaries (every segment starts with a keyframe)
//!   once they hold at least the target duration: with an encoder whose
//!   keyframes are further apart than the target (OBS's default, 5–8 s), a
//!   segment is one GoP and the target duration follows the longest one.
//! - Each segment is written to the recording as it is cut, and the recording's
//!   playlist rewritten, so a process that stops loses at most the segment in
//!   progress; a broadcast that ends (or a server that shuts down) closes it
//!   with `#EXT-X-ENDLIST`.
//! - A new decoder configuration (a resolution change) gets a new init segment
//!   and `#EXT-X-MAP`; a gap (the segmenter fell behind, a publisher took
//!   over) gets `#EXT-X-DISCONTINUITY`.
//! - Media sequence numbers start at 1.
//!
//! Not yet: LL-HLS parts and blocking reloads, the multivariant playlist,
//! object storage (see the README).

mod mux;
mod playlist;
mod segmenter;
mod server;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use gopbus_bus::{Announcement, Bus, SubscribeOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use mux::{fragment, init_segment, Layout, MuxError, Sample, AAC_FRAME, VIDEO_TIMESCALE};
pub use playlist::{Entry, Playlist};

/// Settings of the HLS subscriber.
#[derive(Debug, Clone)]
pub struct HlsConfig {
    /// Recordings go to `DIR/NAME/SESSION/`.
    pub recordings: PathBuf,
    /// A segment is cut at the first keyframe after it holds this much.
    pub target_duration: Duration,
    /// Segments listed (and kept in memory) per live playlist.
    pub live_segments: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            recordings: PathBuf::from("./data/recordings"),
            target_duration: Duration::from_secs(2),
            live_segments: 6,
        }
    }
}

/// The HLS subscriber of one node. Cheap to clone.
#[derive(Clone)]
pub struct Hls {
    inner: Arc<Inner>,
}

struct Inner {
    config: HlsConfig,
    /// Live state of each broadcast being segmented.
    live: DashMap<String, Arc<segmenter::Live>>,
    running: Mutex<HashSet<String>>,
}

impl Hls {
    /// An HLS subscriber with `config`.
    pub fn new(config: HlsConfig) -> Self {
        Self { inner: Arc::new(Inner { config, live: DashMap::new(), running: Mutex::default() }) }
    }

    /// The settings.
    pub fn config(&self) -> &HlsConfig {
        &self.inner.config
    }

    /// The HTTP routes (`/hls/…`, `/recordings/…`).
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    /// Segments every broadcast of `bus` as it starts, until `shutdown`; then
    /// waits (up to 5 s) for the segmenters to close their recordings, which
    /// they do when their broadcasts end.
    pub async fn run(self, bus: Bus, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut announcements = bus.announcements();
        loop {
            let a = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = announcements.next() => a,
            };
            let names: Vec<String> = match a {
                Announcement::Started(c) => vec![c.name],
                Announcement::Live(list) => list.into_iter().map(|c| c.name).collect(),
                Announcement::Changed(_) | Announcement::Ended(_) => continue,
            };
            for name in names {
                if !self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone()) {
                    continue;
                }
                let sub = bus.subscribe(&name, SubscribeOptions::default());
                let (me, stop) = (self.clone(), shutdown.clone());
                tracker.spawn(async move {
                    segmenter::segment(&me, &name, sub, stop).await;
                    me.inner.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                });
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
}
