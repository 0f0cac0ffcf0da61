//! The pieces every bus node is made of, as a library: a subscriber that
//! reconnects by itself ([`Resubscriber`]), the forwarder of an ingest node
//! ([`forward`]), directory registration ([`register`]), and [`Backoff`].
//!
//! They take plain configuration structs; the `gopbus` binary only maps its
//! flags onto them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gopbus_proto::catalog::Announcement;
use gopbus_proto::wire::StartAt;
use gopbus_proto::EndReason;
use tokio_util::sync::CancellationToken;

use crate::directory::Directory;
use crate::quic::{BusClient, QuicError, RemotePublication, RemoteSubscriber, RemoteTrackSubscriber};
use crate::{Bus, BusConfig, Event, SubscribeOptions, Subscriber, TrackSubscriber};

/// Anything that yields bus events in order: a [`Subscriber`], a
/// [`TrackSubscriber`], their remote forms, a [`Resubscriber`]. Subscriber
/// crates are written against it, so they run on any of them.
pub trait EventSource: Send {
    /// The next event; after [`Event::End`], `End` again. Cancel-safe.
    fn next_event(&mut self) -> impl Future<Output = Event> + Send;
}

impl EventSource for Subscriber {
    fn next_event(&mut self) -> impl Future<Output = Event> + Send {
        self.next()
    }
}

impl EventSource for TrackSubscriber {
    fn next_event(&mut self) -> impl Future<Output = Event> + Send {
        self.next()
    }
}

impl EventSource for RemoteSubscriber {
    fn next_event(&mut self) -> impl Future<Output = Event> + Send {
        self.next()
    }
}

impl EventSource for RemoteTrackSubscriber {
    fn next_event(&mut self) -> impl Future<Output = Event> + Send {
        self.next()
    }
}

/// Exponential reconnect delay: 200 ms, doubling up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    /// The first delay.
    pub const FIRST: Duration = Duration::from_millis(200);

    /// A backoff that doubles up to `max`.
    pub const fn new(max: Duration) -> Self {
        Self { delay: Self::FIRST, max }
    }

    /// The delay the next [`wait`](Self::wait) sleeps.
    pub const fn delay(&self) -> Duration {
        self.delay
    }

    /// Sleeps for the current delay and doubles it; false if `stop` fired first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let slept = tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(self.delay) => true,
        };
        self.delay = (self.delay * 2).min(self.max);
        slept
    }

    /// Back to the first delay (after a success).
    pub const fn reset(&mut self) {
        self.delay = Self::FIRST;
    }

    /// Runs `attempt` until it succeeds (then the delay starts over), logging
    /// each failure as "`what` failed" for `url` and waiting between them;
    /// `None` once `stop` fires.
    pub async fn retry<T, F, Fut>(
        &mut self,
        stop: &CancellationToken,
        url: &str,
        what: &str,
        mut attempt: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QuicError>>,
    {
        while !stop.is_cancelled() {
            match attempt().await {
                Ok(v) => {
                    self.reset();
                    return Some(v);
                }
                Err(e) => {
                    tracing::warn!(bus = %url, error = %e, retry_in = ?self.delay, "{what} failed");
                    if !self.wait(stop).await {
                        break;
                    }
                }
            }
        }
        None
    }
}

/// How to reach a bus node.
#[derive(Clone)]
pub struct Remote {
    /// `quic://HOST:PORT`.
    pub url: String,
    /// The bus token.
    pub token: String,
    /// TLS settings (which CA to trust).
    pub tls: quinn::ClientConfig,
}

impl Remote {
    /// Connects, reading GoP streams no faster than `max_rate` bytes/s if given.
    pub async fn connect(&self, max_rate: Option<u64>) -> Result<BusClient, QuicError> {
        BusClient::connect_paced(&self.url, &self.token, self.tls.clone(), max_rate).await
    }

