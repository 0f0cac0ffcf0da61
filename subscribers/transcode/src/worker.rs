//! The worker: which renditions to make, which of them this worker takes, and
//! the jobs' lives.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use gopbus_bus::lease::Leases;
use gopbus_bus::node::{Backoff, Remote};
use gopbus_bus::quic::{BusClient, QuicError};
use gopbus_bus::{Announcement, Bus, BusConfig, BusError, Catalog, StartAt, SubscribeOptions};
use gopbus_proto::avc::{reorders, Reorder};
use gopbus_proto::catalog::derived_name;
use gopbus_proto::{Codec, TrackInfo, VideoConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{output_size, EncoderSettings};
use crate::job::{self, JobEnd, JobStats};
use crate::ladder::{Ladder, Rung};

/// What a worker makes and how much it takes on.
#[derive(Debug, Clone)]
pub struct TranscodeConfig {
    /// The ladder for every broadcast.
    pub ladder: Ladder,
    /// Ladders for particular broadcasts, in place of [`ladder`](Self::ladder).
    pub per_stream: HashMap<String, Ladder>,
    /// The rendition made for browsers when a broadcast's ladder is empty and
    /// its source may have B-frames (WebRTC cannot play B-frames); `None`
    /// makes none.
    pub browser: Option<Rung>,
    /// x264 settings.
    pub encoder: EncoderSettings,
    /// Work this worker takes on, in megapixels per second (decoded and
    /// encoded; see [`job_cost`]).
    pub capacity_mpxs: f64,
    /// A job lease's time to live; renewed every third of it.
    pub lease_ttl: Duration,
    /// How long a job given back for falling behind is left to other workers.
    pub behind_cooldown: Duration,
}

/// Work per core a worker takes on, in [`job_cost`] units. The `transcode`
/// benchmark measured 100–120 units per core at the default preset on the
/// reference machine (2-core AMD EPYC VM: a 480p job of a 720p30 source, 20.6
/// units, took 20 % of a core); 60 leaves the rest of the core to everything
/// else a node does and to slower sources.
pub const MPXS_PER_CORE: f64 = 60.0;

impl TranscodeConfig {
    /// No ladder, the browser rendition `720p@2500k`, capacity for the cores of
    /// this machine.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            ladder: Ladder::default(),
            per_stream: HashMap::new(),
            browser: Some(Rung { height: 720, bitrate_kbps: 2500, fps: None }),
            encoder: EncoderSettings::default(),
            capacity_mpxs: MPXS_PER_CORE * cores as f64,
            lease_ttl: Duration::from_secs(3),
            behind_cooldown: Duration::from_secs(60),
        }
    }

    /// The renditions `catalog`'s broadcast gets; `reorder` says whether its
    /// video has B-frames (the browser rendition is made only when it does).
    pub fn plan(&self, catalog: &Catalog, reorder: Reorder) -> Vec<Rung> {
        let Some(video) = source_video(catalog) else { return Vec::new() };
        if self.wants_browser_rendition(catalog) {
            return match (self.browser, reorder) {
                (Some(b), Reorder::Yes) => vec![capped(b, video.height)],
                _ => Vec::new(),
            };
        }
        let ladder = self.per_stream.get(&catalog.name).unwrap_or(&self.ladder);
        ladder.0.iter().filter(|r| r.height <= video.height).copied().collect()
    }

    /// Whether the browser rendition is the plan for `catalog` (its ladder
    /// leaves nothing to make), so whether B-frames matter.
    fn wants_browser_rendition(&self, catalog: &Catalog) -> bool {
        let Some(video) = source_video(catalog) else { return false };
        let ladder = self.per_stream.get(&catalog.name).unwrap_or(&self.ladder);
        self.browser.is_some() && !ladder.0.iter().any(|r| r.height <= video.height)
    }
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `rung` for a source `height` high: not taller than the source, and its bit
/// rate scaled with the picture area when it is capped (the 720p@2500k
/// browser rendition of a 360p source is 360p@625k, not four times the bits
/// per pixel).
fn capped(rung: Rung, height: u32) -> Rung {
    if height >= rung.height || rung.height == 0 {
        return rung;
    }
    let area = (f64::from(height) / f64::from(rung.height)).powi(2);
    let bitrate_kbps = ((f64::from(rung.bitrate_kbps) * area).round() as u32).max(100);
    Rung { height, bitrate_kbps, ..rung }
}

