//! The QUIC bus in the binary: serving the local bus, `gopbus dump`, and the
//! settings they share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use gopbus_bus::quic::{tls, BusClient, BusServer};
use gopbus_bus::{Bus, BusConfig, Event, StartAt, SubscribeOptions};
use tokio_util::sync::CancellationToken;

use crate::flv_out::FlvWriter;

/// Options of a node that connects to a bus.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientOpts {
    /// The bus token of the node connected to.
    #[arg(long, env = "GOPBUS_BUS_TOKEN")]
    pub(crate) bus_token: String,
    /// CA certificate (PEM) to trust: a node's DATA/bus-cert.pem when it made its own.
    #[arg(long, env = "GOPBUS_BUS_CA")]
    pub(crate) bus_ca: Option<PathBuf>,
}

impl ClientOpts {
    pub(crate) fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        tls::client_config(self.bus_ca.as_deref()).context("QUIC client TLS")
    }
}

/// The bus token of a serving node: given, or made once and kept in `DATA/bus-token`.
pub(crate) fn bus_token(given: Option<String>, data: &Path) -> anyhow::Result<(String, bool)> {
    if let Some(t) = given {
        return Ok((t, false));
    }
    let path = data.join("bus-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok((t, false));
        }
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data)?;
    std::fs::write(&path, format!("{token}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok((token, true))
}

/// Binds the QUIC bus server for `bus`; returns it and where its certificate is.
pub(crate) fn bind_server(
    addr: std::net::SocketAddr,
    bus: Bus,
    token: String,
    data: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<(BusServer, PathBuf)> {
    let identity = tls::server_identity(cert, key, data, &[]).context("QUIC bus certificate")?;
    let cert_path = identity.cert_path.clone();
    let server = BusServer::bind(addr, tls::server_config(identity)?, bus, token).context("binding the QUIC bus")?;
    Ok((server, cert_path))
}

/// `gopbus dump`: subscribes to `name` on a bus node and writes it as FLV. If the
/// connection drops mid-stream it reconnects with backoff and resumes at the
/// newest GoP; a failure before the first subscription is an error.
pub(crate) async fn dump(
    bus_url: &str,
    opts: &ClientOpts,
    name: &str,
    out: &Path,
    duration: Option<f64>,
    max_rate: Option<u64>,
) -> anyhow::Result<()> {
    let config = opts.client_config()?;
    let mut flv: Option<FlvWriter<tokio::io::BufWriter<tokio::fs::File>>> = None;
    let stop = CancellationToken::new();
    if let Some(secs) = duration {
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            s.cancel();
        });
    }
    let mut backoff = Backoff::new(Duration::from_secs(3));
    let reason = 'session: loop {
        let attempt = async {
            let client = BusClient::connect_paced(bus_url, &opts.bus_token, config.clone(), max_rate)
                .await
                .with_context(|| format!("connecting to {bus_url}"))?;
            let sub = client
                .subscribe(name, StartAt::CurrentGop, BusConfig { window: 4, max_lag: 4 })
                .await
                .with_context(|| format!("subscribing to {name}"))?;
            anyhow::Ok((client, sub))
        };
        let (client, mut sub) = match attempt.await {
            Ok(x) => x,
            Err(e) if flv.is_none() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff.delay, "resubscribing failed");
                if !backoff.wait(&stop).await {
                    break 'session "duration reached".to_owned();
                }
                continue;
            }
        };
        if flv.is_some() {
            tracing::info!(bus = %bus_url, broadcast = %name, "resubscribed; resuming at the newest GoP");
        } else {
            let file = tokio::fs::File::create(out).await.with_context(|| format!("creating {}", out.display()))?;
            flv = Some(FlvWriter::new(tokio::io::BufWriter::new(file)).await?);
        }
        backoff.reset();
        let writer = flv.as_mut().expect("created above");
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break 'session "duration reached".to_owned(),
                _ = tokio::signal::ctrl_c() => break 'session "interrupted".to_owned(),
                ev = sub.next() => ev,
            };
            match &ev {
                Event::End(r) if client.is_closed() => {
                    tracing::warn!(error = %client.closed().await, last = %r, "bus connection lost; reconnecting");
                    continue 'session;
                }
                Event::End(r) => break 'session format!("broadcast ended: {r}"),
                Event::Skipped { from, to } => tracing::warn!(from, to, "fell behind; skipped GoPs"),
                _ => {}
            }
            writer.event(&ev).await?;
        }
    };
    let frames = match flv {
        Some(w) => w.finish().await?,
        None => 0,
    };
    tracing::info!(frames, file = %out.display(), %reason, "dump finished");
    Ok(())
}

