//! One RTMP connection's driver: the handshake, then a single loop that reads,
//! writes, keeps time and pulls from the bus without ever blocking one on
//! another. The command flow itself is sans-IO ([`crate::flow::Flow`]); this
//! file does what it asks of the world: key checks, bus publications and
//! subscriptions, the socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gopbus_bus::{Event, SubscribeOptions, Subscriber, TrackSubscriber};
use gopbus_proto::EndReason;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::error::SessionError;
use crate::flow::{Action, Flow, FlowConfig, PublishCheck, Refusal, STREAM_ID};
use crate::play::Egress;
use crate::publish::MediaIngest;
use crate::server::{Ingest, LivePublisher};
use gopbus_store::keys::KeyHash;
use gopbus_store::PublishRequest;

/// Read buffer size of a publisher: payload slices keep a buffer alive while the
/// GoP window holds them, so this is also the granularity of ingest memory.
const READ_BUF: usize = 64 * 1024;
/// Read buffer size of any other connection (players send little: acks, pings).
const SMALL_READ_BUF: usize = 4 * 1024;
/// Bytes of replies (statuses, pings) that may wait for a peer beyond a
/// player's media queue; past it the peer is not reading and is disconnected.
const OUT_SLACK: usize = 256 * 1024;

struct Publishing {
    media: MediaIngest,
    name: String,
    revoked: CancellationToken,
    kicked: CancellationToken,
    /// Resolves when the key is revoked or another publisher takes over; made
    /// once, so the driver loop does not re-register wakers on every event.
    stop: Pin<Box<dyn Future<Output = Stop> + Send>>,
}

/// Why a publishing session must stop.
enum Stop {
    Revoked,
    Replaced,
    Kicked,
}

struct Playing {
    sub: PlaySource,
    egress: Egress,
    /// Counted in the node's audience while it plays.
    viewer: gopbus_bus::Viewer,
}

/// What a player reads: a broadcast as published, or a rendition of it (its
/// derived video track with the source's audio).
enum PlaySource {
    Published(Subscriber),
    Rendition(TrackSubscriber),
}

impl PlaySource {
    async fn next(&mut self) -> Event {
        match self {
            Self::Published(s) => s.next().await,
            Self::Rendition(s) => s.next().await,
        }
    }

    fn try_next(&mut self) -> Option<Event> {
        match self {
            Self::Published(s) => s.try_next(),
            Self::Rendition(s) => s.try_next(),
        }
    }
}

struct Conn {
    ingest: Arc<Ingest>,
    id: u64,
    peer: std::net::SocketAddr,
    flow: Flow,
    publishing: Option<Publishing>,
    playing: Option<Playing>,
    /// Set when the connection should close once what is queued is flushed.
    close: Option<Result<(), SessionError>>,
}

/// Runs one connection to its end.
pub(crate) async fn run(
    ingest: Arc<Ingest>,
    stream: TcpStream,
    id: u64,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let (mut rd, mut wr) = stream.into_split();
    let leftover = tokio::time::timeout(ingest.config.handshake_timeout, handshake(&mut rd, &mut wr))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)??;
    let mut rbuf = BytesMut::with_capacity(SMALL_READ_BUF.max(leftover.len()));
    rbuf.extend_from_slice(&leftover);
    let config = &ingest.config;
    let flow_config = FlowConfig {
        app: config.app.clone(),
        out_chunk_size: config.out_chunk_size,
        max_message: config.max_message,
        command_timeout: config.command_timeout,
        play_wait_timeout: config.play_wait_timeout,
    };
    let mut conn = Conn {
        flow: Flow::new(flow_config, std::time::Instant::now()),
        peer,
        ingest,
        id,
        publishing: None,
        playing: None,
        close: None,
    };
    let result = conn.drive(&mut rd, &mut wr, &mut rbuf, &shutdown).await;
    let reason = match &result {
        _ if shutdown.is_cancelled() => EndReason::Shutdown,
        Ok(()) => EndReason::PublisherLeft,
        Err(SessionError::Refused(_)) if conn.publishing.as_ref().is_some_and(|p| p.revoked.is_cancelled()) => {
            EndReason::KeyRevoked
        }
        Err(SessionError::Refused(_)) if conn.publishing.as_ref().is_some_and(|p| p.kicked.is_cancelled()) => {
            EndReason::Kicked
        }
        Err(e) => EndReason::Error(e.to_string()),
    };
    conn.stop_publishing(reason, false);
    let _ = wr.shutdown().await;
    result
}

