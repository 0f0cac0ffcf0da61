//! The `gopbus` binary: the command line, mapped onto the libraries. One module
//! per subcommand ([`cmd`]), one settings layer shared by all ([`config`]), one
//! HTTP server that merges the parts' routers ([`http`]).

mod cmd;
mod config;
mod http;
mod metrics;
mod node;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// gopbus: live video. RTMP in; a zero-copy GoP bus, in process and across
/// machines over QUIC; RTMP, WebRTC and HLS out; renditions from transcoder workers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: RTMP ingest and play, HTTP, the bus.
    Serve(Box<cmd::serve::Args>),
    /// Subscribe to a broadcast on a bus node and write it as FLV.
    Dump(cmd::dump::Args),
    /// Run a QUIC bus relay: an origin for ingest nodes, or an edge of an origin.
    Relay(cmd::relay::Args),
    /// Run an RTMP ingest node that publishes to a relay.
    Ingest(cmd::ingest::Args),
    /// Run the HLS segmenter on its own, fed by a bus node: live HLS and recordings over HTTP.
    Hls(cmd::hls::Args),
    /// Run the WebRTC subscriber on its own, fed by a bus node: WHEP, WebSocket and the watch page over HTTP.
    Webrtc(Box<cmd::webrtc::Args>),
    /// Run a transcoder worker fed by a bus node: renditions published back on it, jobs shared with other workers through Redis.
    Transcode(Box<cmd::transcode::Args>),
    /// Manage streams and their secret keys.
    Streams(cmd::streams::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // quinn, and later webrtc and reqwest, each pull in a rustls crypto provider: pick one.
    gopbus_bus::quic::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // webrtc-rs logs expected ICE/DTLS events (a STUN answer from a
                // candidate already given up) as warnings; gopbus logs what matters.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rtc=error,rtc_ice=error,rtc_dtls=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match cli.command {
        Command::Streams(_) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => cmd::serve::run(*a, until_signal()).await,
            Command::Relay(a) => cmd::relay::run(a, until_signal()).await,
            Command::Ingest(a) => cmd::ingest::run(a, until_signal()).await,
            Command::Dump(a) => cmd::dump::run(a, until_signal()).await,
            Command::Hls(a) => cmd::hls::run(a, until_signal()).await,
            Command::Webrtc(a) => cmd::webrtc::run(*a, until_signal()).await,
            Command::Transcode(a) => cmd::transcode::run(*a, until_signal()).await,
            Command::Streams(a) => cmd::streams::run(a).await,
        }
    })
}

/// A token cancelled at Ctrl-C or SIGTERM.
fn until_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
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
        t.cancel();
    });
    token
}
