//! Settings of every command, one block per subsystem.
//!
//! Each block is a set of flags (each with its `GOPBUS_*` environment
//! variable) that every command having that subsystem flattens in, and the
//! same keys in the TOML file (`--config`), which every node command reads in
//! one format. A setting comes from, in increasing order of precedence: its
//! default (written once, in [`defaults`]), the file, the environment, the
//! flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// Every default, once.
pub(crate) mod defaults {
    pub(crate) const RTMP: &str = "0.0.0.0:1935";
    pub(crate) const HTTP: &str = "0.0.0.0:8080";
    pub(crate) const QUIC: &str = "0.0.0.0:4443";
    pub(crate) const DATA: &str = "./data";
    pub(crate) const PUBLIC_HOST: &str = "localhost";
    pub(crate) const MAX_CONNECTIONS: usize = 1024;
    pub(crate) const GOP_WINDOW: usize = 2;
    pub(crate) const IDLE_TIMEOUT_SECS: u64 = 30;
    pub(crate) const DIRECTORY_TTL_SECS: u64 = 5;
    pub(crate) const RELAY_LINGER_SECS: u64 = 5;
    pub(crate) const RECORDINGS_MAX_BYTES: u64 = 20 << 30;
    pub(crate) const RECORDINGS_MAX: usize = 1000;
    pub(crate) const HLS_SEGMENT_SECS: f64 = 2.0;
    pub(crate) const HLS_MAX_SEGMENT_SECS: f64 = 30.0;
    pub(crate) const HLS_PART_SECS: f64 = 0.5;
    pub(crate) const HLS_MAX_WAITING: usize = 10_000;
    pub(crate) const WEBRTC_BIND: &str = "0.0.0.0";
    pub(crate) const OPUS_BITRATE: i32 = 128_000;
    pub(crate) const WEBRTC_MAX_VIEWERS: usize = 1000;
    pub(crate) const WEBRTC_MAX_VIEWERS_PER_BROADCAST: usize = 500;
    pub(crate) const WEBRTC_OFFERS_PER_MINUTE: u32 = 60;
    pub(crate) const BROWSER_RENDITION: &str = "720p@2500k";
    pub(crate) const TRANSCODE_PRESET: &str = "veryfast";

    /// RTMP event loops: one per CPU.
    pub(crate) fn rtmp_threads() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// The TOML file: the keys of every block, named as the flags with `_` for `-`.
/// A command uses the keys of its blocks and ignores the others, so one file
/// can serve every node of a machine; an unknown key is an error.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) data: Option<PathBuf>,
    pub(crate) rtmp: Option<SocketAddr>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) idle_timeout: Option<u64>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) public_host: Option<String>,
    pub(crate) quic: Option<SocketAddr>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) bus_token: Option<String>,
    pub(crate) bus_ca: Option<PathBuf>,
    pub(crate) gop_window: Option<usize>,
    pub(crate) redis: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) directory_ttl: Option<u64>,
    pub(crate) bus: Option<String>,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) max_bus_connections: Option<usize>,
    pub(crate) upstream_grace: Option<u64>,
    pub(crate) bus_announce: Option<BusAnnounce>,
    pub(crate) bus_audio_hold_ms: Option<u64>,
    pub(crate) bus_subscriber_group: Option<usize>,
    pub(crate) upstream_token: Option<String>,
    pub(crate) bus_subscribe_token: Option<String>,
    pub(crate) command_timeout: Option<u64>,
    pub(crate) play_wait_timeout: Option<u64>,
    pub(crate) max_gop_bytes: Option<usize>,
    pub(crate) max_gop_secs: Option<u64>,
    pub(crate) rtmp_player_group: Option<usize>,
    pub(crate) rtmp_audio_hold_ms: Option<u64>,
    pub(crate) rtmp_threads: Option<usize>,
    pub(crate) rtmp_loop_fill: Option<usize>,
    pub(crate) hls_segment: Option<f64>,
    pub(crate) hls_max_segment: Option<f64>,
    pub(crate) hls_part: Option<f64>,
    pub(crate) hls_max_waiting: Option<usize>,
    pub(crate) hls_opus: Option<bool>,
    pub(crate) webhook_url: Option<Vec<String>>,
    pub(crate) webhook_secret: Option<String>,
    pub(crate) webhook_retry_for: Option<u64>,
    pub(crate) auth_hook: Option<String>,
    pub(crate) auth_hook_timeout_ms: Option<u64>,
    pub(crate) auth_hook_fail_open: Option<bool>,
    pub(crate) auth_hook_cache_secs: Option<u64>,
    pub(crate) recordings_max_bytes: Option<u64>,
    pub(crate) recordings_max: Option<usize>,
    pub(crate) s3_bucket: Option<String>,
    pub(crate) s3_prefix: Option<String>,
    pub(crate) s3_endpoint: Option<String>,
    pub(crate) s3_region: Option<String>,
    pub(crate) s3_access_key: Option<String>,
    pub(crate) s3_secret_key: Option<String>,
    pub(crate) admin_token: Option<String>,
    pub(crate) webrtc_bind: Option<std::net::IpAddr>,
    pub(crate) webrtc_ports: Option<String>,
    pub(crate) webrtc_public_ip: Option<Vec<String>>,
    pub(crate) ice_server: Option<Vec<String>>,
    pub(crate) opus_bitrate: Option<i32>,
    pub(crate) webrtc_max_viewers: Option<usize>,
    pub(crate) webrtc_max_viewers_per_broadcast: Option<usize>,
    pub(crate) no_opus_encoder: Option<bool>,
    pub(crate) webrtc_offers_per_minute: Option<u32>,
    pub(crate) ladder: Option<String>,
    pub(crate) ladder_for: Option<std::collections::HashMap<String, String>>,
    pub(crate) browser_rendition: Option<String>,
    pub(crate) transcode_preset: Option<String>,
    pub(crate) transcode_capacity: Option<f64>,
    pub(crate) no_transcoder: Option<bool>,
    pub(crate) no_hls: Option<bool>,
}

