//! One viewer: a peer connection (webrtc-rs) and a task that reads the
//! room's bus and writes RTP.
//!
//! Per viewer only the RTP header is made: SSRC, payload type (as
//! negotiated), sequence number and timestamp. The payloads are the room's
//! shared `Bytes`.
//!
//! Catching up: a viewer starts at the current GoP's keyframe, which with
//! OBS's 5–8 s keyframe interval can be seconds behind live. Frames older
//! than the live edge are sent at [`CATCH_UP_SPEED`] × real time with their
//! timestamps compressed by the same factor, so the browser shows a short
//! fast-forward and then plays at the live edge; audio starts once caught
//! up. Audio and video share one timestamp shift, so they stay in sync.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gopbus_bus::{Event, Subscriber};
use gopbus_proto::{Codec, TrackId};
use rtc::interceptor::{ReceiverReportBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    configure_nack, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::room::{Room, ViewerSlot};
use crate::{IceConfig, WebRtcError};

/// Speed at which a viewer plays the frames between its starting keyframe and the live edge.
pub(crate) const CATCH_UP_SPEED: i64 = 4;
/// A frame this far behind the live edge (ms) is caught up on, not played in real time.
const BEHIND_MS: i64 = 150;
const VIDEO_PT: u8 = 102;
const AUDIO_PT: u8 = 111;
/// A viewer must connect this soon after the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

struct Events {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: Arc<Notify>,
    candidates: Option<tokio::sync::mpsc::Sender<RTCIceCandidateInit>>,
}

#[async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_ice_candidate(&self, event: webrtc::peer_connection::RTCPeerConnectionIceEvent) {
        if let Some(tx) = &self.candidates {
            if let Ok(init) = event.candidate.to_json() {
                let _ = tx.try_send(init);
            }
        }
    }
}

/// A negotiated viewer: its connection, the answer, and what it sends.
pub(crate) struct Viewer {
    pub(crate) pc: Arc<dyn PeerConnection>,
    pub(crate) answer: String,
    video: (Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32),
    audio: (Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32),
    state: watch::Receiver<RTCPeerConnectionState>,
}

fn track(kind: RtpCodecKind, codec: &RTCRtpCodec, stream: &str) -> (Arc<TrackLocalStaticRTP>, u32) {
    let ssrc = rand_u32();
    let t = TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream.to_owned(),
        format!("{stream}-{kind}"),
        format!("{kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: codec.clone(),
            ..Default::default()
        }],
    ));
    (Arc::new(t), ssrc)
}

pub(crate) fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS random source");
    u32::from_le_bytes(b)
}

