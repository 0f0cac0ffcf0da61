//! A relay under heavy load still lets new subscribers in quickly. In a test
//! binary of its own, so that no other test's processes share the cores while it
//! measures.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn new_subscribers_join_within_a_second_while_the_relay_is_saturated() {
    use gopbus_bus::quic::{tls, BusClient};
    use gopbus_bus::{Bus, BusConfig, Event, StartAt, SubscribeOptions};
    use gopbus_proto::{Frame, FrameFlags, FrameHeader, Payload, TrackId};

    const SUBSCRIBERS: usize = 80;
    const FRAME: usize = 128 * 1024; // 60 fps of 128 KiB: 63 Mb/s in, 5 Gb/s out to 80 subscribers
    tls::install_crypto_provider();
    let port = udp_port();
    let mut relay = relay("busy", port, &[]);
    let pid = relay.proc.child().id();
    let url = format!("quic://127.0.0.1:{port}");
    let config = tls::client_config(Some(&relay.dir.join("bus-cert.pem"))).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // The load: one publisher, SUBSCRIBERS subscribers reading as fast as they can.
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
                    let _ = p.open_gop(bench::media::synthetic_gop_header(dts));
                }
                let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::default() };
                let header = FrameHeader { track: TrackId::VIDEO, dts, cts: 0, flags, len: FRAME as u32 };
                let _ = p.push(Frame { header, payload: Payload::from_bytes(payload.clone()) });
            }
        });
        for _ in 0..SUBSCRIBERS {
            let c = BusClient::connect(&url, TOKEN, config.clone()).await.unwrap();
            let mut sub = c.subscribe("load", StartAt::CurrentGop, BusConfig::default()).await.unwrap();
            let (delivered, stop) = (delivered.clone(), stop.clone());
            tokio::spawn(async move {
                let _connection = c;
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
                let mut sub = c.subscribe("load", StartAt::CurrentGop, BusConfig::default()).await?;
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
