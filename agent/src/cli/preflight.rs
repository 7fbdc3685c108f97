//! `efaprobe preflight`: before a job starts (an init container), ask the local agent to
//! verify the job's nodes now, both paths, so that a job fails in seconds naming the cause
//! instead of hanging in NCCL.
//!
//! Exit codes: 0 every node answered on every path; 1 some did not (a table of the failing
//! nodes, paths and reasons, or JSON with `--json`); 2 it could not ask (no agent address,
//! the agent unreachable, a bad answer, or node names the agent does not know); 64 bad
//! settings.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::preflight::{preflight_config, AgentUrl};
pub use crate::config::preflight::{Args, PreflightConfig};
use crate::config::ConfigErrors;
use crate::monitor::verify::{NodeVerified, VerifyAnswer};
use crate::probe::http::http_post_json;
use crate::probe::tcp::connect_tcp;

/// Exit code: some node failed a path.
const EXIT_FAILED: u8 = 1;
/// Exit code: the preflight could not ask, or named nodes the agent does not know.
const EXIT_CANNOT_ASK: u8 = 2;

/// How long to wait before asking again an agent that is not listening or not ready yet.
const AGAIN: Duration = Duration::from_secs(1);

/// The largest answer read: 256 nodes' results with their error texts.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

pub fn run(args: Args, refused: ConfigErrors) -> ExitCode {
    let config = match preflight_config(&args, refused) {
        Ok(c) => c,
        Err(errors) => {
            errors.print("preflight");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let Some(agent) = config.agent.clone() else {
        let why = "no agent to ask: HOST_IP is not set (give the container env HOST_IP from \
                   the downward API, fieldRef status.hostIP) and --agent was not given";
        return finish(&config, None, Err(why.into()));
    };
    let runtime = match super::current_thread_runtime("preflight", ExitCode::from(EXIT_CANNOT_ASK))
    {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let answer = runtime.block_on(ask(&agent, &config.nodes, config.timeout));
    runtime.shutdown_timeout(Duration::from_millis(100));
    finish(&config, Some(&agent), answer)
}

/// Prints the outcome and returns its exit code.
fn finish(
    config: &PreflightConfig,
    agent: Option<&AgentUrl>,
    answer: Result<VerifyAnswer, String>,
) -> ExitCode {
    let judged = judge(&config.nodes, answer);
    let text = if config.json {
        let mut text = serde_json::to_string_pretty(&JsonReport {
            exit_code: judged.code,
            agent: agent.map(ToString::to_string),
            failing: judged.failing.iter().map(|n| n.node.as_str()).collect(),
            error: judged.error.as_deref(),
            answer: judged.answer.as_ref(),
        })
        .unwrap_or_default();
        text.push('\n');
        text
    } else {
        judged.text()
    };
    // JSON and good news on stdout; a failure's text on stderr, where a container's
    // termination message (FallbackToLogsOnError) and a person look.
    let mut out: Box<dyn Write> = if judged.code == 0 || config.json {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::stderr().lock())
    };
    // A closed stream must not turn into a panic; the exit code still tells.
    let _ = out.write_all(text.as_bytes());
    ExitCode::from(judged.code)
}

#[derive(Serialize)]
struct JsonReport<'a> {
    exit_code: u8,
    agent: Option<String>,
    /// The nodes that failed a path.
    failing: Vec<&'a str>,
    /// Why the preflight could not ask, or which names are unknown.
    error: Option<&'a str>,
    /// The agent's answer, as it gave it.
    answer: Option<&'a VerifyAnswer>,
}

/// POSTs the verify to the agent and reads its answer, within `timeout`. Asked again while
/// the time allows: when it does not listen yet, after a 429's Retry-After, and when an agent
/// not ready yet (its first round not done) does not know some of the names.
async fn ask(
    agent: &AgentUrl,
    nodes: &[String],
    timeout: Duration,
) -> Result<VerifyAnswer, String> {
    let deadline = Instant::now() + timeout;
    let body = serde_json::to_vec(&serde_json::json!({ "nodes": nodes }))
        .map_err(|e| format!("cannot encode the request: {e}"))?;
    loop {
        let addr = resolve(&agent.authority, deadline).await?;
        let conn = match connect_tcp(addr, deadline).await {
            Ok(conn) => conn,
            // An agent still starting (or not ready, behind the node-local Service) is not
            // listening yet: try again while the time allows.
            Err(e) if Instant::now() + AGAIN < deadline => {
                tracing::debug!(error = %e.message, "agent unreachable; trying again");
                tokio::time::sleep(AGAIN).await;
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "the agent at {agent} is unreachable: {}",
                    e.message
                ))
            }
        };
        let response = http_post_json(
            conn.stream,
            &agent.authority,
            "/v1/verify",
            body.clone(),
            MAX_ANSWER_BYTES,
            deadline,
        )
        .await
        .map_err(|e| format!("no answer from the agent at {agent}: {}", e.message))?;
        let text = String::from_utf8_lossy(&response.body);
        let excerpt: String = text.trim().chars().take(300).collect();
        match response.status.as_u16() {
            200 => {
                let answer: VerifyAnswer = serde_json::from_slice(&response.body).map_err(|e| {
                    format!("the agent at {agent} answered something that is not a verify: {e}")
                })?;
                // An agent still starting (an init container on a node that just came up)
                // may not know its peers yet: ask again while the time allows another verify.
                let another = AGAIN
                    + Duration::from_secs_f64(answer.probe_timeout_seconds.clamp(0.0, 600.0) * 2.0);
                if answer.ready || answer.unknown.is_empty() || Instant::now() + another >= deadline
                {
                    return Ok(answer);
                }
                tokio::time::sleep(AGAIN).await;
            }
            429 => {
                let wait = response
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs);
                if Instant::now() + wait >= deadline {
                    return Err(format!(
                        "the agent at {agent} is rate-limiting verifies and --timeout does not \
                         leave time to retry: {excerpt}"
                    ));
                }
                tokio::time::sleep(wait).await;
            }
            404 => {
                return Err(format!(
                    "the agent at {agent} does not serve POST /v1/verify (an older version?)"
                ))
            }
            status => {
                return Err(format!(
                    "the agent at {agent} refused the verify (HTTP {status}): {excerpt}"
                ))
            }
        }
    }
}

