//! The in-process broker: broadcast names to their shared GoP windows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dashmap::DashMap;
use gopbus_proto::catalog::{derived_name, split_track_name, Announcement, Catalog, Ended};
use gopbus_proto::{check_track_name, EndReason, TrackId, TrackInfo};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::broadcast::Shared;
use crate::error::BusError;
use crate::publisher::Publisher;
use crate::subscriber::{SubscribeOptions, Subscriber};
use crate::tracks::TrackSubscriber;

/// Announcements kept for watchers that have not read them yet; a watcher
/// further behind gets [`Announcement::Live`] in place of what it missed.
pub const ANNOUNCEMENT_BACKLOG: usize = 1024;

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
    /// Frames pushed on the video track so far.
    pub video_frames: u64,
    /// When its first publisher attached, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Publisher takeovers so far.
    pub takeovers: u64,
}

/// The in-process bus. Cheap to clone; all clones share one set of broadcasts.
///
/// A broadcast's derived tracks (added with [`add_track`](Self::add_track)) are
/// broadcasts of their own on the bus, named `BROADCAST/TRACK`
/// (`alice/audio/opus`), whose GoPs start at the source's GoP timestamps; the
/// catalog of `alice` lists them, and [`subscribe_tracks`](Self::subscribe_tracks)
/// merges them with the source's tracks.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new(BusConfig::default())
    }
}

struct Inner {
    config: BusConfig,
    broadcasts: DashMap<Arc<str>, Arc<Shared>>,
    announcements: broadcast::Sender<Announcement>,
    audience: crate::Audience,
    /// Frames and payload bytes published on this bus since it started.
    pub(crate) published: [std::sync::atomic::AtomicU64; 2],
}

/// A stream of [`Announcement`]s ([`Bus::announcements`]): bounded and
/// lossy-safe. It starts with [`Announcement::Live`]; a reader that falls more
/// than [`ANNOUNCEMENT_BACKLOG`] behind gets a fresh `Live` in place of what it
/// missed, so it can always rebuild the truth.
pub struct Announcements {
    bus: Bus,
    rx: broadcast::Receiver<Announcement>,
    first: Option<Announcement>,
}

impl Announcements {
    /// The next announcement. Cancel-safe.
    pub async fn next(&mut self) -> Announcement {
        if let Some(first) = self.first.take() {
            return first;
        }
        match self.rx.recv().await {
            Ok(a) => a,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::info!(missed, "announcement reader fell behind; resynchronized with the live list");
                self.rx = self.rx.resubscribe();
                Announcement::Live(self.bus.catalogs())
            }
            // The sender lives as long as the bus, which this reader holds.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Bus {
    /// A bus with the given settings (`max_lag` is capped at `window`).
    pub fn new(mut config: BusConfig) -> Self {
        config.max_lag = config.max_lag.min(config.window as u64);
        let (announcements, _) = broadcast::channel(ANNOUNCEMENT_BACKLOG);
        let audience = crate::Audience::default();
        let published = Default::default();
        Self { inner: Arc::new(Inner { config, broadcasts: DashMap::new(), announcements, audience, published }) }
    }

    /// Frames and payload bytes published on this bus since it started (all
    /// broadcasts and derived tracks, local and announced over QUIC).
    pub fn published(&self) -> (u64, u64) {
        let [frames, bytes] = &self.inner.published;
        (frames.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed))
    }

