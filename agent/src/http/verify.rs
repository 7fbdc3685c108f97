//! `POST /v1/verify`: probe the named peers now (see [`crate::monitor::verify`]).
//!
//! The body is `{"nodes": ["gpu2", "gpu3"]}`, at most [`MAX_VERIFY_BODY`] bytes and
//! [`MAX_VERIFY_NODES`] names. Verifies are rate-limited per agent by a token bucket (a burst
//! of [`VERIFY_BURST`], then [`VERIFY_PER_SECOND`] a second): beyond it, 429 with
//! `Retry-After`. A verify costs every named peer a hello and a ping, so a client that loops
//! on it must not turn the agent into a load generator, nor slow its schedule.
//!
//! | status | when |
//! |---|---|
//! | 200 | the [`VerifyAnswer`]: each known node's paths, the unknown names |
//! | 400 | not JSON of that shape, no names, too many, or a name that cannot be a node's |
//! | 413 | the body is over [`MAX_VERIFY_BODY`] |
//! | 429 | over the rate limit, or too many verifies running and waiting (`Retry-After` says when to try) |
//! | 503 | the monitor is not answering verifies (stopping) |
//!
//! Each request is counted by its result in `efa_verify_requests_total{result}`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::RETRY_AFTER;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::verify::VerifyResult;
use crate::metrics::Metrics;
pub use crate::monitor::verify::{
    is_node_name, VerifyAnswer, VerifyRequest, MAX_NODE_NAME, MAX_VERIFY_NODES,
};
use crate::monitor::verify::{VERIFIES_AT_ONCE, VERIFY_QUEUE};

/// The largest body accepted: [`MAX_VERIFY_NODES`] names of a DNS name's length, and room.
pub const MAX_VERIFY_BODY: usize = 80 * 1024;

/// Verifies accepted at once after a quiet spell.
pub const VERIFY_BURST: f64 = 5.0;

/// Verifies accepted per second, sustained.
pub const VERIFY_PER_SECOND: f64 = 2.0;

/// A token bucket: `capacity` tokens, refilled at `per_second`; each verify takes one.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(capacity: f64, per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            per_second,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

/// What the verify route needs: the way to the monitor's verify task and the rate limit.
#[derive(Clone)]
pub struct VerifyGate {
    requests: mpsc::Sender<VerifyRequest>,
    bucket: Arc<Mutex<TokenBucket>>,
    /// Counts each request by result (`efa_verify_requests_total`).
    metrics: Arc<Metrics>,
    /// How long the handler waits for the monitor's answer (a verify takes at most twice the
    /// probe timeout, once those ahead of it are done).
    answer_within: Duration,
}

impl VerifyGate {
    /// Verifies go to `requests`; `probe_timeout` is the agent's.
    pub fn new(
        requests: mpsc::Sender<VerifyRequest>,
        probe_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> VerifyGate {
        VerifyGate::with_limit(
            requests,
            probe_timeout,
            metrics,
            (VERIFY_BURST, VERIFY_PER_SECOND),
        )
    }

    /// [`VerifyGate::new`] with another rate limit.
    pub fn with_limit(
        requests: mpsc::Sender<VerifyRequest>,
        probe_timeout: Duration,
        metrics: Arc<Metrics>,
        (burst, per_second): (f64, f64),
    ) -> VerifyGate {
        VerifyGate {
            requests,
            metrics,
            bucket: Arc::new(Mutex::new(TokenBucket::new(
                burst,
                per_second,
                Instant::now(),
            ))),
            // Its own verify's twice the probe timeout, after those queued ahead of it.
            answer_within: probe_timeout * 2 * (1 + VERIFY_QUEUE.div_ceil(VERIFIES_AT_ONCE) as u32)
                + Duration::from_secs(1),
        }
    }
}

/// The verify route, with its own state and body limit.
pub fn routes(gate: VerifyGate) -> Router {
    Router::new()
        .route(
            "/v1/verify",
            post(verify).layer(DefaultBodyLimit::max(MAX_VERIFY_BODY)),
        )
        .with_state(gate)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    nodes: Vec<String>,
}

async fn verify(
    State(gate): State<VerifyGate>,
    body: Result<Json<VerifyBody>, JsonRejection>,
) -> Response {
    let (result, response) = answer(&gate, body).await;
    gate.metrics.verify_requests().record(result);
    response
}

async fn answer(
    gate: &VerifyGate,
    body: Result<Json<VerifyBody>, JsonRejection>,
) -> (VerifyResult, Response) {
    // The limit comes first: a flood of bad bodies costs no more than one of good ones.
    let taken = gate
        .bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(Instant::now());
    if let Err(wait) = taken {
        let response = too_many(wait, "over this agent's verify rate limit");
        return (VerifyResult::RateLimited, response);
    }
    let nodes = match body {
        Ok(Json(body)) => match checked_nodes(body.nodes) {
            Ok(nodes) => nodes,
            Err(why) => {
                let response = (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
                return (VerifyResult::BadRequest, response);
            }
        },
        Err(rejection) => {
            let status = rejection.status();
            let text = format!(
                "expected a JSON body {{\"nodes\": [\"NODE\", ...]}}: {}\n",
                rejection.body_text()
            );
            return (VerifyResult::BadRequest, (status, text).into_response());
        }
    };
    let (reply, answer) = oneshot::channel();
    match gate.requests.try_send(VerifyRequest { nodes, reply }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            let response = too_many(Duration::from_secs(1), "too many verifies waiting");
            return (VerifyResult::Busy, response);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return (VerifyResult::Unavailable, not_answering())
        }
    }
    match tokio::time::timeout(gate.answer_within, answer).await {
        Ok(Ok(answer)) => (VerifyResult::Answered, Json(answer).into_response()),
        Ok(Err(_)) | Err(_) => (VerifyResult::Unavailable, not_answering()),
    }
}

/// The names, each once in the order given, or why they cannot be verified.
fn checked_nodes(nodes: Vec<String>) -> Result<Vec<String>, String> {
    if nodes.is_empty() {
        return Err("\"nodes\" names no node".into());
    }
    if nodes.len() > MAX_VERIFY_NODES {
        return Err(format!(
            "\"nodes\" names {} nodes; at most {MAX_VERIFY_NODES} per verify",
            nodes.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::with_capacity(nodes.len());
    for node in nodes {
        if !is_node_name(&node) {
            let shown: String = node.chars().take(80).collect();
            return Err(format!(
                "{shown:?} is not a node name (1 to {MAX_NODE_NAME} characters, no spaces or \
                 control characters)"
            ));
        }
        if seen.insert(node.clone()) {
            unique.push(node);
        }
    }
    Ok(unique)
}

fn too_many(wait: Duration, why: &str) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(RETRY_AFTER, seconds.to_string())],
        format!("{why}: retry in {seconds}s\n"),
    )
        .into_response()
}

fn not_answering() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the monitor is not answering verifies (the agent is stopping)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests;
