//! Chunk writing around shared payload slices.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{BufMut, Bytes, BytesMut};

/// The bytes waiting to go out on one connection: chunk headers from the
/// connection's scratch buffer interleaved with payload slices shared with the
/// bus. Written with vectored writes; nothing is copied into a send buffer.
#[derive(Default)]
pub struct OutQueue {
    segs: VecDeque<Bytes>,
    bytes: usize,
}

/// Most slices handed to one `writev`.
pub(crate) const MAX_IOV: usize = 64;

impl OutQueue {
    /// Queues one segment.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.segs.push_back(b);
        }
    }

    /// Bytes queued.
    pub const fn len(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub const fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The queued segments, in order (for tests and accounting).
    pub fn segments(&self) -> impl Iterator<Item = &Bytes> {
        self.segs.iter()
    }

    /// Drops the first `n` bytes after they were written.
    pub fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.segs.front_mut().expect("consumed more than queued");
            if front.len() <= n {
                n -= front.len();
                self.segs.pop_front();
            } else {
                *front = front.slice(n..);
                n = 0;
            }
        }
    }

    /// The queued segments, taken out.
    pub fn take_segments(&mut self) -> Vec<Bytes> {
        self.bytes = 0;
        Vec::from(std::mem::take(&mut self.segs))
    }

    /// Moves everything queued in `other` to the end of this queue.
    pub fn append(&mut self, other: &mut Self) {
        self.bytes += std::mem::take(&mut other.bytes);
        self.segs.append(&mut other.segs);
    }

    /// Writes what a non-blocking vectored `write` takes (such as
    /// `try_write_vectored` of a tokio socket), until the queue is empty or the
    /// socket would block. Returns whether the queue is empty; errors other than
    /// `WouldBlock` are returned.
    pub fn try_write_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<bool> {
        while !self.is_empty() {
            let (r, offered) = {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let (count, offered) = fill_iov(self.segs.iter(), &mut slices);
                (write(&slices[..count]), offered)
            };
            match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.consume(n);
                    if n < offered {
                        // The socket's buffer is full: asking again would only hear "would block".
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Points `slots` at the first segments of `segs` (as many as fit): the slices
/// of one `writev`. Returns how many it filled and their bytes.
pub(crate) fn fill_iov<'a>(segs: impl Iterator<Item = &'a Bytes>, slots: &mut [IoSlice<'a>]) -> (usize, usize) {
    let (mut count, mut bytes) = (0, 0);
    for (slot, seg) in slots.iter_mut().zip(segs) {
        *slot = IoSlice::new(seg);
        count += 1;
        bytes += seg.len();
    }
    (count, bytes)
}

/// Where and how a message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Chunk stream id (2..=63).
    pub csid: u32,
    /// RTMP timestamp.
    pub timestamp: u32,
    /// Message type id.
    pub type_id: u8,
    /// Message stream id.
    pub stream_id: u32,
}

/// Writes RTMP chunks (RTMP 1.0 §5.3.1): every message starts with a type 0
/// header (absolute timestamp) and continues with type 3 headers.
pub struct ChunkEncoder {
    chunk_size: usize,
    scratch: BytesMut,
}

/// Scratch allocation for chunk headers: a block is freed once every header cut
/// from it was written, so it is small (a player holds one while it plays).
const SCRATCH: usize = 1024;

impl ChunkEncoder {
    /// An encoder with the initial chunk size of 128 bytes.
    pub fn new() -> Self {
        Self { chunk_size: 128, scratch: BytesMut::new() }
    }

    /// Our chunk size; change it only right after queuing a Set Chunk Size message.
    pub fn set_chunk_size(&mut self, size: usize) {
        self.chunk_size = size.max(1);
    }

    /// The current chunk size.
    pub const fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Queues one message: `prefix` (a few bytes, such as an FLV tag header, copied
    /// next to the chunk header) followed by `payload` slices (shared, not copied).
    pub fn encode(&mut self, header: MessageHeader, prefix: &[u8], payload: &[Bytes], out: &mut OutQueue) {
        let MessageHeader { csid, timestamp, type_id, stream_id } = header;
        debug_assert!((2..64).contains(&csid), "gopbus only sends on one-byte chunk stream ids");
        let len = prefix.len() + payload.iter().map(Bytes::len).sum::<usize>();
        let extended = timestamp >= 0xff_ffff;
        if self.scratch.capacity() - self.scratch.len() < 64 + prefix.len() {
            self.scratch.reserve(SCRATCH.max(64 + prefix.len()));
        }
        let basic = csid as u8;
        self.scratch.put_u8(basic);
        self.scratch.put_uint(u64::from(timestamp.min(0xff_ffff)), 3);
        self.scratch.put_uint(len as u64 & 0xff_ffff, 3);
        self.scratch.put_u8(type_id);
        self.scratch.put_u32_le(stream_id);
        if extended {
            self.scratch.put_u32(timestamp);
        }
        let mut room = self.chunk_size;
        let mut written = 0;
        let mut pending = prefix;
        // Prefix bytes: copied into the scratch, with continuation headers as needed.
        while !pending.is_empty() {
            if room == 0 {
                self.continuation(basic, extended, timestamp);
                room = self.chunk_size;
            }
            let n = room.min(pending.len());
            self.scratch.put_slice(&pending[..n]);
            pending = &pending[n..];
            room -= n;
            written += n;
        }
        // Payload slices: shared, cut at chunk boundaries.
        for part in payload {
            let mut at = 0;
            while at < part.len() {
                if room == 0 {
                    self.continuation(basic, extended, timestamp);
                    room = self.chunk_size;
                }
                out.push(self.scratch.split().freeze());
                let n = room.min(part.len() - at);
                out.push(part.slice(at..at + n));
                at += n;
                room -= n;
                written += n;
            }
        }
        debug_assert_eq!(written, len);
        out.push(self.scratch.split().freeze());
    }

    fn continuation(&mut self, basic: u8, extended: bool, timestamp: u32) {
        if self.scratch.capacity() - self.scratch.len() < 8 {
            self.scratch.reserve(SCRATCH);
        }
        self.scratch.put_u8(0xc0 | basic);
        if extended {
            self.scratch.put_u32(timestamp);
        }
    }
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkDecoder;

    fn wire(q: &OutQueue) -> Vec<u8> {
        q.segments().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn encodes_what_the_decoder_reads_without_copying_payload() {
        let a = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        let b = Bytes::from(vec![7u8; 333]);
        for (chunk_size, ts) in [(128, 40), (4096, 0x0123_4567)] {
            let mut enc = ChunkEncoder::new();
            enc.set_chunk_size(chunk_size);
            let mut q = OutQueue::default();
            enc.encode(
                MessageHeader { csid: 7, timestamp: ts, type_id: 9, stream_id: 1 },
                &[0x17, 1, 0, 0, 0],
                &[a.clone(), b.clone()],
                &mut q,
            );
            // Every payload byte in the queue is a slice of `a` or `b`: pointer identity.
            let in_a = |s: &Bytes| s.as_ptr() >= a.as_ptr() && s.as_ptr() < a.as_ptr().wrapping_add(a.len());
            let in_b = |s: &Bytes| s.as_ptr() >= b.as_ptr() && s.as_ptr() < b.as_ptr().wrapping_add(b.len());
            let shared: usize = q.segments().filter(|s| in_a(s) || in_b(s)).map(Bytes::len).sum();
            assert_eq!(shared, a.len() + b.len());

            let mut dec = ChunkDecoder::new(1 << 20);
            dec.set_chunk_size(chunk_size as u32).unwrap();
            let mut buf = BytesMut::from(&wire(&q)[..]);
            let m = dec.decode(&mut buf).unwrap().unwrap();
            assert_eq!((m.timestamp, m.type_id, m.stream_id, m.len), (ts, 9, 1, 5 + 5333));
            let body = m.contiguous();
            assert_eq!(&body[..5], &[0x17, 1, 0, 0, 0]);
            assert_eq!(&body[5..5005], &a[..]);
            assert_eq!(&body[5005..], &b[..]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn out_queue_consume_partial() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"defg"));
        q.consume(4);
        assert_eq!(q.len(), 3);
        assert_eq!(wire(&q), b"efg");
    }
}
