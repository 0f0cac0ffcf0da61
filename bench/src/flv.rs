//! A minimal FLV file reader (FLV spec v10.1 §E.2–E.4.1): header, then tags.

use anyhow::{bail, Context};
use bytes::Bytes;

pub use gopbus_proto::flv::{TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

/// One FLV tag.
#[derive(Debug, Clone)]
pub struct Tag {
    /// 8 audio, 9 video, 18 script data.
    pub kind: u8,
    /// Timestamp in milliseconds.
    pub timestamp: u32,
    /// The tag body (what an RTMP message carries).
    pub data: Bytes,
}

impl Tag {
    /// Whether this is an H.264 keyframe (not a sequence header).
    pub fn is_video_keyframe(&self) -> bool {
        self.kind == TAG_VIDEO && self.data.len() > 1 && self.data[0] >> 4 == 1 && self.data[1] == 1
    }

    /// Whether this is an AVC or AAC sequence header.
    pub fn is_sequence_header(&self) -> bool {
        matches!(self.kind, TAG_VIDEO | TAG_AUDIO) && self.data.len() > 1 && self.data[1] == 0
    }
}

/// Parses a whole FLV file.
pub fn parse(file: &[u8]) -> anyhow::Result<Vec<Tag>> {
    if file.len() < 9 || &file[..3] != b"FLV" {
        bail!("not an FLV file");
    }
    let header_len = u32::from_be_bytes(file[5..9].try_into().context("header")?) as usize;
    let all = Bytes::copy_from_slice(file);
    let mut pos = header_len + 4; // header, PreviousTagSize0
    let mut tags = Vec::new();
    while pos + 11 <= all.len() {
        let kind = all[pos] & 0x1f;
        let size = (usize::from(all[pos + 1]) << 16) | (usize::from(all[pos + 2]) << 8) | usize::from(all[pos + 3]);
        let ts = (u32::from(all[pos + 7]) << 24)
            | (u32::from(all[pos + 4]) << 16)
            | (u32::from(all[pos + 5]) << 8)
            | u32::from(all[pos + 6]);
        let start = pos + 11;
        if start + size > all.len() {
            bail!("truncated tag at byte {pos}");
        }
        tags.push(Tag { kind, timestamp: ts, data: all.slice(start..start + size) });
        pos = start + size + 4;
    }
    Ok(tags)
}

/// Reads and parses an FLV file.
pub fn read(path: &std::path::Path) -> anyhow::Result<Vec<Tag>> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&file).with_context(|| format!("parsing {}", path.display()))
}

/// A synthetic H.264 video-only stream that needs no encoder: a real avcC
/// (1280x720 Main, written by libx264) and `frames` frames of `size` bytes each
/// (one AVCC NAL unit of filler), 30 fps, a keyframe every `gop` frames. For
/// load tests: servers pass it through without decoding.
pub fn synthetic_video(frames: usize, size: usize, gop: usize) -> Vec<Tag> {
    const AVCC: [u8; 41] = [
        0x01, 0x4d, 0x40, 0x1f, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x4d, 0x40, 0x1f, 0xec, 0xa0, 0x28, 0x02, 0xdd, 0x80,
        0x88, 0x00, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x01, 0xe0, 0x78, 0xc1, 0x8c, 0xb0, 0x01, 0x00, 0x05,
        0x68, 0xeb, 0xe3, 0xcb, 0x20,
    ];
    let mut seq = vec![0x17, 0, 0, 0, 0];
    seq.extend_from_slice(&AVCC);
    let mut tags = vec![Tag { kind: TAG_VIDEO, timestamp: 0, data: seq.into() }];
    let size = size.max(10);
    for i in 0..frames {
        let key = i % gop.max(1) == 0;
        let mut v = Vec::with_capacity(size);
        v.extend_from_slice(&[if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
        v.extend_from_slice(&((size - 9) as u32).to_be_bytes());
        v.push(if key { 0x65 } else { 0x41 });
        v.resize(size, (i % 251) as u8);
        tags.push(Tag { kind: TAG_VIDEO, timestamp: (i as u32 * 1000) / 30, data: v.into() });
    }
    tags
}
