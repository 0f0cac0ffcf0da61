//! `/api/v1/streams`: the stream-key manager.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gopbus_store::{StoreError, StreamRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{store_error, JsonBody};
use crate::{json_error, Control, PublicUrls};

/// The body of `POST /api/v1/streams`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    /// 1–64 of `a-z 0-9 - _`, starting with a letter or digit.
    #[schema(example = "alice")]
    pub name: String,
}

/// Where a stream is published and played.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamUrls {
    /// RTMP server URL for OBS (Settings → Stream → Server).
    #[schema(example = "rtmp://localhost:1935/live")]
    pub publish_url: String,
    /// RTMP playback.
    #[schema(example = "rtmp://localhost:1935/live/alice")]
    pub play_url: String,
    /// WebRTC playback (WHEP endpoint).
    #[schema(example = "http://localhost:8080/whep/alice")]
    pub whep_url: String,
    /// HLS multivariant playlist.
    #[schema(example = "http://localhost:8080/hls/alice/master.m3u8")]
    pub hls_url: String,
    /// The watch page (WebRTC in the browser).
    #[schema(example = "http://localhost:8080/watch/alice")]
    pub watch_url: String,
}

impl PublicUrls {
    /// The URLs of stream `name`.
    pub fn of(&self, name: &str) -> StreamUrls {
        let (rtmp, http) =
            (format!("rtmp://{}:{}", self.host, self.rtmp_port), format!("http://{}:{}", self.host, self.http_port));
        StreamUrls {
            publish_url: format!("{rtmp}/live"),
            play_url: format!("{rtmp}/live/{name}"),
            whep_url: format!("{http}/whep/{name}"),
            hls_url: format!("{http}/hls/{name}/master.m3u8"),
            watch_url: format!("{http}/watch/{name}"),
        }
    }

    /// A stream with its new `key`, as creating or rotating returns it.
    pub fn created(&self, name: &str, key: &str) -> StreamCreated {
        let urls = self.of(name);
        StreamCreated {
            name: name.to_owned(),
            key: key.to_owned(),
            publish_full_url: format!("{}/{key}", urls.publish_url),
            urls,
        }
    }
}

/// A new stream key (shown once: only its hash is stored).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamCreated {
    /// The stream's name.
    pub name: String,
    /// The secret stream key: anyone with it can publish.
    #[schema(example = "sk_0123456789abcdef0123456789abcdef01234567")]
    pub key: String,
    /// `publish_url` with the key, for ffmpeg (`-f flv URL`).
    pub publish_full_url: String,
    /// Publish and playback URLs.
    #[serde(flatten)]
    pub urls: StreamUrls,
}

/// A stream as listed (never its key).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stream {
    /// Its name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last key rotation, seconds since the Unix epoch.
    pub rotated_at: Option<i64>,
    /// Whether it is live on this node now.
    pub live: bool,
    /// Publish and playback URLs.
    #[serde(flatten)]
    pub urls: StreamUrls,
}

impl Control {
    fn stream(&self, r: StreamRecord) -> Stream {
        let inner = &self.inner;
        Stream {
            live: inner.bus.is_live(&r.name),
            urls: inner.config.urls.of(&r.name),
            name: r.name,
            created_at: r.created_at,
            rotated_at: r.rotated_at,
        }
    }
}

/// Creates a stream and returns its key (shown this once) and URLs.
#[utoipa::path(
    post, path = "/api/v1/streams", tag = "streams", security(("admin" = [])),
    request_body = CreateStream,
    responses(
        (status = 201, description = "Created", body = StreamCreated),
        (status = 400, description = "Malformed body or invalid name", body = crate::api::Error),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
        (status = 409, description = "A stream with this name exists", body = crate::api::Error),
        (status = 413, description = "Body over 16 KiB", body = crate::api::Error),
    )
)]
pub(crate) async fn create(
    State(c): State<Control>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateStream>,
) -> Response {
    if let Err(r) = c.admit(&headers, None) {
        return r;
    }
    match c.inner.keys.create(&body.name).await {
        Ok((rec, key)) => {
            tracing::info!(stream = %rec.name, "stream created through the API");
            (StatusCode::CREATED, Json(c.inner.config.urls.created(&rec.name, &key))).into_response()
        }
        Err(e) => store_error(&e),
    }
}

/// Lists every stream (never their keys).
#[utoipa::path(
    get, path = "/api/v1/streams", tag = "streams", security(("admin" = [])),
    responses(
        (status = 200, description = "Every stream, by name", body = [Stream]),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
    )
)]
pub(crate) async fn list(State(c): State<Control>, headers: HeaderMap) -> Response {
    if let Err(r) = c.admit(&headers, None) {
        return r;
    }
    match c.inner.keys.list().await {
        Ok(list) => Json(list.into_iter().map(|r| c.stream(r)).collect::<Vec<_>>()).into_response(),
        Err(e) => store_error(&e),
    }
}

/// One stream.
#[utoipa::path(
    get, path = "/api/v1/streams/{name}", tag = "streams", security(("admin" = [])),
    params(("name" = String, Path, description = "The stream's name")),
    responses(
        (status = 200, description = "The stream", body = Stream),
        (status = 400, description = "Invalid name", body = crate::api::Error),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
        (status = 404, description = "No such stream", body = crate::api::Error),
    )
)]
pub(crate) async fn get_one(State(c): State<Control>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = c.admit(&headers, Some(&name)) {
        return r;
    }
    match c.inner.keys.list().await {
        Ok(list) => match list.into_iter().find(|r| r.name == name) {
            Some(r) => Json(c.stream(r)).into_response(),
            None => store_error(&StoreError::NotFound(name)),
        },
        Err(e) => store_error(&e),
    }
}

/// Gives a stream a new key; the old one stops working and a live publisher
/// using it is disconnected.
#[utoipa::path(
    post, path = "/api/v1/streams/{name}/rotate", tag = "streams", security(("admin" = [])),
    params(("name" = String, Path, description = "The stream's name")),
    responses(
        (status = 200, description = "The new key", body = StreamCreated),
        (status = 400, description = "Invalid name", body = crate::api::Error),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
        (status = 404, description = "No such stream", body = crate::api::Error),
    )
)]
pub(crate) async fn rotate(State(c): State<Control>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = c.admit(&headers, Some(&name)) {
        return r;
    }
    match c.inner.keys.rotate(&name).await {
        Ok(key) => {
            tracing::info!(stream = %name, "stream key rotated through the API");
            Json(c.inner.config.urls.created(&name, &key)).into_response()
        }
        Err(e) => store_error(&e),
    }
}

/// Deletes a stream; its key stops working and a live publisher is disconnected.
#[utoipa::path(
    delete, path = "/api/v1/streams/{name}", tag = "streams", security(("admin" = [])),
    params(("name" = String, Path, description = "The stream's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid name", body = crate::api::Error),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
        (status = 404, description = "No such stream", body = crate::api::Error),
    )
)]
pub(crate) async fn remove(State(c): State<Control>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = c.admit(&headers, Some(&name)) {
        return r;
    }
    match c.inner.keys.delete(&name).await {
        Ok(()) => {
            tracing::info!(stream = %name, "stream deleted through the API");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(&e),
    }
}

/// 404 for an unknown name, as every `{name}` route says it.
pub(crate) fn not_found(what: &str) -> Response {
    json_error(StatusCode::NOT_FOUND, what)
}
