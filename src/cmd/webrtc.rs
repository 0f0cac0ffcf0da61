//! `gopbus webrtc`: the WebRTC subscriber as a node of its own, fed by a bus node.

use anyhow::Context;
use gopbus_webrtc::WebRtc;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientArgs, CommonArgs, HttpArgs, WebRtcArgs};

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
    webrtc: WebRtcArgs,
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let remote = a.client.remote(&file)?;
    let http_addr = a.http.resolve(&file);
    let webrtc = WebRtc::new_remote(a.webrtc.resolve(&file)?);
    let http =
        tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("binding HTTP on {http_addr}"))?;
    tracing::info!(http = %http.local_addr()?, bus = %remote.url, "gopbus webrtc serving");
    let http_task = tokio::spawn(crate::http::serve(http, vec![webrtc.router()], shutdown.clone()));
    webrtc.run_remote(remote, shutdown.clone()).await;
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "http server error");
    }
    tracing::info!("stopped");
    Ok(())
}
