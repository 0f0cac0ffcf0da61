//! `quic-fanout`: one 6 Mb/s broadcast published into a `gopbus relay` over QUIC
//! and fanned out to N QUIC subscribers on loopback: delivered throughput, relay
//! CPU and RSS, frame latency from publish to subscriber; the same N with
//! in-process subscribers of a local bus as the baseline, in the same run.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gopbus_bus::quic::{tls, BusClient};
use gopbus_bus::{Bus, BusConfig, Event, StartAt, SubscribeOptions};
use gopbus_proto::{Frame, FrameFlags, FrameHeader, Payload, TrackId};

use super::Params;
use crate::media::synthetic_gop_header;
use crate::procstat;
use crate::report::{quantile, Report, Row, Spread};
use crate::target::default_gopbus;

const TOKEN: &str = "bench-token";
const VIDEO_FRAME: usize = 6_000_000 / 8 / 30; // 6 Mb/s at 30 fps

type Sent = Arc<Mutex<HashMap<i64, Instant>>>;

#[derive(Default)]
struct SubStats {
    frames: u64,
    bytes: u64,
    latencies: Vec<f64>,
    /// GoPs reported cut short (frames that did not arrive, accounted for).
    cut_gops: u64,
    /// GoPs reported skipped (the reader fell behind its own bus).
    skipped_gops: u64,
}

/// Publishes 30 fps video + 47 fps audio into `bus` for `secs`, noting send times.
async fn publish(bus: Bus, secs: f64, sent: Sent) -> u64 {
    let mut p = bus.publish("bench");
    let video = Bytes::from(vec![0x41u8; VIDEO_FRAME]);
    let audio = Bytes::from(vec![0x21u8; 400]);
    let start = tokio::time::Instant::now();
    let mut frames = 0u64;
    let (mut v, mut a) = (0i64, 0i64);
    loop {
        let (vt, at) = (v * 1000 / 30, a * 1000 / 47);
        let dts = vt.min(at);
        if dts as f64 / 1000.0 >= secs {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_millis(dts as u64)).await;
        if vt <= at {
            if v % 30 == 0 {
                let _ = p.open_gop(synthetic_gop_header(vt));
            }
            let flags = if v % 30 == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
            sent.lock().unwrap().insert(vt * 2, Instant::now());
            let h = FrameHeader { track: TrackId::VIDEO, dts: vt, cts: 0, flags, len: VIDEO_FRAME as u32 };
            let _ = p.push(Frame { header: h, payload: Payload::from_bytes(video.clone()) });
            v += 1;
        } else {
            let h = FrameHeader { track: TrackId::AUDIO, dts: at, cts: 0, flags: FrameFlags::KEYFRAME, len: 400 };
            let _ = p.push(Frame { header: h, payload: Payload::from_bytes(audio.clone()) });
            a += 1;
        }
        frames += 1;
    }
    p.end(gopbus_proto::EndReason::PublisherLeft);
    frames
}

/// Reads a local subscription to its end, measuring video latency. The GoP it
/// joined in is not timed: its first frames were published before it joined and
/// arrive at once (that is the instant start, not transport latency).
async fn consume(sub: &mut gopbus_bus::Subscriber, sent: Sent, deadline: Instant) -> SubStats {
    let mut s = SubStats::default();
    let mut gops = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(ev) = tokio::time::timeout(left, sub.next()).await else { break };
        match ev {
            Event::Gop(_) => gops += 1,
            Event::Frame(f) => {
                s.frames += 1;
                s.bytes += f.payload.len() as u64;
                if f.header.track == TrackId::VIDEO && gops > 1 {
                    if let Some(t0) = sent.lock().unwrap().get(&(f.header.dts * 2)) {
                        s.latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            Event::CutShort { .. } => s.cut_gops += 1,
            Event::Skipped { from, to } => s.skipped_gops += to - from,
            Event::End(_) => break,
        }
    }
    s
}

/// Every `every`, while `until` is in the future, times a fresh subscriber from
/// nothing to its first frame with `join` (which returns once it has the frame).
async fn probe_joins<F, Fut>(every: Duration, until: Instant, join: F) -> Vec<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::new();
    while Instant::now() + every < until {
        tokio::time::sleep(every).await;
        let t0 = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), join()).await {
            Ok(Ok(())) => times.push(t0.elapsed().as_secs_f64() * 1000.0),
            // A join that fails or hangs counts as 30 s: it is what a viewer would see.
            Ok(Err(e)) => {
                eprintln!("probe join failed after {:?}: {e:#}", t0.elapsed());
                times.push(30_000.0);
            }
            Err(_) => {
                eprintln!("probe join hung for 30 s");
                times.push(30_000.0);
            }
        }
    }
    times
}

/// Waits for the first frame of `sub`.
async fn first_frame(sub: &mut gopbus_bus::Subscriber) -> anyhow::Result<()> {
    loop {
        match sub.next().await {
            Event::Frame(_) => return Ok(()),
            Event::End(r) => anyhow::bail!("ended before the first frame: {r}"),
            _ => {}
        }
    }
}

