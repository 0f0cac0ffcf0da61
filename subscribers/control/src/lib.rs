//! The control plane of a gopbus node: the REST API that a platform drives
//! gopbus with, and its OpenAPI document.
//!
//! # Role
//!
//! [`Control::router`] serves, behind `Authorization: Bearer ADMIN_TOKEN`:
//!
//! - `/api/v1/streams` — create, list, get, rotate the key of, delete streams
//!   (the key store: SQLite or Redis, [`gopbus_store::Keys`]); a new key comes
//!   with the publish URL and every playback URL ([`StreamUrls`]);
//! - `/api/v1/webhooks/deliveries[?stream=NAME&limit=N]` — the webhook
//!   outbox: every event per endpoint, pending, delivered or given up, with
//!   its attempts ([`webhooks`]);
//! - `/api/v1/broadcasts[/NAME]` — what is live on this node: tracks and
//!   codecs, resolution, frame rate, bit rate in, viewers and bytes out per
//!   protocol (from the bus's [`Audience`](gopbus_bus::Audience)), GoPs
//!   skipped; `DELETE /api/v1/broadcasts/NAME/publisher[?revoke=true]` kicks
//!   the publisher;
//!
//! and, without a token, `GET /metrics` (OpenMetrics text: totals only, no
//! stream names), `GET /readyz` and `GET /api/v1/openapi.json`, generated from these
//! handlers with `utoipa` (plus what other parts add: the recordings API).
//!
//! # Contract
//!
//! - A client mistake is a 4xx with a JSON body `{"error": "…"}` saying what
//!   is wrong (malformed or unknown JSON fields, a bad name, a body over
//!   16 KiB, a wrong token → 401); a 500 only for a store that fails.
//! - Nothing here runs per frame: rates come from the bus's counters, sampled
//!   once a second by [`Control::run`].

mod api;
mod auth;
mod broadcasts;
pub mod hook;
pub mod metrics;
mod openapi;
mod streams;
pub mod webhooks;

pub use api::Error as ApiError;
pub use auth::{json_error, AdminToken};
pub use broadcasts::{
    Broadcast, BroadcastAnswer, NodeInfo, PublisherInfo, RemoteBroadcast, Track, VideoInfo, ViewerCounts,
};
pub use hook::{HookConfig, HttpHook};
pub use metrics::{Family, Kind, MetricsSource};
pub use openapi::ApiDoc;
pub use streams::{CreateStream, Stream, StreamCreated, StreamUrls};
pub use webhooks::{RecordingReady, WebhookConfig, Webhooks};

use std::sync::Arc;

use gopbus_bus::Bus;
use gopbus_store::Keys;
use tokio_util::sync::CancellationToken;

/// Where publishers and players reach this node: the host and ports printed
/// in URLs.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    /// Host name (`--public-host`).
    pub host: String,
    /// RTMP port.
    pub rtmp_port: u16,
    /// HTTP port (WHEP, HLS, the watch page).
    pub http_port: u16,
}

/// What the broadcasts API may do to a live publisher on this node.
pub trait Publishers: Send + Sync {
    /// The publisher of `name` on this node, if any.
    fn publisher(&self, name: &str) -> Option<PublisherInfo>;
    /// Disconnects the publisher of `name`; false if it has none on this node.
    fn kick(&self, name: &str) -> bool;
}

/// Settings of the control plane.
#[derive(Clone)]
pub struct ControlConfig {
    /// The admin token the API asks for.
    pub admin_token: String,
    /// Host and ports printed in URLs.
    pub urls: PublicUrls,
    /// This node, as the broadcasts API names it.
    pub node: NodeInfo,
}

/// The control plane of one node. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControlConfig,
    token: AdminToken,
    keys: Keys,
    bus: Bus,
    publishers: Option<Arc<dyn Publishers>>,
    webhooks: Option<Webhooks>,
    rates: broadcasts::Rates,
    openapi: utoipa::openapi::OpenApi,
    metrics: std::sync::RwLock<metrics::Sources>,
    /// The cluster's directory, for broadcasts held elsewhere.
    directory: std::sync::OnceLock<Arc<dyn gopbus_bus::directory::Directory>>,
}

impl Control {
    /// The control plane over `keys` and `bus`; `publishers` (ingest) answers
    /// for RTMP publishers; `webhooks`' deliveries are listed; `more_api` is
    /// merged into the OpenAPI document (the routes other parts mount under
    /// `/api/v1`).
    pub fn new(
        config: ControlConfig,
        keys: Keys,
        bus: Bus,
        publishers: Option<Arc<dyn Publishers>>,
        webhooks: Option<Webhooks>,
        more_api: Vec<utoipa::openapi::OpenApi>,
    ) -> Self {
        let mut openapi = <ApiDoc as utoipa::OpenApi>::openapi();
        for more in more_api {
            openapi.merge(more);
        }
        let token = AdminToken::new(&config.admin_token);
        let inner = Inner {
            config,
            token,
            keys,
            bus,
            publishers,
            webhooks,
            rates: broadcasts::Rates::default(),
            openapi,
            metrics: Default::default(),
            directory: std::sync::OnceLock::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Looks up broadcasts not held here in `directory` (the Redis directory
    /// of a cluster): `GET /api/v1/broadcasts/NAME` then names their node.
    pub fn set_directory(&self, directory: Arc<dyn gopbus_bus::directory::Directory>) {
        let _ = self.inner.directory.set(directory);
    }

    /// `Ok` when `headers` carry the admin token and `name` (if any) is a valid
    /// stream name; otherwise the 401 or 400 to answer with.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit(
        &self,
        headers: &axum::http::HeaderMap,
        name: Option<&str>,
    ) -> Result<(), axum::response::Response> {
        self.inner.token.check(headers)?;
        match name.map(gopbus_store::keys::validate_name) {
            Some(Err(e)) => Err(api::store_error(&e)),
            _ => Ok(()),
        }
    }

    /// Adds a part's metrics to `/metrics`.
    pub fn add_metrics(&self, source: Arc<dyn MetricsSource>) {
        self.inner.metrics.write().unwrap_or_else(|e| e.into_inner()).push(source);
    }

    /// The HTTP routes (`/api/v1/…`, `/metrics`, `/readyz`).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// The OpenAPI document served at `/api/v1/openapi.json`.
    pub fn openapi(&self) -> &utoipa::openapi::OpenApi {
        &self.inner.openapi
    }

    /// Samples the bus's counters once a second (for bit and frame rates) and
    /// forgets the audience of broadcasts long gone, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let inner = &self.inner;
            inner.rates.sample(&inner.bus.broadcasts());
            inner.bus.audience().prune(|name| inner.bus.is_live(name));
        }
    }
}
