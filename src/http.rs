//! The one HTTP server of a node: `/healthz` plus the routers the parts expose.

use tokio_util::sync::CancellationToken;

/// Serves `routers` merged, with `GET /healthz`, until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    routers: Vec<axum::Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = routers
        .into_iter()
        .fold(axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" })), axum::Router::merge);
    // The peer's address is there for handlers that limit per client (WebRTC signaling).
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
