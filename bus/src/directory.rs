//! The directory: which node holds which broadcast.
//!
//! In one process the bus itself knows what it holds. In a cluster it is Redis
//! (`gopbus_store::RedisDirectory`): a holder writes `gopbus:broadcast:NAME →
//! quic://node` with a TTL and refreshes it, so a dead node's entries disappear
//! by themselves. Relays and [`node::register`](crate::node::register) use this trait.

use std::future::Future;
use std::pin::Pin;

use crate::quic::QuicError;

/// The future a [`Directory`] method returns.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, QuicError>> + Send + 'a>>;

/// Broadcast name → the URL of the node that holds it.
pub trait Directory: Send + Sync + 'static {
    /// The node holding `broadcast`, if any.
    fn lookup<'a>(&'a self, broadcast: &'a str) -> BoxFut<'a, Option<String>>;
    /// Records (or refreshes) that `node` holds `broadcast`.
    fn register<'a>(&'a self, broadcast: &'a str, node: &'a str) -> BoxFut<'a, ()>;
}
