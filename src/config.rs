//! `gopbus serve` settings: defaults, then a TOML file, then `GOPBUS_*`
//! environment variables, then flags (each overriding the one before).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Settings as given on the command line or in the environment (clap) or in the
/// TOML file (serde). Every field is optional so that layers can be merged.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeArgs {
    /// TOML file with any of these settings (flags and environment win over it).
    #[arg(long, env = "GOPBUS_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// RTMP listen address [default: 0.0.0.0:1935].
    #[arg(long, env = "GOPBUS_RTMP")]
    pub(crate) rtmp: Option<SocketAddr>,
    /// HTTP listen address (health, and later UI, API, WHEP, HLS) [default: 0.0.0.0:8080].
    #[arg(long, env = "GOPBUS_HTTP")]
    pub(crate) http: Option<SocketAddr>,
    /// QUIC bus listen address (UDP): remote subscribers, relays and publishers [default: 0.0.0.0:4443].
    #[arg(long, env = "GOPBUS_QUIC")]
    pub(crate) quic: Option<SocketAddr>,
    /// Data directory (stream-key database, recordings) [default: ./data].
    #[arg(long, env = "GOPBUS_DATA")]
    pub(crate) data: Option<PathBuf>,
    /// Host name printed in URLs for publishers and players [default: localhost].
    #[arg(long, env = "GOPBUS_PUBLIC_HOST")]
    pub(crate) public_host: Option<String>,
    /// Most RTMP connections at once [default: 1024].
    #[arg(long, env = "GOPBUS_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Past GoPs kept per broadcast besides the current one [default: 2].
    #[arg(long, env = "GOPBUS_GOP_WINDOW")]
    pub(crate) gop_window: Option<usize>,
    /// Seconds of silence after which an RTMP connection is closed [default: 30].
    #[arg(long, env = "GOPBUS_IDLE_TIMEOUT")]
    pub(crate) idle_timeout: Option<u64>,
    /// Token every bus connection must present [default: made on first start, kept in DATA/bus-token].
    #[arg(long, env = "GOPBUS_BUS_TOKEN")]
    pub(crate) bus_token: Option<String>,
    /// TLS certificate (PEM) for the QUIC bus [default: self-signed, DATA/bus-cert.pem].
    #[arg(long, env = "GOPBUS_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `--tls-cert`.
    #[arg(long, env = "GOPBUS_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
}

/// The merged settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) rtmp: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) quic: SocketAddr,
    pub(crate) data: PathBuf,
    pub(crate) public_host: String,
    pub(crate) max_connections: usize,
    pub(crate) gop_window: usize,
    pub(crate) idle_timeout: u64,
    pub(crate) bus_token: Option<String>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
}

impl ServeArgs {
    /// Merges flags/environment (`self`) over the file over the defaults.
    pub(crate) fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => load(path)?,
            None => Self::default(),
        };
        let pick = |a: Option<SocketAddr>, b: Option<SocketAddr>, d: &str| {
            a.or(b).unwrap_or_else(|| d.parse().expect("valid default"))
        };
        Ok(Settings {
            rtmp: pick(self.rtmp, file.rtmp, "0.0.0.0:1935"),
            http: pick(self.http, file.http, "0.0.0.0:8080"),
            quic: pick(self.quic, file.quic, "0.0.0.0:4443"),
            data: self.data.or(file.data).unwrap_or_else(|| PathBuf::from("./data")),
            public_host: self.public_host.or(file.public_host).unwrap_or_else(|| "localhost".into()),
            max_connections: self.max_connections.or(file.max_connections).unwrap_or(1024),
            gop_window: self.gop_window.or(file.gop_window).unwrap_or(2),
            idle_timeout: self.idle_timeout.or(file.idle_timeout).unwrap_or(30),
            bus_token: self.bus_token.or(file.bus_token),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
        })
    }
}

fn load(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("gopbus-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gopbus.toml");
        std::fs::write(&file, "rtmp = \"127.0.0.1:2000\"\nhttp = \"127.0.0.1:2001\"\ngop_window = 5\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            http: Some("127.0.0.1:3001".parse().unwrap()),
            ..ServeArgs::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.rtmp, "127.0.0.1:2000".parse::<SocketAddr>().unwrap()); // file
        assert_eq!(s.http, "127.0.0.1:3001".parse::<SocketAddr>().unwrap()); // flag
        assert_eq!(s.quic, "0.0.0.0:4443".parse::<SocketAddr>().unwrap()); // default
        assert_eq!(s.gop_window, 5);
        std::fs::write(&file, "rtmpp = 1").unwrap();
        let err = ServeArgs { config: Some(file), ..ServeArgs::default() }.resolve().unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
