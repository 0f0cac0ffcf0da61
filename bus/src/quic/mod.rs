//! The QUIC transport of the bus (quinn): the same publish/subscribe across machines.
//!
//! A QUIC connection has one bidirectional **control stream** (hello with the
//! bus token, then announce/subscribe requests and their answers, and end
//! notices) and one unidirectional stream per **GoP sub-channel**: a
//! [`StreamHeader`](gopbus_proto::wire::StreamHeader) (request id, track, GoP
//! header), then frames, each a framed [`FrameHeader`](gopbus_proto::FrameHeader)
//! followed by its payload bytes. Payloads go to `write_chunk` and come from
//! `read_chunk` as `Bytes`: never copied.
//!
//! Both directions are bridges to an in-process [`Bus`](crate::Bus):
//!
//! - [`egress`] reads a local [`Subscriber`](crate::Subscriber) and sends its GoPs:
//!   a server answering a subscription, or a client publishing.
//! - [`ingress`] receives GoP streams and replays them into a local
//!   [`Publisher`](crate::Publisher): a client's subscription, or a server
//!   receiving an announced broadcast.
//!
//! So a remote subscriber is a local subscriber of a bus that a bridge fills;
//! code that consumes broadcasts does not know which transport filled it.
//!
//! Newer GoPs are sent with higher priority than older ones, audio higher than
//! video; a subscriber that falls behind keeps at most [`IN_FLIGHT_GOPS`] GoPs in
//! flight and older GoP streams are reset, not queued.

mod client;
mod conn;
mod egress;
mod error;
mod group;
mod ingress;
mod io;
mod merge;
mod proof;
pub mod relay;
mod server;
pub mod tls;

pub use client::{
    BusClient, RemotePublication, RemoteSubscriber, RemoteSubscription, RemoteTrackSubscriber, RemoteWatch,
};
pub use error::QuicError;
pub use group::GROUP_SIZE;
pub(crate) use merge::replayed;
pub use proof::{AnnounceKeys, AnnouncePolicy, KeyHashFut};
pub use relay::{Relay, Source};
pub use server::{
    BusServer, ServerStats, Upstream, AUDIO_HOLD, MAX_CONNECTIONS, MAX_REQUESTS_PER_CONNECTION, RESUME_GRACE,
};

/// The ALPN protocol id of the bus.
pub const ALPN: &[u8] = b"gopbus/1";

/// Finished GoPs whose streams may still be in flight to one subscriber; older
/// ones are reset.
pub const IN_FLIGHT_GOPS: usize = 2;

/// Splits `quic://HOST:PORT` into the TLS server name and a resolved address.
pub fn parse_url(url: &str) -> Result<(String, std::net::SocketAddr), QuicError> {
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("quic://").ok_or_else(|| QuicError::Config(format!("{url}: not a quic:// URL")))?;
    let rest = rest.trim_end_matches('/');
    let host = match rest.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => return Err(QuicError::Config(format!("{url}: no port"))),
    };
    let addr = rest
        .to_socket_addrs()
        .map_err(|e| QuicError::Config(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| QuicError::Config(format!("{url}: host does not resolve")))?;
    Ok((host, addr))
}

/// GoP streams a peer that publishes (announces broadcasts or adds tracks)
/// may have open toward us at once.
pub(crate) const PUBLISHER_UNI_STREAMS: u32 = 4096;

/// GoP streams a server lets a new connection open before it publishes
/// anything. quinn keeps a slot (~17 bytes of hash table) per stream a peer
/// may open, made up front: 4096 of them cost a subscriber's connection
/// ~140 KB at the relay for streams a subscriber never opens. A connection is
/// raised to [`PUBLISHER_UNI_STREAMS`] when it first announces.
pub(crate) const NEW_PEER_UNI_STREAMS: u32 = 16;

/// QUIC transport settings of a client.
pub(crate) fn transport() -> quinn::TransportConfig {
    transport_with(PUBLISHER_UNI_STREAMS)
}

/// QUIC transport settings of a server: few stream slots until a peer publishes.
pub(crate) fn server_transport() -> quinn::TransportConfig {
    transport_with(NEW_PEER_UNI_STREAMS)
}

fn transport_with(uni_streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(uni_streams));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(16));
    // Bounded receive windows: a subscriber that reads slowly pushes back on its
    // sender (which then skips GoPs for it) instead of buffering without limit.
    t.stream_receive_window(quinn::VarInt::from_u32(2 << 20));
    t.receive_window(quinn::VarInt::from_u32(8 << 20));
    t.send_window(8 << 20);
    t.keep_alive_interval(Some(std::time::Duration::from_millis(1000)));
    // 4 s without any packet: the peer is gone (a killed node is noticed quickly,
    // so subscribers reconnect within a few seconds).
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(4_000))));
    // The RTT assumed before the first sample sets how long a lost handshake
    // packet waits for its retransmission: RFC 9002's 333 ms makes that ~1 s. A
    // busy relay's UDP socket does drop datagrams in bursts, so a new subscriber
    // then waited a second. Bus nodes are servers talking to servers (Chromium's
    // QUIC starts from 100 ms too): ~300 ms.
    t.initial_rtt(std::time::Duration::from_millis(100));
    t
}
