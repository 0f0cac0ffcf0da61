//! Errors of bus operations.

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Another publisher took the broadcast over; this handle is dead.
    #[error("another publisher took over the broadcast")]
    TakenOver,
    /// The broadcast has ended; this handle is dead.
    #[error("the broadcast has ended")]
    Ended,
    /// A frame was pushed before any GoP was opened.
    #[error("a frame was pushed before the first GoP was opened")]
    NoGop,
    /// A track was added to a broadcast that nobody publishes.
    #[error("broadcast {0:?} is not live")]
    NotLive(String),
    /// Another worker holds this derived track.
    #[error("track {0:?} is held by another worker")]
    TrackTaken(String),
    /// A derived track's name or GoP header is not acceptable.
    #[error("invalid track: {0}")]
    InvalidTrack(String),
    /// The broadcast has used every derived track id.
    #[error("broadcast {0:?} has no derived track id left")]
    TooManyTracks(String),
}
