//! The benchmark scenarios. Each takes [`Params`] and returns a [`Report`].

mod bus_local;
mod bus_publish;
mod hls;
mod hls_clients;
mod ingest;
mod latency;
mod quic_fanout;
mod relay_compare;
mod rtmp_fanout;
mod transcode;
mod ttff;
mod webrtc;
mod zero_copy;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::media::StreamSpec;
use crate::report::Report;
use crate::rtmp::Client;
use crate::target::{default_gopbus, RtmpUrl, Target};

/// Scenario names, in the order `all` runs them.
pub const ALL: [&str; 15] = [
    "bus-publish",
    "bus-local",
    "zero-copy",
    "rtmp-fanout",
    "latency",
    "ttff",
    "ingest",
    "quic-fanout",
    "hls-latency",
    "hls-clients",
    "webrtc-viewers",
    "opus-transcode",
    "webrtc-g2g",
    "webrtc-av-sync",
    "transcode",
];

/// Options shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Params {
    /// Repetitions of each measurement.
    pub runs: usize,
    /// The N list (players, subscribers or publishers); `None` takes the scenario's own.
    pub sizes: Option<Vec<usize>>,
    /// Seconds each publishing measurement lasts.
    pub seconds: f64,
    /// The stream published.
    pub spec: StreamSpec,
    /// The gopbus binary; found or built when `None`.
    pub gopbus: Option<PathBuf>,
    /// Another server: (play URL, publish URL).
    pub external: Option<(String, String)>,
    /// That server's pid, for CPU and memory figures.
    pub server_pid: Option<u32>,
    /// Measure gopbus and the external server alternately in one run.
    pub compare: bool,
    /// Extra flags for the `gopbus serve` the bench starts.
    pub gopbus_flags: Vec<String>,
    /// Joins measured by `ttff`.
    pub joins: usize,
    /// Extra players loading the server during `latency`'s loaded half.
    pub load_players: usize,
    /// Where JSON reports go.
    pub out: PathBuf,
    /// A moq-relay binary (relay-compare).
    pub moq_relay: Option<PathBuf>,
    /// CPUs the server under test is pinned to (RTMP scenarios), as taskset takes them.
    pub server_cpus: Option<String>,
    /// CPUs the bench pinned itself to (set by `main`; recorded in the report).
    pub bench_cpus: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            runs: 3,
            sizes: None,
            seconds: 10.0,
            spec: StreamSpec::default(),
            gopbus: None,
            external: None,
            server_pid: None,
            compare: false,
            gopbus_flags: Vec::new(),
            joins: 30,
            load_players: 100,
            out: PathBuf::from("target/bench-results"),
            moq_relay: None,
            server_cpus: None,
            bench_cpus: None,
        }
    }
}

impl Params {
    /// The smallest sizes that still exercise every code path (for `cargo test`).
    pub fn tiny(gopbus: PathBuf, out: PathBuf) -> Self {
        Self {
            runs: 1,
            sizes: Some(vec![2]),
            seconds: 1.5,
            spec: StreamSpec { width: 320, height: 240, kbps: 300, seconds: 2, gop: 1, bframes: true },
            gopbus: Some(gopbus),
            joins: 2,
            load_players: 2,
            out,
            ..Self::default()
        }
    }

    fn sizes_or(&self, default: &[usize]) -> Vec<usize> {
        self.sizes.clone().unwrap_or_else(|| default.to_vec())
    }

    /// Starts the server under test with `streams` streams, pinned to
    /// `server_cpus` when given.
    fn target(&self, streams: usize) -> anyhow::Result<Target> {
        let target = match &self.external {
            Some((play, publish)) => Target::external(play, publish, self.server_pid, streams)?,
            None => {
                let bin = match &self.gopbus {
                    Some(b) => b.clone(),
                    None => default_gopbus()?,
                };
                Target::start_gopbus_with(&bin, streams, &self.gopbus_flags)?
            }
        };
        if let Some(cpus) = &self.server_cpus {
            let pid = target.pid.context("--server-cpus needs the server's pid (--server-pid)")?;
            crate::cpus::pin(pid, cpus)?;
        }
        Ok(target)
    }

    /// The servers a scenario measures, each with the params that select it:
    /// gopbus then the other server with `--compare`, else the one target.
    fn sides(&self) -> Vec<(String, Self)> {
        let label = |p: &Self| p.external.as_ref().map_or_else(|| "gopbus".to_owned(), |(play, _)| play.clone());
        if self.compare {
            // gopbus does what the other server does: RTMP only (no renditions, Opus or HLS).
            let rtmp_only = ["--no-transcoder", "--no-opus-encoder", "--no-hls"].map(str::to_owned).to_vec();
            let gopbus =
                Self { external: None, server_pid: None, compare: false, gopbus_flags: rtmp_only, ..self.clone() };
            let other = Self { compare: false, ..self.clone() };
            vec![(label(&gopbus), gopbus), (label(&other), other)]
        } else {
            vec![(label(self), self.clone())]
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "runs": self.runs,
            "seconds": self.seconds,
            "stream": format!("H.264 High {}x{} 30 fps {} kb/s, GoP 1 s, B-frames; AAC 48 kHz 128 kb/s", self.spec.width, self.spec.height, self.spec.kbps),
            "server": match (&self.external, self.compare) {
                (Some((p, _)), true) => {
                    format!("gopbus (started by the bench, RTMP only: --no-transcoder --no-opus-encoder --no-hls) and {p}, alternately")
                }
                (Some((p, _)), false) => p.clone(),
                (None, _) => "gopbus (started by the bench)".to_owned(),
            },
            "server cpus": self.server_cpus.as_deref().unwrap_or("any"),
            "bench cpus": self.bench_cpus.as_deref().unwrap_or("any"),
        })
    }
}

