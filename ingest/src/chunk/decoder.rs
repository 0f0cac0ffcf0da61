//! Chunk reassembly without copying payload bytes.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ChunkError;

/// One reassembled RTMP message. `parts` are slices of the read buffer(s) the
/// chunks arrived in, in order; their lengths add up to `len`.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The chunk stream it arrived on.
    pub csid: u32,
    /// The 32-bit RTMP timestamp (milliseconds, wraps).
    pub timestamp: u32,
    /// The message type id.
    pub type_id: u8,
    /// The message stream id.
    pub stream_id: u32,
    /// The payload as slices of the read buffer.
    pub parts: Vec<Bytes>,
    /// Payload length in bytes.
    pub len: usize,
}

impl RawMessage {
    /// The payload as one buffer: free for a single part, a copy otherwise. Used for
    /// commands and configuration records, never for media frames.
    pub fn contiguous(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut v = Vec::with_capacity(self.len);
                for p in many {
                    v.extend_from_slice(p);
                }
                v.into()
            }
        }
    }
}

#[derive(Default)]
struct ChunkStream {
    timestamp: u32,
    /// The timestamp field of the last header (a delta, or after type 0 the
    /// absolute value, as ffmpeg and librtmp read it).
    ts_field: u32,
    extended: bool,
    len: usize,
    type_id: u8,
    stream_id: u32,
    /// The message in progress, if any.
    parts: Vec<Bytes>,
    received: usize,
    seen: bool,
}

/// Reassembles RTMP messages from chunks (RTMP 1.0 §5.3.1).
///
/// Call [`decode`](Self::decode) after every read until it returns `Ok(None)`.
/// Payload bytes are taken off the buffer as soon as they arrive, even mid-chunk,
/// so the buffer only ever keeps a partial chunk header: growing it never copies
/// payload bytes.
pub struct ChunkDecoder {
    chunk_size: usize,
    max_message: usize,
    /// The chunk streams by id, in the order first seen: a peer uses a handful
    /// (at most [`MAX_CHUNK_STREAMS`]), so a scan beats hashing the id per chunk.
    /// None is ever removed, so an index stays valid.
    streams: Vec<(u32, ChunkStream)>,
    /// The chunk whose payload is still arriving: (its stream's index in `streams`, bytes left in this chunk).
    in_chunk: Option<(usize, usize)>,
    /// Payload bytes held in messages not yet complete, all chunk streams.
    held: usize,
}

/// Largest number of chunk streams a peer may use at once.
const MAX_CHUNK_STREAMS: usize = 64;

/// Smallest chunk size a peer may set: the protocol's initial size, which no
/// encoder goes below. Smaller chunks only multiply the per-chunk overhead
/// of everything that holds them.
pub(crate) const MIN_CHUNK_SIZE: u32 = 128;

/// Bytes of incomplete messages a connection may hold beyond its largest
/// message (an audio message in progress beside a video one).
const HELD_SLACK: usize = 128 * 1024;

impl ChunkDecoder {
    /// A decoder with the protocol's initial chunk size of 128 bytes.
    pub fn new(max_message: usize) -> Self {
        Self { chunk_size: 128, max_message, streams: Vec::new(), in_chunk: None, held: 0 }
    }

    /// Changes the largest message accepted (ingest raises it once a publish
    /// is accepted: before that, only commands come).
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// Applies the peer's Set Chunk Size.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        // §5.4.1: 1 ..= 0x7FFFFFFF; the top bit must be zero. Below 128: refused.
        if !(MIN_CHUNK_SIZE..=0x7fff_ffff).contains(&size) {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }

    /// Drops the partial message of chunk stream `csid` (Abort Message, §5.4.2).
    pub fn abort(&mut self, csid: u32) {
        if let Some((_, s)) = self.streams.iter_mut().find(|(id, _)| *id == csid) {
            self.held -= s.received;
            s.parts.clear();
            s.received = 0;
        }
    }

