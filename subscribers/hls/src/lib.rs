//! The HLS subscriber: every live broadcast as fMP4 (CMAF) HLS, and each
//! broadcast session recorded as a VOD playlist under the data directory.
//!
//! # Role
//!
//! [`Hls::run`] follows the bus's announcements and segments every broadcast
//! that starts; [`Hls::router`] serves:
//!
//! - `GET /hls/NAME/master.m3u8` — the multivariant playlist: the source; with
//!   renditions, an audio group (`r/audio/index.m3u8`) and video-only variants
//!   (`r/video/…`, `r/480p/…`);
//! - `GET /hls/NAME/index.m3u8[?_HLS_msn=M[&_HLS_part=P]]` — the live playlist
//!   (a sliding window, LL-HLS), blocking until segment M (part P) exists;
//! - `GET /hls/NAME/SESSION/init-N.mp4`, `.../seg-N.m4s`, `.../part-M.P.m4s` —
//!   from memory while live;
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
//! - Low-Latency HLS: parts of about `part_target` (0.5 s) are cut on the
//!   video clock, whatever the keyframe interval; only a part that starts
//!   with a keyframe is `INDEPENDENT=YES`. A segment is its parts, back to
//!   back. Blocking playlist reloads (`_HLS_msn`, `_HLS_part`) and the
//!   preload-hinted part are held open until they exist (at most three target
//!   durations, at most `max_waiting` requests at once).
//!
//! - With `s3` set, recordings are also uploaded to S3-compatible storage by
//!   a task of their own; the segmenter never waits for it (see `upload`).
//!
//! - Renditions (derived `video/…` tracks) are segmented as video-only
//!   variants from `Announcement::Changed`, with the source's video and
//!   audio segmented on their own beside them, live only (not recorded):
//!   `GET /hls/NAME/r/{480p,video,audio}/index.m3u8` and their files. With
//!   `opus`, the broadcast's `audio/opus` track (the WebRTC subscriber's) is
//!   a second audio group, `r/opus/index.m3u8`.

mod api;
mod mux;
mod playlist;
mod segmenter;
mod server;
mod upload;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use gopbus_bus::node::{Backoff, Remote, ResubscribeConfig, Resubscriber};
use gopbus_bus::{Announcement, Audience, Bus, BusConfig, Protocol, SubscribeOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::Recording;
pub use mux::{
    fragment, init_segment, opus_samples, AudioCodec, Layout, MuxError, Sample, AAC_FRAME, OPUS_TIMESCALE,
    VIDEO_TIMESCALE,
};
pub use playlist::{Entry, LowLatency, Part, Playlist};
pub use upload::{S3Config, S3Error, S3Target};

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
    /// Longest segment: a GoP longer than this is cut (the frames up to its next
    /// keyframe are dropped), which bounds the memory a segment in progress holds.
    pub max_segment: Duration,
    /// LL-HLS part target: a part is cut before the frame that would take it
    /// past this (0.2 s to the segment target).
    pub part_target: Duration,
    /// Most requests held open at once (blocking playlist reloads and preload
    /// hints, all broadcasts); past it they get 503 at once.
    pub max_waiting: usize,
    /// Upload recordings to this bucket too (`S3Config::connect`).
    pub s3: Option<S3Target>,
    /// Offer the broadcast's Opus track (`audio/opus`, made by the WebRTC
    /// subscriber's encoder) as a second audio group in the multivariant
    /// playlist, beside the AAC one.
    pub opus: bool,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            recordings: PathBuf::from("./data/recordings"),
            target_duration: Duration::from_secs(2),
            live_segments: 6,
            max_recording_bytes: 20 << 30,
            max_recordings: 1000,
            max_segment: Duration::from_secs(30),
            part_target: Duration::from_millis(500),
            max_waiting: 10_000,
            s3: None,
            opus: false,
        }
    }
}

