//! FLV audio and video tag headers (FLV spec v10.1 §E.4.2, §E.4.3), as they open
//! the body of every RTMP audio (type 8) and video (type 9) message.

use crate::Error;

/// FLV `CodecID` 7: AVC (H.264).
pub const VIDEO_CODEC_AVC: u8 = 0x07;
/// FLV `SoundFormat` 10: AAC.
pub const SOUND_FORMAT_AAC: u8 = 0x0a;

/// What an AVC video tag carries (`AVCPacketType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvcPacketType {
    /// 0: an AVCDecoderConfigurationRecord.
    SequenceHeader,
    /// 1: one or more AVCC length-prefixed NAL units.
    Nalu,
    /// 2: end of sequence; carries no data.
    EndOfSequence,
}

/// A parsed video tag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoTagHeader {
    /// `FrameType` 1 (keyframe) or 2 (inter frame), 5 (info/command) …
    pub frame_type: u8,
    /// `CodecID`; only AVC is accepted.
    pub codec_id: u8,
    /// The AVC packet type.
    pub packet_type: AvcPacketType,
    /// `CompositionTime` in milliseconds (SI24).
    pub composition_time: i32,
}

impl VideoTagHeader {
    /// Length of the header in the tag body for AVC.
    pub const LEN: usize = 5;

    /// Whether the frame is a keyframe (`FrameType` 1).
    pub const fn is_keyframe(&self) -> bool {
        self.frame_type == 1
    }

    /// Parses the first bytes of a video tag body.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let first = *b.first().ok_or(Error::Incomplete { needed: 1 })?;
        let frame_type = first >> 4;
        let codec_id = first & 0x0f;
        if first & 0x80 != 0 {
            // Enhanced RTMP (IsExHeader): HEVC, AV1, VP9 via FourCC.
            return Err(Error::Unsupported { what: "enhanced RTMP video (FourCC codec)", value: u32::from(first) });
        }
        if codec_id != VIDEO_CODEC_AVC {
            return Err(Error::Unsupported { what: "FLV video codec id", value: u32::from(codec_id) });
        }
        if b.len() < Self::LEN {
            return Err(Error::Incomplete { needed: Self::LEN - b.len() });
        }
        let packet_type = match b[1] {
            0 => AvcPacketType::SequenceHeader,
            1 => AvcPacketType::Nalu,
            2 => AvcPacketType::EndOfSequence,
            _ => return Err(Error::invalid("FLV video tag", "unknown AVCPacketType")),
        };
        // SI24, big-endian, sign-extended.
        let raw = (u32::from(b[2]) << 16) | (u32::from(b[3]) << 8) | u32::from(b[4]);
        let composition_time = ((raw << 8) as i32) >> 8;
        Ok(Self { frame_type, codec_id, packet_type, composition_time })
    }

    /// Writes the 5-byte AVC video tag header.
    pub fn write(keyframe: bool, packet_type: AvcPacketType, composition_time: i32) -> [u8; 5] {
        let ft: u8 = if keyframe { 1 } else { 2 };
        let pt = match packet_type {
            AvcPacketType::SequenceHeader => 0,
            AvcPacketType::Nalu => 1,
            AvcPacketType::EndOfSequence => 2,
        };
        let ct = composition_time as u32;
        [(ft << 4) | VIDEO_CODEC_AVC, pt, (ct >> 16) as u8, (ct >> 8) as u8, ct as u8]
    }
}

/// What an AAC audio tag carries (`AACPacketType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AacPacketType {
    /// 0: an AudioSpecificConfig.
    SequenceHeader,
    /// 1: one raw AAC access unit.
    Raw,
}

/// A parsed audio tag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioTagHeader {
    /// `SoundFormat`; only AAC is accepted.
    pub sound_format: u8,
    /// The AAC packet type.
    pub packet_type: AacPacketType,
}

impl AudioTagHeader {
    /// Length of the header in the tag body for AAC.
    pub const LEN: usize = 2;

    /// Parses the first bytes of an audio tag body.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let first = *b.first().ok_or(Error::Incomplete { needed: 1 })?;
        let sound_format = first >> 4;
        if sound_format != SOUND_FORMAT_AAC {
            return Err(Error::Unsupported { what: "FLV sound format", value: u32::from(sound_format) });
        }
        let second = *b.get(1).ok_or(Error::Incomplete { needed: 1 })?;
        let packet_type = match second {
            0 => AacPacketType::SequenceHeader,
            1 => AacPacketType::Raw,
            _ => return Err(Error::invalid("FLV audio tag", "unknown AACPacketType")),
        };
        Ok(Self { sound_format, packet_type })
    }

    /// Writes the 2-byte AAC audio tag header. For AAC the rate/size/type bits are
    /// always 44 kHz, 16-bit, stereo (§E.4.2.1); the real values are in the ASC.
    pub const fn write(packet_type: AacPacketType) -> [u8; 2] {
        let pt = match packet_type {
            AacPacketType::SequenceHeader => 0,
            AacPacketType::Raw => 1,
        };
        [(SOUND_FORMAT_AAC << 4) | 0x0f, pt]
    }
}

