//! The node library on loopback QUIC: the forwarder publishes what starts on a
//! local bus (and what was live before it connected) and ends what ends; the
//! resubscriber survives its node going away and coming back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::node::{forward, Remote, ResubscribeConfig, Resubscriber};
use gopbus_bus::quic::{tls, BusServer};
use gopbus_bus::{Bus, BusConfig, Event, Publisher, SubscribeOptions};
use gopbus_proto::{EndReason, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "secret";

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gopbus-node-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A node serving `bus` on `addr` (port 0: any); returns its address, CA and stopper.
fn node(dir: &std::path::Path, addr: SocketAddr, bus: Bus) -> (SocketAddr, std::path::PathBuf, CancellationToken) {
    let identity = tls::server_identity(None, None, dir, &[]).unwrap();
    let ca = identity.cert_path.clone();
    let config = tls::server_config(identity).unwrap();
    let server =
        BusServer::bind(addr, config, bus, TOKEN.into()).unwrap().with_not_found_after(Duration::from_millis(500));
    let addr = server.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    (addr, ca, stop)
}

fn remote(addr: SocketAddr, ca: &std::path::Path) -> Remote {
    Remote { url: format!("quic://{addr}"), token: TOKEN.into(), tls: tls::client_config(Some(ca)).unwrap() }
}

fn push_gop(p: &mut Publisher, start: i64) {
    p.open_gop(GopHeader { seq: 0, start_dts: start, tracks: Vec::new(), metadata: None }).unwrap();
    for i in 0..5 {
        let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
        let header = FrameHeader { track: TrackId::VIDEO, dts: start + i * 40, cts: 0, flags, len: 4 };
        p.push(Frame { header, payload: Payload::from_bytes(Bytes::from_static(b"abcd")) }).unwrap();
    }
}

async fn next(s: &mut Resubscriber) -> Event {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("an event")
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_publishes_what_starts_and_ends_what_ends() {
    tls::install_crypto_provider();
    let far = Bus::new(BusConfig::default());
    let (addr, ca, _stop) = node(&tmpdir("fwd"), "127.0.0.1:0".parse().unwrap(), far.clone());
    let near = Bus::new(BusConfig::default());
    // Live before the forwarder connects.
    let mut early = near.publish("early");
    push_gop(&mut early, 0);
    let shutdown = CancellationToken::new();
    tokio::spawn(forward(near.clone(), remote(addr, &ca), Duration::from_secs(1), shutdown.clone()));
    eventually("the early broadcast is forwarded", || far.is_live("early")).await;

    let mut watch = far.subscribe("late", SubscribeOptions::default());
    let mut late = near.publish("late");
    push_gop(&mut late, 1000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    push_gop(&mut late, 2000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    late.end(EndReason::PublisherLeft);
    // One that ends before the forwarder can look at it is not announced to the node.
    let mut brief = near.publish("brief");
    push_gop(&mut brief, 0);
    drop(brief);
    let mut dts = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(4), watch.next()).await.expect("forwarded events") {
            Event::Frame(f) => dts.push(f.header.dts),
            Event::End(r) => break r,
            _ => {}
        }
    };
    assert_eq!(end, EndReason::PublisherLeft);
    assert_eq!(dts, (0..10).map(|i| 1000 * (1 + i / 5) + (i % 5) * 40).collect::<Vec<i64>>());
    assert!(far.is_live("early"), "other broadcasts carry on");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!far.is_live("brief"));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resubscriber_survives_its_node_restarting() {
    tls::install_crypto_provider();
    let dir = tmpdir("resub");
    let first = Bus::new(BusConfig::default());
    let (addr, ca, stop_first) = node(&dir, "127.0.0.1:0".parse().unwrap(), first.clone());
    let mut cam = first.publish("cam");
    push_gop(&mut cam, 0);
    let config = ResubscribeConfig {
        remote: remote(addr, &ca),
        broadcast: "cam".into(),
        tracks: Vec::new(),
        bus: BusConfig { window: 4, max_lag: 4 },
        max_rate: None,
        max_backoff: Duration::from_millis(400),
    };
    let stop = CancellationToken::new();
    // A wrong broadcast is a final error, not a retry.
    let missing = ResubscribeConfig { broadcast: "nobody".into(), ..config.clone() };
    assert!(matches!(
        Resubscriber::connect(missing, stop.clone()).await.err(),
        Some(gopbus_bus::quic::QuicError::NotFound(_))
    ));
    let mut sub = Resubscriber::connect(config, stop.clone()).await.unwrap();
    assert!(matches!(next(&mut sub).await, Event::Gop(h) if h.start_dts == 0));

    // The node goes away, and a new one comes up on the same address with the broadcast.
    stop_first.cancel();
    drop(cam);
    let second = Bus::new(BusConfig::default());
    let stop_second = loop {
        match BusServer::bind(
            addr,
            tls::server_config(tls::server_identity(None, None, &dir, &[]).unwrap()).unwrap(),
            second.clone(),
            TOKEN.into(),
        ) {
            Ok(server) => {
                let s = CancellationToken::new();
                tokio::spawn(server.run(s.clone()));
                break s;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut cam = second.publish("cam");
    push_gop(&mut cam, 50_000);
    let feeder = tokio::spawn(async move {
        for g in 1..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            push_gop(&mut cam, 50_000 + g * 1000);
        }
        cam
    });
    let resumed = loop {
        match next(&mut sub).await {
            Event::Gop(h) if h.start_dts >= 50_000 => break h.start_dts,
            Event::End(r) => panic!("ended instead of resubscribing: {r}"),
            _ => {}
        }
    };
    assert!(resumed >= 50_000);
    assert_eq!(sub.reconnects, 1);
    assert!(matches!(next(&mut sub).await, Event::Frame(f) if f.header.is_keyframe() && f.header.dts == resumed));
    stop.cancel();
    assert!(matches!(next(&mut sub).await, Event::End(EndReason::Shutdown)));
    feeder.abort();
    stop_second.cancel();
}
