//! WebRTC in headless Chromium: ffmpeg publishes over RTMP, the browser
//! watches over WHEP (from a page on another origin) or the WebSocket, and
//! what it decoded and heard is read from `RTCPeerConnection.getStats()`.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One browser at a time: on two cores, parallel Chromiums decoding video
/// would measure the machine, not gopbus.
static BROWSER: Mutex<()> = Mutex::new(());

/// Runs the watch page at `url` for `seconds` and returns its samples.
fn watch(url: &str, seconds: u32) -> Vec<Value> {
    let web = bench::web::web_dir().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("node")
        .arg("watch_webrtc.mjs")
        .arg(url)
        .arg(seconds.to_string())
        .current_dir(&web)
        .output()
        .expect("node");
    assert!(out.status.success(), "the browser failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("the page's JSON");
    assert!(v["errors"].as_array().unwrap().is_empty(), "page errors: {}", v["errors"]);
    v["samples"].as_array().unwrap().clone()
}

/// The watch page served from another origin, pointed at `server`.
fn foreign_page(server: &Server, name: &str, query: &str) -> String {
    let page = http_get(server.http, "/watch/x").expect("the watch page");
    let origin = bench::web::html_server(page.into_bytes()).unwrap();
    format!("{origin}/watch/{name}?server=http://{}{query}", server.http)
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn num(s: &Value, key: &str) -> f64 {
    s[key].as_f64().unwrap_or(0.0)
}

/// What a good viewer of the 640×360 30 fps fixture sees: the picture at
/// the source size, H.264 and Opus, audible audio, frames decoded at the
/// source's rate without a freeze after the first second.
fn assert_plays_well(samples: &[Value]) {
    assert_plays_well_at(samples, (640, 360));
}

/// [`assert_plays_well`], printing the logs of the WebRTC nodes at `logs`
/// when it fails (what a node did is where the cause shows).
fn assert_plays_well_showing(samples: &[Value], logs: &[&std::path::Path]) {
    let checked = std::panic::catch_unwind(|| assert_plays_well(samples));
    if let Err(e) = checked {
        for log in logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let n = lines.len();
            // All of it, or its first and last 60 lines.
            let shown = if n <= 120 {
                lines.join("\n")
            } else {
                format!("{}\n…\n{}", lines[..60].join("\n"), lines[n - 60..].join("\n"))
            };
            eprintln!("--- {} ({n} lines) ---\n{shown}", log.display());
        }
        std::panic::resume_unwind(e);
    }
}

/// [`assert_plays_well`] for a picture of `size`.
fn assert_plays_well_at(samples: &[Value], size: (u64, u64)) {
    let last = samples.last().unwrap();
    assert_eq!(last["state"], "live", "{last}");
    assert_eq!((last["width"].as_u64(), last["height"].as_u64()), (Some(size.0), Some(size.1)), "{last}");
    assert_eq!(last["videoCodec"], "video/H264", "{last}");
    assert_eq!(last["audioCodec"], "audio/opus", "{last}");
    assert!(num(last, "audioLevel") > 0.02, "silent: {last}");
    assert!(num(last, "audioEnergy") > 0.0, "{last}");
    // Frames over the last 4 s (samples are 0.5 s apart).
    let before = &samples[samples.len() - 9];
    let fps =
        (num(last, "framesDecoded") - num(before, "framesDecoded")) / ((num(last, "t") - num(before, "t")) / 1000.0);
    assert!(fps >= 24.0, "{fps:.1} frames/s decoded at the end; samples: {samples:?}");
    let first_live = samples.iter().position(|s| num(s, "framesDecoded") > 0.0).expect("a frame was decoded");
    // Settled: a second after the first picture, and after the join's catch-up
    // (a short fast-forward to the live edge, where the audio starts and the
    // browser lines the two up): from then on, no freeze.
    let with_audio = samples.iter().position(|s| num(s, "audioPackets") > 0.0).unwrap_or(first_live);
    let settled = samples.get((first_live + 2).max(with_audio + 1)).unwrap_or(last);
    assert_eq!(num(last, "freezeCount"), num(settled, "freezeCount"), "froze after the first second: {samples:?}");
    // It caught up with the live edge: little waits in the jitter buffer.
    let delay = (num(last, "jitterBufferDelay") - num(before, "jitterBufferDelay"))
        / (num(last, "jitterBufferEmitted") - num(before, "jitterBufferEmitted")).max(1.0);
    assert!(delay < 0.3, "{delay:.3} s in the jitter buffer");
}

#[test]
fn chromium_plays_h264_and_opus_over_whep_from_another_origin() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-whep", &["--webrtc-bind", "127.0.0.1"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 60), &server.url(&key));
    // Join mid-GoP (keyframes are 6 s apart): the viewer starts at the keyframe and catches up.
    std::thread::sleep(Duration::from_secs(4));
    let samples = watch(&foreign_page(&server, "cam", ""), 12);
    assert_plays_well(&samples);
    let log = server.log_text();
    assert!(log.contains("Opus encoder started"), "{log}");
    assert!(log.contains("WebRTC viewer joined"), "{log}");
}

