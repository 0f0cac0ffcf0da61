//! `gopbus relay`: a QUIC bus node without RTMP: an origin, or an edge.

use std::sync::Arc;
use std::time::Duration;

use gopbus_bus::directory::Directory;
use gopbus_bus::node::register;
use gopbus_bus::quic::{Relay, Source};
use gopbus_bus::Bus;
use gopbus_store::RedisDirectory;
use tokio_util::sync::CancellationToken;

use crate::config::{
    defaults, BusArgs, CaArgs, ClusterArgs, CommonArgs, QuicArgs, RedisArgs, SubscribeTokenArgs, TokenArgs,
};
use crate::node::{bind_server, bus_subscribe_token, bus_token};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    quic: QuicArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    subscribe_token: SubscribeTokenArgs,
    /// CA for the upstream nodes.
    #[command(flatten)]
    ca: CaArgs,
    #[command(flatten)]
    bus: BusArgs,
    /// Register held broadcasts in, and find missing ones through, this Redis.
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let data = a.common.data(&file);
    let quic = a.quic.resolve(&file);
    let cluster = a.cluster.resolve(&file);
    let redis = a.redis.resolve(&file);
    let bus = Bus::new(a.bus.resolve(&file));
    let (token, _) = bus_token(a.token.resolve(&file), &data)?;
    let (subscribe_token, _) = bus_subscribe_token(a.subscribe_token.resolve(&file), &data)?;
    // Announces of names with a stream key are checked against the cluster's
    // keys (in --redis, as the ingest nodes keep them) or the data directory's.
    let keys = super::open_keys(&data, redis.as_deref()).await?;
    let (server, cert) = bind_server(&quic, bus.clone(), token.clone(), subscribe_token, keys, &data)?;
    let client_config = a.ca.resolve(&file)?;
    if redis.is_some() && cluster.advertise.is_none() {
        anyhow::bail!("--redis needs --advertise quic://HOST:PORT (how other nodes reach this relay)");
    }
    // With both --upstream and --redis, missing broadcasts come from the upstream
    // and the ones published here are still registered in Redis.
    let directory: Option<Arc<dyn Directory>> = match &redis {
        Some(url) => Some(Arc::new(RedisDirectory::connect(url, cluster.directory_ttl).await?)),
        None => None,
    };
    let source = match (&cluster.upstream, &directory) {
        (Some(up), _) => Some(Source::Fixed(up.clone())),
        (None, Some(d)) => Some(Source::Directory(d.clone())),
        (None, None) => None,
    };
    let mut tasks = Vec::new();
    let mut relay_handle = None;
    let server = match source {
        Some(source) => {
            // Fetching needs only to subscribe: an upstream's subscribe-only token is enough.
            let upstream_token = cluster.upstream_token.clone().unwrap_or_else(|| token.clone());
            let mut relay = Relay::new(bus.clone(), source, upstream_token, client_config);
            relay.configure(cluster.advertise.clone(), Duration::from_secs(defaults::RELAY_LINGER_SECS));
            relay.with_resume_grace(quic.upstream_grace);
            tasks.push(tokio::spawn(relay.clone().reap(shutdown.clone())));
            relay_handle = Some(relay.clone());
            server.with_upstream(relay)
        }
        None => server,
    };
    if let (Some(d), Some(me), Some(relay)) = (directory, cluster.advertise.clone(), relay_handle) {
        // Registers what is published here, not what is fetched from elsewhere.
        let fetched = move || relay.fetching();
        tasks.push(tokio::spawn(register(bus.clone(), d, me, cluster.directory_ttl, fetched, shutdown.clone())));
    }
    tracing::info!(quic = %server.local_addr()?, upstream = ?cluster.upstream, redis = ?redis, cert = %cert.display(), "gopbus relay serving");
    server.run(shutdown.clone()).await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
