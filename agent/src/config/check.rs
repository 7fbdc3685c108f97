//! `efaprobe check`'s flags.

use std::collections::HashSet;
use std::time::Duration;

use super::{ConfigError, ConfigErrors};
use crate::probe::TargetSpec;
use crate::units::{format_duration, parse_duration};

/// Timeouts outside this range are refused: under a millisecond nothing can answer, and
/// over ten minutes a one-shot check is better served by `timeout(1)`.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct Args {
    // The help is an attribute, not a doc comment: rustdoc would read the brackets as links.
    #[arg(
        long = "target",
        value_name = "NAME=HOST:PORT[:CHECK]",
        required = true,
        value_parser = parse_target,
        help = "A service to check, as NAME=HOST:PORT[:CHECK]. CHECK is tcp, nats, prometheus, \
                http or http:/PATH; without it, port 4222 means nats, 9090 prometheus, others \
                tcp. IPv6 addresses go in brackets: [fd00::1]:4222. Repeat for more targets."
    )]
    pub targets: Vec<TargetSpec>,

    /// How long each address may take to connect and answer (name resolution gets as long
    /// again), e.g. 500ms, 2s.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Print one JSON document instead of one line per address.
    #[arg(long)]
    pub json: bool,

    /// For benchmarks: check every target N times and print one JSON summary instead of the
    /// reports (probes, failures, this process's CPU seconds, connect-time percentiles).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_REPEAT as i64))]
    pub repeat: Option<u32>,

    /// With --repeat: rounds of checks in flight at once.
    #[arg(
        long,
        value_name = "C",
        default_value_t = 1,
        requires = "repeat",
        value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY as i64)
    )]
    pub concurrency: u32,
}

/// Bounds of `--repeat` and `--concurrency`.
const MAX_REPEAT: u32 = 10_000_000;
const MAX_CONCURRENCY: u32 = 1024;

/// Checks across `--target` flags (each parsed by clap already), after the values clap's
/// parsers refused.
pub fn check_config(args: &Args, refused: ConfigErrors) -> Result<(), ConfigErrors> {
    let mut errors = refused;
    if let Some(name) = duplicate_name(&args.targets) {
        errors.push(ConfigError::of::<Args>(
            "target",
            format!("target name {name:?} is given more than once"),
        ));
    }
    errors.or_ok(())
}

fn duplicate_name(targets: &[TargetSpec]) -> Option<&str> {
    let mut seen = HashSet::new();
    targets
        .iter()
        .find(|spec| !seen.insert(spec.name.as_str()))
        .map(|spec| spec.name.as_str())
}

fn parse_target(text: &str) -> Result<TargetSpec, String> {
    TargetSpec::parse(text).map_err(|e| e.to_string())
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(format!(
            "{text:?} is outside {} to {}",
            format_duration(MIN_TIMEOUT),
            format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("11m").is_err());
        assert_eq!(parse_timeout("10m"), Ok(MAX_TIMEOUT));
    }

    #[test]
    fn arguments() {
        let cli = TestCli::try_parse_from([
            "check",
            "--target",
            "nats=127.0.0.1:4222",
            "--target",
            "web=[::1]:80:http:/healthz",
            "--timeout",
            "500ms",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.args.targets.len(), 2);
        assert_eq!(cli.args.timeout, Duration::from_millis(500));
        assert!(cli.args.json);

        let cli = TestCli::try_parse_from(["check", "--target", "n=h:1"]).unwrap();
        assert_eq!(cli.args.timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_arguments_name_the_value() {
        for (argv, needle) in [
            (vec!["check", "--target", "nats"], "\"nats\""),
            (vec!["check", "--target", "n=h:1:grpc"], "\"grpc\""),
            (
                vec!["check", "--target", "n=h:1", "--timeout", "2"],
                "\"2\"",
            ),
            (vec!["check"], "--target"),
        ] {
            let err = TestCli::try_parse_from(&argv).expect_err(needle);
            assert!(err.use_stderr());
            let message = err.to_string();
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
    }

    #[test]
    fn repeat_arguments() {
        let cli = TestCli::try_parse_from([
            "check",
            "--target",
            "n=127.0.0.1:1",
            "--repeat",
            "100",
            "--concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(cli.args.repeat, Some(100));
        assert_eq!(cli.args.concurrency, 4);
        assert!(
            TestCli::try_parse_from(["check", "--target", "n=h:1", "--concurrency", "4"]).is_err()
        );
        assert!(TestCli::try_parse_from(["check", "--target", "n=h:1", "--repeat", "0"]).is_err());
    }

    #[test]
    fn duplicate_names_are_found() {
        let specs: Vec<TargetSpec> = ["a=h:1", "b=h:2", "a=h:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(duplicate_name(&specs), Some("a"));
        assert_eq!(duplicate_name(&specs[..2]), None);
    }
}