fn parse(text: &str, default: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|_| panic!("default {default} parses"))
}

/// `--config` and `--data`: every node command.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct CommonArgs {
    /// TOML file with any of these settings (the environment and flags win over it).
    #[arg(long, env = "GOPBUS_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory: stream keys, bus token and certificate, recordings [default: ./data].
    #[arg(long, env = "GOPBUS_DATA", global = true)]
    pub(crate) data: Option<PathBuf>,
}

impl CommonArgs {
    /// The config file's settings (empty without `--config`).
    pub(crate) fn file(&self) -> anyhow::Result<File> {
        match &self.config {
            Some(path) => load(path),
            None => Ok(File::default()),
        }
    }

    pub(crate) fn data(&self, file: &File) -> PathBuf {
        self.data.clone().or_else(|| file.data.clone()).unwrap_or_else(|| PathBuf::from(defaults::DATA))
    }
}

fn load(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// RTMP ingest and play.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct RtmpArgs {
    /// RTMP listen address [default: 0.0.0.0:1935].
    #[arg(long, env = "GOPBUS_RTMP")]
    pub(crate) rtmp: Option<SocketAddr>,
    /// Most RTMP connections at once [default: 1024].
    #[arg(long, env = "GOPBUS_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Seconds of silence after which an RTMP connection is closed [default: 30].
    #[arg(long, env = "GOPBUS_IDLE_TIMEOUT")]
    pub(crate) idle_timeout: Option<u64>,
    /// Most RTMP connections at once from one IP address [default: 256].
    #[arg(long, env = "GOPBUS_MAX_CONNECTIONS_PER_IP")]
    pub(crate) max_connections_per_ip: Option<usize>,
    /// Seconds after the RTMP handshake for connect and then publish or play [default: 10].
    #[arg(long, env = "GOPBUS_COMMAND_TIMEOUT")]
    pub(crate) command_timeout: Option<u64>,
    /// Seconds an RTMP player may wait for a name nobody publishes [default: 600].
    #[arg(long, env = "GOPBUS_PLAY_WAIT_TIMEOUT")]
    pub(crate) play_wait_timeout: Option<u64>,
    /// Largest GoP in bytes: past it the GoP is cut and frames dropped until the next keyframe [default: 67108864].
    #[arg(long, env = "GOPBUS_MAX_GOP_BYTES")]
    pub(crate) max_gop_bytes: Option<usize>,
    /// Longest GoP in seconds (a keyframe at least this often) [default: 60].
    #[arg(long, env = "GOPBUS_MAX_GOP_SECS")]
    pub(crate) max_gop_secs: Option<u64>,
    /// Most caught-up RTMP players of one broadcast written to by one task, once per frame; 0 gives every
    /// player its own task (more wake-ups, more CPU) [default: 64].
    #[arg(long, env = "GOPBUS_RTMP_PLAYER_GROUP")]
    pub(crate) rtmp_player_group: Option<usize>,
    /// Milliseconds a grouped RTMP player's audio may wait to go out in one write with the next video
    /// message; held longer, it goes with the next message of any kind (video is never held); 0 writes
    /// every message at once [default: 50].
    #[arg(long, env = "GOPBUS_RTMP_AUDIO_HOLD_MS")]
    pub(crate) rtmp_audio_hold_ms: Option<u64>,
    /// Event-loop threads RTMP connections are spread over (each connection on the one with the fewest
    /// at accept; its player groups run there too); 0 runs them on the shared multi-threaded runtime
    /// [default: the number of CPUs].
    #[arg(long, env = "GOPBUS_RTMP_THREADS")]
    pub(crate) rtmp_threads: Option<usize>,
    /// RTMP connections an event loop takes before the next loop gets any; once every loop has that
    /// many, a connection goes to the loop with the fewest (0: the fewest from the first connection on)
    /// [default: 64].
    #[arg(long, env = "GOPBUS_RTMP_LOOP_FILL")]
    pub(crate) rtmp_loop_fill: Option<usize>,
}

/// Resolved [`RtmpArgs`].
#[derive(Debug, Clone)]
pub(crate) struct Rtmp {
    pub(crate) listen: SocketAddr,
    pub(crate) config: gopbus_ingest::IngestConfig,
}

impl Rtmp {
    /// The ingest server's settings.
    pub(crate) fn ingest(&self) -> gopbus_ingest::IngestConfig {
        self.config.clone()
    }
}

