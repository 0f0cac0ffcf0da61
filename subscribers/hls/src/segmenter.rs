//! One broadcast session: bus events → fMP4 segments, the live window in
//! memory, the recording on disk.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gopbus_bus::{Event, EventSource};
use gopbus_proto::{GopHeader, Payload};

use crate::mux::{self, Layout, Sample, AAC_FRAME, VIDEO_TIMESCALE};
use crate::playlist::{Entry, Playlist};
use crate::Hls;

/// How long an ended broadcast's live playlist (with its end) stays served.
const ENDED_LINGER: Duration = Duration::from_secs(30);

/// What is served while a broadcast is live.
pub(crate) struct Live {
    pub(crate) session: String,
    state: RwLock<LiveState>,
}

#[derive(Default)]
struct LiveState {
    /// Init segments still referenced, by id.
    inits: VecDeque<(u32, Bytes)>,
    /// The window: (msn, bytes).
    segments: VecDeque<(u64, Bytes)>,
    playlist: Playlist,
    text: String,
    /// `CODECS` and `RESOLUTION` of the newest segment's configuration.
    codecs: String,
    resolution: Option<(u32, u32)>,
}

impl Live {
    /// The live playlist text; `None` before the first segment.
    pub(crate) fn playlist(&self) -> Option<String> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        (!st.playlist.entries.is_empty()).then(|| st.text.clone())
    }

    /// The multivariant playlist: the source variant, with its peak and average
    /// bit rate over the live window; `None` before the first segment.
    pub(crate) fn multivariant(&self) -> Option<String> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if st.playlist.entries.is_empty() {
            return None;
        }
        let rates: Vec<f64> = st
            .segments
            .iter()
            .zip(&st.playlist.entries)
            .map(|((_, data), e)| data.len() as f64 * 8.0 / e.duration.max(0.001))
            .collect();
        let peak = rates.iter().copied().fold(0.0, f64::max);
        let average = rates.iter().sum::<f64>() / rates.len() as f64;
        let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        s.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={}",
            peak.ceil() as u64,
            average.ceil() as u64
        ));
        if let Some((w, h)) = st.resolution {
            s.push_str(&format!(",RESOLUTION={w}x{h}"));
        }
        s.push_str(&format!(",CODECS=\"{}\"\nindex.m3u8\n", st.codecs));
        Some(s)
    }

    /// `init-N.mp4` or `seg-N.m4s` from memory.
    pub(crate) fn file(&self, file: &str) -> Option<Bytes> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = file.strip_prefix("init-").and_then(|f| f.strip_suffix(".mp4")) {
            let n: u32 = n.parse().ok()?;
            return st.inits.iter().find(|(id, _)| *id == n).map(|(_, b)| b.clone());
        }
        let n: u64 = file.strip_prefix("seg-")?.strip_suffix(".m4s")?.parse().ok()?;
        st.segments.iter().find(|(msn, _)| *msn == n).map(|(_, b)| b.clone())
    }
}

struct Frame {
    dts: i64,
    cts: i32,
    key: bool,
    payload: Payload,
}

/// The segment being gathered.
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

struct Session<'a> {
    hls: &'a Hls,
    name: &'a str,
    live: std::sync::Arc<Live>,
    dir: PathBuf,
    recording_ok: bool,
    layout: Option<Layout>,
    init_id: u32,
    pending: Pending,
    msn: u64,
    discontinuity_next: bool,
    /// A segment was cut mid-GoP: frames are dropped until the next GoP.
    waiting_keyframe: bool,
    recording: Playlist,
}

