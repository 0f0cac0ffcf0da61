//! Shared services of gopbus, reachable from every part without going through
//! RTMP ingest: stream keys with the stream-name rule, the Redis connection,
//! and the Redis directory.
//!
//! # Role
//!
//! Ingest checks publishers' keys here; the REST API, WHEP and webhooks will
//! manage and look up streams here; relays find each other here. Subscriber
//! crates may use it; none of them imports `ingest`.
//!
//! # Layout
//!
//! - [`keys`]: stream keys in SQLite ([`KeyStore`]) or Redis ([`RedisKeys`]),
//!   behind [`Keys`]; [`keys::validate_name`], the stream-name rule.
//! - [`hook`]: [`PublishHook`], what ingest asks before a publish goes ahead.
//! - [`cluster`]: Redis, [`connect_redis`] with bounded waits, and [`RedisDirectory`].
#![warn(missing_docs)]

pub mod cluster;
mod error;
pub mod hook;
pub mod keys;

pub use cluster::{connect_redis, RedisDirectory, RedisLeases};
pub use error::StoreError;
pub use hook::{PublishHook, PublishRequest};
pub use keys::{KeyStore, Keys, RedisKeys, StreamRecord};