fn source_video(catalog: &Catalog) -> Option<&VideoConfig> {
    match &catalog.track(TrackInfo::VIDEO)?.codec {
        Codec::H264(v) => Some(v),
        _ => None,
    }
}

/// What a rendition of a `width`×`height` source at `fps` costs, in
/// megapixels per second: the source pixels decoded (weighted 0.3: decoding
/// costs about a third of encoding per pixel) plus the output pixels encoded.
pub fn job_cost(video: &VideoConfig, rung: &Rung, fps: f64) -> f64 {
    let (w, h) = output_size(video.width, video.height, rung);
    let out_fps = rung.fps.map_or(fps, |f| fps.min(f64::from(f)));
    (f64::from(video.width * video.height) * fps * 0.3 + f64::from(w * h) * out_fps) / 1e6
}

/// A job this worker runs.
struct Running {
    broadcast: String,
    rung: Rung,
    cost: f64,
    since: Instant,
    stats: Arc<JobStats>,
}

#[derive(Clone)]
enum Feed {
    Local(Bus),
    Remote(Arc<BusClient>),
}

/// Whether the first video frames `source` gives are reordered (B-frames),
/// from their timestamps; `Unknown` if it ends first.
async fn first_frames_reorder(mut source: impl gopbus_bus::EventSource) -> Reorder {
    let mut detector = gopbus_proto::avc::ReorderDetector::default();
    loop {
        match source.next_event().await {
            gopbus_bus::Event::Frame(f) if f.header.track == gopbus_proto::TrackId::VIDEO => {
                match detector.push(f.header.pts(), f.header.is_keyframe()) {
                    Reorder::Unknown => {}
                    decided => return decided,
                }
            }
            gopbus_bus::Event::End(_) => return Reorder::Unknown,
            _ => {}
        }
    }
}

