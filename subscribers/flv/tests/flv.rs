//! The FLV subscriber on an in-process bus: chosen tracks become FLV's video and
//! audio streams; configuration tags come first and again only on change.

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig, Publisher, SubscribeOptions};
use gopbus_proto::{
    AudioConfig, Codec, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig,
};
use tokio_util::sync::CancellationToken;

struct Tag {
    kind: u8,
    ts: u32,
    body: Vec<u8>,
}

/// Parses an FLV file: header, then tags with their back-pointers checked.
fn parse(flv: &[u8]) -> Vec<Tag> {
    assert_eq!(&flv[..3], b"FLV");
    assert_eq!(flv[4], 0x05, "audio and video announced");
    let mut at = 13;
    let mut tags = Vec::new();
    while at < flv.len() {
        let kind = flv[at];
        let size = u32::from_be_bytes([0, flv[at + 1], flv[at + 2], flv[at + 3]]) as usize;
        let ts = u32::from_be_bytes([flv[at + 7], flv[at + 4], flv[at + 5], flv[at + 6]]);
        let body = flv[at + 11..at + 11 + size].to_vec();
        let back = u32::from_be_bytes(flv[at + 11 + size..at + 15 + size].try_into().unwrap()) as usize;
        assert_eq!(back, size + 11, "previous tag size");
        tags.push(Tag { kind, ts, body });
        at += 15 + size;
    }
    tags
}

fn video(width: u32) -> Codec {
    Codec::H264(VideoConfig { avcc: vec![1, 100, 0, 31, width as u8], width, height: 270, profile: 100, level: 31 })
}

fn frame(track: TrackId, dts: i64, key: bool, fill: u8) -> Frame {
    let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::default() };
    let data = Bytes::from(vec![fill; 10]);
    // Two parts, as an RTMP message spanning chunks arrives.
    Frame {
        header: FrameHeader { track, dts, cts: 40, flags, len: 10 },
        payload: Payload::from_parts(vec![data.slice(..4), data.slice(4..)]),
    }
}

/// Source GoP `g`: a 640-wide keyframe and one AAC frame (fill 1 and 2).
fn source_gop(p: &mut Publisher, g: i64) {
    let aac = AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 };
    let mut v = TrackInfo::audio(aac.clone());
    v.id = TrackId::VIDEO;
    v.name = TrackInfo::VIDEO.into();
    v.codec = video(640);
    p.open_gop(GopHeader { seq: 0, start_dts: g * 1000, tracks: vec![v, TrackInfo::audio(aac)], metadata: None })
        .unwrap();
    p.push(frame(TrackId::VIDEO, g * 1000, true, 1)).unwrap();
    p.push(frame(TrackId::AUDIO, g * 1000 + 10, true, 2)).unwrap();
}

/// The rendition of GoP `g` at `width` (fill 3): a keyframe and an inter frame.
fn rendition_gop(p: &mut Publisher, g: i64, width: u32) {
    let track = TrackInfo { id: TrackId(0), name: String::new(), codec: video(width) };
    p.open_gop(GopHeader { seq: 0, start_dts: g * 1000, tracks: vec![track], metadata: None }).unwrap();
    p.push(frame(TrackId(0), g * 1000, true, 3)).unwrap();
    p.push(frame(TrackId(0), g * 1000 + 40, false, 3)).unwrap();
}

#[tokio::test]
async fn chosen_tracks_are_written_as_flv() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("cam");
    source_gop(&mut source, 0);
    let mut worker = bus.add_track("cam", "video/480p").unwrap();
    rendition_gop(&mut worker, 0, 224);
    let sub = bus.subscribe_tracks("cam", &["video/480p", "audio"], SubscribeOptions::default());
    let (out, mut input) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(gopbus_flv::run(sub, out, CancellationToken::new()));
    source_gop(&mut source, 1);
    rendition_gop(&mut worker, 1, 224);
    source_gop(&mut source, 2);
    // The rendition's configuration changes at GoP 2.
    rendition_gop(&mut worker, 2, 225);
    source.end(EndReason::PublisherLeft);
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.end, Some(EndReason::PublisherLeft));
    assert_eq!(summary.frames, 9);

    let mut flv = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut input, &mut flv).await.unwrap();
    let tags = parse(&flv);
    // Sequence headers (packet type 0): the rendition's avcC and the ASC first,
    // later only the avcC that changed.
    let configs: Vec<(u8, u32, Vec<u8>)> = tags
        .iter()
        .filter(|t| t.body[1] == 0)
        .map(|t| (t.kind, t.ts, t.body[if t.kind == 9 { 5 } else { 2 }..].to_vec()))
        .collect();
    assert_eq!(
        configs,
        [(9, 0, vec![1, 100, 0, 31, 224]), (8, 0, vec![0x11, 0x90]), (9, 2000, vec![1, 100, 0, 31, 225])]
    );
    // Frames (packet type 1): the rendition's and the AAC, never the source's video.
    let frames: Vec<(u8, u32, u8, u8)> =
        tags.iter().filter(|t| t.body[1] == 1).map(|t| (t.kind, t.ts, t.body[0], t.body[t.body.len() - 1])).collect();
    let expected: Vec<(u8, u32, u8, u8)> = (0..3u32)
        .flat_map(|g| [(9, g * 1000, 0x17, 3), (8, g * 1000 + 10, 0xaf, 2), (9, g * 1000 + 40, 0x27, 3)])
        .collect();
    assert_eq!(frames, expected);
    // Payload bytes are whole: the tag body is the FLV header plus all ten bytes.
    assert!(tags.iter().filter(|t| t.kind == 9 && t.body[1] == 1).all(|t| t.body.len() == 5 + 10));
}
