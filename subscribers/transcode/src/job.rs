//! One rendition job: the source's events read on the runtime, the codec work
//! on a thread of its own, the rendition pushed to its publisher from there.
//!
//! The reader never waits for the codec: frames go to the codec thread through
//! a short queue, and when it is full the reader drops the rest of that GoP
//! and every following GoP until the queue has room at a GoP boundary. A
//! worker slower than real time therefore loses whole rendition GoPs (logged,
//! counted) while the source and every other subscriber carry on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gopbus_bus::{Event, EventSource, Publisher};
use gopbus_proto::{
    Codec, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId, TrackInfo, VideoConfig,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codec::{EncoderSettings, Output, Pipeline};
use crate::ladder::Rung;

/// Frames queued for the codec thread (about a second of 30 fps video).
const QUEUE: usize = 32;

/// A job gives its rendition back after this many dropped GoPs in
/// [`BEHIND_WINDOW`].
pub const BEHIND_LIMIT: u64 = 3;
/// See [`BEHIND_LIMIT`].
pub const BEHIND_WINDOW: Duration = Duration::from_secs(60);

/// Live counters of a job, read by the status endpoint and the worker.
#[derive(Debug, Default)]
pub struct JobStats {
    /// Source GoPs seen.
    pub gops_in: AtomicU64,
    /// Rendition GoPs published.
    pub gops_out: AtomicU64,
    /// Source GoPs dropped because the codec was behind.
    pub gops_dropped: AtomicU64,
    /// Rendition frames published.
    pub frames_out: AtomicU64,
    /// Source frames that did not decode.
    pub decode_errors: AtomicU64,
    /// Codec time per media time over the last GoP, in thousandths (1000 =
    /// exactly real time on one core).
    pub load_milli: AtomicU64,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// The source ended (the rendition ended with the same reason).
    SourceEnded(EndReason),
    /// Stopped from outside (lease lost, shutdown).
    Stopped,
    /// The rendition's publisher was replaced or the bus refused it.
    PublisherGone,
    /// Dropped [`BEHIND_LIMIT`] GoPs within [`BEHIND_WINDOW`]: given back.
    Behind,
    /// The codec could not be set up.
    Failed,
}

enum Input {
    Gop { config: VideoConfig, start_dts: i64 },
    Frame { dts: i64, pts: i64, key: bool, data: Payload },
    Reset,
}

/// Runs `rung` of the broadcast `source` reads, publishing it with
/// `publisher`, until the source ends, `stop` fires, or the job falls behind.
pub async fn run(
    mut source: impl EventSource,
    publisher: Publisher,
    rung: Rung,
    settings: EncoderSettings,
    stats: Arc<JobStats>,
    stop: CancellationToken,
) -> JobEnd {
    let track = publisher.name().to_owned();
    let (tx, rx) = mpsc::channel::<Input>(QUEUE);
    let replaced = publisher.replaced_owned();
    let codec_stats = stats.clone();
    let codec_track = track.clone();
    let codec = std::thread::Builder::new()
        .name(format!("transcode {}", rung.label()))
        .spawn(move || codec_thread(rx, publisher, rung, settings, &codec_stats, &codec_track))
        .expect("spawning the codec thread");
    let mut dropping = false;
    let mut drops: Vec<Instant> = Vec::new();
    let mut in_gop = false;
    // The GoP being read (none yet), and whether it is the job's first.
    let mut seq = u64::MAX;
    let mut catching_up = true;
    let end = {
        tokio::pin!(replaced);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break JobEnd::Stopped,
                _ = &mut replaced => break JobEnd::PublisherGone,
                e = source.next_event() => e,
            };
            match event {
                Event::Gop(h) => {
                    catching_up = seq == u64::MAX;
                    seq = h.seq;
                    stats.gops_in.fetch_add(1, Ordering::Relaxed);
                    let Some(config) = h.video().cloned() else {
                        in_gop = false;
                        continue;
                    };
                    if dropping && tx.capacity() < QUEUE / 2 {
                        note_drop(&stats, &mut drops, &track, h.seq);
                        continue;
                    }
                    if dropping {
                        dropping = false;
                        if tx.send(Input::Reset).await.is_err() {
                            break JobEnd::Failed;
                        }
                    }
                    match tx.try_send(Input::Gop { config, start_dts: h.start_dts }) {
                        Ok(()) => in_gop = true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            dropping = true;
                            note_drop(&stats, &mut drops, &track, seq);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break JobEnd::Failed,
                    }
                }
                Event::Frame(f) if f.header.track == TrackId::VIDEO && in_gop && !dropping => {
                    let input = Input::Frame {
                        dts: f.header.dts,
                        pts: f.header.pts(),
                        key: f.header.is_keyframe(),
                        data: f.payload,
                    };
                    if catching_up {
                        // The job's first GoP is already partly in the past: it is
                        // worked off at the codec's pace, not dropped.
                        if tx.send(input).await.is_err() {
                            break JobEnd::Failed;
                        }
                        continue;
                    }
                    match tx.try_send(input) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            dropping = true;
                            note_drop(&stats, &mut drops, &track, seq);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break JobEnd::Failed,
                    }
                }
                Event::Frame(_) => {}
                Event::CutShort { .. } | Event::Skipped { .. } => {
                    in_gop = false;
                    // A reset goes before the next GoP; when the queue is full, the
                    // dropping state sends it there.
                    if !dropping {
                        match tx.try_send(Input::Reset) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => dropping = true,
                            Err(mpsc::error::TrySendError::Closed(_)) => break JobEnd::Failed,
                        }
                    }
                }
                Event::End(reason) => break JobEnd::SourceEnded(reason),
            }
            if drops.len() as u64 >= BEHIND_LIMIT {
                break JobEnd::Behind;
            }
        }
    };
    drop(tx);
    let reason = match &end {
        JobEnd::SourceEnded(r) => r.clone(),
        _ => EndReason::Shutdown,
    };
    match tokio::task::spawn_blocking(move || codec.join()).await {
        // The codec stopped on its own without failing: its rendition's publisher
        // went away (replaced, or ended by the bus with the source while this
        // loop was still catching up), which closed the queue here.
        Ok(Ok(Some(publisher))) if end == JobEnd::Failed && !publisher.is_active() => return JobEnd::PublisherGone,
        Ok(Ok(Some(publisher))) => publisher.end(reason),
        // The codec gave up (a source that does not decode, an encoder error):
        // its publisher is gone too, but this is a failure, not a takeover.
        Ok(Ok(None)) => return JobEnd::Failed,
        _ if end == JobEnd::PublisherGone => {}
        _ => return JobEnd::Failed,
    }
    end
}

