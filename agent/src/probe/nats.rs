//! The NATS client handshake, as far as needed to know the server works.
//!
//! A NATS server greets every client with `INFO {json}\r\n`; the client answers `CONNECT`
//! and `PING`, and a healthy server says `PONG`. Getting the PONG proves the server accepts
//! clients, not merely that the port is open, and the INFO says whether JetStream is on:
//! "JetStream not available" is one of the failures this agent exists to explain.
//!
//! Everything read is bounded: a line longer than [`MAX_LINE_BYTES`] is `protocol`, so a
//! hostile or confused server cannot make the agent buffer without limit.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::reason::{FailureReason, ProbeFailure};

/// Longest protocol line accepted. Real INFO lines are a few hundred bytes, up to a few
/// kilobytes with many `connect_urls` in a large cluster.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Lines tolerated between our PING and the PONG (`+OK`, `INFO` updates, server `PING`s).
const MAX_LINES_BEFORE_PONG: usize = 32;

/// Longest server-supplied text kept in a report (ids, versions, quoted lines).
const MAX_REPORTED_TEXT: usize = 120;

/// What we send: no echo of `+OK`, and a name that shows up in the server's `connz`.
const CONNECT_AND_PING: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"efaprobe\"}\r\nPING\r\n";

/// What the server said about itself in its INFO line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatsServerInfo {
    pub server_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_name: String,
    pub version: String,
    /// True when the server runs with JetStream (`-js`): streams and KV are usable.
    pub jetstream: bool,
}

/// The subset of the INFO JSON we read; unknown fields are ignored.
#[derive(Deserialize)]
struct InfoLine {
    #[serde(default)]
    server_id: String,
    #[serde(default)]
    server_name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    jetstream: bool,
    #[serde(default)]
    tls_required: bool,
}

