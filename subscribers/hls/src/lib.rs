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
    /// Most bytes of recordings on disk; the oldest finished sessions are deleted past it.
    pub max_recording_bytes: u64,
    /// Most recorded sessions kept; the oldest finished ones are deleted past it.
    pub max_recordings: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            recordings: PathBuf::from("./data/recordings"),
            target_duration: Duration::from_secs(2),
            live_segments: 6,
            max_recording_bytes: 20 << 30,
            max_recordings: 1000,
        }
    }
}

/// How often the recording limits are enforced.
const RETENTION_EVERY: Duration = Duration::from_secs(5);

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
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        loop {
            let a = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = retention.tick() => {
                    let me = self.clone();
                    // Directory walks are blocking work.
                    let _ = tokio::task::spawn_blocking(move || me.enforce_limits()).await;
                    continue;
                }
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

    /// Deletes the oldest finished recordings while there are more than
    /// `max_recordings` or they take more than `max_recording_bytes`. Sessions
    /// being recorded are never deleted. Returns the sessions deleted.
    pub fn enforce_limits(&self) -> Vec<PathBuf> {
        let c = &self.inner.config;
        let mut sessions = recordings(&c.recordings);
        let recording: HashSet<(String, String)> =
            self.inner.live.iter().map(|e| (e.key().clone(), e.value().session.clone())).collect();
        // Oldest first: session names are their start time in milliseconds.
        sessions.sort_by_key(|s| s.started);
        let mut count = sessions.len();
        let mut bytes: u64 = sessions.iter().map(|s| s.bytes).sum();
        let mut deleted = Vec::new();
        for s in sessions {
            if count <= c.max_recordings && bytes <= c.max_recording_bytes {
                break;
            }
            if recording.contains(&(s.name.clone(), s.session.clone())) {
                continue;
            }
            match std::fs::remove_dir_all(&s.dir) {
                Ok(()) => {
                    tracing::info!(
                        recording = %s.dir.display(), bytes = s.bytes, kept = count - 1,
                        max_recordings = c.max_recordings, max_bytes = c.max_recording_bytes,
                        "recording limit reached; oldest recording deleted"
                    );
                    count -= 1;
                    bytes -= s.bytes;
                    deleted.push(s.dir);
                }
                Err(e) => tracing::warn!(recording = %s.dir.display(), error = %e, "could not delete an old recording"),
            }
        }
        deleted
    }
}

/// A recorded session on disk.
struct Recorded {
    name: String,
    session: String,
    started: u128,
    dir: PathBuf,
    bytes: u64,
}

fn recordings(root: &std::path::Path) -> Vec<Recorded> {
    let mut out = Vec::new();
    let Ok(names) = std::fs::read_dir(root) else { return out };
    for name in names.flatten() {
        let Ok(sessions) = std::fs::read_dir(name.path()) else { continue };
        for session in sessions.flatten() {
            let dir = session.path();
            let bytes = std::fs::read_dir(&dir)
                .map(|files| files.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0);
            let session_name = session.file_name().to_string_lossy().into_owned();
            out.push(Recorded {
                name: name.file_name().to_string_lossy().into_owned(),
                started: session_name.parse().unwrap_or(0),
                session: session_name,
                dir,
                bytes,
            });
        }
    }
    out
}
