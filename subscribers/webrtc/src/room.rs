//! One broadcast's WebRTC fan-out: its frames packetized into RTP payloads
//! once, on a private bus that every viewer of the broadcast reads.
//!
//! The room reads the source's `video` and `audio/opus` tracks (merged, GoP
//! by GoP) and republishes each GoP on a bus of its own whose frames are
//! lists of RTP payloads: a video frame as its H.264 packets (SPS/PPS before
//! each keyframe), an Opus frame as its one packet. Viewers are subscribers
//! of that bus, so they get the bus's guarantees for free: instant start at
//! the current GoP's keyframe, their own cursor, and a skip to the newest
//! keyframe when one falls behind — nobody waits for anybody.
//!
//! B-frames: browsers' WebRTC stacks do not reorder frames, so a source
//! whose frames are presented out of decode order (OBS's default) is not
//! sent as video as it is. Its viewers get the transcoder's B-frame-free
//! rendition (`video/720p`, a derived track) instead: from the start when the
//! source's SPS says it reorders and the rendition is there, or as soon as the
//! rendition appears. Otherwise the room decides from the stream's own
//! timestamps within its first [`ReorderDetector::DECIDE_AFTER`] video
//! frames, holding the frames until it knows; while there is no rendition,
//! viewers of a B-frame source get the audio and a message.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gopbus_bus::{Bus, BusConfig, Event, EventSource, Publisher, SubscribeOptions, Subscriber, TrackSubscriber};
use gopbus_proto::avc::{reorders, Reorder, ReorderDetector};
use gopbus_proto::{EndReason, Frame, GopHeader, Payload, TrackId, TrackInfo, VideoConfig};
use tokio_util::sync::CancellationToken;

use crate::rtp::{H264Packetizer, MAX_PAYLOAD};

/// What a room knows about its source's video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VideoState {
    /// Not decided yet (fewer than 30 video frames seen).
    Unknown,
    /// H.264 without B-frames: passed through.
    Passthrough,
    /// H.264 with B-frames: not sent (the browser would play it with judder).
    BFrames,
    /// The source has no video.
    None,
    /// The source has B-frames; its B-frame-free rendition is sent.
    Rendition,
}

impl VideoState {
    const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Passthrough,
            2 => Self::BFrames,
            3 => Self::None,
            4 => Self::Rendition,
            _ => Self::Unknown,
        }
    }
}

/// One broadcast's fan-out, shared by its viewers.
pub(crate) struct Room {
    name: String,
    bus: Bus,
    video: AtomicU8,
    /// Newest source dts packetized, ms.
    live_dts: AtomicI64,
    viewers: AtomicUsize,
    config: Mutex<Option<VideoConfig>>,
    /// The rendition sent in place of a B-frame source (`video/720p`), or
    /// the one the room's viewers chose.
    rendition: Mutex<Option<String>>,
    /// The viewers chose the rendition: it is sent whatever the source.
    chosen: bool,
    /// Viewers that fell a GoP behind and skipped.
    pub(crate) skips: AtomicU64,
    /// Keyframe requests from viewers.
    pub(crate) keyframe_requests: AtomicU64,
    /// When recent video frames were put on the room's bus: (dts, µs since `epoch`).
    stamps: Box<[(AtomicI64, AtomicU64)]>,
    epoch: std::time::Instant,
    /// Room bus → RTP handed to the viewer's connection, per live video frame.
    pub(crate) latency: LatencyHistogram,
    stop: CancellationToken,
}

const STAMPS: usize = 1024;

