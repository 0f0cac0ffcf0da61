//! Connecting to a bus node: subscribe to its broadcasts into a local bus, or
//! publish a local broadcast to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gopbus_proto::catalog::{Announcement, Catalog};
use gopbus_proto::wire::{Control, ErrorCode, Message, StartAt, VERSION};
use gopbus_proto::EndReason;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::conn::{accept_streams, write_control, Routes};
use super::egress::send_broadcast;
use super::ingress::{merge_into, Hold, Merger, Piece};
use super::io::{Encoder, Reader, Writer};
use super::{parse_url, QuicError};
use crate::{Bus, BusConfig, SubscribeOptions, Subscriber, TrackSubscriber};

/// A peer's answer to a request.
enum Reply {
    Ok,
    Listing(Vec<Catalog>),
    Error(ErrorCode, String),
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Reply>>>;
type Watches = Mutex<HashMap<u64, mpsc::Sender<Announcement>>>;

/// Announcements a remote watch buffers for a slow reader before it is dropped.
const WATCH_BACKLOG: usize = 1024;

/// One connection to a bus node.
pub struct BusClient {
    conn: quinn::Connection,
    control: mpsc::Sender<Control>,
    routes: Arc<Routes>,
    pending: Arc<Pending>,
    watches: Arc<Watches>,
    /// The node's answer to our hello: `None` until it comes.
    greeting: watch::Receiver<Option<Result<(), QuicError>>>,
    next_id: AtomicU64,
    url: String,
    _endpoint: quinn::Endpoint,
}

/// How long a request waits for its answer. Longer than a server's "not found" wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the node may take to answer our hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

impl BusClient {
    /// Connects to `quic://HOST:PORT` and presents `token`.
    pub async fn connect(url: &str, token: &str, config: quinn::ClientConfig) -> Result<Self, QuicError> {
        Self::connect_paced(url, token, config, None).await
    }

    /// Like [`connect`](Self::connect), reading GoP streams no faster than
    /// `max_rate` bytes per second: a deliberately slow subscriber, for tests and
    /// for bandwidth-limited consumers.
    pub async fn connect_paced(
        url: &str,
        token: &str,
        config: quinn::ClientConfig,
        max_rate: Option<u64>,
    ) -> Result<Self, QuicError> {
        let client = Self::open(url, token, config, max_rate).await?;
        client.welcomed().await?;
        Ok(client)
    }

    /// Connects and says hello without waiting for the node's answer: requests
    /// made now leave right behind the hello, a round trip sooner than after
    /// [`connect`](Self::connect). If the node turns the hello down (a wrong
    /// token), they fail with its refusal, as does [`welcomed`](Self::welcomed).
    pub async fn open(
        url: &str,
        token: &str,
        config: quinn::ClientConfig,
        max_rate: Option<u64>,
    ) -> Result<Self, QuicError> {
        let (host, addr) = parse_url(url)?;
        let bind: std::net::SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid");
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| QuicError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint.connect(addr, &host).map_err(|e| QuicError::Connect(format!("{url}: {e}")))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| QuicError::Timeout(format!("connecting to {url}")))?
            .map_err(|e| QuicError::Connect(format!("{url}: {e}")))?;
        let (send, recv) = conn.open_bi().await?;
        let _ = send.set_priority(super::conn::CONTROL_PRIORITY);
        let mut writer = Writer::new(send);
        let hello = Message::Control(Control::Hello { version: VERSION, token: token.to_owned() });
        writer.send(&mut Encoder::default(), &hello, &[]).await?;
        let (control, control_rx) = mpsc::channel::<Control>(256);
        tokio::spawn(write_control(writer, control_rx));
        let routes = Arc::new(Routes::paced(max_rate.map(|r| Arc::new(super::conn::Pacer::new(r)))));
        tokio::spawn(accept_streams(conn.clone(), routes.clone()));
        let pending: Arc<Pending> = Arc::default();
        let watches: Arc<Watches> = Arc::default();
        let (greeted, greeting) = watch::channel(None);
        let link = Link {
            conn: conn.clone(),
            url: url.to_owned(),
            routes: routes.clone(),
            pending: pending.clone(),
            watches: watches.clone(),
        };
        tokio::spawn(read_control(Reader::new(recv), link, greeted));
        Ok(Self {
            conn,
            control,
            routes,
            pending,
            watches,
            greeting,
            next_id: AtomicU64::new(1),
            url: url.to_owned(),
            _endpoint: endpoint,
        })
    }

