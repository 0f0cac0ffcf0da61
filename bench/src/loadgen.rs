//! `bench __loadgen PROTO ADDR CA N`: N QUIC subscribers of the broadcast
//! `bench` on a relay at ADDR (its certificate in the PEM file CA), in a process
//! of their own, so the relay's figures are the relay's alone. PROTO is `gopbus`
//! (the bus's own client, token [`TOKEN`]) or `moq` (the moq-lite client of
//! [`crate::moq`], subscribing to `video` and `audio`). Every subscriber has its
//! own connection and UDP socket.
//!
//! The protocol with the scenario that starts it: once every subscriber has
//! joined (or failed) it prints `ready FAILED`; from then on it counts what
//! arrives and, once a second, times a new subscriber (its own thread and
//! runtime, as a new viewer process) from nothing to its first frame; at a line
//! `stop` on stdin it prints `result JSON` and exits. [`InThread`] is the same
//! on a thread, for `cargo test` (no bench binary there to start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gopbus_bus::quic::{tls, BusClient};
use gopbus_bus::{BusConfig, Event, StartAt};
use tokio_util::sync::CancellationToken;

use crate::moq;

/// The bus token of the relays the bench starts.
pub const TOKEN: &str = "bench-token";
/// The broadcast's name.
pub const BROADCAST: &str = "bench";

/// Which relay protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// gopbus's QUIC bus.
    Gopbus,
    /// moq-lite (draft 02).
    Moq,
}

impl Proto {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gopbus => "gopbus",
            Self::Moq => "moq",
        }
    }
}

/// What all subscribers received while measuring.
#[derive(Default)]
struct Tally {
    measuring: AtomicBool,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// GoPs reported cut short or skipped (gopbus; moq-lite has no such report).
    told: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

impl Tally {
    fn frame(&self, len: usize, latency: Option<f64>) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if let Some(l) = latency {
            self.latencies.lock().unwrap().push(l);
        }
    }
}

/// Where to connect and how.
#[derive(Clone)]
struct Peer {
    proto: Proto,
    addr: SocketAddr,
    ca: PathBuf,
}

impl Peer {
    fn gopbus_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        Ok(tls::client_config(Some(&self.ca))?)
    }

    fn url(&self) -> String {
        format!("quic://{}", self.addr)
    }
}

/// A joined subscriber, not yet reading.
enum Joined {
    Gopbus(BusClient, gopbus_bus::quic::RemoteSubscriber),
    Moq(moq::Subscriber),
}

async fn join(peer: &Peer) -> anyhow::Result<Joined> {
    Ok(match peer.proto {
        Proto::Gopbus => {
            let config = BusConfig { window: 2, max_lag: 1 };
            let (c, sub) = BusClient::connect_and_subscribe(
                &peer.url(),
                TOKEN,
                peer.gopbus_config()?,
                BROADCAST,
                StartAt::CurrentGop,
                config,
            )
            .await?;
            Joined::Gopbus(c, sub)
        }
        Proto::Moq => Joined::Moq(moq::Subscriber::connect(peer.addr, moq::client_config(&peer.ca)?, BROADCAST).await?),
    })
}

/// The first 8 bytes of a payload split in any way.
fn stamp_of(parts: &[bytes::Bytes]) -> Option<[u8; 8]> {
    let mut stamp = [0u8; 8];
    let mut n = 0;
    for p in parts {
        let k = (8 - n).min(p.len());
        stamp[n..n + k].copy_from_slice(&p[..k]);
        n += k;
        if n == 8 {
            return Some(stamp);
        }
    }
    None
}

/// Reads a joined subscriber until `stop`, telling `seen` (video?, timed?, stamp, media length).
async fn read(joined: Joined, stop: CancellationToken, seen: Arc<dyn Fn(moq::Seen) + Send + Sync>, told: impl Fn(u64)) {
    match joined {
        Joined::Gopbus(_client, mut sub) => {
            let mut gops = 0u64;
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = sub.next() => ev,
                };
                match ev {
                    Event::Gop(_) => gops += 1,
                    Event::Frame(f) => {
                        let video = f.header.track == gopbus_proto::TrackId::VIDEO;
                        let Some(stamp) = stamp_of(f.payload.parts()) else { continue };
                        seen(moq::Seen { video, timed: video && gops > 1, stamp, len: f.payload.len() - 8 });
                    }
                    Event::CutShort { .. } => told(1),
                    Event::Skipped { from, to } => told(to - from),
                    Event::End(_) => break,
                }
            }
        }
        Joined::Moq(sub) => sub.read(stop, seen).await,
    }
}

