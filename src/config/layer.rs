//! Layering for `volley serve` (and `volley config`, which shows its
//! result): defaults < TOML file < environment < flags, and the old flat
//! key names.
//!
//! Runs once on the main thread. Clap knows the flags and their defaults
//! only; this module turns every other source into flags placed before the
//! real ones (the serve command's `args_override_self` makes the later one
//! win): first the file's keys, then the environment's `VOLLEY_*` variables,
//! then the command line as typed. A file key whose variable is set is left
//! out, so the environment beats the file even for list knobs.
//!
//! Invariants: an unknown file key or section is an error, never ignored; a
//! key, variable or flag of the flat layout that came before the sections
//! still works and leaves a note naming its new spelling; a value of the
//! wrong type is reported as the file's key or the variable that set it,
//! never as a flag the operator did not type.

use super::{env_of, flag_of, key_of, section_of, Cli, Cmd, ConfigError};
use clap::{CommandFactory, Parser};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Sections of the file; key `k` of section `s` is flag `--s-k`.
const SECTIONS: &[&str] = &[
    "log", "tcp", "ws", "client", "limits", "api", "history", "inbox", "storage", "auth", "redis",
];

/// Keys allowed outside any section.
const TOP_LEVEL: &[&str] = &[
    "shards",
    "cpus",
    "backlog",
    "shutdown_grace_secs",
    "transparent_hugepages",
];

/// Flat keys of the layout before sections → (section, key) now. Their old
/// environment variables (`VOLLEY_<OLD KEY>`) are honoured too.
pub const LEGACY: &[(&str, &str, &str)] = &[
    ("tcp_listen", "tcp", "listen"),
    ("ws_listen", "ws", "listen"),
    ("ws_path", "ws", "path"),
    ("ws_origins", "ws", "origins"),
    ("ws_echo", "ws", "echo"),
    ("ws_echo_path", "ws", "echo_path"),
    ("ws_echo_max_message", "ws", "echo_max_message"),
    ("handshake_timeout_secs", "client", "handshake_timeout_secs"),
    ("heartbeat_timeout_secs", "client", "heartbeat_timeout_secs"),
    ("max_body", "limits", "max_body"),
    ("outbound_limit", "limits", "outbound_limit"),
    ("http_listen", "api", "listen"),
    ("publish_listen", "api", "publish_listen"),
    ("api_key", "api", "key"),
    ("max_http_body", "api", "max_body"),
    ("max_push_body", "api", "max_push_body"),
    ("http_idle_timeout_secs", "api", "idle_timeout_secs"),
    ("log", "log", "level"),
    ("log_format", "log", "format"),
];

/// Parses the full command line, applying the environment and `--config`.
pub fn parse_cli<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_with_env(args, |name| std::env::var_os(name))
}

