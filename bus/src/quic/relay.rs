//! A relay's upstream: fetch a broadcast this node lacks from the node that has
//! it, once, into the local bus; let go of it a while after its last local
//! subscriber leaves.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gopbus_proto::wire::StartAt;
use tokio_util::sync::CancellationToken;

use super::ingress::{Held, Hold, Merger};
use super::{BusClient, QuicError, RemoteSubscription, Upstream, RESUME_GRACE};
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
    /// Fetched broadcasts whose upstream link dropped, held open while they are fetched again.
    held: Held,
    /// How long one is held.
    grace: Duration,
    /// Held broadcasts being fetched again now.
    resuming: Mutex<HashSet<String>>,
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
            held: Held::default(),
            grace: RESUME_GRACE,
            resuming: Mutex::default(),
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

    /// How long a fetched broadcast whose upstream link dropped is held open
    /// (local subscribers stay attached) while the relay fetches it again,
    /// from the same upstream or whichever node the directory names; zero ends
    /// it at once.
    pub fn with_resume_grace(self: &mut Arc<Self>, grace: Duration) {
        if let Some(me) = Arc::get_mut(self) {
            me.grace = grace;
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
            let lost: Vec<String> = {
                let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
                active.keys().filter(|n| self.held.resume_point(n).is_some()).cloned().collect()
            };
            for name in lost {
                if self.resuming.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone()) {
                    tokio::spawn(self.clone().resume(name, shutdown.clone()));
                }
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

    /// Fetches a held broadcast again until that works or it is no longer held.
    async fn resume(self: Arc<Self>, name: String, shutdown: CancellationToken) {
        let mut backoff = crate::node::Backoff::new(Duration::from_secs(2));
        while self.held.resume_point(&name).is_some() {
            match self.fetch_inner(name.clone()).await {
                Ok(()) => break,
                Err(e) => tracing::debug!(broadcast = %name, error = %e, "fetching a held broadcast again failed"),
            }
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        self.resuming.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
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
        // Not waiting for the welcome: the first subscription leaves with the hello
        // (a refused hello fails it, and the closed client is not used again).
        let c = Arc::new(BusClient::open(url, &self.token, self.client_config.clone(), None).await?);
        tracing::info!(upstream = %url, "connected upstream");
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned(), c.clone());
        Ok(c)
    }

    async fn fetch_inner(&self, broadcast: String) -> Result<(), QuicError> {
        let lock = self.fetch_locks.of(&broadcast);
        let _one_at_a_time = lock.lock().await;
        {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.get(&broadcast).is_some_and(|f| !f.sub.is_finished())
                && self.held.resume_point(&broadcast).is_none()
            {
                return Ok(());
            }
        }
        let resume = self.held.resume_point(&broadcast);
        let url = match &self.source {
            Source::Fixed(u) => u.clone(),
            Source::Directory(d) => match d.lookup(&broadcast).await? {
                Some(u) if Some(&u) != self.own_url.as_ref() => u,
                _ => return Err(QuicError::NotFound(broadcast)),
            },
        };
        let client = self.client(&url).await?;
        let merger = Merger::resuming_after(resume.flatten());
        let hold = Hold { grace: self.grace, held: self.held.clone() };
        let sub = client.subscribe_merging(&broadcast, StartAt::CurrentGop, &self.bus, merger, Some(hold)).await?;
        self.held.release(&broadcast);
        tracing::info!(broadcast = %broadcast, upstream = %url, resuming = resume.is_some(), "fetching from upstream");
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
