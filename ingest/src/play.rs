//! The playing side of a connection: bus events to RTMP messages.
//!
//! Sans-IO: [`Egress`] turns each [`Event`] into chunks on the connection's
//! [`OutQueue`]. Payloads are the bus's slices; only chunk headers and the few
//! bytes of FLV tag header are written per frame. The driver pulls the next event
//! only while the queue is below its limit, so a slow player falls behind on the
//! bus (and skips GoPs there) instead of growing memory here.

use gopbus_bus::Event;
use gopbus_proto::flv::ConfigTracker;
use gopbus_proto::{EndReason, GopHeader};

use crate::chunk::{csid, types, ChunkEncoder, MessageHeader, OutQueue};

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

    /// Queues what `event` means for the player. Returns the end reason at the end.
    pub fn handle(&mut self, event: Event, enc: &mut ChunkEncoder, out: &mut OutQueue) -> Option<EndReason> {
        match event {
            Event::Gop(header) => self.gop(&header, enc, out),
            Event::Frame(frame) => {
                // Only the GoP's first H.264 and first AAC track are RTMP's.
                let tag = self.config.tag_of(&frame.header)?;
                let ts = frame.header.dts as u32; // RTMP timestamps wrap at 2^32 ms
                enc.encode(self.header(tag.tag_type, ts), tag.prefix(), frame.payload.parts(), out);
                self.frames += 1;
            }
            Event::CutShort { .. } => {}
            Event::Skipped { from, to } => {
                self.skipped_gops += to - from;
                tracing::debug!(from, to, "player fell behind; skipped to the newest GoP");
            }
            Event::End(reason) => return Some(reason),
        }
        None
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
