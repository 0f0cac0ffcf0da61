//! hls.js in headless Chromium plays gopbus's live HLS from a page on another
//! origin (real browser, real player, real MSE decoding of our fMP4).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// hls.js as configured by default (it does not speed up to catch up) plays
/// `stream` for `seconds` from a page on another origin; what the player
/// reported, with no page or hls.js errors.
fn play_hls(stream: &str, seconds: u32) -> serde_json::Value {
    play_hls_with(stream, seconds, "")
}

/// [`play_hls`] with `script` run on the page before the stream loads (`hls` in scope).
fn play_hls_with(stream: &str, seconds: u32, script: &str) -> serde_json::Value {
    let web = bench::web::web_dir().unwrap_or_else(|e| panic!("{e}"));
    let hls_js = std::fs::read(web.join("node_modules/hls.js/dist/hls.min.js")).unwrap();
    let page = bench::web::page_server_with(stream, hls_js, 1.0, script).unwrap();
    let out = Command::new("node")
        .arg("play_hls.mjs")
        .arg(&page)
        .arg(seconds.to_string())
        .current_dir(&web)
        .output()
        .expect("node");
    assert!(out.status.success(), "player failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the player's JSON");
    let last = v["samples"].as_array().unwrap().last().expect("a sample").clone();
    assert!(v["errors"].as_array().unwrap().is_empty(), "page errors: {}", v["errors"]);
    assert!(last["hlsErrors"].as_array().unwrap().is_empty(), "hls.js errors: {}", last["hlsErrors"]);
    v
}

