//! Accepting bus connections: remote publishers announce broadcasts into the local
//! bus; remote subscribers get the local bus's broadcasts.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gopbus_proto::wire::{Control, ErrorCode, Message, StartAt, VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::conn::{accept_streams, write_control, Routes};
use super::egress::send_broadcast;
use super::group::Groups;
use super::ingress::{merge_into, Held, Hold, Merger, Piece};
use super::io::{Encoder, Reader, Writer};
use super::proof::{check_proof, AnnounceKeys, AnnouncePolicy};
use super::QuicError;
use crate::{Bus, SubscribeOptions};

/// Where a relay gets broadcasts it does not have: it subscribes upstream once
/// into the local bus (`fetch`), and local subscribers share that subscription.
pub trait Upstream: Send + Sync + 'static {
    /// Makes sure `broadcast` is being fetched into the local bus; errors with
    /// [`QuicError::NotFound`] when no node has it.
    fn fetch(&self, broadcast: String) -> Pin<Box<dyn Future<Output = Result<(), QuicError>> + Send + '_>>;
}

/// A QUIC bus endpoint serving one local [`Bus`].
pub struct BusServer {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

struct Shared {
    bus: Bus,
    token: String,
    /// A second token that may only subscribe, watch and list.
    subscribe_token: Option<String>,
    upstream: Option<Arc<dyn Upstream>>,
    not_found_after: Duration,
    stats: ServerStats,
    /// Most connections at once (handshaking or open).
    max_connections: usize,
    /// How long an announced broadcast whose publisher's link dropped is held open.
    resume_grace: Duration,
    held: Held,
    /// Which announces are accepted, and where stream keys are found.
    announce_policy: AnnouncePolicy,
    announce_keys: Option<Arc<dyn AnnounceKeys>>,
    /// How long an audio frame sent to a subscriber may wait for the next video frame.
    audio_hold: Duration,
}

/// How long an audio frame may wait for the next video frame on its way to a
/// remote subscriber, by default: it then leaves in the same datagrams (a
/// 30 fps video frame follows within 34 ms).
pub const AUDIO_HOLD: Duration = Duration::from_millis(50);

/// How long a broadcast whose upstream link dropped is held open for it to come back, by default.
pub const RESUME_GRACE: Duration = Duration::from_secs(10);

/// Connections a bus server takes at once by default.
pub const MAX_CONNECTIONS: usize = 4096;

/// What a [`BusServer`] counts, for metrics: cheap to clone, readable while it runs.
#[derive(Clone, Default)]
pub struct ServerStats {
    inner: Arc<StatsInner>,
}

#[derive(Default)]
struct StatsInner {
    /// Connections past the hello, by number.
    live: dashmap::DashMap<u64, quinn::Connection>,
    /// Packets lost on connections that have closed.
    lost_closed: std::sync::atomic::AtomicU64,
    /// Connections accepted (past the hello) since the start.
    accepted: std::sync::atomic::AtomicU64,
    /// Connections being handled now (handshaking or open).
    handling: std::sync::atomic::AtomicUsize,
    /// The remote subscriber groups (size 0: none).
    groups: Arc<Groups>,
}

impl ServerStats {
    /// Remote subscribers written to by a subscriber group now.
    pub fn grouped_subscribers(&self) -> usize {
        self.inner.groups.members()
    }

    /// Remote subscriber groups running now.
    pub fn subscriber_groups(&self) -> usize {
        self.inner.groups.running()
    }

    /// Bus connections open now (past the hello).
    pub fn connections(&self) -> usize {
        self.inner.live.len()
    }

    /// Bus connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Packets QUIC declared lost since the start (open and closed connections).
    pub fn lost_packets(&self) -> u64 {
        let open: u64 = self.inner.live.iter().map(|c| c.value().stats().path.lost_packets).sum();
        self.inner.lost_closed.load(std::sync::atomic::Ordering::Relaxed) + open
    }

    /// The groups subscriptions join, if groups are on.
    fn groups(&self) -> Option<Arc<Groups>> {
        (self.inner.groups.size() > 0).then(|| self.inner.groups.clone())
    }

