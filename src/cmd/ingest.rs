//! `gopbus ingest`: RTMP ingest onto a local bus, forwarded to a relay.

use std::time::Duration;

use anyhow::Context;
use gopbus_bus::node::forward;
use gopbus_bus::Bus;
use gopbus_ingest::Ingest;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthHookArgs, BusArgs, ClientArgs, CommonArgs, RedisArgs, RtmpArgs};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rtmp: RtmpArgs,
    /// Stream keys from Redis (shared by every ingest node; manage them with
    /// `gopbus streams --redis URL ...`) instead of DATA.
    #[command(flatten)]
    redis: RedisArgs,
    /// The bus node to connect to, its token and the CA to trust.
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    auth_hook: AuthHookArgs,
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let data = a.common.data(&file);
    let rtmp = a.rtmp.resolve(&file);
    let redis = a.redis.resolve(&file);
    let remote = a.client.remote(&file)?;
    let store = super::open_keys(&data, redis.as_deref()).await?;
    let bus = Bus::new(a.bus.resolve(&file));
    let ingest = Ingest::with_hook(bus.clone(), store, rtmp.ingest(), a.auth_hook.resolve(&file)?);
    let listener =
        tokio::net::TcpListener::bind(rtmp.listen).await.with_context(|| format!("binding RTMP on {}", rtmp.listen))?;
    tracing::info!(rtmp = %listener.local_addr()?, bus = %remote.url, keys = redis.as_deref().unwrap_or("data directory"), "gopbus ingest serving");
    let keys = tokio::spawn(ingest.clone().watch_keys(Duration::from_millis(500), shutdown.clone()));
    let server = tokio::spawn(ingest.clone().run(listener, shutdown.clone()));
    let forwarder = tokio::spawn(forward(bus, remote, Duration::from_secs(5), shutdown.clone()));
    shutdown.cancelled().await;
    let _ = server.await;
    let _ = keys.await;
    let _ = forwarder.await;
    Ok(())
}