/// `parse_cli` with the environment given as a function (tests pass their
/// own instead of touching the process's).
pub(crate) fn parse_with_env<I, T>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = Cli::try_parse_from(&args)?;
    let serve = match &cli.cmd {
        Cmd::Serve(serve) => serve,
        Cmd::Config(c) => &c.serve,
        Cmd::Drain(d) => &d.serve,
        Cmd::Upgrade(u) => &u.serve,
        Cmd::CheckHost(_) | Cmd::Sub(_) => return Ok(cli),
    };
    let cmd = Cli::command();
    let serve_cmd = cmd.find_subcommand("serve").expect("serve subcommand exists");
    let flags: HashSet<String> = serve_cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "config")
        .map(str::to_string)
        .collect();
    // Repeatable flags (`--redis-url`) add up instead of replacing: one
    // given on the command line leaves out the environment's and the
    // file's, as a later value replaces an earlier one elsewhere.
    let at = args
        .iter()
        .position(|a| a == "serve" || a == "config" || a == "drain" || a == "upgrade")
        .map_or(args.len(), |i| i + 1);
    let typed: HashSet<String> = serve_cmd
        .get_arguments()
        .filter(|a| matches!(a.get_action(), clap::ArgAction::Append))
        .filter(|a| {
            let names: Vec<&str> = a
                .get_long()
                .into_iter()
                .chain(a.get_all_aliases().into_iter().flatten())
                .collect();
            args[at..].iter().any(|arg| {
                let arg = arg.to_string_lossy();
                let name = arg.strip_prefix("--").map(|n| n.split('=').next().unwrap_or(n));
                name.is_some_and(|n| names.contains(&n))
            })
        })
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let mut notes = Vec::new();
    // Flags renamed with the sections still work, and say their name now,
    // as old file keys and variables do.
    for arg in &args[at..] {
        let arg = arg.to_string_lossy();
        let Some(name) = arg.strip_prefix("--").map(|n| n.split('=').next().unwrap_or(n)) else {
            continue;
        };
        let renamed = serve_cmd
            .get_arguments()
            .find(|a| a.get_all_aliases().into_iter().flatten().any(|old| old == name));
        if let Some(long) = renamed.and_then(|a| a.get_long()) {
            notes.push(format!("flag --{name} is now --{long}"));
        }
    }

    // The environment, as flags, and which flags it set.
    let mut env_flags: Vec<OsString> = Vec::new();
    let mut from_env: HashSet<String> = HashSet::new();
    // Where each value the layering injects came from, to name that place
    // if the value is refused.
    let mut origin: HashMap<String, (Origin, String)> = HashMap::new();
    let mut note_env = |flag: &str, var: String, v: &std::ffi::OsStr| {
        origin.insert(flag.to_string(), (Origin::Env(var), v.to_string_lossy().into_owned()));
    };
    let mut sorted: Vec<&String> = flags.iter().collect();
    sorted.sort();
    for flag in sorted {
        if typed.contains(flag) {
            continue;
        }
        if let Some(v) = env(&env_of(flag)) {
            env_flags.push(flag_arg(flag, &v));
            from_env.insert(flag.clone());
            note_env(flag, env_of(flag), &v);
        }
    }
    // Rust programs read their log filter from RUST_LOG: it counts as the
    // environment's `[log] level` where VOLLEY_LOG_LEVEL is not set.
    if !from_env.contains("log-level") {
        if let Some(v) = env("RUST_LOG") {
            env_flags.push(flag_arg("log-level", &v));
            from_env.insert("log-level".into());
            note_env("log-level", "RUST_LOG".into(), &v);
        }
    }
    for &(old, section, key) in LEGACY {
        let (old_var, flag) = (env_of(&flag_of("", old)), flag_of(section, key));
        let new_var = env_of(&flag);
        if old_var == new_var || from_env.contains(&flag) {
            continue;
        }
        if let Some(v) = env(&old_var) {
            env_flags.push(flag_arg(&flag, &v));
            note_env(&flag, old_var.clone(), &v);
            from_env.insert(flag);
            notes.push(format!("environment variable {old_var} is now {new_var}"));
        }
    }

    // The file, as flags, minus what the environment set.
    let path = serve.config.clone().or_else(|| env("VOLLEY_CONFIG").map(Into::into));
    let mut file_flags: Vec<OsString> = Vec::new();
    if let Some(path) = &path {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        for (flag, value) in file_args(path, &text, &flags, &mut notes)? {
            if !from_env.contains(&flag) && !typed.contains(&flag) {
                file_flags.push(format!("--{flag}={value}").into());
                let key = file_key(serve_cmd, &flag);
                origin.insert(flag, (Origin::File(path.clone(), key), value));
            }
        }
    }

    // Insert both right after "serve" so every real flag follows.
    let mut merged = args[..at].to_vec();
    merged.extend(file_flags);
    merged.extend(env_flags);
    merged.extend_from_slice(&args[at..]);
    let mut cli = Cli::try_parse_from(&merged).map_err(|e| blame(e, &origin))?;
    match &mut cli.cmd {
        Cmd::Serve(s) => {
            s.notes = notes;
            // The file read, whichever way it was named (`--config` or
            // VOLLEY_CONFIG), for the log at start.
            s.config = path;
        }
        Cmd::Config(c) if c.example => c.text = super::show::example(),
        Cmd::Config(c) => {
            let matches = Cli::command().try_get_matches_from(&merged)?;
            let sub = matches.subcommand_matches("config").expect("parsed as config above");
            let from = path.map_or("no file".to_string(), |p| format!("file {}", p.display()));
            c.text = format!(
                "# What `volley serve` would run with: the defaults, {from}, the\n\
                 # environment and the flags (secrets masked).\n{}",
                super::show::effective(sub)
            );
            c.serve.notes = notes;
        }
        Cmd::Drain(d) => d.serve.config = path,
        Cmd::Upgrade(u) => u.serve.config = path,
        Cmd::CheckHost(_) | Cmd::Sub(_) => {}
    }
    Ok(cli)
}

