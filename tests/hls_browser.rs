//! hls.js in headless Chromium plays gopbus's live HLS from a page on another
//! origin (real browser, real player, real MSE decoding of our fMP4).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The directory with the browser tests' npm packages (installed by `.ci/setup`).
fn web_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    assert!(
        dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/hls.js").exists(),
        "tests/web/node_modules is missing: run the README's test command (`bash .ci/test`), whose setup runs `npm ci` there"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is required (`apt-get install chromium`; `bash .ci/test` installs it)"
    );
    dir
}

/// Serves the player page and hls.js on 127.0.0.1 (another origin than gopbus's).
fn page_server(stream_url: String, hls_js: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><video muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
window.hlsErrors = [];
const v = document.querySelector('video');
const hls = new Hls({{ lowLatencyMode: true }});
window.hls = hls;
hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) window.hlsErrors.push(d.type + ':' + d.details); }});
hls.loadSource({stream_url:?});
hls.attachMedia(v);
v.play().catch(() => {{}});
</script>"#
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (kind, body): (&str, &[u8]) = if req.starts_with("GET /hls.js") {
                ("application/javascript", &hls_js)
            } else {
                ("text/html", page.as_bytes())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(body);
        }
    });
    format!("http://{addr}/")
}

#[test]
fn hls_js_in_chromium_plays_the_live_stream_from_another_origin() {
    let web = web_dir();
    let server = Server::start("hls-browser");
    let key = server.create_stream("cam");
    let fixture = Fixture::av(48000, 30);
    let _publisher = ffmpeg_publish(&fixture, &server.url(&key));
    // Let a few segments exist before the player starts.
    std::thread::sleep(Duration::from_secs(5));
    let stream = format!("http://{}/hls/cam/index.m3u8", server.http);
    let hls_js = std::fs::read(web.join("node_modules/hls.js/dist/hls.min.js")).unwrap();
    let page = page_server(stream.clone(), hls_js);
    let out = Command::new("node").arg("play_hls.mjs").arg(&page).arg("12").current_dir(&web).output().expect("node");
    assert!(out.status.success(), "player failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the player's JSON");
    let samples = v["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert!(v["errors"].as_array().unwrap().is_empty(), "page errors: {}", v["errors"]);
    assert!(last["hlsErrors"].as_array().unwrap().is_empty(), "hls.js errors: {}", last["hlsErrors"]);
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
