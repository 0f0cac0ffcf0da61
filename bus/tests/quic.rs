//! The QUIC transport on loopback: a publisher's broadcast goes client → server
//! bus → another client, frame for frame; tokens and unknown broadcasts are refused.

use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::quic::{tls, BusClient, BusServer, QuicError};
use gopbus_bus::{Bus, BusConfig, Event, StartAt, SubscribeOptions};
use gopbus_proto::{
    AudioConfig, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig,
};
use tokio_util::sync::CancellationToken;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gopbus-quic-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Node {
    url: String,
    ca: std::path::PathBuf,
    shutdown: CancellationToken,
    bus: Bus,
    stats: gopbus_bus::quic::ServerStats,
}

async fn node(tag: &str) -> Node {
    node_with(tag, gopbus_bus::quic::MAX_CONNECTIONS).await
}

async fn node_with(tag: &str, max_connections: usize) -> Node {
    node_opts(tag, max_connections, gopbus_bus::quic::AUDIO_HOLD, gopbus_bus::quic::GROUP_SIZE).await
}

async fn node_opts(tag: &str, max_connections: usize, audio_hold: Duration, group: usize) -> Node {
    let dir = tmpdir(tag);
    let identity = tls::server_identity(None, None, &dir, &[]).unwrap();
    let ca = identity.cert_path.clone();
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let server = BusServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(identity).unwrap(),
        bus.clone(),
        "secret".into(),
    )
    .unwrap()
    .with_not_found_after(Duration::from_millis(500))
    .with_max_connections(max_connections)
    .with_audio_hold(audio_hold)
    .with_subscriber_groups(group)
    .with_subscribe_token("reader".into());
    let url = format!("quic://127.0.0.1:{}", server.local_addr().unwrap().port());
    let shutdown = CancellationToken::new();
    let stats = server.stats();
    tokio::spawn(server.run(shutdown.clone()));
    Node { url, ca, shutdown, bus, stats }
}

fn gop(seq: u64) -> GopHeader {
    GopHeader {
        seq,
        start_dts: 0,
        tracks: vec![
            TrackInfo::video(VideoConfig { avcc: vec![1, 2, 3], width: 640, height: 360, profile: 100, level: 30 }),
            TrackInfo::audio(AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48000, channels: 2 }),
        ],
        metadata: None,
    }
}

