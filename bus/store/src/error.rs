//! Errors of the shared services.

/// Errors of the stream-key store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Redis (the shared key store) failed or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// Creating the data directory failed.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The name breaks the naming rule.
    #[error(
        "invalid stream name {0:?}: use 1-64 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    InvalidName(String),
    /// A stream with this name exists.
    #[error("stream {0:?} already exists")]
    Exists(String),
    /// No stream with this name.
    #[error("stream {0:?} not found")]
    NotFound(String),
    /// The system random source failed.
    #[error("random source: {0}")]
    Random(String),
}
