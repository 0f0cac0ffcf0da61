//! The gopbus media bus: GoP-channel publish/subscribe.
//!
//! # Role
//!
//! A publisher pushes a broadcast as a sequence of GoPs; every GoP opens with a
//! [`GopHeader`](gopbus_proto::GopHeader) that carries the decoder configuration of
//! every track, so a subscriber can start at any GoP. Subscribers each have their
//! own cursor and never slow the publisher or each other.
//!
//! # Contract (see `DESIGN.md`, "The bus contract")
//!
//! 1. Zero-copy: frames are handed out as clones of [`Frame`](gopbus_proto::Frame),
//!    whose payload is reference-counted; fan-out never copies or allocates.
//! 2. Reliable inside a GoP: a subscriber sees every frame of a GoP it is in, in
//!    order, or an [`Event::CutShort`] / [`Event::Skipped`] saying it did not.
//! 3. Never blocks the publisher: pushing takes a short write lock and wakes the
//!    waiting subscribers; it never waits for any of them.
//! 4. Instant start: a new subscriber starts at the current GoP's first frame, or at
//!    the next GoP if it asks ([`StartAt`]).
//! 5. Bounded memory: per broadcast, the current GoP plus [`BusConfig::window`]
//!    past GoPs; per subscriber, a cursor (a GoP number, an index and a weak
//!    reference), whatever it does.
//! 6. Explicit end: a broadcast ends once, with an [`EndReason`](gopbus_proto::EndReason).
//!
//! The layering rule: `bus` knows nothing about codecs. It stores the GoP header
//! and frames it is given and never looks inside a payload.
//!
//! # Layout
//!
//! - [`broker`]: [`Bus`], the in-process broker: names to broadcasts.
//! - [`broadcast`]: the shared GoP window of one broadcast.
//! - [`publisher`], [`subscriber`]: the two handles.
//! - [`tracks`]: [`TrackSubscriber`], chosen tracks (published and derived) merged.
//! - [`quic`]: the same across machines; [`directory`]: which node holds what.
//! - [`audience`]: viewers, bytes sent and GoPs skipped per broadcast and protocol.
//! - [`node`]: what nodes are made of: a reconnecting subscriber, the
//!   forwarder, directory registration, backoff; and [`EventSource`], what
//!   subscriber crates read.
//!
//! Tracks: a broadcast's derived tracks (the Opus audio made from its AAC, a
//! 480p rendition) are added by workers with [`Bus::add_track`] — no stream key,
//! no takeover — and live on the bus as broadcasts named `NAME/TRACK` whose
//! GoPs start where the source's do. [`Bus::catalog`] lists a broadcast's
//! tracks; [`Bus::announcements`] says when broadcasts start, change tracks
//! and end.
#![warn(missing_docs)]

pub mod audience;
pub mod broadcast;
pub mod broker;
pub mod directory;
mod error;
pub mod groups;
pub mod lease;
pub mod node;
pub mod publisher;
pub mod quic;
pub mod subscriber;
pub mod tracks;

pub use audience::{Audience, Counts, Protocol, Viewer};
pub use broadcast::BroadcastStats;
pub use broker::{Announcements, BroadcastInfo, Bus, BusConfig, ANNOUNCEMENT_BACKLOG};
pub use error::BusError;
pub use gopbus_proto::catalog::{Announcement, Catalog};
pub use gopbus_proto::wire::StartAt;
pub use node::EventSource;
pub use publisher::Publisher;
pub use subscriber::{BroadcastWake, Event, SubscribeOptions, Subscriber};
pub use tracks::TrackSubscriber;