#[test]
fn hls_js_in_chromium_plays_the_live_stream_from_another_origin() {
    let server = Server::start("hls-browser");
    let key = server.create_stream("cam");
    let fixture = Fixture::av(48000, 30);
    let _publisher = ffmpeg_publish(&fixture, &server.url(&key));
    // Let a few segments exist before the player starts.
    std::thread::sleep(Duration::from_secs(5));
    let stream = format!("http://{}/hls/cam/index.m3u8", server.http);
    let v = play_hls(&stream, 12);
    let samples = v["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert_eq!((last["width"].as_u64(), last["height"].as_u64()), (Some(640), Some(360)), "{last}");
    let played = last["time"].as_f64().unwrap();
    assert!(played >= 5.0, "only {played} s played: {samples:?}");
    assert!(last["frames"].as_u64().unwrap() >= 120, "{last}");
    // Time kept advancing to the end (no stall).
    let before = samples[samples.len() - 5]["time"].as_f64().unwrap();
    assert!(played - before >= 1.5, "stalled: {before} → {played}");
    let requests: Vec<&str> = v["requests"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert!(requests.iter().any(|r| *r == stream), "{requests:?}");
    assert!(requests.iter().filter(|r| r.ends_with(".m4s")).count() >= 3, "{requests:?}");
    assert!(requests.iter().any(|r| r.ends_with(".mp4")), "the init segment: {requests:?}");
    // Low-Latency HLS was used: blocking reloads with delivery directives, and parts.
    let blocking = requests.iter().filter(|r| r.contains("index.m3u8?_HLS_msn=") && r.contains("&_HLS_part=")).count();
    assert!(blocking >= 5, "no blocking playlist reloads: {requests:?}");
    let parts = requests.iter().filter(|r| r.contains("/part-") && r.ends_with(".m4s")).count();
    assert!(parts >= 5, "no parts loaded: {requests:?}");
    // How far behind the publisher it played (the wall clock minus the playing
    // frame's PROGRAM-DATE-TIME): reported, not asserted (see bench/).
    let behind: Vec<f64> = samples.iter().filter_map(|s| s["behindMs"].as_f64()).collect();
    eprintln!("hls.js low-latency: behind live by {behind:?} ms");
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    (status, raw[at..].to_vec())
}

/// A live stream's init segment and first segment, from its media playlist at `base/index.m3u8`, as one file.
fn first_segment(server: &Server, base: &str, tag: &str) -> std::path::PathBuf {
    let (status, body) = http_get(server.http, &format!("{base}/index.m3u8"));
    let playlist = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{base}: {playlist}");
    let map = playlist.split("#EXT-X-MAP:URI=\"").nth(1).and_then(|r| r.split('"').next()).expect("a map");
    let seg = playlist.lines().find(|l| l.ends_with(".m4s") && !l.starts_with('#')).expect("a segment");
    let mut file = http_get(server.http, &format!("{base}/{map}")).1;
    file.extend(http_get(server.http, &format!("{base}/{seg}")).1);
    let path = tmpdir(tag).join("first.mp4");
    std::fs::write(&path, &file).unwrap();
    let errors = decode_errors(&path);
    assert!(errors.trim().is_empty(), "{base}: {errors}");
    path
}

/// `/hls/cam/master.m3u8` (200) and its variants as (`#EXT-X-STREAM-INF` line, URI).
fn multivariant(server: &Server) -> (String, Vec<(String, String)>) {
    let (status, body) = http_get(server.http, "/hls/cam/master.m3u8");
    let master = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{master}");
    let lines: Vec<&str> = master.lines().collect();
    let variants = lines
        .windows(2)
        .filter(|w| w[0].starts_with("#EXT-X-STREAM-INF:"))
        .map(|w| (w[0].to_owned(), w[1].to_owned()))
        .collect();
    (master, variants)
}

#[test]
fn the_multivariant_playlist_lists_each_rendition_with_an_audio_group_and_hls_js_plays_it() {
    let server = Server::start_with("hls-renditions", &["--ladder", "240p@400k"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 40), &server.url(&key));
    std::thread::sleep(Duration::from_secs(7));
    let (master, variants) = multivariant(&server);
    assert!(
        master.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"source\",DEFAULT=YES,AUTOSELECT=YES,URI=\"r/audio/index.m3u8\""),
        "{master}"
    );
    assert_eq!(variants.len(), 2, "{master}");
    // The source first (the higher bit rate), then the rendition; both video only, naming the audio group.
    assert_eq!(variants[0].1, "r/video/index.m3u8", "{master}");
    assert!(variants[0].0.contains("RESOLUTION=640x360"), "{master}");
    assert_eq!(variants[1].1, "r/240p/index.m3u8", "{master}");
    assert!(variants[1].0.contains("RESOLUTION=428x240"), "{master}");
    for (inf, _) in &variants {
        assert!(inf.contains("AUDIO=\"audio\"") && inf.contains("avc1.") && inf.contains(",mp4a.40.2\""), "{inf}");
    }
    // Each stream decodes on its own: the rendition's video, the source's audio.
    let video = streams(&first_segment(&server, "/hls/cam/r/240p", "hls-r240"));
    assert_eq!(video.len(), 1, "{video:?}");
    assert!(video[0]["codec_name"] == "h264" && video[0]["width"] == "428" && video[0]["height"] == "240", "{video:?}");
    let audio = streams(&first_segment(&server, "/hls/cam/r/audio", "hls-raudio"));
    assert!(audio.len() == 1 && audio[0]["codec_name"] == "aac", "{audio:?}");
    // The muxed source playlist is still there, and recorded; renditions are live only.
    assert_eq!(http_get(server.http, "/hls/cam/index.m3u8").0, 200);
    let recorded: Vec<String> = std::fs::read_dir(server.data.join("recordings"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(recorded, ["cam"], "only the source is recorded");

    // hls.js plays the multivariant playlist: a video variant and the audio group.
    let stream = format!("http://{}/hls/cam/master.m3u8", server.http);
    let v = play_hls(&stream, 10);
    let samples = v["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert!(last["time"].as_f64().unwrap() >= 4.0, "{samples:?}");
    let size = (last["width"].as_u64().unwrap(), last["height"].as_u64().unwrap());
    assert!(size == (640, 360) || size == (428, 240), "{last}");
    let requests: Vec<&str> = v["requests"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    let media = |dir: &str| requests.iter().filter(|r| r.contains(dir) && r.ends_with(".m4s")).count();
    assert!(media("/r/audio/") >= 3, "no audio from the group: {requests:?}");
    assert!(media("/r/video/") + media("/r/240p/") >= 3, "no video variant: {requests:?}");
}

#[test]
fn with_hls_opus_the_opus_track_is_a_second_audio_group_and_hls_js_plays_it() {
    let server = Server::start_with("hls-opus", &["--hls-opus", "--browser-rendition", "none"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 40), &server.url(&key));
    std::thread::sleep(Duration::from_secs(7));
    let (master, variants) = multivariant(&server);
    assert!(
        master.contains("GROUP-ID=\"audio\",NAME=\"source\",DEFAULT=YES,AUTOSELECT=YES,URI=\"r/audio/index.m3u8\""),
        "{master}"
    );
    assert!(
        master.contains("GROUP-ID=\"opus\",NAME=\"opus\",DEFAULT=YES,AUTOSELECT=YES,URI=\"r/opus/index.m3u8\""),
        "{master}"
    );
    // The source's video once per audio group, AAC first.
    assert_eq!(variants.len(), 2, "{master}");
    assert!(variants.iter().all(|(_, uri)| *uri == "r/video/index.m3u8"), "{master}");
    assert!(variants[0].0.contains(",mp4a.40.2\",AUDIO=\"audio\""), "{master}");
    assert!(variants[1].0.contains(",opus\",AUDIO=\"opus\""), "{master}");

    // The Opus stream decodes on its own: 48 kHz stereo, packets of 20 ms laid end to end.
    let opus = streams(&first_segment(&server, "/hls/cam/r/opus", "hls-ropus"));
    assert_eq!(opus.len(), 1, "{opus:?}");
    assert!(
        opus[0]["codec_name"] == "opus" && opus[0]["sample_rate"] == "48000" && opus[0]["channels"] == "2",
        "{opus:?}"
    );
    let (_, playlist) = http_get(server.http, "/hls/cam/r/opus/index.m3u8");
    let playlist = String::from_utf8(playlist).unwrap();
    assert!(playlist.contains("#EXT-X-PART:DURATION="), "LL-HLS parts: {playlist}");

    // hls.js plays the video with the Opus group (the variant naming it chosen).
    let stream = format!("http://{}/hls/cam/master.m3u8", server.http);
    let choose = "hls.on(Hls.Events.MANIFEST_PARSED, (_, d) => { \
                  hls.currentLevel = d.levels.findIndex((l) => l.audioCodec === 'opus'); });";
    let v = play_hls_with(&stream, 10, choose);
    let samples = v["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert!(last["time"].as_f64().unwrap() >= 4.0, "{samples:?}");
    assert_eq!(last["audioTrack"], "opus", "{last}");
    let before = samples[samples.len() - 5]["audioBytes"].as_u64().unwrap();
    assert!(last["audioBytes"].as_u64().unwrap() > before, "audio kept decoding: {samples:?}");
    let requests: Vec<&str> = v["requests"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    let media = |dir: &str| requests.iter().filter(|r| r.contains(dir) && r.ends_with(".m4s")).count();
    assert!(media("/r/opus/") >= 3, "no audio from the Opus group: {requests:?}");
    assert_eq!(media("/r/audio/"), 0, "the AAC group was not wanted: {requests:?}");
}
