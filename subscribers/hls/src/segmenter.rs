//! One broadcast session: bus events → fMP4 parts and segments, the live
//! window in memory (with its LL-HLS edge), the recording on disk.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gopbus_bus::{Event, EventSource};
use gopbus_proto::{GopHeader, Payload};
use tokio::sync::watch;

use crate::mux::{self, AudioCodec, Layout, Sample, VIDEO_TIMESCALE};
use crate::playlist::{Entry, LowLatency, Part, Playlist};
use crate::Hls;

/// How long an ended broadcast's live playlist (with its end) stays served.
const ENDED_LINGER: Duration = Duration::from_secs(30);

/// The live edge: the segment being built and how many of its parts exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    /// Media sequence number of the segment in progress (the next to be cut).
    pub(crate) msn: u64,
    /// Its parts so far.
    pub(crate) parts: u64,
    /// The broadcast ended: nothing more will come.
    pub(crate) ended: bool,
}

/// What a blocking request waited for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// It exists (or the broadcast ended).
    Ready,
    /// Too far ahead of the live edge to wait for (400).
    TooFar,
    /// It did not come in time (503).
    TimedOut,
}

/// What is served while a broadcast is live.
pub(crate) struct Live {
    pub(crate) session: String,
    state: RwLock<LiveState>,
    edge: watch::Sender<Edge>,
    part_target: Duration,
}

/// A stream as a multivariant playlist describes it.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    /// Peak segment bit rate, bit/s.
    pub(crate) peak: u64,
    /// Average segment bit rate, bit/s.
    pub(crate) average: u64,
    /// Picture size, if it has video.
    pub(crate) resolution: Option<(u32, u32)>,
    /// RFC 6381 codec strings, comma-separated.
    pub(crate) codecs: String,
}

#[derive(Default)]
struct LiveState {
    /// Init segments still referenced, by id.
    inits: VecDeque<(u32, Bytes)>,
    /// The window, as `playlist.entries`: each segment's parts (a segment is its parts in order).
    media: VecDeque<(u64, Vec<Bytes>)>,
    playlist: Playlist,
    text: String,
    /// Bumped with every change of `text` (the playlist's ETag).
    version: u64,
    /// `CODECS` and `RESOLUTION` of the newest segment's configuration.
    codecs: String,
    resolution: Option<(u32, u32)>,
}