/// Answers `offer` for a viewer of `room`. `candidates`, when given, gets the
/// server's ICE candidates as they are found (trickle, for WebSocket
/// signaling); the answer itself always carries every host candidate.
pub(crate) async fn negotiate(
    room: &Room,
    offer: String,
    ice: &IceConfig,
    candidates: Option<tokio::sync::mpsc::Sender<RTCIceCandidateInit>>,
) -> Result<Viewer, WebRtcError> {
    let offer = RTCSessionDescription::offer(offer).map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
    let mut media = MediaEngine::default();
    let profile = room.video_config().map(|v| crate::rtp::profile_level_id(&v)).unwrap_or_else(|| "42e01f".into());
    let video_codec = RTCRtpCodec {
        mime_type: "video/H264".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"),
        rtcp_feedback: vec![],
    };
    let audio_codec = RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1".to_owned(),
        rtcp_feedback: vec![],
    };
    let internal = |e: webrtc::error::Error| WebRtcError::Internal(e.to_string());
    media
        .register_codec(
            RTCRtpCodecParameters { rtp_codec: video_codec.clone(), payload_type: VIDEO_PT },
            RtpCodecKind::Video,
        )
        .map_err(internal)?;
    media
        .register_codec(
            RTCRtpCodecParameters { rtp_codec: audio_codec.clone(), payload_type: AUDIO_PT },
            RtpCodecKind::Audio,
        )
        .map_err(internal)?;
    // NACK and receiver reports as webrtc-rs sets them up by default; the
    // sender reports are ours (see `Clock::sender_report`): webrtc-rs's map
    // each packet's RTP time to when it was sent, and the Opus audio is sent
    // later than the video it goes with (it is encoded from the AAC first).
    // Keyframe requests are let through to the viewer's task, last in the chain.
    let registry = configure_nack(Registry::new(), &mut media)
        .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        .with(Slot::from(14_000), crate::pli::KeyframeRequests::default());
    let mut settings = SettingEngineBuilder::new();
    if !ice.public_ips.is_empty() {
        settings = settings.with_nat_1to1_ips(ice.public_ips.clone(), RTCIceCandidateType::Host);
    }
    if ice.bind.is_loopback() {
        settings = settings.with_include_loopback_candidate(true);
    }
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let gathered = Arc::new(Notify::new());
    let events = Arc::new(Events { state: state_tx, gathered: gathered.clone(), candidates });
    let port = ice.ports.next_free(ice.bind)?;
    let pc = PeerConnectionBuilder::new()
        // No ICE servers for the server itself: it is the reachable side, and
        // nothing may be asked of the network on its behalf.
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings.build())
        .with_handler(events)
        .with_udp_addrs(vec![std::net::SocketAddr::new(ice.bind, port)])
        .build()
        .await
        .map_err(|e| WebRtcError::Internal(format!("peer connection on UDP {}:{port}: {e}", ice.bind)))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let (vt, vssrc) = track(RtpCodecKind::Video, &video_codec, room.name());
    let (at, assrc) = track(RtpCodecKind::Audio, &audio_codec, room.name());
    let result = async {
        let vs = pc.add_track(vt.clone() as Arc<dyn TrackLocal>).await.map_err(internal)?;
        let as_ = pc.add_track(at.clone() as Arc<dyn TrackLocal>).await.map_err(internal)?;
        pc.set_remote_description(offer).await.map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        let answer = pc.create_answer(None).await.map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        let notified = gathered.notified();
        pc.set_local_description(answer).await.map_err(internal)?;
        // Host candidates only: gathering takes milliseconds.
        let _ = tokio::time::timeout(Duration::from_secs(3), notified).await;
        let answer =
            pc.local_description().await.ok_or_else(|| WebRtcError::Internal("no local description".into()))?;
        Ok::<_, WebRtcError>((vs, as_, answer.sdp))
    }
    .await;
    match result {
        Ok((vs, as_, answer)) => Ok(Viewer { pc, answer, video: (vt, vs, vssrc), audio: (at, as_, assrc), state }),
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

async fn payload_type(sender: &Arc<dyn RtpSender>, default: u8) -> u8 {
    match sender.get_parameters().await {
        Ok(p) => p.rtp_parameters.codecs.first().map_or(default, |c| c.payload_type),
        Err(_) => default,
    }
}

/// What ended a viewer.
#[derive(Debug)]
pub(crate) enum Left {
    Closed,
    Failed,
    NeverConnected,
    Ended,
    Shutdown,
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed by the viewer",
            Self::Failed => "connection failed or lost",
            Self::NeverConnected => "never connected",
            Self::Ended => "the broadcast ended",
            Self::Shutdown => "server shutdown",
        })
    }
}

/// Per-viewer RTP state of one track.
struct Out {
    ssrc: u32,
    pt: u8,
    seq: u16,
    base: u32,
    packets: u32,
    octets: u32,
}

