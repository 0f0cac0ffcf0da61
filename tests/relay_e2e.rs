//! Relays with real processes: ingest → origin relay → edge relay → `dump`s.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn ingest_node(origin_url: &str, origin_ca: &str) -> (Node, u16, String) {
    let (ingest, rtmp) = ingest_node_with(origin_url, origin_ca, &[]);
    let created = gopbus().args(["streams", "create", "cam", "--json", "--data"]).arg(&ingest.dir).output().unwrap();
    let key = serde_json::from_slice::<serde_json::Value>(&created.stdout).unwrap()["key"].as_str().unwrap().to_owned();
    (ingest, rtmp, key)
}

fn ingest_node_with(origin_url: &str, origin_ca: &str, extra: &[String]) -> (Node, u16) {
    let rtmp = free_port();
    let mut args = vec![
        "ingest".to_owned(),
        "--rtmp".into(),
        format!("127.0.0.1:{rtmp}"),
        "--bus".into(),
        origin_url.to_owned(),
        "--bus-token".into(),
        TOKEN.into(),
        "--bus-ca".into(),
        origin_ca.to_owned(),
    ];
    args.extend_from_slice(extra);
    (spawn("ingest", &args, "gopbus ingest serving"), rtmp)
}

/// `gopbus streams --redis URL ARGS... --json`; the parsed output, or the failure's stderr.
fn redis_streams(redis: &Redis, args: &[&str]) -> Result<serde_json::Value, String> {
    redis_streams_at(&redis.url(), args)
}

fn redis_streams_at(url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = gopbus().args(["streams", "--redis", url, "--json"]).args(args).output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn ingest_nodes_share_stream_keys_in_redis() {
    let redis = Redis::start();
    // A relay with both --upstream and --redis: it still registers what is published to it.
    let port = udp_port();
    let url = format!("quic://127.0.0.1:{port}");
    let unused_upstream = format!("quic://127.0.0.1:{}", udp_port());
    let relay = relay(
        "k-relay",
        port,
        &["--upstream".into(), unused_upstream, "--redis".into(), redis.url(), "--advertise".into(), url.clone()],
    );
    let ca = relay.dir.join("bus-cert.pem").display().to_string();
    let redis_args = ["--redis".to_owned(), redis.url()];
    let (node_a, rtmp_a) = ingest_node_with(&url, &ca, &redis_args);
    let (node_b, rtmp_b) = ingest_node_with(&url, &ca, &redis_args);

    let key = redis_streams(&redis, &["create", "cam"]).unwrap()["key"].as_str().unwrap().to_owned();
    assert!(redis_streams(&redis, &["create", "cam"]).unwrap_err().contains("already exists"));
    // Only the hash is stored.
    let dump_all = redis.cli(&["--scan"]);
    assert!(!dump_all.contains(&key) && !redis.cli(&["HGETALL", "gopbus:stream:cam"]).contains(&key), "{dump_all}");

    // A wrong key is refused on a node that never saw a `streams` command.
    let fixture = Fixture::av(48000, 12);
    let wrong = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp_a}/live/sk_0000"))
        .wait_output(Duration::from_secs(20));
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("invalid stream key"));

    // The key made in Redis publishes on node B; the relay registers the broadcast.
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp_b}/live/{key}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["GET", "gopbus:broadcast:cam"]).trim() != url {
        assert!(Instant::now() < deadline, "relay never registered cam:\n{}", relay.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Rotating the key in Redis disconnects the publisher on node B (long before its 12 s end).
    let started = Instant::now();
    let new_key = redis_streams(&redis, &["rotate", "cam"]).unwrap()["key"].as_str().unwrap().to_owned();
    let p = publisher.wait_output(Duration::from_secs(20));
    assert!(!p.status.success(), "the publisher with the rotated key kept going");
    assert!(started.elapsed() < Duration::from_secs(8), "revocation took {:?}", started.elapsed());
    assert!(node_b.log_text().contains("stream key revoked"), "{}", node_b.log_text());

    // The old key is refused on node A; the new one works there.
    let old =
        ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp_a}/live/{key}")).wait_output(Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&old.stderr).contains("invalid stream key"));
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp_a}/live/{new_key}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_a.log_text().contains("publishing to the bus") {
        assert!(Instant::now() < deadline, "node A did not publish:\n{}", node_a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The relay checks announces against the keys in Redis: node A proved the name with the key it checked.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.log_text().contains("proven=true") {
        assert!(Instant::now() < deadline, "no proven announce:\n{}", relay.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!relay.log_text().contains("announce refused"), "{}", relay.log_text());
    let listed = redis_streams(&redis, &["list"]).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "cam");
    assert!(listed[0]["rotated_at"].is_i64());

    // Redis goes away: the live publisher is kept; a new publish gets a clear error, not a hang.
    drop(redis);
    let refused = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp_b}/live/{new_key}"))
        .wait_output(Duration::from_secs(30));
    assert!(!refused.status.success());
    assert!(node_b.log_text().contains("stream key lookup failed"), "{}", node_b.log_text());
    let p = publisher.wait_output(Duration::from_secs(30));
    assert!(p.status.success(), "the live publisher was dropped: {}", String::from_utf8_lossy(&p.stderr));
    drop((relay.proc, node_a.proc, node_b.proc));
}

