//! Derived tracks, track selection, the catalog and announcements, in process.

use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::{Announcement, Bus, BusConfig, BusError, Event, Publisher, SubscribeOptions, TrackSubscriber};
use gopbus_proto::{
    AudioConfig, Codec, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, OpusConfig, Payload, TrackId, TrackInfo,
    VideoConfig,
};

fn video_config(width: u32) -> VideoConfig {
    VideoConfig { avcc: vec![1, 100, 0, 31, width as u8], width, height: width * 9 / 16, profile: 100, level: 31 }
}

fn source_header(start: i64, width: u32) -> GopHeader {
    GopHeader {
        seq: 0,
        start_dts: start,
        tracks: vec![
            TrackInfo::video(video_config(width)),
            TrackInfo::audio(AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 }),
        ],
        metadata: None,
    }
}

/// A derived track's header: one track; the bus fills in its id and name.
fn derived_header(start: i64, codec: Codec) -> GopHeader {
    GopHeader {
        seq: 0,
        start_dts: start,
        tracks: vec![TrackInfo { id: TrackId(0), name: String::new(), codec }],
        metadata: None,
    }
}

fn opus() -> Codec {
    Codec::Opus(OpusConfig { channels: 2, input_sample_rate: 48000, pre_skip: 312 })
}

fn frame(track: TrackId, dts: i64, key: bool) -> Frame {
    let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::default() };
    let payload = Payload::from_bytes(Bytes::from(vec![track.0; 8]));
    Frame { header: FrameHeader { track, dts, cts: 0, flags, len: 8 }, payload }
}

/// Source GoP `g` (1 s long from `g * 1000`): video every 40 ms, AAC every 21 ms, interleaved by dts.
fn push_source_gop(p: &mut Publisher, g: i64) {
    p.open_gop(source_header(g * 1000, 640)).unwrap();
    let (mut v, mut a) = (0i64, 0i64);
    while v < 1000 || a < 1000 {
        if v <= a && v < 1000 {
            p.push(frame(TrackId::VIDEO, g * 1000 + v, v == 0)).unwrap();
            v += 40;
        } else {
            p.push(frame(TrackId::AUDIO, g * 1000 + a, true)).unwrap();
            a += 21;
        }
    }
}

/// The Opus rendering of source GoP `g`: a frame every 20 ms (the track id is the bus's).
fn push_opus_gop(p: &mut Publisher, g: i64) {
    p.open_gop(derived_header(g * 1000, opus())).unwrap();
    for i in 0..50 {
        p.push(frame(TrackId(99), g * 1000 + i * 20, true)).unwrap();
    }
}

/// The 480p rendering of source GoP `g`: a keyframe at the source's, then a frame every 40 ms.
fn push_480p_gop(p: &mut Publisher, g: i64) {
    p.open_gop(derived_header(g * 1000, Codec::H264(video_config(480)))).unwrap();
    for i in 0..25 {
        p.push(frame(TrackId(99), g * 1000 + i * 40, i == 0)).unwrap();
    }
}

type Gop = (std::sync::Arc<GopHeader>, Vec<Frame>);

/// Everything the subscriber has until it goes quiet for 200 ms, as GoPs (plus the end, if it came).
async fn gops(s: &mut TrackSubscriber) -> (Vec<Gop>, Option<EndReason>) {
    gops_until_quiet(s, Duration::from_millis(200)).await
}

async fn gops_until_quiet(s: &mut TrackSubscriber, quiet: Duration) -> (Vec<Gop>, Option<EndReason>) {
    let mut out: Vec<Gop> = Vec::new();
    loop {
        match tokio::time::timeout(quiet, s.next()).await {
            Ok(Event::Gop(h)) => out.push((h, Vec::new())),
            Ok(Event::Frame(f)) => out.last_mut().expect("a GoP header before frames").1.push(f),
            Ok(Event::End(r)) => return (out, Some(r)),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => return (out, None),
        }
    }
}

fn names(h: &GopHeader) -> Vec<&str> {
    h.tracks.iter().map(|t| t.name.as_str()).collect()
}