    fn opened(&self, n: u64, conn: &quinn::Connection) {
        self.inner.live.insert(n, conn.clone());
        self.inner.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn closed(&self, n: u64) {
        if let Some((_, c)) = self.inner.live.remove(&n) {
            self.inner.lost_closed.fetch_add(c.stats().path.lost_packets, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests (subscriptions, watches, announced broadcasts and tracks) one
/// connection may have open at once; past it, requests are refused.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1024;

impl BusServer {
    /// Binds `addr` (UDP). `token` is the bus token clients must present.
    pub fn bind(addr: SocketAddr, config: quinn::ServerConfig, bus: Bus, token: String) -> Result<Self, QuicError> {
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|e| QuicError::Config(format!("bind {addr}: {e}")))?;
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                bus,
                token,
                subscribe_token: None,
                upstream: None,
                not_found_after: Duration::from_secs(3),
                stats: ServerStats::default(),
                max_connections: MAX_CONNECTIONS,
                resume_grace: RESUME_GRACE,
                held: Held::default(),
                announce_policy: AnnouncePolicy::Any,
                announce_keys: None,
                audio_hold: AUDIO_HOLD,
            }),
        })
    }

    /// Makes this server a relay: broadcasts it lacks are fetched from `upstream`.
    pub fn with_upstream(mut self, upstream: Arc<dyn Upstream>) -> Self {
        Arc::get_mut(&mut self.shared).expect("not yet shared").upstream = Some(upstream);
        self
    }

    /// How long a broadcast announced here is held open when its publisher's
    /// connection drops without an end notice (subscribers stay attached and
    /// resume at the next GoP when the publisher announces it again); zero ends
    /// it at once.
    pub fn with_resume_grace(mut self, grace: Duration) -> Self {
        Arc::get_mut(&mut self.shared).expect("not yet shared").resume_grace = grace;
        self
    }

    /// How long an audio frame sent to a remote subscriber may wait to go out
    /// with the next frame of another track (zero: each frame at once).
    pub fn with_audio_hold(mut self, hold: Duration) -> Self {
        Arc::get_mut(&mut self.shared).expect("not yet shared").audio_hold = hold;
        self
    }

    /// Serves caught-up remote subscribers of a broadcast in groups of at most
    /// `size`, one task per group waking once per frame (0: a task per
    /// subscriber, each waking on every frame). Default [`GROUP_SIZE`].
    pub fn with_subscriber_groups(mut self, size: usize) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("not yet shared");
        Arc::get_mut(&mut shared.stats.inner).expect("not yet shared").groups = Arc::new(Groups::new(size));
        self
    }

    /// How long a subscription to a broadcast nobody publishes waits before "not found".
    pub fn with_not_found_after(mut self, wait: Duration) -> Self {
        Arc::get_mut(&mut self.shared).expect("not yet shared").not_found_after = wait;
        self
    }

    /// Takes at most `n` connections at once (handshaking or open); past half
    /// of it, a client must prove its address (QUIC Retry) before it costs a
    /// handshake; past it, connections are refused.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        Arc::get_mut(&mut self.shared).expect("not yet shared").max_connections = n.max(1);
        self
    }

    /// Also accepts `token` for connections that may only subscribe (and
    /// watch and list): announcing a broadcast or adding a track with it is
    /// refused. Hand it to `dump` users and edges instead of the bus token.
    pub fn with_subscribe_token(mut self, token: String) -> Self {
        Arc::get_mut(&mut self.shared).expect("not yet shared").subscribe_token = Some(token);
        self
    }

    /// Checks announces against stream keys: with [`AnnouncePolicy::Keyed`],
    /// a name `keys` has a key for may be announced only with a proof of that
    /// key (an ingest node that checked it: [`BusClient::publish_with_key`]);
    /// with [`AnnouncePolicy::Strict`], every name needs one. Without this,
    /// the bus token may announce any name.
    ///
    /// [`BusClient::publish_with_key`]: super::BusClient::publish_with_key
    pub fn with_announce_check(mut self, policy: AnnouncePolicy, keys: Arc<dyn AnnounceKeys>) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("not yet shared");
        shared.announce_policy = policy;
        shared.announce_keys = Some(keys);
        self
    }

    /// Its counters (connections, losses), readable while it runs.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        self.endpoint.local_addr().map_err(|e| QuicError::Config(e.to_string()))
    }

    /// Accepts connections until `shutdown`. Every handshake runs in its own task,
    /// so a busy server keeps accepting.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut next_conn = 0u64;
        let (mut refused, mut last_refusal_log) = (0u64, None);
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let load = self.shared.stats.inner.handling.load(std::sync::atomic::Ordering::Relaxed);
            if load >= self.shared.max_connections {
                refused += 1;
                if last_refusal_log.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(limit = self.shared.max_connections, refused, peer = %incoming.remote_address(), "bus connection refused: too many connections");
                    last_refusal_log = Some(std::time::Instant::now());
                }
                incoming.refuse();
                continue;
            }
            if load >= self.shared.max_connections / 2 && !incoming.remote_address_validated() {
                // Under load: the client proves its address before it costs a handshake.
                let _ = incoming.retry();
                continue;
            }
            next_conn += 1;
            self.shared.stats.inner.handling.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("bus", conn = next_conn, peer = %incoming.remote_address());
            tracker.spawn(
                async move {
                    let stats = shared.stats.clone();
                    let result = handle(incoming, shared, shutdown, next_conn).await;
                    stats.closed(next_conn);
                    stats.inner.handling.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    match result {
                        Ok(()) => tracing::debug!("bus connection closed"),
                        Err(e) => tracing::info!(error = %e, "bus connection closed"),
                    }
                }
                .instrument(span),
            );
        }
        self.endpoint.close(quinn::VarInt::from_u32(0), b"server shutting down");
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
    }
}

