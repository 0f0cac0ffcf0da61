//! Transcoder workers with real parts: ffmpeg publishes an OBS-like 720p
//! source (B-frames, irregular keyframes) over RTMP; renditions are played
//! back over RTMP with ffmpeg and checked with ffprobe; workers of their own
//! share jobs through a real Redis.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn http_json(addr: std::net::SocketAddr, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("HTTP");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// The tracks of the jobs `/transcode` lists.
fn jobs(addr: std::net::SocketAddr) -> Vec<String> {
    let v = http_json(addr, "/transcode");
    v["jobs"].as_array().unwrap().iter().map(|j| j["track"].as_str().unwrap().to_owned()).collect()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Presentation times of a recording's video keyframes.
fn key_pts(path: &Path) -> Vec<i64> {
    packets(path, "v:0").iter().filter(|p| p.key).map(|p| p.pts).collect()
}

/// What every rendition must be: H.264 at `size` with the source's AAC, no
/// B-frames (presentation order is decode order), keyframes exactly at the
/// source's keyframes, and nothing that fails to decode.
fn assert_rendition(path: &Path, size: (u64, u64), source: &Path) {
    let streams = streams(path);
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("a video stream");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!((video["width"].parse::<u64>().unwrap(), video["height"].parse::<u64>().unwrap()), size);
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"), "no source audio: {streams:?}");
    let v = packets(path, "v:0");
    assert!(v.len() > 150, "{} video frames", v.len());
    assert!(v.windows(2).all(|w| w[0].pts < w[1].pts), "pictures out of order (B-frames?) in {}", path.display());
    let keys = key_pts(path);
    let source_keys = key_pts(source);
    assert!(keys.len() >= 4, "keyframes {keys:?}");
    let (first, last) = (v[0].pts, v.last().unwrap().pts);
    let expected: Vec<i64> = source_keys.iter().copied().filter(|k| (first..=last).contains(k)).collect();
    assert_eq!(keys, expected, "rendition keyframes are the source's");
    let errors = decode_errors(path);
    assert!(errors.trim().is_empty(), "decode errors in {}: {errors}", path.display());
}

#[test]
fn a_ladder_of_an_obs_source_plays_over_rtmp_gop_aligned_and_without_b_frames() {
    let mut server = Server::start_with("tc-ladder", &["--ladder", "480p@1200k,360p@700k"]);
    let key = server.create_stream("obs");
    let dir = tmpdir("tc-ladder-out");
    let (src, r480, r360) = (dir.join("source.flv"), dir.join("480p.flv"), dir.join("360p.flv"));
    // Players wait for the broadcast: they get it from its first GoP.
    let players = [
        ffmpeg_play(&server.url("obs"), &src),
        ffmpeg_play(&server.url("obs/480p"), &r480),
        ffmpeg_play(&server.url("obs/360p"), &r360),
    ];
    let publisher = ffmpeg_publish(&Fixture::obs_720p(16), &server.url(&key));
    wait_for("two jobs", Duration::from_secs(10), || jobs(server.http).len() == 2);
    std::thread::sleep(Duration::from_secs(6));
    let status = http_json(server.http, "/transcode");
    for job in status["jobs"].as_array().unwrap() {
        assert_eq!(job["gops_dropped"], 0, "{status}");
        assert!(job["gops_out"].as_u64().unwrap() >= 2, "{status}");
        let load = job["realtime_load"].as_f64().unwrap();
        assert!(load > 0.0 && load < 1.0, "{status}");
    }
    let out = publisher.wait_output(Duration::from_secs(40));
    assert!(out.status.success(), "publisher: {}", String::from_utf8_lossy(&out.stderr));
    for p in players {
        let out = p.wait_output(Duration::from_secs(20));
        assert!(out.status.success(), "player: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The renditions start where the source does and keep every picture.
    let source_frames = packets(&src, "v:0").len();
    assert_eq!(source_frames, 16 * 30);
    assert_rendition(&r480, (854, 480), &src);
    assert_rendition(&r360, (640, 360), &src);
    // Every picture but the last two or three, which the decoder still held
    // for reordering when the source ended (the bus ends renditions with
    // their source).
    let n = packets(&r480, "v:0").len();
    assert!((source_frames - 3..=source_frames).contains(&n), "{n} of {source_frames} pictures");
    assert_eq!(key_pts(&r480)[0], key_pts(&src)[0]);
    let log = server.log_text();
    assert!(log.contains("rendition released"), "{log}");
    assert!(server.terminate(Duration::from_secs(10)));
}

#[test]
fn a_b_frame_source_gets_one_browser_rendition_and_a_clean_source_none() {
    let server = Server::start("tc-browser");
    let (obs, clean) = (server.create_stream("obs"), server.create_stream("clean"));
    let _p1 = ffmpeg_publish(&Fixture::obs_720p(16), &server.url(&obs));
    let _p2 = ffmpeg_publish(&Fixture::av_no_bframes(48000, 16), &server.url(&clean));
    wait_for("the browser rendition", Duration::from_secs(10), || jobs(server.http) == ["obs/video/720p"]);
    let dir = tmpdir("tc-browser-out");
    let (src, r720) = (dir.join("source.flv"), dir.join("720p.flv"));
    let players = [ffmpeg_play(&server.url("obs"), &src), ffmpeg_play(&server.url("obs/720p"), &r720)];
    std::thread::sleep(Duration::from_secs(4));
    // Only the B-frame source got one.
    assert_eq!(jobs(server.http), ["obs/video/720p"]);
    for p in players {
        let out = p.wait_output(Duration::from_secs(30));
        assert!(out.status.success(), "player: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_rendition(&r720, (1280, 720), &src);
}

#[test]
fn a_worker_slower_than_real_time_drops_whole_gops_of_its_rendition_and_never_the_source() {
    // x264's slowest preset at 720p is far below 30 fps on one core.
    let server = Server::start_with("tc-slow", &["--ladder", "720p@2500k", "--transcode-preset", "veryslow"]);
    let key = server.create_stream("obs");
    let dir = tmpdir("tc-slow-out");
    let (src, r720) = (dir.join("source.flv"), dir.join("720p.flv"));
    let players = [ffmpeg_play(&server.url("obs"), &src), ffmpeg_play(&server.url("obs/720p"), &r720)];
    let publisher = ffmpeg_publish(&Fixture::obs_720p(20), &server.url(&key));
    let out = publisher.wait_output(Duration::from_secs(40));
    assert!(out.status.success(), "publisher: {}", String::from_utf8_lossy(&out.stderr));
    for p in players {
        let out = p.wait_output(Duration::from_secs(30));
        assert!(out.status.success(), "player: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The source's player got every frame.
    assert_eq!(packets(&src, "v:0").len(), 20 * 30);
    let log = server.log_text();
    assert!(log.contains("transcoder behind real time"), "{log}");
    assert!(log.contains("rendition given back"), "{log}");
    // What the rendition did publish is whole GoPs, each opening at a source keyframe.
    let keys = key_pts(&r720);
    let source_keys = key_pts(&src);
    assert!(!keys.is_empty(), "no rendition GoP at all");
    assert!(keys.iter().all(|k| source_keys.contains(k)), "{keys:?} vs {source_keys:?}");
    let errors = decode_errors(&r720);
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
}

/// `gopbus transcode` fed by `origin`, sharing leases in `redis`.
fn worker(origin: &Server, redis: &Redis, id: &str) -> (Node, std::net::SocketAddr) {
    let (bus, token, ca) = origin.bus();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let args: Vec<String> = [
        "transcode",
        "--bus",
        &bus,
        "--bus-token",
        &token,
        "--bus-ca",
        &ca.to_string_lossy(),
        "--redis",
        &redis.url(),
        "--ladder",
        "480p@1200k,360p@700k",
        "--worker-id",
        id,
        "--http",
        &http.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    (spawn(&format!("tc-{id}"), &args, "transcoder watching the bus"), http)
}

#[test]
fn two_workers_on_redis_share_the_ladder_and_one_takes_over_when_the_other_dies() {
    let redis = Redis::start();
    let origin = Server::start_with("tc-origin", &["--no-transcoder"]);
    let (w1, h1) = worker(&origin, &redis, "w1");
    let (w2, h2) = worker(&origin, &redis, "w2");
    let key = origin.create_stream("obs");
    let dir = tmpdir("tc-cluster-out");
    let (src, r480) = (dir.join("source.flv"), dir.join("480p.flv"));
    let players = [ffmpeg_play(&origin.url("obs"), &src), ffmpeg_play(&origin.url("obs/480p"), &r480)];
    let publisher = ffmpeg_publish(&Fixture::obs_720p(40), &origin.url(&key));
    wait_for("both renditions", Duration::from_secs(15), || jobs(h1).len() + jobs(h2).len() == 2);
    let (j1, j2) = (jobs(h1), jobs(h2));
    assert_eq!((j1.len(), j2.len()), (1, 1), "the jobs are shared: w1 {j1:?}, w2 {j2:?}");
    // Both workers announced themselves in Redis.
    let members = redis.cli(&["SMEMBERS", "gopbus:workers"]);
    assert!(members.contains("w1") && members.contains("w2"), "{members}");
    std::thread::sleep(Duration::from_secs(8));
    // Kill the worker making 480p.
    let (mut dead, survivor, survivor_http) = if j1 == ["obs/video/480p"] { (w1, w2, h2) } else { (w2, w1, h1) };
    dead.proc.child().kill().unwrap();
    let killed = Instant::now();
    wait_for("the survivor to take 480p over", Duration::from_secs(20), || {
        jobs(survivor_http).contains(&"obs/video/480p".to_owned())
    });
    let took = killed.elapsed();
    eprintln!("480p taken over {took:?} after the kill");
    let out = publisher.wait_output(Duration::from_secs(60));
    assert!(out.status.success(), "publisher: {}", String::from_utf8_lossy(&out.stderr));
    for p in players {
        let out = p.wait_output(Duration::from_secs(30));
        assert!(out.status.success(), "player: {}", String::from_utf8_lossy(&out.stderr));
    }
    let log = survivor.log_text();
    assert!(log.contains("rendition taken job=\"obs/video/480p\""), "{log}");
    // The 480p player kept playing through the takeover: one gap, no longer
    // than the lease and the dead connection's timeout plus a GoP.
    let v = packets(&r480, "v:0");
    let gap = v.windows(2).map(|w| w[1].dts - w[0].dts).max().unwrap();
    eprintln!("longest gap in the 480p player's video: {gap} ms");
    assert!(gap < 12_000, "gap {gap} ms");
    let source_end = packets(&src, "v:0").last().unwrap().pts;
    assert!(v.last().unwrap().pts > source_end - 4000, "the rendition did not go on to the end");
    let keys = key_pts(&r480);
    let source_keys = key_pts(&src);
    assert!(keys.iter().all(|k| source_keys.contains(k)), "{keys:?} vs {source_keys:?}");
}
