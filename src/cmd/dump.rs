//! `gopbus dump`: a remote broadcast written as FLV, surviving reconnections.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use gopbus_bus::node::{ResubscribeConfig, Resubscriber};
use gopbus_bus::BusConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientArgs, CommonArgs};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The bus node to connect to, its token and the CA to trust.
    #[command(flatten)]
    client: ClientArgs,
    /// The broadcast (stream name).
    name: String,
    /// Output FLV file.
    #[arg(long)]
    out: PathBuf,
    /// Stop after this many seconds (default: when the broadcast ends).
    #[arg(long)]
    duration: Option<f64>,
    /// Read no faster than this many bytes per second (a deliberately slow subscriber).
    #[arg(long)]
    max_rate: Option<u64>,
    /// A track to write, by catalog name (`video`, `audio`, `video/480p`, …); repeat
    /// it to choose several, the video first. Default: the published tracks.
    #[arg(long = "track")]
    tracks: Vec<String>,
}

pub(crate) async fn run(a: Args, interrupt: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let remote = a.client.remote(&file)?;
    let stop = interrupt.child_token();
    if let Some(secs) = a.duration {
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            s.cancel();
        });
    }
    let config = ResubscribeConfig {
        remote: remote.clone(),
        broadcast: a.name.clone(),
        tracks: a.tracks.clone(),
        bus: BusConfig { window: 4, max_lag: 4 },
        max_rate: a.max_rate,
        max_backoff: Duration::from_secs(3),
    };
    let source = Resubscriber::connect(config, stop.clone())
        .await
        .with_context(|| format!("subscribing to {} at {}", a.name, remote.url))?;
    let out = tokio::fs::File::create(&a.out).await.with_context(|| format!("creating {}", a.out.display()))?;
    let summary = gopbus_flv::run(source, tokio::io::BufWriter::new(out), stop.clone()).await?;
    let reason = match &summary.end {
        _ if interrupt.is_cancelled() => "interrupted".to_owned(),
        _ if stop.is_cancelled() => "duration reached".to_owned(),
        Some(r) => format!("broadcast ended: {r}"),
        None => "stopped".to_owned(),
    };
    tracing::info!(frames = summary.frames, skipped_gops = summary.skipped_gops, file = %a.out.display(), %reason, "dump finished");
    Ok(())
}
