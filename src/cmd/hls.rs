//! `gopbus hls`: the HLS segmenter as a node of its own, fed by a bus node.

use anyhow::Context;
use gopbus_hls::Hls;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminArgs, ClientArgs, CommonArgs, HlsArgs, HttpArgs};
use crate::node::admin_token;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The bus node to connect to, its token and the CA to trust.
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    hls: HlsArgs,
    #[command(flatten)]
    admin: AdminArgs,
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let data = a.common.data(&file);
    let remote = a.client.remote(&file)?;
    let http_addr = a.http.resolve(&file);
    let hls = Hls::new(a.hls.resolve(&file, &data)?);
    let admin = admin_token(a.admin.resolve(&file), &data)?;
    let http =
        tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("binding HTTP on {http_addr}"))?;
    tracing::info!(http = %http.local_addr()?, bus = %remote.url, recordings = %hls.config().recordings.display(), "gopbus hls serving");
    let http_task = tokio::spawn(crate::http::serve(http, vec![hls.router(), hls.api(&admin)], shutdown.clone()));
    hls.run_remote(remote, shutdown.clone()).await;
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "http server error");
    }
    tracing::info!("stopped");
    Ok(())
}
