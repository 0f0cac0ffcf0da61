//! A light WHEP viewer on webrtc-rs: offers to receive H.264 and Opus,
//! `POST`s the offer to `/whep/NAME`, and counts the RTP packets that
//! arrive (and the ones missing, from sequence-number gaps). For the
//! WebRTC benchmark and the slow-viewer test, where Chromium tabs would
//! cost more than the server under test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

/// What the viewers received, summed.
#[derive(Debug, Default)]
pub struct Counts {
    /// Video RTP packets.
    pub video_packets: AtomicU64,
    /// Audio RTP packets.
    pub audio_packets: AtomicU64,
    /// Payload bytes.
    pub bytes: AtomicU64,
    /// Packets missing (gaps in sequence numbers).
    pub lost: AtomicU64,
    /// Viewers connected (their first packet arrived).
    pub connected: AtomicU64,
    /// Viewers that failed to connect.
    pub failed: AtomicU64,
    /// Keyframe requests (PLI) sent.
    pub keyframe_requests: AtomicU64,
    /// Keyframe requests answered by a keyframe.
    pub keyframe_answers: AtomicU64,
    /// Microseconds from the keyframe request to the first keyframe after it.
    pub keyframe_answer_us: AtomicU64,
}

struct Events {
    gathered: Arc<tokio::sync::Notify>,
    counts: Arc<Counts>,
    first: Arc<AtomicU64>,
    /// Send a PLI this long after the first video packet.
    pli_after: Option<Duration>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (counts, first, pli_after) = (self.counts.clone(), self.first.clone(), self.pli_after);
        tokio::spawn(async move {
            let mut last: Option<u16> = None;
            let mut first_video: Option<Instant> = None;
            let mut requested: Option<Instant> = None;
            let mut answered = false;
            while let Some(event) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(p) = event else { continue };
                if first.swap(1, Ordering::Relaxed) == 0 {
                    counts.connected.fetch_add(1, Ordering::Relaxed);
                }
                let video = p.header.payload_type != 111;
                if video {
                    let now = Instant::now();
                    let since = now - *first_video.get_or_insert(now);
                    // A keyframe starts with the parameter sets (STAP-A or SPS).
                    let keyframe = matches!(p.payload.first().map(|b| b & 0x1f), Some(24 | 7));
                    if let (Some(at), false, true) = (requested, answered, keyframe) {
                        answered = true;
                        counts.keyframe_answer_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                        counts.keyframe_answers.fetch_add(1, Ordering::Relaxed);
                    }
                    if pli_after.is_some_and(|d| since >= d) && requested.is_none() {
                        let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                            sender_ssrc: 1,
                            media_ssrc: p.header.ssrc,
                        };
                        if track.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
                            requested = Some(Instant::now());
                            counts.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if video {
                    counts.video_packets.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.audio_packets.fetch_add(1, Ordering::Relaxed);
                }
                counts.bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                let seq = p.header.sequence_number;
                if let Some(l) = last {
                    let gap = seq.wrapping_sub(l);
                    if (2..1000).contains(&gap) {
                        counts.lost.fetch_add(u64::from(gap - 1), Ordering::Relaxed);
                    }
                }
                last = Some(seq);
            }
        });
    }
}

/// One viewer of `name` on the gopbus at `http`, receiving until `until`;
/// with `pli_after`, it asks for a keyframe (PLI) that long after its first
/// video packet.
pub async fn viewer(
    http: SocketAddr,
    name: &str,
    until: Instant,
    counts: Arc<Counts>,
    pli_after: Option<Duration>,
) -> anyhow::Result<()> {
    let mut media = MediaEngine::default();
    for (pt, fmtp) in [(102, "42e01f"), (108, "640c1f"), (110, "64001f")] {
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: "video/H264".into(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={fmtp}"),
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )?;
    }
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let gathered = Arc::new(tokio::sync::Notify::new());
    let events =
        Arc::new(Events { gathered: gathered.clone(), counts: counts.clone(), first: Arc::default(), pli_after });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(SettingEngineBuilder::new().with_include_loopback_candidate(true).build())
        .with_handler(events)
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await?;
    let recv = || Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() });
    pc.add_transceiver_from_kind(RtpCodecKind::Video, recv()).await?;
    pc.add_transceiver_from_kind(RtpCodecKind::Audio, recv()).await?;
    let offer = pc.create_offer(None).await?;
    let notified = gathered.notified();
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), notified).await;
    let offer = pc.local_description().await.context("no local description")?;
    let answer = post_offer(http, name, &offer.sdp).await?;
    pc.set_remote_description(RTCSessionDescription::answer(answer)?).await?;
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    pc.close().await?;
    Ok(())
}

/// `POST /whep/NAME` with `sdp`; the answer's SDP.
pub async fn post_offer(http: SocketAddr, name: &str, sdp: &str) -> anyhow::Result<String> {
    let mut conn = tokio::net::TcpStream::connect(http).await?;
    let head = format!(
        "POST /whep/{name} HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sdp.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(sdp.as_bytes()).await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 201") {
        bail!("WHEP answered {}: {body}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Starts `n` viewers of `name`, joining `spacing` apart and receiving
/// until `until`; their counts, and a task that ends when they have.
pub fn viewers(
    http: SocketAddr,
    name: &str,
    n: usize,
    spacing: Duration,
    until: Instant,
) -> (Arc<Counts>, tokio::task::JoinHandle<()>) {
    let counts = Arc::new(Counts::default());
    let (c, name) = (counts.clone(), name.to_owned());
    let task = tokio::spawn(async move {
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (c, name) = (c.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = viewer(http, &name, until, c.clone(), None).await {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("WHEP viewer failed: {e:#}");
                }
            }));
            tokio::time::sleep(spacing).await;
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    (counts, task)
}

impl Counts {
    /// The counts as JSON.
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "video_packets": g(&self.video_packets), "audio_packets": g(&self.audio_packets),
            "bytes": g(&self.bytes), "lost": g(&self.lost), "connected": g(&self.connected), "failed": g(&self.failed),
            "keyframe_requests": g(&self.keyframe_requests), "keyframe_answers": g(&self.keyframe_answers),
            "keyframe_answer_us": g(&self.keyframe_answer_us),
        })
    }
}
