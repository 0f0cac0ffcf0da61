//! Publisher takeover, disconnects, malformed input, and many streams at once,
//! against the real `gopbus serve` with light RTMP clients.

mod common;

use std::time::Duration;

use bench::flv::{self, Tag};
use bench::rtmp::{Client, Media};
use common::*;

fn nalu_count(tags: &[Tag]) -> usize {
    tags.iter().filter(|t| t.kind == flv::TAG_VIDEO && t.data.get(1) == Some(&1)).count()
}

fn raw_audio_count(tags: &[Tag]) -> usize {
    tags.iter().filter(|t| t.kind == flv::TAG_AUDIO && t.data.get(1) == Some(&1)).count()
}

/// Reads media until the server ends the stream or `limit` passes without any.
async fn collect(player: &mut Client, limit: Duration) -> Vec<Media> {
    let mut got = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(limit, player.next_media()).await {
        got.push(m);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_keeps_players_connected_with_rising_timestamps() {
    let server = Server::start("takeover");
    let key = server.create_stream("t");
    let tags = flv::read(&Fixture::av(48000, 4)).unwrap();
    let half = tags.len() / 2;

    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("t").await.unwrap();
    let reader = tokio::spawn(async move { collect(&mut player, Duration::from_secs(15)).await });

    let mut a = Client::connect(server.rtmp, "live").await.unwrap();
    a.publish(&key).await.unwrap();
    a.publish_tags(&tags[..half], 2.0).await.unwrap();
    // The same key again while the first session is alive: takes over at once.
    let mut b = Client::connect(server.rtmp, "live").await.unwrap();
    b.publish(&key).await.unwrap();
    assert!(a.closed_by_server(Duration::from_secs(5)).await, "old session not closed on takeover");
    // The new session starts its timestamps from zero again, as a restarted encoder does.
    b.publish_tags(&tags, 2.0).await.unwrap();
    drop(b);

    let got = reader.await.unwrap();
    let video: Vec<&Media> = got.iter().filter(|m| m.kind == flv::TAG_VIDEO && m.data[1] == 1).collect();
    let audio: Vec<&Media> = got.iter().filter(|m| m.kind == flv::TAG_AUDIO && m.data[1] == 1).collect();
    // Everything A sent before the takeover, then all of B's stream.
    assert_eq!(video.len(), nalu_count(&tags[..half]) + nalu_count(&tags), "video frames across the takeover");
    assert_eq!(audio.len(), raw_audio_count(&tags[..half]) + raw_audio_count(&tags));
    for track in [&video, &audio] {
        for w in track.windows(2) {
            assert!(
                w[1].timestamp >= w[0].timestamp,
                "timestamps went back: {} then {}",
                w[0].timestamp,
                w[1].timestamp
            );
        }
    }
    let log = server.log_text();
    assert!(log.contains("publisher took over"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_disconnect_mid_gop_ends_the_broadcast_cleanly() {
    let server = Server::start("drop");
    let key = server.create_stream("d");
    let tags = flv::read(&Fixture::av(48000, 4)).unwrap();
    // Cut in the middle of the second GoP (GoPs are 30 frames).
    let cut = tags.iter().enumerate().filter(|(_, t)| t.kind == flv::TAG_VIDEO).nth(45).unwrap().0;

    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("d").await.unwrap();
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    publisher.publish_tags(&tags[..cut], 4.0).await.unwrap();
    drop(publisher); // TCP closed without deleteStream

    let got = collect(&mut player, Duration::from_secs(10)).await;
    assert_eq!(got.iter().filter(|m| m.kind == flv::TAG_VIDEO && m.data[1] == 1).count(), nalu_count(&tags[..cut]));
    assert!(player.closed_by_server(Duration::from_secs(5)).await, "player not closed after the broadcast ended");

    // The name is free again: a new publisher and a new player work.
    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("d").await.unwrap();
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    publisher.publish_tags(&tags, 4.0).await.unwrap();
    drop(publisher);
    let got = collect(&mut player, Duration::from_secs(10)).await;
    assert_eq!(got.iter().filter(|m| m.is_video_keyframe()).count(), 4);
    let log = server.log_text();
    assert!(log.contains("broadcast ended") && log.contains("publisher left"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_disconnects_only_the_offender() {
    let server = Server::start("malformed");
    let key = server.create_stream("m");
    let tags = flv::read(&Fixture::av(48000, 4)).unwrap();

    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("m").await.unwrap();
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    let feed = tokio::spawn(async move {
        publisher.publish_tags(&tags, 1.0).await.unwrap();
        tags
    });

    // A chunk continuing a message on a chunk stream that never started one.
    let mut bad = Client::connect(server.rtmp, "live").await.unwrap();
    bad.send_raw(&[0xc9, 1, 2, 3, 4, 5]).await.unwrap();
    assert!(bad.closed_by_server(Duration::from_secs(5)).await);
    // An absurd message length.
    let mut bad = Client::connect(server.rtmp, "live").await.unwrap();
    bad.send_raw(&[0x09, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]).await.unwrap();
    assert!(bad.closed_by_server(Duration::from_secs(5)).await);
    // Garbage instead of a handshake.
    let mut raw = tokio::net::TcpStream::connect(server.rtmp).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x42; 1537]).await.unwrap();
    let mut sink = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink)).await;
    assert!(closed.is_ok(), "bad handshake not closed");
    // A publisher sending a codec gopbus does not take (MP3 audio) is refused.
    let mut mp3 = Client::connect(server.rtmp, "live").await.unwrap();
    let key2 = server.create_stream("mp3");
    mp3.publish(&key2).await.unwrap();
    mp3.send_tag(&Tag { kind: flv::TAG_AUDIO, timestamp: 0, data: vec![0x2f, 0xff, 0xfb].into() }).await.unwrap();
    assert!(mp3.closed_by_server(Duration::from_secs(5)).await);

    // The good stream was not disturbed: every frame arrived.
    let got = collect(&mut player, Duration::from_secs(10)).await;
    let tags = feed.await.unwrap();
    assert_eq!(got.iter().filter(|m| m.kind == flv::TAG_VIDEO && m.data[1] == 1).count(), nalu_count(&tags));
    let log = server.log_text();
    for expected in
        ["continues a message that never started", "exceeds the limit", "handshake", "unsupported FLV sound format"]
    {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_publishers_with_a_hundred_players() {
    const STREAMS: usize = 20;
    const PLAYERS_PER_STREAM: usize = 5;
    let server = Server::start("load");
    let keys: Vec<String> = (0..STREAMS).map(|i| server.create_stream(&format!("s{i}"))).collect();
    let tags = std::sync::Arc::new(flv::read(&Fixture::av(48000, 3)).unwrap());
    let want_video = nalu_count(&tags);
    let want_audio = raw_audio_count(&tags);

    let mut players = Vec::new();
    for i in 0..STREAMS {
        for _ in 0..PLAYERS_PER_STREAM {
            let mut p = Client::connect(server.rtmp, "live").await.unwrap();
            p.play(&format!("s{i}")).await.unwrap();
            players.push(tokio::spawn(async move { collect(&mut p, Duration::from_secs(20)).await }));
        }
    }
    let mut publishers = Vec::new();
    for key in keys {
        let tags = tags.clone();
        let addr = server.rtmp;
        publishers.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, "live").await?;
            c.publish(&key).await?;
            c.publish_tags(&tags, 1.0).await?;
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await.unwrap().unwrap();
    }
    for (i, p) in players.into_iter().enumerate() {
        let got = p.await.unwrap();
        let video = got.iter().filter(|m| m.kind == flv::TAG_VIDEO && m.data[1] == 1).count();
        let audio = got.iter().filter(|m| m.kind == flv::TAG_AUDIO && m.data[1] == 1).count();
        assert_eq!((video, audio), (want_video, want_audio), "player {i} of stream s{}", i / PLAYERS_PER_STREAM);
    }
    let log = server.log_text();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_only_hurts_itself() {
    let server = Server::start("slow");
    let key = server.create_stream("fat");
    // 3 MB/s for 4 s: far more than the stalled player's buffers hold.
    let tags = flv::synthetic_video(120, 100_000, 30);

    let mut stalled = Client::connect_small_buffer(server.rtmp, "live").await.unwrap();
    stalled.play("fat").await.unwrap();
    let mut good = Client::connect(server.rtmp, "live").await.unwrap();
    good.play("fat").await.unwrap();
    let reader = tokio::spawn(async move { collect(&mut good, Duration::from_secs(10)).await });

    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    let started = std::time::Instant::now();
    publisher.publish_tags(&tags, 1.0).await.unwrap();
    // The publisher was never held back by the stalled player.
    assert!(started.elapsed() < Duration::from_secs(6), "publishing took {:?}", started.elapsed());
    drop(publisher);

    let got = reader.await.unwrap();
    assert_eq!(got.iter().filter(|m| m.data[1] == 1).count(), 120, "the reading player missed frames");
    // The stalled one fell behind and skipped GoPs; it is closed, not waited for.
    assert!(stalled.closed_by_server(Duration::from_secs(10)).await, "stalled player still connected");
    let log = server.log_text();
    let skipped = log.lines().any(|l| l.contains("closing player") && !l.contains("skipped_gops=0"));
    assert!(skipped, "the stalled player skipped no GoP:\n{log}");
}

/// A gauge from `/metrics` (no labels).
fn gauge(server: &Server, name: &str) -> f64 {
    let (status, _, body) = http(server.http, "GET", "/metrics", "", b"");
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body).into_owned();
    body.lines()
        .find_map(|l| {
            let v = l.strip_prefix(name)?;
            v.strip_prefix("{} ").or_else(|| v.strip_prefix(' ')).map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// Connections on each RTMP event loop, from `/metrics`.
fn loop_connections(server: &Server, loops: usize) -> Vec<f64> {
    (0..loops).map(|i| gauge(server, &format!("gopbus_rtmp_loop_connections{{loop=\"{i}\"}}"))).collect()
}

/// Ten players of one broadcast, with player groups of `group` (0: none) on
/// `threads` RTMP event loops that take `fill` connections each before the
/// next: the eleven connections (ten players, the publisher) are on the loops
/// as `on_loops` says, each player gets every frame of the source, byte for
/// byte and in order, and they are served by the groups the settings ask for
/// (a group writes to players of any loop).
async fn players_of_one_broadcast(group: usize, threads: usize, fill: usize, on_loops: &[f64]) {
    const PLAYERS: usize = 10;
    let server = Server::start_with(
        &format!("group{group}-{threads}-{fill}"),
        &[
            "--rtmp-player-group",
            &group.to_string(),
            "--rtmp-threads",
            &threads.to_string(),
            "--rtmp-loop-fill",
            &fill.to_string(),
        ],
    );
    let key = server.create_stream("g");
    let tags = flv::read(&Fixture::av(48000, 4)).unwrap();
    let body = |t: &Tag| t.data.clone();
    let src_video: Vec<_> = tags.iter().filter(|t| t.kind == flv::TAG_VIDEO && t.data[1] == 1).map(body).collect();
    let src_audio: Vec<_> = tags.iter().filter(|t| t.kind == flv::TAG_AUDIO && t.data[1] == 1).map(body).collect();

    let mut players = Vec::new();
    for _ in 0..PLAYERS {
        let mut p = Client::connect(server.rtmp, "live").await.unwrap();
        p.play("g").await.unwrap();
        players.push(tokio::spawn(async move { collect(&mut p, Duration::from_secs(20)).await }));
    }
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    let publishing = tokio::spawn(async move {
        publisher.publish_tags(&tags, 1.0).await.unwrap();
        publisher
    });
    // Mid-stream, every player has caught up: served by the groups asked for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(loop_connections(&server, threads), on_loops, "connections on each loop (fill {fill})");
    let (grouped, groups) =
        (gauge(&server, "gopbus_rtmp_grouped_players"), gauge(&server, "gopbus_rtmp_player_groups"));
    if group == 0 {
        assert_eq!((grouped, groups), (0.0, 0.0));
    } else if threads <= 1 {
        assert_eq!((grouped, groups), (PLAYERS as f64, PLAYERS.div_ceil(group) as f64));
    } else {
        // The first group runs on the publisher's loop, whichever loop its
        // players are on; past it, players are spread to even the loops
        // (five and five: four groups; two players catching up at the same
        // moment on two loops may both see the same counts and make it six
        // and four: three). Which loop serves whom is `fanout::pick_loop`'s
        // unit test; this checks that players on two loops are all grouped
        // and get everything.
        assert_eq!(grouped, PLAYERS as f64);
        let fewest = PLAYERS.div_ceil(group) as f64;
        assert!(
            groups == fewest || groups == fewest + 1.0,
            "{groups} groups for {PLAYERS} players in groups of {group}"
        );
    }
    drop(publishing.await.unwrap());

    let mut first: Option<Vec<(u8, u32, bytes::Bytes)>> = None;
    for (i, p) in players.into_iter().enumerate() {
        let got = p.await.unwrap();
        let frames =
            |kind| got.iter().filter(|m| m.kind == kind && m.data[1] == 1).map(|m| m.data.clone()).collect::<Vec<_>>();
        assert!(frames(flv::TAG_VIDEO) == src_video, "player {i}: video differs from the source");
        assert!(frames(flv::TAG_AUDIO) == src_audio, "player {i}: audio differs from the source");
        for kind in [flv::TAG_VIDEO, flv::TAG_AUDIO] {
            let ts: Vec<u32> = got.iter().filter(|m| m.kind == kind).map(|m| m.timestamp).collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]), "player {i}: timestamps of tag {kind} go back");
        }
        // Every player got the same messages in the same order.
        let seq: Vec<_> = got.iter().map(|m| (m.kind, m.timestamp, m.data.clone())).collect();
        match &first {
            None => first = Some(seq),
            Some(f) => assert!(*f == seq, "player {i} got other messages than player 0"),
        }
    }
    // Once the broadcast ended, the groups are gone.
    assert_eq!(gauge(&server, "gopbus_rtmp_grouped_players"), 0.0);
    assert_eq!(gauge(&server, "gopbus_rtmp_player_groups"), 0.0);
    let log = server.log_text();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_players_get_every_frame_in_order() {
    players_of_one_broadcast(4, 1, 64, &[11.0]).await;
}

/// On two loops that take one connection each before spreading, the eleven
/// connections are six and five; the players are grouped on the publisher's
/// loop first and then spread over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_players_on_two_event_loops_get_every_frame_in_order() {
    players_of_one_broadcast(4, 2, 1, &[6.0, 5.0]).await;
}

/// On two loops that take eight connections before the next: eight and three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_fill_the_first_event_loop_then_the_next() {
    players_of_one_broadcast(4, 2, 8, &[8.0, 3.0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_groups_players_get_every_frame_in_order() {
    players_of_one_broadcast(0, 0, 64, &[]).await;
}

/// A publisher that sends as fast as TCP takes it (a backlog, a flood) is read
/// in batches rather than once per write it makes; nothing is lost or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_publisher_is_read_in_batches_and_loses_nothing() {
    let server = Server::start_with("flood", &["--no-transcoder", "--no-opus-encoder", "--no-hls"]);
    let key = server.create_stream("flood");
    // 150 MB of video, sent with no pacing: long enough (≥ 0.1 s even on a fast
    // machine) for the rate to be seen over the two windows batching needs.
    let tags = flv::synthetic_video(3000, 50_000, 30);
    let by_ts: std::collections::HashMap<u32, bytes::Bytes> =
        tags.iter().skip(1).map(|t| (t.timestamp, t.data.clone())).collect();
    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("flood").await.unwrap();
    let reader = tokio::spawn(async move { collect(&mut player, Duration::from_secs(10)).await });
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    publisher.publish_tags(&tags, 0.0).await.unwrap();
    // Every frame reached the bus.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gauge(&server, "gopbus_ingest_frames_total") < 3000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "frames on the bus: {}",
            gauge(&server, "gopbus_ingest_frames_total")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge(&server, "gopbus_ingest_frames_total"), 3000.0);
    drop(publisher);
    // What the player got (it may skip GoPs to keep up) is the source, byte for byte.
    let got = reader.await.unwrap();
    let frames: Vec<_> = got.iter().filter(|m| m.kind == flv::TAG_VIDEO && m.data[1] == 1).collect();
    assert!(!frames.is_empty());
    for m in &frames {
        assert!(by_ts.get(&m.timestamp) == Some(&m.data), "frame at {} ms differs from the source", m.timestamp);
    }
    let log = server.log_text();
    assert!(
        log.lines().any(|l| l.contains("crossed the batching rate") && l.contains("batching=true")),
        "the flood was not read in batches:\n{log}"
    );
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}
