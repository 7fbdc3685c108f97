//! The agent's HTTP API: metrics for Prometheus, probes for the kubelet, JSON for tools and
//! peers, and a status page for a person.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the status page (HTML, no scripts, no external assets) |
//! | `GET /metrics` | OpenMetrics when asked for, else Prometheus text 0.0.4 (see [`crate::metrics::ExpositionFormat`]); scrapes close together share one encoding ([`ScrapeCache`]) |
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200 once the first full probe round has finished, else 503 |
//! | `GET /v1/hello` | this agent's [`Hello`] (peers fetch it as their IP probe) |
//! | `GET /v1/peers` | every [`crate::state::PeerStatus`] |
//! | `GET /v1/targets` | every [`crate::probe::TargetReport`] of the last round |
//! | `POST /v1/verify` | `{"nodes": [...]}`: those peers probed now, both paths (see [`verify`]); rate-limited |
//!
//! Handlers only read the shared snapshot, except the verify, which waits for the monitor's
//! verify task (at most twice the probe timeout; never for a round).

mod scrape_cache;
mod serve;
mod status_page;
pub mod verify;

use std::sync::{Arc, RwLock};

use axum::extract::{FromRef, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub use scrape_cache::{ScrapeCache, ScrapeError};
pub use serve::{serve, ServeLimits};
pub use status_page::{escape_html, render_status_page, StatusSnapshot};

use crate::hello::Hello;
use crate::metrics::{ExpositionFormat, Metrics};
use crate::state::{unix_now, AgentState};

/// What the handlers read. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct AppState {
    pub state: Arc<AgentState>,
    pub metrics: Arc<Metrics>,
    pub hello: Arc<RwLock<Hello>>,
}

/// What the router holds: the handlers' [`AppState`], and the `/metrics` encodings that
/// concurrent scrapes share.
#[derive(Clone)]
struct Served {
    app: AppState,
    scrapes: Arc<ScrapeCache>,
}

impl FromRef<Served> for AppState {
    fn from_ref(served: &Served) -> AppState {
        served.app.clone()
    }
}

/// The agent's routes; unknown paths answer 404.
pub fn router(app: AppState) -> Router {
    router_sharing(app, Arc::default())
}

/// [`router`], with the `/metrics` encodings shared through `scrapes` (which tests read).
pub fn router_sharing(app: AppState, scrapes: Arc<ScrapeCache>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/hello", get(hello))
        .route("/v1/peers", get(peers))
        .route("/v1/targets", get(targets))
        .fallback(not_found)
        .with_state(Served { app, scrapes })
}

/// [`router`] with `POST /v1/verify` answered through `gate`.
pub fn router_with_verify(app: AppState, gate: verify::VerifyGate) -> Router {
    router(app).merge(verify::routes(gate))
}

async fn metrics(State(served): State<Served>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = ExpositionFormat::negotiate(accept);
    match served.scrapes.body(&served.app.metrics, format).await {
        Ok(body) => (
            // The body depends on Accept: a cache must not hand one client's format to another.
            [(CONTENT_TYPE, format.content_type()), (VARY, "Accept")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Not ready until the first round: before it, every peer would read `unknown` and a
/// rollout would move on before the agent knows anything.
async fn readyz(State(app): State<AppState>) -> Response {
    if app.state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first probe round has not finished\n",
        )
            .into_response()
    }
}

async fn hello(State(app): State<AppState>) -> Json<Hello> {
    // A writer that panicked left a whole Hello behind; keep serving it.
    Json(app.hello.read().unwrap_or_else(|p| p.into_inner()).clone())
}

async fn peers(State(app): State<AppState>) -> Response {
    Json(app.state.peers()).into_response()
}

async fn targets(State(app): State<AppState>) -> Response {
    Json(app.state.targets()).into_response()
}

async fn status(State(app): State<AppState>) -> Response {
    let agent_version = app
        .hello
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .agent_version
        .clone();
    let snapshot = StatusSnapshot {
        node_name: app.state.node_name().to_owned(),
        agent_version,
        ready: app.state.is_ready(),
        fabric: app.state.fabric(),
        peers: app.state.peers(),
        targets: app.state.targets(),
        now_unix: unix_now(),
    };
    (
        [(CACHE_CONTROL, "no-store")],
        Html(render_status_page(&snapshot)),
    )
        .into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found; this agent serves /, /metrics, /healthz, /readyz, /v1/hello, /v1/peers, \
         /v1/targets, POST /v1/verify\n",
    )
}

#[cfg(test)]
mod tests;