struct Inner {
    config: TranscodeConfig,
    id: String,
    leases: Arc<dyn Leases>,
    jobs: DashMap<String, Running>,
    /// Frames published by jobs that have ended (for a monotonic total).
    ended_frames: std::sync::atomic::AtomicU64,
    /// Jobs given back for falling behind, not taken again before the instant.
    cooldown: Mutex<HashMap<String, Instant>>,
    /// Broadcasts whose SPS does not say whether they have B-frames: what
    /// their timestamps said (`Unknown` while a probe looks).
    verdicts: DashMap<String, Reorder>,
    /// No job is taken before this instant: one per look, so that other
    /// workers get their turn (announcements make looks more often).
    next_claim: Mutex<Instant>,
    /// Jobs turned down for want of capacity (logged once each).
    refused: Mutex<HashMap<String, Instant>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A transcoder worker. Cheap to clone.
#[derive(Clone)]
pub struct Transcoder {
    inner: Arc<Inner>,
}

impl Transcoder {
    /// A worker named `id` (unique in the cluster) taking leases from `leases`.
    pub fn new(config: TranscodeConfig, id: &str, leases: Arc<dyn Leases>) -> Self {
        codec_check();
        Self {
            inner: Arc::new(Inner {
                config,
                id: id.to_owned(),
                leases,
                jobs: DashMap::new(),
                ended_frames: 0.into(),
                cooldown: Mutex::new(HashMap::new()),
                refused: Mutex::new(HashMap::new()),
                next_claim: Mutex::new(Instant::now()),
                verdicts: DashMap::new(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The work it takes on at most, megapixels per second.
    pub fn capacity(&self) -> f64 {
        self.inner.config.capacity_mpxs
    }

    /// `GET /transcode`: [`status`](Self::status).
    pub fn router(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route("/transcode", axum::routing::get(move || async move { axum::Json(me.status()) }))
    }

    /// Rendition frames this worker has published since it started.
    pub fn frames_out(&self) -> u64 {
        let live: u64 = self.inner.jobs.iter().map(|j| j.stats.frames_out.load(Ordering::Relaxed)).sum();
        self.inner.ended_frames.load(Ordering::Relaxed) + live
    }

    /// Jobs running now.
    pub fn jobs(&self) -> usize {
        self.inner.jobs.len()
    }

    /// The work taken on now, megapixels per second.
    pub fn load(&self) -> f64 {
        self.inner.jobs.iter().map(|j| j.cost).sum()
    }

    /// The jobs running here and their counters, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let mut jobs: Vec<serde_json::Value> = self
            .inner
            .jobs
            .iter()
            .map(|j| {
                let s = &j.stats;
                serde_json::json!({
                    "track": j.key(),
                    "broadcast": j.broadcast,
                    "rendition": j.rung.to_string(),
                    "cost_mpxs": (j.cost * 10.0).round() / 10.0,
                    "since_s": j.since.elapsed().as_secs(),
                    "gops_in": s.gops_in.load(Ordering::Relaxed),
                    "gops_out": s.gops_out.load(Ordering::Relaxed),
                    "gops_dropped": s.gops_dropped.load(Ordering::Relaxed),
                    "frames_out": s.frames_out.load(Ordering::Relaxed),
                    "decode_errors": s.decode_errors.load(Ordering::Relaxed),
                    "realtime_load": s.load_milli.load(Ordering::Relaxed) as f64 / 1000.0,
                })
            })
            .collect();
        jobs.sort_by(|a, b| a["track"].as_str().cmp(&b["track"].as_str()));
        serde_json::json!({
            "worker": self.inner.id,
            "capacity_mpxs": self.inner.config.capacity_mpxs,
            "load_mpxs": (self.load() * 10.0).round() / 10.0,
            "jobs": jobs,
        })
    }

    /// Transcodes the broadcasts of `bus` (in process) until `shutdown`.
    pub async fn run(self, bus: Bus, shutdown: CancellationToken) {
        let feed = Feed::Local(bus.clone());
        let mut announcements = bus.announcements();
        loop {
            let catalogs = bus.catalogs();
            self.reconcile(&feed, &catalogs).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = announcements.next() => {}
                _ = tokio::time::sleep(self.tick()) => {}
            }
        }
        self.stop().await;
    }

    /// Transcodes the broadcasts of the bus node `remote` (`gopbus transcode`)
    /// until `shutdown`, reconnecting with backoff when the connection is lost.
    pub async fn run_remote(self, remote: Remote, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        'connect: loop {
            let Some((client, mut watch)) = remote.watch(&mut backoff, &shutdown).await else { break };
            tracing::info!(bus = %remote.url, worker = %self.inner.id, "transcoder watching the bus");
            let feed = Feed::Remote(Arc::new(client));
            let mut live: HashMap<String, Catalog> = HashMap::new();
            loop {
                let catalogs: Vec<Catalog> = live.values().cloned().collect();
                self.reconcile(&feed, &catalogs).await;
                let a = tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    a = watch.next() => a,
                    _ = tokio::time::sleep(self.tick()) => continue,
                };
                match a {
                    None => {
                        tracing::warn!(bus = %remote.url, "bus watch lost; watching again");
                        continue 'connect;
                    }
                    Some(Announcement::Live(list)) => live = list.into_iter().map(|c| (c.name.clone(), c)).collect(),
                    Some(Announcement::Started(c) | Announcement::Changed(c)) => {
                        live.insert(c.name.clone(), c);
                    }
                    Some(Announcement::Ended(e)) => {
                        live.remove(&e.name);
                    }
                }
            }
        }
        self.stop().await;
    }

    async fn stop(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Between two looks at what is live: 400–600 ms, longer the more loaded
    /// the worker is, so that the workers with the most room left take jobs first.
    fn tick(&self) -> Duration {
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let jitter = u64::from(u16::from_le_bytes(b)) % 200;
        let load = (self.load() / self.inner.config.capacity_mpxs.max(0.001)).min(1.0);
        Duration::from_millis(400 + jitter + (load * 400.0) as u64)
    }

    /// Announces this worker, then takes at most one job that is wanted, free
    /// and within capacity.
    async fn reconcile(&self, feed: &Feed, catalogs: &[Catalog]) {
        let inner = &self.inner;
        let info = serde_json::json!({
            "worker": inner.id,
            "capacity_mpxs": inner.config.capacity_mpxs,
            "load_mpxs": self.load(),
            "jobs": inner.jobs.iter().map(|j| j.key().clone()).collect::<Vec<_>>(),
        })
        .to_string();
        if let Err(e) = inner.leases.announce(&inner.id, &info, inner.config.lease_ttl).await {
            tracing::warn!(error = %e, "could not announce the transcoder worker");
        }
        let now = Instant::now();
        inner.cooldown.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, until| *until > now);
        let may_claim = *inner.next_claim.lock().unwrap_or_else(|e| e.into_inner()) <= now;
        inner.verdicts.retain(|name, _| catalogs.iter().any(|c| &c.name == name));
        for catalog in catalogs {
            let Some(video) = source_video(catalog) else { continue };
            let reorder = match reorders(&video.avcc) {
                Reorder::Unknown if inner.config.wants_browser_rendition(catalog) => self.probe(feed, &catalog.name),
                r => r,
            };
            for rung in inner.config.plan(catalog, reorder) {
                let track = rung.track();
                let job = derived_name(&catalog.name, &track);
                if !may_claim
                    || inner.jobs.contains_key(&job)
                    || catalog.track(&track).is_some()
                    || inner.cooldown.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&job)
                {
                    continue;
                }
                let cost = job_cost(video, &rung, 30.0);
                if self.load() + cost > inner.config.capacity_mpxs {
                    let mut refused = inner.refused.lock().unwrap_or_else(|e| e.into_inner());
                    refused.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
                    if refused.insert(job.clone(), now).is_none() {
                        tracing::info!(
                            job,
                            cost_mpxs = cost,
                            load_mpxs = self.load(),
                            capacity_mpxs = inner.config.capacity_mpxs,
                            "no capacity left for this rendition; leaving it to other workers"
                        );
                    }
                    continue;
                }
                match inner.leases.acquire(&job, &inner.id, inner.config.lease_ttl).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(job, error = %e, "could not take a lease");
                        return;
                    }
                }
                self.start(feed, &catalog.name, rung, job, cost);
                // One job per look: the other workers get their turn.
                *inner.next_claim.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + self.tick();
                return;
            }
        }
    }

    /// What `broadcast`'s timestamps say about B-frames; starts a probe that
    /// reads its first video frames (no decoding) the first time it is asked.
    fn probe(&self, feed: &Feed, broadcast: &str) -> Reorder {
        if let Some(v) = self.inner.verdicts.get(broadcast) {
            return *v;
        }
        self.inner.verdicts.insert(broadcast.to_owned(), Reorder::Unknown);
        let (me, feed, name) = (self.clone(), feed.clone(), broadcast.to_owned());
        self.inner.tasks.spawn(async move {
            const LOOK: Duration = Duration::from_secs(15);
            let look = async {
                match &feed {
                    Feed::Local(bus) => first_frames_reorder(bus.subscribe(&name, SubscribeOptions::default())).await,
                    Feed::Remote(c) => match c.subscribe(&name, StartAt::CurrentGop, BusConfig::default()).await {
                        Ok(s) => first_frames_reorder(s).await,
                        Err(_) => Reorder::Unknown,
                    },
                }
            };
            let verdict = tokio::select! {
                _ = me.inner.shutdown.cancelled() => return,
                v = tokio::time::timeout(LOOK, look) => v.unwrap_or(Reorder::Unknown),
            };
            tracing::info!(broadcast = %name, b_frames = ?verdict, "the SPS does not say whether the video has B-frames; its timestamps do");
            if me.inner.verdicts.contains_key(&name) {
                me.inner.verdicts.insert(name, if verdict == Reorder::Unknown { Reorder::No } else { verdict });
            }
        });
        Reorder::Unknown
    }

    fn start(&self, feed: &Feed, broadcast: &str, rung: Rung, job: String, cost: f64) {
        let inner = &self.inner;
        let stop = inner.shutdown.child_token();
        let stats = Arc::new(JobStats::default());
        inner.jobs.insert(
            job.clone(),
            Running { broadcast: broadcast.to_owned(), rung, cost, since: Instant::now(), stats: stats.clone() },
        );
        tracing::info!(job, rendition = %rung, cost_mpxs = cost, worker = %inner.id, "rendition taken");
        let me = self.clone();
        let feed = feed.clone();
        let broadcast = broadcast.to_owned();
        inner.tasks.spawn(async move {
            let renew = me.keep_lease(&job, stop.clone());
            let work = me.work(&feed, &broadcast, rung, stats, stop.clone());
            tokio::pin!(renew);
            let end = tokio::select! {
                end = work => end,
                _ = &mut renew => {
                    stop.cancel();
                    Ok(JobEnd::Stopped)
                }
            };
            stop.cancel();
            if let Some((_, ended)) = me.inner.jobs.remove(&job) {
                me.inner.ended_frames.fetch_add(ended.stats.frames_out.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let _ = me.inner.leases.release(&job, &me.inner.id).await;
            match end {
                Ok(JobEnd::Failed) => {
                    let until = Instant::now() + me.inner.config.behind_cooldown;
                    me.inner.cooldown.lock().unwrap_or_else(|e| e.into_inner()).insert(job.clone(), until);
                    tracing::warn!(job, cooldown = ?me.inner.config.behind_cooldown, "rendition failed here; not retried for a while");
                }
                Ok(JobEnd::Behind) => {
                    let until = Instant::now() + me.inner.config.behind_cooldown;
                    me.inner.cooldown.lock().unwrap_or_else(|e| e.into_inner()).insert(job.clone(), until);
                    tracing::warn!(
                        job,
                        cooldown = ?me.inner.config.behind_cooldown,
                        "rendition given back: this worker stayed behind real time"
                    );
                }
                Ok(end) => tracing::info!(job, ?end, "rendition released"),
                Err(e) => {
                    let until = Instant::now() + Duration::from_secs(5);
                    me.inner.cooldown.lock().unwrap_or_else(|e| e.into_inner()).insert(job.clone(), until);
                    tracing::info!(job, error = %e, "rendition not made here");
                }
            }
        });
    }

    /// Renews `job`'s lease until `stop`; returns when the lease is lost.
    async fn keep_lease(&self, job: &str, stop: CancellationToken) {
        let inner = &self.inner;
        let every = inner.config.lease_ttl / 3;
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => std::future::pending::<()>().await,
                _ = tokio::time::sleep(every) => {}
            }
            match inner.leases.renew(job, &inner.id, inner.config.lease_ttl).await {
                Ok(true) => failures = 0,
                Ok(false) => {
                    tracing::warn!(job, "lease lost (it ran out and another worker may hold it); stopping");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(job, error = %e, failures, "could not renew the lease");
                    if failures >= 2 {
                        return;
                    }
                }
            }
        }
    }

    async fn work(
        &self,
        feed: &Feed,
        broadcast: &str,
        rung: Rung,
        stats: Arc<JobStats>,
        stop: CancellationToken,
    ) -> Result<JobEnd, String> {
        let track = rung.track();
        let settings = self.inner.config.encoder.clone();
        match feed {
            Feed::Local(bus) => {
                let publisher = bus.add_track(broadcast, &track).map_err(|e| match e {
                    BusError::TrackTaken(_) => "made by another worker".to_owned(),
                    e => e.to_string(),
                })?;
                let source = bus.subscribe(broadcast, SubscribeOptions::default());
                Ok(job::run(source, publisher, rung, settings, stats, stop).await)
            }
            Feed::Remote(client) => {
                let name = derived_name(broadcast, &track);
                let out = Bus::new(BusConfig::default());
                let outgoing = out.subscribe(&name, SubscribeOptions::default());
                let publisher = out.publish(&name);
                let _publication = client.add_track(broadcast, &track, outgoing).await.map_err(|e| match e {
                    QuicError::Taken(_) => "made by another worker".to_owned(),
                    e => e.to_string(),
                })?;
                let source = client
                    .subscribe(broadcast, StartAt::CurrentGop, BusConfig::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let end = job::run(source, publisher, rung, settings, stats, stop).await;
                // Let the publication carry the rendition's end upstream.
                let mut publication = _publication;
                let _ = tokio::time::timeout(Duration::from_secs(2), publication.finished()).await;
                Ok(end)
            }
        }
    }
}

