//! The playing side of a connection: bus events to RTMP messages.
//!
//! Sans-IO: [`Egress`] turns each [`Event`] into chunks on the connection's
//! [`OutQueue`]. Payloads are the bus's slices; only chunk headers and the few
//! bytes of FLV tag header are written per frame. The driver pulls the next event
//! only while the queue is below its limit, so a slow player falls behind on the
//! bus (and skips GoPs there) instead of growing memory here.

use gopbus_bus::{Event, Subscriber, TrackSubscriber, Viewer};
use gopbus_proto::flv::ConfigTracker;
use gopbus_proto::{EndReason, GopHeader};

use crate::chunk::{csid, types, ChunkEncoder, MessageHeader, OutQueue};

/// What [`Egress::handle`] queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Nothing (a frame of a track RTMP does not carry, a cut, a skip).
    Nothing,
    /// An audio frame.
    Audio,
    /// A video frame or configuration.
    Other,
}

/// What a player reads: a broadcast as published, or a rendition of it (its
/// derived video track with the source's audio).
pub(crate) enum PlaySource {
    Published(Subscriber),
    Rendition(TrackSubscriber),
}

impl PlaySource {
    pub(crate) async fn next(&mut self) -> Event {
        match self {
            Self::Published(s) => s.next().await,
            Self::Rendition(s) => s.next().await,
        }
    }

    pub(crate) fn try_next(&mut self) -> Option<Event> {
        match self {
            Self::Published(s) => s.try_next(),
            Self::Rendition(s) => s.try_next(),
        }
    }
}

/// A player's state while it plays: its source, what it was sent, its place in the audience.
pub(crate) struct Playing {
    pub(crate) sub: PlaySource,
    pub(crate) egress: Egress,
    /// Counted in the node's audience while it plays.
    pub(crate) viewer: Viewer,
}

impl Playing {
    /// Queues `ev`, counting it in the audience.
    pub(crate) fn queue(&mut self, ev: Event, enc: &mut ChunkEncoder, out: &mut OutQueue) -> Result<Queued, EndReason> {
        match &ev {
            Event::Frame(f) => self.viewer.sent_frame(f.payload.len() as u64),
            Event::Skipped { from, to } => self.viewer.skipped(to - from),
            _ => {}
        }
        self.egress.handle(ev, enc, out)
    }
}

/// One player's egress state: which configuration it has already been sent.
#[derive(Default)]
pub struct Egress {
    stream_id: u32,
    config: ConfigTracker,
    /// Frames written.
    pub frames: u64,
    /// GoPs skipped because the player fell behind.
    pub skipped_gops: u64,
}

impl Egress {
    /// Egress on RTMP message stream `stream_id`.
    pub fn new(stream_id: u32) -> Self {
        Self { stream_id, ..Self::default() }
    }

    /// Queues what `event` means for the player: what it queued, or the end
    /// reason at the end.
    pub fn handle(&mut self, event: Event, enc: &mut ChunkEncoder, out: &mut OutQueue) -> Result<Queued, EndReason> {
        match event {
            Event::Gop(header) => {
                self.gop(&header, enc, out);
                Ok(Queued::Other)
            }
            Event::Frame(frame) => {
                // Only the GoP's first H.264 and first AAC track are RTMP's.
                let Some(tag) = self.config.tag_of(&frame.header) else { return Ok(Queued::Nothing) };
                let ts = frame.header.dts as u32; // RTMP timestamps wrap at 2^32 ms
                enc.encode(self.header(tag.tag_type, ts), tag.prefix(), frame.payload.parts(), out);
                self.frames += 1;
                Ok(if tag.tag_type == types::AUDIO { Queued::Audio } else { Queued::Other })
            }
            Event::CutShort { .. } => Ok(Queued::Nothing),
            Event::Skipped { from, to } => {
                self.skipped_gops += to - from;
                tracing::debug!(from, to, "player fell behind; skipped to the newest GoP");
                Ok(Queued::Nothing)
            }
            Event::End(reason) => Err(reason),
        }
    }

    /// The FLV tag of a frame of the GoP last queued; `None` for a track RTMP does not carry.
    pub fn frame_tag(&self, h: &gopbus_proto::FrameHeader) -> Option<gopbus_proto::flv::FrameTag> {
        self.config.tag_of(h)
    }

    /// The RTMP message header of a frame with tag `tag_type` at `dts`.
    pub const fn frame_header(&self, tag_type: u8, dts: i64) -> MessageHeader {
        self.header(tag_type, dts as u32) // RTMP timestamps wrap at 2^32 ms
    }

    /// The RTMP message header for an FLV tag type (RTMP message types equal FLV tag types).
    const fn header(&self, tag_type: u8, timestamp: u32) -> MessageHeader {
        let csid = match tag_type {
            types::VIDEO => csid::VIDEO,
            types::AUDIO => csid::AUDIO,
            _ => csid::STREAM,
        };
        MessageHeader { csid, timestamp, type_id: tag_type, stream_id: self.stream_id }
    }

    fn gop(&mut self, header: &GopHeader, enc: &mut ChunkEncoder, out: &mut OutQueue) {
        let ts = header.start_dts as u32;
        for tag in self.config.changes(header) {
            enc.encode(self.header(tag.tag_type, ts), tag.prefix, &[tag.body], out);
        }
    }
}