/// Segments `sub`'s broadcast until it ends; `shutdown` only cuts the linger after it.
pub(crate) async fn segment(
    hls: &Hls,
    name: &str,
    mut sub: impl EventSource,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let session = format!("{}", started.as_millis());
    let dir = hls.inner.config.recordings.join(name).join(&session);
    let recording_ok = match tokio::fs::create_dir_all(&dir).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(broadcast = %name, dir = %dir.display(), error = %e, "cannot record this broadcast; serving it live only");
            false
        }
    };
    let live = std::sync::Arc::new(Live { session: session.clone(), state: RwLock::default() });
    hls.inner.live.insert(name.to_owned(), live.clone());
    tracing::info!(broadcast = %name, session = %session, "HLS segmenting");
    let mut s = Session {
        hls,
        name,
        live: live.clone(),
        dir,
        recording_ok,
        layout: None,
        init_id: 0,
        pending: Pending::default(),
        msn: 1,
        discontinuity_next: false,
        waiting_keyframe: false,
        recording: Playlist { playlist_type: Some("EVENT"), ..Playlist::default() },
    };
    let reason = loop {
        match sub.next_event().await {
            Event::Gop(h) => s.gop(&h).await,
            Event::Frame(f) => {
                let Some(layout) = &s.layout else { continue };
                if s.waiting_keyframe {
                    continue;
                }
                let dts = f.header.dts;
                let frame = Frame { dts, cts: f.header.cts, key: f.header.is_keyframe(), payload: f.payload };
                if layout.video.as_ref().is_some_and(|(id, _)| *id == f.header.track) {
                    s.pending.video.push(frame);
                } else if layout.audio.as_ref().is_some_and(|(id, _)| *id == f.header.track) {
                    s.pending.audio.push(frame);
                }
                // A segment in progress holds its frames: bounded by the longest segment.
                let max = s.hls.inner.config.max_segment.as_millis() as i64;
                if dts - s.pending.start >= max {
                    tracing::warn!(
                        broadcast = %name, max_ms = max,
                        "no keyframe within the longest HLS segment; segment cut, frames dropped until the next keyframe"
                    );
                    s.cut(None).await;
                    s.discontinuity_next = true;
                    s.waiting_keyframe = true;
                }
            }
            Event::CutShort { .. } | Event::Skipped { .. } => {
                // A gap follows (a takeover rebases timestamps; a skip jumps ahead).
                s.cut(None).await;
                s.discontinuity_next = true;
            }
            Event::End(reason) => break reason,
        }
    };
    s.cut(None).await;
    s.recording.playlist_type = Some("VOD");
    s.recording.ended = true;
    s.write_recording_playlist().await;
    {
        let mut st = live.state.write().unwrap_or_else(|e| e.into_inner());
        st.playlist.ended = true;
        st.text = st.playlist.render();
    }
    tracing::info!(broadcast = %name, session = %live.session, segments = s.msn - 1, %reason, "HLS recording closed");
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
        if !self.pending.is_empty() && (changed || h.start_dts - self.pending.start >= target) {
            self.cut(Some(h.start_dts)).await;
        }
        if changed {
            match mux::init_segment(&layout) {
                Ok(init) => {
                    self.init_id += 1;
                    let file = format!("init-{}.mp4", self.init_id);
                    self.record(&file, &init).await;
                    let mut st = self.live.state.write().unwrap_or_else(|e| e.into_inner());
                    st.inits.push_back((self.init_id, init));
                    self.layout = Some(layout);
                }
                Err(e) => {
                    tracing::warn!(broadcast = %self.name, error = %e, "no init segment for this configuration; GoP skipped");
                    self.layout = None;
                    return;
                }
            }
        }
        if self.pending.is_empty() {
            self.pending.start = h.start_dts;
        }
    }

    /// Cuts the pending segment, ending at `end` (the next GoP's start) or after its last frame.
    async fn cut(&mut self, end: Option<i64>) {
        if self.pending.is_empty() {
            return;
        }
        let Some(layout) = self.layout.clone() else { return };
        let pending = std::mem::take(&mut self.pending);
        let last = pending.last_dts().unwrap_or(pending.start);
        let video = video_samples(&pending.video, end);
        let audio =
            layout.audio.as_ref().map(|(_, a)| audio_samples(&pending.audio, a.sample_rate)).unwrap_or_default();
        let end = end.unwrap_or_else(|| {
            let v = video.last().map_or(0, |s| i64::from(s.duration) / 90);
            last + v.max(1)
        });
        let mut runs: Vec<(u32, &[Sample])> = Vec::new();
        if layout.video.is_some() {
            runs.push((Layout::VIDEO_ID, &video));
        }
        if layout.audio.is_some() {
            runs.push((layout.audio_id(), &audio));
        }
        let data = match mux::fragment(self.msn as u32, &runs) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(broadcast = %self.name, error = %e, "segment not muxed; dropped");
                return;
            }
        };
        let msn = self.msn;
        self.msn += 1;
        let file = format!("seg-{msn}.m4s");
        let duration = (end - pending.start).max(1) as f64 / 1000.0;
        let discontinuity = std::mem::take(&mut self.discontinuity_next);
        self.record(&file, &data).await;
        self.recording.entries.push(Entry {
            msn,
            uri: file.clone(),
            map: format!("init-{}.mp4", self.init_id),
            duration,
            discontinuity,
        });
        self.write_recording_playlist().await;

        let window = self.hls.inner.config.live_segments.max(1);
        let session = &self.live.session;
        let mut st = self.live.state.write().unwrap_or_else(|e| e.into_inner());
        st.segments.push_back((msn, data));
        st.codecs = layout.codecs();
        st.resolution = layout.video.as_ref().map(|(_, v)| (v.width, v.height));
        st.playlist.entries.push(Entry {
            msn,
            uri: format!("{session}/{file}"),
            map: format!("{session}/init-{}.mp4", self.init_id),
            duration,
            discontinuity,
        });
        while st.segments.len() > window {
            st.segments.pop_front();
            // A discontinuity leaving the window is counted (RFC 8216 §4.3.3.3).
            let gone = st.playlist.entries.remove(0);
            st.playlist.discontinuity_sequence += u64::from(gone.discontinuity);
        }
        // Keep only the init segments the window still refers to.
        let oldest_map = st.playlist.entries.first().map(|e| e.map.clone()).unwrap_or_default();
        while st.inits.len() > 1 && !oldest_map.ends_with(&format!("init-{}.mp4", st.inits[0].0)) {
            st.inits.pop_front();
        }
        st.text = st.playlist.render();
    }

    /// Writes a file of the recording; a failure stops recording (live goes on) and says why once.
    async fn record(&mut self, file: &str, data: &[u8]) {
        if !self.recording_ok {
            return;
        }
        if let Err(e) = tokio::fs::write(self.dir.join(file), data).await {
            self.recording_ok = false;
            tracing::warn!(broadcast = %self.name, dir = %self.dir.display(), error = %e, "recording stopped; the live playlist goes on from memory");
        }
    }

    async fn write_recording_playlist(&mut self) {
        if !self.recording_ok {
            return;
        }
        let text = self.recording.render();
        if let Err(e) = write_atomically(&self.dir.join("index.m3u8"), text.as_bytes()).await {
            self.recording_ok = false;
            tracing::warn!(broadcast = %self.name, error = %e, "recording playlist not written; recording stopped");
        }
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a playlist.
async fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("m3u8.tmp");
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Video samples at 90 kHz; each lasts until the next, the last until `end`
/// (or as long as the one before it).
fn video_samples(frames: &[Frame], end: Option<i64>) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let next = frames.get(i + 1).map(|n| n.dts).or(end);
        let fallback = out.last().map_or(33, |s: &Sample| i64::from(s.duration) / 90);
        let duration = next.map_or(fallback, |n| n - f.dts).max(1);
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

/// AAC samples at the sample rate: 1024 samples each, from the first frame's time.
fn audio_samples(frames: &[Frame], rate: u32) -> Vec<Sample> {
    let Some(first) = frames.first() else { return Vec::new() };
    let base = (first.dts.max(0) as u64) * u64::from(rate) / 1000;
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| Sample {
            dts: base + i as u64 * u64::from(AAC_FRAME),
            duration: AAC_FRAME,
            cts: 0,
            key: true,
            payload: f.payload.clone(),
        })
        .collect()
}