/// A histogram of durations in 100 µs buckets up to 200 ms (and one beyond).
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl LatencyHistogram {
    const STEP_US: u64 = 100;
    const BUCKETS: usize = 2001;

    fn new() -> Self {
        Self { buckets: (0..Self::BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }

    pub(crate) fn record(&self, d: Duration) {
        let i = ((d.as_micros() as u64) / Self::STEP_US).min(Self::BUCKETS as u64 - 1) as usize;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile in milliseconds (the bucket's upper edge), or `None` when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(((i as u64 + 1) * Self::STEP_US) as f64 / 1000.0);
            }
        }
        None
    }
}

impl Room {
    /// A room of `name`; with `chosen`, of that rendition only (`video/480p`).
    pub(crate) fn new(name: &str, chosen: Option<&str>) -> Arc<Self> {
        // One past GoP is enough: viewers start at the current one.
        let bus = Bus::new(BusConfig { window: 1, max_lag: 1 });
        Arc::new(Self {
            name: name.to_owned(),
            bus,
            video: AtomicU8::new(0),
            live_dts: AtomicI64::new(i64::MIN),
            viewers: AtomicUsize::new(0),
            config: Mutex::new(None),
            rendition: Mutex::new(chosen.map(str::to_owned)),
            chosen: chosen.is_some(),
            skips: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            stamps: (0..STAMPS).map(|_| (AtomicI64::new(i64::MIN), AtomicU64::new(0))).collect(),
            epoch: std::time::Instant::now(),
            latency: LatencyHistogram::new(),
            stop: CancellationToken::new(),
        })
    }

    /// The broadcast's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What happens to the source's video.
    pub(crate) fn video_state(&self) -> VideoState {
        VideoState::from_u8(self.video.load(Ordering::Acquire))
    }

    /// The source's H.264 configuration, once known.
    pub(crate) fn video_config(&self) -> Option<VideoConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rendition sent in place of the source's video, if any.
    pub(crate) fn rendition(&self) -> Option<String> {
        self.rendition.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The newest packetized timestamp (ms): the live edge viewers catch up to.
    pub(crate) fn live_dts(&self) -> i64 {
        self.live_dts.load(Ordering::Acquire)
    }

    fn stamp(&self, dts: i64) {
        let slot = &self.stamps[dts.rem_euclid(STAMPS as i64) as usize];
        slot.0.store(i64::MIN, Ordering::Release);
        slot.1.store(self.epoch.elapsed().as_micros() as u64, Ordering::Release);
        slot.0.store(dts, Ordering::Release);
    }

    /// How long ago the video frame `dts` was put on the room's bus, if known.
    pub(crate) fn since_pushed(&self, dts: i64) -> Option<Duration> {
        let slot = &self.stamps[dts.rem_euclid(STAMPS as i64) as usize];
        let at = slot.1.load(Ordering::Acquire);
        (slot.0.load(Ordering::Acquire) == dts).then(|| self.epoch.elapsed().saturating_sub(Duration::from_micros(at)))
    }

    /// Viewers now.
    pub(crate) fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Whether the room's task has stopped (the broadcast ended).
    pub(crate) fn is_closed(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// A viewer's cursor: it starts at the current GoP's keyframe.
    pub(crate) fn join(self: &Arc<Self>) -> (Subscriber, ViewerSlot) {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        let sub = self.bus.subscribe(&self.name, SubscribeOptions::default());
        (sub, ViewerSlot(self.clone()))
    }

    /// A new cursor at the current GoP's keyframe (a viewer's keyframe request).
    pub(crate) fn restart(&self) -> Subscriber {
        self.bus.subscribe(&self.name, SubscribeOptions::default())
    }

    fn set_video(&self, state: VideoState) {
        let old = VideoState::from_u8(self.video.swap(state as u8, Ordering::AcqRel));
        if old == state {
            return;
        }
        match state {
            VideoState::BFrames => tracing::warn!(
                broadcast = %self.name,
                "the source's H.264 has B-frames (frames presented out of decode order), which browsers' WebRTC \
                 plays with judder: WebRTC viewers get audio only until a transcoder publishes a B-frame-free \
                 rendition (gopbus serve makes one unless --browser-rendition none); or set the encoder to no \
                 B-frames (x264 `bframes=0`)"
            ),
            VideoState::Passthrough => tracing::info!(broadcast = %self.name, "WebRTC: H.264 passed through"),
            VideoState::Rendition => tracing::info!(
                broadcast = %self.name,
                rendition = self.rendition().as_deref(),
                "WebRTC: a B-frame-free rendition is sent"
            ),
            VideoState::None | VideoState::Unknown => {}
        }
    }
}

/// Counts a viewer while held.
pub(crate) struct ViewerSlot(Arc<Room>);

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a room with no viewers lives on (a reload is instant).
const LINGER: Duration = Duration::from_secs(30);
/// Most events held while deciding about B-frames (a few seconds of media).
const MAX_HELD: usize = 1024;

/// The highest H.264 rendition (`video/...` derived track) in `catalog`: what
/// the transcoder makes without B-frames.
pub(crate) fn best_rendition(catalog: &gopbus_bus::Catalog) -> Option<String> {
    catalog
        .tracks
        .iter()
        .filter(|t| t.name.starts_with("video/"))
        .filter_map(|t| match &t.codec {
            gopbus_proto::Codec::H264(v) => Some((v.height, t.name.clone())),
            _ => None,
        })
        .max()
        .map(|(_, name)| name)
}

/// What the room reads: the source's `video` (or its `rendition`) and the Opus track.
fn subscribe(bus: &Bus, name: &str, rendition: Option<&str>) -> TrackSubscriber {
    let video = rendition.unwrap_or(TrackInfo::VIDEO);
    let has_video = rendition.is_some() || bus.catalog(name).is_some_and(|c| c.track(TrackInfo::VIDEO).is_some());
    let tracks: Vec<&str> = if has_video { vec![video, crate::opus::TRACK] } else { vec![crate::opus::TRACK] };
    // A silent Opus worker (its node died and the track has not ended yet)
    // may hold the picture back half a second, not a whole GoP.
    bus.subscribe_tracks(name, &tracks, SubscribeOptions::default()).with_max_wait(Duration::from_millis(500))
}

/// Runs the room on `bus` until the broadcast ends, nobody watches for
/// [`LINGER`], or `shutdown` fires. A source with B-frames is swapped for
/// its rendition when there is one.
pub(crate) async fn run(room: Arc<Room>, bus: Bus, shutdown: CancellationToken) {
    let catalog = bus.catalog(&room.name);
    let source_reorders = catalog
        .as_ref()
        .and_then(|c| c.track(TrackInfo::VIDEO))
        .is_some_and(|t| matches!(&t.codec, gopbus_proto::Codec::H264(v) if reorders(&v.avcc) == Reorder::Yes));
    let start_on = if room.chosen {
        room.rendition()
    } else {
        catalog.as_ref().filter(|_| source_reorders).and_then(best_rendition)
    };
    let mut source = subscribe(&bus, &room.name, start_on.as_deref());
    let mut publisher = room.bus.publish(&room.name);
    let mut packer = Packer::new(room.clone());
    if let Some(r) = start_on {
        *room.rendition.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        room.set_video(VideoState::Rendition);
    }
    let mut idle_since: Option<tokio::time::Instant> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break EndReason::Shutdown,
            _ = check.tick() => {
                if room.viewers() > 0 {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= LINGER {
                    break EndReason::PublisherLeft;
                }
                if room.video_state() == VideoState::BFrames {
                    if let Some(r) = bus.catalog(&room.name).as_ref().and_then(best_rendition) {
                        // Continue on the rendition, from its current GoP.
                        source = subscribe(&bus, &room.name, Some(&r));
                        *room.rendition.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                        packer.switched();
                        room.set_video(VideoState::Rendition);
                    }
                }
                continue;
            }
            e = source.next_event() => e,
        };
        if let Event::End(reason) = event {
            break reason;
        }
        if packer.handle(event, &mut publisher).is_err() {
            break EndReason::Error("room publisher closed".into());
        }
    };
    tracing::debug!(broadcast = %room.name, %reason, "WebRTC room closed");
    room.stop.cancel();
    publisher.end(reason);
}

/// Packetizes events onto the room's bus, holding them until the B-frame
/// question is answered.
struct Packer {
    room: Arc<Room>,
    packetizer: Option<(Vec<u8>, H264Packetizer)>,
    detector: ReorderDetector,
    video_id: Option<TrackId>,
    held: Vec<Event>,
    out: Vec<bytes::Bytes>,
    /// After a switch to the rendition: audio up to this dts was sent already.
    audio_sent_until: Option<i64>,
}

impl Packer {
    fn new(room: Arc<Room>) -> Self {
        Self {
            room,
            packetizer: None,
            detector: ReorderDetector::default(),
            video_id: None,
            held: Vec::new(),
            out: Vec::new(),
            audio_sent_until: None,
        }
    }

    /// The room now reads the rendition from its current GoP: its video
    /// starts at that GoP's keyframe (viewers catch up to the live edge);
    /// audio already sent is not sent again.
    fn switched(&mut self) {
        self.audio_sent_until = Some(self.room.live_dts());
    }

    fn handle(&mut self, event: Event, publisher: &mut Publisher) -> Result<(), gopbus_bus::BusError> {
        match &event {
            Event::Gop(h) => self.on_header(h),
            Event::Frame(f)
                if Some(f.header.track) == self.video_id && self.room.video_state() != VideoState::Rendition =>
            {
                let state = self.detector.push(f.header.pts(), f.header.is_keyframe());
                match (state, self.room.video_state()) {
                    (Reorder::Yes, _) => self.room.set_video(VideoState::BFrames),
                    (Reorder::No, VideoState::Unknown) => self.room.set_video(VideoState::Passthrough),
                    _ => {}
                }
            }
            _ => {}
        }
        if self.room.video_state() == VideoState::Unknown && self.held.len() < MAX_HELD {
            self.held.push(event);
            return Ok(());
        }
        for e in std::mem::take(&mut self.held).into_iter().chain(std::iter::once(event)) {
            self.publish(e, publisher)?;
        }
        Ok(())
    }

    fn on_header(&mut self, h: &GopHeader) {
        let video = h.tracks.iter().find(|t| matches!(t.codec, gopbus_proto::Codec::H264(_)));
        self.video_id = video.map(|t| t.id);
        match h.video() {
            None => {
                if self.room.video_state() == VideoState::Unknown {
                    self.room.set_video(VideoState::None);
                }
            }
            Some(v) => {
                *self.room.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.clone());
                if self.room.video_state() == VideoState::None {
                    self.room.video.store(VideoState::Unknown as u8, Ordering::Release);
                }
            }
        }
    }

    fn publish(&mut self, event: Event, publisher: &mut Publisher) -> Result<(), gopbus_bus::BusError> {
        match event {
            Event::Gop(h) => {
                if let Some(v) = h.video() {
                    if self.packetizer.as_ref().is_none_or(|(avcc, _)| *avcc != v.avcc) {
                        self.packetizer = match H264Packetizer::new(&v.avcc, MAX_PAYLOAD) {
                            Ok(p) => Some((v.avcc.clone(), p)),
                            Err(e) => {
                                tracing::warn!(broadcast = %self.room.name, error = %e, "unusable avcC: no video");
                                None
                            }
                        };
                    }
                }
                publisher.open_gop((*h).clone())?;
            }
            Event::Frame(f) => {
                let video = Some(f.header.track) == self.video_id;
                if !video && self.audio_sent_until.is_some_and(|t| f.header.dts <= t) {
                    return Ok(());
                }
                let payload = if video {
                    if !matches!(self.room.video_state(), VideoState::Passthrough | VideoState::Rendition) {
                        return Ok(());
                    }
                    let Some((_, p)) = self.packetizer.as_ref() else { return Ok(()) };
                    self.out.clear();
                    if let Err(e) = p.packetize(&f.payload, f.header.is_keyframe(), &mut self.out) {
                        tracing::warn!(broadcast = %self.room.name, dts = f.header.dts, error = %e, "malformed H.264 frame dropped");
                        return Ok(());
                    }
                    Payload::from_parts(std::mem::take(&mut self.out))
                } else {
                    // Opus: one packet per frame.
                    Payload::from_bytes(f.payload.contiguous())
                };
                self.room.live_dts.fetch_max(f.header.dts, Ordering::AcqRel);
                publisher.push(Frame { header: f.header, payload })?;
                if video {
                    self.room.stamp(f.header.dts);
                }
            }
            Event::CutShort { .. } | Event::Skipped { .. } | Event::End(_) => {}
        }
        Ok(())
    }
}
