//! Relays with real processes: ingest → origin relay → edge relay → `dump`s.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "cluster-secret";

struct Node {
    proc: Proc,
    dir: PathBuf,
    log: PathBuf,
}

impl Node {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn spawn(tag: &str, args: &[String], ready: &str) -> Node {
    let dir = tmpdir(tag);
    let log = dir.join("node.log");
    let child = gopbus()
        .args(args)
        .arg("--data")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let node = Node { proc: Proc::new(child), dir, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log_text().contains(ready) {
        assert!(Instant::now() < deadline, "{tag} did not start:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn relay(tag: &str, port: u16, extra: &[String]) -> Node {
    let mut args =
        vec!["relay".to_owned(), "--quic".into(), format!("127.0.0.1:{port}"), "--bus-token".into(), TOKEN.into()];
    args.extend_from_slice(extra);
    spawn(tag, &args, "gopbus relay serving")
}

fn dump(url: &str, ca: &Path, name: &str, out: &Path) -> Proc {
    Proc::new(
        gopbus()
            .args(["dump", "--bus", url, name, "--bus-token", TOKEN, "--bus-ca"])
            .arg(ca)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

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
    let out = gopbus().args(["streams", "--redis", &redis.url(), "--json"]).args(args).output().unwrap();
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
    let d = dump(&format!("quic://127.0.0.1:{edge_port}"), &edge.dir.join("bus-cert.pem"), "cam", &out);
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
    let origin = relay("origin", origin_port, &[]);
    let origin_url = format!("quic://127.0.0.1:{origin_port}");
    let origin_ca = origin.dir.join("bus-cert.pem").display().to_string();
    let edge_port = udp_port();
    let edge =
        relay("edge", edge_port, &["--upstream".into(), origin_url.clone(), "--bus-ca".into(), origin_ca.clone()]);
    let edge_url = format!("quic://127.0.0.1:{edge_port}");
    let edge_ca = edge.dir.join("bus-cert.pem");

    let rtmp = free_port();
    let ingest = spawn(
        "ingest",
        &[
            "ingest".into(),
            "--rtmp".into(),
            format!("127.0.0.1:{rtmp}"),
            "--bus".into(),
            origin_url,
            "--bus-token".into(),
            TOKEN.into(),
            "--bus-ca".into(),
            origin_ca,
        ],
        "gopbus ingest serving",
    );
    let created = gopbus().args(["streams", "create", "cam", "--json", "--data"]).arg(&ingest.dir).output().unwrap();
    let key = serde_json::from_slice::<serde_json::Value>(&created.stdout).unwrap()["key"].as_str().unwrap().to_owned();

    let fixture = Fixture::av(48000, 8);
    let publisher = ffmpeg_publish(&fixture, &format!("rtmp://127.0.0.1:{rtmp}/live/{key}"));
    std::thread::sleep(Duration::from_millis(1500));
    let out = tmpdir("chain-out");
    let dumps: Vec<(Proc, PathBuf)> = (0..3)
        .map(|i| {
            let file = out.join(format!("d{i}.flv"));
            std::thread::sleep(Duration::from_millis(300));
            (dump(&edge_url, &edge_ca, "cam", &file), file)
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
    let d = Proc::new(
        gopbus()
            .args(["dump", "--bus", &edge_url, "cam", "--bus-token", TOKEN, "--bus-ca"])
            .arg(edge_dir.join("bus-cert.pem"))
            .arg("--out")
            .arg(&out)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
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
    let d = dump(&origin_url, &origin_ca, "cam", &out);
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

/// A synthetic GoP header (the bus does not look inside the configs).
fn load_gop(dts: i64) -> gopbus_proto::GopHeader {
    gopbus_proto::GopHeader {
        seq: 0,
        start_dts: dts,
        video: Some(gopbus_proto::VideoConfig {
            avcc: vec![1, 0x64, 0, 0x28, 0xff, 0xe0, 0],
            width: 1920,
            height: 1080,
            profile: 100,
            level: 40,
        }),
        audio: None,
        metadata: None,
    }
}

#[test]
fn new_subscribers_join_within_a_second_while_the_relay_is_saturated() {
    use gopbus_bus::quic::{tls, BusClient};
    use gopbus_bus::{Bus, BusConfig, Event, StartAt, SubscribeOptions};
    use gopbus_proto::{Frame, FrameFlags, FrameHeader, Payload, TrackId};

    const SUBSCRIBERS: usize = 60;
    const FRAME: usize = 128 * 1024; // 60 fps of 128 KiB: 63 Mb/s in, 3.8 Gb/s out to 60 subscribers
    tls::install_crypto_provider();
    let port = udp_port();
    let mut relay = relay("busy", port, &[]);
    let pid = relay.proc.child().id();
    let url = format!("quic://127.0.0.1:{port}");
    let config = tls::client_config(Some(&relay.dir.join("bus-cert.pem"))).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // The load: one publisher, 40 subscribers reading as fast as they can.
    let stop = tokio_util::sync::CancellationToken::new();
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let _load = rt.block_on(async {
        let source = Bus::new(BusConfig::default());
        let publisher = BusClient::connect(&url, TOKEN, config.clone()).await.unwrap();
        let publication =
            publisher.publish_from("load", source.subscribe("load", SubscribeOptions::default())).await.unwrap();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            let mut p = source.publish("load");
            let payload = bytes::Bytes::from(vec![0x41u8; FRAME]);
            let mut tick = tokio::time::interval(Duration::from_micros(16_667));
            for i in 0i64.. {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let dts = i * 1000 / 60;
                let key = i % 60 == 0;
                if key {
                    let _ = p.open_gop(load_gop(dts));
                }
                let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::default() };
                let header = FrameHeader { track: TrackId::VIDEO, dts, cts: 0, flags, len: FRAME as u32 };
                let _ = p.push(Frame { header, payload: Payload::from_bytes(payload.clone()) });
            }
        });
        for _ in 0..SUBSCRIBERS {
            let c = BusClient::connect(&url, TOKEN, config.clone()).await.unwrap();
            let local = Bus::new(BusConfig::default());
            let mut sub = local.subscribe("load", SubscribeOptions::default());
            let remote = c.subscribe_into("load", StartAt::CurrentGop, &local).await.unwrap();
            let (delivered, stop) = (delivered.clone(), stop.clone());
            tokio::spawn(async move {
                let _keep = (c, local, remote);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        ev = sub.next() => match ev {
                            Event::Frame(f) => {
                                delivered.fetch_add(f.payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            }
                            Event::End(_) => break,
                            _ => {}
                        },
                    }
                }
            });
        }
        (publisher, publication)
    });
    std::thread::sleep(Duration::from_secs(2));

    // Probes: a new client (its own thread and runtime, like a new viewer process)
    // connects, subscribes and waits for its first frame, once a second.
    let cpu0 = bench::procstat::cpu(pid).unwrap();
    let bytes0 = delivered.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let probe_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut joins = Vec::new();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(700));
        let started = Instant::now();
        let joined = probe_rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), async {
                let c = BusClient::connect(&url, TOKEN, config.clone()).await?;
                let local = Bus::new(BusConfig::default());
                let mut sub = local.subscribe("load", SubscribeOptions::default());
                let _remote = c.subscribe_into("load", StartAt::CurrentGop, &local).await?;
                loop {
                    match sub.next().await {
                        Event::Frame(f) => return Ok::<_, gopbus_bus::quic::QuicError>(f.header.flags),
                        Event::End(r) => panic!("load broadcast ended: {r}"),
                        _ => {}
                    }
                }
            })
            .await
        });
        let flags = joined.expect("a join hung for 20 s").expect("a join failed");
        assert!(flags.contains(FrameFlags::KEYFRAME), "a join must start on the GoP's keyframe");
        joins.push(started.elapsed());
    }
    let cpu = bench::procstat::cpu_percent(cpu0, bench::procstat::cpu(pid).unwrap());
    let gbps =
        (delivered.load(std::sync::atomic::Ordering::Relaxed) - bytes0) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9;
    stop.cancel();
    joins.sort();
    eprintln!("relay CPU {cpu:.0} % of a core, {gbps:.2} Gb/s delivered; joins {joins:?}");
    // The relay was busy: it was moving over a gigabit per second and using most of a core.
    assert!(cpu > 50.0 && gbps > 0.5, "the load did not load the relay: CPU {cpu:.0} %, {gbps:.2} Gb/s");
    let slowest = *joins.last().unwrap();
    assert!(slowest < Duration::from_secs(1), "joins took {joins:?} while the relay was busy");
    drop(rt);
    assert!(relay.proc.child().try_wait().unwrap().is_none(), "the relay died under load");
}
