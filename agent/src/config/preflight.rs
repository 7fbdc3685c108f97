//! `efaprobe preflight`'s flags, and what they become: the nodes to verify and the agent to
//! ask.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::values::{self, Blankable};
use super::{ConfigError, ConfigErrors};
use crate::monitor::verify::{is_node_name, MAX_NODE_NAME, MAX_VERIFY_NODES};

/// The agent's port, where `--agent` is not given.
const AGENT_PORT: u16 = super::DEFAULT_PORT;

/// A nodes file larger than this is not a hostfile.
const MAX_NODES_FILE: u64 = 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The nodes to verify, comma-separated (node names as the agents know them, or their
    /// addresses). Names of this node itself are skipped.
    #[arg(long, value_name = "NODE[,NODE...]", value_delimiter = ',',
          required_unless_present = "nodes_file", conflicts_with = "nodes_file",
          value_parser = values::list_item(node_name))]
    pub nodes: Vec<Blankable<String>>,
    /// A file naming the nodes, one per line: its first field, so an MPI hostfile
    /// (`gpu2 slots=8`) works. Blank lines and `#` comments are skipped.
    #[arg(long, value_name = "FILE")]
    pub nodes_file: Option<PathBuf>,
    /// The local agent, `http://HOST:PORT`. Default: `http://$HOST_IP:9476`, HOST_IP from
    /// the downward API (`status.hostIP`).
    #[arg(long, value_name = "URL", value_parser = agent_url)]
    pub agent: Option<AgentUrl>,
    /// This node's IP, where the agent listens (the downward API's `status.hostIP`).
    #[arg(long = "host-ip", env = "HOST_IP", hide = true, value_parser = values::blank_or_ip)]
    pub host_ip: Option<Blankable<IpAddr>>,
    /// How long to wait for the agent's answer (it probes within twice its probe timeout),
    /// 100ms to 10m.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = values::duration_within(Duration::from_millis(100), Duration::from_secs(600)))]
    pub timeout: Duration,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The agent to ask: `host:port`, as the URL named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUrl {
    pub authority: String,
}

impl std::fmt::Display for AgentUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// What a preflight asks, and whom.
#[derive(Debug, Clone, PartialEq)]
pub struct PreflightConfig {
    /// Each once, in the order given.
    pub nodes: Vec<String>,
    /// `None`: neither `--agent` nor HOST_IP says where the agent is.
    pub agent: Option<AgentUrl>,
    pub timeout: Duration,
    pub json: bool,
}

/// The preflight the flags ask for, or every bad setting (with those clap's parsers refused).
pub fn preflight_config(
    args: &Args,
    refused: ConfigErrors,
) -> Result<PreflightConfig, ConfigErrors> {
    let mut errors = refused;
    let mut nodes = values::items(&args.nodes);
    if let Some(path) = &args.nodes_file {
        match read_nodes_file(path).and_then(|text| parse_nodes_file(&text)) {
            Ok(listed) => nodes = listed,
            Err(why) => errors.push(ConfigError::of::<Args>("nodes-file", why)),
        }
    }
    let mut seen = std::collections::HashSet::new();
    nodes.retain(|n| seen.insert(n.clone()));
    let flag = if args.nodes_file.is_some() {
        "nodes-file"
    } else {
        "nodes"
    };
    if !errors.names(flag) {
        if nodes.is_empty() {
            errors.push(ConfigError::of::<Args>(flag, "names no node"));
        } else if nodes.len() > MAX_VERIFY_NODES {
            errors.push(ConfigError::of::<Args>(
                flag,
                format!(
                    "names {} nodes; one preflight verifies at most {MAX_VERIFY_NODES}",
                    nodes.len()
                ),
            ));
        }
    }
    let agent = args.agent.clone().or_else(|| {
        let ip = args.host_ip.as_ref().and_then(|b| b.get().copied())?;
        Some(AgentUrl {
            authority: std::net::SocketAddr::new(ip, AGENT_PORT).to_string(),
        })
    });
    errors.or_ok(PreflightConfig {
        nodes,
        agent,
        timeout: args.timeout,
        json: args.json,
    })
}

fn read_nodes_file(path: &Path) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    use std::io::Read;
    file.take(MAX_NODES_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_NODES_FILE {
        return Err(format!(
            "{} is larger than {MAX_NODES_FILE} bytes: not a hostfile",
            path.display()
        ));
    }
    Ok(text)
}

/// The nodes a hostfile names: each line's first field; blank lines and comments (`#` to
/// the end of the line) skipped.
pub fn parse_nodes_file(text: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let Some(node) = line.split_whitespace().next() else {
            continue;
        };
        node_name(node).map_err(|e| format!("line {}: {e}", number + 1))?;
        nodes.push(node.to_owned());
    }
    Ok(nodes)
}

fn node_name(text: &str) -> Result<String, String> {
    if is_node_name(text) {
        Ok(text.to_owned())
    } else {
        let shown: String = text.chars().take(80).collect();
        Err(format!(
            "{shown:?} is not a node name (1 to {MAX_NODE_NAME} characters, no spaces or \
             control characters)"
        ))
    }
}