impl Out {
    fn packet(&mut self, payload: bytes::Bytes, timestamp: u32, marker: bool) -> rtp::Packet {
        let header = rtp::header::Header {
            version: 2,
            marker,
            payload_type: self.pt,
            sequence_number: self.seq,
            timestamp: self.base.wrapping_add(timestamp),
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.seq = self.seq.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        rtp::Packet { header, payload }
    }

    /// A sender report saying that media time `media_ms` (shifted) is now.
    fn report(&self, media_ms: i64, rate: i64) -> Box<dyn rtc::rtcp::Packet> {
        Box::new(rtc::rtcp::sender_report::SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp_now(),
            rtp_time: self.base.wrapping_add((media_ms * rate) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// The wall clock as a 64-bit NTP timestamp (seconds since 1900, 32.32).
fn ntp_now() -> u64 {
    const UNIX_TO_NTP: u64 = 2_208_988_800;
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ((d.as_secs() + UNIX_TO_NTP) << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// Sends the room to the viewer until it leaves, the broadcast ends or
/// `stop` fires; what it sends and skips is counted on `counted` (the node's
/// audience). Returns why it stopped and how many GoPs it skipped.
pub(crate) async fn run(
    viewer: Viewer,
    room: Arc<Room>,
    mut sub: Subscriber,
    (slot, counted): (ViewerSlot, gopbus_bus::Viewer),
    stop: CancellationToken,
) -> (Left, u64) {
    let Viewer { pc, video, audio, mut state, .. } = viewer;
    // Wait until connected.
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            let s = *state.borrow_and_update();
            match s {
                RTCPeerConnectionState::Connected => return true,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => return false,
                _ => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                r = state.changed() => if r.is_err() { return false },
            }
        }
    })
    .await;
    if !matches!(connected, Ok(true)) {
        let _ = pc.close().await;
        return (if stop.is_cancelled() { Left::Shutdown } else { Left::NeverConnected }, 0);
    }
    let out = |ssrc, pt| Out { ssrc, pt, seq: rand_u32() as u16, base: rand_u32(), packets: 0, octets: 0 };
    let mut v = out(video.2, payload_type(&video.1, VIDEO_PT).await);
    let mut a = out(audio.2, payload_type(&audio.1, AUDIO_PT).await);
    let mut reports = tokio::time::interval(Duration::from_secs(1));
    let mut clock = Clock::default();
    let mut video_id: Option<TrackId> = None;
    let mut skipped = 0u64;
    let mut live_frames = 0u32;
    let mut rtcp_open = true;
    let mut last_restart: Option<tokio::time::Instant> = None;
    let left = loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break Left::Shutdown,
            r = state.changed() => {
                match (r, *state.borrow()) {
                    (Err(_), _) => break Left::Closed,
                    (_, RTCPeerConnectionState::Closed) => break Left::Closed,
                    (_, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Disconnected) => break Left::Failed,
                    _ => continue,
                }
            }
            _ = reports.tick() => {
                // Audio and video map the same media time to the same wall
                // clock, so the browser lines them up by their timestamps.
                if let Some(media) = clock.media_now() {
                    if v.packets > 0 {
                        let _ = video.0.write_rtcp(vec![v.report(media, 90)]).await;
                    }
                    if a.packets > 0 {
                        let _ = audio.0.write_rtcp(vec![a.report(media, 48)]).await;
                    }
                }
                continue;
            }
            feedback = video.0.poll(), if rtcp_open => {
                use webrtc::media_stream::track_local::TrackLocalEvent;
                let Some(TrackLocalEvent::OnRtcpPacket(packets)) = feedback else {
                    rtcp_open = false;
                    continue;
                };
                if !packets.iter().any(|p| crate::pli::asks_for_keyframe(p.as_ref())) {
                    continue;
                }
                // Answered from the room's GoP window, at most once a second.
                if last_restart.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                    continue;
                }
                last_restart = Some(tokio::time::Instant::now());
                room.keyframe_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(broadcast = %room.name(), "keyframe requested by a viewer: restarting it at the current GoP's keyframe");
                sub = room.restart();
                clock.rebase();
                continue;
            }
            e = sub.next() => e,
        };
        match event {
            Event::Gop(h) => {
                video_id = h.tracks.iter().find(|t| matches!(t.codec, Codec::H264(_))).map(|t| t.id);
            }
            Event::Frame(f) => {
                let behind = room.live_dts().saturating_sub(f.header.dts) > BEHIND_MS;
                if Some(f.header.track) == video_id {
                    let (ts, wait) = clock.video(f.header.pts(), behind);
                    if let Some(wait) = wait {
                        tokio::select! {
                            _ = stop.cancelled() => break Left::Shutdown,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    let parts = f.payload.parts();
                    let last = parts.len().saturating_sub(1);
                    let mut sent = 0;
                    for (i, p) in parts.iter().enumerate() {
                        if video.0.write_rtp(v.packet(p.clone(), ts, i == last)).await.is_err() {
                            break;
                        }
                        sent += p.len() as u64;
                    }
                    counted.sent_frame(sent);
                    // Steady state only: not while catching up after a join or a skip.
                    live_frames = if behind { 0 } else { live_frames + 1 };
                    if live_frames > 30 && !parts.is_empty() {
                        if let Some(d) = room.since_pushed(f.header.dts) {
                            room.latency.record(d);
                        }
                    }
                } else if !behind {
                    if video_id.is_none() {
                        clock.anchor(f.header.dts);
                    }
                    let Some(ts) = clock.audio(f.header.dts) else { continue };
                    if let Some(p) = f.payload.parts().first() {
                        if audio.0.write_rtp(a.packet(p.clone(), ts, false)).await.is_ok() {
                            counted.sent_frame(p.len() as u64);
                        }
                    }
                }
            }
            Event::Skipped { from, to } => {
                skipped += 1;
                counted.skipped(1);
                room.skips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(broadcast = %room.name(), from, to, "WebRTC viewer fell behind; skipped to the newest keyframe");
            }
            Event::CutShort { .. } => {}
            Event::End(_) => break Left::Ended,
        }
    };
    drop(slot);
    let _ = pc.close().await;
    (left, skipped)
}

/// A viewer's clock: source timestamps (ms) to RTP timestamps, compressing
/// the catch-up, and the pacing of the catch-up.
#[derive(Default)]
struct Clock {
    /// Subtracted from source timestamps (ms): what catching up saved.
    shift: i64,
    last_pts: Option<i64>,
    /// Wall clock and shifted pts of the first video frame, for pacing.
    start: Option<(tokio::time::Instant, i64)>,
    /// Which shifted media time was live when (for sender reports); set
    /// once live, again after each catch-up.
    anchor: Option<(tokio::time::Instant, i64)>,
    /// The next video frame continues the RTP timeline one frame after the
    /// last (a restart went back in source time).
    rebase: bool,
    last_shifted: Option<i64>,
}

impl Clock {
    /// The RTP timestamp (90 kHz) of a video frame, and how long to wait
    /// before sending it when it is caught up on.
    fn video(&mut self, pts: i64, behind: bool) -> (u32, Option<Duration>) {
        if std::mem::take(&mut self.rebase) {
            if let Some(last) = self.last_shifted {
                // 33 ms after the last frame sent: timestamps never go back.
                self.shift = pts - (last + 33);
                self.last_pts = None;
                self.start = None;
                self.anchor = None;
            }
        }
        if let (Some(last), true) = (self.last_pts, behind) {
            let step = (pts - last).max(0);
            self.shift += step - step / CATCH_UP_SPEED;
        }
        self.last_pts = Some(pts);
        let shifted = pts - self.shift;
        self.last_shifted = Some(shifted);
        let now = tokio::time::Instant::now();
        let wait = match self.start {
            Some((t0, p0)) if behind => {
                let due = t0 + Duration::from_millis((shifted - p0).max(0) as u64);
                due.checked_duration_since(now)
            }
            Some(_) => None,
            None => {
                self.start = Some((now, shifted));
                None
            }
        };
        if behind {
            self.anchor = None;
        } else {
            // Live: re-anchor the pacing so a later catch-up starts from now.
            self.start = Some((now, shifted));
            self.anchor.get_or_insert((now, shifted));
        }
        ((shifted * 90) as u32, wait)
    }

    /// The next video frame is a restart at an earlier keyframe.
    fn rebase(&mut self) {
        self.rebase = true;
    }

    /// Anchors the media clock at a live frame (audio-only broadcasts).
    fn anchor(&mut self, dts: i64) {
        self.anchor.get_or_insert((tokio::time::Instant::now(), dts - self.shift));
    }

    /// The shifted media time that is live now, once anchored.
    fn media_now(&self) -> Option<i64> {
        self.anchor.map(|(at, media)| media + at.elapsed().as_millis() as i64)
    }

    /// The RTP timestamp (48 kHz) of an audio frame, once video (if any) set the clock.
    fn audio(&mut self, dts: i64) -> Option<u32> {
        Some(((dts - self.shift) * 48) as u32)
    }
}
