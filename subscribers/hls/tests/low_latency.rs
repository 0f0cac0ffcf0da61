//! Low-Latency HLS over real HTTP (the subscriber's router on a loopback
//! port, requests written by hand): parts that do not wait for keyframes,
//! `INDEPENDENT=YES` only where a keyframe starts a part, a blocking playlist
//! reload that returns when the part exists, 400 for one far in the future,
//! the preload-hinted part held open, segments that are their parts, ETags.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig};
use gopbus_hls::{Hls, HlsConfig};
mod common;

use common::header;
use gopbus_proto::{EndReason, Frame, FrameFlags, FrameHeader, Payload, TrackId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Publishes at real pace: 25 fps, a keyframe every 3 s (longer than the 1 s segment target).
async fn publish(bus: Bus, stop: CancellationToken) {
    let mut p = bus.publish("ll");
    let start = Instant::now();
    for i in 0.. {
        let dts = i * 40;
        if dts % 3000 == 0 {
            p.open_gop(header(dts)).unwrap();
        }
        let flags = if dts % 3000 == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
        let h = FrameHeader { track: TrackId::VIDEO, dts, cts: 0, flags, len: 100 };
        p.push(Frame { header: h, payload: Payload::from_bytes(Bytes::from(vec![i as u8; 100])) }).unwrap();
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until((start + Duration::from_millis(dts as u64 + 40)).into()) => {}
        }
    }
    p.end(EndReason::PublisherLeft);
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    Reply { status, head, body: raw[split + 4..].to_vec() }
}

/// The last `part-M.P.m4s` a playlist lists: (M, P).
fn last_part(playlist: &str) -> (u64, u64) {
    let uri = playlist.lines().rfind(|l| l.starts_with("#EXT-X-PART:")).expect(playlist);
    let name = uri.split("part-").nth(1).unwrap().split(".m4s").next().unwrap();
    let (m, p) = name.split_once('.').unwrap();
    (m.parse().unwrap(), p.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_blocking_reload_and_the_preload_hint() {
    let root = std::env::temp_dir().join(format!("gopbus-hls-ll-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = HlsConfig {
        recordings: root.clone(),
        target_duration: Duration::from_secs(1),
        part_target: Duration::from_millis(500),
        ..HlsConfig::default()
    };
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let hls = Hls::new(config);
    let stop = CancellationToken::new();
    let segmenter = tokio::spawn(hls.clone().run(bus.clone(), stop.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = tokio::spawn(axum::serve(listener, hls.router()).into_future());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let publisher = tokio::spawn(publish(bus.clone(), stop.child_token()));

    // Two GoPs in: parts every 0.5 s although keyframes are 3 s apart.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let r = get(addr, "/hls/ll/index.m3u8", "").await;
    let text = r.text();
    assert_eq!(r.status, 200, "{text}");
    assert!(text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500\n"), "{text}");
    assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.500\n"), "{text}");
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{text}");
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:20"), "{text}");
    let parts: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXT-X-PART:")).collect();
    assert!(parts.len() >= 6, "{text}");
    for p in &parts {
        let d: f64 = p.split("DURATION=").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert!((0.04..=0.5 + 1e-9).contains(&d), "a part outside the target: {p}");
    }
    // Only a part that starts a GoP is independent: here (keyframes 3 s apart,
    // segments cut at the first keyframe after 1 s) the first part of each segment.
    for p in &parts {
        assert_eq!(p.ends_with(",INDEPENDENT=YES"), p.contains(".0.m4s\""), "{text}");
    }
    let hint = text.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=")).expect(&text);
    let hint_uri = hint.split('"').nth(1).unwrap().to_owned();

    // The hinted part, requested before it exists, is sent once it does.
    let asked = Instant::now();
    let r = get(addr, &format!("/hls/ll/{hint_uri}"), "").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-type").as_deref(), Some("video/iso.segment"));
    assert_eq!(&r.body[4..8], b"moof");
    assert!(asked.elapsed() < Duration::from_millis(1500), "held {:?}", asked.elapsed());

    // A blocking reload for the part after the last one listed returns once it exists.
    let r = get(addr, "/hls/ll/index.m3u8", "").await;
    let (m, p) = last_part(&r.text());
    let asked = Instant::now();
    let r = get(addr, &format!("/hls/ll/index.m3u8?_HLS_msn={m}&_HLS_part={}", p + 1), "").await;
    let waited = asked.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let (m2, p2) = last_part(&r.text());
    assert!((m2, p2) > (m, p), "no newer part after blocking: ({m}, {p}) → ({m2}, {p2})");
    assert!(waited < Duration::from_millis(1500), "blocked {waited:?}");

    // Far in the future: 400 at once.
    let asked = Instant::now();
    let r = get(addr, &format!("/hls/ll/index.m3u8?_HLS_msn={}", m + 10), "").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(asked.elapsed() < Duration::from_millis(200));
    assert_eq!(get(addr, "/hls/ll/index.m3u8?_HLS_part=1", "").await.status, 400);

    // A complete segment is its parts, back to back; it and its parts carry ETags.
    // (`_HLS_msn=2` alone waits for segment 2 to be complete.)
    let text = get(addr, "/hls/ll/index.m3u8?_HLS_msn=2", "").await.text();
    let seg = text.lines().find(|l| l.ends_with("/seg-2.m4s")).expect(&text).to_owned();
    let session = seg.split('/').next().unwrap();
    let whole = get(addr, &format!("/hls/ll/{seg}"), "").await;
    assert_eq!(whole.status, 200);
    let mut joined = Vec::new();
    for i in 0.. {
        let r = get(addr, &format!("/hls/ll/{session}/part-2.{i}.m4s"), "").await;
        if r.status != 200 {
            break;
        }
        joined.extend_from_slice(&r.body);
    }
    assert!(!joined.is_empty() && joined == whole.body, "segment 2 is not its parts");
    let etag = whole.header("etag").expect("an ETag");
    let again = get(addr, &format!("/hls/ll/{seg}"), &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!(again.status, 304, "{}", again.head);

    stop.cancel();
    publisher.await.unwrap();
    // The recording: the same segments on disk, closed.
    let playlist = root.join("ll").join(session).join("index.m3u8");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&playlist).unwrap_or_default().contains("#EXT-X-ENDLIST") {
        assert!(Instant::now() < deadline, "recording not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(root.join("ll").join(session).join("seg-2.m4s")).unwrap(), whole.body);
    segmenter.await.unwrap();
    http.abort();
    let _ = std::fs::remove_dir_all(&root);
}
