//! The publishing side of a connection: FLV-in-RTMP media onto the bus.
//!
//! Sans-IO: [`MediaIngest`] takes reassembled messages and calls the bus
//! [`Publisher`]; it never touches a socket. GoP policy:
//!
//! - every H.264 keyframe opens a GoP whose header carries the current avcC and
//!   ASC (a new avcC, such as a resolution change, takes effect at the keyframe
//!   that follows it);
//! - a broadcast without video opens a GoP every [`AUDIO_GOP_MS`] of audio;
//! - frames before the first GoP (inter frames, or audio while video is expected)
//!   are dropped and counted: no subscriber could decode them.

use bytes::Bytes;
use gopbus_bus::Publisher;
use gopbus_proto::aac::AudioSpecificConfig;
use gopbus_proto::avc::{DecoderConfigurationRecord, Sps};
use gopbus_proto::flv::{AacPacketType, AudioTagHeader, AvcPacketType, VideoTagHeader};
use gopbus_proto::media::{advance_parts, copy_prefix};
use gopbus_proto::{AudioConfig, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig};
use rml_rtmp::rml_amf0::{self, Amf0Value};

use crate::error::SessionError;
use crate::timeline::Timeline;

/// GoP length of audio-only broadcasts.
pub const AUDIO_GOP_MS: i64 = 1000;

/// The largest GoP a publisher may send: past either limit, the GoP is cut
/// short and its frames are dropped until the next keyframe.
#[derive(Debug, Clone, Copy)]
pub struct GopLimits {
    /// Payload bytes.
    pub max_bytes: usize,
    /// Milliseconds from its keyframe.
    pub max_ms: i64,
}

impl Default for GopLimits {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_ms: 60_000 }
    }
}

/// Turns one publisher's messages into bus GoPs and frames.
pub struct MediaIngest {
    publisher: Publisher,
    limits: GopLimits,
    /// Payload bytes in the current GoP.
    gop_bytes: usize,
    /// GoPs cut for exceeding the limits.
    pub cut_gops: u64,
    timeline: Timeline,
    video: Option<VideoConfig>,
    audio: Option<AudioConfig>,
    metadata: Option<Vec<u8>>,
    expect_video: bool,
    gop_start: Option<i64>,
    /// Frames dropped because no GoP could hold them yet.
    pub dropped: u64,
    /// Frames pushed.
    pub frames: u64,
}

impl MediaIngest {
    /// Starts ingesting onto `publisher`, rebasing timestamps after a takeover.
    pub fn new(publisher: Publisher) -> Self {
        Self::with_limits(publisher, GopLimits::default())
    }

    /// Like [`new`](Self::new), with GoP `limits`.
    pub fn with_limits(publisher: Publisher, limits: GopLimits) -> Self {
        let timeline = Timeline::new(publisher.previous_last_dts());
        Self {
            publisher,
            limits,
            gop_bytes: 0,
            cut_gops: 0,
            timeline,
            video: None,
            audio: None,
            metadata: None,
            expect_video: false,
            gop_start: None,
            dropped: 0,
            frames: 0,
        }
    }

    /// The bus publisher.
    pub const fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Consumes the ingest, returning the publisher (to end the broadcast).
    pub fn into_publisher(self) -> Publisher {
        self.publisher
    }

    /// A video message (type 9).
    pub fn handle_video(&mut self, timestamp: u32, mut parts: Vec<Bytes>, len: usize) -> Result<(), SessionError> {
        if len == 0 {
            return Ok(());
        }
        let mut head = [0u8; VideoTagHeader::LEN];
        let n = len.min(VideoTagHeader::LEN);
        copy_prefix(&parts, &mut head[..n])?;
        let tag = VideoTagHeader::parse(&head[..n])?;
        match tag.packet_type {
            AvcPacketType::SequenceHeader => {
                let body = contiguous(&parts, VideoTagHeader::LEN);
                let record = DecoderConfigurationRecord::parse(&body)?;
                let sps = Sps::parse(&record.sps[0])?;
                let config = VideoConfig {
                    avcc: body,
                    width: sps.width,
                    height: sps.height,
                    profile: sps.profile,
                    level: sps.level,
                };
                if self.video.as_ref() != Some(&config) {
                    tracing::info!(
                        broadcast = %self.publisher.name(),
                        width = sps.width, height = sps.height, profile = sps.profile, level = sps.level,
                        "video configuration"
                    );
                }
                self.video = Some(config);
                self.expect_video = true;
                Ok(())
            }
            AvcPacketType::EndOfSequence => Ok(()),
            AvcPacketType::Nalu => {
                let dts = self.timeline.map(timestamp);
                if tag.is_keyframe() {
                    if self.video.is_none() {
                        tracing::warn!(broadcast = %self.publisher.name(), "keyframe before any AVC sequence header; dropped");
                        self.dropped += 1;
                        return Ok(());
                    }
                    self.open_gop(dts)?;
                } else if self.gop_start.is_none() {
                    self.dropped += 1;
                    return Ok(());
                }
                advance_parts(&mut parts, VideoTagHeader::LEN);
                let flags = if tag.is_keyframe() { FrameFlags::KEYFRAME } else { FrameFlags::default() };
                self.push(TrackId::VIDEO, dts, tag.composition_time, flags, parts)
            }
        }
    }