/// Times joins once a second until `stop`: connect, subscribe, first video frame.
fn probe(peer: Peer, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<f64>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut times = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let t0 = Instant::now();
            let once = async {
                let joined = join(&peer).await?;
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let tx = Mutex::new(Some(tx));
                let first = CancellationToken::new();
                // The first video frame (the keyframe a picture starts from), not
                // the first frame of any track: gopbus's subscriber hands frames
                // over in decode order (the keyframe first), moq-lite's tracks
                // arrive independently and audio, smaller and first in priority,
                // would win.
                let seen: Arc<dyn Fn(moq::Seen) + Send + Sync> = Arc::new(move |s: moq::Seen| {
                    if !s.video {
                        return;
                    }
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                });
                let reading = read(joined, first.clone(), seen, |_| {});
                tokio::select! {
                    () = reading => bail!("the subscription ended before its first frame"),
                    r = rx => r.context("no first frame")?,
                }
                first.cancel();
                anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0)
            };
            // A join that fails or hangs counts as 30 s: what a viewer would see.
            times.push(match tokio::time::timeout(Duration::from_secs(30), once).await {
                Ok(Ok(ms)) => ms,
                Ok(Err(e)) => {
                    eprintln!("loadgen: probe join failed: {e:#}");
                    30_000.0
                }
                Err(_) => 30_000.0,
            });
        }
        Ok(times)
    })
}

/// One subscriber that joins now and reads (discarding) until `stop`: the
/// scenario's own, in its process.
pub async fn one_subscriber(
    proto: Proto,
    addr: SocketAddr,
    ca: &std::path::Path,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let joined = join(&Peer { proto, addr, ca: ca.to_path_buf() }).await?;
    Ok(tokio::spawn(read(joined, stop, Arc::new(|_| {}), |_| {})))
}

/// The `__loadgen` command.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [proto, addr, ca, n] = args else { bail!("usage: __loadgen gopbus|moq ADDR CA_PEM N") };
    let proto = match proto.as_str() {
        "gopbus" => Proto::Gopbus,
        "moq" => Proto::Moq,
        other => bail!("unknown protocol {other}"),
    };
    let peer = Peer { proto, addr: addr.parse()?, ca: PathBuf::from(ca) };
    let n: usize = n.parse()?;
    tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(run(peer, n, |failed| println!("ready {failed}"), async {
        // `stop` on stdin, or its end (the scenario went away).
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|k| k > 0) && line.trim() != "stop" {
                line.clear();
            }
        })
        .await;
    }))?;
    println!("result {result}");
    Ok(())
}

/// The load generator on a thread of this process, with its own runtime: what
/// `cargo test` runs, where there is no bench binary to start.
pub struct InThread {
    ready: std::sync::mpsc::Receiver<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<serde_json::Value>>>,
}

impl InThread {
    /// Starts N subscribers of `proto` at `addr` (certificate in `ca`).
    pub fn start(proto: Proto, addr: SocketAddr, ca: &std::path::Path, n: usize) -> Self {
        let peer = Peer { proto, addr, ca: ca.to_path_buf() };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(run(
                peer,
                n,
                move |failed| {
                    let _ = ready_tx.send(failed);
                },
                async {
                    let _ = stop_rx.await;
                },
            ))
        });
        Self { ready, stop: Some(stop), thread: Some(thread) }
    }

    /// Waits until every subscriber joined or failed; the failures.
    pub fn ready(&self) -> anyhow::Result<u64> {
        self.ready.recv().context("the load generator stopped before its subscribers joined")
    }

    /// Stops, and returns what [`main`] prints as `result`.
    pub fn stop(mut self) -> anyhow::Result<serde_json::Value> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread
            .take()
            .context("stopped twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
    }
}

/// Joins N subscribers, calls `ready` with the failures, counts until `stop`
/// completes (probing joins meanwhile) and returns the figures.
async fn run(
    peer: Peer,
    n: usize,
    ready: impl FnOnce(u64),
    stop_when: impl std::future::Future<Output = ()>,
) -> anyhow::Result<serde_json::Value> {
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (peer, gate, ready, tally, stop) =
            (peer.clone(), gate.clone(), ready_tx.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let joined = {
                let _permit = gate.acquire().await;
                join(&peer).await
            };
            let _ = ready.send(joined.is_ok()).await;
            let joined = match joined {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("loadgen: a subscriber failed to join: {e:#}");
                    return;
                }
            };
            let t = tally.clone();
            let seen: Arc<dyn Fn(moq::Seen) + Send + Sync> =
                Arc::new(move |s: moq::Seen| t.frame(s.len, s.timed.then(|| moq::since_stamp(s.stamp))));
            let told = |k: u64| {
                if tally.measuring.load(Ordering::Relaxed) {
                    tally.told.fetch_add(k, Ordering::Relaxed);
                }
            };
            read(joined, stop, seen, told).await;
        }));
    }
    drop(ready_tx);
    let mut failed = 0;
    for _ in 0..n {
        if ready_rx.recv().await != Some(true) {
            failed += 1;
        }
    }
    tally.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    ready(failed);
    let probing = Arc::new(AtomicBool::new(false));
    let prober = {
        let (peer, probing) = (peer.clone(), probing.clone());
        std::thread::spawn(move || probe(peer, probing))
    };
    stop_when.await;
    tally.measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    probing.store(true, Ordering::Relaxed);
    stop.cancel();
    let joins = tokio::task::spawn_blocking(move || prober.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the join prober panicked"))??;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "subscribers": n,
        "failed": failed,
        "seconds": secs,
        "frames": tally.frames.load(Ordering::Relaxed),
        "bytes": tally.bytes.load(Ordering::Relaxed),
        "told": tally.told.load(Ordering::Relaxed),
        "latency_p50": crate::report::quantile(&lat, 0.5),
        "latency_p99": crate::report::quantile(&lat, 0.99),
        "joins": joins,
    }))
}