#[test]
fn chromium_plays_over_websocket_signaling() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-ws", &["--webrtc-bind", "127.0.0.1"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(2));
    let samples = watch(&foreign_page(&server, "cam", "&signal=ws"), 10);
    assert_plays_well(&samples);
}

#[test]
fn a_b_frame_source_is_watched_as_its_b_frame_free_rendition() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-rendition", &["--webrtc-bind", "127.0.0.1"]);
    let key = server.create_stream("obs");
    // Fixture::av is H.264 High with 2 B-frames, as OBS sends by default; the
    // page is open before the publisher starts.
    let page = format!("http://{}/watch/obs", server.http);
    let viewer = std::thread::spawn(move || watch(&page, 16));
    std::thread::sleep(Duration::from_secs(2));
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&key));
    let samples = viewer.join().unwrap();
    assert_plays_well(&samples);
    let last = samples.last().unwrap();
    assert!(last["message"].is_null(), "{last}");
    let status: Value = serde_json::from_str(&http_get(server.http, "/webrtc/obs").unwrap()).unwrap();
    assert_eq!(
        (status["video"].as_str(), status["rendition"].as_str()),
        (Some("rendition"), Some("video/360p")),
        "{status}"
    );
    let log = server.log_text();
    assert!(log.contains("B-frame-free rendition is sent"), "{log}");
}

#[test]
fn a_viewer_can_choose_a_rendition_of_the_ladder() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-choose", &["--webrtc-bind", "127.0.0.1", "--ladder", "240p@400k"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(3));
    let samples = watch(&foreign_page(&server, "cam", "&rendition=240p"), 12);
    // 640x360 scaled to 240 lines: 427 columns, rounded up to even.
    assert_plays_well_at(&samples, (428, 240));
    let status: Value = serde_json::from_str(&http_get(server.http, "/webrtc/cam?rendition=240p").unwrap()).unwrap();
    assert_eq!(
        (status["video"].as_str(), status["rendition"].as_str()),
        (Some("rendition"), Some("video/240p")),
        "{status}"
    );
    // The source's own room is another: its viewers get the source.
    let samples = watch(&foreign_page(&server, "cam", ""), 8);
    assert_plays_well(&samples);
}

#[test]
fn without_a_rendition_a_b_frame_source_is_heard_not_stuttered_and_the_viewer_is_told_why() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-bframes", &["--webrtc-bind", "127.0.0.1", "--browser-rendition", "none"]);
    let key = server.create_stream("obs");
    // Fixture::av is H.264 High with 2 B-frames, as OBS sends by default.
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(2));
    let samples = watch(&format!("http://{}/watch/obs", server.http), 8);
    let last = samples.last().unwrap();
    assert_eq!(last["state"], "live", "{last}");
    assert!(last["message"].as_str().unwrap_or("").contains("B-frames"), "no message for the viewer: {last}");
    assert_eq!(num(last, "framesDecoded"), 0.0, "B-frame video was sent: {last}");
    assert_eq!(last["audioCodec"], "audio/opus", "{last}");
    assert!(num(last, "audioLevel") > 0.02, "silent: {last}");
    let status: Value = serde_json::from_str(&http_get(server.http, "/webrtc/obs").unwrap()).unwrap();
    assert_eq!(status["video"], "b-frames", "{status}");
    let log = server.log_text();
    assert!(log.contains("has B-frames"), "{log}");
}