    /// Connects and subscribes in one round trip (hello and subscription sent
    /// together, see [`open`](Self::open)); the subscription as
    /// [`subscribe`](Self::subscribe) makes it.
    pub async fn connect_and_subscribe(
        url: &str,
        token: &str,
        tls: quinn::ClientConfig,
        broadcast: &str,
        start: StartAt,
        config: BusConfig,
    ) -> Result<(Self, RemoteSubscriber), QuicError> {
        let client = Self::open(url, token, tls, None).await?;
        // Whichever fails first is the error: a refused hello fails the
        // subscription too, and is the error when it is known.
        let ((), sub) = tokio::try_join!(client.welcomed(), client.subscribe(broadcast, start, config))
            .map_err(|e| client.refusal().unwrap_or(e))?;
        Ok((client, sub))
    }

    /// Waits for the node's answer to our hello: `Ok` once it welcomed us, its
    /// refusal (or why no answer came) otherwise.
    pub async fn welcomed(&self) -> Result<(), QuicError> {
        let mut greeting = self.greeting.clone();
        let answer = match tokio::time::timeout(HELLO_TIMEOUT, greeting.wait_for(Option::is_some)).await {
            Ok(Ok(answer)) => answer.clone().unwrap_or(Err(QuicError::Closed)),
            Ok(Err(_)) => Err(QuicError::Closed),
            Err(_) => Err(QuicError::Timeout(format!("{}: no answer to hello", self.url))),
        };
        answer
    }

    /// The node's refusal of our hello, if it refused it.
    fn refusal(&self) -> Option<QuicError> {
        self.greeting.borrow().clone().and_then(Result::err)
    }

    /// The URL this client connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Resolves with the reason when the connection closes.
    pub async fn closed(&self) -> QuicError {
        QuicError::from(self.conn.closed().await)
    }

    /// Subscribes to `broadcast` and replays it into `bus` under the same name;
    /// consume it there with [`Bus::subscribe`]. Dropping the handle unsubscribes.
    pub async fn subscribe_into(
        &self,
        broadcast: &str,
        start: StartAt,
        bus: &Bus,
    ) -> Result<RemoteSubscription, QuicError> {
        self.subscribe_merging(broadcast, start, bus, Merger::default(), None).await
    }

