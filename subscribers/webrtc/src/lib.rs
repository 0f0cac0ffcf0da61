//! The WebRTC subscriber: browsers watch a broadcast with sub-second latency.
//!
//! # Role
//!
//! - **Opus, once per broadcast.** [`WebRtc::run`] follows the bus's
//!   announcements and, for every broadcast with AAC audio, adds the derived
//!   track `audio/opus` (fdk-aac → rubato → libopus, [`opus`]). A second
//!   node that finds the track taken uses the first one's.
//! - **H.264 passthrough, packetized once.** A [`room::Room`] per watched
//!   broadcast turns each frame into RTP payloads once and shares them with
//!   every viewer; per viewer only the RTP header differs ([`viewer`]).
//! - **Signaling**: WHEP (`POST /whep/NAME`, `DELETE /whep/NAME/ID`, CORS
//!   open) and a WebSocket (`/ws/NAME`, JSON offer/answer/candidates), plus
//!   the watch page `/watch/NAME` and the list of live broadcasts `/`.
//!
//! # Contract
//!
//! - A viewer never slows the publisher or another viewer: each has its own
//!   task and its own cursor on the room's bus, and one that falls a GoP
//!   behind skips to the newest keyframe (logged, counted).
//! - A source with B-frames is not sent as video (browsers do not reorder
//!   frames); its viewers get the audio, and the page, the stats and the log
//!   say why.
//! - Bounded: viewers per node and per broadcast, negotiations in progress,
//!   and the size of an offer each have a limit; past it the request gets a
//!   clear HTTP error.

pub mod opus;
mod pli;
mod room;
pub mod rtp;
mod server;
mod viewer;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use gopbus_bus::node::{Backoff, Remote};
use gopbus_bus::quic::{BusClient, QuicError};
use gopbus_bus::{Announcement, Bus, BusConfig, BusError, StartAt, SubscribeOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use opus::{AacToOpus, OpusSettings};
pub use room::VideoState;

/// Why a viewer could not be added.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// Nothing is published under that name.
    #[error("broadcast {0:?} is not live")]
    NotLive(String),
    /// The SDP offer was refused.
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    /// A limit was reached.
    #[error("{0}")]
    Full(String),
    /// Something failed on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A STUN or TURN server handed to browsers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port?transport=udp`.
    pub urls: String,
    /// TURN user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The UDP ports peer connections bind: each viewer needs one (webrtc-rs
/// has no single-port mux), taken in turn from the range.
#[derive(Debug)]
pub struct PortRange {
    first: u16,
    last: u16,
    next: AtomicU32,
}

impl PortRange {
    /// Any free port, chosen by the OS.
    pub const fn any() -> Self {
        Self { first: 0, last: 0, next: AtomicU32::new(0) }
    }

    /// The ports `first..=last`.
    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first == 0 || last < first {
            return Err(format!("bad UDP port range {first}-{last}"));
        }
        Ok(Self { first, last, next: AtomicU32::new(0) })
    }

    /// How many ports the range holds (0: any).
    pub const fn len(&self) -> usize {
        if self.first == 0 {
            0
        } else {
            (self.last - self.first) as usize + 1
        }
    }

    /// Whether the OS chooses the ports.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next port of the range that can be bound on `ip` now (0 when the
    /// OS chooses).
    fn next_free(&self, ip: IpAddr) -> Result<u16, WebRtcError> {
        let n = self.len();
        if n == 0 {
            return Ok(0);
        }
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % n;
            let port = self.first + i as u16;
            if std::net::UdpSocket::bind((ip, port)).is_ok() {
                return Ok(port);
            }
        }
        tracing::warn!(first = self.first, last = self.last, "WebRTC: every UDP port of the range is in use");
        Err(WebRtcError::Full(format!("every UDP port in {}-{} is in use", self.first, self.last)))
    }
}

