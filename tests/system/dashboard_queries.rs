//! The Grafana dashboard in manifests/grafana is well-formed for what depends on it: every
//! query is a `targets[].expr` that parses as PromQL once Grafana's variables are substituted
//! the way the lab test does (`$node` → `.*`, `$__rate_interval` → `1m`), uses no other
//! Grafana variable, reads the data source from `${datasource}`, and names only recording
//! rules that manifests/prometheus/efaprobe-rules.yml defines.
//!
//! Parsing needs no server: each expression becomes a recording rule in a throwaway rules
//! file, and `promtool check rules` parses every one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

fn dashboard() -> Value {
    let path = repo().join("manifests/grafana/efaprobe-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every string under an `expr` key, anywhere in the document, with where it was found.
fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, place: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let place = match map.get("title").and_then(Value::as_str) {
                    Some(title) => title.to_owned(),
                    None => place.to_owned(),
                };
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push((place.clone(), e.clone())),
                        _ => walk(v, &place, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, place, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    out
}

/// What the lab test does before running a query against Prometheus.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$node", ".*")
}

/// `$` followed by a name or `{`: a Grafana variable left unsubstituted. `$1` (a
/// label_replace group) is PromQL's own.
fn leftover_variables(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    for (i, _) in expr.match_indices('$') {
        let next = bytes.get(i + 1).copied().unwrap_or(b' ');
        if next.is_ascii_alphabetic() || next == b'_' || next == b'{' {
            let end = expr[i + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '{' || c == '}'))
                .map_or(expr.len(), |n| i + 1 + n);
            found.push(expr[i..end].to_owned());
        }
    }
    found
}

/// Names of recording rules (`level:metric:operation`, with colons) a query reads.
fn recorded_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[start..];
        let len = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        let word = &tail[..len];
        // Inside quotes it is a label value or regex, not a name: skip to the closing quote.
        let quoted = rest[..start].matches('"').count() % 2 == 1;
        if !quoted && word.contains(':') {
            names.insert(word.to_owned());
        }
        rest = &tail[len..];
    }
    names
}

#[test]
fn every_query_parses_with_promtool() {
    let d = dashboard();
    let exprs = exprs(&d);
    assert!(exprs.len() >= 10, "too few queries found: {exprs:?}");

    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for (i, (place, expr)) in exprs.iter().enumerate() {
        let query = substitute(expr);
        let left = leftover_variables(&query);
        if !left.is_empty() {
            problems.push(format!(
                "{place}: variables other than $node, $__rate_interval: {left:?} in {expr}"
            ));
        }
        rules.push(serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": query }));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // JSON is YAML, so the rules file needs no YAML writer.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    let doc = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus) must be installed: scripts/setup.sh");
    let index: Vec<String> = exprs
        .iter()
        .enumerate()
        .map(|(i, (place, e))| format!("dashboard:query_{i} ({place}): {e}"))
        .collect();
    assert!(
        out.status.success(),
        "{}{}\nqueries:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        index.join("\n")
    );
}

#[test]
fn recording_rules_used_by_the_dashboard_exist() {
    let rules =
        std::fs::read_to_string(repo().join("manifests/prometheus/efaprobe-rules.yml")).unwrap();
    let defined: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect();
    let used: BTreeSet<String> = exprs(&dashboard())
        .iter()
        .flat_map(|(_, e)| recorded_names(e))
        .collect();
    assert!(!used.is_empty());
    let missing: Vec<&String> = used.difference(&defined).collect();
    assert!(missing.is_empty(), "not recorded by the rules: {missing:?}");
}

#[test]
fn queries_use_the_datasource_variable_and_panels_have_queries() {
    let d = dashboard();
    for p in panels(&d) {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty()),
            "{title}: no targets"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for t in targets.into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: {t}"
            );
        }
    }
}

#[test]
fn variables_are_the_datasource_and_a_node_multi_select() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let node = var("node");
    assert_eq!(node["type"], "query");
    assert_eq!(node["multi"], true);
    assert_eq!(node["includeAll"], true);
    // All must be a regex that matches every node, like the lab test's substitution.
    assert_eq!(node["allValue"], ".*");
    assert_eq!(node["definition"], "label_values(efa_agent_ready, node)");
    assert_eq!(node["datasource"]["uid"], "${datasource}");
    assert!(
        d["description"]
            .as_str()
            .is_some_and(|s| s.contains("$__rate_interval")),
        "the dashboard's description says how its queries are tested"
    );
}

#[test]
fn the_checks_themselves_catch_mistakes() {
    assert_eq!(leftover_variables("rate(x[$__interval])"), ["$__interval"]);
    assert_eq!(leftover_variables("x{a=\"${cluster}\"}"), ["${cluster}"]);
    assert!(
        leftover_variables("label_replace(x, \"peer\", \"$1\", \"node\", \"(.+)\")").is_empty()
    );
    assert_eq!(
        recorded_names("efa:a:b{node=~\"x:y\"} or on (node) efa_c"),
        BTreeSet::from(["efa:a:b".to_owned()])
    );
}
