//! HLS with real peers: ffmpeg publishes H.264 High with B-frames and AAC over
//! RTMP; ffprobe reads the live playlist over HTTP while it runs; after the
//! end, the recording's VOD playlist decodes cleanly, lasts what was published,
//! and every segment starts on a keyframe.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http_request(addr, "GET", path, "")
}

fn http_request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    http(addr, method, path, headers, b"")
}

fn duration_of(path: &str) -> f64 {
    let out = Command::new(require("ffprobe"))
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0.0)
}

#[test]
fn live_hls_while_publishing_and_a_vod_recording_after() {
    let server = Server::start("hls");
    let key = server.create_stream("cam");
    let fixture = Fixture::av(48000, 12);
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));

    // Live: the playlist appears once the first segment is cut (2 s target, 1 s GoPs).
    let deadline = Instant::now() + Duration::from_secs(20);
    let playlist = loop {
        let (status, head, body) = http_get(server.http, "/hls/cam/index.m3u8");
        if status == 200 && String::from_utf8_lossy(&body).matches("#EXTINF").count() >= 2 {
            assert!(head.contains("application/vnd.apple.mpegurl"), "{head}");
            assert!(head.to_ascii_lowercase().contains("access-control-allow-origin: *"), "{head}");
            break String::from_utf8(body).unwrap();
        }
        assert!(Instant::now() < deadline, "no live playlist; log:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:1"), "{playlist}");
    assert!(playlist.contains("#EXT-X-MAP:URI="), "{playlist}");
    assert!(!playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    // The multivariant playlist names the codecs, the size and the bit rate.
    let (status, _, master) = http_get(server.http, "/hls/cam/master.m3u8");
    let master = String::from_utf8(master).unwrap();
    assert_eq!(status, 200, "{master}");
    assert!(master.contains("RESOLUTION=640x360") && master.contains("CODECS=\"avc1.64"), "{master}");
    assert!(master.contains(",mp4a.40.2\"") && master.contains("BANDWIDTH="), "{master}");
    let master_streams = streams(std::path::Path::new(&format!("http://{}/hls/cam/master.m3u8", server.http)));
    assert!(master_streams.iter().any(|s| s["codec_name"] == "h264"), "{master_streams:?}");
    let live_url = format!("http://{}/hls/cam/index.m3u8", server.http);
    let live_streams = streams(std::path::Path::new(&live_url));
    let kinds: Vec<&str> = live_streams.iter().map(|s| s["codec_name"].as_str()).collect();
    assert!(kinds.contains(&"h264") && kinds.contains(&"aac"), "{live_streams:?}");
    // A segment is served from memory with a long cache lifetime.
    let seg = playlist.lines().find(|l| l.ends_with(".m4s")).unwrap();
    let (status, head, body) = http_get(server.http, &format!("/hls/cam/{seg}"));
    assert_eq!(status, 200);
    assert!(head.contains("immutable") && head.contains("video/iso.segment"), "{head}");
    assert_eq!(&body[4..8], b"moof");
    assert_eq!(http_get(server.http, "/hls/cam/../../etc/passwd").0, 404);
    // HTTP/2 too (cleartext with prior knowledge: what a CDN or proxy in front speaks).
    let h2 = Command::new(require("curl"))
        .args(["-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--http2-prior-knowledge", &live_url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2 200", "{}", String::from_utf8_lossy(&h2.stderr));
    // The session being recorded cannot be deleted.
    let admin = std::fs::read_to_string(server.data.join("admin-token")).unwrap().trim().to_owned();
    let auth = format!("Authorization: Bearer {admin}\r\n");
    let live_session = seg.split('/').next().unwrap();
    let (status, _, body) =
        http_request(server.http, "DELETE", &format!("/api/v1/recordings/cam/{live_session}"), &auth);
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));

    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));

    // The recording: a VOD playlist on disk, closed with ENDLIST.
    let recordings = server.data.join("recordings").join("cam");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (session, vod) = loop {
        let found = std::fs::read_dir(&recordings).ok().and_then(|mut d| d.next()).map(|e| e.unwrap().path());
        if let Some(dir) = found {
            let text = std::fs::read_to_string(dir.join("index.m3u8")).unwrap_or_default();
            if text.contains("#EXT-X-ENDLIST") {
                break (dir, text);
            }
        }
        assert!(Instant::now() < deadline, "no closed recording; log:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(vod.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{vod}");
    let index = session.join("index.m3u8");
    let index = index.to_str().unwrap();
    let published = duration_of(fixture.to_str().unwrap());
    let recorded = duration_of(index);
    assert!((recorded - published).abs() <= 1.0, "recorded {recorded} s of {published} s (GoP 1 s)");
    let got = streams(std::path::Path::new(index));
    assert!(got.iter().any(|s| s["codec_name"] == "h264" && s["width"] == "640" && s["profile"] == "High"), "{got:?}");
    assert!(got.iter().any(|s| s["codec_name"] == "aac" && s["sample_rate"] == "48000"), "{got:?}");
    let errors = decode_errors(std::path::Path::new(index));
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
    // Every segment starts on a keyframe.
    let segments: Vec<&str> = vod.lines().filter(|l| l.ends_with(".m4s")).collect();
    assert!(segments.len() >= 5, "{vod}");
    let init = std::fs::read(session.join("init-1.mp4")).unwrap();
    for s in &segments {
        let one = tmpdir("hls-seg").join("one.mp4");
        let mut bytes = init.clone();
        bytes.extend(std::fs::read(session.join(s)).unwrap());
        std::fs::write(&one, bytes).unwrap();
        let first = packets(&one, "v:0");
        assert!(first.first().is_some_and(|p| p.key), "{s} does not start on a keyframe");
    }
    // The recording is served over HTTP as well.
    let name = session.file_name().unwrap().to_str().unwrap();
    let (status, _, body) = http_get(server.http, &format!("/recordings/cam/{name}/index.m3u8"));
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), vod);

    // The recordings API: listed with what it holds, then deleted; the admin token is required.
    let (status, head, body) = http_request(server.http, "GET", "/api/v1/recordings", "");
    assert_eq!(status, 401, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    let wrong = "Authorization: Bearer nope\r\n";
    assert_eq!(http_request(server.http, "GET", "/api/v1/recordings", wrong).0, 401);
    let (status, _, body) = http_request(server.http, "GET", "/api/v1/recordings?name=cam", &auth);
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let r = &list.as_array().unwrap()[0];
    assert_eq!(r["name"], "cam");
    assert_eq!(r["session"], name);
    assert_eq!(r["recording"], false);
    assert_eq!(r["segments"].as_u64().unwrap() as usize, segments.len());
    assert!((r["duration"].as_f64().unwrap() - published).abs() <= 1.0, "{r}");
    assert!(r["bytes"].as_u64().unwrap() > 100_000, "{r}");
    assert_eq!(r["playlist"], format!("/recordings/cam/{name}/index.m3u8"));
    assert!(r["started"].as_str().unwrap().starts_with("20"), "{r}");
    let path = format!("/api/v1/recordings/cam/{name}");
    assert_eq!(http_request(server.http, "DELETE", &path, "").0, 401);
    assert_eq!(http_request(server.http, "DELETE", &path, &auth).0, 204);
    assert!(!session.exists(), "the recording is still on disk");
    assert_eq!(http_request(server.http, "DELETE", &path, &auth).0, 404);
    let (_, _, body) = http_request(server.http, "GET", "/api/v1/recordings", &auth);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), serde_json::json!([]));
}