/// FLV tag type of audio data.
pub const TAG_AUDIO: u8 = 8;
/// FLV tag type of video data.
pub const TAG_VIDEO: u8 = 9;
/// FLV tag type of script data (`onMetaData`).
pub const TAG_SCRIPT: u8 = 18;

/// The FLV tag (as carried in an FLV file or an RTMP message) of one bus frame:
/// its tag type and the few header bytes that go before the frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTag {
    /// [`TAG_VIDEO`] or [`TAG_AUDIO`].
    pub tag_type: u8,
    prefix: [u8; VideoTagHeader::LEN],
    prefix_len: u8,
}

impl FrameTag {
    /// The tag of a frame of the published H.264 or AAC track; `None` for other tracks.
    pub fn of(h: &crate::FrameHeader) -> Option<Self> {
        match h.track {
            crate::TrackId::VIDEO => Some(Self::video(h)),
            crate::TrackId::AUDIO => Some(Self::audio()),
            _ => None,
        }
    }

    /// The tag of an H.264 frame (of any track).
    pub fn video(h: &crate::FrameHeader) -> Self {
        Self {
            tag_type: TAG_VIDEO,
            prefix: VideoTagHeader::write(h.is_keyframe(), AvcPacketType::Nalu, h.cts),
            prefix_len: VideoTagHeader::LEN as u8,
        }
    }

    /// The tag of an AAC frame (of any track).
    pub fn audio() -> Self {
        let [a, b] = AudioTagHeader::write(AacPacketType::Raw);
        Self { tag_type: TAG_AUDIO, prefix: [a, b, 0, 0, 0], prefix_len: AudioTagHeader::LEN as u8 }
    }

    /// The tag header bytes before the payload.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len)]
    }
}

/// A configuration tag a GoP needs: `onMetaData`, or an AVC/AAC sequence header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTag {
    /// [`TAG_SCRIPT`], [`TAG_VIDEO`] or [`TAG_AUDIO`].
    pub tag_type: u8,
    /// The tag header bytes before `body` (empty for script data).
    pub prefix: &'static [u8],
    /// The AMF0 `onMetaData`, the avcC or the ASC.
    pub body: bytes::Bytes,
}

const AVC_SEQUENCE_HEADER: [u8; 5] = [(1 << 4) | VIDEO_CODEC_AVC, 0, 0, 0, 0];
const AAC_SEQUENCE_HEADER: [u8; 2] = [(SOUND_FORMAT_AAC << 4) | 0x0f, 0];

/// Remembers which configuration a tag stream (one player, one file) has been
/// given, and yields the configuration tags a GoP header needs: each only when
/// it differs from what was sent, in the order players expect.
///
/// FLV has one video and one audio stream: the first H.264 track and the first
/// AAC track of the GoP header are those; frames of other tracks have no tag.
#[derive(Debug, Default)]
pub struct ConfigTracker {
    metadata: Option<Vec<u8>>,
    avcc: Option<Vec<u8>>,
    asc: Option<Vec<u8>>,
    video: Option<crate::TrackId>,
    audio: Option<crate::TrackId>,
}

impl ConfigTracker {
    /// The tags to write before the frames of the GoP `header` opens.
    pub fn changes(&mut self, header: &crate::GopHeader) -> impl Iterator<Item = ConfigTag> {
        use crate::Codec;
        let mut out: [Option<ConfigTag>; 3] = [None, None, None];
        if let Some(m) = header.metadata.as_ref().filter(|m| self.metadata.as_ref() != Some(*m)) {
            self.metadata = Some(m.clone());
            out[0] = Some(ConfigTag { tag_type: TAG_SCRIPT, prefix: &[], body: m.clone().into() });
        }
        self.video = None;
        self.audio = None;
        for t in &header.tracks {
            match &t.codec {
                Codec::H264(v) if self.video.is_none() => {
                    self.video = Some(t.id);
                    if self.avcc.as_ref() != Some(&v.avcc) {
                        self.avcc = Some(v.avcc.clone());
                        out[1] = Some(ConfigTag {
                            tag_type: TAG_VIDEO,
                            prefix: &AVC_SEQUENCE_HEADER,
                            body: v.avcc.clone().into(),
                        });
                    }
                }
                Codec::Aac(a) if self.audio.is_none() => {
                    self.audio = Some(t.id);
                    if self.asc.as_ref() != Some(&a.asc) {
                        self.asc = Some(a.asc.clone());
                        out[2] = Some(ConfigTag {
                            tag_type: TAG_AUDIO,
                            prefix: &AAC_SEQUENCE_HEADER,
                            body: a.asc.clone().into(),
                        });
                    }
                }
                _ => {}
            }
        }
        out.into_iter().flatten()
    }

