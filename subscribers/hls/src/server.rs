//! The HTTP side: live playlists and segments from memory, recordings from disk.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::Hls;

const PLAYLIST: &str = "application/vnd.apple.mpegurl";

pub(crate) fn router(hls: Hls) -> axum::Router {
    axum::Router::new()
        .route("/hls/{name}/index.m3u8", get(live_playlist))
        .route("/hls/{name}/master.m3u8", get(multivariant))
        .route("/hls/{name}/{session}/{file}", get(live_file))
        .route("/recordings/{name}/{session}/{file}", get(recorded_file))
        .with_state(hls)
}

fn reply(body: impl Into<axum::body::Body>, kind: &'static str, cache: &'static str) -> Response {
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    // Players on other origins (a page served elsewhere) may read it.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

fn kind_of(file: &str) -> Option<&'static str> {
    if file.ends_with(".m3u8") {
        Some(PLAYLIST)
    } else if file.ends_with(".m4s") {
        Some("video/iso.segment")
    } else if file.ends_with(".mp4") {
        Some("video/mp4")
    } else {
        None
    }
}

/// A path segment that names a file or directory of ours: no separators, no dot-dot.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

async fn live_playlist(State(hls): State<Hls>, Path(name): Path<String>) -> Response {
    match hls.inner.live.get(&name).and_then(|l| l.playlist()) {
        Some(text) => reply(text, PLAYLIST, "no-cache"),
        None => (StatusCode::NOT_FOUND, "no live HLS for this broadcast\n").into_response(),
    }
}

async fn multivariant(State(hls): State<Hls>, Path(name): Path<String>) -> Response {
    match hls.inner.live.get(&name).and_then(|l| l.multivariant()) {
        Some(text) => reply(text, PLAYLIST, "no-cache"),
        None => (StatusCode::NOT_FOUND, "no live HLS for this broadcast\n").into_response(),
    }
}

async fn live_file(State(hls): State<Hls>, Path((name, session, file)): Path<(String, String, String)>) -> Response {
    let Some(kind) = kind_of(&file).filter(|_| plain(&name) && plain(&session) && plain(&file)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let in_memory = hls.inner.live.get(&name).filter(|l| l.session == session).and_then(|l| l.file(&file));
    match in_memory {
        Some(bytes) => reply(bytes, kind, "public, max-age=31536000, immutable"),
        // Slid out of the window (a player far behind): the recording has it.
        None => from_disk(&hls, &name, &session, &file, kind).await,
    }
}

async fn recorded_file(
    State(hls): State<Hls>,
    Path((name, session, file)): Path<(String, String, String)>,
) -> Response {
    match kind_of(&file).filter(|_| plain(&name) && plain(&session) && plain(&file)) {
        Some(kind) => from_disk(&hls, &name, &session, &file, kind).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn from_disk(hls: &Hls, name: &str, session: &str, file: &str, kind: &'static str) -> Response {
    let path = hls.inner.config.recordings.join(name).join(session).join(file);
    match tokio::fs::read(&path).await {
        // The playlist changes while the session records; the media files never do.
        Ok(data) => reply(
            Bytes::from(data),
            kind,
            if kind == PLAYLIST { "no-cache" } else { "public, max-age=31536000, immutable" },
        ),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
