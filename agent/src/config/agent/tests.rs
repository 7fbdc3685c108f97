//! The agent's settings: unit tests.

use super::*;
use crate::config::parse_command_line;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

/// Every bad setting of this command line, or the configuration.
fn parse_all(args: &[&str]) -> Result<AgentConfig, ConfigErrors> {
    let mut full = vec!["efaprobe"];
    if !args.contains(&"--imds-endpoint") {
        // Never the real metadata address from a test.
        full.extend_from_slice(&["--imds-endpoint", "none"]);
    }
    full.extend_from_slice(args);
    let parsed = parse_command_line::<Cli, _>(full.into_iter().map(Into::into))
        .expect("clap accepts the shape");
    let cli = parsed.parsed.expect("parsed, bad values at their defaults");
    AgentConfig::from_args_after(&cli.args, parsed.errors)
}

/// The configuration, or the one bad setting of a command line that has one.
fn parse(args: &[&str]) -> Result<AgentConfig, ConfigError> {
    parse_all(args).map_err(|errors| {
        assert_eq!(errors.0.len(), 1, "{args:?}: {errors}");
        errors.0[0].clone()
    })
}

#[test]
fn a_good_configuration() {
    let c = parse(&[
        "--node-name",
        "gpu-1",
        "--pod-ip",
        "10.0.0.5",
        "--peers",
        "10.0.0.6:9476, 10.0.0.7:9476,10.0.0.6:9476",
        "--target",
        "nats=nats.system:4222",
        "--target",
        "prom=10.0.9.9:9090",
        "--fabric-provider",
        "udp;ofi_rxd",
        "--interval",
        "2s",
        "--timeout",
        "500ms",
    ])
    .unwrap();
    assert_eq!(c.node_name, "gpu-1");
    assert_eq!(c.peers, ["10.0.0.6:9476", "10.0.0.7:9476"]);
    assert_eq!(c.targets.len(), 2);
    assert_eq!(c.fabric_provider.as_deref(), Some("udp;ofi_rxd"));
    assert_eq!(
        c.fabric_bind,
        ["10.0.0.5".parse::<IpAddr>().unwrap()],
        "defaults to the pod IP"
    );
    assert_eq!(c.interval, Duration::from_secs(2));
    assert!(c.is_self("10.0.0.5:9476"));
    assert!(!c.is_self("10.0.0.6:9476"));
}

#[test]
fn each_bad_setting_is_named() {
    let base = ["--node-name", "gpu-1"];
    let cases: &[(&[&str], &str)] = &[
        (&[], "node-name"),
        (&["--node-name", "GPU_1"], "node-name"),
        (&["--listen", "9476"], "listen"),
        (&["--pod-ip", "ten.0.0.1"], "pod-ip"),
        (&["--peers", "10.0.0.6"], "peers"),
        (&["--peers", "10.0.0.6:0"], "peers"),
        (&["--peers", "bad host!:9476"], "peers"),
        (&["--target", "nats"], "target"),
        (&["--target", "a=h:1", "--target", "a=h:2"], "target"),
        (&["--fabric-provider", ""], "fabric-provider"),
        (&["--fabric-bind", "eth0"], "fabric-bind"),
        (&["--interval", "5"], "interval"),
        (&["--interval", "10ms"], "interval"),
        (&["--timeout", "5s"], "timeout"),
        (&["--timeout", "0s"], "timeout"),
        (&["--hysteresis", "0"], "hysteresis"),
        (&["--max-loss", "1.5"], "max-loss"),
        (&["--max-rtt", "fast"], "max-rtt"),
        (&["--probe-size", "0"], "probe-size"),
        (&["--large-probe-sizes", "1024,big"], "large-probe-sizes"),
        (&["--large-probe-sizes", "32"], "large-probe-sizes"),
        (&["--large-probe-sizes", "9000"], "large-probe-sizes"),
        (
            &["--imds-endpoint", "https://169.254.169.254"],
            "imds-endpoint",
        ),
        (&["--imds-timeout", "1h"], "imds-timeout"),
        (&["--probe-budget", "0"], "probe-budget"),
        (&["--probe-budget", "NaN"], "probe-budget"),
        (&["--sample-peers", "100000"], "sample-peers"),
        (&["--sample-rotation", "0"], "sample-rotation"),
        (&["--fabric-rtt-every", "0"], "fabric-rtt-every"),
        (&["--per-peer-metrics", "some"], "per-peer-metrics"),
        (&["--per-peer-metrics", ""], "per-peer-metrics"),
    ];
    for (extra, setting) in cases {
        let mut args: Vec<&str> = if *setting == "node-name" {
            vec![]
        } else {
            base.to_vec()
        };
        args.extend_from_slice(extra);
        let err = parse(&args).expect_err(setting);
        assert_eq!(err.setting, *setting, "{args:?}: {err}");
        assert!(err.to_string().contains(&format!("--{setting}")), "{err}");
    }
}

