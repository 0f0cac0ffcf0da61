//! Hostile RTMP clients against a real `gopbus serve`: each attack is refused
//! or disconnected with a log line, the server's memory stays bounded, and an
//! ffmpeg publisher and player on another stream carry on without losing a
//! frame. Attackers connect from 127.0.0.2, the bystanders from 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An ffmpeg player waiting on "other", then an ffmpeg publisher of 12 s on it.
struct Bystander {
    player: Proc,
    publisher: Proc,
    recording: PathBuf,
    fixture: PathBuf,
}

impl Bystander {
    fn start(server: &Server) -> Self {
        let key = server.create_stream("other");
        let recording = tmpdir("bystander").join("other.flv");
        let player = ffmpeg_play(&server.url("other"), &recording);
        std::thread::sleep(Duration::from_millis(500));
        let fixture = Fixture::av_no_bframes(48000, 12);
        let publisher = ffmpeg_publish(&fixture, &server.url(&key));
        Self { player, publisher, recording, fixture }
    }

    /// Waits for both to finish; the player got every video frame published.
    fn finish(self) {
        let p = self.publisher.wait_output(Duration::from_secs(60));
        assert!(p.status.success(), "the bystander publisher failed: {}", String::from_utf8_lossy(&p.stderr));
        let out = self.player.wait_output(Duration::from_secs(30));
        assert!(out.status.success(), "the bystander player failed: {}", String::from_utf8_lossy(&out.stderr));
        let sent = packets(&self.fixture, "v").len();
        let got = packets(&self.recording, "v").len();
        assert_eq!(got, sent, "the bystander player lost frames");
    }
}

fn rss_kib(server: &mut Server) -> u64 {
    server.peak_rss_kib()
}

/// A TCP connection from 127.0.0.2 with the RTMP handshake done.
async fn attacker(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let mut hs = Handshake::new(PeerType::Client);
    s.write_all(&hs.generate_outbound_p0_and_p1().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during the handshake");
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => s.write_all(&response_bytes).await.unwrap(),
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                s.write_all(&response_bytes).await.unwrap();
                return s;
            }
        }
    }
}

/// One message in 128-byte chunks (the initial chunk size).
fn message(type_id: u8, csid_stream: u32, data: Vec<u8>) -> Vec<u8> {
    let mut ser = ChunkSerializer::new();
    let payload = MessagePayload {
        timestamp: RtmpTimestamp::new(0),
        type_id,
        message_stream_id: csid_stream,
        data: Bytes::from(data),
    };
    ser.serialize(&payload, false, false).unwrap().bytes
}