    pub(crate) fn count_published(&self, bytes: usize) {
        let [frames, total] = &self.inner.published;
        frames.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Who watches what on this node, per protocol (see [`crate::audience`]).
    pub fn audience(&self) -> &crate::Audience {
        &self.inner.audience
    }

    /// Announcements of broadcasts starting, changing tracks and ending, from now on.
    pub fn announcements(&self) -> Announcements {
        // Subscribe before taking the snapshot, so nothing falls between the two.
        let rx = self.inner.announcements.subscribe();
        Announcements { bus: self.clone(), rx, first: Some(Announcement::Live(self.catalogs())) }
    }

    /// The catalog of the live broadcast `name`: its published tracks as of its
    /// newest GoP, then its live derived tracks. `None` when it is not live or
    /// has no GoP yet.
    pub fn catalog(&self, name: &str) -> Option<Catalog> {
        let source = self.inner.broadcasts.get(name).map(|s| s.clone()).filter(|s| s.is_live())?;
        let mut tracks = source.newest_header()?.tracks.clone();
        let prefix = format!("{name}/");
        let mut derived: Vec<TrackInfo> = self
            .inner
            .broadcasts
            .iter()
            .filter(|e| e.key().starts_with(&prefix) && e.value().is_live())
            .filter_map(|e| e.value().newest_header())
            .flat_map(|h| h.tracks.clone())
            .collect();
        derived.sort_by(|a, b| a.name.cmp(&b.name));
        tracks.extend(derived);
        Some(Catalog { name: name.to_owned(), tracks })
    }

    /// Every live broadcast (not its derived tracks) with its catalog, by name.
    pub fn catalogs(&self) -> Vec<Catalog> {
        let names: Vec<Arc<str>> =
            self.inner.broadcasts.iter().filter(|e| !e.key().contains('/')).map(|e| e.key().clone()).collect();
        let mut out: Vec<Catalog> = names.iter().filter_map(|n| self.catalog(n)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Adds the derived track `track` (`audio/opus`, `video/480p`) to the live
    /// broadcast `source`, without its stream key and without taking it over.
    ///
    /// The returned publisher publishes `source/track`: each GoP header lists
    /// exactly one track (its codec and configuration; the bus sets its id and
    /// name) and starts at the `start_dts` of the source GoP it renders, so
    /// players can switch between tracks at GoP boundaries. Its frames get the
    /// track's id. The track ends when the source ends, or when the publisher
    /// is dropped (another worker may then add it again; it keeps its id).
    /// While one worker holds the track, adding it again is refused.
    pub fn add_track(&self, source: &str, track: &str) -> Result<Publisher, BusError> {
        check_track_name(track).map_err(|e| BusError::InvalidTrack(format!("{track:?}: {e}")))?;
        if source.contains('/') {
            return Err(BusError::InvalidTrack(format!("{source:?} is itself a derived track")));
        }
        let parent = self
            .inner
            .broadcasts
            .get(source)
            .map(|s| s.clone())
            .filter(|s| s.is_live())
            .ok_or_else(|| BusError::NotLive(source.to_owned()))?;
        let name = derived_name(source, track);
        let id = derived_id(&parent, track)?;
        let publisher = self
            .publish_inner(&name, false)
            .ok_or_else(|| BusError::TrackTaken(name.clone()))?
            .for_track(id, Arc::from(track));
        // The source may have ended while this was set up: then so does the track.
        if !parent.is_live() {
            publisher.end(EndReason::PublisherLeft);
            return Err(BusError::NotLive(source.to_owned()));
        }
        tracing::info!(broadcast = %source, track = %track, id = id.0, "derived track added");
        Ok(publisher)
    }

    /// Subscribes to the tracks called `tracks` of broadcast `name` (published
    /// ones, `video` and `audio`, and derived ones, `audio/opus`): their frames
    /// come merged in decode order, GoP by GoP, each GoP header listing exactly
    /// the chosen tracks that it has. The first track drives: GoPs start at its
    /// keyframes and `opts` applies to it. An empty list means the published
    /// tracks. See [`TrackSubscriber`].
    pub fn subscribe_tracks(&self, name: &str, tracks: &[&str], opts: SubscribeOptions) -> TrackSubscriber {
        TrackSubscriber::new(self.clone(), name, tracks, opts)
    }

    /// Sends `a` to the watchers (none listening is fine).
    fn announce(&self, a: Announcement) {
        let _ = self.inner.announcements.send(a);
    }

    /// A broadcast opened a GoP: announce it if it started or its tracks changed.
    pub(crate) fn gop_opened(&self, name: &str, first: bool, tracks_changed: bool) {
        if !first && !tracks_changed {
            return;
        }
        match split_track_name(name) {
            (source, None) => {
                if let Some(c) = self.catalog(source) {
                    self.announce(if first { Announcement::Started(c) } else { Announcement::Changed(c) });
                }
            }
            (source, Some(_)) => {
                if let Some(c) = self.catalog(source) {
                    self.announce(Announcement::Changed(c));
                }
            }
        }
    }

    /// A broadcast ended: a source's derived tracks end with it, and the end is
    /// announced (a derived track's end changes its source's catalog).
    pub(crate) fn ended(&self, name: &str, reason: &EndReason, had_gop: bool) {
        match split_track_name(name) {
            (source, None) => {
                let prefix = format!("{source}/");
                let derived: Vec<Arc<Shared>> = self
                    .inner
                    .broadcasts
                    .iter()
                    .filter(|e| e.key().starts_with(&prefix))
                    .map(|e| e.value().clone())
                    .collect();
                for d in derived {
                    if d.terminate(reason) {
                        tracing::info!(broadcast = %d.name, %reason, "derived track ended with its source");
                        self.remove_if_same(&d);
                    }
                }
                if had_gop {
                    self.announce(Announcement::Ended(Ended { name: name.to_owned(), reason: reason.clone() }));
                }
            }
            (source, Some(_)) => {
                if let Some(c) = self.catalog(source) {
                    self.announce(Announcement::Changed(c));
                }
                self.release_source_if_unused(source);
            }
        }
    }

    /// The bus settings.
    pub fn config(&self) -> BusConfig {
        self.inner.config
    }

    /// Starts publishing `name`. If another publisher holds it, this one takes
    /// over: the old handle's current GoP is cut short and its operations fail with
    /// [`BusError::TakenOver`](crate::BusError::TakenOver); subscribers stay attached.
    ///
    /// A derived track's name (`alice/video/360p`, a track fetched from another
    /// node) gets this bus's id for that track, as [`add_track`](Self::add_track)
    /// gives: ids are assigned per bus, so the id the track had upstream may be
    /// another track's here.
    pub fn publish(&self, name: &str) -> Publisher {
        let publisher = self.publish_inner(name, true).expect("takeover allowed");
        let (source, Some(track)) = split_track_name(name) else { return publisher };
        match derived_id(&self.slot(source), track) {
            Ok(id) => publisher.for_track(id, Arc::from(track)),
            Err(e) => {
                tracing::warn!(broadcast = %name, error = %e, "derived track published with the ids it carries");
                publisher
            }
        }
    }

    /// Like [`publish`](Self::publish); with `takeover` false, `None` if `name` has a publisher.
    fn publish_inner(&self, name: &str, takeover_allowed: bool) -> Option<Publisher> {
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
            if takeover && !takeover_allowed {
                return None;
            }
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
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let _ = shared.stats.since_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
            if takeover {
                shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(broadcast = %name, "publisher took over");
            }
            shared.wake_all();
            return Some(Publisher::new(self.clone(), shared, epoch, token, last_dts));
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
                    video_frames: s.stats.video_frames.load(Ordering::Relaxed),
                    since_ms: s.stats.since_ms.load(Ordering::Relaxed),
                    takeovers: s.stats.takeovers.load(Ordering::Relaxed),
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

    /// Forgets the slot of `source` (kept for its derived tracks' ids) once
    /// nobody publishes it, waits for it, or publishes a track of it.
    fn release_source_if_unused(&self, source: &str) {
        let Some(shared) = self.inner.broadcasts.get(source).map(|s| s.clone()) else { return };
        if shared.read().publisher_token.is_some() {
            // A live source (the usual case): nothing to scan for.
            return;
        }
        let prefix = format!("{source}/");
        if !self.inner.broadcasts.iter().any(|e| e.key().starts_with(&prefix)) {
            self.release_if_idle(&shared);
        }
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

/// The id of `source`'s derived track `track` on this bus: the one it was
/// given before (a track added again keeps its id), else the next free one.
fn derived_id(source: &Shared, track: &str) -> Result<TrackId, BusError> {
    let mut ids = source.derived_ids.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, id)) = ids.iter().find(|(n, _)| n == track) {
        return Ok(*id);
    }
    let id = u8::try_from(usize::from(TrackId::FIRST_DERIVED.0) + ids.len())
        .map_err(|_| BusError::TooManyTracks(source.name.to_string()))?;
    ids.push((track.to_owned(), TrackId(id)));
    Ok(TrackId(id))
}
