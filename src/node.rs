//! What the listening node commands share: the bus token and the QUIC server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use gopbus_bus::quic::{tls, AnnounceKeys, BusServer, KeyHashFut};
use gopbus_bus::Bus;
use gopbus_store::Keys;

use crate::config::Quic;

/// The bus token of a listening node: given, or made once and kept in
/// `DATA/bus-token`. The flag says whether it was just made.
pub(crate) fn bus_token(given: Option<String>, data: &Path) -> anyhow::Result<(String, bool)> {
    secret(given, &data.join("bus-token"))
}

/// The subscribe-only bus token of a listening node: given, or made once and
/// kept in `DATA/bus-subscribe-token`. The flag says whether it was just made.
pub(crate) fn bus_subscribe_token(given: Option<String>, data: &Path) -> anyhow::Result<(String, bool)> {
    secret(given, &data.join("bus-subscribe-token"))
}

/// The admin token of the HTTP API: given, or made once and kept in
/// `DATA/admin-token` (then printed, the only time it is shown).
pub(crate) fn admin_token(given: Option<String>, data: &Path) -> anyhow::Result<String> {
    let path = data.join("admin-token");
    let (token, made) = secret(given, &path)?;
    if made {
        println!("HTTP API: admin token {token} (kept in {})", path.display());
    }
    Ok(token)
}

/// The webhook signing secret: given, or made once (`whsec_` + base64 of 32
/// random bytes, as the Standard Webhooks libraries take it) and kept in
/// `DATA/webhook-secret` (then printed, the only time it is shown).
pub(crate) fn webhook_secret(given: Option<String>, data: &Path) -> anyhow::Result<String> {
    let path = data.join("webhook-secret");
    let (secret, made) = secret_made_by(given, &path, || Ok(gopbus_control::webhooks::new_secret()))?;
    if made {
        println!("Webhooks: signing secret {secret} (kept in {})", path.display());
    }
    Ok(secret)
}

/// A token: given, read from `path`, or made (128 random bits) and written
/// there, readable by the owner only.
fn secret(given: Option<String>, path: &Path) -> anyhow::Result<(String, bool)> {
    secret_made_by(given, path, || {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
    })
}

/// A secret: given, read from `path`, or made by `make` and written there,
/// readable by the owner only. The flag says whether it was just made.
fn secret_made_by(
    given: Option<String>,
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<(String, bool)> {
    if let Some(t) = given {
        return Ok((t, false));
    }
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok((t, false));
        }
    }
    let token = make()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        f.write_all(format!("{token}\n").as_bytes())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok((token, true))
}

/// Binds the QUIC bus server for `bus`; returns it and where its certificate is.
pub(crate) fn bind_server(
    quic: &Quic,
    bus: Bus,
    token: String,
    subscribe_token: String,
    keys: Keys,
    data: &Path,
) -> anyhow::Result<(BusServer, PathBuf)> {
    let identity = tls::server_identity(quic.tls_cert.as_deref(), quic.tls_key.as_deref(), data, &[])
        .context("QUIC bus certificate")?;
    let cert_path = identity.cert_path.clone();
    let server = BusServer::bind(quic.listen, tls::server_config(identity)?, bus, token)
        .context("binding the QUIC bus")?
        .with_max_connections(quic.max_connections)
        .with_resume_grace(quic.upstream_grace)
        .with_audio_hold(quic.audio_hold)
        .with_subscriber_groups(quic.subscriber_group)
        .with_subscribe_token(subscribe_token)
        .with_announce_check(quic.announce, Arc::new(AnnounceStore(keys)));
    Ok((server, cert_path))
}

/// A node's stream keys, for checking announces on its bus.
struct AnnounceStore(Keys);

impl AnnounceKeys for AnnounceStore {
    fn key_hash<'a>(&'a self, broadcast: &'a str) -> KeyHashFut<'a> {
        Box::pin(async move { self.0.key_hash(broadcast).await.map(|h| h.map(|h| h.0)).map_err(|e| e.to_string()) })
    }
}
