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

/// `gopbus dump`: subscribes to `name` on a bus node and writes it as FLV.
pub(crate) async fn dump(
    bus_url: &str,
    opts: &ClientOpts,
    name: &str,
    out: &Path,
    duration: Option<f64>,
) -> anyhow::Result<()> {
    let client = BusClient::connect(bus_url, &opts.bus_token, opts.client_config()?)
        .await
        .with_context(|| format!("connecting to {bus_url}"))?;
    let local = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut sub = local.subscribe(name, SubscribeOptions::default());
    let _remote = client
        .subscribe_into(name, StartAt::CurrentGop, &local)
        .await
        .with_context(|| format!("subscribing to {name}"))?;
    let file = tokio::fs::File::create(out).await.with_context(|| format!("creating {}", out.display()))?;
    let mut flv = FlvWriter::new(tokio::io::BufWriter::new(file)).await?;
    let stop = CancellationToken::new();
    if let Some(secs) = duration {
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            s.cancel();
        });
    }
    let reason = loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break "duration reached".to_owned(),
            _ = tokio::signal::ctrl_c() => break "interrupted".to_owned(),
            ev = sub.next() => ev,
        };
        if let Event::End(r) = &ev {
            break format!("broadcast ended: {r}");
        }
        if let Event::Skipped { from, to } = &ev {
            tracing::warn!(from, to, "fell behind; skipped GoPs");
        }
        flv.event(&ev).await?;
    };
    let frames = flv.finish().await?;
    tracing::info!(frames, file = %out.display(), %reason, "dump finished");
    Ok(())
}