    /// [`subscribe_into`](Self::subscribe_into) with a merger (possibly
    /// resuming a held broadcast) and what to do when the connection drops.
    pub(crate) async fn subscribe_merging(
        &self,
        broadcast: &str,
        start: StartAt,
        bus: &Bus,
        merger: Merger,
        hold: Option<Hold>,
    ) -> Result<RemoteSubscription, QuicError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Piece>(256);
        self.routes.insert(id, tx);
        let answer =
            self.request(id, Control::Subscribe { id, broadcast: broadcast.to_owned(), start }, broadcast).await;
        if let Err(e) = answer {
            self.routes.remove(id);
            return Err(e);
        }
        let publisher = bus.publish(broadcast);
        let name = broadcast.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = merge_into(rx, publisher, merger, hold).await {
                tracing::warn!(broadcast = %name, error = %e, "remote broadcast dropped");
            }
        });
        Ok(RemoteSubscription { id, control: self.control.clone(), routes: self.routes.clone(), task })
    }

    /// Subscribes to `broadcast` and returns a subscriber to read it with, as in
    /// process: the broadcast is replayed into a private bus (`config` sets its
    /// window and how far the reader may lag) and read from there.
    pub async fn subscribe(
        &self,
        broadcast: &str,
        start: StartAt,
        config: BusConfig,
    ) -> Result<RemoteSubscriber, QuicError> {
        let bus = Bus::new(config);
        // Subscribed before the bridge publishes, so the first GoP is not missed.
        let sub = bus.subscribe(broadcast, SubscribeOptions::default());
        let remote = self.subscribe_into(broadcast, start, &bus).await?;
        Ok(RemoteSubscriber { sub, remote, _bus: bus })
    }

    /// Subscribes to the tracks called `tracks` of `broadcast` (published and
    /// derived, as [`Bus::subscribe_tracks`]) and merges them as in process. A
    /// derived track the node does not have when this is called is left out.
    pub async fn subscribe_tracks(
        &self,
        broadcast: &str,
        tracks: &[&str],
        start: StartAt,
        config: BusConfig,
    ) -> Result<RemoteTrackSubscriber, QuicError> {
        let bus = Bus::new(config);
        // Subscribed before the bridges publish, so no first GoP is missed.
        let sub = bus.subscribe_tracks(broadcast, tracks, SubscribeOptions::default());
        let lanes: Vec<String> = sub.lanes().map(str::to_owned).collect();
        let mut remotes = Vec::with_capacity(lanes.len());
        for (i, lane) in lanes.iter().enumerate() {
            match self.subscribe_into(lane, if i == 0 { start } else { StartAt::CurrentGop }, &bus).await {
                Ok(r) => remotes.push(r),
                Err(QuicError::NotFound(_)) if i > 0 => {
                    tracing::info!(track = %lane, "derived track not found; left out")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(RemoteTrackSubscriber { sub, _remotes: remotes, _bus: bus })
    }

    /// The node's live broadcasts with their catalogs.
    pub async fn list(&self) -> Result<Vec<Catalog>, QuicError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.ask(id, Control::List { id }).await? {
            Reply::Listing(live) => Ok(live),
            Reply::Error(code, message) => Err(QuicError::from_peer(code, "", message)),
            Reply::Ok => Err(QuicError::Protocol("List answered without a listing".into())),
        }
    }

    /// Watches the node's announcements: broadcasts starting, changing tracks
    /// and ending, as [`Bus::announcements`] in process. Starts with
    /// [`Announcement::Live`].
    pub async fn watch(&self) -> Result<RemoteWatch, QuicError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WATCH_BACKLOG);
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        if let Err(e) = self.request(id, Control::Watch { id }, "").await {
            self.watches.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        Ok(RemoteWatch { id, rx, control: self.control.clone(), watches: self.watches.clone() })
    }

    /// Adds the derived track `track` to the node's live broadcast `broadcast`
    /// (as [`Bus::add_track`]) and sends it the broadcast `sub` reads: each GoP
    /// header listing the one track, GoPs starting at the source's GoP
    /// timestamps. Refused with [`QuicError::Taken`] while another worker holds
    /// the track, [`QuicError::NotFound`] when the broadcast is not live there.
    pub async fn add_track(
        &self,
        broadcast: &str,
        track: &str,
        sub: Subscriber,
    ) -> Result<RemotePublication, QuicError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Control::AddTrack { id, broadcast: broadcast.to_owned(), track: track.to_owned() };
        self.request(id, request, broadcast).await?;
        Ok(self.send_from(id, format!("{broadcast}/{track}"), sub))
    }

    /// Publishes the broadcast `sub` reads (from a local bus) to the node as
    /// `broadcast`. A node that checks announces refuses names it has a stream
    /// key for: see [`publish_with_key`](Self::publish_with_key).
    pub async fn publish_from(&self, broadcast: &str, sub: Subscriber) -> Result<RemotePublication, QuicError> {
        self.publish_with_key(broadcast, sub, None).await
    }

    /// Like [`publish_from`](Self::publish_from), proving that this publisher
    /// holds the broadcast's stream key (`key_hash`: its SHA-256, as an ingest
    /// node has it after checking the key) to a node that checks announces.
    pub async fn publish_with_key(
        &self,
        broadcast: &str,
        sub: Subscriber,
        key_hash: Option<&[u8; 32]>,
    ) -> Result<RemotePublication, QuicError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let proof = key_hash.and_then(|hash| super::proof::announce_proof(&self.conn, broadcast, hash));
        self.request(id, Control::Announce { id, broadcast: broadcast.to_owned(), proof }, broadcast).await?;
        Ok(self.send_from(id, broadcast.to_owned(), sub))
    }

    fn send_from(&self, id: u64, name: String, sub: Subscriber) -> RemotePublication {
        let cancel = CancellationToken::new();
        let (conn, control, c) = (self.conn.clone(), self.control.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let cancelled = c.clone();
            if let Err(e) = send_broadcast(conn, id, sub, control.clone(), c, None, Duration::ZERO, None).await {
                tracing::info!(broadcast = %name, error = %e, "publishing to the bus stopped");
            }
            if cancelled.is_cancelled() {
                // Stopped on purpose (this node shuts down): an end, not a lost link the node would wait for.
                let _ = control.try_send(Control::End { id, reason: EndReason::Shutdown });
            }
        });
        RemotePublication { cancel, task }
    }

    /// Sends request `id` and waits for `Ok`; an error answer about `broadcast` becomes its [`QuicError`].
    async fn request(&self, id: u64, msg: Control, broadcast: &str) -> Result<(), QuicError> {
        match self.ask(id, msg).await? {
            Reply::Ok => Ok(()),
            Reply::Error(code, message) => Err(QuicError::from_peer(code, broadcast, message)),
            Reply::Listing(_) => Err(QuicError::Protocol("unexpected listing".into())),
        }
    }

    async fn ask(&self, id: u64, msg: Control) -> Result<Reply, QuicError> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        // Registered after the control reader gave up (it answers the hello, then
        // clears what is pending when the connection ends): nobody would answer.
        // The reader records a refusal before it closes the connection, so the
        // refusal is read after the close: read before, a refusal that came
        // between the two reads would show as a connection closed here.
        let closed = self.conn.close_reason();
        if let Some(gone) = self.refusal().or_else(|| closed.map(QuicError::from)) {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(gone);
        }
        self.control.send(msg).await.map_err(|_| QuicError::Closed)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            // Dropped unanswered: the connection is gone (refused, if it was our hello).
            Ok(Err(_)) => Err(self.refusal().unwrap_or(QuicError::Closed)),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(QuicError::Timeout(format!("no answer from {}", self.url)))
            }
        }
    }
}

