//! The media model that travels on the bus.
//!
//! A broadcast is a sequence of GoPs. Each GoP starts with a [`GopHeader`] that
//! carries the decoder configuration of every track, so a subscriber can start at
//! any GoP with no earlier state; then come [`Frame`]s in decode order.
//!
//! Timestamps are `i64` milliseconds (the 1 kHz timescale RTMP publishes in),
//! unwrapped from FLV's 32-bit values by ingest.

use std::sync::Arc;

use bytes::Bytes;

/// A track within a broadcast, as its frames name it. Published tracks have fixed
/// ids; derived tracks (renditions, transcoded audio) get ids from
/// [`TrackId::FIRST_DERIVED`] up, assigned by the bus when they are added.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct TrackId(pub u8);

impl TrackId {
    /// The published H.264 video track.
    pub const VIDEO: Self = Self(0);
    /// The published AAC audio track.
    pub const AUDIO: Self = Self(1);
    /// The first id free for derived tracks.
    pub const FIRST_DERIVED: Self = Self(16);
}

/// Per-frame flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FrameFlags(pub u8);

impl FrameFlags {
    /// A random-access point (IDR for H.264; every AAC frame).
    pub const KEYFRAME: Self = Self(0x01);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The small fixed header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FrameHeader {
    /// The track the frame belongs to.
    pub track: TrackId,
    /// Decode timestamp in milliseconds.
    pub dts: i64,
    /// Composition offset (pts − dts) in milliseconds; non-zero with B-frames.
    pub cts: i32,
    /// Keyframe and other flags.
    pub flags: FrameFlags,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Whether this frame is a random-access point.
    pub const fn is_keyframe(&self) -> bool {
        self.flags.contains(FrameFlags::KEYFRAME)
    }

    /// Presentation timestamp in milliseconds.
    pub const fn pts(&self) -> i64 {
        self.dts + self.cts as i64
    }
}

/// One frame: header plus payload.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The fixed header.
    pub header: FrameHeader,
    /// The payload: AVCC length-prefixed NAL units for H.264, one raw AAC access unit.
    pub payload: Payload,
}

/// A media payload as one or more slices of the buffers it arrived in.
///
/// RTMP splits a message into chunks with headers in between, so a payload that
/// spans chunks is a short list of slices of the socket read buffer rather than a
/// fresh contiguous copy. Cloning is a reference-count increment: fan-out never
/// copies bytes and never allocates.
#[derive(Clone, Default)]
pub struct Payload {
    parts: Parts,
    len: usize,
}

#[derive(Clone, Default)]
enum Parts {
    #[default]
    Empty,
    One(Bytes),
    Many(Arc<[Bytes]>),
}

impl Payload {
    /// A payload of one contiguous slice.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let len = bytes.len();
        if len == 0 {
            return Self::default();
        }
        Self { parts: Parts::One(bytes), len }
    }

    /// A payload of several slices, in order. Empty slices are dropped.
    pub fn from_parts(mut parts: Vec<Bytes>) -> Self {
        parts.retain(|p| !p.is_empty());
        match parts.len() {
            0 => Self::default(),
            1 => Self::from_bytes(parts.pop().expect("one element")),
            _ => {
                let len = parts.iter().map(Bytes::len).sum();
                Self { parts: Parts::Many(parts.into()), len }
            }
        }
    }

    /// Total length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload has no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slices, in order.
    pub fn parts(&self) -> &[Bytes] {
        match &self.parts {
            Parts::Empty => &[],
            Parts::One(b) => std::slice::from_ref(b),
            Parts::Many(v) => v,
        }
    }

    /// The payload as one `Bytes`: the one slice itself when it is one
    /// (no copy), else a copy of the slices joined (decoders that need
    /// contiguous input).
    pub fn contiguous(&self) -> Bytes {
        match self.parts() {
            [] => Bytes::new(),
            [one] => one.clone(),
            _ => Bytes::from(self.to_vec()),
        }
    }

    /// Copies the payload into one contiguous buffer. For small configuration
    /// records and tests; the media path never calls this.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for p in self.parts() {
            out.extend_from_slice(p);
        }
        out
    }

    /// Copies the first `out.len()` bytes into `out`; errors if the payload is shorter.
    pub fn copy_prefix(&self, out: &mut [u8]) -> Result<(), crate::Error> {
        copy_prefix(self.parts(), out)
    }
}