    /// The tag of a frame of the GoP last passed to [`changes`](Self::changes);
    /// `None` for a track FLV does not carry.
    pub fn tag_of(&self, h: &crate::FrameHeader) -> Option<FrameTag> {
        if Some(h.track) == self.video {
            Some(FrameTag::video(h))
        } else if Some(h.track) == self.audio {
            Some(FrameTag::audio())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_header_round_trip() {
        // Keyframe, AVC, NALU, composition time 80 ms (as ffmpeg writes with B-frames).
        let b = [0x17, 0x01, 0x00, 0x00, 0x50];
        let h = VideoTagHeader::parse(&b).unwrap();
        assert!(h.is_keyframe());
        assert_eq!(h.packet_type, AvcPacketType::Nalu);
        assert_eq!(h.composition_time, 80);
        assert_eq!(VideoTagHeader::write(true, AvcPacketType::Nalu, 80), b);
        // Negative composition offsets are sign-extended.
        let neg = VideoTagHeader::write(false, AvcPacketType::Nalu, -40);
        assert_eq!(VideoTagHeader::parse(&neg).unwrap().composition_time, -40);
    }

    #[test]
    fn video_errors() {
        assert_eq!(VideoTagHeader::parse(&[]), Err(Error::Incomplete { needed: 1 }));
        assert_eq!(VideoTagHeader::parse(&[0x17, 0x01]), Err(Error::Incomplete { needed: 3 }));
        // Sorenson H.263 (codec id 2).
        assert!(matches!(VideoTagHeader::parse(&[0x22, 0, 0, 0, 0]), Err(Error::Unsupported { .. })));
        // Enhanced RTMP HEVC: IsExHeader bit set.
        assert!(matches!(VideoTagHeader::parse(&[0x90, b'h', b'v', b'c', b'1']), Err(Error::Unsupported { .. })));
        assert!(VideoTagHeader::parse(&[0x17, 0x09, 0, 0, 0]).is_err());
    }

    #[test]
    fn config_tags_only_when_they_change() {
        use crate::{AudioConfig, Codec, FrameFlags, FrameHeader, GopHeader, TrackId, TrackInfo, VideoConfig};
        let video = VideoConfig { avcc: vec![1, 2], width: 2, height: 2, profile: 66, level: 30 };
        let audio = AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 };
        let gop = GopHeader {
            seq: 0,
            start_dts: 0,
            tracks: vec![TrackInfo::video(video), TrackInfo::audio(audio)],
            metadata: Some(vec![2]),
        };
        let mut t = ConfigTracker::default();
        let first: Vec<_> = t.changes(&gop).collect();
        assert_eq!(first.iter().map(|c| c.tag_type).collect::<Vec<_>>(), [TAG_SCRIPT, TAG_VIDEO, TAG_AUDIO]);
        assert_eq!(first[1].prefix, VideoTagHeader::write(true, AvcPacketType::SequenceHeader, 0));
        assert_eq!(first[2].prefix, AudioTagHeader::write(AacPacketType::SequenceHeader));
        assert_eq!(t.changes(&gop).count(), 0);
        let mut resized = gop.clone();
        let Codec::H264(v) = &mut resized.tracks[0].codec else { unreachable!() };
        v.avcc = vec![1, 3];
        let again: Vec<_> = t.changes(&resized).collect();
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0].body[..], &[1, 3]);
        // A derived H.264 track listed first becomes FLV's video stream; the other has no tag.
        let mut derived = resized.clone();
        derived.tracks.insert(0, TrackInfo { id: TrackId(16), name: "video/480p".into(), ..resized.tracks[0].clone() });
        let _ = t.changes(&derived).count();
        let frame = |track| FrameHeader { track, dts: 0, cts: 0, flags: FrameFlags::KEYFRAME, len: 1 };
        assert_eq!(t.tag_of(&frame(TrackId(16))).map(|f| f.tag_type), Some(TAG_VIDEO));
        assert_eq!(t.tag_of(&frame(TrackId::VIDEO)), None);
        assert_eq!(t.tag_of(&frame(TrackId::AUDIO)).map(|f| f.tag_type), Some(TAG_AUDIO));
    }

    #[test]
    fn audio_header() {
        // 0xAF = AAC, 44 kHz, 16-bit, stereo.
        let h = AudioTagHeader::parse(&[0xaf, 0x00]).unwrap();
        assert_eq!(h.packet_type, AacPacketType::SequenceHeader);
        assert_eq!(AudioTagHeader::write(AacPacketType::Raw), [0xaf, 0x01]);
        // MP3 (format 2).
        assert!(matches!(AudioTagHeader::parse(&[0x2f, 0x01]), Err(Error::Unsupported { .. })));
        assert_eq!(AudioTagHeader::parse(&[0xaf]), Err(Error::Incomplete { needed: 1 }));
    }
}
