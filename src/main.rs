//! The `gopbus` binary: command line, configuration, and the wiring of the parts.

mod busnode;
mod config;
mod flv_out;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gopbus_bus::{Bus, BusConfig};
use gopbus_ingest::{Ingest, IngestConfig, KeyStore, Keys, RedisKeys};
use tokio_util::sync::CancellationToken;

use crate::config::{ServeArgs, Settings};

/// gopbus: live video. RTMP in; a zero-copy GoP bus, in process and across
/// machines over QUIC; RTMP out (WebRTC, HLS and transcoding subscribers come next).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: RTMP ingest and play, HTTP, the bus.
    Serve(ServeArgs),
    /// Subscribe to a broadcast on a bus node and write it as FLV.
    Dump(DumpArgs),
    /// Run a QUIC bus relay: an origin for ingest nodes, or an edge of an origin.
    Relay(busnode::RelayArgs),
    /// Run an RTMP ingest node that publishes to a relay.
    Ingest(busnode::IngestArgs),
    /// Manage streams and their secret keys.
    Streams {
        #[command(subcommand)]
        action: StreamsAction,
        /// Data directory holding the stream-key database.
        #[arg(long, env = "GOPBUS_DATA", default_value = "./data", global = true)]
        data: PathBuf,
        /// Manage the keys kept in this Redis (shared by `gopbus ingest --redis` nodes) instead of DATA.
        #[arg(long, env = "GOPBUS_REDIS", global = true)]
        redis: Option<String>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        /// Host name to print in publish and play URLs.
        #[arg(long, env = "GOPBUS_PUBLIC_HOST", default_value = "localhost", global = true)]
        public_host: String,
        /// RTMP port to print in publish and play URLs.
        #[arg(long, env = "GOPBUS_PUBLIC_RTMP_PORT", default_value_t = 1935, global = true)]
        rtmp_port: u16,
    },
}

#[derive(clap::Args)]
struct DumpArgs {
    /// The bus node to subscribe at, `quic://HOST:PORT`.
    #[arg(long)]
    bus: String,
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
    #[command(flatten)]
    client: busnode::ClientOpts,
}

#[derive(Subcommand)]
enum StreamsAction {
    /// Create a stream; prints its secret key and URLs.
    Create { name: String },
    /// List streams (never their keys).
    List,
    /// Delete a stream; its key stops working and a live publisher is disconnected.
    Delete { name: String },
    /// Give a stream a new key; the old one stops working and a live publisher using it is disconnected.
    Rotate { name: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // quinn, and later webrtc and reqwest, each pull in a rustls crypto provider: pick one.
    gopbus_bus::quic::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => {
            let settings = args.resolve()?;
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(settings))
        }
        Command::Relay(a) => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                s.cancel();
            });
            busnode::relay(a, shutdown).await
        }),
        Command::Ingest(a) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(ingest_node(a))
        }
        Command::Dump(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(busnode::dump(&a.bus, &a.client, &a.name, &a.out, a.duration, a.max_rate)),
        Command::Streams { action, data, redis, json, public_host, rtmp_port } => {
            let urls = Urls { host: public_host, port: rtmp_port };
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                let keys = open_keys(&data, redis.as_deref()).await?;
                streams(action, &keys, json, &urls).await
            })
        }
    }
}

struct Urls {
    host: String,
    port: u16,
}

impl Urls {
    fn server(&self) -> String {
        format!("rtmp://{}:{}/live", self.host, self.port)
    }
    fn play(&self, name: &str) -> String {
        format!("rtmp://{}:{}/live/{name}", self.host, self.port)
    }
}

fn print_created(name: &str, key: &str, urls: &Urls, json: bool) {
    if json {
        let v = serde_json::json!({
            "name": name,
            "key": key,
            "publish_url": urls.server(),
            "publish_full_url": format!("{}/{key}", urls.server()),
            "play_url": urls.play(name),
        });
        println!("{v}");
    } else {
        println!("stream:      {name}");
        println!("stream key:  {key}   (secret: anyone with it can publish)");
        println!("OBS server:  {}", urls.server());
        println!("ffmpeg:      ffmpeg -re -i INPUT -c copy -f flv {}/{key}", urls.server());
        println!("play:        {}", urls.play(name));
    }
}

/// The key store: Redis when a URL is given, else SQLite in `data`.
async fn open_keys(data: &std::path::Path, redis: Option<&str>) -> anyhow::Result<Keys> {
    Ok(match redis {
        Some(url) => Keys::Redis(RedisKeys::connect(url).await.context("opening the stream keys in Redis")?),
        None => Keys::Sqlite(Arc::new(
            KeyStore::open(data).with_context(|| format!("opening the stream database in {}", data.display()))?,
        )),
    })
}

