//! One HTTP/1.1 request (a GET, mostly; a JSON POST for `efaprobe preflight`) over a stream that is already connected.
//!
//! Connecting is done separately (see [`super::tcp`]) so that the connect time and the
//! reason a connect failed stay visible; this module only speaks HTTP. It serves the
//! Prometheus and HTTP target checks and the agent's `GET /v1/hello` to its peers, so it
//! returns the status and body and leaves judging them to the caller.
//!
//! Everything is bounded: the response head by hyper's buffer limit, the body by the
//! caller's limit, and the whole exchange by the deadline. Dropping the returned future, or
//! returning, closes the connection; nothing is left running in the background.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::reason::{FailureReason, ProbeFailure};

/// Largest response head (status line and headers) accepted; hyper's minimum is 8 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A reasonable body limit for health endpoints and small JSON documents.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

const USER_AGENT_VALUE: &str = concat!("efaprobe/", env!("CARGO_PKG_VERSION"));

/// A complete HTTP response, body included.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `GET path` with `Host: authority` on `stream` and reads the whole response.
///
/// Fails with `protocol` when the answer is not HTTP/1.x or its body is larger than
/// `max_body_bytes`, with `timeout` when the response is not complete by `deadline`, and
/// with `reset` (or another OS reason) when the connection breaks. Any status is returned
/// as is: whether a 503 is a failure is for the caller to say.
pub async fn http_get(
    stream: TcpStream,
    authority: &str,
    path: &str,
    max_body_bytes: usize,
    deadline: Instant,
) -> Result<HttpResponse, ProbeFailure> {
    http_request(
        stream,
        Method::GET,
        authority,
        path,
        HeaderMap::new(),
        max_body_bytes,
        deadline,
    )
    .await
}

/// [`http_get`] for any method, with extra request headers and an empty request body:
/// instance metadata (IMDSv2) wants a `PUT` and token headers.
pub async fn http_request(
    stream: TcpStream,
    method: Method,
    authority: &str,
    path: &str,
    headers: HeaderMap,
    max_body_bytes: usize,
    deadline: Instant,
) -> Result<HttpResponse, ProbeFailure> {
    send(
        stream,
        method,
        authority,
        path,
        headers,
        Empty::<Bytes>::new(),
        max_body_bytes,
        deadline,
    )
    .await
}

/// `POST path` with a JSON body (`POST /v1/verify`, from `efaprobe preflight`), bounded as
/// [`http_get`] is.
pub async fn http_post_json(
    stream: TcpStream,
    authority: &str,
    path: &str,
    json: Vec<u8>,
    max_body_bytes: usize,
    deadline: Instant,
) -> Result<HttpResponse, ProbeFailure> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    send(
        stream,
        Method::POST,
        authority,
        path,
        headers,
        Full::new(Bytes::from(json)),
        max_body_bytes,
        deadline,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn send<B>(
    stream: TcpStream,
    method: Method,
    authority: &str,
    path: &str,
    headers: HeaderMap,
    body: B,
    max_body_bytes: usize,
    deadline: Instant,
) -> Result<HttpResponse, ProbeFailure>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let what = format!("{method} {path}");
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .body(body)
        .map_err(|e| {
            ProbeFailure::new(
                FailureReason::Protocol,
                format!("cannot build {what:?} for {authority:?}: {e}"),
            )
        })?;
    request.headers_mut().extend(headers);
    match tokio::time::timeout_at(deadline, exchange(stream, request, &what, max_body_bytes)).await
    {
        Ok(result) => result,
        Err(_elapsed) => Err(ProbeFailure::new(
            FailureReason::Timeout,
            format!("connected, but no complete answer to {what} before the deadline"),
        )),
    }
}

async fn exchange<B>(
    stream: TcpStream,
    request: Request<B>,
    what: &str,
    max_body_bytes: usize,
) -> Result<HttpResponse, ProbeFailure>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| classify(what, &e))?;

    let response = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| classify(what, &e))?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ProbeFailure::new(
                        FailureReason::Protocol,
                        format!("the body of {what} is larger than {max_body_bytes} bytes"),
                    )
                } else {
                    classify(what, e.as_ref())
                }
            })?
            .to_bytes();
        Ok(HttpResponse {
            status: head.status,
            headers: head.headers,
            body,
        })
    };

    // The connection future does the actual reading and writing; it runs here, beside the
    // request, rather than in a spawned task that could outlive the deadline.
    tokio::pin!(connection, response);
    tokio::select! {
        biased;
        result = &mut response => result,
        ended = &mut connection => match ended {
            // Closed after the response was read: the request side finishes from what it has.
            Ok(()) => response.await,
            Err(e) => Err(classify(what, &e)),
        },
    }
}

/// Maps an error from hyper (or the body) to a failure reason: OS errors keep their
/// meaning (a reset stays `reset`), everything else means the answer was not HTTP.
fn classify(context: &str, err: &(dyn StdError + 'static)) -> ProbeFailure {
    if let Some(io_err) = find_io_error(err) {
        return ProbeFailure::from_io(context, io_err);
    }
    let message = match err.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_incomplete_message() => {
            format!("{context}: the server closed the connection before a complete response")
        }
        Some(e) if e.is_parse_too_large() => {
            format!("{context}: response head larger than {MAX_HEAD_BYTES} bytes")
        }
        Some(e) if e.is_parse() || e.is_parse_status() => {
            format!("{context}: the answer is not HTTP/1.x ({e})")
        }
        _ => format!("{context}: {err}"),
    };
    ProbeFailure::new(FailureReason::Protocol, message)
}

fn find_io_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            return Some(io_err);
        }
        current = e.source();
    }
    None
}
