//! Connecting to a bus node: subscribe to its broadcasts into a local bus, or
//! publish a local broadcast to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gopbus_proto::wire::{Control, Message, StartAt, VERSION};
use gopbus_proto::EndReason;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::{accept_streams, write_control, Routes};
use super::egress::send_broadcast;
use super::ingress::{merge_into, Piece};
use super::io::{Encoder, Reader, Writer};
use super::{parse_url, QuicError};
use crate::{Bus, BusConfig, SubscribeOptions, Subscriber};

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<(), QuicError>>>>;

/// One connection to a bus node.
pub struct BusClient {
    conn: quinn::Connection,
    control: mpsc::Sender<Control>,
    routes: Arc<Routes>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    url: String,
    _endpoint: quinn::Endpoint,
}

/// How long a request waits for its answer. Longer than a server's "not found" wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

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
        let mut writer = Writer::new(send);
        let mut reader = Reader::new(recv);
        let hello = Message::Control(Control::Hello { version: VERSION, token: token.to_owned() });
        writer.send(&mut Encoder::default(), &hello, &[]).await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), reader.message())
            .await
            .map_err(|_| QuicError::Timeout(format!("{url}: no answer to hello")))?;
        match answer {
            Ok(Some(Message::Control(Control::Welcome))) => {}
            Ok(Some(Message::Control(Control::Error { message, .. }))) => return Err(QuicError::Refused(message)),
            Ok(other) => return Err(QuicError::Protocol(format!("{url}: unexpected answer to hello: {other:?}"))),
            Err(e) => {
                // The server may close with its reason before we read the error message.
                return Err(match conn.close_reason() {
                    Some(reason) => QuicError::from(reason),
                    None => e,
                });
            }
        }
        let (control, control_rx) = mpsc::channel::<Control>(256);
        tokio::spawn(write_control(writer, control_rx));
        let routes = Arc::new(Routes::paced(max_rate.map(|r| Arc::new(super::conn::Pacer::new(r)))));
        tokio::spawn(accept_streams(conn.clone(), routes.clone()));
        let pending: Arc<Pending> = Arc::default();
        tokio::spawn(read_control(reader, routes.clone(), pending.clone()));
        Ok(Self {
            conn,
            control,
            routes,
            pending,
            next_id: AtomicU64::new(1),
            url: url.to_owned(),
            _endpoint: endpoint,
        })
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Piece>(256);
        self.routes.insert(id, tx);
        let answer = self.request(id, Control::Subscribe { id, broadcast: broadcast.to_owned(), start }).await;
        if let Err(e) = answer {
            self.routes.remove(id);
            return Err(match e {
                QuicError::Refused(m) if m.contains("not found") => QuicError::NotFound(broadcast.to_owned()),
                other => other,
            });
        }
        let publisher = bus.publish(broadcast);
        let name = broadcast.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = merge_into(rx, publisher).await {
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

    /// Publishes the broadcast `sub` reads (from a local bus) to the node as `broadcast`.
    pub async fn publish_from(&self, broadcast: &str, sub: Subscriber) -> Result<RemotePublication, QuicError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.request(id, Control::Announce { id, broadcast: broadcast.to_owned() }).await?;
        let cancel = CancellationToken::new();
        let (conn, control, c) = (self.conn.clone(), self.control.clone(), cancel.clone());
        let name = broadcast.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = send_broadcast(conn, id, sub, control, c).await {
                tracing::info!(broadcast = %name, error = %e, "publishing to the bus stopped");
            }
        });
        Ok(RemotePublication { cancel, task })
    }

    async fn request(&self, id: u64, msg: Control) -> Result<(), QuicError> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        self.control.send(msg).await.map_err(|_| QuicError::Connection("control stream closed".into()))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(QuicError::Connection("connection closed".into())),
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

/// Dispatches the server's control messages: answers to requests, and ends.
async fn read_control(mut reader: Reader, routes: Arc<Routes>, pending: Arc<Pending>) {
    loop {
        let Ok(Some(Message::Control(msg))) = reader.message().await else { break };
        let answer = |id: u64, r: Result<(), QuicError>| {
            if let Some(tx) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                let _ = tx.send(r);
                true
            } else {
                false
            }
        };
        match msg {
            Control::Ok { id } => {
                answer(id, Ok(()));
            }
            Control::Error { id, not_found, message } => {
                let err = if not_found {
                    QuicError::Refused(format!("not found: {message}"))
                } else {
                    QuicError::Refused(message.clone())
                };
                if !answer(id, Err(err)) {
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
    // The connection is gone: every remote broadcast ends (its GoP cut short).
    routes.clear();
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
