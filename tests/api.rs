//! The REST API end to end against `gopbus serve`: streams made through it
//! publish with real ffmpeg, broadcasts show what ffmpeg players and an HLS
//! client do, kicking and rotating cut the publisher off, and the OpenAPI
//! document validates and matches the routes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn admin(server: &Server) -> String {
    std::fs::read_to_string(server.data.join("admin-token")).unwrap().trim().to_owned()
}

/// `method path` with the admin `token` (if any) and a JSON `body`: (status, JSON body or Null).
fn api(server: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let (status, head, body) = http(server.http, method, path, &auth, body.as_bytes());
    if body.is_empty() {
        return (status, Value::Null);
    }
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{method} {path}: {head}");
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}")))
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn broadcast(server: &Server, token: &str, name: &str) -> Option<Value> {
    let (status, v) = api(server, "GET", &format!("/api/v1/broadcasts/{name}"), Some(token), "");
    (status == 200).then_some(v)
}

#[test]
fn streams_made_through_the_api_publish_show_their_audience_and_can_be_kicked_rotated_and_deleted() {
    let server = Server::start_with("api", &["--public-host", "127.0.0.1"]);
    let token = admin(&server);
    let t = Some(token.as_str());

    // Without the token, or with a wrong one: 401 with a JSON error.
    let (status, v) = api(&server, "POST", "/api/v1/streams", None, r#"{"name":"alice"}"#);
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("admin token"), "{v}");
    assert_eq!(api(&server, "GET", "/api/v1/broadcasts", Some("nope"), "").0, 401);

    // Client mistakes: 4xx that say what is wrong.
    let (status, v) = api(&server, "POST", "/api/v1/streams", t, r#"{"name":"#);
    assert!(status == 400 && v["error"].as_str().unwrap().contains("malformed JSON"), "{status} {v}");
    let (status, v) = api(&server, "POST", "/api/v1/streams", t, r#"{"name":"bob","colour":"red"}"#);
    assert!(status == 400 && v["error"].as_str().unwrap().contains("unknown field"), "{status} {v}");
    let (status, v) = api(&server, "POST", "/api/v1/streams", t, r#"{"name":"Bad Name"}"#);
    assert!(status == 400 && v["error"].as_str().unwrap().contains("invalid stream name"), "{status} {v}");
    let (status, v) = api(&server, "POST", "/api/v1/streams", t, "");
    assert!(status == 400 && v["error"].as_str().unwrap().contains("JSON body is required"), "{status} {v}");
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(20_000));
    assert_eq!(api(&server, "POST", "/api/v1/streams", t, &big).0, 413);
    assert_eq!(api(&server, "GET", "/api/v1/streams/Bad_Name", t, "").0, 400);
    assert_eq!(api(&server, "GET", "/api/v1/streams/nobody", t, "").0, 404);

    // Create: the key and every URL, as the CLI prints them.
    let (status, created) = api(&server, "POST", "/api/v1/streams", t, r#"{"name":"alice"}"#);
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_"), "{created}");
    let (rtmp, web) = (server.rtmp.port(), server.http.port());
    assert_eq!(created["publish_url"], format!("rtmp://127.0.0.1:{rtmp}/live"));
    assert_eq!(created["publish_full_url"], format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    assert_eq!(created["play_url"], format!("rtmp://127.0.0.1:{rtmp}/live/alice"));
    assert_eq!(created["whep_url"], format!("http://127.0.0.1:{web}/whep/alice"));
    assert_eq!(created["hls_url"], format!("http://127.0.0.1:{web}/hls/alice/master.m3u8"));
    assert_eq!(created["watch_url"], format!("http://127.0.0.1:{web}/watch/alice"));
    let cli = server.streams(&["create", "carol", "--json", "--rtmp-port", &rtmp.to_string()]);
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let fields = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fields(&cli), fields(&created), "the CLI prints the same fields");
    assert_eq!(api(&server, "POST", "/api/v1/streams", t, r#"{"name":"alice"}"#).0, 409);
    let (_, list) = api(&server, "GET", "/api/v1/streams", t, "");
    let alice = list.as_array().unwrap().iter().find(|s| s["name"] == "alice").expect("alice listed").clone();
    assert!(alice.get("key").is_none() && alice["live"] == false, "{alice}");

    // Publish with the returned URL: the broadcast shows its codecs, size and rates.
    let url = created["publish_full_url"].as_str().unwrap().to_owned();
    let publisher = ffmpeg_publish(&Fixture::av(48000, 60), &url);
    wait_until("alice live", Duration::from_secs(15), || broadcast(&server, &token, "alice").is_some());
    std::thread::sleep(Duration::from_secs(6));
    let b = broadcast(&server, &token, "alice").unwrap();
    let codecs: Vec<&str> = b["tracks"].as_array().unwrap().iter().map(|t| t["codec"].as_str().unwrap()).collect();
    assert!(codecs.contains(&"h264") && codecs.contains(&"aac"), "{b}");
    assert_eq!((b["video"]["width"].as_u64(), b["video"]["height"].as_u64()), (Some(640), Some(360)), "{b}");
    assert_eq!(b["video"]["profile"], 100, "High profile: {b}");
    let fps = b["video"]["fps"].as_f64().unwrap();
    assert!((25.0..=35.0).contains(&fps), "30 fps published: {b}");
    assert!(b["bitrate_in_kbps"].as_f64().unwrap() > 50.0, "{b}");
    assert_eq!(b["publisher"]["protocol"], "rtmp", "{b}");
    assert!(b["publisher"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{b}");
    assert!(!b["since"].as_str().unwrap().is_empty(), "{b}");
    assert_eq!(b["node"]["quic"], server.quic.to_string(), "{b}");
    let (_, list) = api(&server, "GET", "/api/v1/broadcasts", t, "");
    assert_eq!(list.as_array().unwrap().len(), 1, "only the source, not its derived tracks: {list}");

    // Viewers follow RTMP players joining and leaving, and an HLS client.
    let dir = tmpdir("api-players");
    let player = |i: u32| ffmpeg_play(created["play_url"].as_str().unwrap(), &dir.join(format!("p{i}.flv")));
    let (p1, p2) = (player(1), player(2));
    let rtmp_viewers =
        |server: &Server| broadcast(server, &token, "alice").map_or(0, |b| b["viewers"]["rtmp"].as_u64().unwrap());
    wait_until("two RTMP viewers", Duration::from_secs(10), || rtmp_viewers(&server) == 2);
    drop(p1);
    wait_until("one RTMP viewer", Duration::from_secs(10), || rtmp_viewers(&server) == 1);
    let b = broadcast(&server, &token, "alice").unwrap();
    assert!(b["bytes_out"]["rtmp"].as_u64().unwrap() > 10_000, "{b}");
    let hls_viewers = || {
        let _ = http(server.http, "GET", "/hls/alice/index.m3u8", "", b"");
        broadcast(&server, &token, "alice").map_or(0, |b| b["viewers"]["hls"].as_u64().unwrap())
    };
    wait_until("an HLS viewer", Duration::from_secs(15), || hls_viewers() == 1);
    let b = broadcast(&server, &token, "alice").unwrap();
    assert!(b["bytes_out"]["hls"].as_u64().unwrap() > 0, "{b}");
    assert!(b["viewers"]["total"].as_u64().unwrap() >= 2, "{b}");

    // Kick: the publisher is cut off, the broadcast ends; the key still works.
    assert_eq!(api(&server, "DELETE", "/api/v1/broadcasts/nobody/publisher", t, "").0, 404);
    assert_eq!(api(&server, "DELETE", "/api/v1/broadcasts/alice/publisher?revoke=maybe", t, "").0, 400);
    assert_eq!(api(&server, "DELETE", "/api/v1/broadcasts/alice/publisher", t, "").0, 204);
    let out = publisher.wait_output(Duration::from_secs(10));
    assert!(!out.status.success(), "ffmpeg was cut off");
    wait_until("alice gone", Duration::from_secs(10), || broadcast(&server, &token, "alice").is_none());
    assert!(server.log_text().contains("publisher kicked by the operator"), "the log says so");
    drop(p2);
    let publisher = ffmpeg_publish(&Fixture::av(48000, 60), &url);
    wait_until("alice live again", Duration::from_secs(15), || broadcast(&server, &token, "alice").is_some());

    // Rotate: a new key; the publisher with the old one is cut off and cannot come back.
    let (status, rotated) = api(&server, "POST", "/api/v1/streams/alice/rotate", t, "");
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["key"], key.as_str());
    let out = publisher.wait_output(Duration::from_secs(10));
    assert!(!out.status.success(), "ffmpeg with the old key was cut off");
    let refused = ffmpeg_publish(&Fixture::av(48000, 60), &url).wait_output(Duration::from_secs(10));
    assert!(!refused.status.success(), "the old key is refused");
    assert!(broadcast(&server, &token, "alice").is_none());

    // Delete.
    assert_eq!(api(&server, "DELETE", "/api/v1/streams/alice", t, "").0, 204);
    assert_eq!(api(&server, "GET", "/api/v1/streams/alice", t, "").0, 404);
    assert_eq!(api(&server, "DELETE", "/api/v1/streams/alice", t, "").0, 404);
    assert_eq!(api(&server, "POST", "/api/v1/streams/alice/rotate", t, "").0, 404);
}

#[test]
fn the_openapi_document_validates_and_lists_exactly_the_routes_that_exist() {
    let server = Server::start("api-openapi");
    let token = admin(&server);
    let (status, doc) = api(&server, "GET", "/api/v1/openapi.json", None, "");
    assert_eq!(status, 200, "served without a token");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);

    // An OpenAPI schema validator (npm) accepts it and resolves every $ref.
    let file = tmpdir("api-openapi-doc").join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let web = bench::web::web_dir().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("node").arg("validate_openapi.mjs").arg(&file).current_dir(&web).output().expect("node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert_eq!(verdict["refs"], "ok", "{verdict}");

    // Exactly the routes gopbus mounts under /api/v1 (besides the document).
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut mounted: Vec<(String, String)> = [
        ("POST", "/api/v1/streams"),
        ("GET", "/api/v1/streams"),
        ("GET", "/api/v1/streams/{name}"),
        ("DELETE", "/api/v1/streams/{name}"),
        ("POST", "/api/v1/streams/{name}/rotate"),
        ("GET", "/api/v1/broadcasts"),
        ("GET", "/api/v1/broadcasts/{name}"),
        ("DELETE", "/api/v1/broadcasts/{name}/publisher"),
        ("GET", "/api/v1/recordings"),
        ("DELETE", "/api/v1/recordings/{name}/{session}"),
        ("GET", "/api/v1/webhooks/deliveries"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    mounted.sort();
    assert_eq!(documented, mounted);

    // Each documented operation exists on the server and answers with a status it documents.
    for (method, path) in &documented {
        let concrete = path.replace("{name}", "nosuch").replace("{session}", "1");
        let body = if method == "POST" && path == "/api/v1/streams" { r#"{"name":"zed"}"# } else { "" };
        let (status, _) = api(&server, method, &concrete, Some(&token), body);
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{method} {concrete} answered {status}, not documented: {op}"
        );
        let (status, _) = api(&server, method, &concrete, None, body);
        assert_eq!(status, 401, "{method} {path} needs the token");
        assert!(op["security"][0].get("admin").is_some(), "{method} {path} documents the token: {op}");
    }
}