impl RtmpArgs {
    pub(crate) fn resolve(&self, f: &File) -> Rtmp {
        let max_connections = self.max_connections.or(f.max_connections).unwrap_or(defaults::MAX_CONNECTIONS);
        let idle_timeout =
            Duration::from_secs(self.idle_timeout.or(f.idle_timeout).unwrap_or(defaults::IDLE_TIMEOUT_SECS).max(1));
        let d = gopbus_ingest::IngestConfig::default();
        let secs = |flag: Option<u64>, file: Option<u64>, default: Duration| {
            flag.or(file).map_or(default, |s| Duration::from_secs(s.max(1)))
        };
        let config = gopbus_ingest::IngestConfig {
            max_connections,
            idle_timeout,
            max_connections_per_ip: self
                .max_connections_per_ip
                .or(f.max_connections_per_ip)
                .unwrap_or(d.max_connections_per_ip)
                .max(1),
            command_timeout: secs(self.command_timeout, f.command_timeout, d.command_timeout),
            play_wait_timeout: secs(self.play_wait_timeout, f.play_wait_timeout, d.play_wait_timeout),
            gop_limits: gopbus_ingest::publish::GopLimits {
                max_bytes: self.max_gop_bytes.or(f.max_gop_bytes).unwrap_or(d.gop_limits.max_bytes).max(64 * 1024),
                max_ms: secs(self.max_gop_secs, f.max_gop_secs, Duration::from_millis(d.gop_limits.max_ms as u64))
                    .as_millis() as i64,
            },
            player_group: self.rtmp_player_group.or(f.rtmp_player_group).unwrap_or(d.player_group),
            audio_hold: self
                .rtmp_audio_hold_ms
                .or(f.rtmp_audio_hold_ms)
                .map_or(d.audio_hold, |ms| Duration::from_millis(ms.min(1000))),
            threads: self.rtmp_threads.or(f.rtmp_threads).unwrap_or_else(defaults::rtmp_threads).min(256),
            loop_fill: self.rtmp_loop_fill.or(f.rtmp_loop_fill).unwrap_or(d.loop_fill),
            ..d
        };
        Rtmp { listen: self.rtmp.or(f.rtmp).unwrap_or_else(|| parse(defaults::RTMP, "rtmp")), config }
    }
}

/// The HTTP server (health, and the routers of the subscribers that serve HTTP).
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct HttpArgs {
    /// HTTP listen address [default: 0.0.0.0:8080].
    #[arg(long, env = "GOPBUS_HTTP")]
    pub(crate) http: Option<SocketAddr>,
}

impl HttpArgs {
    pub(crate) fn resolve(&self, f: &File) -> SocketAddr {
        self.http.or(f.http).unwrap_or_else(|| parse(defaults::HTTP, "http"))
    }
}

/// The host name printed in URLs.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct PublicArgs {
    /// Host name printed in URLs for publishers and players [default: localhost].
    #[arg(long, env = "GOPBUS_PUBLIC_HOST", global = true)]
    pub(crate) public_host: Option<String>,
}

impl PublicArgs {
    pub(crate) fn resolve(&self, f: &File) -> String {
        self.public_host.clone().or_else(|| f.public_host.clone()).unwrap_or_else(|| defaults::PUBLIC_HOST.into())
    }
}

/// A QUIC bus listener.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct QuicArgs {
    /// QUIC bus listen address (UDP) [default: 0.0.0.0:4443].
    #[arg(long, env = "GOPBUS_QUIC")]
    pub(crate) quic: Option<SocketAddr>,
    /// TLS certificate (PEM) of the QUIC bus [default: self-signed, DATA/bus-cert.pem].
    #[arg(long, env = "GOPBUS_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `--tls-cert`.
    #[arg(long, env = "GOPBUS_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Most QUIC bus connections at once; past half, clients prove their address (Retry) first [default: 4096].
    #[arg(long, env = "GOPBUS_MAX_BUS_CONNECTIONS")]
    pub(crate) max_bus_connections: Option<usize>,
    /// Seconds a broadcast whose upstream link dropped (an announcing node's, or a relay's fetch) is held open
    /// for the link to come back; 0 ends it at once [default: 10].
    #[arg(long, env = "GOPBUS_UPSTREAM_GRACE")]
    pub(crate) upstream_grace: Option<u64>,
    /// Which broadcasts a holder of the bus token may announce: `keyed` — a name this node has a stream key
    /// for only with a proof of that key (an ingest node that checked it), others freely; `strict` — only
    /// names with a key here, with the proof; `any` — every name [default: keyed].
    #[arg(long, env = "GOPBUS_BUS_ANNOUNCE", value_enum)]
    pub(crate) bus_announce: Option<BusAnnounce>,
    /// Milliseconds an audio frame sent to a QUIC subscriber may wait to leave with the next video frame
    /// (in the same datagrams: about half the packets for 30 fps video and 48 kHz AAC); 0 sends each frame
    /// at once; at most 1000 [default: 50].
    #[arg(long, env = "GOPBUS_BUS_AUDIO_HOLD_MS")]
    pub(crate) bus_audio_hold_ms: Option<u64>,
    /// Caught-up QUIC subscribers of a broadcast written to by one task that wakes once per frame (0: a task
    /// per subscriber, each waking on every frame) [default: 64].
    #[arg(long, env = "GOPBUS_BUS_SUBSCRIBER_GROUP")]
    pub(crate) bus_subscriber_group: Option<usize>,
}

/// `--bus-announce`: see [`gopbus_bus::quic::AnnouncePolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BusAnnounce {
    Keyed,
    Strict,
    Any,
}

impl From<BusAnnounce> for gopbus_bus::quic::AnnouncePolicy {
    fn from(b: BusAnnounce) -> Self {
        match b {
            BusAnnounce::Keyed => Self::Keyed,
            BusAnnounce::Strict => Self::Strict,
            BusAnnounce::Any => Self::Any,
        }
    }
}

/// Resolved [`QuicArgs`].
#[derive(Debug, Clone)]
pub(crate) struct Quic {
    pub(crate) listen: SocketAddr,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) max_connections: usize,
    pub(crate) upstream_grace: Duration,
    pub(crate) announce: gopbus_bus::quic::AnnouncePolicy,
    pub(crate) audio_hold: Duration,
    pub(crate) subscriber_group: usize,
}

