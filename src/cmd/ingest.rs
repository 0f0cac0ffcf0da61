//! `gopbus ingest`: RTMP ingest onto a local bus, forwarded to a relay.

use std::time::Duration;

use anyhow::Context;
use gopbus_bus::node::{forward_with_keys, KeyHashes};
use gopbus_bus::Bus;
use gopbus_ingest::Ingest;
use tokio_util::sync::CancellationToken;

use crate::config::{
    AdminArgs, AuthHookArgs, BusArgs, ClientArgs, CommonArgs, PublicArgs, RedisArgs, RtmpArgs, WebhookArgs,
};

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
    /// Serve the HTTP API (/api/v1: streams in this node's key store, what
    /// is published here, the cluster's directory with --redis), /metrics and
    /// /readyz on this address [default: none].
    #[arg(long, env = "GOPBUS_HTTP")]
    http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    public: PublicArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let data = a.common.data(&file);
    let rtmp = a.rtmp.resolve(&file);
    let redis = a.redis.resolve(&file);
    let remote = a.client.remote(&file)?;
    let store = super::open_keys(&data, redis.as_deref()).await?;
    let bus = Bus::new(a.bus.resolve(&file));
    let ingest = Ingest::with_hook(bus.clone(), store.clone(), rtmp.ingest(), a.auth_hook.resolve(&file)?);
    let listener =
        tokio::net::TcpListener::bind(rtmp.listen).await.with_context(|| format!("binding RTMP on {}", rtmp.listen))?;
    let mut extra = Vec::new();
    let webhooks_stop = CancellationToken::new();
    let mut webhooks_task = None;
    if let Some(addr) = a.http.or(file.http) {
        let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding HTTP on {addr}"))?;
        let webhooks = match a.webhooks.resolve(&file, &data)? {
            Some(config) => Some(gopbus_control::Webhooks::open(config)?),
            None => None,
        };
        let control = gopbus_control::Control::new(
            gopbus_control::ControlConfig {
                admin_token: crate::node::admin_token(a.admin.resolve(&file), &data)?,
                urls: gopbus_control::PublicUrls {
                    host: a.public.resolve(&file),
                    rtmp_port: rtmp.listen.port(),
                    http_port: http.local_addr()?.port(),
                },
                node: gopbus_control::NodeInfo { id: format!("ingest rtmp://{}", listener.local_addr()?), quic: None },
            },
            store,
            bus.clone(),
            Some(std::sync::Arc::new(super::serve::IngestPublishers(ingest.clone()))),
            webhooks.clone(),
            Vec::new(),
        );
        if let Some(url) = &redis {
            let directory = gopbus_store::RedisDirectory::connect(url, Duration::from_secs(10)).await?;
            control.set_directory(std::sync::Arc::new(directory));
        }
        control.add_metrics(crate::metrics::ingest(ingest.clone()));
        tracing::info!(http = %http.local_addr()?, "HTTP API serving");
        let serving = crate::http::serve(http, vec![control.router()], shutdown.clone());
        extra.push(tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::warn!(error = %e, "http server error");
            }
        }));
        extra.push(tokio::spawn(control.run(shutdown.clone())));
        if let Some(w) = webhooks {
            // Stopped after ingest, so the broadcasts the shutdown ends reach the outbox.
            webhooks_task = Some(tokio::spawn(w.run(bus.clone(), None, webhooks_stop.clone())));
        }
    }
    tracing::info!(rtmp = %listener.local_addr()?, bus = %remote.url, keys = redis.as_deref().unwrap_or("data directory"), "gopbus ingest serving");
    let keys = tokio::spawn(ingest.clone().watch_keys(Duration::from_millis(500), shutdown.clone()));
    let server = tokio::spawn(ingest.clone().run(listener, shutdown.clone()));
    // Each broadcast is announced with a proof of the stream key it was let in with.
    let publishers = ingest.clone();
    let key_hashes: KeyHashes = std::sync::Arc::new(move |name: &str| publishers.key_hash(name).map(|h| h.0));
    let forwarder =
        tokio::spawn(forward_with_keys(bus, remote, Duration::from_secs(5), Some(key_hashes), shutdown.clone()));
    shutdown.cancelled().await;
    let _ = server.await;
    webhooks_stop.cancel();
    if let Some(t) = webhooks_task {
        let _ = t.await;
    }
    let _ = keys.await;
    let _ = forwarder.await;
    for t in extra {
        let _ = t.await;
    }
    Ok(())
}