struct Outcome {
    /// Join times of the probes (ms): connect, subscribe, first frame, while the N run.
    joins: Vec<f64>,
    mbps: f64,
    delivered_ratio: f64,
    p50: f64,
    p99: f64,
    relay_cpu: Option<f64>,
    relay_rss: Option<f64>,
    failed: usize,
    /// GoPs reported cut short or skipped, per subscriber.
    told_gops: f64,
}

impl Outcome {
    /// The figures of one run: what the subscribers got out of `published`
    /// frames over `secs`, and the measured process's CPU between two samples and RSS.
    fn of(
        stats: &[SubStats],
        published: u64,
        secs: f64,
        joins: Vec<f64>,
        cpu: (Option<procstat::CpuSample>, Option<procstat::CpuSample>),
        rss_kib: Option<u64>,
        failed: usize,
    ) -> Self {
        let bytes: u64 = stats.iter().map(|s| s.bytes).sum();
        let frames: u64 = stats.iter().map(|s| s.frames).sum();
        let mut lat: Vec<f64> = stats.iter().flat_map(|s| s.latencies.iter().copied()).collect();
        lat.sort_by(f64::total_cmp);
        Self {
            joins,
            mbps: bytes as f64 * 8.0 / secs / 1e6,
            delivered_ratio: frames as f64 / (published.max(1) * stats.len().max(1) as u64) as f64,
            p50: quantile(&lat, 0.5),
            p99: quantile(&lat, 0.99),
            relay_cpu: cpu.0.zip(cpu.1).map(|(a, b)| procstat::cpu_percent(a, b)),
            relay_rss: rss_kib.map(|k| k as f64 / 1024.0),
            failed,
            told_gops: stats.iter().map(|s| s.cut_gops + s.skipped_gops).sum::<u64>() as f64
                / stats.len().max(1) as f64,
        }
    }
}