/// The derived Opus track the WebRTC subscriber publishes.
const OPUS_TRACK: &str = "audio/opus";

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
    /// Permits for requests held open (`max_waiting`).
    waiting: Arc<tokio::sync::Semaphore>,
    /// When the `max_waiting` limit last said so in the log (ms since the Unix epoch).
    waiting_logged: std::sync::atomic::AtomicU64,
    uploader: Option<Arc<upload::Uploader>>,
    /// Where viewers (recent clients) and bytes served are counted.
    audience: Audience,
    /// When each client last fetched something of a live broadcast, at most
    /// [`MAX_CLIENTS`] entries.
    clients: Mutex<HashMap<(String, std::net::IpAddr), std::time::Instant>>,
    /// The broadcasts whose viewers were set last time (set to 0 once they end).
    counted: Mutex<HashSet<String>>,
    /// Closed recordings, for webhooks.
    ready: tokio::sync::broadcast::Sender<gopbus_control::RecordingReady>,
}

/// Clients remembered for the viewer count (past it, new ones are not counted).
const MAX_CLIENTS: usize = 100_000;
/// A client that fetched nothing for this long is no longer a viewer.
const CLIENT_GONE: Duration = Duration::from_secs(10);

impl Hls {
    /// An HLS subscriber with `config`, counting its audience on its own.
    pub fn new(config: HlsConfig) -> Self {
        Self::with_audience(config, Audience::default())
    }

