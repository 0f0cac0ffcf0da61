//! Webhooks end to end: a real receiver (Node.js with the Standard Webhooks
//! library) verifies every signature; while it is down, events wait in the
//! outbox — across a restart of gopbus — and then arrive, each once, in order
//! per stream.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A webhook receiver on `port`, appending what it verified to `out`.
fn receiver(port: u16, secret: &str, out: &Path) -> Proc {
    let web = bench::web::web_dir().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new("node")
        .arg("webhook_receiver.mjs")
        .arg(port.to_string())
        .arg(secret)
        .arg(out)
        .current_dir(&web)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    Proc::new(child)
}

fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn api(server: &Server, token: &str, method: &str, path: &str) -> (u16, Value) {
    let (status, _, body) = http(server.http, method, path, &format!("Authorization: Bearer {token}\r\n"), b"");
    (status, if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() })
}

fn events_of<'a>(got: &'a [Value], stream: &str) -> Vec<&'a Value> {
    got.iter().filter(|e| e["verified"] == true && e["data"]["name"] == stream).collect()
}

/// Publishes `name` and waits until it has started (its first GoP is on the
/// bus: what `stream.started` is sent for), not only until the publish was
/// accepted.
fn publish_until_live(server: &Server, token: &str, key: &str, name: &str) -> Proc {
    let p = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(key));
    wait_until(&format!("{name} live"), Duration::from_secs(15), || {
        let (status, b) = api(server, token, "GET", &format!("/api/v1/broadcasts/{name}"));
        status == 200 && b["gops"].as_u64().unwrap_or(0) >= 1
    });
    p
}

#[test]
fn every_event_arrives_signed_once_and_in_order_even_after_an_outage_and_a_restart() {
    let data: PathBuf = tmpdir("webhooks");
    let port = free_port();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let out = data.join("received.jsonl");
    let hook = receiver(port, secret, &out);
    let url = format!("http://127.0.0.1:{port}/hook");
    let flags = ["--webhook-url", &url, "--webhook-secret", secret, "--webhook-retry-for", "600"];
    let mut server = Server::start_in(data.clone(), &flags);
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();

    // The receiver does check: a wrong signature is refused.
    let forged = "webhook-id: msg_x\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,AAAA\r\n";
    let (status, _, _) = http(
        "127.0.0.1".parse().map(|ip| std::net::SocketAddr::new(ip, port)).unwrap(),
        "POST",
        "/hook",
        forged,
        b"{}",
    );
    assert_eq!(status, 401);
    assert_eq!(received(&out).iter().filter(|e| e["verified"] == false).count(), 1);

    // A short broadcast while the receiver is up: started, ended, recording.ready.
    let keys: Vec<String> = ["alice", "bob", "carol", "dave"].iter().map(|n| server.create_stream(n)).collect();
    ffmpeg_publish(&Fixture::av(48000, 3), &server.url(&keys[0])).wait_output(Duration::from_secs(30));
    wait_until("alice's three events", Duration::from_secs(20), || events_of(&received(&out), "alice").len() == 3);

    // The receiver goes away. bob comes and goes; carol is kicked; dave is live when gopbus stops.
    drop(hook);
    ffmpeg_publish(&Fixture::av(48000, 3), &server.url(&keys[1])).wait_output(Duration::from_secs(30));
    let carol = publish_until_live(&server, &token, &keys[2], "carol");
    assert_eq!(api(&server, &token, "DELETE", "/api/v1/broadcasts/carol/publisher").0, 204);
    carol.wait_output(Duration::from_secs(10));
    // The outbox says what is waiting and why.
    wait_until("a failed attempt for bob", Duration::from_secs(15), || {
        let (_, list) = api(&server, &token, "GET", "/api/v1/webhooks/deliveries?stream=bob");
        list.as_array()
            .unwrap()
            .iter()
            .any(|d| d["state"] == "pending" && d["attempts"].as_u64().unwrap() >= 1 && !d["last_error"].is_null())
    });
    let _dave = publish_until_live(&server, &token, &keys[3], "dave");
    assert!(server.terminate(Duration::from_secs(20)), "gopbus stopped cleanly");
    assert!(
        received(&out).iter().all(|e| e["data"]["name"] == "alice" || e["verified"] == false),
        "nothing got through meanwhile"
    );

    // gopbus comes back, then the receiver: everything that waited arrives.
    let server = Server::start_in(data.clone(), &flags);
    let _hook = receiver(port, secret, &out);
    let expected = |got: &[Value]| ["alice", "bob", "carol", "dave"].iter().all(|s| events_of(got, s).len() >= 3);
    wait_until("every stream's events", Duration::from_secs(90), || expected(&received(&out)));
    std::thread::sleep(Duration::from_secs(2));
    let got = received(&out);

    let ids: Vec<&str> = got.iter().filter(|e| e["verified"] == true).map(|e| e["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "each event once: {got:?}");
    for (stream, reason) in
        [("alice", "publisher_left"), ("bob", "publisher_left"), ("carol", "kicked"), ("dave", "shutdown")]
    {
        let events = events_of(&got, stream);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(events.len(), 3, "{stream}: {kinds:?}");
        assert_eq!(kinds[0], "stream.started", "{stream}: {kinds:?}");
        let mut rest = kinds[1..].to_vec();
        rest.sort();
        assert_eq!(rest, ["recording.ready", "stream.ended"], "{stream}");
        let end = events.iter().find(|e| e["type"] == "stream.ended").unwrap();
        assert_eq!(end["data"]["reason"], reason, "{stream}: {end}");
        let ready = events.iter().find(|e| e["type"] == "recording.ready").unwrap();
        assert!(ready["data"]["segments"].as_u64().unwrap() >= 1, "{ready}");
        assert!(ready["data"]["playlist"].as_str().unwrap().starts_with(&format!("/recordings/{stream}/")), "{ready}");
        let codecs: Vec<&str> =
            events[0]["data"]["tracks"].as_array().unwrap().iter().map(|t| t["codec"].as_str().unwrap()).collect();
        assert!(codecs.contains(&"h264") && codecs.contains(&"aac"), "{stream}: {codecs:?}");
    }
    // The outbox agrees: all delivered.
    let (_, list) = api(&server, &token, "GET", "/api/v1/webhooks/deliveries?limit=1000");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 12, "{list:?}");
    assert!(list.iter().all(|d| d["state"] == "delivered"), "{list:?}");
    assert!(server.log_text().contains("webhook delivery failing"), "the outage is in the log");
}