async fn handshake(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf) -> Result<Vec<u8>, SessionError> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = vec![0u8; 4096];
    let mut total = 0;
    loop {
        let n = rd.read(&mut buf).await?;
        total += n;
        if total == 0 {
            return Err(SessionError::ClosedEarly);
        }
        if n == 0 {
            return Err(SessionError::Handshake("connection closed during the handshake".into()));
        }
        quickack(rd);
        match hs.process_bytes(&buf[..n]).map_err(|e| SessionError::Handshake(e.to_string()))? {
            HandshakeProcessResult::InProgress { response_bytes } => wr.write_all(&response_bytes).await?,
            HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                wr.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// Asks the kernel to acknowledge what arrives now rather than delay the ACK
/// (Linux re-enables delayed ACKs on its own, so this lasts about one read).
fn quickack(rd: &OwnedReadHalf) {
    let stream: &TcpStream = rd.as_ref();
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_quickack(true) {
        tracing::debug!(error = %e, "TCP_QUICKACK not set");
    }
}

async fn publisher_stop(p: Option<&mut Publishing>) -> Stop {
    match p {
        Some(p) => p.stop.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next_event(p: Option<&mut Playing>) -> Event {
    match p {
        Some(p) => p.sub.next().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn drive(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        rbuf: &mut BytesMut,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let idle = self.ingest.config.idle_timeout;
        let queue_limit = self.ingest.config.player_queue;
        // One timer for the connection's life, pushed back lazily: re-arming a
        // timer on every event would cost more than the event.
        let mut last_activity = tokio::time::Instant::now();
        let shutdown_signal = shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown_signal);
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        // The flow's deadlines (connect/role, a player's wait): one timer, reset
        // only when the flow's next deadline changes.
        let flow_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flow_timer);
        let mut flow_deadline: Option<std::time::Instant> = None;
        loop {
            while self.close.is_none() {
                let Some(action) = self.flow.next(rbuf)? else { break };
                self.act(action).await?;
            }
            if let Some(result) = self.close.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.flow.out().flush_to(wr)).await;
                return result;
            }
            let out_limit = if self.playing.is_some() { queue_limit + OUT_SLACK } else { OUT_SLACK };
            let queued = self.flow.queued();
            if queued > out_limit {
                return Err(SessionError::Refused(format!(
                    "{queued} bytes queued for a peer that does not read them (limit {out_limit})"
                )));
            }
            let want = if self.publishing.is_some() { READ_BUF } else { SMALL_READ_BUF };
            if rbuf.capacity() - rbuf.len() < want / 8 {
                // Only a partial chunk header is left in the buffer: this copies no payload.
                rbuf.reserve(want);
            }
            let next_deadline = self.flow.poll_timeout();
            if next_deadline != flow_deadline {
                flow_deadline = next_deadline;
                if let Some(at) = next_deadline {
                    flow_timer.as_mut().reset(tokio::time::Instant::from_std(at));
                }
            }
            // A player waiting for a publisher (nothing to send) is not idle; a
            // publisher, a connection without a role, or a player whose queue does
            // not drain is.
            let idle_armed = self.playing.is_none() || self.flow.queued() > 0;
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => {
                    self.flow.shutdown();
                }
                stop = publisher_stop(self.publishing.as_mut()) => {
                    let why = match stop {
                        Stop::Revoked => "stream key revoked",
                        Stop::Replaced => "another publisher took over this stream",
                        Stop::Kicked => "disconnected by the operator",
                    };
                    self.close = Some(Err(SessionError::Refused(why.into())));
                }
                r = self.flow.out().write_to(wr), if self.flow.queued() > 0 => { r?; }
                ev = next_event(self.playing.as_mut()), if self.flow.queued() < queue_limit => self.play_event(ev),
                r = rd.read_buf(rbuf) => {
                    let n = match r {
                        Ok(n) => n,
                        // The peer went away: the same as a close, not a server error.
                        Err(e) if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
                        ) => {
                            tracing::debug!(error = %e, "peer reset the connection");
                            0
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        return Ok(());
                    }
                    self.flow.received(n);
                    if self.flow.in_commands() {
                        // Acknowledge at once while the peer waits on each answer: a client
                        // without TCP_NODELAY (ffmpeg) holds its next command until our ACK
                        // of the last one, which the kernel would delay ~40 ms.
                        quickack(rd);
                    }
                    self.ingest.stats.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                _ = &mut flow_timer, if flow_deadline.is_some() => {
                    flow_deadline = None;
                    self.flow.handle_timeout(std::time::Instant::now());
                }
                _ = &mut idle_timer, if idle_armed => {
                    let deadline = last_activity + idle;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(SessionError::Idle(idle));
                    }
                    idle_timer.as_mut().reset(deadline);
                    continue;
                }
            }
            last_activity = tokio::time::Instant::now();
        }
    }

    /// Does what the flow asks. An error ends the connection at once.
    async fn act(&mut self, action: Action) -> Result<(), SessionError> {
        match action {
            Action::Video { timestamp, parts, len } => {
                if let Some(p) = self.publishing.as_mut() {
                    p.media.handle_video(timestamp, parts, len)?;
                }
            }
            Action::Audio { timestamp, parts, len } => {
                if let Some(p) = self.publishing.as_mut() {
                    p.media.handle_audio(timestamp, parts, len)?;
                }
            }
            Action::Data(values) => {
                if let Some(p) = self.publishing.as_mut() {
                    p.media.handle_data(values);
                }
            }
            Action::Authorize(check) => self.authorize(check).await,
            Action::Play { name, broadcast, rendition } => self.play(&name, &broadcast, rendition.as_deref()),
            Action::StopPublishing => self.stop_publishing(EndReason::PublisherLeft, true),
            Action::StopPlaying => self.playing = None,
            Action::Close(result) => self.close = Some(result),
        }
        Ok(())
    }

    /// Checks a publish's key (and the hook), then starts the broadcast.
    async fn authorize(&mut self, check: PublishCheck) {
        let name = match self.ingest.keys.authorize(&check.key).await {
            Ok(Some(name)) => name,
            Ok(None) => return self.flow.publish_refused(Refusal::InvalidKey),
            Err(e) => {
                tracing::error!(error = %e, "stream key lookup failed");
                return self.flow.publish_refused(Refusal::LookupFailed(e.to_string()));
            }
        };
        if let Some(hook) = self.ingest.hook.clone() {
            let request =
                PublishRequest { name: name.clone(), key: check.key.clone(), peer: self.peer, app: check.app };
            if let Err(why) = hook.check(request).await {
                tracing::info!(broadcast = %name, reason = %why, "publish refused by the authorization hook");
                return self.flow.publish_refused(Refusal::Hook(why.to_string()));
            }
        }
        let (revoked, kicked) = (CancellationToken::new(), CancellationToken::new());
        let live = LivePublisher {
            key: KeyHash::of(&check.key),
            session: self.id,
            revoked: revoked.clone(),
            kicked: kicked.clone(),
            peer: self.peer,
        };
        // Known before the broadcast is: a forwarder proves the name with its key.
        self.ingest.live.insert(name.clone(), live);
        let publisher = self.ingest.bus.publish(&name);
        tracing::Span::current().record("broadcast", name.as_str());
        tracing::info!("publishing");
        let (revoked_signal, replaced_signal) = (revoked.clone().cancelled_owned(), publisher.replaced_owned());
        let kicked_signal = kicked.clone().cancelled_owned();
        let stop = Box::pin(async move {
            tokio::select! {
                _ = revoked_signal => Stop::Revoked,
                _ = replaced_signal => Stop::Replaced,
                _ = kicked_signal => Stop::Kicked,
            }
        });
        let media = MediaIngest::with_limits(publisher, self.ingest.config.gop_limits);
        self.publishing = Some(Publishing { media, name, revoked, kicked, stop });
        self.flow.publish_started();
    }

    /// Subscribes a player to what it asked for.
    fn play(&mut self, name: &str, broadcast: &str, rendition: Option<&str>) {
        tracing::Span::current().record("broadcast", name);
        let bus = &self.ingest.bus;
        let live = bus.is_live(broadcast);
        tracing::info!(live, rendition, "playing");
        let sub = match rendition {
            None => PlaySource::Published(bus.subscribe(broadcast, SubscribeOptions::default())),
            Some(track) => PlaySource::Rendition(bus.subscribe_tracks(
                broadcast,
                &[track, gopbus_proto::TrackInfo::AUDIO],
                SubscribeOptions::default(),
            )),
        };
        let viewer = bus.audience().join(broadcast, gopbus_bus::Protocol::Rtmp);
        if !live {
            // Waits for a publisher, for a while.
            self.flow.play_waits(std::time::Instant::now());
        }
        self.playing = Some(Playing { sub, egress: Egress::new(STREAM_ID), viewer });
    }

    /// Queues `ev` and whatever else is ready, up to the queue limit, so that one
    /// `writev` carries as many frames as are waiting.
    fn play_event(&mut self, ev: Event) {
        let limit = self.ingest.config.player_queue;
        let mut next = Some(ev);
        while let Some(ev) = next.take() {
            self.play_one(ev);
            if self.flow.queued() < limit {
                next = self.playing.as_mut().and_then(|p| p.sub.try_next());
            }
        }
    }

    fn play_one(&mut self, ev: Event) {
        let Some(playing) = self.playing.as_mut() else { return };
        self.flow.play_started();
        match &ev {
            Event::Frame(f) => playing.viewer.sent_frame(f.payload.len() as u64),
            Event::Skipped { from, to } => playing.viewer.skipped(to - from),
            _ => {}
        }
        let (enc, out) = self.flow.media_out();
        if let Some(reason) = playing.egress.handle(ev, enc, out) {
            tracing::info!(%reason, frames = playing.egress.frames, skipped_gops = playing.egress.skipped_gops, "broadcast ended; closing player");
            self.playing = None;
            self.flow.play_ended(&reason.to_string());
        }
    }

    /// Ends this connection's broadcast, if it publishes. `clean` marks the GoP complete.
    fn stop_publishing(&mut self, reason: EndReason, clean: bool) {
        let Some(p) = self.publishing.take() else { return };
        let (frames, dropped) = (p.media.frames, p.media.dropped);
        self.ingest.live.remove_if(&p.name, |_, v| v.session == self.id);
        let publisher = p.media.into_publisher();
        if !publisher.is_active() {
            tracing::info!(broadcast = %p.name, frames, dropped, "publisher replaced");
            return;
        }
        tracing::info!(broadcast = %p.name, %reason, frames, dropped, "publisher stopped");
        if clean || reason != EndReason::PublisherLeft {
            publisher.end(reason);
        }
        // Otherwise dropping the handle ends the broadcast with its GoP cut short.
    }
}