#[tokio::test]
async fn a_worker_adds_a_track_without_taking_the_broadcast_over() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("alice");
    push_source_gop(&mut source, 0);

    assert_eq!(bus.add_track("bob", "audio/opus").err(), Some(BusError::NotLive("bob".into())));
    assert!(matches!(bus.add_track("alice", "video"), Err(BusError::InvalidTrack(_))));
    assert!(matches!(bus.add_track("alice", "Bad Name"), Err(BusError::InvalidTrack(_))));
    let mut worker = bus.add_track("alice", "audio/opus").unwrap();
    assert_eq!(worker.track_id(), Some(TrackId::FIRST_DERIVED));
    assert_eq!(bus.add_track("alice", "audio/opus").err(), Some(BusError::TrackTaken("alice/audio/opus".into())));
    // A derived GoP header lists exactly one track.
    assert!(matches!(worker.open_gop(source_header(0, 640)), Err(BusError::InvalidTrack(_))));
    push_opus_gop(&mut worker, 0);

    // The source is untouched: same publisher, still pushing.
    assert!(source.is_active());
    let catalog = bus.catalog("alice").unwrap();
    let listed: Vec<(&str, u8, &str)> =
        catalog.tracks.iter().map(|t| (t.name.as_str(), t.id.0, t.codec.name())).collect();
    assert_eq!(listed, [("video", 0, "h264"), ("audio", 1, "aac"), ("audio/opus", 16, "opus")]);
    assert_eq!(bus.catalogs().len(), 1, "a derived track is not a broadcast of its own in the list");

    let mut chosen = bus.subscribe_tracks("alice", &["video", "audio/opus"], SubscribeOptions::default());
    let mut published = bus.subscribe_tracks("alice", &[], SubscribeOptions::default());
    let mut plain = bus.subscribe("alice", SubscribeOptions::default());

    push_source_gop(&mut source, 1);
    push_opus_gop(&mut worker, 1);
    push_source_gop(&mut source, 2);

    // GoP 2 waits for the Opus worker, which is live: it may still render it.
    let (got, _) = gops(&mut chosen).await;
    assert_eq!(got.len(), 2);
    for (g, (h, frames)) in got.iter().enumerate() {
        let g = g as i64;
        assert_eq!(h.start_dts, g * 1000);
        assert_eq!(names(h), ["video", "audio/opus"]);
        assert_eq!(h.tracks[1].id, TrackId(16));
        assert!(matches!(h.tracks[1].codec, Codec::Opus(_)));
        // Starts at the video keyframe, then both tracks in decode order; no AAC.
        assert_eq!((frames[0].header.track, frames[0].header.dts), (TrackId::VIDEO, g * 1000));
        assert!(frames[0].header.is_keyframe());
        assert!(frames.windows(2).all(|w| w[0].header.dts <= w[1].header.dts), "decode order");
        assert_eq!(frames.iter().filter(|f| f.header.track == TrackId::VIDEO).count(), 25);
        assert_eq!(frames.iter().filter(|f| f.header.track == TrackId(16)).count(), 50);
        assert!(frames.iter().all(|f| f.header.track != TrackId::AUDIO));
    }

    // Subscribers of the published tracks see exactly what the publisher pushed.
    let mut plain_frames = Vec::new();
    while let Some(ev) = plain.try_next() {
        if let Event::Frame(f) = ev {
            plain_frames.push(f.header);
        }
    }
    assert_eq!(plain_frames.len(), 3 * (25 + 48));
    assert!(plain_frames.iter().all(|h| h.track == TrackId::VIDEO || h.track == TrackId::AUDIO));
    let mut merged = Vec::new();
    for (h, frames) in gops(&mut published).await.0 {
        assert_eq!(names(&h), ["video", "audio"]);
        merged.extend(frames.into_iter().map(|f| f.header));
    }
    assert_eq!(merged, plain_frames, "the published tracks, in the publisher's order");

    // The derived track ends with its source.
    source.end(EndReason::PublisherLeft);
    assert_eq!(worker.push(frame(TrackId(99), 2000, true)).err(), Some(BusError::Ended));
    assert!(bus.catalog("alice").is_none());
    assert!(!bus.is_live("alice/audio/opus"));
    // Now GoP 2 comes without Opus (its worker never rendered it), and the header says so.
    let (got, end) = gops(&mut chosen).await;
    assert_eq!(got.len(), 1);
    let (h, frames) = &got[0];
    assert_eq!(names(h), ["video"]);
    assert_eq!(frames.len(), 25);
    assert!(frames.iter().all(|f| f.header.track == TrackId::VIDEO));
    assert_eq!(end, Some(EndReason::PublisherLeft));
}