impl QuicArgs {
    pub(crate) fn resolve(&self, f: &File) -> Quic {
        Quic {
            listen: self.quic.or(f.quic).unwrap_or_else(|| parse(defaults::QUIC, "quic")),
            tls_cert: self.tls_cert.clone().or_else(|| f.tls_cert.clone()),
            tls_key: self.tls_key.clone().or_else(|| f.tls_key.clone()),
            max_connections: self
                .max_bus_connections
                .or(f.max_bus_connections)
                .unwrap_or(gopbus_bus::quic::MAX_CONNECTIONS),
            upstream_grace: self
                .upstream_grace
                .or(f.upstream_grace)
                .map_or(gopbus_bus::quic::RESUME_GRACE, Duration::from_secs),
            announce: self.bus_announce.or(f.bus_announce).map(Into::into).unwrap_or_default(),
            audio_hold: self
                .bus_audio_hold_ms
                .or(f.bus_audio_hold_ms)
                .map_or(gopbus_bus::quic::AUDIO_HOLD, |ms| Duration::from_millis(ms.min(1000))),
            subscriber_group: self
                .bus_subscriber_group
                .or(f.bus_subscriber_group)
                .unwrap_or(gopbus_bus::quic::GROUP_SIZE),
        }
    }
}

/// The bus token: what a listener asks for and a client presents.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct TokenArgs {
    /// Token every bus connection presents [default for a listening node: made on
    /// first start, kept in DATA/bus-token].
    #[arg(long, env = "GOPBUS_BUS_TOKEN")]
    pub(crate) bus_token: Option<String>,
}

impl TokenArgs {
    pub(crate) fn resolve(&self, f: &File) -> Option<String> {
        self.bus_token.clone().or_else(|| f.bus_token.clone())
    }
}

/// The subscribe-only token of a listening node.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct SubscribeTokenArgs {
    /// A second bus token that may only subscribe (for `dump` users, edges, subscriber nodes that add no tracks)
    /// [default: made on first start, kept in DATA/bus-subscribe-token].
    #[arg(long, env = "GOPBUS_BUS_SUBSCRIBE_TOKEN", hide_env_values = true)]
    pub(crate) bus_subscribe_token: Option<String>,
}

impl SubscribeTokenArgs {
    pub(crate) fn resolve(&self, f: &File) -> Option<String> {
        self.bus_subscribe_token.clone().or_else(|| f.bus_subscribe_token.clone())
    }
}

/// The HTTP API's admin token.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct AdminArgs {
    /// Token the HTTP API (/api/v1/...) asks for, as `Authorization: Bearer TOKEN`
    /// [default: made on first start, kept in DATA/admin-token].
    #[arg(long, env = "GOPBUS_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
}

/// Webhooks: where events go and how they are signed.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct WebhookArgs {
    /// POST stream.started, stream.ended and recording.ready here (repeatable; env: comma-separated) [default: none].
    #[arg(long, env = "GOPBUS_WEBHOOK_URL", value_delimiter = ',')]
    pub(crate) webhook_url: Vec<String>,
    /// Signing secret, whsec_ + base64 (Standard Webhooks) [default: made on first use, kept in DATA/webhook-secret].
    #[arg(long, env = "GOPBUS_WEBHOOK_SECRET", hide_env_values = true)]
    pub(crate) webhook_secret: Option<String>,
    /// Seconds an event is retried before it is given up [default: 86400].
    #[arg(long, env = "GOPBUS_WEBHOOK_RETRY_FOR")]
    pub(crate) webhook_retry_for: Option<u64>,
}

impl WebhookArgs {
    /// The webhook settings, or `None` without a URL.
    pub(crate) fn resolve(&self, f: &File, data: &Path) -> anyhow::Result<Option<gopbus_control::WebhookConfig>> {
        let urls = if self.webhook_url.is_empty() {
            f.webhook_url.clone().unwrap_or_default()
        } else {
            self.webhook_url.clone()
        };
        if urls.is_empty() {
            return Ok(None);
        }
        for u in &urls {
            anyhow::ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "--webhook-url {u:?}: expected http:// or https://"
            );
        }
        let secret =
            crate::node::webhook_secret(self.webhook_secret.clone().or_else(|| f.webhook_secret.clone()), data)?;
        let key =
            gopbus_control::webhooks::decode_secret(&secret).map_err(|e| anyhow::anyhow!("--webhook-secret: {e}"))?;
        let mut config = gopbus_control::WebhookConfig::new(urls, key, data);
        if let Some(secs) = self.webhook_retry_for.or(f.webhook_retry_for) {
            config.retry_for = Duration::from_secs(secs.max(1));
        }
        Ok(Some(config))
    }
}

/// The publish authorization hook.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct AuthHookArgs {
    /// Ask this URL (POST JSON: action, name, key, client_ip, app) before a publish goes ahead; 2xx allows [default: none].
    #[arg(long, env = "GOPBUS_AUTH_HOOK")]
    pub(crate) auth_hook: Option<String>,
    /// Milliseconds the hook has to answer [default: 2000].
    #[arg(long, env = "GOPBUS_AUTH_HOOK_TIMEOUT_MS")]
    pub(crate) auth_hook_timeout_ms: Option<u64>,
    /// Allow the publish when the hook does not answer in time or cannot be reached (default: refuse).
    #[arg(long, env = "GOPBUS_AUTH_HOOK_FAIL_OPEN")]
    pub(crate) auth_hook_fail_open: bool,
    /// Seconds an answer is reused for the same name, key and client address [default: 0, not at all].
    #[arg(long, env = "GOPBUS_AUTH_HOOK_CACHE_SECS")]
    pub(crate) auth_hook_cache_secs: Option<u64>,
}