/// Interleaved audio (every 21 ms) and video (every 33 ms), multi-part payloads.
fn frames(g: i64) -> Vec<Frame> {
    let mut v = Vec::new();
    for i in 0..30i64 {
        let dts = g * 1000 + i * 33;
        let data = Bytes::from(vec![(i % 251) as u8; 3000 + i as usize]);
        let payload = Payload::from_parts(vec![data.slice(..1000), data.slice(1000..)]);
        let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
        v.push(Frame {
            header: FrameHeader { track: TrackId::VIDEO, dts, cts: 66, flags, len: payload.len() as u32 },
            payload,
        });
    }
    for i in 0..47i64 {
        let dts = g * 1000 + i * 21;
        let payload = Payload::from_bytes(Bytes::from(vec![7u8; 300]));
        v.push(Frame {
            header: FrameHeader { track: TrackId::AUDIO, dts, cts: 0, flags: FrameFlags::KEYFRAME, len: 300 },
            payload,
        });
    }
    v.sort_by_key(|f| f.header.dts);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_travels_client_to_server_to_client_frame_for_frame() {
    tls::install_crypto_provider();
    let server = node("relay").await;
    let config = || tls::client_config(Some(&server.ca)).unwrap();

    // Remote subscriber first: it waits for the broadcast (server waits up to its not-found time).
    let sub_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut local_sub = sub_bus.subscribe("cam", SubscribeOptions::default());

    // Publisher side: a local bus whose broadcast is published to the server.
    let pub_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut publisher = pub_bus.publish("cam");
    let pub_client = BusClient::connect(&server.url, "secret", config()).await.unwrap();
    let _publication =
        pub_client.publish_from("cam", pub_bus.subscribe("cam", SubscribeOptions::default())).await.unwrap();

    let sub_client = BusClient::connect(&server.url, "secret", config()).await.unwrap();
    let subscribe = sub_client.subscribe_into("cam", StartAt::CurrentGop, &sub_bus);
    let feed = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut sent = Vec::new();
        for g in 0..3u64 {
            publisher.open_gop(gop(0)).unwrap();
            for f in frames(g as i64) {
                sent.push((f.header, f.payload.to_vec()));
                publisher.push(f).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher.end(EndReason::PublisherLeft);
        sent
    };
    let (sub, sent) = tokio::join!(subscribe, feed);
    let _sub = sub.unwrap();

    let mut got = Vec::new();
    let mut gops = Vec::new();
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(10), local_sub.next()).await.expect("stalled") {
            Event::Frame(f) => got.push((f.header, f.payload.to_vec())),
            Event::Gop(h) => gops.push(h),
            Event::End(r) => break r,
            _ => {}
        }
    };
    assert_eq!(reason, EndReason::PublisherLeft);
    assert_eq!(gops.len(), 3);
    assert_eq!(gops[0].video().unwrap().width, 640);
    // Every frame, in decode order across tracks, with its bytes.
    let sent_headers: Vec<_> = sent.iter().map(|(h, _)| *h).collect();
    let got_headers: Vec<_> = got.iter().map(|(h, _)| *h).collect();
    let missing: Vec<_> = sent_headers.iter().filter(|h| !got_headers.contains(h)).collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    assert_eq!(got_headers.len(), sent_headers.len());
    assert_eq!(got_headers, sent_headers);
    assert_eq!(got, sent);
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_and_unknown_broadcast_are_clear_errors() {
    tls::install_crypto_provider();
    let server = node("refuse").await;
    let config = tls::client_config(Some(&server.ca)).unwrap();
    match BusClient::connect(&server.url, "wrong", config.clone()).await {
        Err(QuicError::Refused(m)) => assert!(m.contains("invalid bus token"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    let client = BusClient::connect(&server.url, "secret", config).await.unwrap();
    let local = Bus::default();
    let started = std::time::Instant::now();
    match client.subscribe_into("nobody", StartAt::CurrentGop, &local).await {
        Err(QuicError::NotFound(name)) => assert_eq!(name, "nobody"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("subscribed to a broadcast nobody publishes"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // An untrusted certificate is refused by the client.
    let other = tmpdir("other-ca");
    let foreign = tls::server_identity(None, None, &other, &[]).unwrap();
    let bad = tls::client_config(Some(&foreign.cert_path)).unwrap();
    assert!(BusClient::connect(&server.url, "secret", bad).await.is_err());
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_longer_than_the_limit_is_refused_before_it_is_buffered() {
    tls::install_crypto_provider();
    let server = node("big-frame").await;
    let config = tls::client_config(Some(&server.ca)).unwrap();
    let mut on_server = server.bus.subscribe("cam", SubscribeOptions::default());
    let pub_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut publisher = pub_bus.publish("cam");
    let client = BusClient::connect(&server.url, "secret", config).await.unwrap();
    let _publication = client.publish_from("cam", pub_bus.subscribe("cam", SubscribeOptions::default())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // GoP 0: a frame of 17 MiB (over the 16 MiB limit). GoP 1: ordinary frames.
    publisher.open_gop(gop(0)).unwrap();
    let big = Payload::from_bytes(Bytes::from(vec![1u8; 17 << 20]));
    let header =
        FrameHeader { track: TrackId::VIDEO, dts: 0, cts: 0, flags: FrameFlags::KEYFRAME, len: big.len() as u32 };
    publisher.push(Frame { header, payload: big }).unwrap();
    // The server refuses the frame's stream instead of buffering 17 MiB: nothing of it arrives.
    let mut largest = 0;
    while let Ok(ev) = tokio::time::timeout(Duration::from_secs(2), on_server.next()).await {
        if let Event::Frame(f) = ev {
            largest = largest.max(f.payload.len());
        }
    }
    assert!(largest <= gopbus_proto::wire::MAX_FRAME, "a {largest}-byte frame got through");
    drop(publisher);
    // The server carries on: another broadcast goes through whole.
    let mut other = server.bus.subscribe("cam2", SubscribeOptions::default());
    let bus2 = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut p2 = bus2.publish("cam2");
    let client2 =
        BusClient::connect(&server.url, "secret", tls::client_config(Some(&server.ca)).unwrap()).await.unwrap();
    let _p2 = client2.publish_from("cam2", bus2.subscribe("cam2", SubscribeOptions::default())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    p2.open_gop(gop(0)).unwrap();
    for f in frames(1) {
        p2.push(f).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    p2.end(EndReason::PublisherLeft);
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), other.next()).await.expect("stalled") {
            Event::Frame(_) => got += 1,
            Event::End(_) => break,
            _ => {}
        }
    }
    assert_eq!(got, frames(1).len());
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_slots_come_back() {
    tls::install_crypto_provider();
    let server = node_with("conn-limit", 2).await;
    let connect = || BusClient::connect(&server.url, "secret", tls::client_config(Some(&server.ca)).unwrap());
    // The second one goes through QUIC Retry (half the limit is in use): transparent to the client.
    let a = connect().await.unwrap();
    let b = connect().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(15), connect()).await;
    assert!(matches!(refused, Ok(Err(_))), "a third connection was taken: {:?}", refused.map(|r| r.is_ok()));
    drop(a);
    // The slot comes back once the server sees the connection gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if connect().await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(b);
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_only_token_subscribes_but_cannot_publish() {
    tls::install_crypto_provider();
    let server = node("reader").await;
    let config = || tls::client_config(Some(&server.ca)).unwrap();
    let pub_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let reader = BusClient::connect(&server.url, "reader", config()).await.unwrap();
    // Publishing (or taking over a name) with it is refused...
    let refused = reader.publish_from("cam", pub_bus.subscribe("cam", SubscribeOptions::default())).await;
    let e = refused.err().expect("a subscribe-only token published");
    assert!(e.to_string().contains("may only subscribe"), "{e}");
    // ...while the bus token publishes, and the subscribe-only token reads it.
    let mut publisher = pub_bus.publish("cam");
    let writer = BusClient::connect(&server.url, "secret", config()).await.unwrap();
    let _publication = writer.publish_from("cam", pub_bus.subscribe("cam", SubscribeOptions::default())).await.unwrap();
    let sub_bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut local = sub_bus.subscribe("cam", SubscribeOptions::default());
    let subscribe = reader.subscribe_into("cam", StartAt::CurrentGop, &sub_bus);
    let feed = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        publisher.open_gop(gop(0)).unwrap();
        for f in frames(0) {
            publisher.push(f).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher.end(EndReason::PublisherLeft);
    };
    let (sub, ()) = tokio::join!(subscribe, feed);
    let _sub = sub.unwrap();
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), local.next()).await.expect("stalled") {
            Event::Frame(_) => got += 1,
            Event::End(_) => break,
            _ => {}
        }
    }
    assert_eq!(got, frames(0).len());
    server.shutdown.cancel();
}

/// One frame of `track` at `dts` with `byte` as its payload.
fn one(track: TrackId, dts: i64, byte: u8) -> Frame {
    let flags = if track == TrackId::VIDEO && dts == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
    Frame {
        header: FrameHeader { track, dts, cts: 0, flags, len: 100 },
        payload: Payload::from_bytes(Bytes::from(vec![byte; 100])),
    }
}

/// The next frame a subscriber gets, within `within`.
async fn next_frame(sub: &mut gopbus_bus::quic::RemoteSubscriber, within: Duration) -> Option<Frame> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Event::Frame(f)) => return Some(f),
            Ok(Event::End(r)) => panic!("ended: {r}"),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Reads one framed bus message off `recv` (a bare server's view of the wire).
async fn read_message(recv: &mut quinn::RecvStream, buf: &mut bytes::BytesMut) -> gopbus_proto::wire::Message {
    use gopbus_proto::wire::PREFIX_LEN;
    loop {
        if buf.len() >= PREFIX_LEN {
            let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if buf.len() >= PREFIX_LEN + len {
                let mut msg = buf.split_to(PREFIX_LEN + len);
                return gopbus_proto::wire::decode(&mut msg).unwrap();
            }
        }
        let chunk = recv.read_chunk(usize::MAX, true).await.unwrap().expect("stream ended early");
        buf.extend_from_slice(&chunk.bytes);
    }
}

/// `connect_and_subscribe` sends its subscription right behind the hello, not
/// a round trip later: a bare QUIC server that answers nothing until it has
/// read both gets both (a client that waited for the welcome would never send
/// the second). Against a real node the pair subscribes and gets frames, and a
/// wrong token fails it with the node's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_subscription_leave_together() {
    use gopbus_proto::wire::{Control, Message};
    tls::install_crypto_provider();
    let dir = tmpdir("pipelined");
    let identity = tls::server_identity(None, None, &dir, &[]).unwrap();
    let ca = identity.cert_path.clone();
    let endpoint =
        quinn::Endpoint::server(tls::server_config(identity).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("quic://127.0.0.1:{}", endpoint.local_addr().unwrap().port());
    let bare = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let within = Duration::from_secs(5);
        let hello = tokio::time::timeout(within, read_message(&mut recv, &mut buf)).await.expect("a hello");
        let next = tokio::time::timeout(within, read_message(&mut recv, &mut buf))
            .await
            .expect("the subscription did not come before the welcome");
        let mut out = bytes::BytesMut::new();
        gopbus_proto::wire::encode(&Message::Control(Control::Welcome), &mut out);
        if let Message::Control(Control::Subscribe { id, .. }) = &next {
            gopbus_proto::wire::encode(&Message::Control(Control::Ok { id: *id }), &mut out);
        }
        send.write_all(&out).await.unwrap();
        let _ = conn.closed().await;
        (hello, next)
    });
    let config = tls::client_config(Some(&ca)).unwrap();
    let (client, _sub) =
        BusClient::connect_and_subscribe(&url, "secret", config, "cam", StartAt::CurrentGop, BusConfig::default())
            .await
            .expect("welcomed and subscribed");
    drop(client);
    let (hello, next) = bare.await.unwrap();
    assert!(matches!(hello, Message::Control(Control::Hello { ref token, .. }) if token == "secret"), "{hello:?}");
    assert!(
        matches!(next, Message::Control(Control::Subscribe { ref broadcast, .. }) if broadcast == "cam"),
        "{next:?}"
    );

    // A real node: frames arrive; a wrong token is the node's refusal.
    let server = node("pipelined-node").await;
    let mut publisher = server.bus.publish("cam");
    publisher.open_gop(gop(0)).unwrap();
    publisher.push(one(TrackId::VIDEO, 0, 1)).unwrap();
    let config = tls::client_config(Some(&server.ca)).unwrap();
    let (_client, mut sub) = BusClient::connect_and_subscribe(
        &server.url,
        "secret",
        config.clone(),
        "cam",
        StartAt::CurrentGop,
        BusConfig::default(),
    )
    .await
    .unwrap();
    let first = next_frame(&mut sub, Duration::from_secs(10)).await.expect("the keyframe");
    assert_eq!((first.header.track, first.header.dts), (TrackId::VIDEO, 0));
    publisher.push(one(TrackId::VIDEO, 33, 2)).unwrap();
    let second = next_frame(&mut sub, Duration::from_secs(10)).await.expect("the next frame");
    assert_eq!(second.header.dts, 33);
    let started = std::time::Instant::now();
    match BusClient::connect_and_subscribe(
        &server.url,
        "wrong",
        config,
        "cam",
        StartAt::CurrentGop,
        BusConfig::default(),
    )
    .await
    {
        Err(QuicError::Refused(m)) => assert!(m.contains("invalid bus token"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a wrong token subscribed"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the refusal took {:?}", started.elapsed());
    publisher.end(EndReason::PublisherLeft);
    server.shutdown.cancel();
}

/// A relay's first fetch from an upstream leaves with its hello: with the
/// right token the broadcast arrives in the relay's bus; with a wrong one
/// each fetch fails at once with the upstream's refusal (a refused
/// connection is not used again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_fetches_with_its_hello_and_a_refused_hello_fails_the_fetch() {
    use gopbus_bus::quic::{Relay, Source, Upstream};
    tls::install_crypto_provider();
    let origin = node("relay-origin").await;
    let mut publisher = origin.bus.publish("cam");
    publisher.open_gop(gop(0)).unwrap();
    publisher.push(one(TrackId::VIDEO, 0, 1)).unwrap();
    let config = tls::client_config(Some(&origin.ca)).unwrap();

    let local = Bus::default();
    let mut sub = local.subscribe("cam", SubscribeOptions::default());
    let relay = Relay::new(local.clone(), Source::Fixed(origin.url.clone()), "secret".into(), config.clone());
    relay.fetch("cam".into()).await.expect("fetched");
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Frame(f) = sub.next().await {
                return f;
            }
        }
    })
    .await
    .expect("the keyframe through the relay");
    assert_eq!(first.header.dts, 0);

    let wrong = Relay::new(Bus::default(), Source::Fixed(origin.url.clone()), "wrong".into(), config);
    for attempt in 0..2 {
        let started = std::time::Instant::now();
        match wrong.fetch("cam".into()).await {
            Err(QuicError::Refused(m)) => assert!(m.contains("invalid bus token"), "attempt {attempt}: {m}"),
            Err(e) => panic!("attempt {attempt}: unexpected error {e}"),
            Ok(()) => panic!("attempt {attempt}: a wrong upstream token fetched"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "attempt {attempt} took {:?}", started.elapsed());
    }
    publisher.end(EndReason::PublisherLeft);
    origin.shutdown.cancel();
}

/// A relay holds an audio frame for a subscriber until the next video frame
/// (then both leave together, audio first) or until the hold is over; with no
/// hold, audio leaves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_waits_for_the_next_video_frame_and_no_longer_than_the_hold() {
    tls::install_crypto_provider();
    let hold = Duration::from_secs(2);
    for (tag, hold) in [("hold", hold), ("nohold", Duration::ZERO)] {
        let server = node_opts(tag, 16, hold, gopbus_bus::quic::GROUP_SIZE).await;
        let mut publisher = server.bus.publish("cam");
        publisher.open_gop(gop(0)).unwrap();
        publisher.push(one(TrackId::VIDEO, 0, 1)).unwrap();
        let client =
            BusClient::connect(&server.url, "secret", tls::client_config(Some(&server.ca)).unwrap()).await.unwrap();
        let mut sub = client.subscribe("cam", StartAt::CurrentGop, BusConfig::default()).await.unwrap();
        let first = next_frame(&mut sub, Duration::from_secs(10)).await.expect("the keyframe");
        assert_eq!(first.header.track, TrackId::VIDEO);

        publisher.push(one(TrackId::AUDIO, 10, 2)).unwrap();
        if hold.is_zero() {
            let a = next_frame(&mut sub, Duration::from_secs(10)).await.expect("audio, at once");
            assert_eq!((a.header.track, a.header.dts), (TrackId::AUDIO, 10));
        } else {
            // Held: nothing arrives before the next video frame is published.
            assert!(next_frame(&mut sub, Duration::from_millis(500)).await.is_none(), "audio left before the video");
            let t0 = std::time::Instant::now();
            publisher.push(one(TrackId::VIDEO, 33, 3)).unwrap();
            let a = next_frame(&mut sub, Duration::from_secs(10)).await.expect("the held audio");
            let v = next_frame(&mut sub, Duration::from_secs(10)).await.expect("the video");
            assert_eq!((a.header.track, a.header.dts), (TrackId::AUDIO, 10), "audio first, in decode order");
            assert_eq!((v.header.track, v.header.dts), (TrackId::VIDEO, 33));
            assert!(t0.elapsed() < Duration::from_millis(1500), "the video frame did not release the audio");
            // Audio with no video after it: out when the hold is over.
            let t0 = std::time::Instant::now();
            publisher.push(one(TrackId::AUDIO, 40, 4)).unwrap();
            let a = next_frame(&mut sub, Duration::from_secs(10)).await.expect("audio after the hold");
            assert_eq!(a.header.dts, 40);
            assert!(t0.elapsed() >= Duration::from_millis(1900), "audio left before its hold was over");
        }
        publisher.end(EndReason::PublisherLeft);
        server.shutdown.cancel();
    }
}

/// Waits (at most 10 s) until `cond` holds; panics with `what` if it never does.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every event of `sub` until the end: frames (header and bytes) and GoP numbers.
async fn collect(mut sub: gopbus_bus::quic::RemoteSubscriber) -> (Vec<(FrameHeader, Vec<u8>)>, Vec<u64>) {
    let (mut frames, mut gops) = (Vec::new(), Vec::new());
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("stalled") {
            Event::Frame(f) => frames.push((f.header, f.payload.to_vec())),
            Event::Gop(h) => gops.push(h.seq),
            Event::End(_) => return (frames, gops),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Caught-up subscribers are written to by subscriber groups (of two here:
/// three subscribers, two groups) and get every frame of every GoP, in order,
/// with its bytes; a subscription dropped mid-stream leaves its group and the
/// others carry on; the groups end with the broadcast. With groups off (0)
/// nobody is grouped and the frames are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_subscribers_are_served_by_groups_and_miss_nothing() {
    tls::install_crypto_provider();
    for size in [2usize, 0] {
        let server = node_opts(&format!("group{size}"), 16, gopbus_bus::quic::AUDIO_HOLD, size).await;
        let mut publisher = server.bus.publish("cam");
        let mut sent = Vec::new();
        let mut push = |publisher: &mut gopbus_bus::Publisher, f: Frame| {
            sent.push((f.header, f.payload.to_vec()));
            publisher.push(f).unwrap();
        };
        publisher.open_gop(gop(0)).unwrap();
        let mut rest = frames(0);
        for f in rest.drain(..5) {
            push(&mut publisher, f);
        }
        let client =
            BusClient::connect(&server.url, "secret", tls::client_config(Some(&server.ca)).unwrap()).await.unwrap();
        let mut readers = Vec::new();
        for _ in 0..2 {
            let sub = client.subscribe("cam", StartAt::CurrentGop, BusConfig::default()).await.unwrap();
            readers.push(tokio::spawn(collect(sub)));
        }
        let mut leaver = client.subscribe("cam", StartAt::CurrentGop, BusConfig::default()).await.unwrap();
        let (want, groups) = if size == 0 { (0, 0) } else { (3, 2) };
        if size > 0 {
            until("three subscribers in two groups", || {
                server.stats.grouped_subscribers() == want && server.stats.subscriber_groups() == groups
            })
            .await;
        }
        for f in rest {
            push(&mut publisher, f);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(next_frame(&mut leaver, Duration::from_secs(10)).await.is_some());
        drop(leaver);
        for g in 1..3u64 {
            publisher.open_gop(gop(g)).unwrap();
            for f in frames(g as i64) {
                push(&mut publisher, f);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if size > 0 {
                // Back in their groups after the GoP's streams were opened; the one that left is gone.
                until("two subscribers grouped", || server.stats.grouped_subscribers() == 2).await;
            }
        }
        assert_eq!(server.stats.grouped_subscribers(), want.min(2));
        publisher.end(EndReason::PublisherLeft);
        for r in readers {
            let (got, gops) = r.await.unwrap();
            assert_eq!(gops, vec![0, 1, 2], "group size {size}");
            let got_headers: Vec<_> = got.iter().map(|(h, _)| *h).collect();
            let sent_headers: Vec<_> = sent.iter().map(|(h, _)| *h).collect();
            assert_eq!(got_headers, sent_headers, "group size {size}: every frame in order");
            assert!(got == sent, "group size {size}: the frames' bytes differ");
        }
        until("the groups ended with the broadcast", || {
            server.stats.grouped_subscribers() == 0 && server.stats.subscriber_groups() == 0
        })
        .await;
        server.shutdown.cancel();
    }
}

/// A heavy GoP: 20 video frames of 50 KB (about 1 MB) with audio between them,
/// frame bytes telling GoP and position apart.
fn heavy_frames(g: i64) -> Vec<Frame> {
    let mut v = Vec::new();
    for i in 0..20i64 {
        let payload = Payload::from_bytes(Bytes::from(vec![(g * 20 + i) as u8; 50_000]));
        let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
        let header = FrameHeader { track: TrackId::VIDEO, dts: g * 1000 + i * 7, cts: 0, flags, len: 50_000 };
        v.push(Frame { header, payload });
    }
    for i in 0..30i64 {
        let payload = Payload::from_bytes(Bytes::from(vec![(g * 30 + i) as u8; 300]));
        let header = FrameHeader {
            track: TrackId::AUDIO,
            dts: g * 1000 + i * 5,
            cts: 0,
            flags: FrameFlags::default(),
            len: 300,
        };
        v.push(Frame { header, payload });
    }
    v.sort_by_key(|f| f.header.dts);
    v
}

/// What one subscriber saw, checked against the bus contract: each GoP's frames
/// are the sent GoP's first frames in order, and a GoP that stops short is
/// followed by a cut-short or skip event. Returns (whole GoPs, GoPs told cut or skipped).
fn check_contract(who: &str, sent: &[Vec<(FrameHeader, Vec<u8>)>], events: &[Event]) -> (usize, usize) {
    let (mut whole, mut told) = (0, 0);
    // The GoP being read: its index in `sent`, frames so far, and whether a cut/skip was reported.
    let mut cur: Option<(usize, usize, bool)> = None;
    let mut finish = |cur: Option<(usize, usize, bool)>, at: &str| {
        if let Some((g, n, reported)) = cur {
            if n == sent[g].len() {
                whole += 1;
            } else {
                assert!(reported, "{who}: GoP {g} stopped after {n} of {} frames with no event ({at})", sent[g].len());
                told += 1;
            }
        }
    };
    for ev in events {
        match ev {
            Event::Gop(h) => {
                finish(cur.take(), "next GoP");
                cur = Some(((h.start_dts / 1000) as usize, 0, false));
            }
            Event::Frame(f) => {
                let (g, n, reported) = cur.as_mut().unwrap_or_else(|| panic!("{who}: a frame outside a GoP"));
                assert!(!*reported, "{who}: a frame of GoP {g} after it was cut short");
                let (h, bytes) = &sent[*g][*n];
                assert_eq!(
                    (&f.header, f.payload.to_vec()),
                    (h, bytes.clone()),
                    "{who}: GoP {g} frame {n} is not the one sent"
                );
                *n += 1;
            }
            Event::CutShort { .. } | Event::Skipped { .. } => {
                if let Some((_, _, reported)) = cur.as_mut() {
                    *reported = true;
                }
            }
            Event::End(_) => finish(cur.take(), "end"),
        }
    }
    (whole, told)
}

/// The contract under load: a relay sends a 7 MB/s broadcast to subscribers that
/// read at full speed and to subscribers that read at 1 MB/s. The slow ones fall
/// behind; every GoP any subscriber gets is whole or reported cut short/skipped
/// (a receiver that gave up on a frame released the rest of the GoP with a hole
/// in it, without a word, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_gets_whole_gops_or_is_told() {
    tls::install_crypto_provider();
    let server = node("saturate").await;
    let config = || tls::client_config(Some(&server.ca)).unwrap();
    let mut publisher = server.bus.publish("hot");
    let mut clients = Vec::new();
    for i in 0..4 {
        let rate = (i >= 2).then_some(1_000_000);
        let client = BusClient::connect_paced(&server.url, "secret", config(), rate).await.unwrap();
        clients.push((if rate.is_some() { format!("slow{i}") } else { format!("fast{i}") }, client));
    }
    let mut readers = Vec::new();
    let feed = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut sent = Vec::new();
        for g in 0..15i64 {
            let mut header = gop(0);
            header.start_dts = g * 1000;
            publisher.open_gop(header).unwrap();
            let frames = heavy_frames(g);
            sent.push(frames.iter().map(|f| (f.header, f.payload.to_vec())).collect::<Vec<_>>());
            for f in frames {
                publisher.push(f).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        publisher.end(EndReason::PublisherLeft);
        sent
    };
    let (subscribed, sent) = tokio::join!(
        async {
            for (who, client) in &clients {
                let sub = client.subscribe("hot", StartAt::CurrentGop, BusConfig { window: 4, max_lag: 4 }).await;
                let mut r = sub.unwrap_or_else(|e| panic!("{who}: {e}"));
                let who = who.clone();
                readers.push(tokio::spawn(async move {
                    let mut events = Vec::new();
                    loop {
                        let ev = tokio::time::timeout(Duration::from_secs(30), r.next())
                            .await
                            .unwrap_or_else(|_| panic!("{who}: stalled"));
                        let end = matches!(ev, Event::End(_));
                        events.push(ev);
                        if end {
                            break (who, events);
                        }
                    }
                }));
            }
        },
        feed
    );
    let () = subscribed;
    let mut slow_told = 0;
    for reader in readers {
        let (who, events) = reader.await.unwrap();
        let (whole, told) = check_contract(&who, &sent, &events);
        eprintln!("{who}: {whole} whole GoPs, {told} cut short or skipped");
        assert!(whole + told > 0, "{who}: got nothing");
        if who.starts_with("slow") {
            slow_told += told;
        }
    }
    assert!(slow_told > 0, "the slow subscribers never fell behind: the test did not load the relay");
    server.shutdown.cancel();
}
