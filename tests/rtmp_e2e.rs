//! End to end over real RTMP: ffmpeg publishes into `gopbus serve`, ffmpeg and
//! light RTMP clients play back, ffprobe checks what arrived.

mod common;

use std::time::Duration;

use bench::flv;
use bench::rtmp::Client;
use common::*;

/// Publishes `fixture` with ffmpeg while an ffmpeg player that connected first
/// records it; the recording must be the source, packet for packet.
fn publish_and_play_back(fixture: std::path::PathBuf) {
    let server = Server::start("playback");
    let key = server.create_stream("alice");
    let dir = tmpdir("playback-out");
    let out = dir.join("out.flv");
    // The player connects before the publisher and waits for it.
    let player = ffmpeg_play(&server.url("alice"), &out);
    std::thread::sleep(Duration::from_millis(500));
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "publisher failed: {}", String::from_utf8_lossy(&p.stderr));
    let r = player.wait_output(Duration::from_secs(20));
    assert!(
        r.status.success(),
        "player failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&r.stderr),
        server.log_text()
    );

    let src_streams = streams(&fixture);
    let out_streams = streams(&out);
    assert_eq!(out_streams.len(), 2, "{out_streams:?}");
    for (a, b) in src_streams.iter().zip(&out_streams) {
        for k in ["codec_type", "codec_name", "profile", "width", "height", "sample_rate", "channels"] {
            assert_eq!(a.get(k), b.get(k), "stream field {k}");
        }
    }
    assert_eq!(out_streams[0]["codec_name"], "h264");
    assert_eq!(out_streams[0]["profile"], "High");
    assert_eq!(out_streams[0]["width"], "640");
    assert_eq!(out_streams[1]["codec_name"], "aac");
    for sel in ["v:0", "a:0"] {
        let src = packets(&fixture, sel);
        let got = packets(&out, sel);
        assert_eq!(got.len(), src.len(), "{sel} packet count");
        // Same timestamps (B-frames: pts != dts) and sizes, packet for packet.
        assert_eq!(got, src, "{sel} packets differ");
    }
    assert!(packets(&out, "v:0").iter().any(|p| p.pts != p.dts), "fixture must have B-frames");
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "decode errors: {errors}");
}

#[test]
fn h264_high_bframes_aac_48k_round_trips_exactly() {
    publish_and_play_back(Fixture::av(48000, 4));
}

#[test]
fn h264_high_bframes_aac_44k_round_trips_exactly() {
    publish_and_play_back(Fixture::av(44100, 4));
}

#[test]
fn late_joiner_starts_on_a_keyframe_with_audio_in_sync() {
    let server = Server::start("late");
    let key = server.create_stream("late");
    let fixture = Fixture::av(48000, 7);
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));
    // Join mid-stream, mid-GoP (GoPs are 1 s).
    std::thread::sleep(Duration::from_millis(3400));
    let out = tmpdir("late-out").join("late.flv");
    let player = ffmpeg_play(&server.url("late"), &out);
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r = player.wait_output(Duration::from_secs(20));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let video = packets(&out, "v:0");
    let audio = packets(&out, "a:0");
    assert!(video[0].key, "first video packet must be a keyframe: {:?}", &video[..3]);
    let src_video = packets(&fixture, "v:0");
    // It joined mid-stream: it has fewer frames than the source, but all from its keyframe on.
    assert!(video.len() < src_video.len() && video.len() >= 30, "{} of {} frames", video.len(), src_video.len());
    assert_eq!(&src_video[src_video.len() - video.len()..], &video[..], "frames from the join point on");
    // Audio starts with the GoP, not seconds away from it.
    assert!(
        (audio[0].dts - video[0].dts).abs() <= 100,
        "audio starts at {} ms, video at {} ms",
        audio[0].dts,
        video[0].dts
    );
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "decode errors: {errors}");
}

#[test]
fn audio_only_publish_plays_back_exactly() {
    let server = Server::start("audio");
    let key = server.create_stream("radio");
    let fixture = Fixture::audio_only(3);
    let out = tmpdir("audio-out").join("radio.flv");
    let player = ffmpeg_play(&server.url("radio"), &out);
    std::thread::sleep(Duration::from_millis(500));
    let p = ffmpeg_publish(&fixture, &server.url(&key)).wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r = player.wait_output(Duration::from_secs(20));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(streams(&out).len(), 1);
    assert_eq!(packets(&out, "a:0"), packets(&fixture, "a:0"));
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "decode errors: {errors}");
}