#[test]
fn per_peer_metrics_defaults_to_auto_and_takes_each_mode() {
    use crate::metrics::PerPeerMetrics;
    let c = parse(&["--node-name", "n"]).unwrap();
    assert_eq!(c.per_peer_metrics, PerPeerMetrics::Auto);
    for (text, mode) in [
        ("all", PerPeerMetrics::All),
        ("unhealthy", PerPeerMetrics::Unhealthy),
        ("none", PerPeerMetrics::None),
        ("auto", PerPeerMetrics::Auto),
    ] {
        let c = parse(&["--node-name", "n", "--per-peer-metrics", text]).unwrap();
        assert_eq!(c.per_peer_metrics, mode);
    }
    let err = parse(&["--node-name", "n", "--per-peer-metrics", "healthy"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid setting per-peer-metrics (flag --per-peer-metrics, env \
         EFAPROBE_PER_PEER_METRICS): \"healthy\" is not one of all, unhealthy, none, auto"
    );
}

/// Each refused value: the flag, its variable, what is allowed (issue 15, item 9).
const REFUSED: &[(&str, &str, &str, &str)] = &[
    ("hysteresis", "abc", "EFAPROBE_HYSTERESIS", "from 1 to 100"),
    ("probe-size", "0", "EFAPROBE_PROBE_SIZE", "from 1 to 8192"),
    (
        "sample-peers",
        "-1",
        "EFAPROBE_SAMPLE_PEERS",
        "from 0 to 10000",
    ),
    (
        "max-loss",
        "2",
        "EFAPROBE_MAX_LOSS",
        "a loss ratio from 0 to 1",
    ),
    (
        "probe-budget",
        "0",
        "EFAPROBE_PROBE_BUDGET",
        "from 0.1 to 10000",
    ),
    (
        "fabric-rtt-every",
        "0",
        "EFAPROBE_FABRIC_RTT_EVERY",
        "from 1 to 1000",
    ),
    ("pod-ip", "x", "POD_IP", "\"x\" is not an IP address"),
    (
        "interval",
        "100000h",
        "EFAPROBE_INTERVAL",
        "allowed: 100ms to 10m",
    ),
    ("timeout", "2m", "EFAPROBE_TIMEOUT", "allowed: 1ms to 1m"),
    ("max-rtt", "0", "EFAPROBE_MAX_RTT", "allowed: 100us to 10s"),
    ("peers", "[::1:9476", "EFAPROBE_PEERS", "is not [IPv6]:PORT"),
    (
        "imds-timeout",
        "0",
        "EFAPROBE_IMDS_TIMEOUT",
        "allowed: 1ms to 30s",
    ),
];

#[test]
fn each_message_names_the_flag_its_variable_and_what_is_allowed() {
    for (flag, value, env, allowed) in REFUSED {
        // `--flag=value`: clap would read a bare `-1` as a flag.
        let arg = format!("--{flag}={value}");
        let err = parse(&["--node-name", "n", &arg]).expect_err(flag);
        let said = err.to_string();
        assert_eq!(err.setting, *flag, "{said}");
        assert_eq!(err.env, *env, "{said}");
        assert!(
            said.starts_with(&format!(
                "invalid setting {flag} (flag --{flag}, env {env}): "
            )),
            "{said}"
        );
        assert!(said.contains(allowed), "{said}");
        assert!(
            said.contains(&format!("{value:?}")),
            "the value as given: {said}"
        );
        assert!(!said.contains("Some("), "{said}");
    }
}

#[test]
fn absurd_values_are_refused_and_sensible_ones_kept() {
    let c = parse(&[
        "--node-name",
        "n",
        "--interval",
        "10m",
        "--timeout",
        "1m",
        "--max-rtt",
        "100us",
        "--peers",
        "[::1]:9476,198.18.0.1:9476",
    ])
    .unwrap();
    assert_eq!(c.interval, Duration::from_secs(600));
    assert_eq!(c.policy.max_rtt, Duration::from_micros(100));
    assert_eq!(c.peers, ["[::1]:9476", "198.18.0.1:9476"]);
    for (flag, value) in [
        ("--interval", "100000h"),
        ("--interval", "11m"),
        ("--max-rtt", "0"),
        ("--max-rtt", "99us"),
        ("--peers", "[::1:9476"),
        ("--peers", "::1:9476"),
    ] {
        assert!(
            parse(&["--node-name", "n", flag, value]).is_err(),
            "{flag} {value}"
        );
    }
}

#[test]
fn every_bad_setting_is_reported_at_once() {
    let mut args = vec!["--timeout".to_owned(), "5s".to_owned()];
    for (flag, value, _, _) in REFUSED.iter().filter(|(f, ..)| *f != "timeout") {
        args.push(format!("--{flag}={value}"));
    }
    // Checks across settings run too: no node name, a timeout over the interval, a
    // larger probe below the small one, a target named twice.
    args.extend(["--large-probe-sizes", "32", "--target", "a=h:1,a=h:2"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let errors = parse_all(&args).unwrap_err();
    let mut named: Vec<&str> = errors.0.iter().map(|e| e.setting).collect();
    named.sort_unstable();
    let mut expected: Vec<&str> = REFUSED
        .iter()
        .map(|(f, ..)| *f)
        .filter(|f| !["interval", "probe-size"].contains(f))
        .collect();
    // The interval and the small probe size are refused, so the timeout and the larger
    // sizes are not compared with their defaults.
    expected.extend(["interval", "probe-size", "node-name", "target"]);
    expected.retain(|f| *f != "timeout");
    expected.sort_unstable();
    assert_eq!(named, expected, "{errors}");
    assert!(errors.0.iter().all(|e| !e.env.is_empty()), "{errors}");
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|ip| ip.parse().unwrap()).collect()
}

#[test]
fn fabric_bind_lists_one_address_per_rail_in_order() {
    let base = ["--node-name", "n", "--pod-ip", "10.0.0.5"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        parse(&args)
    };
    let c = with(&["--fabric-bind", "198.18.1.2, 198.18.0.1,fd00::7"]).unwrap();
    assert_eq!(
        c.fabric_bind,
        ips(&["198.18.1.2", "198.18.0.1", "fd00::7"]),
        "in the order given, the pod IP not added"
    );
    assert_eq!(c.pod_ip, Some("10.0.0.5".parse().unwrap()));
    let c = with(&["--fabric-bind", "198.18.1.2"]).unwrap();
    assert_eq!(c.fabric_bind, ips(&["198.18.1.2"]), "one address, one rail");
    // Blank is unset, as before rails: the pod IP, one rail; without one, no bind.
    for blank in ["--fabric-bind=", "--fabric-bind=  "] {
        assert_eq!(with(&[blank]).unwrap().fabric_bind, ips(&["10.0.0.5"]));
    }
    assert_eq!(with(&[]).unwrap().fabric_bind, ips(&["10.0.0.5"]));
    let c = parse(&["--node-name", "n", "--fabric-bind="]).unwrap();
    assert_eq!(c.fabric_bind, ips(&[]), "no pod IP: no bind");
    let all: Vec<String> = (0..32).map(|i| format!("198.18.9.{i}")).collect();
    let c = with(&["--fabric-bind", &all.join(",")]).unwrap();
    assert_eq!(c.fabric_bind.len(), 32, "a hello's worth");
}

#[test]
fn fabric_bind_refuses_what_is_no_list_of_rails() {
    let too_many: Vec<String> = (0..33).map(|i| format!("198.18.9.{i}")).collect();
    let too_many = too_many.join(",");
    let cases: &[(&str, &[&str])] = &[
        ("198.18.0.1,eth0", &["\"eth0\" is not an IP address"]),
        ("198.18.0.1,,198.18.0.2", &["entry 2 of 3 is empty"]),
        ("198.18.0.1,", &["entry 2 of 2 is empty"]),
        (",", &["entry 1, 2 of 2 is empty"]),
        (
            "198.18.0.1,198.18.0.2,198.18.0.1,198.18.0.1",
            &["198.18.0.1 is given twice (entries 1 and 3)"],
        ),
        (&too_many, &["33 addresses, more than 32"]),
        (
            "198.18.0.1, ,198.18.0.1",
            &[
                "entry 2 of 3 is empty",
                "198.18.0.1 is given twice (entries 1 and 3)",
            ],
        ),
    ];
    for (value, said) in cases {
        let arg = format!("--fabric-bind={value}");
        let err = parse(&["--node-name", "n", &arg]).expect_err(value);
        let text = err.to_string();
        assert_eq!(err.setting, "fabric-bind", "{text}");
        assert!(
            text.starts_with(
                "invalid setting fabric-bind (flag --fabric-bind, env EFAPROBE_FABRIC_BIND): "
            ),
            "{text}"
        );
        for part in *said {
            assert!(text.contains(part), "{value:?}: {text}");
        }
        assert_eq!(
            text.matches("given twice").count(),
            said.iter().filter(|s| s.contains("twice")).count(),
            "each address said once: {text}"
        );
    }
    // With other bad settings, all are reported.
    let errors = parse_all(&["--fabric-bind=198.18.0.1,,", "--hysteresis=0"]).unwrap_err();
    let mut named: Vec<&str> = errors.0.iter().map(|e| e.setting).collect();
    named.sort_unstable();
    assert_eq!(
        named,
        ["fabric-bind", "hysteresis", "node-name"],
        "{errors}"
    );
}

#[test]
fn fabric_can_be_turned_off() {
    let c = parse(&["--node-name", "n", "--fabric-provider", "none"]).unwrap();
    assert_eq!(c.fabric_provider, None);
}
