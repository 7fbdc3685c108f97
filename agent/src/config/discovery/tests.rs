use super::*;
use crate::config::parse_command_line;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: DiscoveryArgs,
}

/// Discovery's configuration from these flags and `--peers`: the first error, as each case
/// has one bad setting.
fn from(
    extra: &[&str],
    peers: &[&str],
    ns_file: &Path,
) -> Result<(DiscoveryConfig, Duration), ConfigError> {
    from_port(extra, peers, 9476, ns_file)
}

fn from_port(
    extra: &[&str],
    peers: &[&str],
    port: u16,
    ns_file: &Path,
) -> Result<(DiscoveryConfig, Duration), ConfigError> {
    let mut full = vec!["efaprobe".to_owned()];
    full.extend(extra.iter().map(|s| s.to_string()));
    if !peers.is_empty() {
        full.extend(["--peers".to_owned(), peers.join(",")]);
    }
    let parsed = parse_command_line::<Cli, _>(full.into_iter().map(Into::into))
        .expect("clap accepts the shape");
    let mut errors = parsed.errors;
    let config = parsed
        .parsed
        .and_then(|cli| discovery_config_with(&cli.args, port, ns_file, &mut errors));
    match (errors.0.into_iter().next(), config) {
        (Some(e), _) => Err(e),
        (None, Some(c)) => Ok(c),
        (None, None) => panic!("no configuration and no error"),
    }
}

const NO_FILE: &str = "/nonexistent/efaprobe/namespace";

#[test]
fn static_is_the_default() {
    let (c, grace) = from(&[], &["10.0.0.1:9476"], Path::new(NO_FILE)).unwrap();
    assert_eq!(c, DiscoveryConfig::Static(vec!["10.0.0.1:9476".into()]));
    assert_eq!(grace, Duration::from_secs(30));
}

#[test]
fn dns_takes_the_agent_port() {
    let (c, _) = from(
        &[
            "--discovery",
            "dns",
            "--dns-name",
            "efaprobe.monitoring.svc",
        ],
        &[],
        Path::new(NO_FILE),
    )
    .unwrap();
    assert_eq!(
        c,
        DiscoveryConfig::Dns {
            name: "efaprobe.monitoring.svc".into(),
            port: 9476
        }
    );
}

#[test]
fn kubernetes_namespace_from_flag_or_service_account_file() {
    let (c, grace) = from(
        &[
            "--discovery",
            "kubernetes",
            "--namespace",
            "monitoring",
            "--peer-grace",
            "0",
        ],
        &[],
        Path::new(NO_FILE),
    )
    .unwrap();
    assert_eq!(
        c,
        DiscoveryConfig::Kubernetes {
            namespace: "monitoring".into(),
            selector: "app.kubernetes.io/name=efaprobe".into(),
            port: 9476
        }
    );
    assert_eq!(grace, Duration::ZERO);

    let dir = std::env::temp_dir().join(format!("efp-disc-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("namespace");
    std::fs::write(&file, "efa-system\n").unwrap();
    let result = from(&["--discovery", "kubernetes"], &[], &file);
    let _ = std::fs::remove_dir_all(&dir);
    let (c, _) = result.unwrap();
    assert!(
        matches!(&c, DiscoveryConfig::Kubernetes { namespace, .. } if namespace == "efa-system"),
        "{c:?}"
    );
}

#[test]
fn each_bad_setting_is_named() {
    let cases: &[(&[&str], &[&str], &str)] = &[
        (&["--discovery", "consul"], &[], "discovery"),
        (&["--discovery", "dns"], &[], "dns-name"),
        (
            &["--discovery", "dns", "--dns-name", "bad name!"],
            &[],
            "dns-name",
        ),
        (&["--dns-name", "efaprobe"], &[], "dns-name"),
        (
            &["--discovery", "dns", "--dns-name", "efaprobe"],
            &["10.0.0.1:9476"],
            "peers",
        ),
        (&["--discovery", "kubernetes"], &[], "namespace"),
        (
            &["--discovery", "kubernetes", "--namespace", "Monitoring"],
            &[],
            "namespace",
        ),
        (
            &[
                "--discovery",
                "kubernetes",
                "--namespace",
                "m",
                "--selector",
                "",
            ],
            &[],
            "selector",
        ),
        (
            &[
                "--discovery",
                "kubernetes",
                "--namespace",
                "m",
                "--selector",
                "app=efa probe",
            ],
            &[],
            "selector",
        ),
        (
            &[
                "--discovery",
                "kubernetes",
                "--namespace",
                "m",
                "--selector",
                "app in (a",
            ],
            &[],
            "selector",
        ),
        (&["--peer-grace", "soon"], &[], "peer-grace"),
        (&["--peer-grace", "11m"], &[], "peer-grace"),
        (&[], &["[::1:9476"], "peers"),
    ];
    for (extra, peers, setting) in cases {
        let err = from(extra, peers, Path::new(NO_FILE)).expect_err(setting);
        assert_eq!(err.setting, *setting, "{extra:?}: {err}");
        assert!(err.to_string().contains(&format!("--{setting}")), "{err}");
        assert!(err.to_string().contains(err.env), "{err}");
    }
}

#[test]
fn every_bad_discovery_setting_at_once() {
    let full = [
        "efaprobe",
        "--discovery",
        "kubernetes",
        "--namespace",
        "Monitoring",
        "--selector",
        "app in (a",
        "--dns-name",
        "x",
        "--peer-grace",
        "1h",
    ];
    let parsed = parse_command_line::<Cli, _>(full.map(Into::into)).unwrap();
    let mut errors = parsed.errors;
    let cli = parsed
        .parsed
        .expect("parsed with the bad grace at its default");
    assert!(discovery_config_with(&cli.args, 9476, Path::new(NO_FILE), &mut errors).is_none());
    let named: Vec<_> = errors.0.iter().map(|e| e.setting).collect();
    assert_eq!(
        named,
        ["peer-grace", "dns-name", "namespace", "selector"],
        "{errors}"
    );
    assert!(
        errors.0[0].to_string().contains("EFAPROBE_PEER_GRACE"),
        "{errors}"
    );
}

#[test]
fn port_zero_cannot_be_discovered() {
    let err = from_port(
        &["--discovery", "dns", "--dns-name", "efaprobe"],
        &[],
        0,
        Path::new(NO_FILE),
    )
    .unwrap_err();
    assert_eq!(err.setting, "listen");
}

#[test]
fn selectors() {
    for good in [
        "app.kubernetes.io/name=efaprobe",
        "app==efaprobe,tier!=test",
        "app.kubernetes.io/name in (efaprobe, efaprobe-canary),!legacy",
        "environment notin (qa)",
        "gpu",
        "app=",
    ] {
        assert_eq!(validate_selector(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "app=efa probe",
        "=efaprobe",
        "app=efaprobe,",
        "app in efaprobe",
        "app in (a,b",
        "app)",
        "-app=x",
        "bad prefix!/app=x",
        "app=-x",
    ] {
        assert!(validate_selector(bad).is_err(), "{bad:?} accepted");
    }
}