/// Runs the handshake on a connected stream, giving up at `deadline`.
pub async fn nats_handshake(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<NatsServerInfo, ProbeFailure> {
    let (read_half, mut write_half) = stream.split();
    let mut reader = BufReader::new(read_half);

    let first = read_line(&mut reader, deadline, "the server's INFO line").await?;
    let info = parse_info(&first)?;
    if info.tls_required {
        return Err(ProbeFailure::new(
            FailureReason::Protocol,
            "the NATS server requires TLS, which this check does not speak \
             (the port answers; use the tcp check for it)",
        ));
    }

    match tokio::time::timeout_at(deadline, write_half.write_all(CONNECT_AND_PING)).await {
        Err(_elapsed) => {
            return Err(ProbeFailure::new(
                FailureReason::Timeout,
                "the server stopped accepting data before CONNECT was sent",
            ))
        }
        Ok(Err(e)) => return Err(ProbeFailure::from_io("send CONNECT and PING", &e)),
        Ok(Ok(())) => {}
    }

    for _ in 0..MAX_LINES_BEFORE_PONG {
        let line = read_line(&mut reader, deadline, "the PONG").await?;
        match NatsLine::classify(&line) {
            NatsLine::Pong => {
                return Ok(NatsServerInfo {
                    server_id: bounded(&info.server_id),
                    server_name: bounded(&info.server_name),
                    version: bounded(&info.version),
                    jetstream: info.jetstream,
                })
            }
            // Acknowledgements, cluster topology updates and keepalives can come first.
            NatsLine::Ok | NatsLine::Info | NatsLine::Ping => continue,
            NatsLine::Err => {
                return Err(ProbeFailure::new(
                    FailureReason::Protocol,
                    format!("the server refused the client: {}", bounded(&line)),
                ))
            }
            NatsLine::Other => {
                return Err(ProbeFailure::new(
                    FailureReason::Protocol,
                    format!("expected PONG, got {:?}", bounded(&line)),
                ))
            }
        }
    }
    Err(ProbeFailure::new(
        FailureReason::Protocol,
        format!("no PONG among the first {MAX_LINES_BEFORE_PONG} lines after PING"),
    ))
}

/// The protocol operation a server line starts with (operations are case-insensitive).
#[derive(Debug, PartialEq, Eq)]
enum NatsLine {
    Info,
    Ok,
    Err,
    Ping,
    Pong,
    Other,
}

impl NatsLine {
    fn classify(line: &str) -> NatsLine {
        let op = line.split([' ', '\t']).next().unwrap_or("");
        if op.eq_ignore_ascii_case("INFO") {
            NatsLine::Info
        } else if op.eq_ignore_ascii_case("+OK") {
            NatsLine::Ok
        } else if op.eq_ignore_ascii_case("-ERR") {
            NatsLine::Err
        } else if op.eq_ignore_ascii_case("PING") {
            NatsLine::Ping
        } else if op.eq_ignore_ascii_case("PONG") {
            NatsLine::Pong
        } else {
            NatsLine::Other
        }
    }
}

fn parse_info(line: &str) -> Result<InfoLine, ProbeFailure> {
    let not_nats = || {
        ProbeFailure::new(
            FailureReason::Protocol,
            format!("expected INFO from a NATS server, got {:?}", bounded(line)),
        )
    };
    let (op, json) = line.split_once([' ', '\t']).ok_or_else(not_nats)?;
    if NatsLine::classify(op) != NatsLine::Info {
        return Err(not_nats());
    }
    serde_json::from_str(json.trim()).map_err(|e| {
        ProbeFailure::new(
            FailureReason::Protocol,
            format!("the INFO line is not valid JSON: {e}"),
        )
    })
}

/// Reads one `\n`-terminated line (without `\r\n`), refusing lines over [`MAX_LINE_BYTES`].
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    deadline: Instant,
    expecting: &str,
) -> Result<String, ProbeFailure> {
    let mut line = Vec::new();
    loop {
        let buffered = match tokio::time::timeout_at(deadline, reader.fill_buf()).await {
            Err(_elapsed) => {
                return Err(ProbeFailure::new(
                    FailureReason::Timeout,
                    format!("connected, but timed out waiting for {expecting}"),
                ))
            }
            Ok(Err(e)) => return Err(ProbeFailure::from_io(&format!("read {expecting}"), &e)),
            Ok(Ok(buffered)) => buffered,
        };
        if buffered.is_empty() {
            return Err(ProbeFailure::new(
                FailureReason::Protocol,
                format!("the server closed the connection before sending {expecting}"),
            ));
        }
        let (take, done) = match buffered.iter().position(|&b| b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (buffered.len(), false),
        };
        // The limit is on the content; the `\r\n` terminator comes on top.
        if line.len() + take > MAX_LINE_BYTES + 2 {
            return Err(ProbeFailure::new(
                FailureReason::Protocol,
                format!("a line longer than {MAX_LINE_BYTES} bytes while waiting for {expecting}"),
            ));
        }
        line.extend_from_slice(&buffered[..take]);
        reader.consume(take);
        if done {
            break;
        }
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Server-supplied text cut to a length fit for a report, its control characters replaced.
fn bounded(text: &str) -> String {
    let text = crate::untrusted_text::printable(text);
    match text.char_indices().nth(MAX_REPORTED_TEXT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn info_line_is_parsed() {
        let info = parse_info(
            r#"INFO {"server_id":"NABC","server_name":"n1","version":"2.9.10","jetstream":true,"max_payload":1048576}"#,
        )
        .unwrap();
        assert_eq!(info.server_id, "NABC");
        assert_eq!(info.version, "2.9.10");
        assert!(info.jetstream);
        assert!(!info.tls_required);

        let info = parse_info(r#"info	{"server_id":"X"}"#).unwrap();
        assert!(
            !info.jetstream,
            "a missing jetstream field means no JetStream"
        );
    }

    #[test]
    fn non_nats_greetings_are_protocol() {
        for line in [
            "HTTP/1.1 200 OK",
            "SSH-2.0-OpenSSH_9.2",
            "INFO",
            "INFO not-json",
            "INFORMATION {}",
            "",
        ] {
            let failure = parse_info(line).err().unwrap_or_else(|| panic!("{line:?}"));
            assert_eq!(failure.reason, FailureReason::Protocol, "{line:?}");
        }
    }

    #[test]
    fn server_lines_are_classified() {
        assert_eq!(NatsLine::classify("PONG"), NatsLine::Pong);
        assert_eq!(NatsLine::classify("pong"), NatsLine::Pong);
        assert_eq!(NatsLine::classify("+OK"), NatsLine::Ok);
        assert_eq!(
            NatsLine::classify("-ERR 'Authorization Violation'"),
            NatsLine::Err
        );
        assert_eq!(NatsLine::classify("INFO {}"), NatsLine::Info);
        assert_eq!(NatsLine::classify("PING"), NatsLine::Ping);
        assert_eq!(NatsLine::classify("PONGX"), NatsLine::Other);
    }

    #[tokio::test]
    async fn lines_are_read_across_chunks_and_trimmed() {
        let data: &[u8] = b"INFO {}\r\nPO";
        let mut reader = BufReader::with_capacity(3, data.chain(&b"NG\r\n"[..]));
        assert_eq!(
            read_line(&mut reader, deadline(), "x").await.unwrap(),
            "INFO {}"
        );
        assert_eq!(
            read_line(&mut reader, deadline(), "x").await.unwrap(),
            "PONG"
        );
        let eof = read_line(&mut reader, deadline(), "x").await.unwrap_err();
        assert_eq!(eof.reason, FailureReason::Protocol);
    }

    #[tokio::test]
    async fn a_line_at_the_limit_is_read_and_one_past_it_is_refused() {
        let mut exact = vec![b'a'; MAX_LINE_BYTES];
        exact.extend_from_slice(b"\r\n");
        let line = read_line(&mut BufReader::new(&exact[..]), deadline(), "x").await;
        assert_eq!(line.unwrap().len(), MAX_LINE_BYTES);

        let endless = vec![b'a'; 4 * MAX_LINE_BYTES];
        let failure = read_line(&mut BufReader::new(&endless[..]), deadline(), "INFO")
            .await
            .unwrap_err();
        assert_eq!(failure.reason, FailureReason::Protocol);
        assert!(failure.message.contains("longer than"), "{failure}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_in_words() {
        // A server that accepts and never speaks.
        let (_server, client) = tokio::io::duplex(64);
        let deadline = Instant::now() + Duration::from_millis(50);
        let failure = read_line(
            &mut BufReader::new(client),
            deadline,
            "the server's INFO line",
        )
        .await
        .unwrap_err();
        assert_eq!(failure.reason, FailureReason::Timeout);
        assert_eq!(
            failure.message,
            "connected, but timed out waiting for the server's INFO line"
        );
    }

    #[test]
    fn server_text_in_a_report_is_printable() {
        assert_eq!(bounded("n1\u{1b}[2J\0"), "n1\u{FFFD}[2J\u{FFFD}");
        let info = parse_info("INFO {\"server_id\":\"N\\u0000\"}").unwrap();
        assert_eq!(bounded(&info.server_id), "N\u{FFFD}");
    }

    #[test]
    fn reported_text_is_bounded() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(1000);
        assert_eq!(bounded(&long).chars().count(), MAX_REPORTED_TEXT + 3);
    }
}