/// Fails early and loudly when libavcodec has no x264.
fn codec_check() {
    crate::codec::init();
    if ffmpeg_next::encoder::find_by_name("libx264").is_none() {
        tracing::error!("libavcodec has no libx264 encoder: renditions will fail (install Debian's libavcodec59)");
    }
}

#[cfg(test)]
mod tests {
    use gopbus_bus::{Bus, BusConfig, SubscribeOptions};
    use gopbus_proto::{Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig};

    use super::{first_frames_reorder, Reorder, TranscodeConfig};
    use crate::Rung;

    #[test]
    fn the_browser_rendition_of_a_smaller_source_is_capped_in_height_and_bit_rate() {
        let catalog = |height| gopbus_bus::Catalog {
            name: "cam".into(),
            tracks: vec![TrackInfo::video(VideoConfig {
                avcc: vec![1, 100, 0, 31],
                width: height * 16 / 9,
                height,
                profile: 100,
                level: 31,
            })],
        };
        let config = TranscodeConfig::new();
        let plan = |height| config.plan(&catalog(height), Reorder::Yes);
        assert_eq!(plan(1080), [Rung { height: 720, bitrate_kbps: 2500, fps: None }]);
        assert_eq!(plan(720), [Rung { height: 720, bitrate_kbps: 2500, fps: None }]);
        assert_eq!(plan(360), [Rung { height: 360, bitrate_kbps: 625, fps: None }]);
        assert!(config.plan(&catalog(360), Reorder::No).is_empty());
    }

