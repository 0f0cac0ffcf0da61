//! The publish authorization hook's interface: ingest asks it, after the key
//! check, whether a publish may go ahead; the control plane implements it
//! over HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A publish that passed the key check, for a [`PublishHook`] to judge.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The stream's name.
    pub name: String,
    /// The stream key it presented.
    pub key: String,
    /// The publisher's address.
    pub peer: SocketAddr,
    /// The RTMP application it connected to (`live`, or `live/…`).
    pub app: String,
}

/// Asked whether a publish may go ahead, after its key was accepted (an
/// external authorization service: nginx-rtmp's `on_publish`).
pub trait PublishHook: Send + Sync {
    /// `Ok` allows; `Err` refuses, with the reason the publisher is told.
    fn check(&self, request: PublishRequest) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}