/// Video only, and a mid-stream SPS change: the light client publishes a 320x240
/// stream, then a 480x270 one on the same connection with later timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_only_with_a_resolution_change_mid_stream() {
    let server = Server::start("resize");
    let key = server.create_stream("silent");
    let first = flv::read(&Fixture::video_only("320x240", 2)).unwrap();
    let second = flv::read(&Fixture::video_only("480x270", 2)).unwrap();
    let shift = first.iter().map(|t| t.timestamp).max().unwrap() + 33;
    let mut tags: Vec<flv::Tag> = first.into_iter().filter(|t| t.kind == flv::TAG_VIDEO).collect();
    tags.extend(second.into_iter().filter(|t| t.kind == flv::TAG_VIDEO).map(|mut t| {
        t.timestamp += shift;
        t
    }));
    let frames = tags.iter().filter(|t| t.data.get(1) == Some(&1)).count(); // NALU tags, not headers or end-of-sequence

    let out = tmpdir("resize-out").join("silent.flv");
    let url = server.url("silent");
    let out2 = out.clone();
    let player = tokio::task::spawn_blocking(move || ffmpeg_play(&url, &out2));
    let player = player.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    publisher.publish_tags(&tags, 1.0).await.unwrap();
    drop(publisher);
    let r = tokio::task::spawn_blocking(move || player.wait_output(Duration::from_secs(20))).await.unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(packets(&out, "v:0").len(), frames);
    // Decoding yields both sizes: the new avcC reached the player with its GoP.
    let probe = std::process::Command::new(require("ffprobe"))
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=width,height", "-of", "csv=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    let sizes: std::collections::BTreeSet<String> =
        String::from_utf8_lossy(&probe.stdout).lines().map(str::to_owned).collect();
    assert!(sizes.contains("320,240") && sizes.contains("480,270"), "{sizes:?}");
    let log = server.log_text();
    assert!(log.contains("width=320") && log.contains("width=480"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_rotated_keys_are_refused_and_other_streams_carry_on() {
    let server = Server::start("keys");
    let key = server.create_stream("good");
    let victim_key = server.create_stream("victim");
    let tags = flv::read(&Fixture::av(48000, 6)).unwrap();

    // A good publisher and a player keep running throughout.
    let mut good = Client::connect(server.rtmp, "live").await.unwrap();
    good.publish(&key).await.unwrap();
    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("good").await.unwrap();
    let feed = tokio::spawn(async move {
        good.publish_tags(&tags, 1.0).await.unwrap();
        good
    });

    // Wrong key: ffmpeg gets an RTMP error status and fails.
    let url = server.url("sk_0000000000000000000000000000000000000000");
    let fixture = Fixture::av(48000, 4);
    let out = tokio::task::spawn_blocking(move || ffmpeg_publish(&fixture, &url).wait_output(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid stream key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The name is not the key.
    let mut c = Client::connect(server.rtmp, "live").await.unwrap();
    let err = c.publish("good").await.unwrap_err();
    assert!(err.to_string().contains("BadName"), "{err}");

    // Rotation: a live publisher using the old key is disconnected; the old key is refused.
    let mut victim = Client::connect(server.rtmp, "live").await.unwrap();
    victim.publish(&victim_key).await.unwrap();
    let new_key = server.rotate("victim");
    assert!(victim.closed_by_server(Duration::from_secs(5)).await, "publisher with a rotated key still connected");
    let mut c = Client::connect(server.rtmp, "live").await.unwrap();
    assert!(c.publish(&victim_key).await.is_err(), "rotated key accepted");
    let mut c = Client::connect(server.rtmp, "live").await.unwrap();
    c.publish(&new_key).await.unwrap();

    // Deleted stream: its key stops working.
    let del = server.streams(&["delete", "victim"]);
    assert!(del.status.success());
    assert!(c.closed_by_server(Duration::from_secs(5)).await, "publisher of a deleted stream still connected");

    // Meanwhile the good stream flowed to its player.
    let mut frames = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(10), player.next_media()).await {
        frames += 1;
    }
    let _ = feed.await.unwrap();
    assert!(frames > 300, "the good stream stalled: {frames} messages");
    let log = server.log_text();
    assert!(log.contains("stream key revoked"), "{log}");
}
