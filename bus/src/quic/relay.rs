//! A relay's upstream: fetch a broadcast this node lacks from the node that has
//! it, once, into the local bus; let go of it a while after its last local
//! subscriber leaves.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gopbus_proto::wire::StartAt;
use tokio_util::sync::CancellationToken;

use super::{BusClient, QuicError, RemoteSubscription, Upstream};
use crate::directory::Directory;
use crate::Bus;

/// Where a relay looks for broadcasts it lacks.
pub enum Source {
    /// Always this node (`--upstream quic://…`).
    Fixed(String),
    /// Whichever node the directory names.
    Directory(Arc<dyn Directory>),
}

struct Fetch {
    sub: RemoteSubscription,
    idle_since: Option<Instant>,
}

/// Fetches broadcasts from upstream nodes into the local bus.
pub struct Relay {
    bus: Bus,
    source: Source,
    token: String,
    client_config: quinn::ClientConfig,
    /// This node's own address, never fetched from.
    own_url: Option<String>,
    linger: Duration,
    clients: Mutex<HashMap<String, Arc<BusClient>>>,
    active: Mutex<HashMap<String, Fetch>>,
    /// One fetch at a time per broadcast, so two local subscribers never start
    /// two upstream subscriptions (and two local publishers) for one broadcast;
    /// fetches of different broadcasts never wait for each other.
    fetch_locks: KeyedLocks,
    /// One connection attempt at a time per upstream URL.
    connect_locks: KeyedLocks,
}

/// An async lock per key; a key's lock goes once nobody holds or waits for it.
#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    fn of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(key.to_owned()).or_default().clone()
    }
}

impl Relay {
    /// A relay filling `bus` from `source`.
    pub fn new(bus: Bus, source: Source, token: String, client_config: quinn::ClientConfig) -> Arc<Self> {
        Arc::new(Self {
            bus,
            source,
            token,
            client_config,
            own_url: None,
            linger: Duration::from_secs(5),
            clients: Default::default(),
            active: Default::default(),
            fetch_locks: KeyedLocks::default(),
            connect_locks: KeyedLocks::default(),
        })
    }

    /// Sets this node's advertised URL (a directory entry pointing here is ignored)
    /// and how long an unwatched broadcast is kept.
    pub fn configure(self: &mut Arc<Self>, own_url: Option<String>, linger: Duration) {
        if let Some(me) = Arc::get_mut(self) {
            me.own_url = own_url;
            me.linger = linger;
        }
    }

    /// Broadcasts being fetched now.
    pub fn fetching(&self) -> Vec<String> {
        let mut v: Vec<String> = self.active.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    /// Drops fetched broadcasts nobody has watched for the linger time, until `shutdown`.
    pub async fn reap(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            active.retain(|name, f| {
                if f.sub.is_finished() {
                    tracing::info!(broadcast = %name, "upstream broadcast ended");
                    return false;
                }
                if self.bus.subscriber_count(name) > 0 {
                    f.idle_since = None;
                    return true;
                }
                let since = *f.idle_since.get_or_insert(now);
                if now.duration_since(since) >= self.linger {
                    tracing::info!(broadcast = %name, "no local subscriber left; upstream subscription released");
                    return false;
                }
                true
            });
        }
    }

    async fn client(&self, url: &str) -> Result<Arc<BusClient>, QuicError> {
        let open = |clients: &HashMap<String, Arc<BusClient>>| clients.get(url).filter(|c| !c.is_closed()).cloned();
        if let Some(c) = open(&self.clients.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(c);
        }
        // One attempt per upstream at a time; other upstreams do not wait for it.
        let lock = self.connect_locks.of(url);
        let _connecting = lock.lock().await;
        if let Some(c) = open(&self.clients.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(c);
        }
        let c = Arc::new(BusClient::connect(url, &self.token, self.client_config.clone()).await?);
        tracing::info!(upstream = %url, "connected upstream");
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned(), c.clone());
        Ok(c)
    }

    async fn fetch_inner(&self, broadcast: String) -> Result<(), QuicError> {
        let lock = self.fetch_locks.of(&broadcast);
        let _one_at_a_time = lock.lock().await;
        {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.get(&broadcast).is_some_and(|f| !f.sub.is_finished()) {
                return Ok(());
            }
        }
        let url = match &self.source {
            Source::Fixed(u) => u.clone(),
            Source::Directory(d) => match d.lookup(&broadcast).await? {
                Some(u) if Some(&u) != self.own_url.as_ref() => u,
                _ => return Err(QuicError::NotFound(broadcast)),
            },
        };
        let client = self.client(&url).await?;
        let sub = client.subscribe_into(&broadcast, StartAt::CurrentGop, &self.bus).await?;
        tracing::info!(broadcast = %broadcast, upstream = %url, "fetching from upstream");
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.insert(broadcast, Fetch { sub, idle_since: None });
        Ok(())
    }
}

impl Upstream for Relay {
    fn fetch(&self, broadcast: String) -> Pin<Box<dyn Future<Output = Result<(), QuicError>> + Send + '_>> {
        Box::pin(self.fetch_inner(broadcast))
    }
}