impl Drop for BusClient {
    fn drop(&mut self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"client gone");
    }
}

/// What the control reader answers into.
struct Link {
    conn: quinn::Connection,
    /// The node's URL, for errors.
    url: String,
    routes: Arc<Routes>,
    pending: Arc<Pending>,
    watches: Arc<Watches>,
}

/// Reads the answer to our hello into `greeted`, then (if welcomed) the
/// answers to requests and the announcements watched, until the connection ends.
async fn read_control(mut reader: Reader, link: Link, greeted: watch::Sender<Option<Result<(), QuicError>>>) {
    let answer = match reader.message().await {
        Ok(Some(Message::Control(Control::Welcome))) => Ok(()),
        Ok(Some(Message::Control(Control::Error { message, .. }))) => Err(QuicError::Refused(message)),
        Ok(None) => Err(QuicError::Closed),
        Ok(Some(other)) => Err(QuicError::Protocol(format!("{}: unexpected answer to hello: {other:?}", link.url))),
        // The node may close with its reason before we read its error message.
        Err(e) => Err(link.conn.close_reason().map_or(e, QuicError::from)),
    };
    let welcomed = answer.is_ok();
    greeted.send_replace(Some(answer));
    if welcomed {
        dispatch(&mut reader, &link).await;
    } else {
        link.conn.close(quinn::VarInt::from_u32(0), b"hello refused");
    }
    // The connection is gone: every remote broadcast ends (its GoP cut short).
    link.routes.clear();
    link.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    link.watches.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Dispatches the server's control messages (answers to requests, ends and
/// announcements) until the control stream ends.
async fn dispatch(reader: &mut Reader, link: &Link) {
    let Link { routes, pending, watches, .. } = link;
    loop {
        let Ok(Some(Message::Control(msg))) = reader.message().await else { break };
        let answer = |id: u64, r: Reply| {
            if let Some(tx) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                let _ = tx.send(r);
                true
            } else {
                false
            }
        };
        match msg {
            Control::Ok { id } => {
                answer(id, Reply::Ok);
            }
            Control::Listing { id, live } => {
                answer(id, Reply::Listing(live));
            }
            Control::Announced { id, announcement } => {
                let mut w = watches.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = w.get(&id) {
                    if tx.try_send(announcement).is_err() {
                        // Full (a reader this far behind rebuilds from a new watch) or dropped.
                        tracing::info!(id, "announcement watcher fell behind or left; its watch ends");
                        w.remove(&id);
                    }
                }
            }
            Control::Error { id, code, message } => {
                if !answer(id, Reply::Error(code, message.clone())) {
                    if let Some(tx) = routes.get(id) {
                        let _ = tx.send(Piece::End(EndReason::Error(message))).await;
                    }
                }
            }
            Control::End { id, reason } => {
                if let Some(tx) = routes.get(id) {
                    let _ = tx.send(Piece::End(reason)).await;
                }
                routes.remove(id);
            }
            other => tracing::debug!(?other, "unexpected control message from the server"),
        }
    }
}