/// Reads until the server closes the connection; false if it is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn amf_string(s: &str) -> Vec<u8> {
    let mut v = vec![0x02];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn amf_number(n: f64) -> Vec<u8> {
    let mut v = vec![0x00];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn wait_log(server: &Server, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !server.log_text().contains(needle) {
        assert!(Instant::now() < deadline, "the log never said {needle:?}:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_and_chunk_tricks_are_refused_and_nobody_else_notices() {
    let mut server = Server::start("hard-malformed");
    let addr = server.rtmp;
    let bystander = tokio::task::block_in_place(|| Bystander::start(&server));
    let before = rss_kib(&mut server);

    // Deeply nested AMF before `connect`: this aborted the whole process (stack overflow).
    let mut nested = amf_string("connect");
    nested.extend(amf_number(1.0));
    for _ in 0..12_000 {
        nested.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
    }
    let mut s = attacker(addr).await;
    s.write_all(&message(20, 0, nested)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "nested AMF: still connected");
    wait_log(&server, "nested deeper than 16 levels", Duration::from_secs(5));

    // A command with two values (the RTMP library panicked on it).
    let mut short = amf_string("connect");
    short.extend(amf_number(1.0));
    let mut s = attacker(addr).await;
    s.write_all(&message(20, 0, short)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "short command: still connected");
    wait_log(&server, "it has 2 values", Duration::from_secs(5));

    // A chunk size of one byte.
    let mut s = attacker(addr).await;
    s.write_all(&message(1, 0, 1u32.to_be_bytes().to_vec())).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "chunk size 1: still connected");
    wait_log(&server, "invalid chunk size 1", Duration::from_secs(5));

    // Big messages begun on many chunk streams and never finished.
    let mut s = attacker(addr).await;
    let mut wire = Vec::new();
    for round in 0..40 {
        for csid in 4..60u8 {
            if round == 0 {
                wire.extend_from_slice(&[csid, 0, 0, 0, 0, 0xea, 0x60, 9, 1, 0, 0, 0]);
            } else {
                wire.push(0xc0 | csid);
            }
            wire.extend_from_slice(&[0u8; 128]);
        }
    }
    let _ = s.write_all(&wire).await;
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "partial messages: still connected");
    wait_log(&server, "held in incomplete messages", Duration::from_secs(5));

    // A message bigger than a command before publishing.
    let mut s = attacker(addr).await;
    let _ = s.write_all(&[0x04, 0, 0, 0, 0x10, 0, 0, 9, 1, 0, 0, 0]).await;
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "a 1 MiB message before publish: still connected");
    wait_log(&server, "exceeds the limit", Duration::from_secs(5));

    tokio::task::block_in_place(|| bystander.finish());
    let grown = rss_kib(&mut server).saturating_sub(before);
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_with_bounded_memory() {
    let mut server = Server::start("hard-noread");
    let addr = server.rtmp;
    let bystander = tokio::task::block_in_place(|| Bystander::start(&server));
    let before = rss_kib(&mut server);
    // Pings, each answered, from a client that reads nothing.
    let mut s = attacker(addr).await;
    let mut ser = ChunkSerializer::new();
    let ping = |ser: &mut ChunkSerializer| {
        let p = MessagePayload {
            timestamp: RtmpTimestamp::new(0),
            type_id: 4,
            message_stream_id: 0,
            data: Bytes::from_static(&[0, 6, 0, 0, 0, 1]),
        };
        ser.serialize(&p, false, false).unwrap().bytes
    };
    let mut batch = Vec::new();
    for _ in 0..10_000 {
        batch.extend(ping(&mut ser));
    }
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(30) {
        if tokio::time::timeout(Duration::from_secs(5), s.write_all(&batch)).await.map_or(true, |r| r.is_err()) {
            cut = true;
            break;
        }
    }
    assert!(cut, "the server kept a client that never reads");
    wait_log(&server, "queued for a peer that does not read them", Duration::from_secs(10));
    tokio::task::block_in_place(|| bystander.finish());
    let grown = rss_kib(&mut server).saturating_sub(before);
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_waiting_connections_time_out_and_one_address_cannot_take_every_slot() {
    let server = Server::start_with(
        "hard-slots",
        &["--command-timeout", "2", "--play-wait-timeout", "3", "--max-connections-per-ip", "8"],
    );
    let addr = server.rtmp;
    let bystander = tokio::task::block_in_place(|| Bystander::start(&server));

    // Handshake, then nothing: closed at the command deadline.
    let started = Instant::now();
    let mut s = attacker(addr).await;
    assert!(closed_within(&mut s, Duration::from_secs(6)).await, "a silent connection stayed");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    wait_log(&server, "no publish or play within 2 s of connecting", Duration::from_secs(5));

    // A player of a name nobody publishes gives up after 3 s.
    let mut player = bench::rtmp::Client::connect(addr, "live").await.unwrap();
    let started = Instant::now();
    player.play("nobody").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), player.next_media()).await;
    assert!(matches!(ended, Ok(Ok(None)) | Ok(Err(_))), "the waiting player was kept: {ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(2900));
    wait_log(&server, "player gave up", Duration::from_secs(5));

    // Eight connections from one address fill its share; the ninth is refused.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(attacker(addr).await);
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut ninth = socket.connect(addr).await.unwrap();
    let _ = ninth.write_all(&[3u8; 1537]).await;
    assert!(closed_within(&mut ninth, Duration::from_secs(5)).await, "the ninth connection was accepted");
    wait_log(&server, "too many connections from one address", Duration::from_secs(5));
    drop(held);

    tokio::task::block_in_place(|| bystander.finish());
}

#[test]
fn a_gop_that_never_ends_is_cut_at_the_limit() {
    let mut server = Server::start_with("hard-gop", &["--max-gop-bytes", "2000000"]);
    let bystander = Bystander::start(&server);
    let before = rss_kib(&mut server);
    // One keyframe, then 15 s of P-frames at about 4 Mb/s.
    let input = tmpdir("hard-gop-input").join("one-gop.flv");
    let made = std::process::Command::new(require("ffmpeg"))
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "15"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "4M",
            "-x264-params",
            "keyint=100000:min-keyint=100000:scenecut=0",
        ])
        .args(["-f", "flv"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(made.success());
    let key = server.create_stream("onegop");
    let p = ffmpeg_publish(&input, &server.url(&key)).wait_output(Duration::from_secs(60));
    assert!(
        p.status.success(),
        "the publisher is not disconnected, its GoP is cut: {}",
        String::from_utf8_lossy(&p.stderr)
    );
    wait_log(&server, "GoP over the limit", Duration::from_secs(5));
    bystander.finish();
    let grown = rss_kib(&mut server).saturating_sub(before);
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
}

/// A holder of the bus token (an ingest node's, a transcoder's) announces the
/// RTMP-published "other" over QUIC to take it over: refused without a proof
/// of the stream key, refused with a proof of another key; a proven name and
/// (by default) a name without a key here are let in. The bystander's
/// publisher and player carry on without losing a frame. With
/// `--bus-announce strict`, a name without a key is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_token_alone_cannot_take_over_a_broadcast_with_a_stream_key() {
    use gopbus_bus::quic::{tls, BusClient};
    use gopbus_bus::{Bus, BusConfig, SubscribeOptions};
    use gopbus_store::keys::KeyHash;

    tls::install_crypto_provider();
    let server = Server::start("bus-takeover");
    let bystander = Bystander::start(&server);
    let (bus_url, token, ca) = server.bus();
    let client = BusClient::connect(&bus_url, &token, tls::client_config(Some(&ca)).unwrap()).await.unwrap();
    let local = Bus::new(BusConfig::default());
    let sub = |name: &str| local.subscribe(name, SubscribeOptions::default());
    tokio::time::sleep(Duration::from_millis(1500)).await; // "other" is live by now

    let err = client.publish_from("other", sub("other")).await.err().expect("announce without a proof was let in");
    assert!(err.to_string().contains("needs a proof of its stream key"), "{err}");
    let wrong = KeyHash::of("sk_not_the_key");
    let err =
        client.publish_with_key("other", sub("other"), Some(&wrong.0)).await.err().expect("a wrong proof was let in");
    assert!(err.to_string().contains("proof of \"other\"'s stream key is wrong"), "{err}");
    wait_log(&server, "announce refused", Duration::from_secs(5));

    // The key's holder may announce its name (what an ingest node does after checking the key) ...
    let key = server.create_stream("proven");
    let _proven = client.publish_with_key("proven", sub("proven"), Some(&KeyHash::of(&key).0)).await.unwrap();
    // ... and a name without a key on this node needs only the bus token (`--bus-announce keyed`).
    let _free = client.publish_from("relayed", sub("relayed")).await.unwrap();
    bystander.finish();
    assert!(!server.log_text().contains("another publisher took over"), "{}", server.log_text());

    let strict = Server::start_with("bus-strict", &["--bus-announce", "strict"]);
    let (bus_url, token, ca) = strict.bus();
    let client = BusClient::connect(&bus_url, &token, tls::client_config(Some(&ca)).unwrap()).await.unwrap();
    let err = client.publish_from("relayed", sub("relayed")).await.err().expect("strict let in a name without a key");
    assert!(err.to_string().contains("has no stream key on this node"), "{err}");
    let key = strict.create_stream("proven");
    client.publish_with_key("proven", sub("proven"), Some(&KeyHash::of(&key).0)).await.unwrap();
}

