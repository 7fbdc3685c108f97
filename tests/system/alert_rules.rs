//! The Prometheus rules in manifests/prometheus pass `promtool check rules`, and every unit
//! test in tests/rules (`promtool test rules`: firing and non-firing cases) passes.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus) must be installed: scripts/setup.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn rule_files_are_valid() {
    let dir = repo().join("manifests/prometheus");
    let (ok, text) = promtool(&["check", "rules", "efaprobe-rules.yml"], &dir);
    assert!(ok, "{text}");
}

#[test]
fn rule_unit_tests_pass() {
    let dir = repo().join("tests/rules");
    let mut tests: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".test.yml"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty());
    for t in &tests {
        let (ok, text) = promtool(&["test", "rules", t], &dir);
        assert!(ok, "{t}:\n{text}");
    }
}
