//! hls.js in headless Chromium plays gopbus's live HLS from a page on another
//! origin (real browser, real player, real MSE decoding of our fMP4).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn hls_js_in_chromium_plays_the_live_stream_from_another_origin() {
    let web = bench::web::web_dir().unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start("hls-browser");
    let key = server.create_stream("cam");
    let fixture = Fixture::av(48000, 30);
    let _publisher = ffmpeg_publish(&fixture, &server.url(&key));
    // Let a few segments exist before the player starts.
    std::thread::sleep(Duration::from_secs(5));
    let stream = format!("http://{}/hls/cam/index.m3u8", server.http);
    let hls_js = std::fs::read(web.join("node_modules/hls.js/dist/hls.min.js")).unwrap();
    // hls.js as configured by default (it does not speed up to catch up).
    let page = bench::web::page_server(&stream, hls_js, 1.0).unwrap();
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