async fn resolve(authority: &str, deadline: Instant) -> Result<SocketAddr, String> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match tokio::time::timeout_at(deadline, tokio::net::lookup_host(authority.to_owned())).await {
        Err(_) => Err(format!("resolving the agent's {authority} timed out")),
        Ok(Err(e)) => Err(format!("resolving the agent's {authority}: {e}")),
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| format!("the agent's {authority} has no address")),
    }
}

/// What a preflight concludes.
#[derive(Debug)]
struct Judged {
    code: u8,
    /// Why it could not ask, or the names the agent does not know.
    error: Option<String>,
    failing: Vec<NodeVerified>,
    answer: Option<VerifyAnswer>,
}

/// Exit 0 when every asked node answered on every path; 1 when some failed; 2 when it could
/// not ask, when some are unknown to the agent, or when the answer leaves a node out.
fn judge(asked: &[String], answer: Result<VerifyAnswer, String>) -> Judged {
    let answer = match answer {
        Ok(a) => a,
        Err(why) => {
            return Judged {
                code: EXIT_CANNOT_ASK,
                error: Some(why),
                failing: vec![],
                answer: None,
            }
        }
    };
    let failing: Vec<NodeVerified> = answer.verified.iter().filter(|n| !n.ok).cloned().collect();
    let answered = |node: &String| {
        answer.verified.iter().any(|n| &n.node == node)
            || answer.unknown.contains(node)
            || answer.this_node.contains(node)
    };
    let left_out: Vec<&str> = asked
        .iter()
        .filter(|n| !answered(n))
        .map(String::as_str)
        .collect();
    let (code, error) = if !left_out.is_empty() {
        (
            EXIT_CANNOT_ASK,
            Some(format!(
                "bad answer: the agent said nothing of {}",
                left_out.join(", ")
            )),
        )
    } else if !answer.unknown.is_empty() {
        (
            EXIT_CANNOT_ASK,
            Some(format!(
                "the agent on {} does not know these nodes as peers: {}",
                answer.node,
                answer.unknown.join(", ")
            )),
        )
    } else if !failing.is_empty() {
        (EXIT_FAILED, None)
    } else {
        (0, None)
    };
    Judged {
        code,
        error,
        failing,
        answer: Some(answer),
    }
}

