//! `gopbus transcode`: a transcoder worker fed by a bus node; any number of
//! them share the renditions under Redis leases.

use std::sync::Arc;

use anyhow::Context;
use gopbus_bus::lease::{Leases, LocalLeases};
use gopbus_store::RedisLeases;
use gopbus_transcode::Transcoder;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientArgs, CommonArgs, RedisArgs, TranscodeArgs};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The bus node to connect to, its token and the CA to trust.
    #[command(flatten)]
    client: ClientArgs,
    /// Redis holding the job leases the workers share (without it, this worker
    /// assumes it is the only one).
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    transcode: TranscodeArgs,
    /// This worker's name in leases and logs [default: HOSTNAME-PID].
    #[arg(long, env = "GOPBUS_WORKER_ID")]
    worker_id: Option<String>,
    /// Serve the worker's status (`GET /transcode`) on this address [default: none].
    #[arg(long, env = "GOPBUS_HTTP")]
    http: Option<std::net::SocketAddr>,
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let remote = a.client.remote(&file)?;
    let config = a.transcode.resolve(&file)?.context("`gopbus transcode` with --no-transcoder does nothing")?;
    let leases: Arc<dyn Leases> = match a.redis.resolve(&file) {
        Some(url) => Arc::new(RedisLeases::connect(&url).await.context("opening the job leases in Redis")?),
        None => Arc::new(LocalLeases::default()),
    };
    let id = a.worker_id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
    });
    let worker = Transcoder::new(config, &id, leases);
    let http_task = match a.http {
        Some(addr) => {
            let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding HTTP on {addr}"))?;
            Some(tokio::spawn(crate::http::serve(http, vec![worker.router()], shutdown.clone())))
        }
        None => None,
    };
    tracing::info!(bus = %remote.url, worker = %id, capacity_mpxs = worker.capacity(), "gopbus transcode serving");
    worker.run_remote(remote, shutdown.clone()).await;
    if let Some(Ok(Err(e))) = match http_task {
        Some(t) => Some(t.await),
        None => None,
    } {
        tracing::warn!(error = %e, "http server error");
    }
    tracing::info!("stopped");
    Ok(())
}