impl AuthHookArgs {
    /// The hook, or `None` without a URL.
    pub(crate) fn resolve(&self, f: &File) -> anyhow::Result<Option<std::sync::Arc<dyn gopbus_store::PublishHook>>> {
        let Some(url) = self.auth_hook.clone().or_else(|| f.auth_hook.clone()) else { return Ok(None) };
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--auth-hook {url:?}: expected http:// or https://"
        );
        let config = gopbus_control::HookConfig {
            url,
            timeout: Duration::from_millis(self.auth_hook_timeout_ms.or(f.auth_hook_timeout_ms).unwrap_or(2000).max(1)),
            fail_open: self.auth_hook_fail_open || f.auth_hook_fail_open.unwrap_or(false),
            cache: Duration::from_secs(self.auth_hook_cache_secs.or(f.auth_hook_cache_secs).unwrap_or(0)),
        };
        tracing::info!(url = %config.url, timeout_ms = config.timeout.as_millis() as u64, fail_open = config.fail_open, "publish authorization hook on");
        let hook = gopbus_control::HttpHook::new(config).map_err(|e| anyhow::anyhow!("--auth-hook: {e}"))?;
        Ok(Some(std::sync::Arc::new(hook)))
    }
}

impl AdminArgs {
    pub(crate) fn resolve(&self, f: &File) -> Option<String> {
        self.admin_token.clone().or_else(|| f.admin_token.clone())
    }
}

/// Which CA a bus client trusts.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct CaArgs {
    /// CA certificate (PEM) to trust for the nodes connected to: a node's
    /// DATA/bus-cert.pem when it made its own [default: the web PKI roots].
    #[arg(long, env = "GOPBUS_BUS_CA")]
    pub(crate) bus_ca: Option<PathBuf>,
}

impl CaArgs {
    pub(crate) fn resolve(&self, f: &File) -> anyhow::Result<quinn::ClientConfig> {
        let ca = self.bus_ca.clone().or_else(|| f.bus_ca.clone());
        gopbus_bus::quic::tls::client_config(ca.as_deref()).context("QUIC client TLS")
    }
}

/// The in-process bus.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct BusArgs {
    /// Past GoPs kept per broadcast besides the current one [default: 2].
    #[arg(long, env = "GOPBUS_GOP_WINDOW")]
    pub(crate) gop_window: Option<usize>,
}

impl BusArgs {
    pub(crate) fn resolve(&self, f: &File) -> gopbus_bus::BusConfig {
        let window = self.gop_window.or(f.gop_window).unwrap_or(defaults::GOP_WINDOW).max(1);
        gopbus_bus::BusConfig { window, ..gopbus_bus::BusConfig::default() }
    }
}

/// Redis: the stream keys of `ingest`/`streams`, the directory of `relay`.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct RedisArgs {
    /// Redis URL (`redis://HOST:PORT`): stream keys shared by ingest nodes
    /// (`ingest`, `streams`), the directory of relays (`relay`).
    #[arg(long, env = "GOPBUS_REDIS", global = true)]
    pub(crate) redis: Option<String>,
}

impl RedisArgs {
    pub(crate) fn resolve(&self, f: &File) -> Option<String> {
        self.redis.clone().or_else(|| f.redis.clone())
    }
}

/// Where a relay gets what it lacks, and how it is found.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Fetch broadcasts this relay lacks from this node (an edge of a known origin).
    #[arg(long, env = "GOPBUS_UPSTREAM")]
    pub(crate) upstream: Option<String>,
    /// This relay's URL as other nodes reach it (with `--redis`).
    #[arg(long, env = "GOPBUS_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// Seconds a Redis directory entry lives unless refreshed [default: 5].
    #[arg(long, env = "GOPBUS_DIRECTORY_TTL")]
    pub(crate) directory_ttl: Option<u64>,
    /// The token this relay presents to the nodes it fetches from: their subscribe-only token is enough
    /// (a relay only subscribes upstream) [default: its own --bus-token].
    #[arg(long, env = "GOPBUS_UPSTREAM_TOKEN")]
    pub(crate) upstream_token: Option<String>,
}

/// Resolved [`ClusterArgs`].
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    pub(crate) upstream: Option<String>,
    pub(crate) upstream_token: Option<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) directory_ttl: Duration,
}

impl ClusterArgs {
    pub(crate) fn resolve(&self, f: &File) -> Cluster {
        Cluster {
            upstream: self.upstream.clone().or_else(|| f.upstream.clone()),
            upstream_token: self.upstream_token.clone().or_else(|| f.upstream_token.clone()),
            advertise: self.advertise.clone().or_else(|| f.advertise.clone()),
            directory_ttl: Duration::from_secs(
                self.directory_ttl.or(f.directory_ttl).unwrap_or(defaults::DIRECTORY_TTL_SECS).max(1),
            ),
        }
    }
}

/// HLS segmenting and recordings.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct HlsArgs {
    /// HLS segment target in seconds: a segment is cut at the first keyframe after this much [default: 2].
    #[arg(long, env = "GOPBUS_HLS_SEGMENT")]
    pub(crate) hls_segment: Option<f64>,
    /// Longest HLS segment in seconds: a GoP longer than this is cut and its frames up to the next keyframe are dropped (bounds memory) [default: 30].
    #[arg(long, env = "GOPBUS_HLS_MAX_SEGMENT")]
    pub(crate) hls_max_segment: Option<f64>,
    /// LL-HLS part target in seconds, 0.2 up to the segment target [default: 0.5].
    #[arg(long, env = "GOPBUS_HLS_PART")]
    pub(crate) hls_part: Option<f64>,
    /// Most HLS requests held open at once (blocking playlist reloads, preload hints); more get 503 [default: 10000].
    #[arg(long, env = "GOPBUS_HLS_MAX_WAITING")]
    pub(crate) hls_max_waiting: Option<usize>,
    /// Offer the Opus track (made for WebRTC) as a second audio group in master.m3u8, beside AAC.
    #[arg(long, env = "GOPBUS_HLS_OPUS")]
    pub(crate) hls_opus: bool,
    /// Most bytes of recordings kept under DATA/recordings; the oldest go first [default: 21474836480 (20 GiB)].
    #[arg(long, env = "GOPBUS_RECORDINGS_MAX_BYTES")]
    pub(crate) recordings_max_bytes: Option<u64>,
    /// Most recordings (broadcast sessions) kept; the oldest go first [default: 1000].
    #[arg(long, env = "GOPBUS_RECORDINGS_MAX")]
    pub(crate) recordings_max: Option<usize>,
    /// Also upload recordings to this S3 bucket (S3-compatible storage) [default: none].
    #[arg(long, env = "GOPBUS_S3_BUCKET")]
    pub(crate) s3_bucket: Option<String>,
    /// Key prefix in the bucket: objects are PREFIX/NAME/SESSION/FILE [default: none].
    #[arg(long, env = "GOPBUS_S3_PREFIX")]
    pub(crate) s3_prefix: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000 [default: AWS].
    #[arg(long, env = "GOPBUS_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "GOPBUS_S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// S3 access key [default: AWS_ACCESS_KEY_ID or the instance's role].
    #[arg(long, env = "GOPBUS_S3_ACCESS_KEY")]
    pub(crate) s3_access_key: Option<String>,
    /// S3 secret key [default: AWS_SECRET_ACCESS_KEY].
    #[arg(long, env = "GOPBUS_S3_SECRET_KEY", hide_env_values = true)]
    pub(crate) s3_secret_key: Option<String>,
}

