//! Errors of the QUIC transport.

/// Why a QUIC bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuicError {
    /// Bad settings: URL, certificate files.
    #[error("configuration: {0}")]
    Config(String),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection broke.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer refused the connection (for example a wrong bus token).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The broadcast does not exist.
    #[error("broadcast {0:?} not found")]
    NotFound(String),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl From<quinn::ConnectionError> for QuicError {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                Self::Refused(String::from_utf8_lossy(&c.reason).into_owned())
            }
            other => Self::Connection(other.to_string()),
        }
    }
}

impl From<quinn::WriteError> for QuicError {
    fn from(e: quinn::WriteError) -> Self {
        Self::Connection(e.to_string())
    }
}

impl From<quinn::ReadError> for QuicError {
    fn from(e: quinn::ReadError) -> Self {
        Self::Connection(e.to_string())
    }
}

impl From<quinn::ClosedStream> for QuicError {
    fn from(e: quinn::ClosedStream) -> Self {
        Self::Connection(e.to_string())
    }
}

impl From<gopbus_proto::Error> for QuicError {
    fn from(e: gopbus_proto::Error) -> Self {
        Self::Protocol(e.to_string())
    }
}
