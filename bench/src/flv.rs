//! A minimal FLV file reader (FLV spec v10.1 §E.2–E.4.1): header, then tags.

use anyhow::{bail, Context};
use bytes::Bytes;

/// FLV tag types.
pub const TAG_AUDIO: u8 = 8;
/// Video tag.
pub const TAG_VIDEO: u8 = 9;
/// Script data (onMetaData).
pub const TAG_SCRIPT: u8 = 18;

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