impl Live {
    /// The live playlist text and its ETag; `None` before the first part.
    pub(crate) fn playlist(&self) -> Option<(String, String)> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        (!st.playlist.entries.is_empty()).then(|| (st.text.clone(), format!("\"{}.{}\"", self.session, st.version)))
    }

    /// The live edge now.
    pub(crate) fn edge(&self) -> Edge {
        *self.edge.borrow()
    }

    /// What a multivariant playlist says of this stream: its peak and
    /// average bit rate over the live window, resolution and codecs; `None`
    /// before its first segment or after it ended.
    pub(crate) fn variant(&self) -> Option<Variant> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if st.playlist.ended {
            return None;
        }
        let rates: Vec<f64> = st
            .media
            .iter()
            .zip(&st.playlist.entries)
            .filter(|(_, e)| e.complete)
            .map(|((_, parts), e)| parts.iter().map(Bytes::len).sum::<usize>() as f64 * 8.0 / e.duration.max(0.001))
            .collect();
        if rates.is_empty() {
            return None;
        }
        Some(Variant {
            peak: rates.iter().copied().fold(0.0, f64::max).ceil() as u64,
            average: (rates.iter().sum::<f64>() / rates.len() as f64).ceil() as u64,
            resolution: st.resolution,
            codecs: st.codecs.clone(),
        })
    }

    /// `init-N.mp4`, `seg-N.m4s` (a cut segment, as its parts) or `part-M.P.m4s` from memory.
    pub(crate) fn file(&self, file: &str) -> Option<Vec<Bytes>> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = file.strip_prefix("init-").and_then(|f| f.strip_suffix(".mp4")) {
            let n: u32 = n.parse().ok()?;
            return st.inits.iter().find(|(id, _)| *id == n).map(|(_, b)| vec![b.clone()]);
        }
        if let Some((msn, part)) = part_name(file) {
            let (_, parts) = st.media.iter().find(|(m, _)| *m == msn)?;
            return parts.get(usize::try_from(part).ok()?).map(|b| vec![b.clone()]);
        }
        let n: u64 = file.strip_prefix("seg-")?.strip_suffix(".m4s")?.parse().ok()?;
        let i = st.media.iter().position(|(msn, _)| *msn == n)?;
        st.playlist.entries.get(i).filter(|e| e.complete).map(|_| st.media[i].1.clone())
    }

    /// Waits until the playlist holds segment `msn` (complete) or, with `part`,
    /// that part of it — a blocking playlist reload. Requests more than two
    /// segments or `advance_parts` parts ahead of the edge are refused at once.
    pub(crate) async fn wait_for(&self, msn: u64, part: Option<u64>, advance_parts: u64) -> Waited {
        let ready = |e: &Edge| e.ended || e.msn > msn || part.is_some_and(|p| e.msn == msn && e.parts > p);
        let mut rx = self.edge.subscribe();
        let now = *rx.borrow_and_update();
        if ready(&now) {
            return Waited::Ready;
        }
        let ahead = match part {
            _ if msn > now.msn + 1 => u64::MAX,
            Some(p) if msn == now.msn => p + 1 - now.parts,
            Some(p) => p + 1,
            None => 0,
        };
        if ahead > advance_parts {
            return Waited::TooFar;
        }
        let waited = tokio::time::timeout(self.block_limit(), rx.wait_for(ready)).await.is_ok();
        if waited {
            Waited::Ready
        } else {
            Waited::TimedOut
        }
    }

    /// Waits up to `limit` for the first segment to be complete.
    pub(crate) async fn wait_for_first_segment(&self, limit: Duration) -> Waited {
        let mut rx = self.edge.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|e| e.ended || e.msn > 1)).await.is_ok();
        if waited {
            Waited::Ready
        } else {
            Waited::TimedOut
        }
    }

    /// Waits (briefly) for the part the preload hint names: `Some` once it
    /// exists; `None` if it is not the next part, or the edge moved on without
    /// it (the segment was cut at a keyframe first), or it took too long.
    pub(crate) async fn wait_part(&self, file: &str) -> Option<Vec<Bytes>> {
        let (msn, part) = part_name(file)?;
        let mut rx = self.edge.subscribe();
        let now = *rx.borrow_and_update();
        let next = (now.msn == msn && now.parts == part) || (now.msn + 1 == msn && part == 0);
        if !next || now.ended {
            return None;
        }
        let moved = |e: &Edge| e.ended || e.msn > msn || (e.msn == msn && e.parts > part);
        let limit = self.part_target * 3 + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + limit.max(self.block_limit());
        // Cut at a keyframe, the edge passes (msn, 0) of the next segment first.
        while tokio::time::timeout_at(deadline, rx.wait_for(moved)).await.is_ok() {
            if let Some(b) = self.file(file) {
                return Some(b);
            }
            let e = *rx.borrow_and_update();
            if e.ended || e.msn > msn {
                return None;
            }
        }
        None
    }

    /// How long a blocking request may wait: three target durations.
    fn block_limit(&self) -> Duration {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        Duration::from_secs(3 * st.playlist.target_duration().max(1))
    }
}

/// `part-M.P.m4s` → (M, P).
fn part_name(file: &str) -> Option<(u64, u64)> {
    let (msn, part) = file.strip_prefix("part-")?.strip_suffix(".m4s")?.split_once('.')?;
    Some((msn.parse().ok()?, part.parse().ok()?))
}

struct Frame {
    dts: i64,
    cts: i32,
    key: bool,
    payload: Payload,
}

/// The part being gathered.
#[derive(Default)]
struct Pending {
    start: i64,
    video: Vec<Frame>,
    audio: Vec<Frame>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.video.is_empty() && self.audio.is_empty()
    }

    fn last_dts(&self) -> Option<i64> {
        self.video.iter().chain(&self.audio).map(|f| f.dts).max()
    }
}

