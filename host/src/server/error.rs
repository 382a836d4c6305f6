//! The API's error answers: `{"error": {"kind", "message"}}` with a status that means
//! something. A 5xx never carries internals: the detail goes to the log, the client gets a
//! reference to it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;
use crate::config::ConfigError;
use crate::queue::QueueError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    fields: Option<Vec<String>>,
}

impl ApiError {
    /// An answer of `status` with `kind` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            fields: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422: the request is well formed but invalid, naming the fields.
    pub fn invalid(message: impl Into<String>, fields: Vec<String>) -> Self {
        ApiError {
            fields: Some(fields),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use cjm_guest::contract::ErrorCategory;
        match &e {
            Error::Queue(q) => match q {
                QueueError::UnknownJob(_) | QueueError::UnknownComposition(_) => {
                    ApiError::not_found(e.to_string())
                }
                QueueError::Finished { .. } | QueueError::NotPending { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
                }
                QueueError::InvalidComposition(problems) => ApiError {
                    fields: Some(Vec::new()),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        format!("invalid composition: {}", problems.join("; ")),
                    )
                },
                QueueError::Full { .. } => {
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
                }
                QueueError::Closed => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the host is shutting down",
                ),
                QueueError::Wedged(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "wedged",
                    "the journal cannot be written; the host refuses new work",
                ),
                _ => ApiError::bad_request(e.to_string()),
            },
            Error::Config(ConfigError::InvalidConfig { field, .. }) => {
                ApiError::invalid(e.to_string(), vec![field.clone()])
            }
            Error::NotFound(what) => ApiError::not_found(what.clone()),
            Error::Job(j) if j.category == ErrorCategory::UserInput => ApiError {
                fields: j.fields_invalid.clone(),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    j.message.clone(),
                )
            },
            Error::Job(j) if j.category == ErrorCategory::Resource => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "resource",
                j.message.clone(),
            ),
            // A worker that did not answer in time, or could not be started: worth trying
            // again, and the caller is told why.
            Error::Job(j) if j.category == ErrorCategory::Transient => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                j.message.clone(),
            ),
            _ => ApiError::internal(&e),
        }
    }
}

impl ApiError {
    /// 500, its detail logged under a reference the client is given.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(reference = %reference, "request failed: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (reference {reference} in the host's log)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"kind": self.kind, "message": self.message});
        if let Some(fields) = self.fields {
            error["fields"] = json!(fields);
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

/// Unknown routes.
pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such route (the API is under /v1; see /v1/openapi.json)")
}

/// Known routes, wrong method.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method (see /v1/openapi.json)",
    )
}

/// The body bound as the API answers it: a request whose declared `Content-Length` passes
/// the bound is refused at once (not read), and a body found too long while it is read gets
/// the API's error shape instead of the extractor's plain text. Both are 413.
pub(super) async fn body_limit(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let max = state.config.max_body_bytes;
    let too_long = |what: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{what}: the service takes bodies of at most {max} bytes (serve --max-body)"),
        )
        .into_response()
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > u64::try_from(max).unwrap_or(u64::MAX)
    {
        return too_long(format!("the body is {n} bytes"));
    }
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return too_long("the body is too long".to_owned());
    }
    response
}

/// The JSON object of a request body: parsed, bounded in depth, or a clear 400.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = parse_value(body)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("bad body: {e}")))
}

/// A request body as a JSON value, bounded in depth.
pub(super) fn parse_value(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    // serde_json refuses nesting past 128 on its own (and so never overflows the stack);
    // the host's bound is checked on what parsed.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(if e.to_string().starts_with("recursion limit exceeded") {
            format!(
                "the body nests deeper than {} levels (kwargs may nest {})",
                crate::bounds::MAX_DOCUMENT_DEPTH,
                crate::bounds::MAX_JSON_DEPTH
            )
        } else {
            format!("body is not valid JSON: {e}")
        })
    })?;
    Ok(value)
}

/// The timeout of a long poll: `timeout_s` (default 30 s), at most `max`.
pub(super) fn wait_timeout(
    timeout_s: Option<f64>,
    max: std::time::Duration,
) -> Result<std::time::Duration, ApiError> {
    let secs = timeout_s.unwrap_or(30.0);
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(ApiError::invalid(
            "timeout_s must be a number of seconds",
            vec!["timeout_s".into()],
        ));
    }
    Ok(std::time::Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
}

/// `axum::extract::Query` whose rejection is the API's error answer (400, `bad_request`,
/// saying which parameter), not axum's plain-text one.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "bad query string: {}",
                rejection.body_text()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cjm_guest::contract::JobError;

    #[test]
    fn typed_job_errors_keep_their_kind_and_message() {
        let cases = [
            (
                JobError::user_input("bad"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
            ),
            (
                JobError::transient("slow worker"),
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
            ),
            (
                JobError::resource("no memory"),
                StatusCode::SERVICE_UNAVAILABLE,
                "resource",
            ),
            (
                JobError::fatal("broken"),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (job, status, kind) in cases {
            let message = job.message.clone();
            let e = ApiError::from(Error::job(job));
            assert_eq!((e.status, e.kind), (status, kind));
            // What a caller may retry says why; a fatal error is referenced in the log.
            assert_eq!(e.message == message, kind != "internal", "{}", e.message);
        }
    }
}