    /// An HLS subscriber with `config` that counts its viewers (distinct
    /// client addresses that fetched a broadcast's playlists or media in the
    /// last 10 s) and the bytes it serves in `audience` (the node bus's).
    pub fn with_audience(config: HlsConfig, audience: Audience) -> Self {
        let waiting = Arc::new(tokio::sync::Semaphore::new(config.max_waiting));
        let uploader = config.s3.clone().map(|t| Arc::new(upload::Uploader::new(t, config.recordings.clone())));
        let inner = Inner {
            config,
            live: DashMap::new(),
            running: Mutex::default(),
            waiting,
            waiting_logged: 0.into(),
            uploader,
            audience,
            clients: Mutex::default(),
            counted: Mutex::default(),
            ready: tokio::sync::broadcast::channel(256).0,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Recordings as they are closed (the broadcast ended, or the server
    /// stops), from now on.
    pub fn recordings_ready(&self) -> tokio::sync::broadcast::Receiver<gopbus_control::RecordingReady> {
        self.inner.ready.subscribe()
    }

    /// The OpenAPI document of [`api`](Self::api)'s routes.
    pub fn api_doc() -> utoipa::openapi::OpenApi {
        <api::RecordingsDoc as utoipa::OpenApi>::openapi()
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
        // Watch first: what starts while old recordings are being closed is not missed.
        let mut announcements = bus.announcements();
        self.off_runtime(Self::close_unfinished).await;
        let upload = self.start_upload();
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        loop {
            let a = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = retention.tick() => {
                    self.off_runtime(Self::enforce_limits).await;
                    self.count_viewers();
                    continue;
                }
                a = announcements.next() => a,
            };
            for (key, name, tracks) in
                variant_streams(&a, self.inner.config.opus).into_iter().filter(|(k, _, _)| self.claim(k))
            {
                let tracks: Vec<&str> = tracks.iter().map(String::as_str).collect();
                let sub = bus.subscribe_tracks(&name, &tracks, SubscribeOptions::default());
                let (me, stop) = (self.clone(), shutdown.clone());
                tracker.spawn(async move {
                    segmenter::segment(&me, &key, sub, false, stop).await;
                    me.release(&key);
                });
            }
            for name in started(a).into_iter().filter(|n| self.claim(n)) {
                let sub = bus.subscribe(&name, SubscribeOptions::default());
                if !bus.is_live(&name) {
                    // Ended already: this subscriber would wait on an empty slot.
                    self.release(&name);
                    continue;
                }
                let (me, stop) = (self.clone(), shutdown.clone());
                tracker.spawn(async move {
                    segmenter::segment(&me, &name, sub, true, stop).await;
                    me.release(&name);
                });
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        Self::finish_upload(upload).await;
    }

    /// Like [`run`](Self::run) for the broadcasts of a remote bus node (`gopbus
    /// hls --bus`): it watches the node's announcements and segments each
    /// broadcast through a subscriber that reconnects by itself; a lost watch
    /// is re-established with backoff. Until `shutdown`.
    pub async fn run_remote(self, remote: Remote, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        self.off_runtime(Self::close_unfinished).await;
        let upload = self.start_upload();
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        'connect: loop {
            let Some((_client, mut watch)) = remote.watch(&mut backoff, &shutdown).await else { break };
            tracing::info!(bus = %remote.url, "HLS watching the bus");
            loop {
                let a = tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    _ = retention.tick() => {
                        self.off_runtime(Self::enforce_limits).await;
                        self.count_viewers();
                        continue;
                    }
                    a = watch.next() => a,
                };
                let Some(a) = a else {
                    tracing::warn!(bus = %remote.url, "bus watch lost; watching again");
                    continue 'connect;
                };
                let variants = variant_streams(&a, self.inner.config.opus).into_iter();
                let sources = started(a).into_iter().map(|name| (name.clone(), name, Vec::new()));
                for (key, name, tracks) in variants.chain(sources).filter(|(k, _, _)| self.claim(k)) {
                    let record = tracks.is_empty();
                    let config = ResubscribeConfig {
                        remote: remote.clone(),
                        broadcast: name.clone(),
                        tracks,
                        bus: BusConfig { window: 4, max_lag: 4 },
                        max_rate: None,
                        max_backoff: Duration::from_secs(3),
                    };
                    let (me, stop) = (self.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        match Resubscriber::connect(config, stop.child_token()).await {
                            Ok(sub) => segmenter::segment(&me, &key, sub, record, stop).await,
                            Err(e) => tracing::warn!(broadcast = %key, error = %e, "HLS could not subscribe"),
                        }
                        me.release(&key);
                    });
                }
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        Self::finish_upload(upload).await;
    }

    /// Starts the S3 upload task, if configured.
    fn start_upload(&self) -> Option<(tokio::task::JoinHandle<()>, CancellationToken)> {
        let uploader = self.inner.uploader.clone()?;
        let stop = CancellationToken::new();
        Some((tokio::spawn(uploader.run(stop.clone())), stop))
    }

    /// Lets the upload task make its last pass (what the closing recordings wrote), 10 s at most.
    async fn finish_upload(upload: Option<(tokio::task::JoinHandle<()>, CancellationToken)>) {
        if let Some((task, stop)) = upload {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
                tracing::warn!("S3 upload did not finish in 10 s; the rest is uploaded at the next start");
            }
        }
    }

    /// A session's recording changed: the uploader (if any) looks at it.
    fn recorded(&self, dir: &std::path::Path) {
        if let Some(u) = &self.inner.uploader {
            u.mark(dir);
        }
    }

    /// A client at `ip` fetched `bytes` of live broadcast `name` (`None`: not
    /// counted, the request was refused or is not about a live broadcast).
    pub(crate) fn served(&self, name: &str, ip: Option<std::net::IpAddr>, bytes: u64) {
        if !self.inner.live.contains_key(name) {
            return;
        }
        self.inner.audience.sent(name, Protocol::Hls, bytes);
        let Some(ip) = ip else { return };
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if let Some(seen) = clients.get_mut(&(name.to_owned(), ip)) {
            *seen = now;
        } else if clients.len() < MAX_CLIENTS {
            clients.insert((name.to_owned(), ip), now);
        }
    }

    /// Sets each broadcast's HLS viewers (clients seen lately) in the audience
    /// and forgets clients gone quiet.
    fn count_viewers(&self) {
        let mut per: HashMap<String, u64> = HashMap::new();
        {
            let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients.retain(|_, seen| seen.elapsed() < CLIENT_GONE);
            for (name, _) in clients.keys() {
                *per.entry(name.clone()).or_default() += 1;
            }
        }
        // Renditions and audio groups (`NAME/480p`) count for their broadcast.
        let live: HashSet<String> =
            self.inner.live.iter().map(|e| e.key().clone()).filter(|k| !k.contains('/')).collect();
        let mut counted = self.inner.counted.lock().unwrap_or_else(|e| e.into_inner());
        for gone in counted.difference(&live) {
            self.inner.audience.set_viewers(gone, Protocol::Hls, 0);
        }
        for name in &live {
            self.inner.audience.set_viewers(name, Protocol::Hls, per.get(name).copied().unwrap_or(0));
        }
        *counted = live;
    }

    /// Marks `name` as being segmented; false if it already is.
    fn claim(&self, name: &str) -> bool {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned())
    }

    fn release(&self, name: &str) {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// Runs a directory walk on the blocking pool.
    async fn off_runtime(&self, work: fn(&Self) -> Vec<PathBuf>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || work(&me)).await;
    }

    /// The sessions being recorded now, as (name, session). An ended session's
    /// live state lingers a little for players; it is not recording.
    pub(crate) fn recording_now(&self) -> HashSet<(String, String)> {
        self.inner
            .live
            .iter()
            .filter(|e| !e.value().edge().ended)
            .map(|e| (e.key().clone(), e.value().session.clone()))
            .collect()
    }

    /// Closes recordings that a previous process left open (killed mid-broadcast):
    /// their playlist becomes `VOD` with `#EXT-X-ENDLIST`, so players treat them
    /// as the finished recordings they are. Returns the sessions closed.
    pub fn close_unfinished(&self) -> Vec<PathBuf> {
        let live = self.recording_now();
        let mut closed = Vec::new();
        for s in recordings(&self.inner.config.recordings) {
            if live.contains(&(s.name.clone(), s.session.clone())) {
                continue;
            }
            let path = s.dir.join("index.m3u8");
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            if text.contains("#EXT-X-ENDLIST") {
                continue;
            }
            let fixed = text.replace("#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-PLAYLIST-TYPE:VOD") + "#EXT-X-ENDLIST\n";
            let tmp = path.with_extension("m3u8.tmp");
            match std::fs::write(&tmp, fixed).and_then(|()| std::fs::rename(&tmp, &path)) {
                Ok(()) => {
                    tracing::info!(recording = %s.dir.display(), "recording left open by a stopped process closed");
                    closed.push(s.dir);
                }
                Err(e) => {
                    tracing::warn!(recording = %s.dir.display(), error = %e, "could not close an unfinished recording")
                }
            }
        }
        closed
    }

    /// Deletes the oldest finished recordings while there are more than
    /// `max_recordings` or they take more than `max_recording_bytes`. Sessions
    /// being recorded are never deleted. Returns the sessions deleted.
    pub fn enforce_limits(&self) -> Vec<PathBuf> {
        let c = &self.inner.config;
        let mut sessions = recordings(&c.recordings);
        let recording = self.recording_now();
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
            if self.inner.uploader.is_some() && !s.dir.join(upload::UPLOADED).exists() {
                tracing::warn!(recording = %s.dir.display(), "recording limit reached before this recording was uploaded to S3; deleting it anyway");
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

/// The live-only streams an announcement calls for, as (key, broadcast,
/// tracks): for a broadcast with renditions (H.264 `video/…` derived
/// tracks), or with an Opus track when `opus` is asked for, each
/// rendition's video (`NAME/480p`), the source's video (`NAME/video`) and
/// audio (`NAME/audio`) on their own, and the Opus track (`NAME/opus`) — the
/// variants and the audio groups of the multivariant playlist.
fn variant_streams(a: &Announcement, opus: bool) -> Vec<(String, String, Vec<String>)> {
    let catalogs: Vec<&gopbus_bus::Catalog> = match a {
        Announcement::Started(c) | Announcement::Changed(c) => vec![c],
        Announcement::Live(list) => list.iter().collect(),
        Announcement::Ended(_) => Vec::new(),
    };
    let mut out = Vec::new();
    for c in catalogs {
        let renditions: Vec<&str> = c
            .tracks
            .iter()
            .filter(|t| t.codec.name() == "h264" && t.name.starts_with("video/"))
            .map(|t| t.name.as_str())
            .collect();
        let opus = opus && c.track(OPUS_TRACK).is_some_and(|t| t.codec.name() == "opus");
        if renditions.is_empty() && !opus {
            continue;
        }
        for published in ["video", "audio"] {
            if c.track(published).is_some() {
                out.push((format!("{}/{published}", c.name), c.name.clone(), vec![published.to_owned()]));
            }
        }
        if opus {
            out.push((format!("{}/opus", c.name), c.name.clone(), vec![OPUS_TRACK.to_owned()]));
        }
        for r in renditions {
            let label = r.trim_start_matches("video/");
            out.push((format!("{}/{label}", c.name), c.name.clone(), vec![r.to_owned()]));
        }
    }
    out
}

/// The broadcasts an announcement says are live or have just started.
fn started(a: Announcement) -> Vec<String> {
    match a {
        Announcement::Started(c) => vec![c.name],
        Announcement::Live(list) => list.into_iter().map(|c| c.name).collect(),
        Announcement::Changed(_) | Announcement::Ended(_) => Vec::new(),
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