/// A watch of a node's announcements ([`BusClient::watch`]). Dropping it stops the watch.
pub struct RemoteWatch {
    id: u64,
    rx: mpsc::Receiver<Announcement>,
    control: mpsc::Sender<Control>,
    watches: Arc<Watches>,
}

impl RemoteWatch {
    /// The next announcement; `None` when the connection is gone or this reader
    /// fell more than 1024 announcements behind: watch again (a new watch
    /// starts with [`Announcement::Live`]).
    pub async fn next(&mut self) -> Option<Announcement> {
        self.rx.recv().await
    }
}

impl Drop for RemoteWatch {
    fn drop(&mut self) {
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        let _ = self.control.try_send(Control::Unsubscribe { id: self.id });
    }
}

/// Chosen tracks of a remote broadcast, merged ([`BusClient::subscribe_tracks`]):
/// derefs to the [`TrackSubscriber`] of the private bus the bridges fill.
/// Dropping it unsubscribes.
pub struct RemoteTrackSubscriber {
    sub: TrackSubscriber,
    _remotes: Vec<RemoteSubscription>,
    _bus: Bus,
}

impl std::ops::Deref for RemoteTrackSubscriber {
    type Target = TrackSubscriber;
    fn deref(&self) -> &TrackSubscriber {
        &self.sub
    }
}

impl std::ops::DerefMut for RemoteTrackSubscriber {
    fn deref_mut(&mut self) -> &mut TrackSubscriber {
        &mut self.sub
    }
}

/// A subscription whose broadcast a bridge replays into a local bus.
pub struct RemoteSubscription {
    id: u64,
    control: mpsc::Sender<Control>,
    routes: Arc<Routes>,
    task: tokio::task::JoinHandle<()>,
}

impl RemoteSubscription {
    /// Whether the remote broadcast has ended (or the connection is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the remote broadcast has ended (or the connection is gone).
    pub async fn finished(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for RemoteSubscription {
    fn drop(&mut self) {
        let _ = self.control.try_send(Control::Unsubscribe { id: self.id });
        self.routes.remove(self.id);
    }
}

/// A remote broadcast read like a local one ([`BusClient::subscribe`]): derefs to
/// the [`Subscriber`] of the private bus the bridge fills. Dropping it unsubscribes.
pub struct RemoteSubscriber {
    sub: Subscriber,
    remote: RemoteSubscription,
    _bus: Bus,
}

impl RemoteSubscriber {
    /// The subscription itself (whether the remote broadcast has ended).
    pub const fn remote(&self) -> &RemoteSubscription {
        &self.remote
    }
}

impl std::ops::Deref for RemoteSubscriber {
    type Target = Subscriber;
    fn deref(&self) -> &Subscriber {
        &self.sub
    }
}

impl std::ops::DerefMut for RemoteSubscriber {
    fn deref_mut(&mut self) -> &mut Subscriber {
        &mut self.sub
    }
}

/// A local broadcast being published to a bus node.
pub struct RemotePublication {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RemotePublication {
    /// Whether the publication has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the publication stops (the local broadcast ended or the connection broke).
    pub async fn finished(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for RemotePublication {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
