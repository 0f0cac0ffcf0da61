//! The FLV subscriber: a broadcast written as an FLV file or stream (`gopbus dump`).
//!
//! # Role
//!
//! The first subscriber crate, and the pattern for the others (WebRTC, HLS,
//! transcoder, webhooks):
//!
//! - it depends on `bus` and `proto` only, never on `ingest`;
//! - it reads any [`EventSource`] — an in-process subscriber, a
//!   [`TrackSubscriber`](gopbus_bus::TrackSubscriber) of chosen tracks, a remote
//!   one, a [`Resubscriber`](gopbus_bus::node::Resubscriber) that survives its
//!   connection — so it runs in `serve` and on its own node alike;
//! - its task is one function, [`run`]`(source, output, shutdown)`; a subscriber
//!   that serves HTTP also exposes an `axum::Router` that `serve` mounts.
//!
//! # Contract
//!
//! Payloads are written from the bus's slices (no copy into a frame buffer);
//! per frame only the 11-byte tag header, the FLV audio/video tag header and the
//! 4-byte back-pointer are made. Decoder configuration tags are written before
//! the first frame and again only when a GoP header changes them. FLV has one
//! video and one audio stream: the GoP's first H.264 and first AAC track.

use bytes::Bytes;
use gopbus_bus::{Event, EventSource};
use gopbus_proto::flv::{ConfigTracker, TAG_SCRIPT};
use gopbus_proto::EndReason;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Why writing stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FlvError {
    /// The output failed.
    #[error("writing FLV: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`run`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Audio and video frames written.
    pub frames: u64,
    /// GoPs skipped because the source fell behind.
    pub skipped_gops: u64,
    /// How the broadcast ended; `None` when `shutdown` stopped the writer first.
    pub end: Option<EndReason>,
}

/// Writes what `source` yields to `out` as FLV until the broadcast ends or
/// `shutdown` fires, then flushes and closes `out`.
pub async fn run<S, W>(mut source: S, out: W, shutdown: CancellationToken) -> Result<Summary, FlvError>
where
    S: EventSource,
    W: AsyncWrite + Unpin + Send,
{
    let mut writer = FlvWriter::new(out).await?;
    let mut skipped_gops = 0;
    let end = loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break None,
            ev = source.next_event() => ev,
        };
        match &ev {
            Event::End(r) => break Some(r.clone()),
            Event::Skipped { from, to } => {
                skipped_gops += to - from;
                tracing::warn!(from, to, "fell behind; skipped GoPs");
            }
            _ => {}
        }
        writer.event(&ev).await?;
    };
    let frames = writer.finish().await?;
    Ok(Summary { frames, skipped_gops, end })
}

/// An FLV writer (FLV spec v10.1 §E.2–E.4) fed with bus events.
pub struct FlvWriter<W> {
    out: W,
    config: ConfigTracker,
    frames: u64,
}

impl<W: AsyncWrite + Unpin> FlvWriter<W> {
    /// Writes the file header announcing audio and video.
    pub async fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&[b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0]).await?;
        Ok(Self { out, config: ConfigTracker::default(), frames: 0 })
    }

    /// Audio and video frames written so far.
    pub const fn frames(&self) -> u64 {
        self.frames
    }

    async fn tag(&mut self, kind: u8, ts: i64, prefix: &[u8], body: &[Bytes]) -> std::io::Result<()> {
        let size = prefix.len() + body.iter().map(Bytes::len).sum::<usize>();
        let ts = ts.max(0) as u32;
        let mut h = [0u8; 11];
        h[0] = kind;
        h[1..4].copy_from_slice(&(size as u32).to_be_bytes()[1..]);
        h[4..7].copy_from_slice(&ts.to_be_bytes()[1..]);
        h[7] = (ts >> 24) as u8;
        self.out.write_all(&h).await?;
        self.out.write_all(prefix).await?;
        for b in body {
            self.out.write_all(b).await?;
        }
        self.out.write_all(&((size + 11) as u32).to_be_bytes()).await
    }

    /// Writes what `ev` means in FLV; configuration tags only when they change.
    pub async fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        match ev {
            Event::Gop(h) => {
                for tag in self.config.changes(h) {
                    // onMetaData at timestamp 0, as FLV muxers write it: ffmpeg reads a
                    // script tag at any other time as a data stream, not as metadata.
                    let ts = if tag.tag_type == TAG_SCRIPT { 0 } else { h.start_dts };
                    self.tag(tag.tag_type, ts, tag.prefix, &[tag.body]).await?;
                }
            }
            Event::Frame(f) => {
                let Some(tag) = self.config.tag_of(&f.header) else { return Ok(()) };
                self.tag(tag.tag_type, f.header.dts, tag.prefix(), f.payload.parts()).await?;
                self.frames += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Flushes and closes the output; returns the frames written.
    pub async fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush().await?;
        self.out.shutdown().await?;
        Ok(self.frames)
    }
}
