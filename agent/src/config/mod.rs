//! Settings: every subcommand's flags (each also read from the environment variable clap
//! names beside it, where it has one), parsed into typed values by clap and checked once, at
//! start, into the configuration the rest of the agent uses.
//!
//! Every bad setting is reported, not only the first: clap stops at the first value it cannot
//! parse, so [`parse_command_line`] checks each value on its own, then parses the rest with the
//! bad ones at their defaults so that the checks across settings can run too. The caller
//! prints them all and exits with 64 (EX_USAGE).
//!
//! Nothing here imports the command line (`cli`); `cli` runs what this builds.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::sync::Mutex;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches};

pub mod agent;
pub mod check;
pub mod discovery;
pub mod fabric_ping;
pub mod node_actions;
pub mod preflight;
pub mod simulate;
pub mod values;

pub use agent::{AgentArgs, AgentConfig, DEFAULT_PORT};
pub use discovery::DiscoveryArgs;

/// A setting that cannot be used, named by its flag and its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting} (flag --{flag}{}): {detail}", env_part(env))]
pub struct ConfigError {
    /// The flag's long name, without `--`.
    pub setting: &'static str,
    pub flag: &'static str,
    /// The environment variable that sets it too; empty for a flag that has none.
    pub env: &'static str,
    /// What is wrong with the value, and what is allowed.
    pub detail: String,
}

fn env_part(env: &str) -> String {
    if env.is_empty() {
        String::new()
    } else {
        format!(", env {env}")
    }
}

impl ConfigError {
    /// The one way to make a setting's error: `flag` is the long name of one of `A`'s flags,
    /// and its environment variable is read from clap's description of `A`, so neither is
    /// typed twice.
    pub fn of<A: clap::Args>(flag: &str, detail: impl Into<String>) -> ConfigError {
        let cmd = A::augment_args(Command::new("settings"));
        let arg = cmd.get_arguments().find(|a| a.get_long() == Some(flag));
        debug_assert!(arg.is_some(), "no flag --{flag}");
        match arg {
            Some(arg) => ConfigError::for_arg(arg, detail),
            None => ConfigError {
                setting: intern(flag),
                flag: intern(flag),
                env: "",
                detail: detail.into(),
            },
        }
    }

    fn for_arg(arg: &Arg, detail: impl Into<String>) -> ConfigError {
        let flag = intern(arg.get_long().unwrap_or(arg.get_id().as_str()));
        ConfigError {
            setting: flag,
            flag,
            env: arg
                .get_env()
                .and_then(|e| e.to_str())
                .map(intern)
                .unwrap_or(""),
            detail: detail.into(),
        }
    }
}