async fn handle(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    number: u64,
) -> Result<(), QuicError> {
    let conn = tokio::time::timeout(Duration::from_secs(10), incoming)
        .await
        .map_err(|_| QuicError::Timeout("handshake".into()))??;
    let (send, recv) = tokio::time::timeout(CONTROL_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| QuicError::Timeout("control stream".into()))??;
    let _ = send.set_priority(super::conn::CONTROL_PRIORITY);
    let mut reader = Reader::new(recv);
    let mut writer = Writer::new(send);
    let hello = tokio::time::timeout(CONTROL_TIMEOUT, reader.message())
        .await
        .map_err(|_| QuicError::Timeout("hello".into()))??;
    let may_publish;
    match hello {
        Some(Message::Control(Control::Hello { version, token })) => {
            if version != VERSION {
                let message = format!("bus protocol version {version} not supported (this node speaks {VERSION})");
                refuse(&conn, &mut writer, &message).await;
                return Err(QuicError::Refused(message));
            }
            // Constant time: the comparison must not tell a guesser how much of it was right.
            let same = |a: &str, b: &str| bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()));
            let full = same(&token, &shared.token);
            let reader_only = shared.subscribe_token.as_deref().is_some_and(|t| same(&token, t));
            if !full && !reader_only {
                // Logged first: the refusal waits for the peer, which may be gone before it ends.
                tracing::warn!("bus connection refused: invalid bus token");
                refuse(&conn, &mut writer, "invalid bus token").await;
                return Err(QuicError::Refused("invalid bus token".into()));
            }
            may_publish = full;
        }
        _ => {
            refuse(&conn, &mut writer, "expected hello").await;
            return Err(QuicError::Protocol("no hello".into()));
        }
    }
    writer.send(&mut Encoder::default(), &Message::Control(Control::Welcome), &[]).await?;
    shared.stats.opened(number, &conn);
    let (control_tx, control_rx) = mpsc::channel::<Control>(256);
    tokio::spawn(write_control(writer, control_rx));
    let routes = Arc::new(Routes::default());
    tokio::spawn(accept_streams(conn.clone(), routes.clone()));
    let cancel = shutdown.child_token();
    let mut subscriptions: HashMap<u64, CancellationToken> = HashMap::new();
    // Whether this connection has published (and has its full GoP stream allowance).
    let mut publishing = false;
    let result = loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            m = reader.message() => m,
        };
        let msg = match msg {
            Ok(Some(Message::Control(c))) => c,
            Ok(None) => break Ok(()),
            Ok(Some(other)) => break Err(QuicError::Protocol(format!("unexpected {other:?} on the control stream"))),
            Err(e) => break Err(e),
        };
        let opens = matches!(
            msg,
            Control::Announce { .. } | Control::AddTrack { .. } | Control::Subscribe { .. } | Control::Watch { .. }
        );
        if opens {
            // Finished subscriptions and watches cancel their own token.
            subscriptions.retain(|_, t| !t.is_cancelled());
            if subscriptions.len() + routes.len() >= MAX_REQUESTS_PER_CONNECTION {
                let id = request_id(&msg);
                tracing::warn!(
                    id,
                    limit = MAX_REQUESTS_PER_CONNECTION,
                    "too many open requests on one bus connection; refused"
                );
                let message = format!("too many open requests (limit {MAX_REQUESTS_PER_CONNECTION})");
                let _ = control_tx.send(Control::Error { id, code: ErrorCode::Invalid, message }).await;
                continue;
            }
        }
        if !may_publish && matches!(msg, Control::Announce { .. } | Control::AddTrack { .. }) {
            let id = request_id(&msg);
            tracing::warn!(id, "publish refused: this connection's token may only subscribe");
            let message = "this bus token may only subscribe; publishing needs the bus token".to_owned();
            let _ = control_tx.send(Control::Error { id, code: ErrorCode::Refused, message }).await;
            continue;
        }
        if !publishing && matches!(msg, Control::Announce { .. } | Control::AddTrack { .. }) {
            // A publisher: room for its GoP streams (sent to it before the answer).
            publishing = true;
            conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(super::PUBLISHER_UNI_STREAMS));
        }
        // Whether an announce proved its stream key.
        let mut proven = false;
        if let Control::Announce { id, broadcast, proof } = &msg {
            match check_announce(&shared, &conn, broadcast, proof.as_ref()).await {
                Ok(p) => proven = p,
                Err(why) => {
                    tracing::warn!(broadcast = %broadcast, id, reason = %why, "announce refused");
                    let _ = control_tx.send(Control::Error { id: *id, code: ErrorCode::Refused, message: why }).await;
                    continue;
                }
            }
        }
        match msg {
            Control::Announce { id, broadcast, .. } => {
                // A broadcast held since its publisher's link dropped resumes after what it had.
                let resume = shared.held.resume_point(&broadcast);
                let publisher = shared.bus.publish(&broadcast);
                shared.held.release(&broadcast);
                let (tx, rx) = mpsc::channel::<Piece>(256);
                routes.insert(id, tx);
                tracing::info!(broadcast = %broadcast, id, resuming = resume.is_some(), proven, "remote publisher announced");
                let merger = Merger::resuming_after(resume.flatten());
                let hold = Hold { grace: shared.resume_grace, held: shared.held.clone() };
                tokio::spawn(
                    async move {
                        if let Err(e) = merge_into(rx, publisher, merger, Some(hold)).await {
                            tracing::warn!(error = %e, "remote broadcast dropped");
                        }
                    }
                    .in_current_span(),
                );
                let _ = control_tx.send(Control::Ok { id }).await;
            }
            Control::AddTrack { id, broadcast, track } => match shared.bus.add_track(&broadcast, &track) {
                Ok(publisher) => {
                    let (tx, rx) = mpsc::channel::<Piece>(256);
                    routes.insert(id, tx);
                    tracing::info!(broadcast = %broadcast, track = %track, id, "remote worker added a track");
                    tokio::spawn(
                        async move {
                            if let Err(e) = merge_into(rx, publisher, Merger::default(), None).await {
                                tracing::warn!(error = %e, "remote track dropped");
                            }
                        }
                        .in_current_span(),
                    );
                    let _ = control_tx.send(Control::Ok { id }).await;
                }
                Err(e) => {
                    tracing::info!(broadcast = %broadcast, track = %track, error = %e, "track refused");
                    let e = QuicError::from(e);
                    let _ = control_tx.send(Control::Error { id, code: e.code(), message: e.to_string() }).await;
                }
            },
            Control::List { id } => {
                let _ = control_tx.send(Control::Listing { id, live: shared.bus.catalogs() }).await;
            }
            Control::Watch { id } => {
                let token = cancel.child_token();
                subscriptions.insert(id, token.clone());
                let (bus, control) = (shared.bus.clone(), control_tx.clone());
                tokio::spawn(
                    async move {
                        let _done = token.clone().drop_guard();
                        let mut announcements = bus.announcements();
                        if control.send(Control::Ok { id }).await.is_err() {
                            return;
                        }
                        loop {
                            let announcement = tokio::select! {
                                _ = token.cancelled() => return,
                                a = announcements.next() => a,
                            };
                            if control.send(Control::Announced { id, announcement }).await.is_err() {
                                return;
                            }
                        }
                    }
                    .in_current_span(),
                );
            }
            Control::Subscribe { id, broadcast, start } => {
                let token = cancel.child_token();
                subscriptions.insert(id, token.clone());
                let (shared, conn, control) = (shared.clone(), conn.clone(), control_tx.clone());
                tokio::spawn(serve_subscription(shared, conn, id, broadcast, start, control, token).in_current_span());
            }
            Control::Unsubscribe { id } => {
                if let Some(t) = subscriptions.remove(&id) {
                    t.cancel();
                }
            }
            Control::End { id, reason } => {
                if let Some(tx) = routes.get(id) {
                    let _ = tx.send(Piece::End(reason)).await;
                }
                routes.remove(id);
            }
            other => break Err(QuicError::Protocol(format!("unexpected {other:?} from a client"))),
        }
    };
    cancel.cancel();
    routes.clear();
    result
}

