//! `relay-compare`: a gopbus relay and moq-relay, alternately, in the same run,
//! on the same stream: one publisher in the bench process, N QUIC subscribers in
//! a load-generator process of their own ([`crate::loadgen`]). For each relay:
//! its CPU and RSS with the publisher alone, then with the N subscribers, per
//! subscriber above the publisher alone; frames delivered; latency; join times.
//!
//! moq-relay is not built by the bench: `--moq-relay PATH` names a binary built
//! from its public repository (kixelated/moq). Without it only gopbus runs.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use gopbus_bus::quic::{tls, BusClient};
use gopbus_bus::{Bus, BusConfig, SubscribeOptions};
use gopbus_proto::{Frame, FrameFlags, FrameHeader, Payload, TrackId};

use super::Params;
use crate::flv::{Tag, TAG_AUDIO, TAG_VIDEO};
use crate::loadgen::{Proto, BROADCAST, TOKEN};
use crate::media::{synthetic_gop_header, StreamSpec};
use crate::report::{Report, Row, Spread};
use crate::target::default_gopbus;
use crate::{moq, procstat};

/// A relay process the bench started, and what it needs to reach it.
struct Relay {
    child: Child,
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_relay(p: &Params, proto: Proto, tag: &str) -> anyhow::Result<Relay> {
    let dir = std::env::temp_dir().join(format!("gopbus-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
    let log = std::fs::File::create(dir.join("relay.log"))?;
    let child = match proto {
        Proto::Gopbus => {
            let bin = match &p.gopbus {
                Some(b) => b.clone(),
                None => default_gopbus()?,
            };
            Command::new(bin)
                .args(["relay", "--quic", &addr.to_string(), "--bus-token", TOKEN, "--data"])
                .arg(&dir)
                .env("RUST_LOG", "warn,gopbus=info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?
        }
        Proto::Moq => {
            let bin = p.moq_relay.as_ref().context("--moq-relay PATH is needed for moq-relay")?;
            // moq-relay serves the same kind of self-signed certificate gopbus makes.
            let id = tls::server_identity(None, None, &dir, &[])?;
            Command::new(bin)
                .args(["--server-bind", &addr.to_string(), "--auth-public", ""])
                .arg("--tls-cert")
                .arg(&id.cert_path)
                .arg("--tls-key")
                .arg(dir.join("bus-key.pem"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?
        }
    };
    let relay = Relay { child, addr, ca: dir.join("bus-cert.pem"), dir };
    // Ready when a client gets through the handshake.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // (gopbus writes its certificate as it starts.)
        let ok = relay.ca.exists()
            && match proto {
                Proto::Gopbus => {
                    let config = tls::client_config(Some(&relay.ca))?;
                    BusClient::connect(&format!("quic://{addr}"), TOKEN, config).await.is_ok()
                }
                Proto::Moq => moq::Session::connect(addr, moq::client_config(&relay.ca)?, Vec::new()).await.is_ok(),
            };
        if ok {
            return Ok(relay);
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(relay.dir.join("relay.log")).unwrap_or_default();
            bail!("the {} relay did not start: {log}", proto.name());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes the stream's tags in a loop, paced by their timestamps, until
/// `stop`: each frame's payload is an 8-byte send stamp and the tag's body;
/// a GoP (gopbus) or group (moq, on both tracks) starts at every keyframe.
async fn publish(
    relay_addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
    proto: Proto,
    tags: Arc<Vec<Tag>>,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    enum Out {
        /// The local publisher, and the client and publication that carry it to the relay (held).
        Gopbus(gopbus_bus::Publisher, #[allow(dead_code)] (BusClient, gopbus_bus::quic::RemotePublication)),
        Moq(moq::Publisher),
    }
    let mut out = match proto {
        Proto::Gopbus => {
            let source = Bus::new(BusConfig::default());
            let client =
                BusClient::connect(&format!("quic://{relay_addr}"), TOKEN, tls::client_config(Some(&ca))?).await?;
            let publication =
                client.publish_from(BROADCAST, source.subscribe(BROADCAST, SubscribeOptions::default())).await?;
            Out::Gopbus(source.publish(BROADCAST), (client, publication))
        }
        Proto::Moq => Out::Moq(moq::Publisher::connect(relay_addr, moq::client_config(&ca)?, BROADCAST).await?),
    };
    let span = tags.last().map_or(1, |t| i64::from(t.timestamp) + 33);
    let start = tokio::time::Instant::now();
    let mut opened = false;
    let mut lap = 0i64;
    loop {
        for tag in tags.iter() {
            if stop.load(Ordering::Relaxed) {
                if let Out::Moq(m) = out {
                    m.close();
                }
                return Ok(());
            }
            let media = matches!(tag.kind, TAG_VIDEO | TAG_AUDIO) && tag.data.len() > 1 && tag.data[1] != 0;
            if !media {
                continue; // metadata and sequence headers: the GoP header (or a catalog) carries them
            }
            let dts = lap * span + i64::from(tag.timestamp);
            tokio::time::sleep_until(start + Duration::from_millis(dts as u64)).await;
            let key = tag.is_video_keyframe();
            opened |= key;
            if !opened {
                continue;
            }
            let mut b = BytesMut::with_capacity(8 + tag.data.len());
            b.put_slice(&moq::stamp_now());
            b.put_slice(&tag.data);
            let payload: Bytes = b.freeze();
            let video = tag.kind == TAG_VIDEO;
            match &mut out {
                Out::Gopbus(p, _) => {
                    if key {
                        let _ = p.open_gop(synthetic_gop_header(dts));
                    }
                    let track = if video { TrackId::VIDEO } else { TrackId::AUDIO };
                    let flags = if key || !video { FrameFlags::KEYFRAME } else { FrameFlags::default() };
                    let header = FrameHeader { track, dts, cts: 0, flags, len: payload.len() as u32 };
                    let _ = p.push(Frame { header, payload: Payload::from_bytes(payload) });
                }
                Out::Moq(m) => {
                    if key {
                        m.new_group();
                    }
                    m.frame(if video { "video" } else { "audio" }, &payload).await?;
                }
            }
            published.fetch_add(1, Ordering::Relaxed);
        }
        lap += 1;
    }
}

/// The load generator: the bench binary again (`__loadgen`), or a thread of this
/// process when that is not the bench (the harness test).
enum Gen {
    Process(Child, std::io::Lines<BufReader<std::process::ChildStdout>>),
    Thread(Option<crate::loadgen::InThread>),
}

impl Gen {
    fn start(proto: Proto, relay: &Relay, n: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        if exe.file_stem().is_some_and(|s| s == "bench") {
            let mut child = Command::new(exe)
                .args(["__loadgen", proto.name(), &relay.addr.to_string()])
                .arg(&relay.ca)
                .arg(n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let lines = BufReader::new(child.stdout.take().context("loadgen stdout")?).lines();
            Ok(Self::Process(child, lines))
        } else {
            Ok(Self::Thread(Some(crate::loadgen::InThread::start(proto, relay.addr, &relay.ca, n))))
        }
    }

    /// Blocks until the subscribers have joined: how many failed.
    fn ready(&mut self) -> anyhow::Result<u64> {
        tokio::task::block_in_place(|| match self {
            Self::Process(_, lines) => {
                let line = lines.next().context("the load generator exited")??;
                Ok(line.strip_prefix("ready ").context("no ready line from the load generator")?.parse()?)
            }
            Self::Thread(t) => t.as_ref().context("stopped")?.ready(),
        })
    }

    /// Stops the subscribers and returns their figures.
    fn stop(&mut self) -> anyhow::Result<serde_json::Value> {
        tokio::task::block_in_place(|| match self {
            Self::Process(child, lines) => {
                writeln!(child.stdin.as_mut().context("loadgen stdin")?, "stop")?;
                let line = lines.next().context("the load generator exited")??;
                let _ = child.wait();
                Ok(serde_json::from_str(line.strip_prefix("result ").context("no result line")?)?)
            }
            Self::Thread(t) => t.take().context("stopped twice")?.stop(),
        })
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        if let Self::Process(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The figures of one relay at one N.
struct Outcome {
    base_cpu: f64,
    cpu: f64,
    base_rss_mib: f64,
    rss_mib: f64,
    delivered: f64,
    mbps: f64,
    told_per_sub: f64,
    p50: f64,
    p99: f64,
    joins: Vec<f64>,
    failed: u64,
}

async fn once(p: &Params, proto: Proto, n: usize, tags: Arc<Vec<Tag>>) -> anyhow::Result<Outcome> {
    let relay = start_relay(p, proto, &format!("{}-{n}", proto.name())).await?;
    let pid = relay.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish(relay.addr, relay.ca.clone(), proto, tags, stop.clone(), published.clone()));
    // One subscriber throughout, so that both relays take the stream in from the
    // start (moq-relay subscribes upstream only when someone subscribes to it).
    let primer_stop = tokio_util::sync::CancellationToken::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let primer = crate::loadgen::one_subscriber(proto, relay.addr, &relay.ca, primer_stop.clone()).await?;
    // The publisher and that one subscriber, after a second to settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, r0) = (procstat::cpu(pid), procstat::rss_kib(pid));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c1, r1) = (procstat::cpu(pid), procstat::rss_kib(pid));
    let base_cpu = c0.zip(c1).map_or(0.0, |(a, b)| procstat::cpu_percent(a, b));
    let base_rss = r0.max(r1).unwrap_or(0) as f64 / 1024.0;
    // The subscribers, in their own process (on a thread under `cargo test`).
    let mut gen = Gen::start(proto, &relay, n)?;
    let result = async {
        let failed = gen.ready()?;
        let (c0, f0, t0) = (procstat::cpu(pid), published.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(p.seconds)).await;
        let (c1, f1) = (procstat::cpu(pid), published.load(Ordering::Relaxed));
        let published_per_s = (f1 - f0) as f64 / t0.elapsed().as_secs_f64();
        let rss = procstat::rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let r = gen.stop()?;
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let subs = (n as f64 - failed as f64).max(1.0);
        anyhow::Ok(Outcome {
            base_cpu,
            cpu: c0.zip(c1).map_or(0.0, |(a, b)| procstat::cpu_percent(a, b)),
            base_rss_mib: base_rss,
            rss_mib: rss,
            // Rates: the load generator's window is a little longer than ours.
            delivered: f("frames") / f("seconds").max(1e-9) / (published_per_s.max(1e-9) * subs),
            mbps: f("bytes") * 8.0 / f("seconds").max(1e-9) / 1e6,
            told_per_sub: f("told") / subs,
            p50: f("latency_p50"),
            p99: f("latency_p99"),
            joins: r["joins"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default(),
            failed,
        })
    }
    .await;
    drop(gen);
    primer_stop.cancel();
    let _ = primer.await;
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.await;
    drop(relay);
    result
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    tls::install_crypto_provider();
    let sizes = p.sizes_or(&[100, 300]);
    // The stream unless another was asked for: 720p at ~3 Mb/s, a keyframe every 2 s.
    let default = StreamSpec::default();
    let spec = if (p.spec.width, p.spec.height, p.spec.kbps) == (default.width, default.height, default.kbps) {
        StreamSpec { width: 1280, height: 720, kbps: 3000, gop: 2, ..default }
    } else {
        p.spec
    };
    let tags = Arc::new(spec.tags()?);
    let mut relays = vec![Proto::Gopbus];
    if p.moq_relay.is_some() {
        relays.push(Proto::Moq);
    }
    let mut report = Report::new(
        "relay-compare",
        serde_json::json!({
            "runs": p.runs,
            "seconds": p.seconds,
            "subscribers": sizes,
            "stream": format!("H.264 High {}x{} 30 fps {} kb/s, keyframe every {} s, B-frames; AAC 48 kHz 128 kb/s; an 8-byte send stamp before each frame", spec.width, spec.height, spec.kbps, spec.gop),
            "moq_relay": p.moq_relay.as_ref().map(|b| b.display().to_string()),
        }),
    );
    for &n in &sizes {
        // Runs alternate between the relays, so drift of the machine hits both.
        let mut outs: Vec<Vec<Outcome>> = relays.iter().map(|_| Vec::new()).collect();
        for _ in 0..p.runs {
            for (i, &proto) in relays.iter().enumerate() {
                outs[i].push(once(p, proto, n, tags.clone()).await?);
            }
        }
        let per_sub = |o: &Outcome| (o.cpu - o.base_cpu) / n as f64;
        let gopbus_per_sub = Spread::of(&outs[0].iter().map(per_sub).collect::<Vec<_>>()).median;
        for (i, &proto) in relays.iter().enumerate() {
            let o = &outs[i];
            let med = |f: &dyn Fn(&Outcome) -> f64| Spread::of(&o.iter().map(f).collect::<Vec<_>>()).median;
            let mut joins: Vec<f64> = o.iter().flat_map(|o| o.joins.iter().copied()).collect();
            joins.sort_by(f64::total_cmp);
            let mine = med(&per_sub);
            let mut row = Row::new()
                .col("subscribers", n as u64)
                .col("relay", if proto == Proto::Gopbus { "gopbus relay" } else { "moq-relay" })
                .col("CPU % alone", med(&|o| o.base_cpu))
                .col("CPU %", med(&|o| o.cpu))
                .col("CPU % per sub", mine)
                .col("RSS MiB alone", med(&|o| o.base_rss_mib))
                .col("RSS MiB", med(&|o| o.rss_mib))
                .col("RSS MB per sub", med(&|o| (o.rss_mib - o.base_rss_mib) * 1.048_576 / n as f64))
                .col("frames delivered %", med(&|o| o.delivered * 100.0))
                .col("delivered Mb/s", med(&|o| o.mbps))
                .col("GoPs told cut/skipped per sub", med(&|o| o.told_per_sub))
                .col("latency p50 ms", med(&|o| o.p50))
                .col("latency p99 ms", med(&|o| o.p99))
                .col("join p50 ms", crate::report::quantile(&joins, 0.5))
                .col("join max ms", joins.last().copied().unwrap_or(0.0))
                .col("failed joins", o.iter().map(|o| o.failed).sum::<u64>());
            if relays.len() > 1 {
                row = row.col("gopbus ÷ this, CPU per sub", gopbus_per_sub / mine.max(1e-9));
            }
            report.rows.push(row);
        }
    }
    report.notes.push(
        "Each relay runs as its own process on loopback; the publisher runs in the bench process, the N subscribers \
         (each its own QUIC connection and UDP socket) in a load-generator process (`bench __loadgen`), all on the \
         same cores. 'publisher alone': the relay's CPU over 3 s and RSS with the publisher and one subscriber (which stays \
         throughout, so both relays take the stream in before the N come); 'per sub': (with N − alone) ÷ N. gopbus: one GoP stream per track per keyframe interval; moq-lite: tracks \
         `video` and `audio`, a group per keyframe interval on each. moq-lite has no cut-short or skip report, so its \
         'GoPs told' is 0 by construction. 'join': once a second while the N run, a new subscriber (its own thread and \
         runtime) is timed from nothing to its first video frame (the keyframe; with moq-lite an audio frame may come \
         first, with gopbus it cannot: frames are handed over in decode order); a failed or hung join counts as 30 s."
            .into(),
    );
    Ok(report)
}
