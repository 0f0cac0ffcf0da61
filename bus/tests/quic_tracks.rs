//! Derived tracks and announcements across machines: a worker adds a track over
//! QUIC to an origin; an edge relay that has never seen that track's codec
//! passes it through; subscribers choose tracks at the edge. A watcher of the
//! origin sees the broadcast start, change and end.

use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::quic::{tls, BusClient, BusServer, QuicError, Relay, Source};
use gopbus_bus::{Announcement, Bus, BusConfig, Event, Publisher, StartAt, SubscribeOptions};
use gopbus_proto::{
    AudioConfig, Codec, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, OtherCodec, Payload, TrackId, TrackInfo,
    TrackKind, VideoConfig,
};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "secret";

struct Node {
    url: String,
    ca: std::path::PathBuf,
    _shutdown: tokio_util::sync::DropGuard,
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gopbus-quic-tracks-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A bus node on loopback; with `upstream`, a relay that fetches what it lacks from it.
async fn node(tag: &str, upstream: Option<&Node>) -> Node {
    let dir = tmpdir(tag);
    let identity = tls::server_identity(None, None, &dir, &[]).unwrap();
    let ca = identity.cert_path.clone();
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut server = BusServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(identity).unwrap(),
        bus.clone(),
        TOKEN.into(),
    )
    .unwrap()
    .with_not_found_after(Duration::from_millis(500));
    let shutdown = CancellationToken::new();
    if let Some(up) = upstream {
        let client_config = tls::client_config(Some(&up.ca)).unwrap();
        let relay = Relay::new(bus, Source::Fixed(up.url.clone()), TOKEN.into(), client_config);
        tokio::spawn(relay.clone().reap(shutdown.clone()));
        server = server.with_upstream(relay);
    }
    let url = format!("quic://127.0.0.1:{}", server.local_addr().unwrap().port());
    tokio::spawn(server.run(shutdown.clone()));
    Node { url, ca, _shutdown: shutdown.drop_guard() }
}

async fn client(n: &Node) -> BusClient {
    BusClient::connect(&n.url, TOKEN, tls::client_config(Some(&n.ca)).unwrap()).await.unwrap()
}

fn source_header(start: i64) -> GopHeader {
    GopHeader {
        seq: 0,
        start_dts: start,
        tracks: vec![
            TrackInfo::video(VideoConfig {
                avcc: vec![1, 100, 0, 31],
                width: 640,
                height: 360,
                profile: 100,
                level: 31,
            }),
            TrackInfo::audio(AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 }),
        ],
        metadata: None,
    }
}

/// A codec gopbus has no model for: the edge must carry it untouched.
fn av1() -> Codec {
    Codec::Other(OtherCodec { kind: TrackKind::Video, name: "av01.0.04M.08".into(), config: vec![0x81, 4, 12, 0] })
}

fn frame(track: TrackId, dts: i64, key: bool, fill: u8) -> Frame {
    let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::default() };
    Frame {
        header: FrameHeader { track, dts, cts: 0, flags, len: 100 },
        payload: Payload::from_bytes(Bytes::from(vec![fill; 100])),
    }
}

/// Source GoP `g` (500 ms of media from `g * 500`): video every 40 ms, AAC every 21 ms.
fn push_source(p: &mut Publisher, g: i64) -> Vec<FrameHeader> {
    p.open_gop(source_header(g * 500)).unwrap();
    let mut sent = Vec::new();
    let (mut v, mut a) = (0i64, 0i64);
    while v < 500 || a < 500 {
        let f = if v <= a && v < 500 {
            v += 40;
            frame(TrackId::VIDEO, g * 500 + v - 40, v == 40, 1)
        } else {
            a += 21;
            frame(TrackId::AUDIO, g * 500 + a - 21, true, 2)
        };
        sent.push(f.header);
        p.push(f).unwrap();
    }
    sent
}

/// The worker's AV1 rendering of source GoP `g`: a keyframe where the source's is, then every 40 ms.
fn push_av1(p: &mut Publisher, g: i64) {
    let header = GopHeader {
        seq: 0,
        start_dts: g * 500,
        tracks: vec![TrackInfo { id: TrackId(0), name: "video/av1".into(), codec: av1() }],
        metadata: None,
    };
    p.open_gop(header).unwrap();
    for i in 0..13 {
        p.push(frame(TrackId(0), g * 500 + i * 40, i == 0, 3)).unwrap();
    }
}