    /// Connects and watches the node's announcements, retrying with
    /// `backoff` (each failure logged); `None` once `stop` fires. What a
    /// subscriber node (`gopbus hls`, `webrtc`, `transcode`) does at start
    /// and after its watch is lost.
    pub async fn watch(
        &self,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Option<(BusClient, crate::quic::RemoteWatch)> {
        let attempt = || async {
            let client = self.connect(None).await?;
            let watch = client.watch().await?;
            Ok((client, watch))
        };
        backoff.retry(stop, &self.url, "watching the bus", attempt).await
    }
}

/// What a [`Resubscriber`] reads.
#[derive(Clone)]
pub struct ResubscribeConfig {
    /// The node.
    pub remote: Remote,
    /// The broadcast.
    pub broadcast: String,
    /// Tracks to choose (see [`Bus::subscribe_tracks`]); empty: the published ones, as published.
    pub tracks: Vec<String>,
    /// The private bus's window and allowed lag.
    pub bus: BusConfig,
    /// Read no faster than this many bytes per second.
    pub max_rate: Option<u64>,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

enum Remotely {
    Plain(RemoteSubscriber),
    Tracks(RemoteTrackSubscriber),
}

/// A remote subscriber that survives its connection: when the connection drops
/// mid-stream it reconnects with [`Backoff`] and resumes at the first GoP it
/// has not passed on yet (the next event is then that GoP's header; the GoP
/// it was in when the link dropped was cut short, and is not replayed). The
/// broadcast's own end, or `stop`, ends it.
pub struct Resubscriber {
    config: ResubscribeConfig,
    stop: CancellationToken,
    client: BusClient,
    sub: Remotely,
    /// Times the connection was re-established.
    pub reconnects: u64,
    /// Start dts of the last GoP passed on.
    last_start: Option<i64>,
    /// After a reconnection: GoPs starting at or before this were passed on
    /// already (a node replays its current GoP from the start) and are left out.
    resume_after: Option<i64>,
    /// Inside a GoP being left out.
    passing_over: bool,
}

impl Resubscriber {
    /// Subscribes; an error here (a wrong token, an unknown broadcast) is final.
    pub async fn connect(config: ResubscribeConfig, stop: CancellationToken) -> Result<Self, QuicError> {
        let (client, sub) = Self::attempt(&config).await?;
        Ok(Self { config, stop, client, sub, reconnects: 0, last_start: None, resume_after: None, passing_over: false })
    }

    async fn attempt(c: &ResubscribeConfig) -> Result<(BusClient, Remotely), QuicError> {
        let client = c.remote.connect(c.max_rate).await?;
        let sub = if c.tracks.is_empty() {
            Remotely::Plain(client.subscribe(&c.broadcast, StartAt::CurrentGop, c.bus).await?)
        } else {
            let tracks: Vec<&str> = c.tracks.iter().map(String::as_str).collect();
            Remotely::Tracks(client.subscribe_tracks(&c.broadcast, &tracks, StartAt::CurrentGop, c.bus).await?)
        };
        Ok((client, sub))
    }

    /// The next event. `stop` yields `End(Shutdown)`.
    pub async fn next(&mut self) -> Event {
        loop {
            let ev = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Event::End(EndReason::Shutdown),
                ev = async {
                    match &mut self.sub {
                        Remotely::Plain(s) => s.next().await,
                        Remotely::Tracks(s) => s.next().await,
                    }
                } => ev,
            };
            match ev {
                Event::End(last) if self.client.is_closed() => {
                    let error = self.client.closed().await;
                    tracing::warn!(%error, %last, "bus connection lost; reconnecting");
                    if !self.reconnect().await {
                        return Event::End(EndReason::Shutdown);
                    }
                    self.resume_after = self.last_start;
                }
                Event::Gop(h) if self.resume_after.is_some_and(|after| crate::quic::replayed(h.start_dts, after)) => {
                    self.passing_over = true;
                }
                Event::Frame(_) | Event::CutShort { .. } if self.passing_over => {}
                Event::Gop(h) => {
                    (self.resume_after, self.passing_over) = (None, false);
                    self.last_start = Some(h.start_dts);
                    return Event::Gop(h);
                }
                ev => return ev,
            }
        }
    }

    /// Reconnects until it works or `stop` fires (false).
    async fn reconnect(&mut self) -> bool {
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            if !backoff.wait(&self.stop).await {
                return false;
            }
            match Self::attempt(&self.config).await {
                Ok((client, sub)) => {
                    (self.client, self.sub) = (client, sub);
                    self.reconnects += 1;
                    tracing::info!(bus = %self.config.remote.url, broadcast = %self.config.broadcast, "resubscribed; resuming at the newest GoP");
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff.delay(), "resubscribing failed"),
            }
        }
    }
}

impl EventSource for Resubscriber {
    fn next_event(&mut self) -> impl Future<Output = Event> + Send {
        self.next()
    }
}

