//! WHEP signaling's answers to bad and hostile requests: each gets a clear
//! HTTP error, and the server carries on (no browser needed).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// One HTTP/1.1 request: (status, head, body).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

const SDP: (&str, &str) = ("Content-Type", "application/sdp");

#[test]
fn whep_answers_bad_offers_with_clear_errors_and_limits_offers_per_address() {
    let server =
        Server::start_with("webrtc-signaling", &["--webrtc-bind", "127.0.0.1", "--webrtc-offers-per-minute", "6"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 30), &server.url(&key));
    std::thread::sleep(Duration::from_secs(2));
    let http = server.http;

    // CORS preflight for players on other origins (not counted as an offer).
    let (status, head, _) = request(http, "OPTIONS", "/whep/cam", &[], b"");
    assert_eq!(status, 204);
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("accept-post: application/sdp"), "{head}");

    // 1: not live.
    let (status, _, body) = request(http, "POST", "/whep/nobody", &[SDP], b"v=0\r\n");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not live"), "{body}");
    // 2: not SDP.
    let (status, _, body) = request(http, "POST", "/whep/cam", &[("Content-Type", "text/plain")], b"v=0\r\n");
    assert_eq!(status, 415, "{body}");
    // 3: too large.
    let big = vec![b'a'; 40 * 1024];
    let (status, _, body) = request(http, "POST", "/whep/cam", &[SDP], &big);
    assert_eq!(status, 413, "{body}");
    // 4, 5: broken SDP, to a live broadcast.
    for garbage in [&b"this is not sdp"[..], b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\n"] {
        let (status, head, body) = request(http, "POST", "/whep/cam", &[SDP], garbage);
        assert_eq!(status, 400, "{body}");
        assert!(head.contains("application/json"), "{head}");
        assert!(body.contains("error"), "{body}");
    }
    // 6: an unknown session.
    let (status, _, _) = request(http, "DELETE", "/whep/cam/0123456789abcdef", &[], b"");
    assert_eq!(status, 404);
    let (status, _, _) = request(http, "POST", "/whep/nobody", &[SDP], b"v=0\r\n");
    assert_eq!(status, 404, "the sixth offer is still allowed");
    // 7: past the limit of 6 a minute.
    let (status, head, body) = request(http, "POST", "/whep/cam", &[SDP], b"v=0\r\n");
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: 60"), "{head}");

    // Nothing broke: the stream is still there for everyone else.
    let (status, _, body) = request(http, "GET", "/webrtc/cam", &[], b"");
    assert_eq!(status, 200);
    assert!(body.contains("\"live\":true"), "{body}");
    let log = server.log_text();
    assert!(log.contains("too many offers from one address"), "{log}");
    assert!(log.contains("WHEP offer refused"), "{log}");
}

#[test]
fn a_keyframe_request_is_answered_from_the_gop_window_at_once() {
    let server = Server::start_with("webrtc-pli", &["--webrtc-bind", "127.0.0.1"]);
    let key = server.create_stream("cam");
    // Keyframes 6 s apart, as OBS sends them: without an answer from the GoP
    // window, the next keyframe would be seconds away.
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 30), &server.url(&key));
    std::thread::sleep(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let counts = rt.block_on(async {
        let counts = std::sync::Arc::new(bench::whep::Counts::default());
        let until = std::time::Instant::now() + Duration::from_secs(5);
        // The PLI goes out 2 s after the first video packet: mid-GoP, 2–3 s before the next keyframe.
        bench::whep::viewer(server.http, "cam", until, counts.clone(), Some(Duration::from_secs(2))).await.unwrap();
        counts
    });
    let c = counts.json();
    assert_eq!(c["keyframe_requests"], 1, "{c}");
    assert_eq!(c["keyframe_answers"], 1, "no keyframe came after the request: {c}");
    let answer = c["keyframe_answer_us"].as_u64().unwrap();
    assert!(answer < 700_000, "keyframe {answer} µs after the request: {c}");
    let (_, _, body) = request(server.http, "GET", "/webrtc/cam", &[], b"");
    assert!(body.contains("\"keyframe_requests\":1"), "{body}");
}

#[test]
fn a_chosen_rendition_that_does_not_exist_or_is_malformed_gets_a_clear_error() {
    let server =
        Server::start_with("webrtc-rendition-errors", &["--webrtc-bind", "127.0.0.1", "--ladder", "240p@400k"]);
    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av_no_bframes(48000, 30), &server.url(&key));
    std::thread::sleep(Duration::from_secs(2));
    let http = server.http;
    let (status, _, body) = request(http, "POST", "/whep/cam?rendition=480", &[SDP], b"v=0\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HEIGHTp"), "{body}");
    let (status, _, body) = request(http, "POST", "/whep/cam?rendition=1080p", &[SDP], b"v=0\r\n");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("video/240p"), "the error lists the renditions there are: {body}");
    let (status, _, body) = request(http, "GET", "/webrtc/cam?rendition=240p", &[], b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"rendition\":\"video/240p\""), "{body}");
}