/// Addresses and servers for ICE.
#[derive(Debug, Clone)]
pub struct IceConfig {
    /// The address peer connections bind (`0.0.0.0`: every interface but loopback).
    pub bind: IpAddr,
    /// Their UDP ports.
    pub ports: Arc<PortRange>,
    /// Addresses announced instead of the bound ones (1:1 NAT, `--webrtc-public-ip`).
    pub public_ips: Vec<String>,
    /// Servers handed to browsers (WHEP `Link` headers, the WebSocket hello).
    pub ice_servers: Vec<IceServer>,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: Arc::new(PortRange::any()),
            public_ips: Vec::new(),
            ice_servers: Vec::new(),
        }
    }
}

/// Settings of the WebRTC subscriber.
#[derive(Debug, Clone)]
pub struct WebRtcConfig {
    /// ICE.
    pub ice: IceConfig,
    /// The Opus encoder.
    pub opus: OpusSettings,
    /// Make the Opus track here (else only use one another node makes).
    pub transcode: bool,
    /// Viewers on this node.
    pub max_viewers: usize,
    /// Viewers of one broadcast.
    pub max_viewers_per_broadcast: usize,
    /// Negotiations in progress at once.
    pub max_signaling: usize,
    /// Largest SDP offer accepted, bytes.
    pub max_offer_bytes: usize,
    /// Offers (WHEP and WebSocket) one client address may make per minute.
    pub offers_per_minute: u32,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            ice: IceConfig::default(),
            opus: OpusSettings::default(),
            transcode: true,
            max_viewers: 1000,
            max_viewers_per_broadcast: 500,
            max_signaling: 32,
            max_offer_bytes: 32 * 1024,
            offers_per_minute: 60,
        }
    }
}

struct Session {
    name: String,
    stop: CancellationToken,
}

struct Inner {
    config: WebRtcConfig,
    bus: Bus,
    rooms: DashMap<String, Arc<room::Room>>,
    sessions: DashMap<String, Session>,
    viewers: AtomicUsize,
    signaling: Semaphore,
    /// Offers per client address in the current minute: (window start, count).
    offers: DashMap<IpAddr, (std::time::Instant, u32)>,
    /// Renditions fetched from the remote node (`gopbus webrtc`), by bus name.
    rendition_mirrors: DashMap<String, ()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Rooms are keyed by broadcast (`alice`), or by broadcast and the rendition
/// a viewer chose (`alice/video/480p`).
fn room_key(name: &str, rendition: Option<&str>) -> String {
    match rendition {
        None => name.to_owned(),
        Some(r) => format!("{name}/{r}"),
    }
}

/// The WebRTC subscriber of one node. Cheap to clone.
#[derive(Clone)]
pub struct WebRtc {
    inner: Arc<Inner>,
}

/// What the stats endpoint says about one broadcast.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BroadcastStatus {
    /// Its name.
    pub name: String,
    /// Whether it is live.
    pub live: bool,
    /// What WebRTC viewers get of its video.
    pub video: VideoState,
    /// Resolution sent (the source's, or the rendition's).
    pub width: Option<u32>,
    /// Resolution sent (the source's, or the rendition's).
    pub height: Option<u32>,
    /// The rendition sent in place of a source with B-frames (`video/720p`).
    pub rendition: Option<String>,
    /// Whether an Opus track exists.
    pub opus: bool,
    /// WebRTC viewers now.
    pub viewers: usize,
    /// GoPs skipped by viewers that fell behind.
    pub skipped_gops: u64,
    /// Keyframe requests (PLI, FIR) from viewers, answered from the GoP window.
    pub keyframe_requests: u64,
    /// Room bus → RTP handed to the viewers' connections, median of live video frames, ms.
    pub send_latency_p50_ms: Option<f64>,
    /// The same, 99th percentile.
    pub send_latency_p99_ms: Option<f64>,
    /// What the watch page shows the viewer.
    pub message: Option<String>,
}

