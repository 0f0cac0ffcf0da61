//! `gopbus serve`: everything in one process.

use std::time::Duration;

use anyhow::Context;
use gopbus_bus::Bus;
use gopbus_ingest::Ingest;
use tokio_util::sync::CancellationToken;

use super::streams::{print_created, Urls};
use crate::config::{
    AdminArgs, AuthHookArgs, BusArgs, CommonArgs, HlsArgs, HttpArgs, PublicArgs, QuicArgs, RtmpArgs,
    SubscribeTokenArgs, TokenArgs, TranscodeArgs, WebRtcArgs, WebhookArgs,
};
use crate::node::{admin_token, bind_server, bus_subscribe_token, bus_token};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rtmp: RtmpArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    public: PublicArgs,
    #[command(flatten)]
    quic: QuicArgs,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    subscribe_token: SubscribeTokenArgs,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    hls: HlsArgs,
    #[command(flatten)]
    webrtc: WebRtcArgs,
    #[command(flatten)]
    transcode: TranscodeArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    auth_hook: AuthHookArgs,
    /// Segment no HLS on this node: no HLS playback and no recordings (an RTMP and WebRTC server only).
    #[arg(long, env = "GOPBUS_NO_HLS")]
    no_hls: bool,
}

/// The API's view of this node's RTMP publishers.
pub(crate) struct IngestPublishers(pub(crate) std::sync::Arc<Ingest>);

impl gopbus_control::Publishers for IngestPublishers {
    fn publisher(&self, name: &str) -> Option<gopbus_control::PublisherInfo> {
        self.0.publisher(name).map(|p| gopbus_control::PublisherInfo {
            protocol: "rtmp".into(),
            peer: p.peer.to_string(),
            session: p.session,
        })
    }

    fn kick(&self, name: &str) -> bool {
        self.0.kick(name)
    }
}

