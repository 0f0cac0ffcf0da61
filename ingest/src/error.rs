//! Errors of the ingest crate.

/// A chunk-layer protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A type 3 header on a chunk stream that has no previous header.
    #[error("chunk stream {0} continues a message that never started")]
    NoPreviousHeader(u32),
    /// Set Chunk Size outside 128..=0x7FFFFFFF.
    #[error("invalid chunk size {0} (128 to 2147483647)")]
    BadChunkSize(u32),
    /// A message longer than the configured limit.
    #[error("message of {0} bytes exceeds the limit")]
    MessageTooLarge(usize),
    /// More concurrent chunk streams than allowed.
    #[error("too many chunk streams")]
    TooManyChunkStreams,
    /// Incomplete messages hold more bytes than the largest message allowed.
    #[error("{0} bytes held in incomplete messages, more than the limit")]
    TooMuchHeld(usize),
}

/// Why an RTMP connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before sending a byte (port probes, health checks).
    #[error("closed before the handshake")]
    ClosedEarly,
    /// The handshake failed.
    #[error("handshake: {0}")]
    Handshake(String),
    /// A chunk-layer violation.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A message that could not be parsed.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// The message kind.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Media the server does not accept (codec, bitstream).
    #[error("media: {0}")]
    Media(#[from] gopbus_proto::Error),
    /// The peer asked for something it may not do.
    #[error("refused: {0}")]
    Refused(String),
    /// No data for longer than the idle timeout.
    #[error("idle for longer than {0:?}")]
    Idle(std::time::Duration),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
}
