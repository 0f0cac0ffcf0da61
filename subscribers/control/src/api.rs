//! The router, the JSON body extractor and the error mapping shared by the routes.

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use gopbus_store::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{broadcasts, json_error, streams, Control};

/// Largest request body the API reads.
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// What every error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct Error {
    /// What is wrong, for a person.
    #[schema(example = "stream \"alice\" not found")]
    pub error: String,
}

pub(crate) fn router(control: Control) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/streams", post(streams::create).get(streams::list))
        .route("/api/v1/streams/{name}", get(streams::get_one).delete(streams::remove))
        .route("/api/v1/streams/{name}/rotate", post(streams::rotate))
        .route("/api/v1/broadcasts", get(broadcasts::list))
        .route("/api/v1/broadcasts/{name}", get(broadcasts::get_one))
        .route("/api/v1/broadcasts/{name}/publisher", delete(broadcasts::kick))
        .route("/api/v1/webhooks/deliveries", get(deliveries))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/readyz", get(crate::metrics::ready))
        .with_state(control)
}

/// Query of the deliveries list.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveriesQuery {
    stream: Option<String>,
    limit: Option<usize>,
}

/// The webhook outbox, newest first: each event per endpoint, with its state and attempts.
#[utoipa::path(
    get, path = "/api/v1/webhooks/deliveries", tag = "webhooks", security(("admin" = [])),
    params(
        ("stream" = Option<String>, Query, description = "Only this stream's events"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "Deliveries, newest first", body = [crate::webhooks::Delivery]),
        (status = 400, description = "Bad query", body = Error),
        (status = 401, description = "Missing or wrong admin token", body = Error),
        (status = 404, description = "Webhooks are not configured", body = Error),
    )
)]
pub(crate) async fn deliveries(
    State(c): State<Control>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = c.admit(&headers, None) {
        return r;
    }
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad query: {}", e.body_text())),
    };
    let Some(webhooks) = c.inner.webhooks.clone() else {
        return json_error(StatusCode::NOT_FOUND, "no webhooks are configured (--webhook-url)");
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match tokio::task::spawn_blocking(move || webhooks.deliveries(q.stream.as_deref(), limit)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "API: the webhook outbox failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "the webhook outbox failed")
        }
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "the webhook outbox failed"),
    }
}

async fn openapi(State(c): State<Control>) -> Response {
    Json(c.inner.openapi.clone()).into_response()
}

/// The 4xx (or 500) a store error means.
pub(crate) fn store_error(e: &StoreError) -> Response {
    let status = match e {
        StoreError::InvalidName(_) => StatusCode::BAD_REQUEST,
        StoreError::Exists(_) => StatusCode::CONFLICT,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Db(_) | StoreError::Redis(_) | StoreError::Io(_) | StoreError::Random(_) => {
            tracing::warn!(error = %e, "API: the key store failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    json_error(status, &e.to_string())
}

/// A JSON request body: at most [`MAX_BODY`] bytes (413 past it), whatever
/// its `Content-Type` (`curl -d` sends a form type), unknown fields refused;
/// a 400 says what is wrong with it.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| json_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body over {MAX_BODY} bytes")))?;
        if body.is_empty() {
            return Err(json_error(StatusCode::BAD_REQUEST, "a JSON body is required"));
        }
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("malformed JSON body: {e}")))
    }
}