async fn streams(action: StreamsAction, store: &Keys, json: bool, urls: &Urls) -> anyhow::Result<()> {
    match action {
        StreamsAction::Create { name } => {
            let (rec, key) = store.create(&name).await?;
            print_created(&rec.name, &key, urls, json);
        }
        StreamsAction::List => {
            let list = store.list().await?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|r| serde_json::json!({"name": r.name, "created_at": r.created_at, "rotated_at": r.rotated_at, "play_url": urls.play(&r.name)}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for r in list {
                    println!("{}\t{}", r.name, urls.play(&r.name));
                }
            }
        }
        StreamsAction::Delete { name } => {
            store.delete(&name).await?;
            if json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("deleted stream {name}");
            }
        }
        StreamsAction::Rotate { name } => {
            let key = store.rotate(&name).await?;
            print_created(&name, &key, urls, json);
        }
    }
    Ok(())
}

async fn serve(s: Settings) -> anyhow::Result<()> {
    let store = open_keys(&s.data, None).await?;
    let urls = Urls { host: s.public_host.clone(), port: s.rtmp.port() };
    if store.is_empty().await? {
        let (rec, key) = store.create("demo").await?;
        println!("First start: created stream \"demo\". Point OBS (Settings → Stream → Custom) at:");
        print_created(&rec.name, &key, &urls, false);
        println!("(keys are stored hashed: this is the only time this one is shown; `gopbus streams rotate demo` makes a new one)");
    }
    let bus = Bus::new(BusConfig { window: s.gop_window.max(1), ..BusConfig::default() });
    let ingest_config = IngestConfig {
        max_connections: s.max_connections,
        idle_timeout: Duration::from_secs(s.idle_timeout.max(1)),
        ..IngestConfig::default()
    };
    let ingest = Ingest::new(bus.clone(), store.clone(), ingest_config);
    let shutdown = CancellationToken::new();

    let rtmp = tokio::net::TcpListener::bind(s.rtmp).await.with_context(|| format!("binding RTMP on {}", s.rtmp))?;
    let (token, new_token) = busnode::bus_token(s.bus_token.clone(), &s.data)?;
    let (quic, cert) =
        busnode::bind_server(s.quic, bus.clone(), token.clone(), &s.data, s.tls_cert.as_deref(), s.tls_key.as_deref())?;
    if new_token {
        println!(
            "QUIC bus: token {token} (kept in {}), certificate {}",
            s.data.join("bus-token").display(),
            cert.display()
        );
    }
    let http = tokio::net::TcpListener::bind(s.http).await.with_context(|| format!("binding HTTP on {}", s.http))?;
    tracing::info!(rtmp = %rtmp.local_addr()?, http = %http.local_addr()?, quic = %quic.local_addr()?, data = %s.data.display(), "gopbus serving");

    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, app).with_graceful_shutdown(async move { http_shutdown.cancelled().await }).await
    });
    let keys_task = tokio::spawn(ingest.clone().watch_keys(Duration::from_millis(500), shutdown.clone()));
    let rtmp_task = tokio::spawn(ingest.clone().run(rtmp, shutdown.clone()));
    let quic_task = tokio::spawn(quic.run(shutdown.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = rtmp_task.await;
    let _ = keys_task.await;
    let _ = quic_task.await;
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "http server error");
    }
    tracing::info!("stopped");
    Ok(())
}

/// `gopbus ingest`: RTMP ingest onto a local bus, forwarded to a relay.
async fn ingest_node(a: busnode::IngestArgs) -> anyhow::Result<()> {
    let store = open_keys(&a.data, a.redis.as_deref()).await?;
    let bus = Bus::new(BusConfig::default());
    let ingest = Ingest::new(bus.clone(), store, IngestConfig::default());
    let shutdown = CancellationToken::new();
    let rtmp = tokio::net::TcpListener::bind(a.rtmp).await.with_context(|| format!("binding RTMP on {}", a.rtmp))?;
    tracing::info!(rtmp = %rtmp.local_addr()?, bus = %a.bus, keys = a.redis.as_deref().unwrap_or("data directory"), "gopbus ingest serving");
    let keys = tokio::spawn(ingest.clone().watch_keys(Duration::from_millis(500), shutdown.clone()));
    let server = tokio::spawn(ingest.clone().run(rtmp, shutdown.clone()));
    let forward = tokio::spawn(busnode::forward(bus, a.bus.clone(), a.client.clone(), shutdown.clone()));
    wait_for_signal().await;
    shutdown.cancel();
    let _ = server.await;
    let _ = keys.await;
    let _ = forward.await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