    /// Takes bytes off the front of `buf` and returns the next complete message,
    /// or `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let (idx, left) = match self.in_chunk {
                Some(c) => c,
                None => match self.parse_header(buf)? {
                    Some(c) => c,
                    None => return Ok(None),
                },
            };
            if left > 0 && buf.is_empty() {
                self.in_chunk = Some((idx, left));
                return Ok(None);
            }
            let take = left.min(buf.len());
            let (csid, stream) = &mut self.streams[idx];
            if take > 0 {
                stream.parts.push(buf.split_to(take).freeze());
                stream.received += take;
                self.held += take;
                if self.held > self.max_message + HELD_SLACK {
                    return Err(ChunkError::TooMuchHeld(self.held));
                }
            }
            if take < left {
                self.in_chunk = Some((idx, left - take));
                return Ok(None);
            }
            self.in_chunk = None;
            if stream.received == stream.len {
                let parts = std::mem::take(&mut stream.parts);
                self.held -= stream.received;
                stream.received = 0;
                return Ok(Some(RawMessage {
                    csid: *csid,
                    timestamp: stream.timestamp,
                    type_id: stream.type_id,
                    stream_id: stream.stream_id,
                    len: stream.len,
                    parts,
                }));
            }
        }
    }

    /// Parses one chunk header if all of it is in `buf`; returns its chunk
    /// stream's index in `streams` and the chunk's payload length.
    fn parse_header(&mut self, buf: &mut BytesMut) -> Result<Option<(usize, usize)>, ChunkError> {
        let b = &buf[..];
        let Some(&first) = b.first() else { return Ok(None) };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (64 + u32::from(x), 2),
                None => return Ok(None),
            },
            1 => match (b.get(1), b.get(2)) {
                (Some(&lo), Some(&hi)) => (64 + u32::from(lo) + 256 * u32::from(hi), 3),
                _ => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        if b.len() < pos + header_len {
            return Ok(None);
        }
        let idx = match self.streams.iter().position(|(id, _)| *id == csid) {
            Some(i) => i,
            None if self.streams.len() >= MAX_CHUNK_STREAMS => return Err(ChunkError::TooManyChunkStreams),
            None => {
                self.streams.push((csid, ChunkStream::default()));
                self.streams.len() - 1
            }
        };
        let stream = &mut self.streams[idx].1;
        let h = &b[pos..pos + header_len];
        let be24 = |x: &[u8]| (u32::from(x[0]) << 16) | (u32::from(x[1]) << 8) | u32::from(x[2]);
        let mid_message = stream.received > 0;
        if fmt == 3 && !stream.seen {
            return Err(ChunkError::NoPreviousHeader(csid));
        }
        if fmt < 3 && mid_message {
            // A new header on a stream whose message is incomplete: the peer gave up on it.
            tracing::debug!(csid, "new message header mid-message; dropping the partial message");
            self.held -= stream.received;
            stream.parts.clear();
            stream.received = 0;
        }
        let ts_field = if fmt < 3 { be24(&h[0..3]) } else { stream.ts_field };
        let extended = if fmt < 3 { ts_field == 0xff_ffff } else { stream.extended };
        let ext_len = if extended { 4 } else { 0 };
        if b.len() < pos + header_len + ext_len {
            return Ok(None);
        }
        let ts_value = if extended {
            let x = &b[pos + header_len..pos + header_len + 4];
            u32::from_be_bytes([x[0], x[1], x[2], x[3]])
        } else {
            ts_field
        };
        if fmt <= 1 {
            let len = be24(&h[3..6]) as usize;
            if len > self.max_message {
                return Err(ChunkError::MessageTooLarge(len));
            }
            stream.len = len;
            stream.type_id = h[6];
        }
        if fmt == 0 {
            stream.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
        }
        // Timestamps: absolute for type 0, a delta otherwise; a continuation chunk
        // of type 3 repeats the message's timestamp rather than adding to it.
        if fmt < 3 {
            stream.ts_field = ts_value;
            stream.timestamp = if fmt == 0 { ts_value } else { stream.timestamp.wrapping_add(ts_value) };
        } else if !mid_message {
            stream.timestamp = stream.timestamp.wrapping_add(ts_value);
        }
        stream.extended = extended;
        stream.seen = true;
        pos += header_len + ext_len;
        let left = (stream.len - stream.received).min(self.chunk_size);
        buf.advance(pos);
        Ok(Some((idx, left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    /// Chunks written by rml_rtmp's serializer (an independent implementation).
    fn serialize(msgs: &[(u32, u8, u32, Vec<u8>)], chunk_size: u32) -> Vec<u8> {
        let mut ser = ChunkSerializer::new();
        let mut out = Vec::new();
        if chunk_size != 128 {
            let p = ser.set_max_chunk_size(chunk_size, RtmpTimestamp::new(0)).unwrap();
            out.extend_from_slice(&p.bytes);
        }
        for (ts, type_id, stream_id, data) in msgs {
            let payload = MessagePayload {
                timestamp: RtmpTimestamp::new(*ts),
                type_id: *type_id,
                message_stream_id: *stream_id,
                data: Bytes::from(data.clone()),
            };
            out.extend_from_slice(&ser.serialize(&payload, false, false).unwrap().bytes);
        }
        out
    }

    fn decode_all(dec: &mut ChunkDecoder, wire: &[u8], step: usize) -> Vec<RawMessage> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                if m.type_id == 1 {
                    let size = u32::from_be_bytes(m.contiguous()[..4].try_into().unwrap());
                    dec.set_chunk_size(size).unwrap();
                }
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn reassembles_rml_rtmp_chunks_at_any_read_size() {
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let msgs = vec![
            (0, 9, 1, big.clone()),
            (33, 8, 1, vec![0xaf, 1, 2, 3]),
            (66, 9, 1, big[..300].to_vec()),
            (0x0100_0000, 9, 1, big[..5000].to_vec()), // extended timestamp
            (0x0100_0021, 9, 1, big[..10].to_vec()),
        ];
        for chunk_size in [128, 4096] {
            let wire = serialize(&msgs, chunk_size);
            for step in [1, 7, 128, 1000, wire.len()] {
                let mut dec = ChunkDecoder::new(1 << 20);
                let got: Vec<_> = decode_all(&mut dec, &wire, step).into_iter().filter(|m| m.type_id != 1).collect();
                assert_eq!(got.len(), msgs.len(), "chunk size {chunk_size}, step {step}");
                for (m, (ts, ty, sid, data)) in got.iter().zip(&msgs) {
                    assert_eq!((m.timestamp, m.type_id, m.stream_id), (*ts, *ty, *sid));
                    assert_eq!(&m.contiguous()[..], &data[..]);
                    assert_eq!(m.len, data.len());
                }
            }
        }
    }

    #[test]
    fn payload_parts_point_into_the_read_buffer() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let wire = serialize(&[(0, 9, 1, data)], 128);
        let mut buf = BytesMut::from(&wire[..]);
        let start = buf.as_ptr() as usize;
        let end = start + wire.len();
        let mut dec = ChunkDecoder::new(1 << 20);
        let m = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.parts.len(), 8); // 1000 bytes in 128-byte chunks
        for p in &m.parts {
            let at = p.as_ptr() as usize;
            assert!(at >= start && at + p.len() <= end, "payload part was copied out of the read buffer");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut dec = ChunkDecoder::new(1000);
        // Type 3 header on a chunk stream never seen.
        let mut buf = BytesMut::from(&[0xc4, 0, 0][..]);
        assert!(matches!(dec.decode(&mut buf), Err(ChunkError::NoPreviousHeader(4))));
        // A message longer than allowed.
        let mut buf = BytesMut::from(&[0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0][..]);
        assert!(matches!(dec.decode(&mut buf), Err(ChunkError::MessageTooLarge(_))));
        assert!(dec.set_chunk_size(0).is_err());
        assert!(dec.set_chunk_size(0x8000_0000).is_err());
        assert!(dec.set_chunk_size(1).is_err(), "below the floor");
        assert!(dec.set_chunk_size(127).is_err(), "below the floor");
        assert!(dec.set_chunk_size(128).is_ok());
    }

    #[test]
    fn incomplete_messages_hold_a_bounded_number_of_bytes() {
        // Many chunk streams, each with a large message begun and never finished.
        let mut dec = ChunkDecoder::new(64 * 1024);
        let mut wire = Vec::new();
        for csid in 4..60u8 {
            // Type 0 header: a 60000-byte video message, then its first 128 bytes.
            wire.extend_from_slice(&[csid, 0, 0, 0, 0, 0xea, 0x60, 9, 1, 0, 0, 0]);
            wire.extend_from_slice(&[0u8; 128]);
        }
        let mut buf = BytesMut::from(&wire[..]);
        let mut result = Ok(None);
        while !buf.is_empty() {
            result = dec.decode(&mut buf);
            if result.is_err() {
                break;
            }
        }
        // 56 × 128 bytes fit: the limit is the largest message plus slack, so this passes...
        assert!(result.is_ok());
        // ...but continuing every one of them does not.
        let mut buf = BytesMut::new();
        let mut failed = false;
        for _ in 0..40 {
            for csid in 4..60u8 {
                buf.extend_from_slice(&[0xc0 | csid]);
                buf.extend_from_slice(&[0u8; 128]);
            }
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        assert!(matches!(e, ChunkError::TooMuchHeld(_)), "{e}");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
            }
        }
        assert!(failed, "the decoder held {} bytes of incomplete messages", dec.held);
        assert!(dec.held <= 64 * 1024 + HELD_SLACK + 128);
    }
}