/// `gopbus hls` fed by `serve` over QUIC, on its own HTTP port and data directory.
fn hls_node(server: &Server, http: std::net::SocketAddr, data: &std::path::Path) -> (Proc, std::path::PathBuf) {
    let (bus, token, ca) = server.bus();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let log = data.join(format!("hls-{}.log", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let child = gopbus()
        .args(["hls", "--bus", &bus, "--bus-token", &token, "--bus-ca"])
        .arg(&ca)
        .args(["--http", &http.to_string(), "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Proc::new(child), log)
}

fn live_segments(http: std::net::SocketAddr, at_least: usize, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::net::TcpStream::connect(http) {
            drop(s);
            let (status, _, body) = http_get(http, "/hls/cam/index.m3u8");
            let text = String::from_utf8_lossy(&body).into_owned();
            if status == 200 && text.matches("#EXTINF").count() >= at_least {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "{what}: no live playlist with {at_least} segments");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_hls_node_fed_over_quic_survives_being_killed_and_restarted() {
    let server = Server::start("hls-node-origin");
    let key = server.create_stream("cam");
    let fixture = Fixture::av(48000, 20);
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));
    let data = tmpdir("hls-node");
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    let (node, log) = hls_node(&server, http, &data);
    live_segments(http, 2, "first node");
    drop(node); // SIGKILL, mid-stream
    let recordings = data.join("recordings").join("cam");
    let first: Vec<std::path::PathBuf> = std::fs::read_dir(&recordings).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(first.len(), 1, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let cut = first[0].join("index.m3u8");
    let text = std::fs::read_to_string(&cut).unwrap();
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && !text.contains("#EXT-X-ENDLIST"), "{text}");

    // A new node on the same directory closes what the killed one left open,
    // then records a new session and closes it at the end.
    let (_node, log) = hls_node(&server, http, &data);
    live_segments(http, 2, "restarted node");
    let text = std::fs::read_to_string(&cut).unwrap();
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
    // What was recorded before the kill plays.
    let errors = decode_errors(&cut);
    assert!(errors.trim().is_empty(), "{errors}");
    assert!(duration_of(cut.to_str().unwrap()) >= 2.0, "{text}");
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        let sessions: Vec<std::path::PathBuf> =
            std::fs::read_dir(&recordings).unwrap().map(|e| e.unwrap().path()).filter(|p| *p != first[0]).collect();
        if let Some(s) = sessions.first() {
            if std::fs::read_to_string(s.join("index.m3u8")).unwrap_or_default().contains("#EXT-X-ENDLIST") {
                break s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no closed second session:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let index = second.join("index.m3u8");
    let errors = decode_errors(&index);
    assert!(errors.trim().is_empty(), "{errors}");
    let got = streams(&index);
    assert!(got.iter().any(|s| s["codec_name"] == "h264") && got.iter().any(|s| s["codec_name"] == "aac"), "{got:?}");
    assert!(first[0].join("index.m3u8").exists(), "the first session's recording is kept");
}