#[tokio::test]
async fn a_rendition_one_gop_behind_drives_its_subscribers_aligned_with_the_source() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("cam");
    push_source_gop(&mut source, 0);
    let mut sub = bus.subscribe_tracks("cam", &["video/480p", "audio"], SubscribeOptions::default());
    let mut worker = bus.add_track("cam", "video/480p").unwrap();
    // A transcoder renders GoP k once the source has moved on to GoP k+1.
    for g in 1..4 {
        push_source_gop(&mut source, g);
        push_480p_gop(&mut worker, g - 1);
    }
    let (got, _) = gops(&mut sub).await;
    assert_eq!(got.len(), 3);
    for (g, (h, frames)) in got.iter().enumerate() {
        let g = g as i64;
        assert_eq!(h.start_dts, g * 1000, "the rendition's GoP k starts where the source's does");
        assert_eq!(names(h), ["video/480p", "audio"]);
        let Codec::H264(v) = &h.tracks[0].codec else { panic!("h264") };
        assert_eq!(v.width, 480);
        let first = &frames[0].header;
        assert!(first.track == TrackId(16) && first.is_keyframe() && first.dts == g * 1000);
        assert!(frames.windows(2).all(|w| w[0].header.dts <= w[1].header.dts));
        if g == 2 {
            // The rendition's GoP 2 is still open: the merge holds the source's
            // audio past the rendition's last frame (it could still send earlier frames).
            assert_eq!(frames.last().unwrap().header.dts, 2960);
            continue;
        }
        assert_eq!(frames.iter().filter(|f| f.header.track == TrackId::AUDIO).count(), 48);
        assert_eq!(frames.iter().filter(|f| f.header.track == TrackId(16)).count(), 25);
    }

    // The worker dies; a new one takes the track over and keeps its id.
    drop(worker);
    assert!(!bus.is_live("cam/video/480p"));
    let mut second = bus.add_track("cam", "video/480p").unwrap();
    assert_eq!(second.track_id(), Some(TrackId(16)));
    push_source_gop(&mut source, 4);
    push_480p_gop(&mut second, 3);
    // The rest of GoP 2 (the audio the merge held back), the cut, then GoP 3 from the new worker.
    let mut rest = Vec::new();
    let header = loop {
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await.expect("an event") {
            Event::Gop(h) => break h,
            Event::Frame(f) => rest.push((f.header.track, f.header.dts)),
            Event::CutShort { seq } => rest.push((TrackId(255), seq as i64)),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(rest, [(TrackId::AUDIO, 2966), (TrackId::AUDIO, 2987), (TrackId(255), 2)]);
    assert_eq!((header.start_dts, names(&header)), (3000, vec!["video/480p", "audio"]));
}

#[tokio::test]
async fn announcements_tell_start_track_changes_and_end_once_each() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut watch = bus.announcements();
    assert_eq!(watch.next().await, Announcement::Live(Vec::new()));

    let mut source = bus.publish("alice");
    push_source_gop(&mut source, 0);
    push_source_gop(&mut source, 1); // same tracks: no announcement
    let mut worker = bus.add_track("alice", "audio/opus").unwrap();
    push_opus_gop(&mut worker, 1);
    push_opus_gop(&mut worker, 2); // same track: no announcement
    source.open_gop(source_header(2000, 1280)).unwrap(); // a new resolution
    drop(worker);
    source.end(EndReason::KeyRevoked);

    let mut seen = Vec::new();
    while let Ok(a) = tokio::time::timeout(Duration::from_millis(200), watch.next()).await {
        seen.push(a);
    }
    let summary: Vec<String> = seen
        .iter()
        .map(|a| match a {
            Announcement::Started(c) => {
                format!("started {} {:?}", c.name, c.tracks.iter().map(|t| &t.name).collect::<Vec<_>>())
            }
            Announcement::Changed(c) => {
                format!("changed {} {:?}", c.name, c.tracks.iter().map(|t| &t.name).collect::<Vec<_>>())
            }
            Announcement::Ended(e) => format!("ended {} {}", e.name, e.reason),
            Announcement::Live(l) => format!("live {}", l.len()),
        })
        .collect();
    assert_eq!(
        summary,
        [
            r#"started alice ["video", "audio"]"#,
            r#"changed alice ["video", "audio", "audio/opus"]"#,
            r#"changed alice ["video", "audio", "audio/opus"]"#,
            r#"changed alice ["video", "audio"]"#,
            "ended alice stream key revoked",
        ]
    );
    // The third is the resolution change.
    let Announcement::Changed(c) = &seen[2] else { unreachable!() };
    assert_eq!(c.tracks[0].codec, Codec::H264(video_config(1280)));

    // A watcher that falls behind gets the live list instead of what it missed.
    let mut slow = bus.announcements();
    let _ = slow.next().await;
    let mut keep = Vec::new();
    for i in 0..gopbus_bus::ANNOUNCEMENT_BACKLOG + 10 {
        let mut p = bus.publish(&format!("s{i}"));
        p.open_gop(source_header(0, 640)).unwrap();
        keep.push(p);
    }
    match slow.next().await {
        Announcement::Live(l) => assert_eq!(l.len(), gopbus_bus::ANNOUNCEMENT_BACKLOG + 10),
        other => panic!("expected the live list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_max_wait_a_silent_worker_holds_the_driving_track_back_no_longer_than_that() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("s");
    // The worker opens GoP 0 and then goes silent while staying connected.
    source.open_gop(source_header(0, 640)).unwrap();
    let mut worker = bus.add_track("s", "audio/opus").unwrap();
    worker.open_gop(derived_header(0, opus())).unwrap();
    let mut sub = bus
        .subscribe_tracks("s", &["video", "audio/opus"], SubscribeOptions::default())
        .with_max_wait(Duration::from_millis(100));
    assert!(matches!(sub.next().await, Event::Gop(_)));
    let started = std::time::Instant::now();
    source.push(frame(TrackId::VIDEO, 0, true)).unwrap();
    // Without the bound this would wait for the next GoP, which never comes here.
    let ev = tokio::time::timeout(Duration::from_secs(2), sub.next()).await.expect("held back until the next GoP");
    assert!(matches!(ev, Event::Frame(f) if f.header.track == TrackId::VIDEO));
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_does_not_hold_the_driving_track_back() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("s");
    push_source_gop(&mut source, 0);
    // The worker starts GoP 0, then produces nothing more while staying connected.
    let mut worker = bus.add_track("s", "audio/opus").unwrap();
    worker.open_gop(derived_header(0, opus())).unwrap();
    worker.push(frame(TrackId(99), 0, true)).unwrap();
    let mut sub = bus.subscribe_tracks("s", &["video", "audio/opus"], SubscribeOptions::default());
    let feeder = tokio::spawn(async move {
        for g in 1..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            push_source_gop(&mut source, g);
        }
        source
    });
    let (got, end) = gops_until_quiet(&mut sub, Duration::from_secs(1)).await;
    assert_eq!(end, None);
    let starts: Vec<(i64, Vec<&str>)> = got.iter().map(|(h, _)| (h.start_dts, names(h))).collect();
    assert!(starts.len() >= 3, "the video went on without the stalled track: {starts:?}");
    assert_eq!(starts[0], (0, vec!["video", "audio/opus"]));
    assert!(starts[1..].iter().all(|(_, n)| *n == ["video"]), "{starts:?}");
    // GoP 0: every video frame, and the one Opus frame the worker made.
    let video = got[0].1.iter().filter(|f| f.header.track == TrackId::VIDEO).count();
    let opus = got[0].1.iter().filter(|f| f.header.track == TrackId(16)).count();
    assert_eq!((video, opus), (25, 1));
    let _source = feeder.await.unwrap();
    drop(worker);
}

#[tokio::test]
async fn a_worker_taking_a_rendition_over_at_a_gop_already_given_out_is_picked_up_after_it() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("cam");
    push_source_gop(&mut source, 0);
    let mut sub = bus.subscribe_tracks("cam", &["video/480p", "audio"], SubscribeOptions::default());
    let mut worker = bus.add_track("cam", "video/480p").unwrap();
    for g in 1..3 {
        push_source_gop(&mut source, g);
        push_480p_gop(&mut worker, g - 1);
    }
    let (got, _) = gops(&mut sub).await;
    assert_eq!(got.iter().map(|(h, _)| h.start_dts).collect::<Vec<_>>(), [0, 1000]);
    // The worker dies during GoP 1; the next one starts at the source's
    // current GoP, which is GoP 1 again, then renders GoP 2.
    drop(worker);
    let mut second = bus.add_track("cam", "video/480p").unwrap();
    push_480p_gop(&mut second, 1);
    let mut got: Vec<Gop> = Vec::new();
    drain(&mut sub, &mut got).await;
    push_source_gop(&mut source, 3);
    push_480p_gop(&mut second, 2);
    push_source_gop(&mut source, 4);
    drain(&mut sub, &mut got).await;
    let starts: Vec<i64> = got.iter().map(|(h, _)| h.start_dts).collect();
    assert_eq!(starts, [2000], "GoP 1 is not given twice; the subscriber goes on at GoP 2");
    let video: Vec<i64> = got[0].1.iter().filter(|f| f.header.track == TrackId(16)).map(|f| f.header.dts).collect();
    assert_eq!(video.len(), 25);
    assert_eq!(video[0], 2000);
}

