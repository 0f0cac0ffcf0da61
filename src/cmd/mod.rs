//! One module per subcommand: its flags (the shared blocks of [`crate::config`])
//! and its `run`.

pub(crate) mod dump;
pub(crate) mod hls;
pub(crate) mod ingest;
pub(crate) mod relay;
pub(crate) mod serve;
pub(crate) mod streams;
pub(crate) mod transcode;
pub(crate) mod webrtc;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gopbus_store::{KeyStore, Keys, RedisKeys};

/// The key store: Redis when a URL is given, else SQLite in `data`.
pub(crate) async fn open_keys(data: &Path, redis: Option<&str>) -> anyhow::Result<Keys> {
    Ok(match redis {
        Some(url) => Keys::Redis(RedisKeys::connect(url).await.context("opening the stream keys in Redis")?),
        None => Keys::Sqlite(Arc::new(
            KeyStore::open(data).with_context(|| format!("opening the stream database in {}", data.display()))?,
        )),
    })
}
