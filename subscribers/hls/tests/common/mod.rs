//! What the HLS tests share.

use gopbus_proto::{GopHeader, TrackInfo, VideoConfig};

/// A GoP header at `start` with one small H.264 track.
pub(crate) fn header(start: i64) -> GopHeader {
    GopHeader {
        seq: 0,
        start_dts: start,
        // An avcC with no parameter sets is enough for the boxes; nothing decodes it here.
        tracks: vec![TrackInfo::video(VideoConfig {
            avcc: vec![1, 0x64, 0, 0x1f, 0xff, 0xe0, 0],
            width: 64,
            height: 64,
            profile: 100,
            level: 31,
        })],
        metadata: None,
    }
}