/// The segment being built: its parts so far.
struct Building {
    msn: u64,
    start: i64,
    discontinuity: bool,
    program_date_time: Option<String>,
    map: u32,
    parts: Vec<(Bytes, f64)>,
}

struct Session<'a> {
    hls: &'a Hls,
    name: &'a str,
    live: std::sync::Arc<Live>,
    dir: PathBuf,
    recording_ok: bool,
    layout: Option<Layout>,
    init_id: u32,
    part: Pending,
    segment: Option<Building>,
    /// The next segment's media sequence number.
    msn: u64,
    /// `moof` sequence numbers, one per part.
    fragments: u32,
    discontinuity_next: bool,
    /// A segment was cut mid-GoP: frames are dropped until the next GoP.
    waiting_keyframe: bool,
    recording: Playlist,
    /// The next AAC frame's time in samples (frames are laid end to end while the clock agrees).
    audio_next: Option<u64>,
    /// The last frame of the part clock (video, or audio without video) and the gap before it.
    last_clock: Option<i64>,
    interval: i64,
    /// Wall-clock time of a bus timestamp, for `#EXT-X-PROGRAM-DATE-TIME`.
    wall: Option<(i64, SystemTime)>,
}

/// Segments `sub`'s broadcast until it ends; `shutdown` only cuts the linger after it.
pub(crate) async fn segment(
    hls: &Hls,
    name: &str,
    mut sub: impl EventSource,
    record: bool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let config = &hls.inner.config;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let session = format!("{}", started.as_millis());
    let dir = config.recordings.join(name).join(&session);
    let part_target = config.part_target.as_secs_f64();
    let state = LiveState {
        playlist: Playlist {
            low_latency: Some(LowLatency { part_target, part_hold_back: 3.0 * part_target }),
            ..Playlist::default()
        },
        ..LiveState::default()
    };
    let live = std::sync::Arc::new(Live {
        session: session.clone(),
        state: RwLock::new(state),
        edge: watch::Sender::new(Edge { msn: 1, parts: 0, ended: false }),
        part_target: config.part_target,
    });
    // Known as recording before its directory exists: the retention sweep
    // (`Hls::enforce_limits`) must never see the new session as a finished one.
    hls.inner.live.insert(name.to_owned(), live.clone());
    let recording_ok = record
        && match tokio::fs::create_dir_all(&dir).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(broadcast = %name, dir = %dir.display(), error = %e, "cannot record this broadcast; serving it live only");
                false
            }
        };
    tracing::info!(broadcast = %name, session = %session, record, "HLS segmenting");
    let mut s = Session {
        hls,
        name,
        live: live.clone(),
        dir,
        recording_ok,
        layout: None,
        init_id: 0,
        part: Pending::default(),
        segment: None,
        msn: 1,
        fragments: 1,
        discontinuity_next: false,
        waiting_keyframe: false,
        recording: Playlist { playlist_type: Some("EVENT"), ..Playlist::default() },
        audio_next: None,
        last_clock: None,
        interval: 33,
        wall: None,
    };
    let reason = loop {
        match sub.next_event().await {
            Event::Gop(h) => s.gop(&h).await,
            Event::Frame(f) => {
                let Some(layout) = &s.layout else { continue };
                if s.waiting_keyframe {
                    continue;
                }
                let is_video = layout.video.as_ref().is_some_and(|(id, _)| *id == f.header.track);
                let is_audio = layout.audio.as_ref().is_some_and(|(id, _)| *id == f.header.track);
                if !is_video && !is_audio {
                    continue;
                }
                let dts = f.header.dts;
                // The wall clock of the bus clock: when the first frame arrived.
                s.wall.get_or_insert_with(|| (dts, SystemTime::now()));
                // Parts follow the video clock (audio's without video): a part is cut
                // before the frame that would take it past the part target.
                if is_video || layout.video.is_none() {
                    if let Some(last) = s.last_clock.replace(dts) {
                        s.interval = (dts - last).clamp(1, 1000);
                    }
                    let clocked = if is_video { !s.part.video.is_empty() } else { !s.part.audio.is_empty() };
                    let target = s.hls.inner.config.part_target.as_millis() as i64;
                    if clocked && dts + s.interval > s.part.start + target {
                        s.cut_part(Some(dts));
                        s.publish();
                    }
                }
                let frame = Frame { dts, cts: f.header.cts, key: f.header.is_keyframe(), payload: f.payload };
                if is_video {
                    s.part.video.push(frame);
                } else {
                    s.part.audio.push(frame);
                }
                // A segment in progress holds its frames: bounded by the longest segment.
                let max = s.hls.inner.config.max_segment.as_millis() as i64;
                let start = s.segment.as_ref().map_or(s.part.start, |b| b.start);
                if dts - start >= max {
                    tracing::warn!(
                        broadcast = %name, max_ms = max,
                        "no keyframe within the longest HLS segment; segment cut, frames dropped until the next keyframe"
                    );
                    s.gap().await;
                    s.waiting_keyframe = true;
                }
            }
            Event::CutShort { .. } | Event::Skipped { .. } => {
                // A gap follows (a takeover rebases timestamps; a skip jumps ahead).
                s.gap().await;
            }
            Event::End(reason) => break reason,
        }
    };
    s.cut_part(None);
    s.close_segment().await;
    s.recording.playlist_type = Some("VOD");
    s.recording.ended = true;
    s.write_recording_playlist().await;
    {
        let mut st = live.state.write().unwrap_or_else(|e| e.into_inner());
        st.playlist.ended = true;
        st.text = st.playlist.render();
        st.version += 1;
    }
    live.edge.send_modify(|e| e.ended = true);
    tracing::info!(broadcast = %name, session = %live.session, segments = s.msn - 1, %reason, "HLS recording closed");
    if s.recording_ok {
        let (me, name, session) = (hls.clone(), name.to_owned(), live.session.clone());
        let found =
            tokio::task::spawn_blocking(move || me.recordings(Some(&name)).into_iter().find(|r| r.session == session));
        if let Ok(Some(r)) = found.await {
            let ready = gopbus_control::RecordingReady {
                playlist: r.playlist,
                duration: r.duration,
                segments: r.segments,
                bytes: r.bytes,
                name: r.name,
                session: r.session,
            };
            let _ = hls.inner.ready.send(ready);
        }
    }
    // Players see the end; then the live state goes (unless a new session replaced it).
    tokio::select! {
        _ = tokio::time::sleep(ENDED_LINGER) => {}
        _ = shutdown.cancelled() => {}
    }
    hls.inner.live.remove_if(name, |_, l| std::sync::Arc::ptr_eq(l, &live));
}

