//! Errors of the QUIC transport.

use gopbus_proto::wire::ErrorCode;

use crate::BusError;

/// Why a QUIC bus operation failed. Callers match on the variant: a broadcast
/// that does not exist ([`NotFound`](Self::NotFound)), a peer that refused us
/// ([`Refused`](Self::Refused)), a connection that broke
/// ([`is_connection_lost`](Self::is_connection_lost)), …
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuicError {
    /// Bad settings: URL, certificate files.
    #[error("configuration: {0}")]
    Config(String),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Connecting failed (nothing answered, the handshake failed).
    #[error("connect: {0}")]
    Connect(String),
    /// The connection broke.
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] quinn::ConnectionError),
    /// The connection or its control stream is gone (closed on this side or
    /// the peer's, no further detail).
    #[error("connection closed")]
    Closed,
    /// A stream could not be written (the peer stopped it, the connection broke).
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// A stream could not be read (the peer reset it, the connection broke).
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer refused the connection (a wrong bus token), with its reason.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The broadcast does not exist on the peer.
    #[error("broadcast {0:?} not found")]
    NotFound(String),
    /// The derived track is held by another worker.
    #[error("track {0:?} is held by another worker")]
    Taken(String),
    /// The peer turned a request down for another reason.
    #[error("request refused ({code:?}): {message}")]
    Rejected {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A message did not decode.
    #[error("malformed message: {0}")]
    Malformed(#[from] gopbus_proto::Error),
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The local bus refused (a track taken, a broadcast not live).
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The directory (Redis) failed.
    #[error("directory: {0}")]
    Directory(String),
}

impl QuicError {
    /// Whether the connection (not just one request) is gone: reconnect.
    pub const fn is_connection_lost(&self) -> bool {
        matches!(self, Self::ConnectionLost(_) | Self::Closed | Self::Timeout(_))
    }

    /// The error a peer's `Error` answer to a request about `broadcast` means.
    pub(crate) fn from_peer(code: ErrorCode, broadcast: &str, message: String) -> Self {
        match code {
            ErrorCode::NotFound => Self::NotFound(broadcast.to_owned()),
            ErrorCode::Taken => Self::Taken(broadcast.to_owned()),
            ErrorCode::Refused => Self::Refused(message),
            code => Self::Rejected { code, message },
        }
    }

    /// The code to answer a peer's request with when it failed with `self`.
    pub(crate) const fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) | Self::Bus(BusError::NotLive(_)) => ErrorCode::NotFound,
            Self::Taken(_) | Self::Bus(BusError::TrackTaken(_)) => ErrorCode::Taken,
            Self::Refused(_) => ErrorCode::Refused,
            Self::Bus(BusError::InvalidTrack(_)) | Self::Protocol(_) | Self::Malformed(_) => ErrorCode::Invalid,
            _ => ErrorCode::Internal,
        }
    }
}

impl From<quinn::ConnectionError> for QuicError {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            // The peer closed with a reason: a refusal (a bad token), or it is shutting down.
            quinn::ConnectionError::ApplicationClosed(c) => {
                Self::Refused(String::from_utf8_lossy(&c.reason).into_owned())
            }
            other => Self::ConnectionLost(other),
        }
    }
}

impl From<quinn::ClosedStream> for QuicError {
    fn from(_: quinn::ClosedStream) -> Self {
        Self::Closed
    }
}