/// Copies the first `out.len()` bytes of `parts` into `out`.
pub fn copy_prefix(parts: &[Bytes], out: &mut [u8]) -> Result<(), crate::Error> {
    let mut filled = 0;
    for p in parts {
        if filled == out.len() {
            break;
        }
        let n = p.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&p[..n]);
        filled += n;
    }
    if filled < out.len() {
        return Err(crate::Error::Incomplete { needed: out.len() - filled });
    }
    Ok(())
}

/// Drops the first `n` bytes of `parts` by re-slicing, never copying.
pub fn advance_parts(parts: &mut Vec<Bytes>, mut n: usize) {
    let mut drop = 0;
    for p in parts.iter_mut() {
        if n == 0 {
            break;
        }
        if p.len() <= n {
            n -= p.len();
            drop += 1;
        } else {
            *p = p.slice(n..);
            n = 0;
        }
    }
    parts.drain(..drop);
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes in {} parts)", self.len, self.parts().len())
    }
}

/// Decoder configuration of an H.264 track.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct VideoConfig {
    /// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1).
    pub avcc: Vec<u8>,
    /// Coded width in pixels, after cropping.
    pub width: u32,
    /// Coded height in pixels, after cropping.
    pub height: u32,
    /// `profile_idc` (66 Baseline, 77 Main, 100 High, …).
    pub profile: u8,
    /// `level_idc` × 10 (31 means level 3.1).
    pub level: u8,
}

/// Decoder configuration of an AAC track.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct AudioConfig {
    /// The AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1).
    pub asc: Vec<u8>,
    /// Audio object type (2 = AAC-LC).
    pub object_type: u8,
    /// Sample rate in Hz (of the core AAC layer).
    pub sample_rate: u32,
    /// Channel count.
    pub channels: u8,
}

/// Decoder configuration of an Opus track (RFC 7845 §5.1, the fields a decoder needs).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OpusConfig {
    /// Channel count (1 or 2).
    pub channels: u8,
    /// Sample rate of the encoder's input in Hz (Opus always decodes at 48 kHz).
    pub input_sample_rate: u32,
    /// Samples at 48 kHz to drop from the start of the decoded output.
    pub pre_skip: u16,
}

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum TrackKind {
    /// Pictures.
    Video,
    /// Sound.
    Audio,
    /// Anything else (captions, timed metadata).
    Data,
}

impl std::fmt::Display for TrackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Data => "data",
        })
    }
}

/// A track's codec with its decoder configuration.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Codec {
    /// H.264 with its avcC.
    H264(VideoConfig),
    /// AAC with its AudioSpecificConfig.
    Aac(AudioConfig),
    /// Opus.
    Opus(OpusConfig),
    /// A codec this build has no model for (HEVC, AV1, …): carried, never interpreted.
    Other(OtherCodec),
}

/// A codec carried without being interpreted.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OtherCodec {
    /// What the track carries.
    pub kind: TrackKind,
    /// The codec's name, as in RFC 6381 (`hvc1.1.6.L93.B0`, `av01.0.04M.08`).
    pub name: String,
    /// Its decoder configuration record, opaque.
    pub config: Vec<u8>,
}

impl Codec {
    /// What a track with this codec carries.
    pub const fn kind(&self) -> TrackKind {
        match self {
            Self::H264(_) => TrackKind::Video,
            Self::Aac(_) | Self::Opus(_) => TrackKind::Audio,
            Self::Other(o) => o.kind,
        }
    }

    /// A short name for logs and catalogs (`h264`, `aac`, `opus`, or the codec string).
    pub fn name(&self) -> &str {
        match self {
            Self::H264(_) => "h264",
            Self::Aac(_) => "aac",
            Self::Opus(_) => "opus",
            Self::Other(o) => &o.name,
        }
    }
}

/// One track of a broadcast: its id on frames, its name in the catalog, its codec.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TrackInfo {
    /// The id its frames carry ([`FrameHeader::track`]).
    pub id: TrackId,
    /// Its name: `video` and `audio` as published; a derived track's own name
    /// (`audio/opus`, `video/480p`).
    pub name: String,
    /// Codec and decoder configuration.
    pub codec: Codec,
}

impl TrackInfo {
    /// Name of the published video track.
    pub const VIDEO: &'static str = "video";
    /// Name of the published audio track.
    pub const AUDIO: &'static str = "audio";