impl WebRtc {
    /// A WebRTC node of its own (`gopbus webrtc`): its bus is filled from a
    /// remote node by [`run_remote`](Self::run_remote).
    pub fn new_remote(config: WebRtcConfig) -> Self {
        Self::new(config, Bus::new(BusConfig { window: 2, max_lag: 2 }))
    }

    /// The WebRTC subscriber of the in-process `bus`.
    pub fn new(config: WebRtcConfig, bus: Bus) -> Self {
        let signaling = Semaphore::new(config.max_signaling.max(1));
        Self {
            inner: Arc::new(Inner {
                config,
                bus,
                rooms: DashMap::new(),
                sessions: DashMap::new(),
                viewers: AtomicUsize::new(0),
                signaling,
                offers: DashMap::new(),
                rendition_mirrors: DashMap::new(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &WebRtcConfig {
        &self.inner.config
    }

    /// The HTTP routes: WHEP, WebSocket signaling, the watch page, the list.
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    /// Runs the Opus encoders (one per broadcast with AAC) until `shutdown`,
    /// then closes every viewer.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut announcements = inner.bus.announcements();
        loop {
            let a = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = announcements.next() => a,
            };
            if !inner.config.transcode {
                continue;
            }
            let started = match a {
                Announcement::Started(c) => vec![c],
                Announcement::Live(list) => list,
                Announcement::Changed(_) | Announcement::Ended(_) => Vec::new(),
            };
            for c in started {
                if c.track("audio").is_some_and(|t| t.codec.name() == "aac") && c.track(opus::TRACK).is_none() {
                    self.start_encoder(&c.name);
                }
            }
        }
        inner.shutdown.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
    }

    /// Like [`run`](Self::run) for the broadcasts of a remote bus node
    /// (`gopbus webrtc --bus`): every broadcast the node announces is fetched
    /// into this node's bus (its own bus is what rooms and the status read).
    /// The Opus track is taken from the node when it has one; otherwise this
    /// node adds it there and encodes it, unless another node won that race,
    /// whose track it then uses: one encoder per broadcast, however many
    /// WebRTC nodes. When the track ends upstream while the broadcast goes
    /// on (the encoding node died), the nodes race for it again. A lost
    /// connection is re-established with backoff.
    pub async fn run_remote(self, remote: Remote, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(std::time::Duration::from_secs(5));
        let mirrors: Arc<DashMap<String, ()>> = Arc::new(DashMap::new());
        'connect: loop {
            let Some((client, mut watch)) = remote.watch(&mut backoff, &shutdown).await else { break };
            let client = Arc::new(client);
            tracing::info!(bus = %remote.url, "WebRTC watching the bus");
            loop {
                let a = tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    a = watch.next() => a,
                };
                let Some(a) = a else {
                    tracing::warn!(bus = %remote.url, "bus watch lost; watching again");
                    continue 'connect;
                };
                let started = match a {
                    Announcement::Started(c) => vec![c],
                    Announcement::Live(list) => list,
                    Announcement::Changed(c) => {
                        self.mirror_rendition(&client, &c);
                        Vec::new()
                    }
                    Announcement::Ended(_) => Vec::new(),
                };
                for c in started {
                    self.mirror_rendition(&client, &c);
                    if mirrors.insert(c.name.clone(), ()).is_some() {
                        continue;
                    }
                    let (me, client, mirrors) = (self.clone(), client.clone(), mirrors.clone());
                    self.inner.tasks.spawn(async move {
                        if let Err(e) = me.mirror(&client, &c).await {
                            tracing::warn!(broadcast = %c.name, error = %e, "WebRTC could not fetch the broadcast");
                        }
                        mirrors.remove(&c.name);
                    });
                }
            }
        }
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Fetches the broadcast of `catalog` (and its Opus track, made here if
    /// nobody makes it) into this node's bus until it ends.
    async fn mirror(&self, client: &BusClient, catalog: &gopbus_bus::Catalog) -> Result<(), QuicError> {
        let name = &catalog.name;
        let bus = &self.inner.bus;
        let stop = &self.inner.shutdown;
        let mut source = client.subscribe_into(name, StartAt::CurrentGop, bus).await?;
        let track_name = format!("{name}/{}", opus::TRACK);
        let aac = catalog.track("audio").is_some_and(|t| t.codec.name() == "aac");
        let mut upstream_has = catalog.track(opus::TRACK).is_some();
        let mut _opus_out = None;
        loop {
            if upstream_has {
                match client.subscribe_into(&track_name, StartAt::CurrentGop, bus).await {
                    Ok(mut opus_in) => {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = source.finished() => return Ok(()),
                            _ = opus_in.finished() => tracing::info!(
                                broadcast = %name,
                                "the Opus track upstream ended while the broadcast goes on (its encoder is gone)"
                            ),
                        }
                    }
                    Err(QuicError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !(self.inner.config.transcode && aac) {
                break;
            }
            // Claim the track upstream first; publish it here once claimed.
            let outgoing = bus.subscribe(&track_name, SubscribeOptions::default());
            match client.add_track(name, opus::TRACK, outgoing).await {
                Ok(publication) => {
                    _opus_out = Some(publication);
                    // The source's first GoP arrives shortly after subscribing.
                    for _ in 0..50 {
                        if bus.is_live(name) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    self.start_encoder(name);
                    break;
                }
                Err(QuicError::Taken(_)) => {
                    tracing::info!(broadcast = %name, "Opus track made by another node; using it");
                    upstream_has = true;
                }
                Err(e) => {
                    tracing::warn!(broadcast = %name, error = %e, "could not add the Opus track upstream");
                    break;
                }
            }
            // Between two nodes racing for the track, or a track that ended as it was fetched.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = source.finished() => {}
        }
        Ok(())
    }

    /// Fetches the highest rendition of `catalog`'s broadcast into this node's
    /// bus (what its room sends in place of a B-frame source), once per track,
    /// until it ends upstream.
    fn mirror_rendition(&self, client: &Arc<BusClient>, catalog: &gopbus_bus::Catalog) {
        let Some(track) = room::best_rendition(catalog) else { return };
        let bus_name = format!("{}/{track}", catalog.name);
        if self.inner.rendition_mirrors.insert(bus_name.clone(), ()).is_some() {
            return;
        }
        let (me, client) = (self.clone(), client.clone());
        self.inner.tasks.spawn(async move {
            match client.subscribe_into(&bus_name, StartAt::CurrentGop, &me.inner.bus).await {
                Ok(mut sub) => {
                    tokio::select! {
                        _ = me.inner.shutdown.cancelled() => {}
                        _ = sub.finished() => {}
                    }
                }
                Err(e) => tracing::debug!(track = %bus_name, error = %e, "rendition not fetched"),
            }
            me.inner.rendition_mirrors.remove(&bus_name);
        });
    }

    fn start_encoder(&self, name: &str) {
        let bus = &self.inner.bus;
        match bus.add_track(name, opus::TRACK) {
            Ok(publisher) => {
                let source = bus.subscribe_tracks(name, &["audio"], SubscribeOptions::default());
                let settings = self.inner.config.opus;
                tracing::info!(broadcast = %name, bitrate = settings.bitrate, "Opus encoder started (AAC → Opus for WebRTC)");
                self.inner.tasks.spawn(opus::encode(source, publisher, settings, self.inner.shutdown.clone()));
            }
            Err(BusError::TrackTaken(_)) => tracing::info!(broadcast = %name, "Opus track made elsewhere; using it"),
            Err(e) => tracing::debug!(broadcast = %name, error = %e, "no Opus track"),
        }
    }

    /// The room of `name` (or of its `rendition`, `video/480p`, chosen by the
    /// viewer), started if need be.
    fn room(&self, name: &str, rendition: Option<&str>) -> Result<Arc<room::Room>, WebRtcError> {
        let inner = &self.inner;
        let catalog = inner.bus.catalog(name).ok_or_else(|| WebRtcError::NotLive(name.to_owned()))?;
        if let Some(r) = rendition {
            if catalog.track(r).is_none() {
                let have: Vec<&str> =
                    catalog.tracks.iter().map(|t| t.name.as_str()).filter(|t| t.starts_with("video/")).collect();
                return Err(WebRtcError::NotLive(format!("{name}/{r} (renditions now: {have:?})")));
            }
        }
        let key = room_key(name, rendition);
        let entry = inner.rooms.entry(key.clone());
        let room = match entry {
            dashmap::Entry::Occupied(e) if !e.get().is_closed() => return Ok(e.get().clone()),
            dashmap::Entry::Occupied(mut e) => {
                let r = room::Room::new(name, rendition);
                e.insert(r.clone());
                r
            }
            dashmap::Entry::Vacant(e) => e.insert(room::Room::new(name, rendition)).clone(),
        };
        let this = self.clone();
        let r = room.clone();
        inner.tasks.spawn(async move {
            room::run(r.clone(), this.inner.bus.clone(), this.inner.shutdown.clone()).await;
            this.inner.rooms.remove_if(&key, |_, v| Arc::ptr_eq(v, &r));
        });
        Ok(room)
    }

    /// The status of `name`, or of its `rendition` (for the stats endpoint and the watch page).
    pub fn status(&self, name: &str, rendition: Option<&str>) -> BroadcastStatus {
        let inner = &self.inner;
        let catalog = inner.bus.catalog(name);
        let room = inner.rooms.get(&room_key(name, rendition)).map(|r| r.clone()).filter(|r| !r.is_closed());
        let rendition = room.as_ref().and_then(|r| r.rendition()).or_else(|| rendition.map(str::to_owned));
        let video_cfg = catalog.as_ref().and_then(|c| {
            let sent = rendition.as_deref().unwrap_or(gopbus_proto::TrackInfo::VIDEO);
            c.tracks.iter().filter(|t| t.name == sent).find_map(|t| match &t.codec {
                gopbus_proto::Codec::H264(v) => Some(v.clone()),
                _ => None,
            })
        });
        let video = match (&room, &video_cfg) {
            (Some(r), _) => r.video_state(),
            (None, Some(_)) => VideoState::Unknown,
            (None, None) => VideoState::None,
        };
        let message = match (catalog.is_some(), video) {
            (false, _) => Some("Waiting for the publisher…".to_owned()),
            (true, VideoState::BFrames) => Some(
                "This stream's video uses B-frames, which browsers cannot play smoothly over WebRTC, and no \
                 transcoder has made a B-frame-free rendition of it yet: you hear the audio only. The publisher \
                 can turn B-frames off (x264 bframes=0), or watch it over HLS."
                    .to_owned(),
            ),
            _ => None,
        };
        BroadcastStatus {
            name: name.to_owned(),
            live: catalog.is_some(),
            video,
            width: video_cfg.as_ref().map(|v| v.width),
            height: video_cfg.as_ref().map(|v| v.height),
            rendition,
            opus: catalog.as_ref().is_some_and(|c| c.track(opus::TRACK).is_some()),
            viewers: room.as_ref().map_or(0, |r| r.viewers()),
            skipped_gops: room.as_ref().map_or(0, |r| r.skips.load(Ordering::Relaxed)),
            keyframe_requests: room.as_ref().map_or(0, |r| r.keyframe_requests.load(Ordering::Relaxed)),
            send_latency_p50_ms: room.as_ref().and_then(|r| r.latency.quantile_ms(0.5)),
            send_latency_p99_ms: room.as_ref().and_then(|r| r.latency.quantile_ms(0.99)),
            message,
        }
    }

    /// Every live broadcast's status.
    pub fn statuses(&self) -> Vec<BroadcastStatus> {
        self.inner.bus.catalogs().iter().map(|c| self.status(&c.name, None)).collect()
    }

    /// Negotiates a viewer of `name` for `offer` and starts sending once it
    /// connects. Returns the session id and the SDP answer.
    async fn add_viewer(
        &self,
        name: &str,
        rendition: Option<&str>,
        offer: String,
        candidates: Option<tokio::sync::mpsc::Sender<webrtc::peer_connection::RTCIceCandidateInit>>,
    ) -> Result<(String, String, Arc<dyn webrtc::peer_connection::PeerConnection>), WebRtcError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        if offer.len() > cfg.max_offer_bytes {
            return Err(WebRtcError::BadOffer(format!(
                "offer of {} bytes; the limit is {}",
                offer.len(),
                cfg.max_offer_bytes
            )));
        }
        let Ok(_permit) = inner.signaling.try_acquire() else {
            tracing::warn!(limit = cfg.max_signaling, "WebRTC: too many negotiations at once; offer refused");
            return Err(WebRtcError::Full(format!("more than {} negotiations in progress; retry", cfg.max_signaling)));
        };
        let room = self.room(name, rendition)?;
        if room.viewers() >= cfg.max_viewers_per_broadcast {
            tracing::warn!(broadcast = %name, limit = cfg.max_viewers_per_broadcast, "WebRTC: viewer limit of the broadcast reached");
            return Err(WebRtcError::Full(format!(
                "{name:?} has its maximum of {} viewers",
                cfg.max_viewers_per_broadcast
            )));
        }
        if inner.viewers.fetch_add(1, Ordering::AcqRel) >= cfg.max_viewers {
            inner.viewers.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(limit = cfg.max_viewers, "WebRTC: viewer limit of the node reached");
            return Err(WebRtcError::Full(format!("this node has its maximum of {} viewers", cfg.max_viewers)));
        }
        let negotiated = viewer::negotiate(&room, offer, &cfg.ice, candidates).await;
        let v = match negotiated {
            Ok(v) => v,
            Err(e) => {
                inner.viewers.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        };
        let id = format!("{:08x}{:08x}", viewer::rand_u32(), viewer::rand_u32());
        let stop = inner.shutdown.child_token();
        inner.sessions.insert(id.clone(), Session { name: name.to_owned(), stop: stop.clone() });
        let answer = v.answer.clone();
        let pc = v.pc.clone();
        let (sub, slot) = room.join();
        let counted = inner.bus.audience().join(name, gopbus_bus::Protocol::WebRtc);
        let this = self.clone();
        let sid = id.clone();
        tracing::info!(broadcast = %name, session = %id, video = ?room.video_state(), "WebRTC viewer joined");
        inner.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let (left, skipped) = viewer::run(v, room.clone(), sub, (slot, counted), stop).await;
            this.inner.viewers.fetch_sub(1, Ordering::AcqRel);
            this.inner.sessions.remove(&sid);
            tracing::info!(broadcast = %room.name(), session = %sid, reason = %left, skipped_gops = skipped,
                seconds = started.elapsed().as_secs(), "WebRTC viewer left");
        });
        Ok((id, answer, pc))
    }

    /// Counts an offer from `ip`; false (logged once a minute) past the limit.
    fn allow_offer(&self, ip: IpAddr) -> bool {
        const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
        let inner = &self.inner;
        let now = std::time::Instant::now();
        if inner.offers.len() > 100_000 {
            // Bounded: forget the windows that are over.
            inner.offers.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let mut e = inner.offers.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        let limit = inner.config.offers_per_minute;
        if e.1 == limit + 1 {
            tracing::warn!(client = %ip, limit, "WebRTC: too many offers from one address; refused for the rest of the minute");
        }
        e.1 <= limit
    }

    /// Ends the session `id` of broadcast `name`; false when there is none.
    fn end_session(&self, name: &str, id: &str) -> bool {
        match self.inner.sessions.get(id) {
            Some(s) if s.name == name => {
                s.stop.cancel();
                true
            }
            _ => false,
        }
    }

    /// Viewers on this node now.
    pub fn viewers(&self) -> usize {
        self.inner.viewers.load(Ordering::Relaxed)
    }
}