/// Flag and variable names as `&'static str`, so errors are plain data: each distinct name
/// is leaked once (there are a few dozen).
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Every bad setting of one command line, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, error: ConfigError) {
        // One message per setting: the first says what is wrong with it.
        if !self.names(error.setting) {
            self.0.push(error);
        }
    }

    /// Whether `setting` (a flag's long name) is already reported: checks that read it
    /// (and compare it with others) are then skipped, since its value is only a default.
    pub fn names(&self, setting: &str) -> bool {
        self.0.iter().any(|e| e.setting == setting)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was reported.
    pub fn or_ok<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Prints each on its own line, `efaprobe COMMAND: invalid setting ...`.
    pub fn print(&self, command: &str) {
        for e in &self.0 {
            eprintln!("efaprobe {command}: {e}");
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

/// What [`parse_command_line`] found.
#[derive(Debug)]
pub struct ParsedCommandLine<T> {
    /// The parsed command line, bad values replaced by their defaults; `None` when even that
    /// cannot be parsed (a bad value of a required flag).
    pub parsed: Option<T>,
    /// The values clap's parsers refused, one per setting.
    pub errors: ConfigErrors,
    /// The subcommand's name (`agent`), or the program's when it has none.
    pub command: String,
}

/// Parses a command line like `T::try_parse_from`, but reports every value that a flag's
/// parser refuses (from the command line or the environment), where clap stops at the first.
/// `Err` is what clap says for anything else: help, version, an unknown flag, a missing one.
pub fn parse_command_line<T, I>(argv: I) -> Result<ParsedCommandLine<T>, clap::Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().collect();
    let typed = T::command();
    let first_error = match typed.clone().try_get_matches_from(&argv) {
        Ok(matches) => {
            return Ok(ParsedCommandLine {
                command: leaf_name(&typed, &matches),
                parsed: Some(T::from_arg_matches(&matches)?),
                errors: ConfigErrors::default(),
            })
        }
        Err(e) => e,
    };
    use clap::error::ErrorKind;
    if !matches!(
        first_error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue | ErrorKind::InvalidUtf8
    ) {
        return Err(first_error);
    }
    // The same command with every value taken as it is: which flags were given, and how.
    let raw = as_raw(typed.clone());
    let Ok(raw_matches) = raw.try_get_matches_from(&argv) else {
        return Err(first_error);
    };
    let mut path = vec![argv.first().cloned().unwrap_or_default()];
    let (mut leaf_cmd, mut leaf) = (&typed, &raw_matches);
    while let Some((name, sub)) = leaf.subcommand() {
        let Some(cmd) = leaf_cmd.find_subcommand(name) else {
            return Err(first_error);
        };
        path.push(name.into());
        (leaf_cmd, leaf) = (cmd, sub);
    }
    let mut errors = ConfigErrors::default();
    let mut bad = Vec::new();
    for arg in leaf_cmd.get_arguments() {
        if let Some(detail) = first_refused_value(arg, leaf) {
            errors.push(ConfigError::for_arg(arg, detail));
            bad.push(arg.get_id().clone());
        }
    }
    if errors.is_empty() {
        return Err(first_error);
    }
    // Again, typed, with the refused settings left at their defaults: on the command line
    // they are left out, and their environment variables are not read.
    let mut again = path.clone();
    again.extend(good_command_line_args(leaf_cmd, leaf, &bad));
    let names: Vec<String> = path[1..]
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let retyped = without_env(typed.clone(), &names, &bad);
    let parsed = retyped
        .try_get_matches_from(&again)
        .ok()
        .and_then(|m| T::from_arg_matches(&m).ok());
    Ok(ParsedCommandLine {
        parsed,
        errors,
        command: names
            .last()
            .cloned()
            .unwrap_or_else(|| leaf_cmd.get_name().to_owned()),
    })
}

fn leaf_name(cmd: &Command, matches: &ArgMatches) -> String {
    let (mut name, mut m) = (cmd.get_name().to_owned(), matches);
    while let Some((sub, sub_matches)) = m.subcommand() {
        name = sub.to_owned();
        m = sub_matches;
    }
    name
}

/// `cmd` and its subcommands with every value parsed as the text it is.
fn as_raw(cmd: Command) -> Command {
    cmd.mut_args(|a| {
        if a.get_action().takes_values() {
            a.value_parser(clap::builder::OsStringValueParser::new())
        } else {
            a
        }
    })
    .mut_subcommands(as_raw)
}

/// What `arg`'s own parser says of the first of its values it refuses, if any.
fn first_refused_value(arg: &Arg, raw: &ArgMatches) -> Option<String> {
    if !arg.get_action().takes_values() {
        return None;
    }
    let values = raw.get_raw(arg.get_id().as_str())?;
    // A command of this one flag, to run its parser (and its range or choices) on one value.
    let probe = Command::new("probe").no_binary_name(true).arg(
        Arg::new(arg.get_id().clone())
            .long("value")
            .value_parser(arg.get_value_parser().clone())
            .action(clap::ArgAction::Set)
            .allow_hyphen_values(true),
    );
    for value in values {
        let mut flag = OsString::from("--value=");
        flag.push(value);
        if let Err(e) = probe.clone().try_get_matches_from([flag]) {
            return Some(refusal(&e));
        }
    }
    None
}

/// A parser's own words, without clap's framing ("error: invalid value ... for ...").
fn refusal(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The leaf's command-line arguments again, `--flag=value` each, without those in `bad`.
fn good_command_line_args(
    leaf_cmd: &Command,
    leaf: &ArgMatches,
    bad: &[clap::Id],
) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut positional = Vec::new();
    for arg in leaf_cmd.get_arguments() {
        let id = arg.get_id();
        if bad.contains(id) || leaf.value_source(id.as_str()) != Some(ValueSource::CommandLine) {
            continue;
        }
        let Some(long) = arg.get_long() else {
            if arg.is_positional() {
                if let Some(values) = leaf.get_raw(id.as_str()) {
                    positional.extend(values.map(OsString::from));
                }
            }
            continue;
        };
        if arg.get_action().takes_values() {
            for value in leaf.get_raw(id.as_str()).into_iter().flatten() {
                let mut flag = OsString::from(format!("--{long}="));
                flag.push(value);
                out.push(flag);
            }
        } else {
            let times = match arg.get_action() {
                clap::ArgAction::Count => leaf.get_count(id.as_str()).into(),
                _ => 1,
            };
            out.extend(std::iter::repeat_n(
                OsString::from(format!("--{long}")),
                times,
            ));
        }
    }
    if !positional.is_empty() {
        out.push("--".into());
        out.extend(positional);
    }
    out
}

/// `cmd` with the environment variables of the `bad` settings of subcommand `path` unread.
fn without_env(cmd: Command, path: &[String], bad: &[clap::Id]) -> Command {
    match path.split_first() {
        Some((name, rest)) => cmd.mut_subcommand(name, |sub| without_env(sub, rest, bad)),
        None => bad.iter().fold(cmd, |cmd, id| {
            cmd.mut_arg(id.as_str(), |a| a.env(None::<&'static str>))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Run(check::Args),
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("efaprobe")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn a_good_command_line_parses_as_clap_would() {
        let parsed = parse_command_line::<Cli, _>(argv(&["run", "--target", "a=h:1"])).unwrap();
        assert_eq!(parsed.command, "run");
        assert!(parsed.errors.is_empty());
        let Sub::Run(args) = parsed.parsed.unwrap().command;
        assert_eq!(args.targets.len(), 1);
    }

    #[test]
    fn every_refused_value_of_a_subcommand_is_reported_and_the_rest_kept() {
        let parsed = parse_command_line::<Cli, _>(argv(&[
            "run",
            "--target",
            "a=h:1",
            "--timeout",
            "soon",
            "--repeat",
            "0",
            "--json",
        ]))
        .unwrap();
        assert_eq!(parsed.command, "run");
        let named: Vec<&str> = parsed.errors.0.iter().map(|e| e.setting).collect();
        assert_eq!(named, ["timeout", "repeat"], "{}", parsed.errors);
        assert!(
            parsed.errors.0[0].detail.contains("\"soon\""),
            "{}",
            parsed.errors
        );
        // Parsed again with those two at their defaults; the good ones as given.
        let Sub::Run(args) = parsed.parsed.unwrap().command;
        assert_eq!(args.timeout, std::time::Duration::from_secs(2));
        assert_eq!(args.repeat, None);
        assert!(args.json);
        assert_eq!(args.targets.len(), 1);
    }

    #[test]
    fn a_refused_required_value_is_reported_without_a_parse() {
        let parsed =
            parse_command_line::<Cli, _>(argv(&["run", "--target", "nats", "--timeout", "x"]))
                .unwrap();
        assert!(parsed.parsed.is_none());
        let named: Vec<&str> = parsed.errors.0.iter().map(|e| e.setting).collect();
        assert_eq!(named, ["target", "timeout"]);
    }

    #[test]
    fn help_and_unknown_flags_are_clap_s_own() {
        use clap::error::ErrorKind;
        let help = parse_command_line::<Cli, _>(argv(&["run", "--help"])).unwrap_err();
        assert_eq!(help.kind(), ErrorKind::DisplayHelp);
        let unknown = parse_command_line::<Cli, _>(argv(&["run", "--nope"])).unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn the_constructor_reads_flag_and_variable_from_clap() {
        let e = ConfigError::of::<discovery::DiscoveryArgs>("peer-grace", "too long");
        assert_eq!(
            (e.setting, e.flag, e.env),
            ("peer-grace", "peer-grace", "EFAPROBE_PEER_GRACE")
        );
        assert_eq!(
            e.to_string(),
            "invalid setting peer-grace (flag --peer-grace, env EFAPROBE_PEER_GRACE): too long"
        );
        let no_env = ConfigError::of::<check::Args>("timeout", "x");
        assert_eq!(
            no_env.to_string(),
            "invalid setting timeout (flag --timeout): x"
        );
    }
}