    /// The published H.264 track.
    pub fn video(config: VideoConfig) -> Self {
        Self { id: TrackId::VIDEO, name: Self::VIDEO.into(), codec: Codec::H264(config) }
    }

    /// The published AAC track.
    pub fn audio(config: AudioConfig) -> Self {
        Self { id: TrackId::AUDIO, name: Self::AUDIO.into(), codec: Codec::Aac(config) }
    }

    /// What the track carries.
    pub const fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}

/// Checks a derived track's name: 1–64 characters of `a-z`, `0-9`, `-`, `_`,
/// `.`, `/`, starting with a letter or digit, with no empty segment
/// (`audio/opus`, `video/480p`). The names `video` and `audio` are the
/// published tracks' and cannot be added.
pub fn check_track_name(name: &str) -> Result<(), crate::Error> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c);
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.ends_with('/')
        && !name.contains("//");
    if !valid {
        return Err(crate::Error::invalid("track name", "1-64 of a-z 0-9 - _ . / starting with a letter or digit"));
    }
    if name == TrackInfo::VIDEO || name == TrackInfo::AUDIO {
        return Err(crate::Error::invalid("track name", "`video` and `audio` are the published tracks"));
    }
    Ok(())
}

/// The header of a GoP channel: everything a subscriber needs to start here.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct GopHeader {
    /// Sequence number within the broadcast, from 0, gapless.
    pub seq: u64,
    /// Timestamp of the GoP's first frame, in milliseconds.
    pub start_dts: i64,
    /// Every track of the GoP with its decoder configuration.
    pub tracks: Vec<TrackInfo>,
    /// The publisher's `onMetaData`, AMF0-encoded as `["onMetaData", {...}]`.
    pub metadata: Option<Vec<u8>>,
}

impl GopHeader {
    /// The track with id `id`.
    pub fn track(&self, id: TrackId) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// The first H.264 track's configuration.
    pub fn video(&self) -> Option<&VideoConfig> {
        self.tracks.iter().find_map(|t| match &t.codec {
            Codec::H264(v) => Some(v),
            _ => None,
        })
    }

    /// The first AAC track's configuration.
    pub fn audio(&self) -> Option<&AudioConfig> {
        self.tracks.iter().find_map(|t| match &t.codec {
            Codec::Aac(a) => Some(a),
            _ => None,
        })
    }
}

/// Why a broadcast ended.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum EndReason {
    /// The publisher stopped or disconnected.
    PublisherLeft,
    /// The stream key was rotated or the stream deleted.
    KeyRevoked,
    /// The server is shutting down.
    Shutdown,
    /// An error, with a message for the log.
    Error(String),
    /// An operator disconnected the publisher (the API's kick).
    Kicked,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PublisherLeft => f.write_str("publisher left"),
            Self::KeyRevoked => f.write_str("stream key revoked"),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::Error(e) => write!(f, "error: {e}"),
            Self::Kicked => f.write_str("publisher kicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_names() {
        for ok in ["audio/opus", "video/480p", "opus", "v1.2", "a_b-c"] {
            assert!(check_track_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "video", "audio", "/x", "x/", "a//b", "Upper", "a b", &"x".repeat(65)] {
            assert!(check_track_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_clone_shares_memory() {
        let buf = Bytes::from_static(b"hello world");
        let p = Payload::from_parts(vec![buf.slice(0..5), buf.slice(5..)]);
        let q = p.clone();
        assert_eq!(p.len(), 11);
        assert_eq!(p.parts()[0].as_ptr(), q.parts()[0].as_ptr());
        assert_eq!(q.to_vec(), b"hello world");
    }

    #[test]
    fn advance_and_prefix_across_parts() {
        let mut parts = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cdef")];
        let mut four = [0u8; 4];
        copy_prefix(&parts, &mut four).unwrap();
        assert_eq!(&four, b"abcd");
        let base = parts[1].as_ptr();
        advance_parts(&mut parts, 3);
        assert_eq!(parts.len(), 1);
        assert_eq!(&parts[0][..], b"def");
        // Re-sliced, not copied.
        assert_eq!(parts[0].as_ptr(), base.wrapping_add(1));
        let mut ten = [0u8; 10];
        assert_eq!(copy_prefix(&parts, &mut ten), Err(crate::Error::Incomplete { needed: 7 }));
    }
}
