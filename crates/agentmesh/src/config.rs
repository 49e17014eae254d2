//! The `--config` file (`AGENTMESH_CONFIG`): TOML, or YAML for `.yaml`
//! and `.yml`, whose keys are the running command's long flags without
//! `--` (`max-concurrency = 8`). It sits under the flags and the
//! `AGENTMESH_*` variables: a key is used only where the command line and
//! the environment left the flag at its default.
//!
//! How: the arguments are parsed once leniently (a flag the file provides
//! may be required), which says per flag where its value came from
//! (`ArgMatches::value_source`); every key whose flag came from neither
//! the command line nor a variable is appended to the arguments as
//! `--key=value`, and the result is parsed for real. So the file's values
//! go through the flags' own parsers and checks (ranges, conflicts,
//! required flags), and nothing about a flag is written down twice.
//! Before that, each key is checked here, so a refusal names the key and
//! the file: a key the command has no flag for, or a value of the wrong
//! type (a list for a single value, text for a number, a table).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use serde_json::Value;

use crate::cli::Cli;

/// Largest config file read: a file of every flag with long values is a
/// few KiB; anything near this is not a config file.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Nesting a YAML config may have: keys hold scalars or lists of them.
const MAX_YAML_DEPTH: usize = 8;

/// The command line `args` (the program name first) with the `--config`
/// file's values under the flags and variables. Help, version and clap's
/// own refusals are printed and exit as `Cli::parse` does.
pub fn parse(args: Vec<OsString>) -> anyhow::Result<Cli> {
    let lenient = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args);
    let Some((path, matches)) = lenient.ok().and_then(|matches| {
        let path = config_path(&matches)?;
        Some((path, matches))
    }) else {
        return Ok(parse_or_exit(args));
    };
    let file = load(&path)?;
    let extra = flags_from(&file, &matches, &path)?;
    let mut all = args;
    all.extend(extra.into_iter().map(OsString::from));
    Ok(parse_or_exit(all))
}

/// `Cli::parse_from`, on arguments already collected.
fn parse_or_exit(args: Vec<OsString>) -> Cli {
    let mut command = Cli::command();
    let parsed = command
        .try_get_matches_from_mut(args)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    parsed.unwrap_or_else(|e| e.format(&mut command).exit())
}

/// `--config`, from whichever level of the command line it was given at.
fn config_path(matches: &ArgMatches) -> Option<PathBuf> {
    let mut level = matches;
    loop {
        if let Ok(Some(path)) = level.try_get_one::<PathBuf>("config") {
            return Some(path.clone());
        }
        level = level.subcommand()?.1;
    }
}

/// The file's keys and values; an empty file has none.
pub fn load(path: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let shown = path.display();
    let format = match path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("toml") => Format::Toml,
        Some("yaml" | "yml") => Format::Yaml,
        _ => bail!("config file {shown}: name it *.toml, *.yaml or *.yml, so its format is known"),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read config file {shown}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!("config file {shown} is over {MAX_CONFIG_BYTES} bytes");
    }
    parse_text(&text, format).with_context(|| format!("config file {shown}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
}

fn parse_text(text: &str, format: Format) -> anyhow::Result<BTreeMap<String, Value>> {
    let value: Value = match format {
        Format::Toml => toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?,
        Format::Yaml => serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => Ok(map.into_iter().collect()),
        _ => bail!("expected keys and values (`max-concurrency = 8`), not a single value"),
    }
}

/// YAML 1.2 as the task files read it: `yes` stays a string, a key given
/// twice is refused, nesting and text are bounded.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    budget.max_total_scalar_bytes = MAX_CONFIG_BYTES as usize * 2;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.reject_unsupported_tags = true;
    options.with_snippet = false;
    options
}

