//! What the listening node commands share: the bus token and the QUIC server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gopbus_bus::quic::{tls, BusServer};
use gopbus_bus::Bus;

use crate::config::Quic;

/// The bus token of a listening node: given, or made once and kept in
/// `DATA/bus-token`. The flag says whether it was just made.
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
pub(crate) fn bind_server(quic: &Quic, bus: Bus, token: String, data: &Path) -> anyhow::Result<(BusServer, PathBuf)> {
    let identity = tls::server_identity(quic.tls_cert.as_deref(), quic.tls_key.as_deref(), data, &[])
        .context("QUIC bus certificate")?;
    let cert_path = identity.cert_path.clone();
    let server =
        BusServer::bind(quic.listen, tls::server_config(identity)?, bus, token).context("binding the QUIC bus")?;
    Ok((server, cert_path))
}