fn summary(a: &Announcement) -> String {
    let tracks = |c: &gopbus_bus::Catalog| c.tracks.iter().map(|t| t.name.clone()).collect::<Vec<_>>().join(",");
    match a {
        Announcement::Started(c) => format!("started {} {}", c.name, tracks(c)),
        Announcement::Changed(c) => format!("changed {} {}", c.name, tracks(c)),
        Announcement::Ended(e) => format!("ended {} {}", e.name, e.reason),
        Announcement::Live(l) => format!("live {}", l.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_adds_a_track_that_an_edge_passes_through_unknown() {
    tls::install_crypto_provider();
    let origin = node("origin", None).await;
    let edge = node("edge", Some(&origin)).await;

    let watcher = client(&origin).await;
    let mut watch = watcher.watch().await.unwrap();
    assert_eq!(summary(&watch.next().await.unwrap()), "live 0");

    // The encoder's side: a local bus published to the origin.
    let enc_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = enc_bus.publish("cam");
    let enc = client(&origin).await;
    let _publication = enc.publish_from("cam", enc_bus.subscribe("cam", SubscribeOptions::default())).await.unwrap();
    let mut sent = push_source(&mut source, 0);

    // The worker's side: its rendition on a local bus, added to the origin's broadcast.
    let work_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut rendition = work_bus.publish("out");
    let worker = client(&origin).await;
    assert!(matches!(
        worker.add_track("nobody", "video/av1", work_bus.subscribe("out", SubscribeOptions::default())).await,
        Err(QuicError::NotFound(_))
    ));
    let _track =
        worker.add_track("cam", "video/av1", work_bus.subscribe("out", SubscribeOptions::default())).await.unwrap();
    push_av1(&mut rendition, 0);
    let second = client(&origin).await;
    let taken = second.add_track("cam", "video/av1", work_bus.subscribe("out", SubscribeOptions::default())).await;
    assert!(matches!(taken, Err(QuicError::Taken(_))), "{:?}", taken.err());

    // The origin lists the track with its codec, untouched.
    let listing = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let live = watcher.list().await.unwrap();
            if live.first().is_some_and(|c| c.tracks.len() == 3) {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the origin lists the added track");
    assert_eq!(listing[0].track("video/av1").unwrap().codec, av1());
    assert_eq!(listing[0].track("video/av1").unwrap().id, TrackId::FIRST_DERIVED);

    // Viewers at the edge, which has never seen AV1 nor this track.
    let viewer = client(&edge).await;
    let config = BusConfig { window: 4, max_lag: 4 };
    let mut chosen =
        viewer.subscribe_tracks("cam", &["video/av1", "audio"], StartAt::CurrentGop, config).await.unwrap();
    let plain_viewer = client(&edge).await;
    let mut plain = plain_viewer.subscribe("cam", StartAt::CurrentGop, config).await.unwrap();

    for g in 1..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        sent.extend(push_source(&mut source, g));
        tokio::time::sleep(Duration::from_millis(60)).await;
        push_av1(&mut rendition, g);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(source.is_active(), "the worker never took the broadcast over");
    source.end(EndReason::PublisherLeft);

    // The chosen tracks, GoP by GoP, from the rendition's keyframes, time-aligned.
    let mut gops = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), chosen.next()).await.expect("events") {
            Event::Gop(h) => gops.push((h, Vec::new())),
            Event::Frame(f) => gops.last_mut().expect("header first").1.push(f.header),
            Event::End(r) => break r,
            Event::CutShort { .. } | Event::Skipped { .. } => {}
        }
    };
    assert_eq!(end, EndReason::PublisherLeft);
    let with_av1: Vec<_> = gops.iter().filter(|(h, _)| h.tracks.len() == 2).collect();
    assert!(with_av1.len() >= 4, "GoPs with the AV1 track: {}", with_av1.len());
    for (h, frames) in with_av1 {
        assert_eq!(h.tracks[0].name, "video/av1");
        assert_eq!(h.tracks[0].codec, av1());
        assert_eq!(h.tracks[1].name, "audio");
        let first = frames[0];
        assert!(first.track == TrackId(16) && first.is_keyframe() && first.dts == h.start_dts);
        assert!(frames.windows(2).all(|w| w[0].dts <= w[1].dts), "decode order");
        assert_eq!(frames.iter().filter(|f| f.track == TrackId(16)).count(), 13);
        assert_eq!(frames.iter().filter(|f| f.track == TrackId::AUDIO).count(), 24);
        assert!(frames.iter().all(|f| f.track != TrackId::VIDEO));
    }

    // A viewer of the published broadcast gets exactly what the encoder sent.
    let mut got = Vec::new();
    let start = loop {
        match tokio::time::timeout(Duration::from_secs(5), plain.next()).await.expect("events") {
            Event::Gop(h) if got.is_empty() => break h.start_dts,
            _ => {}
        }
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(5), plain.next()).await.expect("events") {
            Event::Frame(f) => got.push(f.header),
            Event::End(_) => break,
            _ => {}
        }
    }
    let expected: Vec<FrameHeader> = sent.iter().copied().filter(|h| h.dts >= start).collect();
    assert_eq!(got, expected);

    // The watcher saw each change once.
    let mut seen = Vec::new();
    while let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        seen.push(summary(&a));
    }
    assert_eq!(
        seen,
        ["started cam video,audio", "changed cam video,audio,video/av1", "ended cam publisher left"],
        "announcements over QUIC"
    );
    assert!(watcher.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_a_bounded_number_of_requests() {
    tls::install_crypto_provider();
    let origin = node("limits", None).await;
    let c = client(&origin).await;
    let mut watches = Vec::new();
    for _ in 0..gopbus_bus::quic::MAX_REQUESTS_PER_CONNECTION {
        watches.push(c.watch().await.unwrap());
    }
    match c.watch().await {
        Err(QuicError::Rejected { code, message }) => {
            assert_eq!(code, gopbus_proto::wire::ErrorCode::Invalid);
            assert!(message.contains("too many open requests"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // Other connections are not affected, and freeing requests makes room again.
    let other = client(&origin).await;
    assert!(other.list().await.unwrap().is_empty());
    watches.truncate(10);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if c.watch().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("room again after unwatching");
}

/// A node that makes one derived track itself (a WebRTC node's Opus) and
/// fetches another from upstream (the origin's rendition) into its bus: ids
/// are the bus's, so the fetched track takes this bus's id for it, not the
/// one it had upstream, which here is the local track's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_fetched_from_upstream_does_not_take_the_id_of_a_track_made_here() {
    tls::install_crypto_provider();
    let origin = node("ids", None).await;
    let enc_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = enc_bus.publish("cam");
    let enc = client(&origin).await;
    let _publication = enc.publish_from("cam", enc_bus.subscribe("cam", SubscribeOptions::default())).await.unwrap();
    push_source(&mut source, 0);
    let work_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut rendition = work_bus.publish("out");
    let worker = client(&origin).await;
    let _track =
        worker.add_track("cam", "video/av1", work_bus.subscribe("out", SubscribeOptions::default())).await.unwrap();
    push_av1(&mut rendition, 0);

    // The node: the broadcast fetched, its own track added, then the origin's.
    let node_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let fetcher = client(&origin).await;
    let _cam = fetcher.subscribe_into("cam", StartAt::CurrentGop, &node_bus).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while node_bus.catalog("cam").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the broadcast reached the node");
    let mut own = node_bus.add_track("cam", "audio/own").unwrap();
    assert_eq!(own.track_id(), Some(TrackId::FIRST_DERIVED), "the first track made on the node");
    assert_eq!(watcher_id(&fetcher, "video/av1").await, TrackId::FIRST_DERIVED, "the origin's id for its track");
    let _av1 = fetcher.subscribe_into("cam/video/av1", StartAt::CurrentGop, &node_bus).await.unwrap();
    let mut chosen = node_bus.subscribe_tracks("cam", &["video/av1", "audio/own"], SubscribeOptions::default());

    // The node's own track: an audio track like the source's.
    let own_header = |g: i64| {
        let mut h = source_header(g * 500);
        h.tracks.remove(0);
        h
    };
    for g in 1..4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        push_source(&mut source, g);
        push_av1(&mut rendition, g);
        own.open_gop(own_header(g)).unwrap();
        for i in 0..25 {
            own.push(frame(TrackId(0), g * 500 + i * 20, true, 4)).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let catalog = node_bus.catalog("cam").unwrap();
    let (av1_id, own_id) = (catalog.track("video/av1").unwrap().id, catalog.track("audio/own").unwrap().id);
    assert_ne!(av1_id, own_id, "{catalog:?}");
    // Every frame is named by its header as the track it is (the fill byte says which).
    let mut header: Option<std::sync::Arc<GopHeader>> = None;
    let mut counts = [0usize; 2];
    while let Ok(e) = tokio::time::timeout(Duration::from_millis(300), chosen.next()).await {
        match e {
            Event::Gop(h) => header = Some(h),
            Event::Frame(f) => {
                let h = header.as_ref().expect("a header first");
                let track = h.tracks.iter().find(|t| t.id == f.header.track).expect("the frame's track is listed");
                let fill = f.payload.contiguous()[0];
                match track.name.as_str() {
                    "video/av1" => {
                        assert_eq!(fill, 3, "{h:?}");
                        counts[0] += 1;
                    }
                    "audio/own" => {
                        assert_eq!(fill, 4, "{h:?}");
                        counts[1] += 1;
                    }
                    other => panic!("unexpected track {other}"),
                }
            }
            _ => {}
        }
    }
    assert!(counts[0] >= 13 && counts[1] >= 25, "frames of each track: {counts:?}");
}

/// The id `watcher`'s node gives `cam`'s track `track`.
async fn watcher_id(watcher: &BusClient, track: &str) -> TrackId {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(t) = watcher.list().await.unwrap().first().and_then(|c| c.track(track)) {
                return t.id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the track is listed")
}