async fn quic_once(p: &Params, n: usize) -> anyhow::Result<Outcome> {
    let bin = match &p.gopbus {
        Some(b) => b.clone(),
        None => default_gopbus()?,
    };
    let dir = std::env::temp_dir().join(format!("gopbus-bench-relay-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = dir.join("relay.log");
    let mut child = Command::new(&bin)
        .args(["relay", "--quic", &format!("127.0.0.1:{port}"), "--bus-token", TOKEN, "--data"])
        .arg(&dir)
        .env("RUST_LOG", "warn,gopbus=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let url = format!("quic://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("serving") {
        anyhow::ensure!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = tls::client_config(Some(&dir.join("bus-cert.pem")))?;
    let result = async {
        let source = Bus::new(BusConfig::default());
        let publisher_client = BusClient::connect(&url, TOKEN, config.clone()).await?;
        let _publication =
            publisher_client.publish_from("bench", source.subscribe("bench", SubscribeOptions::default())).await?;
        let sent: Sent = Arc::default();
        // Subscribers: connect (at most 32 handshakes at once), then subscribe.
        let end = Instant::now() + Duration::from_secs_f64(p.seconds) + Duration::from_secs(20);
        let gate = Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(n.max(1));
        // Publish first so the relay has the broadcast when subscribers ask.
        let pub_task = tokio::spawn(publish(source.clone(), p.seconds + 2.0, sent.clone()));
        // Probing stops a second before the publisher does.
        let publisher_end = Instant::now() + Duration::from_secs_f64(p.seconds + 1.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..n {
            let (url, config, gate, sent, ready) =
                (url.clone(), config.clone(), gate.clone(), sent.clone(), ready_tx.clone());
            tasks.push(tokio::spawn(async move {
                let joined = async {
                    let _permit = gate.acquire().await;
                    let c = BusClient::connect(&url, TOKEN, config).await?;
                    let sub = c.subscribe("bench", StartAt::CurrentGop, BusConfig { window: 2, max_lag: 1 }).await?;
                    anyhow::Ok((c, sub))
                }
                .await;
                if let Err(e) = &joined {
                    eprintln!("a subscriber failed to join: {e:#}");
                }
                let _ = ready.send(joined.is_ok()).await;
                match joined {
                    Ok((_c, mut sub)) => Some(consume(&mut sub, sent, end).await),
                    Err(_) => None,
                }
            }));
        }
        drop(ready_tx);
        let mut failed = 0;
        for _ in 0..n {
            if ready_rx.recv().await != Some(true) {
                failed += 1;
            }
        }
        // Measure over the steady state: from when all have joined to the publisher's end.
        let cpu0 = procstat::cpu(pid);
        // Meanwhile, a new subscriber joins every second and is timed to its first
        // frame. It runs on a thread and runtime of its own, as a new viewer process
        // would: it shares the machine's cores, not the N subscribers' task queue.
        let (url2, config2) = (url.clone(), config.clone());
        let prober = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            anyhow::Ok(rt.block_on(probe_joins(Duration::from_secs(1), publisher_end, || {
                let (url, config) = (url2.clone(), config2.clone());
                async move {
                    let c = BusClient::connect(&url, TOKEN, config).await?;
                    let mut sub = c.subscribe("bench", StartAt::CurrentGop, BusConfig::default()).await?;
                    first_frame(&mut sub).await
                }
            })))
        });
        let joins = tokio::task::spawn_blocking(move || prober.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the join prober panicked"))??;
        let published = pub_task.await?;
        let cpu1 = procstat::cpu(pid);
        let rss = procstat::rss_kib(pid);
        let mut stats = Vec::new();
        for t in tasks {
            if let Some(s) = t.await? {
                stats.push(s);
            }
        }
        anyhow::Ok(Outcome::of(&stats, published, p.seconds + 2.0, joins, (cpu0, cpu1), rss, failed))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn local_once(p: &Params, n: usize) -> anyhow::Result<Outcome> {
    let bus = Bus::new(BusConfig::default());
    let sent: Sent = Arc::default();
    let end = Instant::now() + Duration::from_secs_f64(p.seconds) + Duration::from_secs(20);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (mut sub, sent) = (bus.subscribe("bench", SubscribeOptions::default()), sent.clone());
            tokio::spawn(async move { consume(&mut sub, sent, end).await })
        })
        .collect();
    let me = std::process::id();
    let cpu0 = procstat::cpu(me);
    let pub_task = tokio::spawn(publish(bus.clone(), p.seconds + 2.0, sent));
    let publisher_end = Instant::now() + Duration::from_secs_f64(p.seconds + 1.0);
    let joins = probe_joins(Duration::from_secs(1), publisher_end, || {
        let mut sub = bus.subscribe("bench", SubscribeOptions::default());
        async move { first_frame(&mut sub).await }
    })
    .await;
    let published = pub_task.await?;
    let cpu1 = procstat::cpu(me);
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await?);
    }
    Ok(Outcome::of(&stats, published, p.seconds + 2.0, joins, (cpu0, cpu1), procstat::rss_kib(me), 0))
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    tls::install_crypto_provider();
    let sizes = p.sizes_or(&[1, 10, 100, 500]);
    let mut report = Report::new(
        "quic-fanout",
        serde_json::json!({"runs": p.runs, "seconds": p.seconds + 2.0, "subscribers": sizes, "stream": "6 Mb/s: 30 fps video of 25 kB frames, GoP 30, plus 47 fps audio of 400 B"}),
    );
    for &n in &sizes {
        for transport in ["in-process (baseline)", "QUIC via gopbus relay"] {
            let mut outs = Vec::new();
            for _ in 0..p.runs {
                outs.push(if transport.starts_with("QUIC") {
                    quic_once(p, n).await?
                } else {
                    local_once(p, n).await?
                });
            }
            let mut joins: Vec<f64> = outs.iter().flat_map(|o| o.joins.iter().copied()).collect();
            joins.sort_by(f64::total_cmp);
            let med = |f: &dyn Fn(&Outcome) -> f64| Spread::of(&outs.iter().map(f).collect::<Vec<_>>()).median;
            report.rows.push(
                Row::new()
                    .col("subscribers", n as u64)
                    .col("transport", transport)
                    .col("delivered Mb/s", med(&|o| o.mbps))
                    .col("frames delivered %", med(&|o| o.delivered_ratio * 100.0))
                    .col("GoPs cut or skipped per sub", med(&|o| o.told_gops))
                    .col("latency p50 ms", med(&|o| o.p50))
                    .col("latency p99 ms", med(&|o| o.p99))
                    .col("CPU % of a core", med(&|o| o.relay_cpu.unwrap_or(0.0)))
                    .col("RSS MiB", med(&|o| o.relay_rss.unwrap_or(0.0)))
                    .col("join p50 ms", quantile(&joins, 0.5))
                    .col("join max ms", joins.last().copied().unwrap_or(0.0))
                    .col("failed joins", outs.iter().map(|o| o.failed as u64).sum::<u64>()),
            );
        }
    }
    report.notes.push(
        "QUIC rows: CPU and RSS are the relay process's. Baseline rows: the same publisher and N subscriber tasks on \
         one in-process bus; CPU and RSS are the bench process's. The publisher and all QUIC subscribers (each with its \
         own connection, UDP socket and local bus) run in the bench process on the same 2 cores as the relay, so at large \
         N the subscribers' own QUIC receive work competes with the relay. 'frames delivered' below 100 % means \
         subscribers fell behind and the relay skipped GoPs for them; every frame not delivered is in a GoP the \
         subscriber was told about ('GoPs cut or skipped': cut-short and skip events, per subscriber). 'join': while the N subscribers run, a new \
         subscriber joins every second and is timed from nothing (QUIC: a new connection with its TLS handshake, \
         the subscription, the first frame) to its first frame; QUIC probes run on a thread and runtime of their own, \
         as a new viewer process would; a failed or hung join counts as 30 s."
            .into(),
    );
    Ok(report)
}