/// Publishes every broadcast of `bus` to `remote` as it starts (announcements,
/// not polling), reconnecting with backoff (at most `max_backoff` apart) when
/// the connection drops; the local publishers are not disturbed. Runs until `shutdown`.
pub async fn forward(bus: Bus, remote: Remote, max_backoff: Duration, shutdown: CancellationToken) {
    forward_with_keys(bus, remote, max_backoff, None, shutdown).await;
}

/// The SHA-256 of the stream key a broadcast published here was checked
/// with, by name (an ingest node's live publishers).
pub type KeyHashes = Arc<dyn Fn(&str) -> Option<[u8; 32]> + Send + Sync>;

/// Like [`forward`], proving each broadcast's stream key (found by `keys`) to
/// the node, which refuses announces of names it has a key for without one.
pub async fn forward_with_keys(
    bus: Bus,
    remote: Remote,
    max_backoff: Duration,
    keys: Option<KeyHashes>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(max_backoff);
    'connect: loop {
        let connect = || remote.connect(None);
        let Some(client) = backoff.retry(&shutdown, &remote.url, "bus connection", connect).await else { return };
        tracing::info!(bus = %remote.url, "connected to the bus");
        // Announcements start with everything live now, so a reconnection republishes it all.
        let mut announcements = bus.announcements();
        let mut published: HashMap<String, RemotePublication> = HashMap::new();
        // Publications of ended broadcasts still sending their last frames and
        // their end: dropping one would cancel it before the node hears the end.
        let mut draining: Vec<RemotePublication> = Vec::new();
        loop {
            let a = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = client.closed() => {
                    tracing::warn!(bus = %remote.url, error = %e, "bus connection lost; reconnecting");
                    continue 'connect;
                }
                a = announcements.next() => a,
            };
            published.retain(|_, p| !p.is_finished());
            draining.retain(|p| !p.is_finished());
            let names: Vec<String> = match a {
                Announcement::Started(c) => vec![c.name],
                Announcement::Live(list) => list.into_iter().map(|c| c.name).collect(),
                Announcement::Ended(e) => {
                    draining.extend(published.remove(&e.name));
                    continue;
                }
                Announcement::Changed(_) => continue,
            };
            for name in names {
                if published.contains_key(&name) {
                    continue;
                }
                let sub = bus.subscribe(&name, SubscribeOptions::default());
                if !bus.is_live(&name) {
                    continue; // ended already: this subscriber waits on an empty slot
                }
                let key_hash = keys.as_ref().and_then(|k| k(&name));
                match client.publish_with_key(&name, sub, key_hash.as_ref()).await {
                    Ok(p) => {
                        tracing::info!(broadcast = %name, bus = %remote.url, "publishing to the bus");
                        published.insert(name, p);
                    }
                    Err(e) if e.is_connection_lost() => continue 'connect,
                    Err(e) => tracing::warn!(broadcast = %name, error = %e, "publishing to the bus failed"),
                }
            }
        }
    }
}

/// Keeps `advertise` registered in `directory` as the holder of every
/// broadcast published on `bus` (derived tracks included) that `fetched` does
/// not say came from elsewhere: at once when one starts, and every third of
/// the directory's TTL after that. Runs until `shutdown`.
pub async fn register(
    bus: Bus,
    directory: Arc<dyn Directory>,
    advertise: String,
    ttl: Duration,
    fetched: impl Fn() -> Vec<String> + Send,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    let mut announcements = bus.announcements();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            a = announcements.next() => {
                if !matches!(a, Announcement::Started(_) | Announcement::Changed(_)) {
                    continue;
                }
            }
        }
        let fetched = fetched();
        for b in bus.broadcasts() {
            if fetched.contains(&b.name) {
                continue; // fetched from another node; that node registers it
            }
            if let Err(e) = directory.register(&b.name, &advertise).await {
                tracing::warn!(broadcast = %b.name, error = %e, "directory registration failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_cap_and_resets() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_millis(700));
        let mut slept = Vec::new();
        for _ in 0..4 {
            let t = tokio::time::Instant::now();
            assert!(b.wait(&stop).await);
            slept.push(t.elapsed().as_millis());
        }
        assert_eq!(slept, [200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.delay(), Backoff::FIRST);
        stop.cancel();
        assert!(!b.wait(&stop).await, "a stopped wait says so");
    }
}