/// Options of a node that serves the bus.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerOpts {
    /// Token every bus connection must present (and this node presents upstream)
    /// [default: made on first start, kept in DATA/bus-token].
    #[arg(long, env = "GOPBUS_BUS_TOKEN")]
    pub(crate) bus_token: Option<String>,
    /// CA certificate (PEM) to trust for upstream nodes.
    #[arg(long, env = "GOPBUS_BUS_CA")]
    pub(crate) bus_ca: Option<PathBuf>,
    /// TLS certificate (PEM) [default: self-signed, DATA/bus-cert.pem].
    #[arg(long, env = "GOPBUS_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `--tls-cert`.
    #[arg(long, env = "GOPBUS_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
}

/// `gopbus relay`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RelayArgs {
    /// QUIC listen address (UDP).
    #[arg(long, env = "GOPBUS_QUIC", default_value = "0.0.0.0:4443")]
    pub(crate) quic: std::net::SocketAddr,
    /// Data directory (certificate, token).
    #[arg(long, env = "GOPBUS_DATA", default_value = "./data")]
    pub(crate) data: PathBuf,
    /// Fetch broadcasts this relay lacks from this node (an edge of a known origin).
    #[arg(long, env = "GOPBUS_UPSTREAM")]
    pub(crate) upstream: Option<String>,
    /// Register held broadcasts in, and find missing ones through, this Redis.
    #[arg(long, env = "GOPBUS_REDIS")]
    pub(crate) redis: Option<String>,
    /// This relay's URL as other nodes reach it (with `--redis`).
    #[arg(long, env = "GOPBUS_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// Seconds a Redis directory entry lives unless refreshed.
    #[arg(long, default_value_t = 5)]
    pub(crate) directory_ttl: u64,
    #[command(flatten)]
    pub(crate) server: ServerOpts,
}

