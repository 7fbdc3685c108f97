//! The shipped dashboard's queries, and a real Prometheus on loopback that scrapes agents
//! with the shipped rules, for tests that evaluate both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::netns::local_http_get;
use super::process::{wait_until, Process};

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// Every panel of the dashboard with a query, rows' nested panels included: its title and
/// its queries with Grafana's variables filled in (`$node` matches every node, the rate
/// interval is 1m).
pub fn dashboard_panels() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("manifests/grafana/efaprobe-dashboard.json"))
        .expect("dashboard JSON");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard parses");
    fn walk(list: &serde_json::Value, out: &mut Vec<(String, Vec<String>)>) {
        for p in list.as_array().into_iter().flatten() {
            let exprs: Vec<String> = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str())
                .filter(|e| !e.trim().is_empty())
                .map(fill_variables)
                .collect();
            if !exprs.is_empty() {
                out.push((p["title"].as_str().unwrap_or("?").to_owned(), exprs));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&json["panels"], &mut out);
    out
}

/// Every distinct query of the dashboard, variables filled in.
pub fn dashboard_queries() -> Vec<String> {
    let mut all: Vec<String> = dashboard_panels().into_iter().flat_map(|p| p.1).collect();
    all.sort();
    all.dedup();
    all
}

fn fill_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${node:regex}", ".*")
        .replace("${node}", ".*")
        .replace("$node", ".*")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An alert of `/api/v1/alerts`: name, labels without `severity`, and state.
pub type Alert = (String, BTreeMap<String, String>, String);

/// The pending and firing alerts of a `/api/v1/alerts` answer.
pub fn alerts_of(answer: &serde_json::Value) -> Vec<Alert> {
    let Some(list) = answer["data"]["alerts"].as_array() else {
        return vec![];
    };
    list.iter()
        .map(|a| {
            let mut labels: BTreeMap<String, String> =
                serde_json::from_value(a["labels"].clone()).unwrap_or_default();
            let name = labels.remove("alertname").unwrap_or_default();
            labels.remove("severity");
            (name, labels, a["state"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// Prometheus (Debian's) on `127.0.0.1:port`, scraping each `(node, address)` as job
/// `efaprobe` with label `node` every second and evaluating the shipped rules every second.
pub struct LocalPrometheus {
    address: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl LocalPrometheus {
    pub fn start(port: u16, agents: &[(&str, String)]) -> LocalPrometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("manifests/prometheus/efaprobe-rules.yml");
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: efaprobe\n    static_configs:\n"
        );
        for (node, address) in agents {
            config +=
                &format!("      - targets: [{address:?}]\n        labels: {{node: {node:?}}}\n");
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let address = format!("127.0.0.1:{port}");
        let process = Process::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}")),
        );
        wait_until("prometheus ready", Duration::from_secs(60), || {
            local_http_get(&address, "/-/ready")
                .map(|_| ())
                .ok_or_else(|| "not ready".to_owned())
        });
        LocalPrometheus {
            address,
            _process: process,
            _dir: dir,
        }
    }

    /// An instant query's result list, or why there is none (Prometheus unreachable, or the
    /// query rejected: its error).
    pub fn query(&self, query: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(query));
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.address))
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{query}: no answer from Prometheus ({e})"))?;
        if answer["status"] != "success" {
            return Err(format!("{query}: {answer}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub fn alerts(&self) -> Vec<Alert> {
        local_http_get(&self.address, "/api/v1/alerts")
            .and_then(|t| serde_json::from_str(&t).ok())
            .map(|v| alerts_of(&v))
            .unwrap_or_default()
    }
}