impl Judged {
    /// For a person: a line when all is well, else what failed, a row per failing path.
    fn text(&self) -> String {
        let mut out = String::new();
        if let Some(error) = &self.error {
            out.push_str(&format!("efaprobe preflight: {error}\n"));
        }
        let Some(answer) = &self.answer else {
            return out;
        };
        let checked = answer.verified.len();
        if self.code == 0 {
            out.push_str(&format!(
                "efaprobe preflight: {checked} nodes answer on every path from {} ({})\n",
                answer.node, answer.probed
            ));
            return out;
        }
        if self.failing.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "efaprobe preflight: {} of {checked} nodes fail from {}:\n",
            self.failing.len(),
            answer.node
        ));
        let mut rows = vec![[
            "NODE".to_owned(),
            "PATH".into(),
            "FAILURE".into(),
            "REASON".into(),
            "DETAIL".into(),
        ]];
        for node in &self.failing {
            let reason = node.reason.clone().unwrap_or_else(|| "-".into());
            for (path, result) in [("ip", &node.ip), ("fabric", &node.fabric)] {
                // A path that answers small probes can still fail larger ones (probe_size).
                if result.reachable == Some(true) && result.failure.is_none() {
                    continue;
                }
                let failure = result
                    .failure
                    .clone()
                    .unwrap_or_else(|| match result.reachable {
                        None => "not_probed".into(),
                        _ => "-".into(),
                    });
                let detail = result.error.clone().unwrap_or_default();
                rows.push([
                    node.node.clone(),
                    path.into(),
                    failure,
                    reason.clone(),
                    detail,
                ]);
            }
        }
        let widths: Vec<usize> = (0..4)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            for (i, width) in widths.iter().enumerate() {
                out.push_str(&format!("{:<width$}  ", row[i]));
            }
            out.push_str(row[4].trim());
            out.push('\n');
        }
        for node in &self.failing {
            out.push_str(&format!("{}: {}\n", node.node, node.summary));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::verify::PathResult;

    fn up() -> PathResult {
        PathResult {
            reachable: Some(true),
            rtt_seconds: Some(0.0002),
            failure: None,
            error: None,
        }
    }

    fn node(name: &str, fabric: PathResult, reason: Option<&str>) -> NodeVerified {
        NodeVerified {
            node: name.into(),
            address: format!("{name}:9476"),
            ok: fabric.reachable == Some(true),
            state: if reason.is_some() {
                "fabric_dropped"
            } else {
                "healthy"
            }
            .into(),
            reason: reason.map(Into::into),
            summary: "IP works but the fabric is dropped: different subnets".into(),
            ip: up(),
            fabric,
            rails: vec![],
        }
    }

    fn answer(verified: Vec<NodeVerified>, unknown: &[&str]) -> VerifyAnswer {
        VerifyAnswer {
            node: "gpu1".into(),
            ready: true,
            probe_timeout_seconds: 1.0,
            probed: "ip and fabric".into(),
            verified,
            unknown: unknown.iter().map(|s| s.to_string()).collect(),
            this_node: vec!["gpu1".into()],
        }
    }

    fn asked(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn dropped() -> PathResult {
        PathResult {
            reachable: Some(false),
            rtt_seconds: None,
            failure: Some("timeout".into()),
            error: Some("no answer within 1s".into()),
        }
    }

    #[test]
    fn all_answering_is_0() {
        let a = answer(vec![node("gpu2", up(), None)], &[]);
        let j = judge(&asked(&["gpu1", "gpu2"]), Ok(a));
        assert_eq!(j.code, 0);
        assert!(
            j.text().contains("1 nodes answer on every path"),
            "{}",
            j.text()
        );
    }

    #[test]
    fn a_failing_path_is_1_with_a_row_naming_node_path_and_reason() {
        let a = answer(
            vec![
                node("gpu2", up(), None),
                node("gpu3", dropped(), Some("cross_subnet")),
            ],
            &[],
        );
        let j = judge(&asked(&["gpu2", "gpu3"]), Ok(a));
        assert_eq!(j.code, 1);
        let text = j.text();
        let row = text
            .lines()
            .find(|l| l.starts_with("gpu3 "))
            .unwrap_or_else(|| panic!("{text}"));
        for word in ["fabric", "timeout", "cross_subnet", "no answer within 1s"] {
            assert!(row.contains(word), "{word}: {row}");
        }
        assert!(!text.lines().any(|l| l.starts_with("gpu2 ")), "{text}");
        assert!(!text
            .lines()
            .any(|l| l.starts_with("gpu3 ") && l.contains(" ip ")));
    }

    #[test]
    fn unknown_names_or_no_answer_are_2() {
        let a = answer(
            vec![node("gpu3", dropped(), Some("cross_subnet"))],
            &["gpu9"],
        );
        let j = judge(&asked(&["gpu3", "gpu9"]), Ok(a));
        assert_eq!(j.code, 2);
        assert!(j.text().contains("gpu9"), "{}", j.text());
        // The failing node is still shown.
        assert!(j.text().contains("cross_subnet"), "{}", j.text());

        let j = judge(
            &asked(&["gpu2"]),
            Err("the agent at http://x:1 is unreachable".into()),
        );
        assert_eq!(j.code, 2);
        assert!(j.text().contains("unreachable"));

        // An answer that leaves an asked node out is not trusted.
        let a = answer(vec![node("gpu2", up(), None)], &[]);
        let j = judge(&asked(&["gpu2", "gpu4"]), Ok(a));
        assert_eq!(j.code, 2);
        assert!(j.text().contains("bad answer") && j.text().contains("gpu4"));
    }

    /// A stand-in agent on loopback that answers each POST /v1/verify with the next of
    /// `answers` (status, Retry-After, body), and counts them.
    async fn scripted_agent(
        answers: Vec<(u16, Option<&'static str>, String)>,
    ) -> (AgentUrl, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = std::sync::Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let answers = std::sync::Arc::new(answers);
        let app = axum::Router::new().route(
            "/v1/verify",
            axum::routing::post(move || {
                let (answers, count) = (answers.clone(), count.clone());
                async move {
                    let i = count.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
                    let (status, retry, body) = answers[i].clone();
                    let mut response =
                        (StatusCode::from_u16(status).unwrap(), body).into_response();
                    if let Some(retry) = retry {
                        response
                            .headers_mut()
                            .insert("retry-after", retry.parse().unwrap());
                    }
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (AgentUrl { authority }, asked)
    }

    #[tokio::test]
    async fn a_starting_agent_and_a_rate_limit_are_asked_again() {
        let mut starting = answer(vec![], &["gpu2"]);
        starting.ready = false;
        let ready = answer(vec![node("gpu2", up(), None)], &[]);
        let (agent, asked) = scripted_agent(vec![
            (429, Some("1"), "over this agent's verify rate limit".into()),
            (200, None, serde_json::to_string(&starting).unwrap()),
            (200, None, serde_json::to_string(&ready).unwrap()),
        ])
        .await;
        let got = ask(&agent, &["gpu2".into()], Duration::from_secs(10)).await;
        assert_eq!(got, Ok(ready));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_agent_that_starts_listening_late_is_asked_once_it_does() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ready = answer(vec![node("gpu2", up(), None)], &[]);
        let body = serde_json::to_string(&ready).unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let app = axum::Router::new().route(
                "/v1/verify",
                axum::routing::post(move || {
                    let body = body.clone();
                    async move { body }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(listener, app).await
        });
        let agent = AgentUrl {
            authority: format!("127.0.0.1:{port}"),
        };
        let started = std::time::Instant::now();
        let got = ask(&agent, &["gpu2".into()], Duration::from_secs(5)).await;
        assert_eq!(got, Ok(ready));
        assert!(started.elapsed() >= Duration::from_millis(1200));

        // Nobody ever: unreachable, once the time is up.
        let nobody = AgentUrl {
            authority: "127.0.0.1:9".into(),
        };
        let started = std::time::Instant::now();
        let got = ask(&nobody, &["gpu2".into()], Duration::from_millis(1500)).await;
        assert!(got.unwrap_err().contains("unreachable"));
        assert!(started.elapsed() < Duration::from_millis(1700));
    }

    #[tokio::test]
    async fn what_cannot_be_asked_says_why() {
        let (agent, _) = scripted_agent(vec![(200, None, "{\"not\": \"a verify\"}".into())]).await;
        let got = ask(&agent, &["gpu2".into()], Duration::from_secs(2)).await;
        assert!(got.unwrap_err().contains("not a verify"));

        // A rate limit the timeout leaves no time to wait out.
        let (agent, _) = scripted_agent(vec![(429, Some("30"), "slow down".into())]).await;
        let got = ask(&agent, &["gpu2".into()], Duration::from_secs(2)).await;
        assert!(got.unwrap_err().contains("rate-limiting"));

        let (agent, _) = scripted_agent(vec![(400, None, "\"nodes\" names no node".into())]).await;
        let got = ask(&agent, &["gpu2".into()], Duration::from_secs(2)).await;
        let why = got.unwrap_err();
        assert!(
            why.contains("HTTP 400") && why.contains("names no node"),
            "{why}"
        );

        // A still-starting agent whose names stay unknown: its answer once time runs out.
        let mut starting = answer(vec![], &["gpu2"]);
        starting.ready = false;
        let (agent, asked) =
            scripted_agent(vec![(200, None, serde_json::to_string(&starting).unwrap())]).await;
        let got = ask(&agent, &["gpu2".into()], Duration::from_millis(2500)).await;
        assert_eq!(got.unwrap().unknown, ["gpu2"]);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