#[test]
fn edge_finds_the_origin_through_redis_and_entries_expire() {
    let redis = Redis::start();
    let origin_port = udp_port();
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    // The origin has no upstream of its own but registers what it holds.
    let origin = relay(
        "r-origin",
        origin_port,
        &[
            "--redis".into(),
            redis.url(),
            "--advertise".into(),
            origin_url.clone(),
            "--directory-ttl".into(),
            "2".into(),
        ],
    );
    let origin_ca = origin.dir.join("bus-cert.pem").display().to_string();
    let edge_port = udp_port();
    let edge = relay(
        "r-edge",
        edge_port,
        &[
            "--redis".into(),
            redis.url(),
            "--advertise".into(),
            format!("quic://127.0.0.1:{edge_port}"),
            "--bus-ca".into(),
            origin_ca.clone(),
        ],
    );
    let (ingest, rtmp, key) = ingest_node(&origin_url, &origin_ca);
    let fixture = Fixture::av(48000, 6);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    // Wait for the origin to register the broadcast.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["GET", "gopbus:broadcast:cam"]).trim() != origin_url {
        assert!(Instant::now() < deadline, "origin never registered cam:\n{}", origin.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = tmpdir("redis-out").join("cam.flv");
    let d = dump(&format!("quic://127.0.0.1:{edge_port}"), TOKEN, &edge.dir.join("bus-cert.pem"), "cam", &out, &[]);
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r = d.wait_output(Duration::from_secs(30));
    assert!(r.status.success(), "dump failed: {}\nedge:\n{}", String::from_utf8_lossy(&r.stderr), edge.log_text());
    let got = packets(&out, "v:0");
    let src = packets(&fixture, "v:0");
    assert!(got.len() >= 60, "only {} frames", got.len());
    assert_eq!(&src[src.len() - got.len()..], &got[..]);
    assert!(decode_errors(&out).is_empty());
    assert!(edge.log_text().contains(&format!("upstream={origin_url}")), "{}", edge.log_text());

    // A killed node's entries disappear within the TTL (2 s here).
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["GET", "gopbus:broadcast:cam"]).trim() != origin_url {
        assert!(Instant::now() < deadline, "origin did not register cam again");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(origin.proc);
    let killed = Instant::now();
    while !redis.cli(&["GET", "gopbus:broadcast:cam"]).trim().is_empty() {
        assert!(killed.elapsed() < Duration::from_secs(5), "entry outlived its TTL");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((publisher, edge.proc, ingest.proc));
}

#[test]
fn ingest_origin_edge_and_three_dumps() {
    let origin_port = udp_port();
    let origin = relay("origin", origin_port, &["--bus-subscribe-token".into(), "origin-reader-token".into()]);
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    let origin_ca = origin.dir.join("bus-cert.pem").display().to_string();
    // The edge has a bus token of its own and holds only the origin's subscribe-only token.
    let edge_port = udp_port();
    let edge_args: Vec<String> = [
        "relay",
        "--quic",
        &format!("127.0.0.1:{edge_port}"),
        "--bus-token",
        "edge-own-token",
        "--upstream",
        &origin_url,
        "--bus-ca",
        &origin_ca,
        "--upstream-token",
        "origin-reader-token",
    ]
    .map(str::to_owned)
    .to_vec();
    let edge = spawn("edge", &edge_args, "gopbus relay serving");
    let edge_url = format!("quic://127.0.0.1:{edge_port}");
    let edge_ca = edge.dir.join("bus-cert.pem");

    let (ingest, rtmp, key) = ingest_node(&origin_url, &origin_ca);

    let fixture = Fixture::av(48000, 8);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    std::thread::sleep(Duration::from_millis(1500));
    let out = tmpdir("chain-out");
    let dumps: Vec<(Proc, PathBuf)> = (0..3)
        .map(|i| {
            let file = out.join(format!("d{i}.flv"));
            std::thread::sleep(Duration::from_millis(300));
            (dump(&edge_url, "edge-own-token", &edge_ca, "cam", &file, &[]), file)
        })
        .collect();
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let src = packets(&fixture, "v:0");
    let src_audio = packets(&fixture, "a:0");
    for (d, file) in dumps {
        let r = d.wait_output(Duration::from_secs(30));
        assert!(
            r.status.success(),
            "dump failed: {}\norigin:\n{}\nedge:\n{}",
            String::from_utf8_lossy(&r.stderr),
            origin.log_text(),
            edge.log_text()
        );
        let got = packets(&file, "v:0");
        assert!(got[0].key, "{}: must start on a keyframe", file.display());
        assert!(got.len() >= 120, "{}: only {} frames", file.display(), got.len());
        assert_eq!(
            &src[src.len() - got.len()..],
            &got[..],
            "{}: every video frame from the join point",
            file.display()
        );
        let audio = packets(&file, "a:0");
        assert_eq!(&src_audio[src_audio.len() - audio.len()..], &audio[..], "{}: audio", file.display());
        let s = streams(&file);
        assert_eq!((s[0]["codec_name"].as_str(), s[1]["codec_name"].as_str()), ("h264", "aac"));
        let errors = decode_errors(&file);
        assert!(errors.is_empty(), "{}: decode errors: {errors}", file.display());
    }
    // The edge fetched the broadcast from the origin once for its three subscribers.
    let origin_log = origin.log_text();
    let upstream_subs =
        origin_log.lines().filter(|l| l.contains("remote subscriber attached") && l.contains("broadcast=cam")).count();
    assert_eq!(upstream_subs, 1, "origin log:\n{origin_log}");
    drop((origin.proc, edge.proc, ingest.proc));
}

#[test]
fn killing_and_restarting_the_edge_resumes_the_subscriber() {
    let origin_port = udp_port();
    let origin = relay("k-origin", origin_port, &[]);
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    let origin_ca = origin.dir.join("bus-cert.pem").display().to_string();
    let edge_port = udp_port();
    let edge_args = ["--upstream".to_owned(), origin_url.clone(), "--bus-ca".into(), origin_ca.clone()];
    let edge = relay("k-edge", edge_port, &edge_args);
    let edge_dir = edge.dir.clone();
    let (ingest, rtmp, key) = ingest_node(&origin_url, &origin_ca);
    let fixture = Fixture::av(48000, 12);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    std::thread::sleep(Duration::from_millis(1200));
    let out = tmpdir("kill-out").join("cam.flv");
    let edge_url = format!("quic://127.0.0.1:{edge_port}");
    let d = dump(&edge_url, TOKEN, &edge_dir.join("bus-cert.pem"), "cam", &out, &[]);
    std::thread::sleep(Duration::from_secs(3));
    drop(edge.proc); // killed
    std::thread::sleep(Duration::from_millis(500));
    // Restarted on the same port and data directory (same certificate).
    let mut args =
        vec!["relay".to_owned(), "--quic".into(), format!("127.0.0.1:{edge_port}"), "--bus-token".into(), TOKEN.into()];
    args.extend_from_slice(&edge_args);
    let child =
        gopbus().args(&args).arg("--data").arg(&edge_dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _edge2 = Proc::new(child);
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "the publisher was disturbed: {}", String::from_utf8_lossy(&p.stderr));
    let r = d.wait_output(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("resubscribed"), "{stderr}");
    let got = packets(&out, "v:0");
    // Resumed within a few seconds: no gap longer than 6 s between video frames.
    let gap = got.windows(2).map(|w| w[1].dts - w[0].dts).max().unwrap_or(0);
    assert!(gap <= 6000, "gap of {gap} ms");
    assert!(gap >= 500, "no gap at all: was the edge really killed? {gap} ms");
    // After resuming, every frame to the end.
    let src = packets(&fixture, "v:0");
    let tail = got.len().min(60);
    assert_eq!(&src[src.len() - tail..], &got[got.len() - tail..]);
    assert!(decode_errors(&out).is_empty());
    drop((origin.proc, ingest.proc));
}

#[test]
fn an_ingest_node_reconnects_to_a_restarted_origin_and_republishes() {
    let origin_port = udp_port();
    let origin = relay("i-origin", origin_port, &[]);
    let origin_dir = origin.dir.clone();
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    let origin_ca = origin_dir.join("bus-cert.pem");
    let (ingest, rtmp, key) = ingest_node(&origin_url, &origin_ca.display().to_string());
    let fixture = Fixture::av(48000, 12);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    std::thread::sleep(Duration::from_secs(2));
    drop(origin.proc); // the relay goes away mid-stream
    std::thread::sleep(Duration::from_millis(500));
    let mut args = vec![
        "relay".to_owned(),
        "--quic".into(),
        format!("127.0.0.1:{origin_port}"),
        "--bus-token".into(),
        TOKEN.into(),
    ];
    args.extend(["--data".to_owned(), origin_dir.display().to_string()]);
    let _restarted = Proc::new(gopbus().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    // Within a few seconds the ingest node has republished: a dump on the new origin gets frames.
    std::thread::sleep(Duration::from_secs(5));
    let out = tmpdir("republish-out").join("cam.flv");
    let d = dump(&origin_url, TOKEN, &origin_ca, "cam", &out, &[]);
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "the RTMP publisher was disconnected: {}", String::from_utf8_lossy(&p.stderr));
    let r = d.wait_output(Duration::from_secs(30));
    assert!(r.status.success(), "{}\ningest:\n{}", String::from_utf8_lossy(&r.stderr), ingest.log_text());
    let got = packets(&out, "v:0");
    assert!(got.len() >= 60, "only {} frames after the restart", got.len());
    assert!(decode_errors(&out).is_empty());
    let log = ingest.log_text();
    assert!(log.contains("bus connection lost; reconnecting"), "{log}");
    assert!(log.matches("publishing to the bus").count() >= 2, "{log}");
}

#[test]
fn relays_register_again_soon_after_redis_restarts() {
    let redis = Redis::start();
    let redis_port = redis.port;
    let port = udp_port();
    let url = format!("quic://127.0.0.1:{port}");
    let relay = relay(
        "rr-relay",
        port,
        &["--redis".into(), redis.url(), "--advertise".into(), url.clone(), "--directory-ttl".into(), "2".into()],
    );
    let ca = relay.dir.join("bus-cert.pem").display().to_string();
    let (ingest, rtmp, key) = ingest_node(&url, &ca);
    let fixture = Fixture::av(48000, 20);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    let registered = |redis: &Redis| redis.cli(&["GET", "gopbus:broadcast:cam"]).trim() == url;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !registered(&redis) {
        assert!(Instant::now() < deadline, "relay never registered cam:\n{}", relay.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Redis restarts empty on the same port: the relay's entry is back within a few seconds.
    drop(redis);
    std::thread::sleep(Duration::from_millis(1500));
    let redis = Redis::start_on(redis_port);
    let restarted = Instant::now();
    while !registered(&redis) {
        assert!(
            restarted.elapsed() < Duration::from_secs(8),
            "relay did not register again after Redis restarted:\n{}",
            relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "the publisher was disturbed: {}", String::from_utf8_lossy(&p.stderr));
    drop((redis, relay.proc, ingest.proc));

    // A Redis that is not there: a clear error within seconds, not minutes.
    let started = Instant::now();
    let err = redis_streams_at(&format!("redis://127.0.0.1:{}", free_port()), &["list"]).unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn the_api_on_ingest_nodes_manages_redis_keys_and_names_the_node_that_holds_a_broadcast() {
    let redis = Redis::start();
    let port = udp_port();
    let url = format!("quic://127.0.0.1:{port}");
    let origin = relay("api-origin", port, &["--redis".into(), redis.url(), "--advertise".into(), url.clone()]);
    let ca = origin.dir.join("bus-cert.pem").display().to_string();
    let node = |http: u16| {
        let args = [
            "--redis".to_owned(),
            redis.url(),
            "--http".into(),
            format!("127.0.0.1:{http}"),
            "--admin-token".into(),
            "admin-secret".into(),
            "--public-host".into(),
            "127.0.0.1".into(),
        ];
        let (n, rtmp) = ingest_node_with(&url, &ca, &args);
        (n, rtmp, std::net::SocketAddr::from(([127, 0, 0, 1], http)))
    };
    let (node_a, rtmp_a, api_a) = node(free_port());
    let (_node_b, _rtmp_b, api_b) = node(free_port());
    let auth = "Authorization: Bearer admin-secret\r\n";
    let json = |r: (u16, String, Vec<u8>)| (r.0, serde_json::from_slice::<serde_json::Value>(&r.2).unwrap_or_default());

    // A stream made through node B's API is in Redis, for every node.
    let (status, created) = json(http(api_b, "POST", "/api/v1/streams", auth, br#"{"name":"cam"}"#));
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let listed = redis_streams(&redis, &["list"]).unwrap();
    assert_eq!(listed[0]["name"], "cam");
    assert_eq!(json(http(api_a, "GET", "/api/v1/streams/cam", auth, b"")).0, 200, "node A sees it");

    // Published on node A: A has the details, B names the node that holds it (the origin, from the directory).
    let publisher = ffmpeg_publish(&Fixture::av(48000, 30), &format!("rtmp://127.0.0.1:{rtmp_a}/live/{key}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let remote = loop {
        let (status, b) = json(http(api_b, "GET", "/api/v1/broadcasts/cam", auth, b""));
        if status == 200 {
            break b;
        }
        assert!(Instant::now() < deadline, "node B never found cam: {status} {b}\n{}", origin.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(remote["local"], false, "{remote}");
    assert_eq!(remote["node"]["quic"], url.as_str(), "{remote}");
    let (status, local) = json(http(api_a, "GET", "/api/v1/broadcasts/cam", auth, b""));
    assert_eq!(status, 200);
    assert_eq!(local["local"], true, "{local}");
    assert_eq!(local["publisher"]["protocol"], "rtmp", "{local}");
    assert_eq!(json(http(api_b, "GET", "/api/v1/broadcasts/nobody", auth, b"")).0, 404);
    assert_eq!(json(http(api_b, "GET", "/api/v1/broadcasts/cam", "", b"")).0, 401);

    // Rotated through node B's API (in Redis): node A cuts its publisher off.
    assert_eq!(json(http(api_b, "POST", "/api/v1/streams/cam/rotate", auth, b"")).0, 200);
    let p = publisher.wait_output(Duration::from_secs(15));
    assert!(!p.status.success(), "the publisher with the rotated key kept going");
    assert!(node_a.log_text().contains("stream key revoked"), "{}", node_a.log_text());
    // /metrics and /readyz on an ingest node too.
    assert_eq!(http(api_a, "GET", "/readyz", "", b"").0, 200);
    let (status, _, metrics) = http(api_a, "GET", "/metrics", "", b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&metrics).contains("gopbus_rtmp_connections_accepted_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_does_not_hold_up_fetches_of_other_broadcasts() {
    use gopbus_bus::quic::{tls, Relay, Source, Upstream};
    let redis = Redis::start();
    let origin_port = udp_port();
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    let origin =
        relay("slow-origin", origin_port, &["--redis".into(), redis.url(), "--advertise".into(), origin_url.clone()]);
    let origin_ca = origin.dir.join("bus-cert.pem");
    let (_ingest, rtmp, key) = ingest_node(&origin_url, &origin_ca.display().to_string());
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 40), &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["GET", "gopbus:broadcast:cam"]).trim() != origin_url {
        assert!(Instant::now() < deadline, "cam never registered:\n{}", origin.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // "slow" points at a node that never answers (a socket that reads nothing):
    // fetching it takes until QUIC gives up (about 4 s here).
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = format!("quic://127.0.0.1:{}", black_hole.local_addr().unwrap().port());
    redis.cli(&["SET", "gopbus:broadcast:slow", &dead, "EX", "60"]);

    // An edge relay's fetcher, finding broadcasts through the directory.
    tls::install_crypto_provider();
    let directory = gopbus_store::RedisDirectory::connect(&redis.url(), Duration::from_secs(10)).await.unwrap();
    let bus = gopbus_bus::Bus::default();
    let edge = Relay::new(
        bus.clone(),
        Source::Directory(Arc::new(directory)),
        TOKEN.into(),
        tls::client_config(Some(&origin_ca)).unwrap(),
    );
    let slow = tokio::spawn({
        let edge = edge.clone();
        async move { edge.fetch("slow".into()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile "cam" is fetched at once, not after the slow one gives up.
    let started = Instant::now();
    edge.fetch("cam".into()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "cam waited {:?} behind the slow fetch", started.elapsed());
    assert!(!slow.is_finished(), "the slow fetch is still trying");
    let slow = slow.await.unwrap();
    assert!(slow.is_err(), "a node that never answers: {slow:?}");
    assert!(bus.is_live("cam"));
}

/// The dump's video packets, checked for what a lost-and-resumed link may do to
/// a stream: it starts on a keyframe, never goes back or repeats, decodes, and
/// goes on to the source's last frame. Returns the gaps (ms) longer than 2 s.
fn resumed_without_repeats(file: &std::path::Path, src: &[Packet], what: &str) -> Vec<i64> {
    let got = packets(file, "v:0");
    assert!(!got.is_empty(), "{what}: no video");
    assert!(got[0].key, "{what}: must start on a keyframe");
    let back: Vec<_> = got.windows(2).filter(|w| w[1].dts <= w[0].dts).map(|w| (w[0].dts, w[1].dts)).collect();
    assert!(back.is_empty(), "{what}: timestamps repeat or go back (a GoP replayed after resuming): {back:?}");
    let tail = 30;
    assert_eq!(&src[src.len() - tail..], &got[got.len() - tail..], "{what}: every frame to the source's end");
    let errors = decode_errors(file);
    assert!(errors.is_empty(), "{what}: decode errors: {errors}");
    got.windows(2).map(|w| w[1].dts - w[0].dts).filter(|&g| g > 2000).collect()
}

/// Upstream loss is not an end: the ingest → origin link, then the origin →
/// edge link, go dark for 6 s each (longer than QUIC's 4 s idle timeout, so
/// the connections die) while ffmpeg keeps publishing. The origin and the edge
/// hold the broadcast open, the links come back, and a dump on each node
/// carries on in the same file to the stream's end: a gap, no repeated GoP, no
/// end. (Before, the origin ended the broadcast when the ingest's connection
/// dropped, and both dumps stopped there.)
#[test]
fn a_dropped_link_holds_the_broadcast_and_subscribers_resume_in_the_same_file() {
    let origin_port = udp_port();
    let origin = relay("l-origin", origin_port, &[]);
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    let origin_ca = origin.dir.join("bus-cert.pem");
    let origin_addr: std::net::SocketAddr = format!("127.0.0.1:{origin_port}").parse().unwrap();
    let (ingest_link, edge_link) = (UdpLink::start(origin_addr), UdpLink::start(origin_addr));
    let edge_port = udp_port();
    let edge_args = ["--upstream".to_owned(), edge_link.url(), "--bus-ca".into(), origin_ca.display().to_string()];
    let edge = relay("l-edge", edge_port, &edge_args);
    let edge_url = format!("quic://127.0.0.1:{edge_port}");
    let (ingest, rtmp, key) = ingest_node(&ingest_link.url(), &origin_ca.display().to_string());

    let fixture = Fixture::av(48000, 30);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    std::thread::sleep(Duration::from_millis(1500));
    let out = tmpdir("link-out");
    let (at_origin, at_edge) = (out.join("origin.flv"), out.join("edge.flv"));
    let d_origin = dump(&origin_url, TOKEN, &origin_ca, "cam", &at_origin, &[]);
    let d_edge = dump(&edge_url, TOKEN, &edge.dir.join("bus-cert.pem"), "cam", &at_edge, &[]);
    std::thread::sleep(Duration::from_secs(3));

    ingest_link.cut(true);
    std::thread::sleep(Duration::from_secs(6));
    ingest_link.cut(false);
    std::thread::sleep(Duration::from_secs(5));
    edge_link.cut(true);
    std::thread::sleep(Duration::from_secs(6));
    edge_link.cut(false);

    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "the RTMP publisher was disturbed: {}", String::from_utf8_lossy(&p.stderr));
    let logs = || format!("origin:\n{}\nedge:\n{}\ningest:\n{}", origin.log_text(), edge.log_text(), ingest.log_text());
    let src = packets(&fixture, "v:0");
    for (d, file, what, gaps) in [(d_origin, &at_origin, "origin dump", 1), (d_edge, &at_edge, "edge dump", 2)] {
        let r = d.wait_output(Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{what}: {stderr}\n{}", logs());
        assert!(
            stderr.contains("broadcast ended: publisher left"),
            "{what} did not run to the end: {stderr}\n{}",
            logs()
        );
        let long = resumed_without_repeats(file, &src, what);
        // One gap per cut it is behind: ~6 s dark, plus the reconnection and the wait for the next GoP.
        assert_eq!(long.len(), gaps, "{what}: gaps {long:?}\n{}", logs());
        assert!(long.iter().all(|&g| g < 14_000), "{what}: gaps {long:?}");
    }
    let (o, e) = (origin.log_text(), edge.log_text());
    assert!(o.contains("upstream lost; the broadcast is held open"), "{o}");
    assert!(o.contains("upstream back; the broadcast resumes"), "{o}");
    assert!(e.contains("upstream lost; the broadcast is held open"), "{e}");
    assert!(e.contains("upstream back; the broadcast resumes"), "{e}");
    assert!(ingest.log_text().contains("bus connection lost; reconnecting"), "{}", ingest.log_text());
    drop((origin.proc, edge.proc, ingest.proc));
}
