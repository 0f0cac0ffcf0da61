//! The playing side of a connection: bus events to RTMP messages.
//!
//! Sans-IO: [`Egress`] turns each [`Event`] into chunks on the connection's
//! [`OutQueue`]. Payloads are the bus's slices; only chunk headers and the few
//! bytes of FLV tag header are written per frame. The driver pulls the next event
//! only while the queue is below its limit, so a slow player falls behind on the
//! bus (and skips GoPs there) instead of growing memory here.

use bytes::Bytes;
use gopbus_bus::Event;
use gopbus_proto::flv::{AacPacketType, AudioTagHeader, AvcPacketType, VideoTagHeader};
use gopbus_proto::{EndReason, GopHeader, TrackId};

use crate::chunk::{csid, types, ChunkEncoder, MessageHeader, OutQueue};

/// One player's egress state: which configuration it has already been sent.
#[derive(Default)]
pub struct Egress {
    stream_id: u32,
    sent_avcc: Option<Vec<u8>>,
    sent_asc: Option<Vec<u8>>,
    sent_metadata: Option<Vec<u8>>,
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
                let ts = frame.header.dts as u32; // RTMP timestamps wrap at 2^32 ms
                match frame.header.track {
                    TrackId::VIDEO => {
                        let prefix =
                            VideoTagHeader::write(frame.header.is_keyframe(), AvcPacketType::Nalu, frame.header.cts);
                        enc.encode(self.header(csid::VIDEO, ts, types::VIDEO), &prefix, frame.payload.parts(), out);
                    }
                    TrackId::AUDIO => {
                        let prefix = AudioTagHeader::write(AacPacketType::Raw);
                        enc.encode(self.header(csid::AUDIO, ts, types::AUDIO), &prefix, frame.payload.parts(), out);
                    }
                    // Derived tracks (renditions, Opus) are not RTMP's.
                    _ => return None,
                }
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

    const fn header(&self, csid: u32, timestamp: u32, type_id: u8) -> MessageHeader {
        MessageHeader { csid, timestamp, type_id, stream_id: self.stream_id }
    }

    fn gop(&mut self, header: &GopHeader, enc: &mut ChunkEncoder, out: &mut OutQueue) {
        let ts = header.start_dts as u32;
        if header.metadata.is_some() && header.metadata != self.sent_metadata {
            let meta = header.metadata.clone().unwrap_or_default();
            enc.encode(self.header(csid::STREAM, ts, types::DATA_AMF0), &[], &[Bytes::from(meta.clone())], out);
            self.sent_metadata = Some(meta);
        }
        if let Some(video) = &header.video {
            if self.sent_avcc.as_ref() != Some(&video.avcc) {
                let prefix = VideoTagHeader::write(true, AvcPacketType::SequenceHeader, 0);
                let body = Bytes::from(video.avcc.clone());
                enc.encode(self.header(csid::VIDEO, ts, types::VIDEO), &prefix, &[body], out);
                self.sent_avcc = Some(video.avcc.clone());
            }
        }
        if let Some(audio) = &header.audio {
            if self.sent_asc.as_ref() != Some(&audio.asc) {
                let prefix = AudioTagHeader::write(AacPacketType::SequenceHeader);
                let body = Bytes::from(audio.asc.clone());
                enc.encode(self.header(csid::AUDIO, ts, types::AUDIO), &prefix, &[body], out);
                self.sent_asc = Some(audio.asc.clone());
            }
        }
    }
}
