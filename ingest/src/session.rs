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
use gopbus_bus::{Event, SubscribeOptions};
use gopbus_proto::EndReason;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::error::SessionError;
use crate::fanout::Link;
use crate::flow::{Action, Flow, FlowConfig, PublishCheck, Refusal, STREAM_ID};
use crate::play::{Egress, PlaySource, Playing};
use crate::publish::MediaIngest;
use crate::server::{Ingest, LivePublisher};
use gopbus_store::keys::KeyHash;
use gopbus_store::PublishRequest;

/// Read buffer size of a publisher: payload slices keep a buffer alive while the
/// GoP window holds them, so this is also the granularity of ingest memory.
const READ_BUF: usize = 64 * 1024;
/// Read buffer size of any other connection (players send little: acks, pings).
const SMALL_READ_BUF: usize = 1024;
/// A publisher that sends faster than this (bytes per second) over two
/// [`RATE_WINDOW`]s in a row is flushing a backlog or flooding — no live
/// stream comes near 80 Mb/s, and a keyframe's burst lasts less — and is read
/// in batches: drained, then left for [`READ_PAUSE`] to let more arrive,
/// instead of waking once per TCP write it makes (what costs CPU at such rates
/// is the wake-ups, not the bytes). A paced stream is read as soon as each
/// write arrives.
const BATCH_ABOVE: u64 = 10_000_000;
const RATE_WINDOW: Duration = Duration::from_millis(20);
const READ_PAUSE: Duration = Duration::from_millis(2);
/// `SO_RCVLOWAT` of a publisher read in batches: more than a pause gathers at
/// the rates that start batching, so the pauses are not interrupted.
const BATCH_LOW_WATER: usize = 256 * 1024;
/// Reads in a row when draining a batch, before the driver looks at everything else.
const READ_AGAIN_MAX: u32 = 32;

/// A connection's read rate, over windows of [`RATE_WINDOW`].
struct ReadRate {
    start: tokio::time::Instant,
    bytes: u64,
    /// The last window was above the rate.
    above: bool,
    batching: bool,
}

impl ReadRate {
    fn new(now: tokio::time::Instant) -> Self {
        Self { start: now, bytes: 0, above: false, batching: false }
    }

    /// Counts a read; whether the connection is read in batches now.
    fn add(&mut self, n: usize, now: tokio::time::Instant) -> bool {
        self.bytes += n as u64;
        let elapsed = now.duration_since(self.start);
        if elapsed >= RATE_WINDOW {
            let above = u128::from(self.bytes) * 1_000_000_000 >= u128::from(BATCH_ABOVE) * elapsed.as_nanos();
            let batching = above && (self.above || self.batching);
            if batching != self.batching {
                tracing::debug!(batching, limit = BATCH_ABOVE, "publisher read rate crossed the batching rate (B/s)");
            }
            self.batching = batching;
            self.above = above;
            self.start = now;
            self.bytes = 0;
        }
        self.batching
    }
}

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

struct Conn {
    ingest: Arc<Ingest>,
    id: u64,
    peer: std::net::SocketAddr,
    flow: Flow,
    /// The sending side, shared with the player's group while it is in one.
    link: Arc<Link>,
    publishing: Option<Publishing>,
    /// The player while its own task serves it.
    playing: Option<Playing>,
    /// A group serves the player (see [`crate::fanout`]).
    grouped: bool,
    /// The player pulled everything the bus had: once its queue is written, a
    /// group may serve it.
    caught_up: bool,
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
        link: Link::new(wr),
        peer,
        ingest,
        id,
        publishing: None,
        playing: None,
        grouped: false,
        caught_up: false,
        close: None,
    };
    let result = conn.drive(&mut rd, &mut rbuf, &shutdown).await;
    conn.ungroup();
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
    conn.playing = None;
    // Our FIN now: a group may hold the link until its next pass.
    let _ = socket2::SockRef::from(conn.link.writer().as_ref()).shutdown(std::net::Shutdown::Write);
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

/// Sets `SO_RCVLOWAT`: the socket signals readable only with `bytes` queued (a
/// non-blocking read still returns whatever is there).
fn set_recv_low_water(rd: &OwnedReadHalf, bytes: usize) {
    use std::os::fd::AsRawFd;
    let stream: &TcpStream = rd.as_ref();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is this connection's open socket, and the option
    // value is a c_int whose size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_RCVLOWAT not set");
    }
}

