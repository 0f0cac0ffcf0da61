//! The RTMP listener: bounded admission, one driver task per connection, and the
//! registry of live publishers (for takeover and key revocation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use gopbus_bus::Bus;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::session;
use gopbus_store::keys::{KeyHash, Keys};
use gopbus_store::PublishHook;

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The RTMP application name in publish and play URLs (`rtmp://host/APP/...`).
    pub app: String,
    /// Most connections at once; more are refused at accept.
    pub max_connections: usize,
    /// Time allowed for the RTMP handshake.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (players send
    /// acknowledgements; publishers send media).
    pub idle_timeout: Duration,
    /// Largest RTMP message accepted.
    pub max_message: usize,
    /// Chunk size gopbus sends with.
    pub out_chunk_size: usize,
    /// Bytes queued for one player before gopbus stops pulling from the bus for it.
    pub player_queue: usize,
    /// Most connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Time after the handshake for `connect` and then `publish` or `play`.
    pub command_timeout: Duration,
    /// How long a player may wait for a broadcast that is not live.
    pub play_wait_timeout: Duration,
    /// The largest GoP a publisher may send (bytes, duration).
    pub gop_limits: crate::publish::GopLimits,
    /// Most caught-up players of one broadcast served by one task (0: every
    /// player by its own task). See the `fanout` module.
    pub player_group: usize,
    /// How long a grouped player's audio may wait to go out with the next
    /// video message; held longer, it goes with the next message of any kind
    /// (zero: written at once).
    pub audio_hold: Duration,
    /// Event-loop threads RTMP connections are spread over, each a
    /// single-threaded runtime (see the `loops` module); 0 runs them on the
    /// runtime that calls [`Ingest::run`].
    pub threads: usize,
    /// Connections an event loop takes before the next loop gets any; once
    /// every loop has that many, a connection goes to the loop with the
    /// fewest (0: the fewest from the first connection on). See the `loops`
    /// module.
    pub loop_fill: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            app: "live".into(),
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_message: 8 << 20,
            out_chunk_size: 4096,
            player_queue: 512 * 1024,
            max_connections_per_ip: 256,
            command_timeout: Duration::from_secs(10),
            play_wait_timeout: Duration::from_secs(600),
            gop_limits: crate::publish::GopLimits::default(),
            player_group: 64,
            audio_hold: Duration::from_millis(50),
            threads: 0,
            loop_fill: 64,
        }
    }
}

/// A publisher that is live now.
pub(crate) struct LivePublisher {
    pub(crate) key: KeyHash,
    pub(crate) session: u64,
    /// Cancelled when the key is revoked.
    pub(crate) revoked: CancellationToken,
    /// Cancelled when an operator kicks it.
    pub(crate) kicked: CancellationToken,
    /// Its address.
    pub(crate) peer: SocketAddr,
    /// The event loop it runs on (where its broadcast's player groups run).
    pub(crate) on: usize,
}

/// An accepted socket on its way to its connection task.
enum Accepted {
    /// Stays on the runtime that accepted it.
    Here(tokio::net::TcpStream),
    /// Goes to an event loop (registered there by [`into_tokio`](Self::into_tokio), on the loop).
    Moved(std::net::TcpStream),
}

impl Accepted {
    fn into_tokio(self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            Self::Here(s) => Ok(s),
            Self::Moved(s) => tokio::net::TcpStream::from_std(s),
        }
    }
}

/// A live RTMP publisher, as [`Ingest::publisher`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherInfo {
    /// The connection's id in the log (`rtmp{id=…}`).
    pub session: u64,
    /// The publisher's address.
    pub peer: SocketAddr,
}