    /// A broadcast of 40 video frames whose presentation offsets follow `cts(i)`.
    async fn verdict(cts: impl Fn(i64) -> i32) -> Reorder {
        let bus = Bus::new(BusConfig::default());
        let sub = bus.subscribe("cam", SubscribeOptions::default());
        let mut p = bus.publish("cam");
        let video = VideoConfig { avcc: vec![1, 100, 0, 31], width: 640, height: 360, profile: 100, level: 31 };
        p.open_gop(GopHeader { seq: 0, start_dts: 0, tracks: vec![TrackInfo::video(video)], metadata: None }).unwrap();
        for i in 0..40 {
            let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
            let header = FrameHeader { track: TrackId::VIDEO, dts: i * 33, cts: cts(i), flags, len: 1 };
            p.push(Frame { header, payload: Payload::from_bytes(bytes::Bytes::from_static(b"x")) }).unwrap();
        }
        first_frames_reorder(sub).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_that_does_not_decode_is_given_up_and_not_taken_again_at_once() {
        let bus = Bus::new(BusConfig::default());
        let mut config = TranscodeConfig::new();
        config.ladder = "240p@100k".parse().unwrap();
        let leases = std::sync::Arc::new(gopbus_bus::lease::LocalLeases::default());
        let t = super::Transcoder::new(config, "t", leases);
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(t.clone().run(bus.clone(), stop.clone()));
        let mut p = bus.publish("junk");
        let video =
            VideoConfig { avcc: vec![1, 100, 0, 31, 0xff, 0xe0, 0], width: 640, height: 360, profile: 100, level: 31 };
        // Ten GoPs of bytes that are not H.264, a GoP every 300 ms; the job list sampled meanwhile.
        let (mut appeared, mut present) = (0, false);
        for g in 0..10i64 {
            let header =
                GopHeader { seq: 0, start_dts: g * 300, tracks: vec![TrackInfo::video(video.clone())], metadata: None };
            p.open_gop(header).unwrap();
            for i in 0..9i64 {
                let flags = if i == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
                let header = FrameHeader { track: TrackId::VIDEO, dts: g * 300 + i * 33, cts: 0, flags, len: 64 };
                p.push(Frame { header, payload: Payload::from_bytes(bytes::Bytes::from(vec![0x5a; 64])) }).unwrap();
            }
            for _ in 0..6 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let now = !t.status()["jobs"].as_array().unwrap().is_empty();
                appeared += usize::from(now && !present);
                present = now;
            }
        }
        assert!(!present, "the job is still running on a source that does not decode");
        assert_eq!(appeared, 1, "the failed job was taken again during its cooldown");
        stop.cancel();
    }

    #[tokio::test]
    async fn the_probe_tells_b_frames_from_timestamps() {
        // I P B B: the P is shown after the two Bs decoded after it.
        assert_eq!(verdict(|i| if i % 3 == 1 { 99 } else { 0 }).await, Reorder::Yes);
        assert_eq!(verdict(|_| 66).await, Reorder::No);
    }
}