impl HlsArgs {
    pub(crate) fn resolve(&self, f: &File, data: &Path) -> anyhow::Result<gopbus_hls::HlsConfig> {
        let secs = self.hls_segment.or(f.hls_segment).unwrap_or(defaults::HLS_SEGMENT_SECS).clamp(0.1, 60.0);
        let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or_else(|| file.clone());
        let s3 = match pick(&self.s3_bucket, &f.s3_bucket) {
            Some(bucket) => {
                let s3 = gopbus_hls::S3Config {
                    bucket,
                    prefix: pick(&self.s3_prefix, &f.s3_prefix).unwrap_or_default(),
                    endpoint: pick(&self.s3_endpoint, &f.s3_endpoint),
                    region: pick(&self.s3_region, &f.s3_region),
                    access_key: pick(&self.s3_access_key, &f.s3_access_key),
                    secret_key: pick(&self.s3_secret_key, &f.s3_secret_key),
                };
                Some(s3.connect()?)
            }
            None => None,
        };
        Ok(gopbus_hls::HlsConfig {
            recordings: data.join("recordings"),
            s3,
            target_duration: Duration::from_secs_f64(secs),
            max_recording_bytes: self
                .recordings_max_bytes
                .or(f.recordings_max_bytes)
                .unwrap_or(defaults::RECORDINGS_MAX_BYTES),
            max_recordings: self.recordings_max.or(f.recordings_max).unwrap_or(defaults::RECORDINGS_MAX),
            max_segment: Duration::from_secs_f64(
                self.hls_max_segment.or(f.hls_max_segment).unwrap_or(defaults::HLS_MAX_SEGMENT_SECS).clamp(secs, 600.0),
            ),
            part_target: Duration::from_secs_f64(
                self.hls_part.or(f.hls_part).unwrap_or(defaults::HLS_PART_SECS).clamp(0.2, secs.max(0.2)),
            ),
            max_waiting: self.hls_max_waiting.or(f.hls_max_waiting).unwrap_or(defaults::HLS_MAX_WAITING).max(1),
            opus: self.hls_opus || f.hls_opus.unwrap_or(false),
            ..gopbus_hls::HlsConfig::default()
        })
    }
}

/// WebRTC viewers: ICE addresses and ports, the Opus encoder, limits.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct WebRtcArgs {
    /// Address WebRTC peer connections bind; 0.0.0.0 means every interface but loopback [default: 0.0.0.0].
    #[arg(long, env = "GOPBUS_WEBRTC_BIND")]
    pub(crate) webrtc_bind: Option<std::net::IpAddr>,
    /// UDP ports for WebRTC, FIRST-LAST; each viewer takes one [default: any free port].
    #[arg(long, env = "GOPBUS_WEBRTC_PORTS")]
    pub(crate) webrtc_ports: Option<String>,
    /// Public address announced to browsers instead of the bound one (a server behind 1:1 NAT); repeatable [default: none].
    #[arg(long, env = "GOPBUS_WEBRTC_PUBLIC_IP", value_delimiter = ',')]
    pub(crate) webrtc_public_ip: Vec<String>,
    /// STUN/TURN server handed to browsers: `stun:HOST:PORT` or `turn:USER:PASSWORD@HOST:PORT`; repeatable [default: none].
    #[arg(long, env = "GOPBUS_ICE_SERVER", value_delimiter = ',')]
    pub(crate) ice_server: Vec<String>,
    /// Opus bitrate of the AAC→Opus encoder, bits per second [default: 128000].
    #[arg(long, env = "GOPBUS_OPUS_BITRATE")]
    pub(crate) opus_bitrate: Option<i32>,
    /// Most WebRTC viewers on this node [default: 1000].
    #[arg(long, env = "GOPBUS_WEBRTC_MAX_VIEWERS")]
    pub(crate) webrtc_max_viewers: Option<usize>,
    /// Most WebRTC viewers of one broadcast [default: 500].
    #[arg(long, env = "GOPBUS_WEBRTC_MAX_VIEWERS_PER_BROADCAST")]
    pub(crate) webrtc_max_viewers_per_broadcast: Option<usize>,
    /// WebRTC offers (WHEP posts, WebSocket connections) one client address may make per minute; more get 429 [default: 60].
    #[arg(long, env = "GOPBUS_WEBRTC_OFFERS_PER_MINUTE")]
    pub(crate) webrtc_offers_per_minute: Option<u32>,
    /// Do not make the Opus track on this node; use the one another node makes.
    #[arg(long, env = "GOPBUS_NO_OPUS_ENCODER")]
    pub(crate) no_opus_encoder: bool,
}