/// Runs a relay until Ctrl-C/SIGTERM.
pub(crate) async fn relay(a: RelayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    use gopbus_bus::directory::{Directory, RedisDirectory};
    use gopbus_bus::quic::{Relay, Source};
    use std::sync::Arc;

    let bus = Bus::new(BusConfig::default());
    let (token, _) = bus_token(a.server.bus_token.clone(), &a.data)?;
    let (server, cert) = bind_server(
        a.quic,
        bus.clone(),
        token.clone(),
        &a.data,
        a.server.tls_cert.as_deref(),
        a.server.tls_key.as_deref(),
    )?;
    let client_config = tls::client_config(a.server.bus_ca.as_deref())?;
    if a.redis.is_some() && a.advertise.is_none() {
        anyhow::bail!("--redis needs --advertise quic://HOST:PORT (how other nodes reach this relay)");
    }
    // With both --upstream and --redis, missing broadcasts come from the upstream
    // and the ones published here are still registered in Redis.
    let directory = match &a.redis {
        Some(url) => Some(Arc::new(RedisDirectory::connect(url, Duration::from_secs(a.directory_ttl.max(1))).await?)),
        None => None,
    };
    let source = match (&a.upstream, &directory) {
        (Some(up), _) => Some(Source::Fixed(up.clone())),
        (None, Some(d)) => Some(Source::Directory(d.clone())),
        (None, None) => None,
    };
    let mut tasks = Vec::new();
    let mut relay_handle = None;
    let server = match source {
        Some(source) => {
            let mut relay = Relay::new(bus.clone(), source, token.clone(), client_config);
            relay.configure(a.advertise.clone(), Duration::from_secs(5));
            tasks.push(tokio::spawn(relay.clone().reap(shutdown.clone())));
            relay_handle = Some(relay.clone());
            server.with_upstream(relay)
        }
        None => server,
    };
    if let (Some(d), Some(me), Some(relay)) = (directory.clone(), a.advertise.clone(), relay_handle) {
        // Register every broadcast published here (not the ones fetched from elsewhere).
        let (bus, stop, ttl) = (bus.clone(), shutdown.clone(), d.ttl());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let fetched = relay.fetching();
                for b in bus.broadcasts() {
                    if fetched.contains(&b.name) {
                        continue; // fetched from another node; that node registers it
                    }
                    if let Err(e) = d.register(&b.name, &me).await {
                        tracing::warn!(broadcast = %b.name, error = %e, "directory registration failed");
                    }
                }
            }
        }));
    }
    tracing::info!(quic = %server.local_addr()?, upstream = ?a.upstream, redis = ?a.redis, cert = %cert.display(), "gopbus relay serving");
    server.run(shutdown.clone()).await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// `gopbus ingest`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IngestArgs {
    /// RTMP listen address.
    #[arg(long, env = "GOPBUS_RTMP", default_value = "0.0.0.0:1935")]
    pub(crate) rtmp: std::net::SocketAddr,
    /// Data directory (stream keys, unless `--redis`).
    #[arg(long, env = "GOPBUS_DATA", default_value = "./data")]
    pub(crate) data: PathBuf,
    /// Take stream keys from this Redis (`redis://HOST:PORT`), shared by every ingest node;
    /// manage them with `gopbus streams --redis URL ...`.
    #[arg(long, env = "GOPBUS_REDIS")]
    pub(crate) redis: Option<String>,
    /// The relay to publish to, `quic://HOST:PORT`.
    #[arg(long, env = "GOPBUS_BUS")]
    pub(crate) bus: String,
    #[command(flatten)]
    pub(crate) client: ClientOpts,
}

/// Publishes every broadcast of `bus` to the node at `url`, reconnecting with
/// backoff when the connection drops (the RTMP publishers stay connected).
pub(crate) async fn forward(bus: Bus, url: String, opts: ClientOpts, shutdown: CancellationToken) {
    use std::collections::HashMap;
    let mut backoff = Backoff::new(Duration::from_secs(5));
    'connect: loop {
        if shutdown.is_cancelled() {
            return;
        }
        let client = match async {
            BusClient::connect(&url, &opts.bus_token, opts.client_config()?).await.map_err(anyhow::Error::from)
        }
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(bus = %url, error = %e, retry_in = ?backoff.delay, "bus connection failed");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(bus = %url, "connected to the bus");
        backoff.reset();
        let mut published: HashMap<String, gopbus_bus::quic::RemotePublication> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                e = client.closed() => {
                    tracing::warn!(bus = %url, error = %e, "bus connection lost; reconnecting");
                    continue 'connect;
                }
                _ = tick.tick() => {}
            }
            published.retain(|_, p| !p.is_finished());
            for b in bus.broadcasts() {
                if published.contains_key(&b.name) {
                    continue;
                }
                let sub = bus.subscribe(&b.name, SubscribeOptions::default());
                match client.publish_from(&b.name, sub).await {
                    Ok(p) => {
                        tracing::info!(broadcast = %b.name, bus = %url, "publishing to the bus");
                        published.insert(b.name.clone(), p);
                    }
                    Err(e) => tracing::warn!(broadcast = %b.name, error = %e, "publishing to the bus failed"),
                }
            }
        }
    }
}

/// Exponential reconnect delay: 200 ms, doubling up to a cap.
struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);

    const fn new(max: Duration) -> Self {
        Self { delay: Self::FIRST, max }
    }

    /// Sleeps for the current delay and doubles it; false if `stop` fired first.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let slept = tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(self.delay) => true,
        };
        self.delay = (self.delay * 2).min(self.max);
        slept
    }

    fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}
