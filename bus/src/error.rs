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
}
