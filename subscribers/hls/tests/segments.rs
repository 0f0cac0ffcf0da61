//! Segment boundaries on an in-process bus: cut at keyframes once the target
//! is reached; a GoP longer than the longest segment is cut and its frames up
//! to the next keyframe dropped (bounded memory), with a discontinuity after.

use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig};
use gopbus_hls::{Hls, HlsConfig};
mod common;

use common::header;
use gopbus_proto::{EndReason, Frame, FrameFlags, FrameHeader, Payload, TrackId};
use tokio_util::sync::CancellationToken;

/// A GoP from `start` lasting `ms`, a frame every 40 ms.
fn gop(p: &mut gopbus_bus::Publisher, start: i64, ms: i64) {
    p.open_gop(header(start)).unwrap();
    for i in 0..ms / 40 {
        let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
        let h = FrameHeader { track: TrackId::VIDEO, dts: start + i * 40, cts: 0, flags, len: 16 };
        p.push(Frame { header: h, payload: Payload::from_bytes(Bytes::from(vec![0u8; 16])) }).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gop_longer_than_the_longest_segment_is_cut() {
    let root = std::env::temp_dir().join(format!("gopbus-hls-segments-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = HlsConfig {
        recordings: root.clone(),
        target_duration: Duration::from_secs(1),
        max_segment: Duration::from_secs(2),
        ..HlsConfig::default()
    };
    let bus = Bus::new(BusConfig { window: 8, max_lag: 8 });
    let hls = Hls::new(config);
    let stop = CancellationToken::new();
    let task = tokio::spawn(hls.run(bus.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = bus.publish("long");
    // 5 s without a keyframe.
    gop(&mut p, 0, 5000);
    // The segmenter attaches while the broadcast is live (it starts at the current GoP).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gop(&mut p, 5000, 1000);
    gop(&mut p, 6000, 1000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.end(EndReason::PublisherLeft);

    let dir = root.join("long");
    let mut text = String::new();
    for _ in 0..200 {
        let session = std::fs::read_dir(&dir).ok().and_then(|mut d| d.next()).map(|e| e.unwrap().path());
        text = session.map(|s| std::fs::read_to_string(s.join("index.m3u8")).unwrap_or_default()).unwrap_or_default();
        if text.contains("#EXT-X-ENDLIST") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXTINF") || l.starts_with("#EXT-X-DISC")).collect();
    // The long GoP: cut at 2 s (its frame at 2000 ms is the last kept); the rest of
    // it dropped; then the 1 s GoPs, after a discontinuity.
    assert_eq!(lines, ["#EXTINF:2.040,", "#EXT-X-DISCONTINUITY", "#EXTINF:1.000,", "#EXTINF:1.000,"], "{text}");
    assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
}