    /// An audio message (type 8).
    pub fn handle_audio(&mut self, timestamp: u32, mut parts: Vec<Bytes>, len: usize) -> Result<(), SessionError> {
        if len == 0 {
            return Ok(());
        }
        let mut head = [0u8; AudioTagHeader::LEN];
        let n = len.min(AudioTagHeader::LEN);
        copy_prefix(&parts, &mut head[..n])?;
        let tag = AudioTagHeader::parse(&head[..n])?;
        match tag.packet_type {
            AacPacketType::SequenceHeader => {
                let body = contiguous(&parts, AudioTagHeader::LEN);
                let asc = AudioSpecificConfig::parse(&body)?;
                let config = AudioConfig {
                    asc: body,
                    object_type: asc.object_type,
                    sample_rate: asc.extension_sample_rate.unwrap_or(asc.sample_rate),
                    channels: asc.channels(),
                };
                if self.audio.as_ref() != Some(&config) {
                    tracing::info!(
                        broadcast = %self.publisher.name(),
                        sample_rate = config.sample_rate, channels = config.channels, object_type = config.object_type,
                        "audio configuration"
                    );
                }
                self.audio = Some(config);
                Ok(())
            }
            AacPacketType::Raw => {
                if self.audio.is_none() {
                    self.dropped += 1;
                    return Ok(());
                }
                let dts = self.timeline.map(timestamp);
                match self.gop_start {
                    None if self.expect_video => {
                        self.dropped += 1;
                        return Ok(());
                    }
                    None => self.open_gop(dts)?,
                    Some(start) if !self.expect_video && dts - start >= AUDIO_GOP_MS => self.open_gop(dts)?,
                    Some(_) => {}
                }
                advance_parts(&mut parts, AudioTagHeader::LEN);
                self.push(TrackId::AUDIO, dts, 0, FrameFlags::KEYFRAME, parts)
            }
        }
    }

    /// An AMF0 data message: `@setDataFrame` / `onMetaData` is kept for players.
    pub fn handle_data(&mut self, values: Vec<Amf0Value>) {
        let mut values = values.into_iter();
        let first = values.next();
        let (name, object) = match first {
            Some(Amf0Value::Utf8String(s)) if s == "@setDataFrame" => (values.next(), values.next()),
            other => (other, values.next()),
        };
        let (Some(Amf0Value::Utf8String(name)), Some(object)) = (name, object) else { return };
        if name != "onMetaData" {
            return;
        }
        if let Amf0Value::Object(props) = &object {
            if props.get("videocodecid").is_some_and(|v| !matches!(v, Amf0Value::Number(n) if *n == 0.0)) {
                self.expect_video = true;
            }
        }
        match rml_amf0::serialize(&vec![Amf0Value::Utf8String(name), object]) {
            Ok(bytes) => self.metadata = Some(bytes),
            Err(e) => {
                tracing::warn!(broadcast = %self.publisher.name(), error = %e, "onMetaData not re-encodable; dropped")
            }
        }
    }

    fn open_gop(&mut self, dts: i64) -> Result<(), SessionError> {
        let header = GopHeader {
            seq: 0,
            start_dts: dts,
            tracks: [self.video.clone().map(TrackInfo::video), self.audio.clone().map(TrackInfo::audio)]
                .into_iter()
                .flatten()
                .collect(),
            metadata: self.metadata.clone(),
        };
        self.publisher.open_gop(header).map_err(|e| SessionError::Refused(e.to_string()))?;
        self.gop_start = Some(dts);
        self.gop_bytes = 0;
        Ok(())
    }

    fn push(
        &mut self,
        track: TrackId,
        dts: i64,
        cts: i32,
        flags: FrameFlags,
        parts: Vec<Bytes>,
    ) -> Result<(), SessionError> {
        let payload = Payload::from_parts(parts);
        if payload.is_empty() {
            return Ok(());
        }
        let start = self.gop_start.unwrap_or(dts);
        if self.gop_bytes + payload.len() > self.limits.max_bytes || dts.saturating_sub(start) > self.limits.max_ms {
            tracing::warn!(
                broadcast = %self.publisher.name(), bytes = self.gop_bytes, ms = dts.saturating_sub(start),
                max_bytes = self.limits.max_bytes, max_ms = self.limits.max_ms,
                "GoP over the limit (no keyframe for too long); cut, frames dropped until the next keyframe"
            );
            self.publisher.cut_gop();
            self.gop_start = None;
            self.gop_bytes = 0;
            self.cut_gops += 1;
            self.dropped += 1;
            return Ok(());
        }
        self.gop_bytes += payload.len();
        let header = FrameHeader { track, dts, cts, flags, len: payload.len() as u32 };
        self.publisher.push(Frame { header, payload }).map_err(|e| SessionError::Refused(e.to_string()))?;
        self.frames += 1;
        Ok(())
    }
}

/// Copies a small record (a sequence header body) out of the message, past `skip`.
fn contiguous(parts: &[Bytes], skip: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut skip = skip;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        out.extend_from_slice(&p[skip..]);
        skip = 0;
    }
    out
}
