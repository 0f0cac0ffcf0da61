//! Reading and writing bus messages on quinn streams. Payloads are `Bytes` from
//! `read_chunk` and go to `write_chunk`: never copied. Only headers are.

use std::collections::VecDeque;
use std::future::Future;

use bytes::{Buf, Bytes, BytesMut};
use gopbus_proto::wire::{self, Message, PREFIX_LEN};
use quinn::{RecvStream, SendStream};
use rkyv::util::AlignedVec;

use super::QuicError;

/// Reads framed messages and payloads off one receive stream.
pub(crate) struct Reader {
    stream: RecvStream,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    scratch: BytesMut,
    arena: AlignedVec,
}

impl Reader {
    pub(crate) fn new(stream: RecvStream) -> Self {
        Self { stream, chunks: VecDeque::new(), buffered: 0, scratch: BytesMut::new(), arena: AlignedVec::new() }
    }

    /// Buffers at least `n` bytes; `false` at the end of the stream.
    async fn fill(&mut self, n: usize) -> Result<bool, QuicError> {
        while self.buffered < n {
            match self.stream.read_chunk(usize::MAX, true).await? {
                Some(chunk) => {
                    self.buffered += chunk.bytes.len();
                    self.chunks.push_back(chunk.bytes);
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Copies `n` buffered bytes into the scratch buffer (headers only).
    fn take_into_scratch(&mut self, n: usize) {
        self.scratch.clear();
        let mut left = n;
        while left > 0 {
            let front = self.chunks.front_mut().expect("buffered");
            let k = left.min(front.len());
            self.scratch.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            left -= k;
        }
        self.buffered -= n;
    }

    /// The next message, or `None` at a clean end of stream.
    pub(crate) async fn message(&mut self) -> Result<Option<Message>, QuicError> {
        if !self.fill(PREFIX_LEN).await? {
            if self.buffered == 0 {
                return Ok(None);
            }
            return Err(QuicError::Protocol("stream ended inside a message".into()));
        }
        let mut prefix = [0u8; PREFIX_LEN];
        gopbus_proto::media::copy_prefix(self.chunks.make_contiguous(), &mut prefix)?;
        let len = u32::from_be_bytes([prefix[2], prefix[3], prefix[4], prefix[5]]) as usize;
        if len > wire::MAX_BODY {
            return Err(QuicError::Protocol("message body larger than 1 MiB".into()));
        }
        if !self.fill(PREFIX_LEN + len).await? {
            return Err(QuicError::Protocol("stream ended inside a message".into()));
        }
        self.take_into_scratch(PREFIX_LEN + len);
        Ok(Some(wire::decode_with(&mut self.scratch, &mut self.arena)?))
    }

    /// The next `len` bytes as slices of the received chunks.
    pub(crate) async fn payload(&mut self, len: usize) -> Result<Vec<Bytes>, QuicError> {
        if !self.fill(len).await? {
            return Err(QuicError::Protocol("stream ended inside a payload".into()));
        }
        let mut parts = Vec::with_capacity(2);
        let mut left = len;
        while left > 0 {
            let front = self.chunks.front_mut().expect("buffered");
            if front.len() <= left {
                left -= front.len();
                parts.push(self.chunks.pop_front().expect("front exists"));
            } else {
                parts.push(front.split_to(left));
                left = 0;
            }
        }
        self.buffered -= len;
        Ok(parts)
    }

    /// Stops the peer from sending more on this stream.
    pub(crate) fn stop(&mut self) {
        let _ = self.stream.stop(quinn::VarInt::from_u32(0));
    }
}

/// Encodes framed messages into reused buffers: one per sending task, shared by
/// all the streams it writes, so a warm sender allocates nothing per frame.
#[derive(Default)]
pub(crate) struct Encoder {
    scratch: BytesMut,
    arena: AlignedVec,
}

impl Encoder {
    /// The framed bytes of `msg`.
    pub(crate) fn encode(&mut self, msg: &Message) -> Bytes {
        if self.scratch.capacity() - self.scratch.len() < 512 {
            self.scratch.reserve(4096);
        }
        wire::encode_with(msg, &mut self.scratch, &mut self.arena);
        self.scratch.split().freeze()
    }
}

/// Writes framed messages with their payloads onto one send stream.
pub(crate) struct Writer {
    pub(crate) stream: SendStream,
    /// The header and payload slices of the message being written, handed to
    /// quinn in one call (one lock of the connection and one wake of its driver
    /// per message, not one per slice). quinn empties the slices it took, so
    /// what is left non-empty is what the stream has not taken yet.
    chunks: Vec<Bytes>,
}

impl Writer {
    pub(crate) const fn new(stream: SendStream) -> Self {
        Self { stream, chunks: Vec::new() }
    }

    /// Writes `msg` and then `payload` (shared slices, not copied).
    pub(crate) async fn send(&mut self, enc: &mut Encoder, msg: &Message, payload: &[Bytes]) -> Result<(), QuicError> {
        self.queue(enc, msg, payload);
        self.flush().await
    }

    /// Makes `msg` and `payload` the message to write (see [`flush`](Self::flush)
    /// and [`try_flush`](Self::try_flush)). The previous one must be written.
    pub(crate) fn queue(&mut self, enc: &mut Encoder, msg: &Message, payload: &[Bytes]) {
        debug_assert!(self.chunks.iter().all(Bytes::is_empty), "a message is still being written");
        self.chunks.clear();
        self.chunks.push(enc.encode(msg));
        self.chunks.extend(payload.iter().cloned());
    }

    /// Like [`queue`](Self::queue), with the message already encoded.
    pub(crate) fn queue_encoded(&mut self, head: Bytes, payload: &[Bytes]) {
        debug_assert!(self.chunks.iter().all(Bytes::is_empty), "a message is still being written");
        self.chunks.clear();
        self.chunks.push(head);
        self.chunks.extend(payload.iter().cloned());
    }

    /// Writes what is left of the queued message, waiting for flow control.
    pub(crate) async fn flush(&mut self) -> Result<(), QuicError> {
        let start = self.unwritten();
        let r = self.stream.write_all_chunks(&mut self.chunks[start..]).await;
        self.chunks.clear();
        Ok(r?)
    }

    /// Writes what the stream takes of the queued message now, without
    /// waiting: `true` when all of it is written, `false` when the rest waits
    /// for flow control (finish it with [`flush`](Self::flush)).
    pub(crate) fn try_flush(&mut self) -> Result<bool, QuicError> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let start = self.unwritten();
            if start == self.chunks.len() {
                self.chunks.clear();
                return Ok(true);
            }
            // Polled once with a waker that does nothing: quinn keeps it until
            // the stream has room, and `flush` replaces it with a real one.
            let write = self.stream.write_chunks(&mut self.chunks[start..]);
            match std::pin::pin!(write).poll(&mut cx) {
                std::task::Poll::Ready(Ok(_)) => {}
                std::task::Poll::Ready(Err(e)) => return Err(e.into()),
                std::task::Poll::Pending => return Ok(false),
            }
        }
    }

    /// Where the part of the queued message not yet taken starts.
    fn unwritten(&self) -> usize {
        self.chunks.iter().position(|c| !c.is_empty()).unwrap_or(self.chunks.len())
    }
}