impl WebRtcArgs {
    pub(crate) fn resolve(&self, f: &File) -> anyhow::Result<gopbus_webrtc::WebRtcConfig> {
        let ports = match self.webrtc_ports.clone().or_else(|| f.webrtc_ports.clone()) {
            None => gopbus_webrtc::PortRange::any(),
            Some(text) => {
                let (a, b) =
                    text.split_once('-').with_context(|| format!("--webrtc-ports {text:?}: expected FIRST-LAST"))?;
                let (a, b) = (a.trim().parse::<u16>(), b.trim().parse::<u16>());
                let (Ok(a), Ok(b)) = (a, b) else { anyhow::bail!("--webrtc-ports {text:?}: expected FIRST-LAST") };
                gopbus_webrtc::PortRange::new(a, b).map_err(|e| anyhow::anyhow!("--webrtc-ports: {e}"))?
            }
        };
        let list = |flag: &Vec<String>, file: &Option<Vec<String>>| {
            if flag.is_empty() {
                file.clone().unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        let ice_servers = list(&self.ice_server, &f.ice_server)
            .iter()
            .map(|s| parse_ice_server(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let defaults = gopbus_webrtc::WebRtcConfig::default();
        Ok(gopbus_webrtc::WebRtcConfig {
            ice: gopbus_webrtc::IceConfig {
                bind: self
                    .webrtc_bind
                    .or(f.webrtc_bind)
                    .unwrap_or_else(|| defaults::WEBRTC_BIND.parse().expect("the default parses")),
                ports: std::sync::Arc::new(ports),
                public_ips: list(&self.webrtc_public_ip, &f.webrtc_public_ip),
                ice_servers,
            },
            opus: gopbus_webrtc::OpusSettings {
                bitrate: self.opus_bitrate.or(f.opus_bitrate).unwrap_or(defaults::OPUS_BITRATE).clamp(6_000, 510_000),
            },
            max_viewers: self.webrtc_max_viewers.or(f.webrtc_max_viewers).unwrap_or(defaults::WEBRTC_MAX_VIEWERS),
            max_viewers_per_broadcast: self
                .webrtc_max_viewers_per_broadcast
                .or(f.webrtc_max_viewers_per_broadcast)
                .unwrap_or(defaults::WEBRTC_MAX_VIEWERS_PER_BROADCAST),
            transcode: !(self.no_opus_encoder || f.no_opus_encoder.unwrap_or(false)),
            offers_per_minute: self
                .webrtc_offers_per_minute
                .or(f.webrtc_offers_per_minute)
                .unwrap_or(defaults::WEBRTC_OFFERS_PER_MINUTE)
                .max(1),
            ..defaults
        })
    }
}

/// `stun:HOST:PORT`, or `turn(s):USER:PASSWORD@HOST:PORT[?transport=…]`.
fn parse_ice_server(text: &str) -> anyhow::Result<gopbus_webrtc::IceServer> {
    let (scheme, rest) =
        text.split_once(':').with_context(|| format!("ICE server {text:?}: expected stun:… or turn:…"))?;
    match scheme {
        "stun" | "stuns" => Ok(gopbus_webrtc::IceServer { urls: text.to_owned(), username: None, credential: None }),
        "turn" | "turns" => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let (user, pass) = auth
                    .split_once(':')
                    .with_context(|| format!("TURN server {text:?}: expected USER:PASSWORD@HOST"))?;
                Ok(gopbus_webrtc::IceServer {
                    urls: format!("{scheme}:{host}"),
                    username: Some(user.to_owned()),
                    credential: Some(pass.to_owned()),
                })
            }
            None => Ok(gopbus_webrtc::IceServer { urls: text.to_owned(), username: None, credential: None }),
        },
        _ => anyhow::bail!("ICE server {text:?}: expected stun:… or turn:…"),
    }
}

/// How a client command reaches its bus node: the node, its token, the CA to trust.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
}

impl ClientArgs {
    pub(crate) fn remote(&self, f: &File) -> anyhow::Result<gopbus_bus::node::Remote> {
        let token = self.token.resolve(f).context(
            "the node's bus token is needed: give --bus-token (or GOPBUS_BUS_TOKEN, or bus_token in --config)",
        )?;
        Ok(gopbus_bus::node::Remote { url: self.target.resolve(f)?, token, tls: self.ca.resolve(f)? })
    }
}

/// The bus node a client command connects to.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct TargetArgs {
    /// The bus node to connect to, `quic://HOST:PORT`.
    #[arg(long, env = "GOPBUS_BUS")]
    pub(crate) bus: Option<String>,
}

impl TargetArgs {
    pub(crate) fn resolve(&self, f: &File) -> anyhow::Result<String> {
        self.bus.clone().or_else(|| f.bus.clone()).context("which bus node? give --bus quic://HOST:PORT")
    }
}

/// Transcoding: the ladder, the browser rendition, the worker's capacity.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct TranscodeArgs {
    /// Renditions made of every broadcast, e.g. `720p@2500k,480p@1200k,360p@700k` (HEIGHTp@KBITSk, optionally @FPSfps); rungs above the source's height are left out [default: none].
    #[arg(long, env = "GOPBUS_LADDER")]
    pub(crate) ladder: Option<String>,
    /// A ladder for one broadcast, NAME=LADDER (`none` for no renditions); repeatable.
    #[arg(long, env = "GOPBUS_LADDER_FOR", value_delimiter = ';')]
    pub(crate) ladder_for: Vec<String>,
    /// The rendition made for WebRTC viewers of a source with B-frames when its ladder is empty; `none` makes none [default: 720p@2500k].
    #[arg(long, env = "GOPBUS_BROWSER_RENDITION")]
    pub(crate) browser_rendition: Option<String>,
    /// x264 preset of the renditions (ultrafast … veryslow) [default: veryfast].
    #[arg(long, env = "GOPBUS_TRANSCODE_PRESET")]
    pub(crate) transcode_preset: Option<String>,
    /// Work this worker takes on, in megapixels per second decoded and encoded [default: 60 per core].
    #[arg(long, env = "GOPBUS_TRANSCODE_CAPACITY")]
    pub(crate) transcode_capacity: Option<f64>,
    /// Run no transcoder in this process (`gopbus transcode` workers do it).
    #[arg(long, env = "GOPBUS_NO_TRANSCODER")]
    pub(crate) no_transcoder: bool,
}

