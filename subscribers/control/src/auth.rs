//! The admin token check and the JSON error every API route answers with.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The admin token, compared in constant time.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<str>);

impl AdminToken {
    /// A check for `token`.
    pub fn new(token: &str) -> Self {
        Self(token.into())
    }

    /// `Ok` when `headers` carry `Authorization: Bearer TOKEN`; otherwise
    /// the 401 to answer with (JSON error, `WWW-Authenticate: Bearer`).
    #[allow(clippy::result_large_err)]
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(self.0.as_bytes())) {
            return Ok(());
        }
        let mut r = json_error(StatusCode::UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer TOKEN)");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(r)
    }
}