/// Adds what `sub` has until it goes quiet to `got`; frames before the first
/// header (the rest of a GoP given out earlier) and cuts are left out.
async fn drain(sub: &mut TrackSubscriber, got: &mut Vec<Gop>) {
    while let Ok(ev) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        match ev {
            Event::Gop(h) => got.push((h, Vec::new())),
            Event::Frame(f) => {
                if let Some(g) = got.last_mut() {
                    g.1.push(f);
                }
            }
            Event::CutShort { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_track_fetched_by_name_takes_this_buss_next_id_and_leaves_no_slot_behind() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut source = bus.publish("alice");
    push_source_gop(&mut source, 0);
    // What a node does with a track made elsewhere: publish it under its name.
    let mut fetched = bus.publish("alice/video/480p");
    assert_eq!(fetched.track_id(), Some(TrackId::FIRST_DERIVED));
    let mut worker = bus.add_track("alice", "audio/opus").unwrap();
    assert_eq!(worker.track_id(), Some(TrackId(TrackId::FIRST_DERIVED.0 + 1)));
    let mut sub = bus.subscribe_tracks("alice", &["video/480p", "audio/opus"], SubscribeOptions::default());
    push_480p_gop(&mut fetched, 1);
    push_opus_gop(&mut worker, 1);
    source.open_gop(source_header(1000, 640)).unwrap();
    let (gops, _) = gops(&mut sub).await;
    let (header, frames) = gops.iter().find(|(h, _)| h.tracks.len() == 2).expect("a GoP with both tracks");
    assert_eq!(names(header), ["video/480p", "audio/opus"]);
    let (video, opus) = (header.tracks[0].id, header.tracks[1].id);
    assert_ne!(video, opus);
    // The 480p GoP: 25 frames, a keyframe first; Opus: every frame a keyframe.
    let of = |id| frames.iter().filter(move |f| f.header.track == id);
    assert_eq!((of(video).count(), of(video).filter(|f| f.header.is_keyframe()).count()), (25, 1));
    assert!(of(opus).count() >= 45 && of(opus).all(|f| f.header.is_keyframe()), "{frames:?}");
    assert_eq!(of(video).count() + of(opus).count(), frames.len());

    // A fetched track whose source is not published here keeps the source's
    // slot (its ids) only while it lives.
    let slots = bus.slots();
    let lone = bus.publish("bob/audio/opus");
    assert_eq!(lone.track_id(), Some(TrackId::FIRST_DERIVED));
    assert_eq!(bus.slots(), slots + 2);
    drop(lone);
    assert_eq!(bus.slots(), slots);
}