/// Where a value the layering turned into a flag came from.
enum Origin {
    /// A key (as `key_of` names it) of this file.
    File(PathBuf, String),
    /// This environment variable.
    Env(String),
}

/// How the file names the knob of `flag`: `` `key` in [section] ``.
fn file_key(serve: &clap::Command, flag: &str) -> String {
    let section = serve
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .map(section_of)
        .unwrap_or_default();
    let key = key_of(&section, flag);
    if section.is_empty() {
        format!("`{key}`")
    } else {
        format!("`{key}` in [{section}]")
    }
}

/// A value clap refused, blamed on where it came from when the layering
/// put it there: the file's key or the environment variable, not the flag
/// made of it, which the operator never typed.
fn blame(e: clap::Error, origin: &HashMap<String, (Origin, String)>) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (e.get(ContextKind::InvalidArg), e.get(ContextKind::InvalidValue))
    else {
        return e.into();
    };
    let flag = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default();
    let Some((from, _)) = origin
        .get(flag)
        .filter(|(_, v)| v == value || v.split(',').any(|part| part == value))
    else {
        return e.into();
    };
    let why = match (std::error::Error::source(&e), e.get(ContextKind::ValidValue)) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => format!("expected one of {}", valid.join(", ")),
        _ => e.kind().to_string(),
    };
    let msg = format!("{value:?} is not valid: {why}");
    match from {
        Origin::File(path, key) => ConfigError::File {
            path: path.clone(),
            msg: format!("{key}: {msg}"),
        },
        Origin::Env(var) => ConfigError::Env { var: var.clone(), msg },
    }
}

fn flag_arg(flag: &str, value: &std::ffi::OsStr) -> OsString {
    let mut a = OsString::from(format!("--{flag}="));
    a.push(value);
    a
}

/// The file's keys as (flag, value) pairs.
fn file_args(
    path: &Path,
    text: &str,
    flags: &HashSet<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let err = |msg: String| ConfigError::File {
        path: path.to_path_buf(),
        msg,
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
    let mut out = Vec::new();
    for (name, value) in table {
        match value {
            toml::Value::Table(section) if SECTIONS.contains(&name.as_str()) => {
                for (key, value) in section {
                    let flag = flag_of(&name, &key);
                    if !flags.contains(&flag) {
                        return Err(err(format!("unknown key `{key}` in [{name}]")));
                    }
                    out.extend(scalar(&name, &key, value).map_err(err)?.map(|v| (flag, v)));
                }
            }
            toml::Value::Table(_) => {
                return Err(err(format!(
                    "unknown section [{name}] (sections: {})",
                    SECTIONS.join(", ")
                )))
            }
            value if TOP_LEVEL.contains(&name.as_str()) => {
                out.extend(scalar("", &name, value).map_err(err)?.map(|v| (flag_of("", &name), v)));
            }
            value => {
                let Some(&(_, section, key)) = LEGACY.iter().find(|(old, _, _)| *old == name) else {
                    return Err(err(format!("unknown key `{name}`")));
                };
                notes.push(format!(
                    "config file {}: key `{name}` is now `{key}` under [{section}]",
                    path.display()
                ));
                out.extend(
                    scalar(section, key, value)
                        .map_err(err)?
                        .map(|v| (flag_of(section, key), v)),
                );
            }
        }
    }
    Ok(out)
}

/// A file value as the text its flag takes; `None` for an empty list, which
/// leaves the knob at its default (every list knob defaults to empty).
fn scalar(section: &str, key: &str, value: toml::Value) -> Result<Option<String>, String> {
    let name = if section.is_empty() {
        format!("`{key}`")
    } else {
        format!("`{key}` in [{section}]")
    };
    Ok(Some(match value {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) if items.is_empty() => return Ok(None),
        toml::Value::Array(items) => {
            let mut parts = Vec::new();
            for it in items {
                match it {
                    toml::Value::String(s) => parts.push(s),
                    toml::Value::Integer(i) => parts.push(i.to_string()),
                    other => return Err(format!("{name}: unsupported list item {other}")),
                }
            }
            parts.join(",")
        }
        other => return Err(format!("{name}: unsupported value {other}")),
    }))
}
