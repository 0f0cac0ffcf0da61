//! The recordings API (admin): list the recorded sessions, delete one.
//!
//! - `GET /api/v1/recordings[?name=NAME]` → every recorded session, newest
//!   first: name, session, start, duration, size, segments, whether it is
//!   still being recorded or uploaded, and its playlist URL;
//! - `DELETE /api/v1/recordings/NAME/SESSION` → 204; 409 while it is being
//!   recorded; 404 if there is no such recording.
//!
//! Both need `Authorization: Bearer ADMIN_TOKEN`; anything else gets 401 with
//! a JSON error.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use gopbus_control::{json_error as error, AdminToken};

use crate::Hls;

/// One recorded session, as the API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Recording {
    /// The broadcast's name.
    pub name: String,
    /// The session: its start, in milliseconds since the Unix epoch.
    pub session: String,
    /// When it started, RFC 3339.
    pub started: String,
    /// Seconds of media in its playlist.
    pub duration: f64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Media segments.
    pub segments: usize,
    /// Still being recorded (the broadcast is live).
    pub recording: bool,
    /// Uploaded to S3 completely (`None` without S3 output).
    pub uploaded: Option<bool>,
    /// Its VOD (or, while recording, EVENT) playlist.
    pub playlist: String,
}

#[derive(Clone)]
struct Api {
    hls: Hls,
    token: AdminToken,
}

/// The recordings API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, remove), tags((name = "recordings", description = "Recorded broadcast sessions (HLS VOD)")))]
pub(crate) struct RecordingsDoc;

impl Hls {
    /// The recordings API, behind `admin_token`.
    pub fn api(&self, admin_token: &str) -> axum::Router {
        let api = Api { hls: self.clone(), token: AdminToken::new(admin_token) };
        axum::Router::new()
            .route("/api/v1/recordings", get(list))
            .route("/api/v1/recordings/{name}/{session}", delete(remove))
            .with_state(api)
    }

    /// Every recorded session (of `name`, if given), newest first.
    pub fn recordings(&self, name: Option<&str>) -> Vec<Recording> {
        let live = self.recording_now();
        let uploading = self.inner.uploader.is_some();
        let mut out: Vec<Recording> = crate::recordings(&self.inner.config.recordings)
            .into_iter()
            .filter(|s| name.is_none_or(|n| n == s.name))
            .map(|s| {
                let text = std::fs::read_to_string(s.dir.join("index.m3u8")).unwrap_or_default();
                let durations: Vec<f64> =
                    text.lines().filter_map(|l| l.strip_prefix("#EXTINF:")?.split(',').next()?.parse().ok()).collect();
                let started = UNIX_EPOCH + Duration::from_millis(s.started as u64);
                Recording {
                    recording: live.contains(&(s.name.clone(), s.session.clone())),
                    uploaded: uploading.then(|| s.dir.join(crate::upload::UPLOADED).exists()),
                    playlist: format!("/recordings/{}/{}/index.m3u8", s.name, s.session),
                    started: crate::segmenter::rfc3339(started),
                    duration: (durations.iter().sum::<f64>() * 1000.0).round() / 1000.0,
                    segments: durations.len(),
                    bytes: s.bytes,
                    name: s.name,
                    session: s.session,
                }
            })
            .collect();
        out.sort_by(|a, b| b.session.cmp(&a.session).then_with(|| a.name.cmp(&b.name)));
        out
    }
}

/// Every recorded session (of one broadcast, with `name`), newest first.
#[utoipa::path(
    get, path = "/api/v1/recordings", tag = "recordings", security(("admin" = [])),
    params(("name" = Option<String>, Query, description = "Only this broadcast's recordings")),
    responses(
        (status = 200, description = "The recordings, newest first", body = [Recording]),
        (status = 401, description = "Missing or wrong admin token", body = gopbus_control::ApiError),
    )
)]
async fn list(State(api): State<Api>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    if let Err(r) = api.token.check(&headers) {
        return r;
    }
    let name = query.as_deref().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("name="))).map(str::to_owned);
    let hls = api.hls.clone();
    match tokio::task::spawn_blocking(move || hls.recordings(name.as_deref())).await {
        Ok(list) => Json(list).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"),
    }
}

/// Deletes a finished recording (its playlist and media).
#[utoipa::path(
    delete, path = "/api/v1/recordings/{name}/{session}", tag = "recordings", security(("admin" = [])),
    params(
        ("name" = String, Path, description = "The broadcast's name"),
        ("session" = String, Path, description = "The session (its start in ms since the Unix epoch)"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong admin token", body = gopbus_control::ApiError),
        (status = 404, description = "No such recording", body = gopbus_control::ApiError),
        (status = 409, description = "Still being recorded", body = gopbus_control::ApiError),
    )
)]
async fn remove(State(api): State<Api>, Path((name, session)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if let Err(r) = api.token.check(&headers) {
        return r;
    }
    if !crate::server::plain(&name) || !crate::server::plain(&session) {
        return error(StatusCode::NOT_FOUND, "no such recording");
    }
    if api.hls.recording_now().contains(&(name.clone(), session.clone())) {
        return error(
            StatusCode::CONFLICT,
            "this session is being recorded; it can be deleted once the broadcast ends",
        );
    }
    let dir = api.hls.inner.config.recordings.join(&name).join(&session);
    if !dir.join("index.m3u8").exists() {
        return error(StatusCode::NOT_FOUND, "no such recording");
    }
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {
            tracing::info!(recording = %dir.display(), "recording deleted through the API");
            // The broadcast's directory goes too once it holds no session.
            let _ = tokio::fs::remove_dir(dir.parent().unwrap_or(&dir)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::warn!(recording = %dir.display(), error = %e, "could not delete a recording");
            error(StatusCode::INTERNAL_SERVER_ERROR, "could not delete the recording")
        }
    }
}
