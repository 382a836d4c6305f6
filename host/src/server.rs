//! The host as an HTTP/JSON service: the router behind `cjm-ctl serve` (feature `server`).
//!
//! Everything is under `/v1`, JSON in and out, and documented by the OpenAPI document the
//! routes themselves generate (`/v1/openapi.json`, utoipa). One file per resource:
//! - `capabilities`: list, info with the matcher's verdicts, lifecycle,
//!   config;
//! - `contract`: the worker contract per instance (`/execute`, `/task`,
//!   `/execute_stream`, ...), the same bodies, statuses and bytes as a cjm-substrate worker, so
//!   a client cannot tell a wasm capability from a native one; calls go through the queue
//!   unless `?direct=true`;
//! - `jobs` and `compositions`: submit, get, wait, cancel,
//!   reorder, list;
//! - `events`: Server-Sent Events from the journal (resumable with
//!   `Last-Event-ID`, the journal's `seq`) and log queries and follows;
//! - `system`: health, readiness, resources, queue stats and why jobs wait, `/metrics`,
//!   secrets;
//! - `dashboard`: the web page at `/`, on this API only;
//! - [`mcp`]: every capability as an MCP tool at `/mcp` (and over stdio for `cjm-ctl mcp`).
//!
//! Security: `auth` refuses requests a browser sends from another origin (so no web page
//! can drive the host through the user's browser) and checks a bearer token (constant-time)
//! when one is configured — `cjm-ctl serve` requires one on any address but loopback; request bodies are
//! bounded ([`ServerConfig::max_body_bytes`]) and so is JSON nesting
//! ([`crate::bounds::MAX_JSON_DEPTH`]); no CORS headers are sent; no secret value is ever in
//! an answer; a 5xx answer never carries internals (they go to the log).
//! [`discovery`] writes the file that tells clients where the service is.

mod auth;
mod capabilities;
mod compositions;
mod contract;
mod dashboard;
pub mod discovery;
mod error;
mod events;
mod jobs;
pub mod mcp;
mod system;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::Host;

use auth::BearerScheme;
pub use auth::Token;
pub use error::ApiError;

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The bearer token every request must carry (`None`: no authentication, loopback only).
    pub token: Option<Token>,
    /// The largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// The longest a `wait` long poll may be asked to wait.
    pub max_wait: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            max_body_bytes: 16 * 1024 * 1024,
            max_wait: std::time::Duration::from_secs(300),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) host: Host,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) started: Instant,
    pub(crate) openapi: Arc<OnceLock<String>>,
    /// Set when the service stops: event streams end.
    pub(crate) stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// The journal read forward for every event stream (started by the first).
    pub(crate) tail: Arc<OnceLock<events::JournalTail>>,
}

/// The OpenAPI document's frame; the paths come from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "cjm host API",
        description = "Capabilities (wasm components and native workers) behind one HTTP/JSON contract, one queue and one journal."
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags(
        (name = "capabilities", description = "Installed capabilities and loaded instances"),
        (name = "contract", description = "The worker contract, per instance"),
        (name = "jobs", description = "The job queue"),
        (name = "compositions", description = "DAGs of jobs"),
        (name = "events", description = "Journal events and logs, live"),
        (name = "host", description = "Health, resources, metrics, secrets"),
    )
)]
struct ApiDoc;

/// The routes and their OpenAPI document.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(capabilities::routes())
        .merge(contract::routes())
        .merge(jobs::routes())
        .merge(compositions::routes())
        .merge(events::routes())
        .merge(system::routes())
}

/// The OpenAPI document of every route, as JSON.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// Runs a request in its `http.request` span (a child of the caller's `traceparent` header);
/// when no trace is exported the span is disabled and this costs nothing.
async fn traced(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: "cjm::trace",
        "http.request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if !crate::trace::is_traced(&span) {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |m| m.as_str().to_owned(),
        );
    span.record("otel.name", format!("{} {route}", request.method()));
    span.record("http.route", route.as_str());
    let parent = request
        .headers()
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    crate::trace::set_parent(&span, parent);
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        crate::trace::fail(&span, response.status().as_str());
    }
    response
}

/// The service over one host: its router, and the signal that ends its event streams.
#[derive(Clone)]
pub struct Server {
    router: Router,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// The service over `host`.
    pub fn new(host: Host, config: ServerConfig) -> Self {
        let (router, doc) = routes().split_for_parts();
        let openapi = Arc::new(OnceLock::new());
        let _ = openapi.set(doc.to_json().unwrap_or_else(|_| "{}".to_owned()));
        let stop = Arc::new(tokio::sync::watch::Sender::new(false));
        let max_body = config.max_body_bytes;
        let mcp = mcp::http_service(host.clone(), config.token.is_some(), max_body);
        let state = AppState {
            host,
            config: Arc::new(config),
            started: Instant::now(),
            openapi,
            stop: Arc::clone(&stop),
            tail: Arc::new(OnceLock::new()),
        };
        // The dashboard's assets are public (the page asks for the token); the API is not.
        let router = router
            .route_service("/mcp", mcp)
            .fallback(error::not_found)
            .method_not_allowed_fallback(error::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_token,
            ))
            .merge(dashboard::routes())
            .layer(axum::middleware::from_fn(auth::same_origin))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::loopback_host,
            ))
            .layer(DefaultBodyLimit::max(max_body))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                error::body_limit,
            ))
            .layer(axum::middleware::from_fn(traced))
            .with_state(state);
        Server { router, stop }
    }

    /// The router (for `oneshot` tests and embedding in a larger app).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Ends every open event stream (the service is going away).
    pub fn stop_streams(&self) {
        let _ = self.stop.send(true);
    }

    /// Serves on `listener` until `shutdown` resolves, then ends the event streams and lets
    /// requests in flight finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt as _;
        let stop = Arc::clone(&self.stop);
        // Answers are small and go out at once: no Nagle delay waiting for the client's ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop.send(true);
            })
            .await
    }
}
