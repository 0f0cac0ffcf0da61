//! Recording limits: the oldest finished sessions go first; the session being
//! recorded is never deleted.

use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig};
use gopbus_hls::{Hls, HlsConfig};
use gopbus_proto::{AudioConfig, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig};
use tokio_util::sync::CancellationToken;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gopbus-hls-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A finished recording of `bytes` bytes that started at `started` ms.
fn fake(root: &std::path::Path, name: &str, started: u64, bytes: usize) -> std::path::PathBuf {
    let dir = root.join(name).join(started.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seg-1.m4s"), vec![0u8; bytes]).unwrap();
    std::fs::write(dir.join("index.m3u8"), "#EXTM3U\n#EXT-X-ENDLIST\n").unwrap();
    dir
}

fn header(start: i64) -> GopHeader {
    GopHeader {
        seq: 0,
        start_dts: start,
        tracks: vec![
            // An avcC with no parameter sets is enough for the boxes; nothing decodes it here.
            TrackInfo::video(VideoConfig {
                avcc: vec![1, 0x64, 0, 0x1f, 0xff, 0xe0, 0],
                width: 64,
                height: 64,
                profile: 100,
                level: 31,
            }),
            TrackInfo::audio(AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 }),
        ],
        metadata: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_finished_recordings_go_and_the_live_one_stays() {
    let root = tmpdir("retention");
    let oldest = fake(&root, "a", 1_000, 4000);
    let middle = fake(&root, "b", 2_000, 4000);
    let newest = fake(&root, "a", 3_000, 4000);

    // Bytes: 12000 on disk, 9000 allowed: the oldest goes.
    let hls = Hls::new(HlsConfig { recordings: root.clone(), max_recording_bytes: 9000, ..HlsConfig::default() });
    assert_eq!(hls.enforce_limits(), vec![oldest.clone()]);
    assert!(!oldest.exists() && middle.exists() && newest.exists());

    // A live broadcast is recorded meanwhile; a limit of no recordings at all
    // deletes every finished one, never the live one.
    let bus = Bus::new(BusConfig::default());
    let hls = Hls::new(HlsConfig { recordings: root.clone(), max_recordings: 0, ..HlsConfig::default() });
    let stop = CancellationToken::new();
    let task = tokio::spawn(hls.clone().run(bus.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = bus.publish("live");
    for g in 0..3i64 {
        p.open_gop(header(g * 1000)).unwrap();
        for i in 0..25 {
            let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
            let h = FrameHeader { track: TrackId::VIDEO, dts: g * 1000 + i * 40, cts: 0, flags, len: 16 };
            p.push(Frame { header: h, payload: Payload::from_bytes(Bytes::from(vec![0u8; 16])) }).unwrap();
        }
    }
    let live_dir = root.join("live");
    for _ in 0..100 {
        if std::fs::read_dir(&live_dir).map(|d| d.count()).unwrap_or(0) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The subscriber enforces the limits by itself (at start, then every 5 s).
    for _ in 0..100 {
        if !middle.exists() && !newest.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!middle.exists() && !newest.exists(), "finished recordings over the limit are deleted");
    assert!(hls.enforce_limits().is_empty(), "the live recording is never deleted");
    let session = std::fs::read_dir(&live_dir).unwrap().next().expect("the live recording").unwrap().path();
    assert!(session.join("init-1.mp4").exists());
    p.end(gopbus_proto::EndReason::PublisherLeft);
    stop.cancel();
    task.await.unwrap();
    // Once finished, it is subject to the limit like any other.
    assert_eq!(hls.enforce_limits(), vec![session]);
}
