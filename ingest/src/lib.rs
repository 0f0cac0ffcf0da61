//! RTMP ingest and RTMP play for gopbus.
//!
//! # Role
//!
//! Accepts RTMP connections. A publisher (OBS, ffmpeg) presents a secret stream
//! key, which the key store (`gopbus_store::Keys`: SQLite or Redis) maps to a public stream name; its media goes onto
//! the [`gopbus_bus::Bus`] as GoPs. A player asks for a public name and is a bus
//! subscriber like any other.
//!
//! # Contract
//!
//! - Zero-copy: media payloads stay slices of the socket read buffer from chunk
//!   reassembly ([`chunk::ChunkDecoder`]) through the bus to the players' vectored
//!   writes ([`chunk::ChunkEncoder`]); only chunk headers and FLV tag headers are
//!   written per frame and per player.
//! - One driver task per connection, and one task per group of caught-up
//!   players of a broadcast that writes to all of them per frame
//!   ([`fanout`](crate::server)), both on the event loop the connection was
//!   given at accept (`loops`); admission is bounded; handshake and idle
//!   time are limited. A bad peer is disconnected with a logged reason and never
//!   disturbs another connection.
//! - Ingest never reaches into subscribers; subscribers never reach into ingest.
//!
//! # Layout
//!
//! - [`chunk`]: the RTMP chunk layer, both directions.
//! - [`flow`]: a connection's command flow (connect, createStream,
//!   publish/play, FCPublish/FCUnpublish, deleteStream, deadlines), sans-IO:
//!   bytes and time in, replies and actions out; key checks are requests the
//!   driver answers.
//! - [`session`](crate::server): the per-connection driver: socket, timers, and
//!   what the flow asks of the bus and the key store.
//! - [`publish`], [`play`]: sans-IO media adapters to and from the bus.
//! - `fanout`: groups of players served by one task per broadcast.
//! - `loops`: the event-loop threads connections are spread over.
//! - [`timeline`]: 32-bit timestamp unwrapping and takeover rebasing.
#![warn(missing_docs)]

pub mod amf;
pub mod chunk;
mod error;
mod fanout;
pub mod flow;
mod loops;
pub mod play;
pub mod publish;
mod server;
mod session;
pub mod timeline;

pub use error::{ChunkError, SessionError};
pub use server::{Ingest, IngestConfig, IngestStats, PublisherInfo};