/// Whether an announce of `broadcast` with `proof` may go ahead on `conn`:
/// `Ok(true)` when it proved the name's stream key, `Ok(false)` when it needs none.
async fn check_announce(
    shared: &Shared,
    conn: &quinn::Connection,
    broadcast: &str,
    proof: Option<&[u8; 32]>,
) -> Result<bool, String> {
    let (policy, Some(keys)) = (shared.announce_policy, shared.announce_keys.as_ref()) else { return Ok(false) };
    if policy == AnnouncePolicy::Any {
        return Ok(false);
    }
    let lookup = tokio::time::timeout(CONTROL_TIMEOUT, keys.key_hash(broadcast)).await;
    let key_hash = match lookup {
        Ok(Ok(hash)) => hash,
        Ok(Err(e)) => return Err(format!("the stream key of {broadcast:?} could not be looked up: {e}")),
        Err(_) => return Err(format!("the stream key of {broadcast:?} could not be looked up in time")),
    };
    match (key_hash, proof) {
        (None, _) if policy == AnnouncePolicy::Keyed => Ok(false),
        (None, _) => Err(format!("{broadcast:?} has no stream key on this node; every announce needs one here")),
        (Some(_), None) => Err(format!("announcing {broadcast:?} needs a proof of its stream key")),
        (Some(hash), Some(proof)) if check_proof(conn, broadcast, &hash, proof) => Ok(true),
        (Some(_), Some(_)) => {
            Err(format!("the proof of {broadcast:?}'s stream key is wrong (another key, or a replay)"))
        }
    }
}