/// The RTMP server. Share it with `Arc`.
pub struct Ingest {
    pub(crate) bus: Bus,
    pub(crate) keys: Keys,
    pub(crate) config: IngestConfig,
    pub(crate) live: DashMap<String, LivePublisher>,
    pub(crate) hook: Option<Arc<dyn PublishHook>>,
    next_session: AtomicU64,
    /// Connections open per IP address.
    per_ip: DashMap<std::net::IpAddr, usize>,
    /// When the per-address limit was last logged (ms since the start), to log it once a second.
    per_ip_logged: AtomicU64,
    started: std::time::Instant,
    /// Counters for metrics.
    pub(crate) stats: IngestStats,
    /// Groups of caught-up players.
    pub(crate) groups: Arc<crate::fanout::Groups>,
    /// Connections on each event loop, once the loops run.
    loop_counts: std::sync::OnceLock<Arc<[std::sync::atomic::AtomicUsize]>>,
}

/// What ingest counts, for metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// RTMP connections open now.
    pub connections: std::sync::atomic::AtomicUsize,
    /// RTMP connections accepted since the start.
    pub accepted: AtomicU64,
    /// Connections refused at accept (the connection limit).
    pub refused: AtomicU64,
    /// Bytes read from RTMP connections (publishers' media, players' acknowledgements).
    pub bytes_in: AtomicU64,
}

impl Ingest {
    /// A server publishing onto `bus`, authorizing keys with `keys`.
    pub fn new(bus: Bus, keys: Keys, config: IngestConfig) -> Arc<Self> {
        Self::with_hook(bus, keys, config, None)
    }

    /// Like [`new`](Self::new); a publish whose key is valid is also put to `hook`.
    pub fn with_hook(bus: Bus, keys: Keys, config: IngestConfig, hook: Option<Arc<dyn PublishHook>>) -> Arc<Self> {
        let groups = Arc::new(crate::fanout::Groups::new(crate::fanout::GroupConfig {
            size: config.player_group,
            audio_hold: config.audio_hold,
            player_queue: config.player_queue,
            chunk_size: config.out_chunk_size,
            loops: config.threads,
        }));
        Arc::new(Self {
            bus,
            keys,
            groups,
            config,
            live: DashMap::new(),
            hook,
            next_session: AtomicU64::new(1),
            loop_counts: std::sync::OnceLock::new(),
            per_ip: DashMap::new(),
            per_ip_logged: AtomicU64::new(0),
            started: std::time::Instant::now(),
            stats: IngestStats::default(),
        })
    }

    /// The RTMP publisher of `name` on this node, if any.
    pub fn publisher(&self, name: &str) -> Option<PublisherInfo> {
        self.live.get(name).map(|p| PublisherInfo { session: p.session, peer: p.peer })
    }

    /// The hash of the stream key the RTMP publisher of `name` on this node
    /// was let in with: what proves the name to a bus node (see
    /// `gopbus_bus::node::forward_with_keys`).
    pub fn key_hash(&self, name: &str) -> Option<KeyHash> {
        self.live.get(name).map(|p| p.key)
    }

    /// Disconnects the RTMP publisher of `name` (the broadcast ends with
    /// [`EndReason::Kicked`](gopbus_proto::EndReason::Kicked)); false if it
    /// has none on this node. Its key still works unless it is also revoked.
    pub fn kick(&self, name: &str) -> bool {
        let Some(p) = self.live.get(name) else { return false };
        tracing::info!(broadcast = %name, session = p.session, peer = %p.peer, "publisher kicked by the operator");
        p.kicked.cancel();
        true
    }

    /// Its counters.
    pub const fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// RTMP connections on each event loop now (empty without loops; see
    /// `IngestConfig::threads`).
    pub fn loop_connections(&self) -> Vec<usize> {
        self.loop_counts.get().map_or_else(Vec::new, |c| c.iter().map(|n| n.load(Ordering::Relaxed)).collect())
    }

    /// RTMP players served by a group now (see `IngestConfig::player_group`), and the groups.
    pub fn grouped_players(&self) -> (usize, usize) {
        self.groups.counts()
    }