/// `http://HOST:PORT` (a trailing `/` allowed); the port defaults to 80.
fn agent_url(text: &str) -> Result<AgentUrl, String> {
    let bad = |why: &str| format!("{text:?} is not http://HOST:PORT: {why}");
    let rest = text
        .trim()
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is served by the agent"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad("no path, query or user part"));
    }
    let uri: hyper::Uri = text
        .trim()
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(bad("port 0"));
    }
    let host = if host.starts_with('[') || !host.contains(':') {
        host.to_owned()
    } else {
        format!("[{host}]")
    };
    Ok(AgentUrl {
        authority: format!("{host}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_command_line;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<PreflightConfig, ConfigErrors> {
        let mut full = vec!["efaprobe"];
        full.extend_from_slice(args);
        let parsed = parse_command_line::<Cli, _>(full.into_iter().map(Into::into)).expect("clap");
        // A bad value of the one node flag leaves the command line without it: as in
        // `cli::main`, the errors are all there is.
        match parsed.parsed {
            Some(cli) => preflight_config(&cli.args, parsed.errors),
            None => Err(parsed.errors),
        }
    }

    #[test]
    fn an_mpi_hostfile_names_its_first_fields() {
        let text = "# the job's hosts\n\ngpu2 slots=8\n  gpu3\tslots=8 # rack 2\ngpu4#x\n   \n";
        assert_eq!(parse_nodes_file(text).unwrap(), ["gpu2", "gpu3", "gpu4"]);
        assert_eq!(
            parse_nodes_file("# only\n\n").unwrap(),
            Vec::<String>::new()
        );
        let bad = parse_nodes_file("gpu2\ngpu\u{7}3 slots=1\n").unwrap_err();
        assert!(bad.starts_with("line 2:"), "{bad}");
    }

    #[test]
    fn nodes_from_the_flag_or_the_file() {
        let c = parse(&[
            "--nodes",
            "gpu2,gpu3,,gpu2",
            "--agent",
            "http://127.0.0.1:9476",
        ])
        .unwrap();
        assert_eq!(c.nodes, ["gpu2", "gpu3"]);
        assert_eq!(c.agent.unwrap().to_string(), "http://127.0.0.1:9476");
        assert_eq!(c.timeout, Duration::from_secs(10));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hostfile");
        std::fs::write(&file, "gpu5 slots=8\ngpu6 slots=8\n").unwrap();
        let file = file.to_str().unwrap();
        let c = parse(&["--nodes-file", file, "--host-ip", "198.18.0.1", "--json"]).unwrap();
        assert_eq!(c.nodes, ["gpu5", "gpu6"]);
        assert_eq!(c.agent.unwrap().to_string(), "http://198.18.0.1:9476");
        assert!(c.json);

        // Neither --agent nor HOST_IP: the command says so (exit 2), not a bad setting.
        let c = parse(&["--nodes", "gpu2", "--host-ip", ""]).unwrap();
        assert_eq!(c.agent, None);
    }

    #[test]
    fn every_bad_setting_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        let errors = parse(&[
            "--nodes-file",
            empty.to_str().unwrap(),
            "--agent",
            "https://x:1",
            "--timeout",
            "1h",
            "--host-ip",
            "nope",
        ])
        .unwrap_err();
        let flags: Vec<&str> = errors.0.iter().map(|e| e.flag).collect();
        for flag in ["nodes-file", "agent", "timeout", "host-ip"] {
            assert!(flags.contains(&flag), "{flag}: {errors}");
        }
        let text = errors.to_string();
        assert!(
            text.contains("names no node") && text.contains("HOST_IP"),
            "{text}"
        );

        let missing = dir.path().join("missing");
        let errors = parse(&["--nodes-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(errors.to_string().contains("cannot read"), "{errors}");

        let many: Vec<String> = (0..=MAX_VERIFY_NODES).map(|i| format!("n{i}")).collect();
        let errors = parse(&["--nodes", &many.join(",")]).unwrap_err();
        assert!(errors.to_string().contains("at most 256"), "{errors}");

        let errors = parse(&["--nodes", "a b"]).unwrap_err();
        assert!(errors.to_string().contains("not a node name"), "{errors}");
    }

    #[test]
    fn agent_urls() {
        let ok = |t: &str| agent_url(t).unwrap().authority;
        assert_eq!(ok("http://127.0.0.1:9476"), "127.0.0.1:9476");
        assert_eq!(ok("http://gpu1:9476/"), "gpu1:9476");
        assert_eq!(ok("http://gpu1"), "gpu1:80");
        assert_eq!(ok("http://[fd00::1]:9476"), "[fd00::1]:9476");
        for bad in [
            "127.0.0.1:9476",
            "https://a:1",
            "http://a:1/v1",
            "http://:1",
            "http://a:0",
        ] {
            assert!(agent_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_of_the_node_flags_is_needed_and_not_both() {
        assert!(Cli::try_parse_from(["efaprobe"]).is_err());
        assert!(Cli::try_parse_from(["efaprobe", "--nodes", "a", "--nodes-file", "f"]).is_err());
    }
}