/// `gopbus webrtc` fed over QUIC by `node`, on loopback; its log file.
fn webrtc_node(node: &Server, tag: &str) -> (Proc, std::net::SocketAddr, std::path::PathBuf) {
    let (bus, token, ca) = node.bus();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = node.data.join(format!("webrtc-{tag}.log"));
    let child = gopbus()
        .args(["webrtc", "--bus", &bus, "--bus-token", &token, "--bus-ca"])
        .arg(&ca)
        .args(["--http", &http.to_string(), "--webrtc-bind", "127.0.0.1"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning gopbus webrtc");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(http).is_err() {
        assert!(std::time::Instant::now() < deadline, "gopbus webrtc did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc::new(child), http, log)
}

#[test]
fn two_webrtc_nodes_fed_over_quic_serve_browsers_with_one_opus_encoder_between_them() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    // The origin makes no Opus itself: one of the two WebRTC nodes must, and only one.
    let server = Server::start_with("webrtc-nodes", &["--webrtc-bind", "127.0.0.1", "--no-opus-encoder"]);
    let (_a, http_a, log_a) = webrtc_node(&server, "a");
    let (_b, http_b, log_b) = webrtc_node(&server, "b");
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(4));
    for http in [http_a, http_b] {
        let page = http_get(http, "/watch/x").expect("the watch page");
        let origin = bench::web::html_server(page.into_bytes()).unwrap();
        let samples = watch(&format!("{origin}/watch/cam?server=http://{http}"), 10);
        assert_plays_well_showing(&samples, &[&log_a, &log_b]);
    }
    let (a, b) = (std::fs::read_to_string(&log_a).unwrap(), std::fs::read_to_string(&log_b).unwrap());
    let encoders = [&a, &b].iter().filter(|l| l.contains("Opus encoder started")).count();
    assert_eq!(encoders, 1, "node a:\n{a}\nnode b:\n{b}");
    assert!(a.contains("Opus track made by another node") || b.contains("Opus track made by another node"));
    assert!(!server.log_text().contains("Opus encoder started"), "{}", server.log_text());
}

#[test]
fn a_webrtc_node_fed_over_quic_plays_a_b_frame_source_as_the_origins_rendition() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    // The origin's transcoder makes the rendition; the WebRTC node fetches it.
    let server = Server::start_with("webrtc-node-rendition", &["--webrtc-bind", "127.0.0.1"]);
    let (_node, http, log) = webrtc_node(&server, "r");
    let key = server.create_stream("obs");
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(4));
    let page = http_get(http, "/watch/x").expect("the watch page");
    let origin = bench::web::html_server(page.into_bytes()).unwrap();
    let samples = watch(&format!("{origin}/watch/obs?server=http://{http}"), 10);
    assert_plays_well_showing(&samples, &[&log]);
    let status: Value = serde_json::from_str(&http_get(http, "/webrtc/obs").unwrap()).unwrap();
    assert_eq!(status["rendition"], "video/360p", "{status}\n{}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn a_viewer_that_stops_reading_is_dropped_and_nobody_else_notices() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-stall", &["--webrtc-bind", "127.0.0.1"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(2));
    // A webrtc-rs viewer whose whole runtime freezes once it receives media:
    // it reads nothing and answers nothing from then on, like a hung client.
    let http = server.http;
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let until = std::time::Instant::now() + Duration::from_secs(120);
            let (counts, _task) = bench::whep::viewers(http, "cam", 1, Duration::ZERO, until);
            while counts.connected.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = connected_tx.send(counts.video_packets.load(std::sync::atomic::Ordering::Relaxed));
            // Freeze: blocks this runtime's only thread.
            std::thread::sleep(Duration::from_secs(120));
        });
    });
    let packets = connected_rx.recv_timeout(Duration::from_secs(20)).expect("the stalled viewer connected");
    assert!(packets > 0, "it received video before it stalled");
    let samples = watch(&format!("http://{}/watch/cam", server.http), 12);
    assert_plays_well(&samples);
    let log = server.log_text();
    let dropped =
        log.lines().filter(|l| l.contains("WebRTC viewer left") && l.contains("connection failed or lost")).count();
    assert_eq!(dropped, 1, "the stalled viewer was not dropped:\n{log}");
}

#[test]
fn when_the_node_making_the_opus_track_dies_another_node_takes_it_over() {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with("webrtc-failover", &["--webrtc-bind", "127.0.0.1", "--no-opus-encoder"]);
    let mut a = webrtc_node(&server, "a");
    let mut b = webrtc_node(&server, "b");
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 60), &server.url(&key));
    std::thread::sleep(Duration::from_secs(4));
    let encoding = |log: &std::path::Path| std::fs::read_to_string(log).unwrap().contains("Opus encoder started");
    let (dead, survivor) = match (encoding(&a.2), encoding(&b.2)) {
        (true, false) => (&mut a, &b),
        (false, true) => (&mut b, &a),
        other => panic!("expected exactly one encoder, got {other:?}"),
    };
    dead.0.child().kill().unwrap();
    let _ = dead.0.child().wait();
    // The survivor's viewers hear the stream again once it has taken the encoding over.
    let http = survivor.1;
    let page = http_get(http, "/watch/x").expect("the watch page");
    let origin = bench::web::html_server(page.into_bytes()).unwrap();
    let samples = watch(&format!("{origin}/watch/cam?server=http://{http}"), 14);
    let last = samples.last().unwrap();
    assert_eq!(last["audioCodec"], "audio/opus", "{last}");
    assert!(num(last, "audioLevel") > 0.02, "silent after the failover: {last}");
    // Reported, not asserted: the picture froze for seconds around the failover in our runs (see the README).
    eprintln!("after the failover: {last}");
    let log = std::fs::read_to_string(&survivor.2).unwrap();
    assert!(log.contains("the Opus track upstream ended"), "{log}");
    assert!(log.contains("Opus encoder started"), "the survivor did not take the encoding over:\n{log}");
}