/// What a flag takes, as a config file must write it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A switch: `true` sets it, `false` leaves it off.
    Switch,
    Whole,
    Number,
    Choice(Vec<String>),
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Self {
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return Kind::Switch;
        }
        let parser = arg.get_value_parser();
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !choices.is_empty() {
            return Kind::Choice(choices);
        }
        let id = parser.type_id();
        let whole = [
            std::any::TypeId::of::<u8>(),
            std::any::TypeId::of::<u16>(),
            std::any::TypeId::of::<u32>(),
            std::any::TypeId::of::<u64>(),
            std::any::TypeId::of::<usize>(),
            std::any::TypeId::of::<i64>(),
        ];
        if whole.iter().any(|t| id == *t) {
            Kind::Whole
        } else if id == std::any::TypeId::of::<f64>() {
            Kind::Number
        } else {
            Kind::Text
        }
    }

    fn expected(&self) -> String {
        match self {
            Kind::Switch => "true or false".to_owned(),
            Kind::Whole => "a whole number".to_owned(),
            Kind::Number => "a number".to_owned(),
            Kind::Choice(choices) => format!("one of {}", choices.join(", ")),
            Kind::Text => "a string".to_owned(),
        }
    }

    /// `value` as the flag's text, or `None` when it does not fit.
    fn text(&self, value: &Value) -> Option<String> {
        match (self, value) {
            (Kind::Whole, Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
            (Kind::Number | Kind::Text, Value::Number(n)) => Some(n.to_string()),
            (Kind::Choice(_) | Kind::Text, Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }
}

fn found(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// `--key=value` arguments for the file's keys that neither the command
/// line nor a variable set, for the command `matches` ran.
fn flags_from(
    file: &BTreeMap<String, Value>,
    matches: &ArgMatches,
    path: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut command = Cli::command();
    command.build();
    let (mut leaf, mut leaf_matches, mut name) = (&command, matches, "agentmesh".to_owned());
    while let Some((sub, sub_matches)) = leaf_matches.subcommand() {
        let Some(found) = leaf.find_subcommand(sub) else {
            break;
        };
        name = format!("{name} {sub}");
        (leaf, leaf_matches) = (found, sub_matches);
    }
    let shown = path.display();
    let mut extra = Vec::new();
    for (key, value) in file {
        if key == "config" {
            bail!("config file {shown}: key 'config': a config file cannot name another");
        }
        let arg = leaf
            .get_arguments()
            .filter(|a| !a.is_positional() && !matches!(a.get_id().as_str(), "help" | "version"))
            .find(|a| a.get_long() == Some(key.as_str()));
        let Some(arg) = arg else {
            bail!(
                "config file {shown}: unknown key '{key}': `{name}` has no --{key} flag \
                 (keys are the command's long flags without the dashes)"
            );
        };
        let id = arg.get_id().as_str();
        let given = leaf_matches.ids().any(|i| i.as_str() == id)
            && matches!(
                leaf_matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
        if given {
            continue;
        }
        extra.extend(
            values_of(arg, value).with_context(|| format!("config file {shown}: key '{key}'"))?,
        );
    }
    Ok(extra)
}

/// The arguments `value` stands for as flag `arg`, each checked by the
/// flag's own parser.
fn values_of(arg: &Arg, value: &Value) -> anyhow::Result<Vec<String>> {
    let kind = Kind::of(arg);
    let long = arg.get_long().context("a long flag")?;
    if kind == Kind::Switch {
        return match value {
            Value::Bool(true) => Ok(vec![format!("--{long}")]),
            Value::Bool(false) => Ok(Vec::new()),
            other => bail!("expected true or false, found {}", found(other)),
        };
    }
    let many = arg.get_value_delimiter().is_some()
        || matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let items: Vec<&Value> = match value {
        Value::Array(items) if many => items.iter().collect(),
        Value::Array(_) => bail!("expected {} (one value), found a list", kind.expected()),
        one => vec![one],
    };
    let mut args = Vec::with_capacity(items.len());
    for item in items {
        let Some(text) = kind.text(item) else {
            bail!("expected {}, found {}", kind.expected(), found(item));
        };
        // The flag's own parser, alone (the flag's relations to others
        // are checked by the real parse).
        let mut probe = Arg::new(arg.get_id().clone())
            .value_parser(arg.get_value_parser().clone())
            .action(ArgAction::Append)
            .allow_hyphen_values(true);
        if let Some(delimiter) = arg.get_value_delimiter() {
            probe = probe.value_delimiter(delimiter);
        }
        let probe = clap::Command::new("config")
            .no_binary_name(true)
            .arg(probe)
            .try_get_matches_from([text.as_str()]);
        if let Err(e) = probe {
            let e = e.to_string();
            let first = e.lines().next().unwrap_or_default();
            bail!("{}", first.trim_start_matches("error: "));
        }
        args.push(format!("--{long}={text}"));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cli::Command;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn parse_with(args: &[&str], config: &Path) -> anyhow::Result<Cli> {
        let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
        all.push("--config".into());
        all.push(config.as_os_str().to_owned());
        parse(all)
    }

    fn node(cli: Cli) -> Box<crate::cli::NodeArgs> {
        match cli.command {
            Command::Node(args) => args,
            other => panic!("not node: {other:?}"),
        }
    }

    #[test]
    fn toml_and_yaml_set_flags_that_the_command_line_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            &dir,
            "node.toml",
            "role = \"worker\"\netcd = [\"http://a:1\", \"http://b:2\"]\nmax-concurrency = 8\n\
             insecure = true\ncapabilities = \"math.eval,sleep\"\ntask-retention = \"2h\"\n\
             listen = \"localhost:7700\"\n",
        );
        let args = node(parse_with(&["agentmesh", "node"], &toml).unwrap());
        assert_eq!(args.etcd.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(args.max_concurrency, 8);
        assert!(args.insecure);
        assert_eq!(args.capabilities, ["math.eval", "sleep"]);
        assert_eq!(args.task_retention, Duration::from_secs(7200));
        assert_eq!(args.listen().to_string(), "localhost:7700");

        let flags =
            node(parse_with(&["agentmesh", "node", "--max-concurrency", "2"], &toml).unwrap());
        assert_eq!(flags.max_concurrency, 2, "a flag beats the file");

        let yaml = write(
            &dir,
            "node.yaml",
            "role: coordinator\netcd:\n  - http://y:1\nlease-ttl: 9\ninsecure: false\n",
        );
        let args = node(parse_with(&["agentmesh", "node"], &yaml).unwrap());
        assert_eq!(args.etcd.endpoints, ["http://y:1"]);
        assert_eq!(args.lease_ttl, 9);
        assert!(!args.insecure);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |name: &str, text: &str| {
            let path = write(&dir, name, text);
            let error = parse_with(&["agentmesh", "node", "--role", "worker"], &path)
                .map(|_| ())
                .unwrap_err();
            let text = format!("{error:#}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            text
        };
        let text = refused("typo.toml", "etcd = \"http://a:1\"\nmax-concurency = 3\n");
        assert!(text.contains("unknown key 'max-concurency'"), "{text}");
        let text = refused(
            "type.toml",
            "etcd = \"http://a:1\"\nmax-concurrency = \"four\"\n",
        );
        assert!(
            text.contains("key 'max-concurrency'")
                && text.contains("expected a whole number, found a string"),
            "{text}"
        );
        let text = refused("list.yaml", "etcd: http://a:1\nlease-ttl: [1, 2]\n");
        assert!(
            text.contains("key 'lease-ttl': expected a whole number (one value), found a list"),
            "{text}"
        );
        let text = refused("switch.toml", "etcd = \"http://a:1\"\ninsecure = \"yes\"\n");
        assert!(
            text.contains("key 'insecure': expected true or false, found a string"),
            "{text}"
        );
        let text = refused("range.toml", "etcd = \"http://a:1\"\nmax-concurrency = 0\n");
        assert!(
            text.contains("key 'max-concurrency'") && text.contains("'0'"),
            "{text}"
        );
        let text = refused("enum.toml", "etcd = \"http://a:1\"\nlog-format = \"xml\"\n");
        assert!(text.contains("key 'log-format'"), "{text}");
        let text = refused("dup.yaml", "etcd: http://a:1\netcd: http://b:2\n");
        assert!(text.contains("dup.yaml"), "{text}");
        let text = refused("node.ini", "etcd=http://a:1\n");
        assert!(text.contains("*.toml, *.yaml or *.yml"), "{text}");
        let big = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize));
        let text = refused("big.toml", &big);
        assert!(text.contains("over 65536 bytes"), "{text}");
    }

    #[test]
    fn global_flags_and_client_commands_read_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "client.toml",
            "endpoint = \"http://c:1\"\nlog-format = \"json\"\nconnect-timeout-ms = 250\n",
        );
        let cli = parse_with(&["agentmesh", "agents"], &path).unwrap();
        assert_eq!(cli.observe.log_format, crate::cli::LogFormatArg::Json);
        let Command::Agents(args) = cli.command else {
            panic!("not agents")
        };
        assert_eq!(args.endpoints.endpoint, ["http://c:1"]);
        assert_eq!(args.endpoints.connect_timeout_ms, 250);
    }
}