/// Runs one scenario by name and writes its report.
pub fn run(name: &str, params: &Params) -> anyhow::Result<Report> {
    let mut report = match name {
        "bus-publish" => bus_publish::run(params)?,
        "bus-local" => bus_local::run(params)?,
        "zero-copy" => zero_copy::run(params)?,
        "rtmp-fanout" => runtime()?.block_on(rtmp_fanout::run(params))?,
        "latency" => runtime()?.block_on(latency::run(params))?,
        "ttff" => runtime()?.block_on(ttff::run(params))?,
        "ingest" => runtime()?.block_on(ingest::run(params))?,
        "quic-fanout" => runtime()?.block_on(quic_fanout::run(params))?,
        "relay-compare" => runtime()?.block_on(relay_compare::run(params))?,
        "hls-latency" => runtime()?.block_on(hls::run(params))?,
        "hls-clients" => runtime()?.block_on(hls_clients::run(params))?,
        "webrtc-viewers" => runtime()?.block_on(webrtc::viewers(params))?,
        "opus-transcode" => webrtc::opus(params)?,
        "webrtc-g2g" => webrtc::g2g(params)?,
        "webrtc-av-sync" => webrtc::av_sync(params)?,
        "transcode" => transcode::run(params)?,
        other => bail!("unknown scenario {other:?}; known: {}, relay-compare", ALL.join(", ")),
    };
    report.emit(&params.out)?;
    Ok(report)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// What one player saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlayerStats {
    pub(crate) video_frames: u64,
    pub(crate) bytes: u64,
    pub(crate) last_video_ts: Option<u32>,
    pub(crate) first_video: Option<Instant>,
    pub(crate) first_keyframe: Option<Instant>,
    pub(crate) error: Option<String>,
    /// Every video frame's RTMP timestamp, arrival and whether it was a
    /// keyframe (only when [`read_until`] was asked to record).
    pub(crate) arrivals: Vec<(u32, Instant, bool)>,
}

/// Reads a playing client until the stream ends or `deadline`; with `record`,
/// notes every video frame's arrival ([`PlayerStats::arrivals`]).
pub(crate) async fn read_until(mut client: Client, deadline: Instant, record: bool) -> PlayerStats {
    let mut stats = PlayerStats::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.next_media()).await {
            Ok(Ok(Some(m))) => {
                if m.kind == crate::flv::TAG_VIDEO && m.data.get(1) == Some(&1) {
                    stats.video_frames += 1;
                    stats.last_video_ts = Some(m.timestamp);
                    stats.first_video.get_or_insert(m.at);
                    let keyframe = m.is_video_keyframe();
                    if keyframe {
                        stats.first_keyframe.get_or_insert(m.at);
                    }
                    if record {
                        stats.arrivals.push((m.timestamp, m.at, keyframe));
                    }
                }
            }
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                stats.error = Some(e.to_string());
                break;
            }
        }
    }
    stats.bytes = client.bytes_received;
    stats
}

/// Starts `n` players of `url`, at most 64 connecting at once, and waits until
/// all have been accepted (or failed). Each reads until the stream ends or
/// `deadline` ([`read_until`], which `record` is passed to).
pub(crate) async fn start_players(
    url: &RtmpUrl,
    n: usize,
    deadline: Instant,
    record: bool,
) -> Vec<tokio::task::JoinHandle<PlayerStats>> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let mut players = Vec::with_capacity(n);
    for _ in 0..n {
        let (url, gate, ready) = (url.clone(), gate.clone(), ready_tx.clone());
        players.push(tokio::spawn(async move {
            let client = {
                let _permit = gate.acquire().await;
                connect_play(&url).await
            };
            let _ = ready.send(()).await;
            match client {
                Ok(c) => read_until(c, deadline, record).await,
                Err(e) => PlayerStats { error: Some(e.to_string()), ..PlayerStats::default() },
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    players
}

/// Connect, handshake and play, within 20 s.
pub(crate) async fn connect_play(url: &RtmpUrl) -> anyhow::Result<Client> {
    let attempt = async {
        let mut c = Client::connect(url.addr, &url.app).await?;
        c.play(&url.name).await?;
        anyhow::Ok(c)
    };
    tokio::time::timeout(Duration::from_secs(20), attempt).await.map_err(|_| anyhow::anyhow!("play timed out"))?
}

/// Connect, handshake and publish, within 20 s.
pub(crate) async fn connect_publish(url: &RtmpUrl) -> anyhow::Result<Client> {
    let attempt = async {
        let mut c = Client::connect(url.addr, &url.app).await?;
        c.publish(&url.name).await?;
        anyhow::Ok(c)
    };
    tokio::time::timeout(Duration::from_secs(20), attempt).await.map_err(|_| anyhow::anyhow!("publish timed out"))?
}

/// Grace after the publisher stops for players to drain.
pub(crate) const DRAIN: Duration = Duration::from_secs(3);