/// The request id of a request message.
const fn request_id(msg: &Control) -> u64 {
    match msg {
        Control::Announce { id, .. }
        | Control::AddTrack { id, .. }
        | Control::Subscribe { id, .. }
        | Control::Watch { id }
        | Control::List { id }
        | Control::Unsubscribe { id } => *id,
        _ => 0,
    }
}

async fn refuse(conn: &quinn::Connection, writer: &mut Writer, message: &str) {
    let _ = writer
        .send(
            &mut Encoder::default(),
            &Message::Control(Control::Error { id: 0, code: ErrorCode::Refused, message: message.to_owned() }),
            &[],
        )
        .await;
    let _ = writer.stream.finish();
    // Give the error a moment to reach the peer before closing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(quinn::VarInt::from_u32(1), message.as_bytes());
}

async fn serve_subscription(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    id: u64,
    broadcast: String,
    start: StartAt,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
) {
    // Marks the subscription finished for the connection's request count.
    let _done = cancel.clone().drop_guard();
    let available = async {
        // Watch before looking, so a start between the two is not missed.
        let mut announcements = shared.bus.announcements();
        if shared.bus.is_live(&broadcast) {
            return Ok(());
        }
        if let Some(up) = &shared.upstream {
            return up.fetch(broadcast.clone()).await;
        }
        // Wait for it to start (any announcement may be it: a derived track's
        // start is announced as a change of its source).
        let wait = async {
            loop {
                announcements.next().await;
                if shared.bus.is_live(&broadcast) {
                    return;
                }
            }
        };
        tokio::time::timeout(shared.not_found_after, wait).await.map_err(|_| QuicError::NotFound(broadcast.clone()))
    };
    let available = tokio::select! {
        _ = cancel.cancelled() => return,
        a = available => a,
    };
    if let Err(e) = available {
        tracing::info!(broadcast = %broadcast, error = %e, "remote subscription refused");
        let _ = control.send(Control::Error { id, code: e.code(), message: e.to_string() }).await;
        return;
    }
    let sub = shared.bus.subscribe(&broadcast, SubscribeOptions { start, max_lag: None });
    tracing::info!(broadcast = %broadcast, id, "remote subscriber attached");
    let _ = control.send(Control::Ok { id }).await;
    let viewer = shared.bus.audience().join(&broadcast, crate::Protocol::Quic);
    if let Err(e) =
        send_broadcast(conn, id, sub, control, cancel, Some(viewer), shared.audio_hold, shared.stats.groups()).await
    {
        tracing::debug!(broadcast = %broadcast, error = %e, "remote subscriber gone");
    }
}
