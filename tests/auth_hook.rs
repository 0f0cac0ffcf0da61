//! The publish authorization hook against `gopbus serve` and real ffmpeg
//! publishers: an HTTP service on loopback (the user's own, here a small
//! one in the test) allows, refuses and is too slow, as documented.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// An authorization service: `allowed` → 204, `denied` → 403 with a reason,
/// `slow` → 204 after 3 s. Returns its URL and the requests it got.
fn hook_service() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request: Value = serde_json::from_slice(&body).unwrap();
                let name = request["name"].as_str().unwrap_or("").to_owned();
                log.lock().unwrap().push(request);
                let reply: &[u8] = match name.as_str() {
                    "denied" => {
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 18\r\nConnection: close\r\n\r\nbanned for spam\nx\n"
                    }
                    "slow" => {
                        std::thread::sleep(Duration::from_secs(3));
                        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                    }
                    _ => b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                };
                let _ = (&conn).write_all(reply);
            });
        }
    });
    (url, seen)
}

fn live(server: &Server, name: &str) -> bool {
    let token = std::fs::read_to_string(server.data.join("admin-token")).unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    http(server.http, "GET", &format!("/api/v1/broadcasts/{name}"), &auth, b"").0 == 200
}

fn wait_live(server: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !live(server, name) {
        assert!(Instant::now() < deadline, "{name} never went live; log:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn requests_for(seen: &Mutex<Vec<Value>>, name: &str) -> usize {
    seen.lock().unwrap().iter().filter(|r| r["name"] == name).count()
}

#[test]
fn the_hook_allows_refuses_and_times_out_as_documented() {
    let (url, seen) = hook_service();
    let server = Server::start_with(
        "auth-hook",
        &["--auth-hook", &url, "--auth-hook-timeout-ms", "500", "--auth-hook-cache-secs", "30"],
    );
    let keys: Vec<String> = ["allowed", "denied", "slow"].iter().map(|n| server.create_stream(n)).collect();

    // 2xx: the publish goes ahead; the hook was told who and from where.
    let p = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&keys[0]));
    wait_live(&server, "allowed");
    let asked = seen.lock().unwrap().iter().find(|r| r["name"] == "allowed").cloned().unwrap();
    assert_eq!(asked["action"], "publish");
    assert_eq!(asked["key"], keys[0].as_str());
    assert_eq!(asked["client_ip"], "127.0.0.1");
    assert_eq!(asked["app"], "live");
    drop(p);

    // 403: refused, with the hook's reason, and the stream never goes live.
    let started = Instant::now();
    let out = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&keys[1])).wait_output(Duration::from_secs(15));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!live(&server, "denied"));
    assert!(server.log_text().contains("HTTP 403: banned for spam"), "the reason is logged");

    // No answer within 500 ms: refused (the default).
    let started = Instant::now();
    let out = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&keys[2])).wait_output(Duration::from_secs(15));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(3), "refused at the timeout, not when the hook answered");
    assert!(server.log_text().contains("did not answer within 500 ms"), "{}", server.log_text());

    // A wrong key is refused before the hook is asked.
    let before = seen.lock().unwrap().len();
    let out = ffmpeg_publish(&Fixture::av(48000, 60), &server.url("sk_wrong")).wait_output(Duration::from_secs(15));
    assert!(!out.status.success());
    assert_eq!(seen.lock().unwrap().len(), before);

    // The answer is cached (30 s): publishing again does not ask again.
    std::thread::sleep(Duration::from_secs(1));
    let _p = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&keys[0]));
    wait_live(&server, "allowed");
    assert_eq!(requests_for(&seen, "allowed"), 1);
}

#[test]
fn fail_open_allows_a_publish_the_hook_does_not_answer_in_time() {
    let (url, seen) = hook_service();
    let server = Server::start_with(
        "auth-hook-open",
        &["--auth-hook", &url, "--auth-hook-timeout-ms", "500", "--auth-hook-fail-open"],
    );
    let key = server.create_stream("slow");
    let _p = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&key));
    wait_live(&server, "slow");
    assert_eq!(requests_for(&seen, "slow"), 1);
    assert!(server.log_text().contains("publish allowed (fail open)"));
}