fn note_drop(stats: &JobStats, drops: &mut Vec<Instant>, track: &str, seq: u64) {
    let n = stats.gops_dropped.fetch_add(1, Ordering::Relaxed) + 1;
    let now = Instant::now();
    drops.retain(|t| now.duration_since(*t) < BEHIND_WINDOW);
    drops.push(now);
    tracing::warn!(
        track,
        seq,
        dropped_total = n,
        "transcoder behind real time: dropping the rest of this GoP (the source and its viewers are not affected)"
    );
}

/// The codec side. Gives the publisher back (for ending it with the right
/// reason) unless the codec could not be set up.
fn codec_thread(
    mut rx: mpsc::Receiver<Input>,
    mut publisher: Publisher,
    rung: Rung,
    settings: EncoderSettings,
    stats: &JobStats,
    track: &str,
) -> Option<Publisher> {
    let mut pipeline = Pipeline::new(rung, settings);
    let mut pending: Option<(VideoConfig, i64)> = None;
    let mut out = Vec::new();
    let mut busy = Duration::ZERO;
    let mut gop_first_pts: Option<i64> = None;
    let mut last_pts = 0;
    let mut fps_probe: Vec<i64> = Vec::new();
    while let Some(input) = rx.blocking_recv() {
        let started = Instant::now();
        let result = match input {
            Input::Gop { config, start_dts } => {
                if let Some(first) = gop_first_pts.take() {
                    let media = (last_pts - first).max(1) as u128;
                    stats.load_milli.store((busy.as_micros() / media) as u64, Ordering::Relaxed);
                }
                busy = Duration::ZERO;
                pending = Some((config, start_dts));
                Ok(())
            }
            Input::Frame { dts, pts, key, data } => {
                let mut r = Ok(());
                if let Some((config, start_dts)) = pending.take() {
                    if fps_probe.len() < 16 {
                        fps_probe.push(dts);
                        pipeline.set_fps_hint(fps_from(&fps_probe));
                    }
                    r = pipeline.open_gop(&config, start_dts, pts);
                    gop_first_pts = Some(pts);
                } else if fps_probe.len() < 16 {
                    fps_probe.push(dts);
                }
                last_pts = last_pts.max(pts);
                r.and_then(|()| pipeline.push(data.parts(), dts, pts, key, &mut out))
            }
            Input::Reset => {
                pipeline.reset();
                pending = None;
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(track, error = %e, "transcoder failed; giving the rendition up");
            return None;
        }
        if stats.gops_in.load(Ordering::Relaxed) > 3 && pipeline.counters.decoded == 0 {
            tracing::error!(
                track,
                decode_errors = pipeline.decode_errors(),
                "the source does not decode; giving the rendition up"
            );
            return None;
        }
        busy += started.elapsed();
        if !publish(&mut publisher, &mut out, stats) {
            return Some(publisher);
        }
        stats.decode_errors.store(pipeline.decode_errors(), Ordering::Relaxed);
    }
    // The source ended: what the decoder holds is encoded and sent.
    if pipeline.finish(&mut out).is_ok() {
        publish(&mut publisher, &mut out, stats);
    }
    let c = pipeline.counters;
    tracing::info!(track, decoded = c.decoded, encoded = c.encoded, capped = c.capped, "rendition encoder stopped");
    Some(publisher)
}

fn fps_from(dts: &[i64]) -> u32 {
    match (dts.first(), dts.last()) {
        (Some(a), Some(b)) if dts.len() >= 2 && b > a => ((dts.len() as i64 - 1) * 1000 / (b - a)).clamp(1, 240) as u32,
        _ => 30,
    }
}

/// Pushes `out` to the bus; false when the publisher is gone.
fn publish(publisher: &mut Publisher, out: &mut Vec<Output>, stats: &JobStats) -> bool {
    for o in std::mem::take(out) {
        let ok = match o {
            Output::Gop { start_dts, config } => {
                stats.gops_out.fetch_add(1, Ordering::Relaxed);
                let header = GopHeader {
                    seq: 0,
                    start_dts,
                    tracks: vec![TrackInfo {
                        id: TrackId(0),
                        name: TrackInfo::VIDEO.to_owned(),
                        codec: Codec::H264(config),
                    }],
                    metadata: None,
                };
                publisher.open_gop(header).is_ok()
            }
            Output::Frame { dts, cts, key, data } => {
                stats.frames_out.fetch_add(1, Ordering::Relaxed);
                let header = FrameHeader {
                    track: TrackId(0),
                    dts,
                    cts,
                    flags: if key { FrameFlags::KEYFRAME } else { FrameFlags::default() },
                    len: data.len() as u32,
                };
                publisher.push(Frame { header, payload: Payload::from_bytes(data) }).is_ok()
            }
        };
        if !ok {
            return false;
        }
    }
    true
}