pub(crate) async fn run(a: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let data = a.common.data(&file);
    let rtmp = a.rtmp.resolve(&file);
    let http_addr = a.http.resolve(&file);
    let quic = a.quic.resolve(&file);

    let store = super::open_keys(&data, None).await?;
    let urls = Urls(gopbus_control::PublicUrls {
        host: a.public.resolve(&file),
        rtmp_port: rtmp.listen.port(),
        http_port: http_addr.port(),
    });
    if store.is_empty().await? {
        let (rec, key) = store.create("demo").await?;
        println!("First start: created stream \"demo\". Point OBS (Settings → Stream → Custom) at:");
        print_created(&rec.name, &key, &urls, false);
        println!("(keys are stored hashed: this is the only time this one is shown; `gopbus streams rotate demo` makes a new one)");
    }
    let bus = Bus::new(a.bus.resolve(&file));
    let ingest = Ingest::with_hook(bus.clone(), store.clone(), rtmp.ingest(), a.auth_hook.resolve(&file)?);

    let rtmp_listener =
        tokio::net::TcpListener::bind(rtmp.listen).await.with_context(|| format!("binding RTMP on {}", rtmp.listen))?;
    let (token, new_token) = bus_token(a.token.resolve(&file), &data)?;
    let (subscribe_token, new_subscribe_token) = bus_subscribe_token(a.subscribe_token.resolve(&file), &data)?;
    let (quic_server, cert) =
        bind_server(&quic, bus.clone(), token.clone(), subscribe_token.clone(), store.clone(), &data)?;
    if new_token {
        println!(
            "QUIC bus: token {token} (kept in {}), certificate {}",
            data.join("bus-token").display(),
            cert.display()
        );
    }
    if new_subscribe_token {
        println!(
            "QUIC bus: subscribe-only token {subscribe_token} (kept in {}; give it to `gopbus dump` users and edges)",
            data.join("bus-subscribe-token").display()
        );
    }
    let admin = admin_token(a.admin.resolve(&file), &data)?;
    let http =
        tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("binding HTTP on {http_addr}"))?;
    tracing::info!(rtmp = %rtmp_listener.local_addr()?, http = %http.local_addr()?, quic = %quic_server.local_addr()?, data = %data.display(), "gopbus serving");

    let hls = gopbus_hls::Hls::with_audience(a.hls.resolve(&file, &data)?, bus.audience().clone());
    let webhooks = match a.webhooks.resolve(&file, &data)? {
        Some(config) => {
            let urls = config.urls.clone();
            let w = gopbus_control::Webhooks::open(config)?;
            tracing::info!(?urls, "webhooks on");
            Some(w)
        }
        None => None,
    };
    let quic_addr = quic_server.local_addr()?.to_string();
    let control = gopbus_control::Control::new(
        gopbus_control::ControlConfig {
            admin_token: admin.clone(),
            urls: urls.0.clone(),
            node: gopbus_control::NodeInfo { id: quic_addr.clone(), quic: Some(quic_addr) },
        },
        store,
        bus.clone(),
        Some(std::sync::Arc::new(IngestPublishers(ingest.clone()))),
        webhooks.clone(),
        vec![gopbus_hls::Hls::api_doc()],
    );
    let webrtc = gopbus_webrtc::WebRtc::new(a.webrtc.resolve(&file)?, bus.clone());
    let transcoder = a.transcode.resolve(&file)?.map(|config| {
        let leases = std::sync::Arc::new(gopbus_bus::lease::LocalLeases::default());
        gopbus_transcode::Transcoder::new(config, "serve", leases)
    });
    control.add_metrics(crate::metrics::ingest(ingest.clone()));
    control.add_metrics(crate::metrics::quic(quic_server.stats()));
    if let Some(t) = &transcoder {
        control.add_metrics(crate::metrics::transcoder(t.clone()));
    }
    let mut routers = vec![hls.router(), hls.api(&admin), webrtc.router(), control.router()];
    routers.extend(transcoder.as_ref().map(gopbus_transcode::Transcoder::router));
    let http_task = tokio::spawn(crate::http::serve(http, routers, shutdown.clone()));
    // Its own token: it goes on until ingest and HLS have ended the broadcasts
    // and closed the recordings, so their events reach the outbox.
    let webhooks_stop = CancellationToken::new();
    let webhooks_task = webhooks.map(|w| {
        let recordings = Some(hls.recordings_ready());
        tokio::spawn(w.run(bus.clone(), recordings, webhooks_stop.clone()))
    });
    // Its own token: it must go on until ingest has ended the broadcasts (closing the recordings).
    let hls_stop = CancellationToken::new();
    let no_hls = a.no_hls || file.no_hls.unwrap_or(false);
    let hls_task = (!no_hls).then(|| tokio::spawn(hls.run(bus.clone(), hls_stop.clone())));
    if no_hls {
        tracing::info!("HLS off (--no-hls): no segmenting, no recordings");
    }
    let webrtc_task = tokio::spawn(webrtc.run(shutdown.clone()));
    let control_task = tokio::spawn(control.run(shutdown.clone()));
    let transcode_task = transcoder.map(|t| tokio::spawn(t.run(bus.clone(), shutdown.clone())));
    let keys_task = tokio::spawn(ingest.clone().watch_keys(Duration::from_millis(500), shutdown.clone()));
    let rtmp_task = tokio::spawn(ingest.clone().run(rtmp_listener, shutdown.clone()));
    let quic_task = tokio::spawn(quic_server.run(shutdown.clone()));

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    let _ = rtmp_task.await;
    hls_stop.cancel();
    if let Some(t) = hls_task {
        let _ = t.await;
    }
    webhooks_stop.cancel();
    if let Some(t) = webhooks_task {
        let _ = t.await;
    }
    let _ = webrtc_task.await;
    if let Some(t) = transcode_task {
        let _ = t.await;
    }
    let _ = keys_task.await;
    let _ = control_task.await;
    let _ = quic_task.await;
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "http server error");
    }
    tracing::info!("stopped");
    Ok(())
}