impl TranscodeArgs {
    /// The worker's settings; `None` when this process runs no transcoder.
    pub(crate) fn resolve(&self, f: &File) -> anyhow::Result<Option<gopbus_transcode::TranscodeConfig>> {
        if self.no_transcoder || f.no_transcoder.unwrap_or(false) {
            return Ok(None);
        }
        let mut c = gopbus_transcode::TranscodeConfig::new();
        if let Some(text) = self.ladder.clone().or_else(|| f.ladder.clone()) {
            c.ladder = text.parse().map_err(|e| anyhow::anyhow!("--ladder: {e}"))?;
        }
        let mut per_stream: Vec<(String, String)> = f.ladder_for.clone().unwrap_or_default().into_iter().collect();
        for item in &self.ladder_for {
            let (name, ladder) =
                item.split_once('=').with_context(|| format!("--ladder-for {item:?}: expected NAME=LADDER"))?;
            per_stream.push((name.trim().to_owned(), ladder.to_owned()));
        }
        for (name, ladder) in per_stream {
            let ladder = ladder.parse().map_err(|e| anyhow::anyhow!("--ladder-for {name}: {e}"))?;
            c.per_stream.insert(name, ladder);
        }
        let browser = self
            .browser_rendition
            .clone()
            .or_else(|| f.browser_rendition.clone())
            .unwrap_or_else(|| defaults::BROWSER_RENDITION.to_owned());
        c.browser = match browser.trim() {
            "none" => None,
            text => Some(text.parse().map_err(|e| anyhow::anyhow!("--browser-rendition: {e}"))?),
        };
        let preset = self
            .transcode_preset
            .clone()
            .or_else(|| f.transcode_preset.clone())
            .unwrap_or_else(|| defaults::TRANSCODE_PRESET.to_owned());
        const PRESETS: [&str; 9] =
            ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"];
        anyhow::ensure!(
            PRESETS.contains(&preset.as_str()),
            "--transcode-preset {preset:?}: one of {}",
            PRESETS.join(", ")
        );
        c.encoder.preset = preset;
        if let Some(cap) = self.transcode_capacity.or(f.transcode_capacity) {
            anyhow::ensure!(cap > 0.0, "--transcode-capacity must be above 0");
            c.capacity_mpxs = cap;
        }
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults_for_every_command() {
        let dir = std::env::temp_dir().join(format!("gopbus-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gopbus.toml");
        std::fs::write(
            &path,
            "rtmp = \"127.0.0.1:2000\"\nhttp = \"127.0.0.1:2001\"\ngop_window = 5\nquic = \"127.0.0.1:2002\"\n\
             directory_ttl = 9\nbus = \"quic://origin:4443\"\nbus_audio_hold_ms = 20\n",
        )
        .unwrap();
        let common = CommonArgs { config: Some(path.clone()), data: None };
        let file = common.file().unwrap();
        // serve's blocks
        let rtmp = RtmpArgs::default().resolve(&file);
        assert_eq!(rtmp.listen, "127.0.0.1:2000".parse::<SocketAddr>().unwrap()); // file
        assert_eq!(rtmp.config.max_connections, defaults::MAX_CONNECTIONS); // default
        let http = HttpArgs { http: Some("127.0.0.1:3001".parse().unwrap()) }.resolve(&file);
        assert_eq!(http, "127.0.0.1:3001".parse::<SocketAddr>().unwrap()); // flag
        assert_eq!(BusArgs::default().resolve(&file).window, 5);
        assert_eq!(common.data(&file), PathBuf::from(defaults::DATA));
        // relay's and ingest's blocks read the same file
        assert_eq!(QuicArgs::default().resolve(&file).listen, "127.0.0.1:2002".parse::<SocketAddr>().unwrap());
        assert_eq!(QuicArgs::default().resolve(&file).audio_hold, Duration::from_millis(20)); // file
        let quic = QuicArgs { bus_audio_hold_ms: Some(0), ..QuicArgs::default() };
        assert_eq!(quic.resolve(&file).audio_hold, Duration::ZERO); // flag: off
        let quic = QuicArgs { bus_audio_hold_ms: Some(60_000), ..QuicArgs::default() };
        assert_eq!(quic.resolve(&file).audio_hold, Duration::from_secs(1)); // capped
        assert_eq!(QuicArgs::default().resolve(&File::default()).audio_hold, gopbus_bus::quic::AUDIO_HOLD);
        assert_eq!(QuicArgs::default().resolve(&File::default()).subscriber_group, gopbus_bus::quic::GROUP_SIZE);
        let quic = QuicArgs { bus_subscriber_group: Some(0), ..QuicArgs::default() };
        assert_eq!(quic.resolve(&file).subscriber_group, 0); // flag: off
        assert_eq!(ClusterArgs::default().resolve(&file).directory_ttl, Duration::from_secs(9));
        assert_eq!(TargetArgs::default().resolve(&file).unwrap(), "quic://origin:4443");
        assert!(TargetArgs::default().resolve(&File::default()).is_err());

        std::fs::write(&path, "rtmpp = 1").unwrap();
        let err = CommonArgs { config: Some(path), data: None }.file().unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