    /// The bus this server publishes to.
    pub const fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Accepts connections until `shutdown`, then waits (up to 5 s) for them to close.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let tracker = TaskTracker::new();
        let loops = match self.config.threads {
            0 => None,
            n => match crate::loops::Loops::start(n, self.config.loop_fill) {
                Ok(loops) => {
                    let fill = self.config.loop_fill;
                    tracing::info!(threads = n, fill, "RTMP connections run on {n} event loops");
                    self.groups.set_loops(loops.handles());
                    let _ = self.loop_counts.set(loops.counts());
                    Some(loops)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the RTMP event loops; connections run on the main runtime");
                    None
                }
            },
        };
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if !self.admit(peer.ip()) {
                drop(stream);
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.leave(peer.ip());
                tracing::warn!(%peer, limit = self.config.max_connections, "connection refused: too many connections");
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            };
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            let this = self.clone();
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("rtmp", id, %peer, broadcast = tracing::field::Empty);
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            // On an event loop, the socket moves to that loop's reactor:
            // deregistered here, registered there by the task.
            let (handle, placed, stream) = match &loops {
                None => (None, None, Ok(Accepted::Here(stream))),
                Some(loops) => {
                    let (handle, placed) = loops.place();
                    (Some(handle), Some(placed), stream.into_std().map(Accepted::Moved))
                }
            };
            let connection = async move {
                let _placed = placed;
                let ingest = this.clone();
                let result = match stream.and_then(Accepted::into_tokio) {
                    Ok(stream) => session::run(this, stream, id, shutdown).await,
                    Err(e) => Err(e.into()),
                };
                ingest.stats.connections.fetch_sub(1, Ordering::Relaxed);
                ingest.leave(peer.ip());
                match result {
                    Ok(()) => tracing::info!("connection closed"),
                    Err(crate::SessionError::ClosedEarly) => {
                        tracing::debug!("connection closed before the handshake")
                    }
                    Err(e) => tracing::warn!(error = %e, "connection closed with error"),
                }
                drop(permit);
            }
            .instrument(span);
            match handle {
                None => tracker.spawn(connection),
                Some(handle) => tracker.spawn_on(connection, handle),
            };
        }
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
            tracing::warn!("connections still open 5 s after shutdown");
        }
        if let Some(loops) = loops {
            loops.stop().await;
        }
    }

    /// Counts a connection from `ip`; false (logged at most once a second) past the per-address limit.
    fn admit(&self, ip: std::net::IpAddr) -> bool {
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            drop(n);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let now = self.started.elapsed().as_millis() as u64;
            let last = self.per_ip_logged.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self.per_ip_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                tracing::warn!(%ip, limit = self.config.max_connections_per_ip, "connection refused: too many connections from one address");
            }
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: std::net::IpAddr) {
        self.per_ip.remove_if_mut(&ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// Checks every live publisher's key against the store and disconnects those
    /// whose key no longer belongs to their stream (rotated, or stream deleted).
    /// A store that cannot be reached disconnects nobody (it is logged).
    pub async fn revalidate_keys(&self) {
        // Snapshot first: no map lock is held across store calls.
        let live: Vec<(String, KeyHash, CancellationToken)> =
            self.live.iter().map(|e| (e.key().clone(), e.key, e.revoked.clone())).collect();
        for (name, key, revoked) in live {
            match self.keys.name_for(key).await {
                Ok(Some(n)) if n == name => {}
                Ok(_) => {
                    tracing::info!(broadcast = %name, "stream key revoked; disconnecting publisher");
                    revoked.cancel();
                }
                Err(e) => tracing::warn!(broadcast = %name, error = %e, "cannot recheck stream key; publisher kept"),
            }
        }
    }

    /// Revalidates keys whenever another process changes the store (checked
    /// every `every`), until `shutdown`.
    pub async fn watch_keys(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut last = self.keys.version().await.ok();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.keys.version().await.ok();
            if now.is_some() && now != last {
                self.revalidate_keys().await;
            }
            last = now;
        }
    }

    /// Binds `addr` and runs until `shutdown`.
    pub async fn bind_and_run(self: Arc<Self>, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        self.run(listener, shutdown).await;
        Ok(())
    }
}