impl Session<'_> {
    async fn gop(&mut self, h: &GopHeader) {
        self.waiting_keyframe = false;
        let layout = match Layout::of(h) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(broadcast = %self.name, error = %e, "GoP not segmented");
                return;
            }
        };
        let changed = self.layout.as_ref() != Some(&layout);
        let target = self.hls.inner.config.target_duration.as_millis() as i64;
        // A keyframe starts a part (INDEPENDENT=YES) and, once the segment is long enough, a segment.
        self.cut_part(Some(h.start_dts));
        if self.segment.as_ref().is_some_and(|b| changed || h.start_dts - b.start >= target) {
            self.close_segment().await;
        }
        self.publish();
        if changed {
            match mux::init_segment(&layout) {
                Ok(init) => {
                    self.init_id += 1;
                    let file = format!("init-{}.mp4", self.init_id);
                    self.record(&file, std::slice::from_ref(&init)).await;
                    let mut st = self.live.state.write().unwrap_or_else(|e| e.into_inner());
                    st.inits.push_back((self.init_id, init));
                    st.codecs = layout.codecs();
                    st.resolution = layout.video.as_ref().map(|(_, v)| (v.width, v.height));
                    self.layout = Some(layout);
                }
                Err(e) => {
                    tracing::warn!(broadcast = %self.name, error = %e, "no init segment for this configuration; GoP skipped");
                    self.layout = None;
                    return;
                }
            }
        }
        self.part.start = h.start_dts;
    }

    /// A gap in the media: what is gathered is cut, and the next segment is a discontinuity.
    async fn gap(&mut self) {
        self.cut_part(None);
        self.close_segment().await;
        self.publish();
        self.discontinuity_next = true;
        self.audio_next = None;
        self.last_clock = None;
        self.wall = None;
    }

    /// Cuts the part being gathered, ending at `end` (the frame or GoP after
    /// it) or after its last frame, into the segment being built and the live window.
    fn cut_part(&mut self, end: Option<i64>) {
        if self.part.is_empty() {
            return;
        }
        let Some(layout) = self.layout.clone() else { return };
        let part = std::mem::take(&mut self.part);
        let last = part.last_dts().unwrap_or(part.start);
        let video = video_samples(&part.video, end, self.interval);
        let audio = match &layout.audio {
            Some((_, a)) => self.audio_samples(&part.audio, a),
            None => Vec::new(),
        };
        let end =
            end.unwrap_or_else(|| last + video.last().map_or(self.interval, |s| i64::from(s.duration) / 90).max(1));
        self.part.start = end;
        let mut runs: Vec<(u32, &[Sample])> = Vec::new();
        if layout.video.is_some() {
            runs.push((Layout::VIDEO_ID, &video));
        }
        if layout.audio.is_some() {
            runs.push((layout.audio_id(), &audio));
        }
        let data = match mux::fragment(self.fragments, &runs) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(broadcast = %self.name, error = %e, "part not muxed; dropped");
                return;
            }
        };
        self.fragments = self.fragments.wrapping_add(1);
        let duration = (end - part.start).max(1) as f64 / 1000.0;
        let independent = layout.video.is_none() || part.video.first().is_some_and(|f| f.key);
        if self.segment.is_none() {
            let wall = *self.wall.get_or_insert_with(|| (part.start, SystemTime::now()));
            // A part that starts before the anchoring frame is dated at it.
            let at = wall.1 + Duration::from_millis((part.start - wall.0).max(0) as u64);
            self.segment = Some(Building {
                msn: self.msn,
                start: part.start,
                discontinuity: std::mem::take(&mut self.discontinuity_next),
                program_date_time: Some(rfc3339(at)),
                map: self.init_id,
                parts: Vec::new(),
            });
        }
        let Some(b) = self.segment.as_mut() else { return };
        let index = b.parts.len();
        b.parts.push((data.clone(), duration));
        let session = &self.live.session;
        let mut st = self.live.state.write().unwrap_or_else(|e| e.into_inner());
        if index == 0 {
            st.playlist.entries.push(Entry {
                msn: b.msn,
                uri: format!("{session}/seg-{}.m4s", b.msn),
                map: format!("{session}/init-{}.mp4", b.map),
                duration: 0.0,
                discontinuity: b.discontinuity,
                program_date_time: b.program_date_time.clone(),
                parts: Vec::new(),
                complete: false,
            });
            st.media.push_back((b.msn, Vec::new()));
        }
        let st = &mut *st;
        if let (Some(e), Some((_, parts))) = (st.playlist.entries.last_mut(), st.media.back_mut()) {
            e.parts.push(Part { uri: format!("{session}/part-{}.{index}.m4s", b.msn), duration, independent });
            e.duration += duration;
            parts.push(data);
        }
    }

    /// Makes what was cut visible: the playlist text, the preload hint, the
    /// edge that blocked requests wait on.
    fn publish(&mut self) {
        let edge =
            Edge { msn: self.msn, parts: self.segment.as_ref().map_or(0, |b| b.parts.len() as u64), ended: false };
        if edge == self.live.edge() {
            return;
        }
        {
            let mut st = self.live.state.write().unwrap_or_else(|e| e.into_inner());
            st.playlist.preload_hint = Some(format!("{}/part-{}.{}.m4s", self.live.session, edge.msn, edge.parts));
            st.text = st.playlist.render();
            st.version += 1;
        }
        self.live.edge.send_replace(edge);
    }

    /// Cuts the segment being built: it gets its URI in the live playlist and
    /// is written to the recording.
    async fn close_segment(&mut self) {
        let Some(b) = self.segment.take() else { return };
        self.msn = b.msn + 1;
        let duration: f64 = b.parts.iter().map(|(_, d)| d).sum();
        let file = format!("seg-{}.m4s", b.msn);
        let parts: Vec<Bytes> = b.parts.into_iter().map(|(p, _)| p).collect();
        self.record(&file, &parts).await;
        self.recording.entries.push(Entry {
            msn: b.msn,
            uri: file,
            map: format!("init-{}.mp4", b.map),
            duration,
            discontinuity: b.discontinuity,
            program_date_time: b.program_date_time,
            parts: Vec::new(),
            complete: true,
        });
        self.write_recording_playlist().await;

        let window = self.hls.inner.config.live_segments.max(1);
        let mut st = self.live.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = st.playlist.entries.last_mut().filter(|e| e.msn == b.msn) {
            e.complete = true;
            e.duration = duration;
        }
        while st.media.len() > window {
            st.media.pop_front();
            // A discontinuity leaving the window is counted (RFC 8216 §4.3.3.3).
            let gone = st.playlist.entries.remove(0);
            st.playlist.discontinuity_sequence += u64::from(gone.discontinuity);
        }
        // Keep only the init segments the window still refers to.
        let oldest_map = st.playlist.entries.first().map(|e| e.map.clone()).unwrap_or_default();
        while st.inits.len() > 1 && !oldest_map.ends_with(&format!("init-{}.mp4", st.inits[0].0)) {
            st.inits.pop_front();
        }
    }

    /// Audio samples in the track's timescale (AAC: its sample rate, 1024
    /// each; Opus: 48 kHz, as long as each packet says), laid end to end
    /// while that agrees with the bus clock (within two frames); re-anchored
    /// where not.
    fn audio_samples(&mut self, frames: &[Frame], codec: &AudioCodec) -> Vec<Sample> {
        let rate = u64::from(codec.timescale());
        let mut out = Vec::with_capacity(frames.len());
        for f in frames {
            let duration = codec.frame_duration(&f.payload);
            let clock = (f.dts.max(0) as u64) * rate / 1000;
            let at = match self.audio_next {
                Some(next) if next.abs_diff(clock) <= 2 * u64::from(duration) => next,
                _ => clock,
            };
            self.audio_next = Some(at + u64::from(duration));
            out.push(Sample { dts: at, duration, cts: 0, key: true, payload: f.payload.clone() });
        }
        out
    }

    /// Writes a file of the recording; a failure stops recording (live goes on) and says why once.
    async fn record(&mut self, file: &str, data: &[Bytes]) {
        if !self.recording_ok {
            return;
        }
        if let Err(e) = write_all(&self.dir.join(file), data).await {
            self.recording_ok = false;
            tracing::warn!(broadcast = %self.name, dir = %self.dir.display(), error = %e, "recording stopped; the live playlist goes on from memory");
        }
    }

    async fn write_recording_playlist(&mut self) {
        if !self.recording_ok {
            return;
        }
        let text = self.recording.render();
        match write_atomically(&self.dir.join("index.m3u8"), text.as_bytes()).await {
            Ok(()) => self.hls.recorded(&self.dir),
            Err(e) => {
                self.recording_ok = false;
                tracing::warn!(broadcast = %self.name, error = %e, "recording playlist not written; recording stopped");
            }
        }
    }
}

async fn write_all(path: &Path, data: &[Bytes]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path).await?;
    for d in data {
        f.write_all(d).await?;
    }
    f.flush().await
}

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Writes through a temporary file and a rename, so a reader never sees half a playlist.
async fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("m3u8.tmp");
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Video samples at 90 kHz; each lasts until the next, the last until `end`
/// (or `interval` ms, the gap between frames seen last).
fn video_samples(frames: &[Frame], end: Option<i64>, interval: i64) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let next = frames.get(i + 1).map(|n| n.dts).or(end);
        let duration = next.map_or(interval, |n| n - f.dts).max(1);
        out.push(Sample {
            dts: (f.dts.max(0) as u64) * u64::from(VIDEO_TIMESCALE / 1000),
            duration: (duration * i64::from(VIDEO_TIMESCALE / 1000)) as u32,
            cts: f.cts * (VIDEO_TIMESCALE / 1000) as i32,
            key: f.key,
            payload: f.payload.clone(),
        });
    }
    out
}