/// The peer went away: the same as a close, not a server error.
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
    )
}

async fn publisher_stop(p: Option<&mut Publishing>) -> Stop {
    match p {
        Some(p) => p.stop.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Writes everything queued on `link`, waiting for the socket as needed.
async fn flush_link(link: &Link) -> std::io::Result<()> {
    loop {
        if link.try_flush(&mut link.lock())? {
            return Ok(());
        }
        link.writer().writable().await?;
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
        rbuf: &mut BytesMut,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let idle = self.ingest.config.idle_timeout;
        let queue_limit = self.ingest.config.player_queue;
        // One timer for the connection's life, pushed back lazily: re-arming a
        // timer on every event would cost more than the event.
        let mut last_activity = tokio::time::Instant::now();
        // Batched reads of a fast publisher (see BATCH_ABOVE): draining now, or
        // pausing until `read_pause`.
        let mut rate = ReadRate::new(last_activity);
        let (mut draining, mut reads_again, mut paused, mut low_water) = (false, 0, false, false);
        let read_pause = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(read_pause);
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
                self.ungroup();
                self.sync_out()?;
                let _ = tokio::time::timeout(Duration::from_secs(5), flush_link(&self.link)).await;
                return result;
            }
            self.sync_out()?;
            let queued = self.link.lock().queued();
            if self.caught_up && queued == 0 {
                self.caught_up = false;
                self.group();
            }
            let player = self.playing.is_some() || self.grouped;
            let out_limit = if player { queue_limit + OUT_SLACK } else { OUT_SLACK };
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
            if draining && self.publishing.is_some() && reads_again < READ_AGAIN_MAX {
                match rd.try_read_buf(rbuf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        self.received(rd, n);
                        draining = rate.add(n, tokio::time::Instant::now());
                        reads_again += 1;
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Drained: let the next batch gather (unless the flood is over).
                        let now = tokio::time::Instant::now();
                        if rate.add(0, now) {
                            paused = true;
                            read_pause.as_mut().reset(now + READ_PAUSE);
                        }
                    }
                    Err(e) if is_reset(&e) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            if rate.batching != low_water {
                // While batching, the socket does not signal readable for every
                // segment that arrives during a pause (each would wake the runtime's
                // poller for nothing): reads are driven by the pause timer.
                low_water = rate.batching;
                set_recv_low_water(rd, if low_water { BATCH_LOW_WATER } else { 1 });
            }
            draining = false;
            reads_again = 0;
            let next_deadline = self.flow.poll_timeout();
            if next_deadline != flow_deadline {
                flow_deadline = next_deadline;
                if let Some(at) = next_deadline {
                    flow_timer.as_mut().reset(tokio::time::Instant::from_std(at));
                }
            }
            // A player waiting for a publisher (nothing to send) is not idle, nor
            // one its group serves (the group hands back one whose socket does not
            // drain); a publisher, a connection without a role, or a player whose
            // queue does not drain is.
            let idle_armed = !self.grouped && (self.playing.is_none() || queued > 0);
            // Reads first: a publisher's media is what a connection does most, and
            // the other branches' futures stay registered between passes (they
            // wake the task when they fire), so polling them first each pass is
            // wasted work. A read that keeps being ready still yields to them:
            // tokio's cooperative budget makes it pending after a while.
            tokio::select! {
                biased;
                r = rd.read_buf(rbuf), if !paused => {
                    let n = match r {
                        Ok(n) => n,
                        // The peer went away: the same as a close, not a server error.
                        Err(e) if is_reset(&e) => {
                            tracing::debug!(error = %e, "peer reset the connection");
                            0
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        return Ok(());
                    }
                    self.received(rd, n);
                    draining = rate.add(n, tokio::time::Instant::now());
                }
                // The next batch: read what is there, whatever the socket signalled.
                () = &mut read_pause, if paused => {
                    paused = false;
                    draining = true;
                    continue;
                }
                _ = &mut shutdown_signal => {
                    self.ungroup();
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
                r = self.link.writer().writable(), if !self.grouped && queued > 0 => {
                    r?;
                    self.link.try_flush(&mut self.link.lock())?;
                }
                ev = next_event(self.playing.as_mut()), if queued < queue_limit => self.play_event(ev),
                () = self.link.handed_back(), if self.grouped => {
                    if let Some(playing) = self.link.reclaim() {
                        self.playing = Some(playing);
                        self.grouped = false;
                    }
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

    /// Counts `n` bytes just read.
    fn received(&mut self, rd: &OwnedReadHalf, n: usize) {
        self.flow.received(n);
        if self.flow.in_commands() {
            // Acknowledge at once while the peer waits on each answer: a client
            // without TCP_NODELAY (ffmpeg) holds its next command until our ACK
            // of the last one, which the kernel would delay ~40 ms.
            quickack(rd);
        }
        self.ingest.stats.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
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
            Action::StopPlaying => {
                self.ungroup();
                self.playing = None;
            }
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
            on: crate::loops::current(),
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
        self.link.lock().enc.set_chunk_size(self.flow.chunk_size());
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
        self.flow.play_started();
        // Statuses the flow queued go before the media.
        if self.sync_out().is_err() {
            return;
        }
        let Some(playing) = self.playing.as_mut() else { return };
        let mut st = self.link.lock();
        let st = &mut *st;
        let mut next = Some(ev);
        let mut caught_up = false;
        while let Some(ev) = next.take() {
            if let Err(reason) = playing.queue(ev, &mut st.enc, &mut st.out) {
                tracing::info!(%reason, frames = playing.egress.frames, skipped_gops = playing.egress.skipped_gops, "broadcast ended; closing player");
                self.playing = None;
                self.flow.play_ended(&reason.to_string());
                return;
            }
            if st.out.len() < limit {
                next = playing.sub.try_next();
                caught_up = next.is_none();
            }
        }
        self.caught_up = caught_up;
    }

    /// Moves what the flow queued (replies, statuses) behind what the link has.
    /// A grouped player's link is written at once; if the socket does not take
    /// it all, the player is taken back from its group.
    fn sync_out(&mut self) -> std::io::Result<()> {
        if self.flow.queued() == 0 {
            return Ok(());
        }
        let mut st = self.link.lock();
        if self.grouped {
            // Behind the frames the group queued.
            st.materialize();
        }
        st.out.append(self.flow.out());
        if self.grouped && !self.link.try_flush(&mut st)? {
            drop(st);
            self.ungroup();
        }
        Ok(())
    }

    /// Hands the caught-up player to a group of its broadcast, if it can be grouped.
    fn group(&mut self) {
        let Some(playing) = self.playing.take() else { return };
        let publisher = match &playing.sub {
            PlaySource::Published(sub) => self.ingest.live.get(sub.name()).map(|p| p.on),
            _ => None,
        };
        self.playing = self.ingest.groups.join(&self.link, playing, publisher);
        self.grouped = self.playing.is_none();
    }

    /// Takes the player back from its group (if it is in one).
    fn ungroup(&mut self) {
        if self.grouped {
            self.grouped = false;
            if let Some(playing) = self.link.take_back() {
                self.playing = Some(playing);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rate` bytes/s in reads of `chunk` bytes for `ms` milliseconds from `at`;
    /// returns whether it batches at the end, and the new time.
    fn feed(
        r: &mut ReadRate,
        at: tokio::time::Instant,
        rate: u64,
        chunk: usize,
        ms: u64,
    ) -> (bool, tokio::time::Instant) {
        let every = Duration::from_nanos(chunk as u64 * 1_000_000_000 / rate);
        let (mut t, end) = (at, at + Duration::from_millis(ms));
        let mut batching = false;
        while t < end {
            t += every;
            batching = r.add(chunk, t);
        }
        (batching, t)
    }

    #[test]
    fn only_a_sustained_flood_is_read_in_batches() {
        let t0 = tokio::time::Instant::now();
        // A 20 Mb/s live stream, for a second: never.
        let mut r = ReadRate::new(t0);
        assert!(!feed(&mut r, t0, 2_500_000, 4096, 1000).0);
        // A keyframe's burst (500 KB at 100 MB/s, one window at most) then the stream: never.
        let mut r = ReadRate::new(t0);
        let (b, t) = feed(&mut r, t0, 100_000_000, 16 * 1024, 5);
        assert!(!b);
        assert!(!feed(&mut r, t, 2_500_000, 4096, 200).0);
        // A flood of 100 MB/s: after two windows, and it ends when the flood does.
        let mut r = ReadRate::new(t0);
        let (b, t) = feed(&mut r, t0, 100_000_000, 16 * 1024, 60);
        assert!(b, "a flood past two windows is batched");
        assert!(!feed(&mut r, t, 2_500_000, 4096, 50).0, "a paced stream after the flood is not");
    }
}