/// QUIC bus peers holding the bus token, against a real `serve` with
/// `--max-bus-connections 8`: a frame announced longer than 16 MiB (refused
/// before any of it is buffered), more open requests on one connection than
/// allowed, more connections than allowed. Each is refused with a log line,
/// the server's peak RSS grows by less than 64 MiB, and the bystander's
/// publisher and player lose no frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_peers_past_the_limits_are_refused_and_nobody_else_notices() {
    use gopbus_bus::quic::{tls, BusClient, MAX_REQUESTS_PER_CONNECTION};
    use gopbus_bus::{Bus, BusConfig, SubscribeOptions};
    use gopbus_proto::{
        AudioConfig, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig,
    };

    tls::install_crypto_provider();
    let mut server = Server::start_with("quic-attacks", &["--max-bus-connections", "8"]);
    let bystander = Bystander::start(&server);
    let (bus_url, token, ca) = server.bus();
    let config = || tls::client_config(Some(&ca)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = rss_kib(&mut server);

    // A frame announced at 17 MiB on a broadcast without a key here (the bus token may announce it).
    let client = BusClient::connect(&bus_url, &token, config()).await.unwrap();
    let local = Bus::new(BusConfig::default());
    let mut publisher = local.publish("huge");
    let _publication = client.publish_from("huge", local.subscribe("huge", SubscribeOptions::default())).await.unwrap();
    let video = VideoConfig { avcc: vec![1, 100, 0, 30], width: 640, height: 360, profile: 100, level: 30 };
    let audio = AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 };
    let tracks = vec![TrackInfo::video(video), TrackInfo::audio(audio)];
    publisher.open_gop(GopHeader { seq: 0, start_dts: 0, tracks, metadata: None }).unwrap();
    let big = Payload::from_bytes(Bytes::from(vec![1u8; 17 << 20]));
    let header =
        FrameHeader { track: TrackId::VIDEO, dts: 0, cts: 0, flags: FrameFlags::KEYFRAME, len: big.len() as u32 };
    publisher.push(Frame { header, payload: big }).unwrap();
    wait_log(&server, "frame longer than the limit announced on a GoP stream; stream dropped", Duration::from_secs(10));

    // More open requests than one connection may hold.
    let mut watches = Vec::new();
    for _ in 0..MAX_REQUESTS_PER_CONNECTION - 1 {
        watches.push(client.watch().await.unwrap());
    }
    let refused = client.watch().await.err().expect("a request past the limit was taken");
    assert!(refused.to_string().contains("too many open requests"), "{refused}");
    wait_log(&server, "too many open requests on one bus connection; refused", Duration::from_secs(5));
    drop(watches);

    // More connections than allowed (the first one above holds a slot).
    let mut held = Vec::new();
    let mut refusals = 0;
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(15), BusClient::connect(&bus_url, &token, config())).await {
            Ok(Ok(c)) => held.push(c),
            _ => refusals += 1,
        }
    }
    assert!(held.len() <= 7, "{} connections taken past the limit of 8", held.len() + 1);
    assert!(refusals >= 3, "only {refusals} refused");
    wait_log(&server, "bus connection refused: too many connections", Duration::from_secs(5));

    let grown = rss_kib(&mut server).saturating_sub(rss_before);
    eprintln!("QUIC attacks: the server's peak RSS grew by {grown} KiB");
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
    drop((held, publisher, client));
    bystander.finish();
}
