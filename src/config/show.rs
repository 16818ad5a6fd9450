//! What `volley config` prints: a complete `volley.toml` with every knob at
//! its default and what it does (`example`), and the configuration a
//! `volley serve` with the same flags, environment and file would run with
//! (`effective`, secrets masked).
//!
//! Runs on the main thread before anything starts. Both walk clap's own
//! declarations of `serve`'s flags (their help, default and section), so
//! neither can name a knob that does not exist or miss one that does; the
//! example is checked by parsing it back (`tests.rs`).

use super::layer::{env_of, key_of};
use super::Cli;
use clap::{ArgMatches, CommandFactory};
use std::fmt::Write;

/// One knob of `volley serve`, as its declaration says.
struct Knob {
    /// clap's id of the flag.
    id: String,
    /// Section of the file ("" for the top level).
    section: String,
    /// Key in that section.
    key: String,
    /// Flag, without the dashes.
    flag: String,
    /// What it does (the flag's help).
    help: String,
    /// Default values, as the flag would take them.
    default: Vec<String>,
    /// Whether it takes a list.
    list: bool,
}

/// Every knob of `volley serve` but `--config` itself, in declaration order.
fn knobs() -> Vec<Knob> {
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand exists");
    serve
        .get_arguments()
        .filter_map(|a| {
            let flag = a.get_long()?.to_string();
            if flag == "config" {
                return None;
            }
            let section = a
                .get_help_heading()
                .map(|h| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default();
            let list = a.get_value_delimiter().is_some() || matches!(a.get_action(), clap::ArgAction::Append);
            Some(Knob {
                id: a.get_id().to_string(),
                key: key_of(&section, &flag),
                section,
                help: a
                    .get_long_help()
                    .or(a.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
                default: a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
                list,
                flag,
            })
        })
        .collect()
}

/// A flag's text as a TOML value: a number or a boolean where the text is
/// one (the file hands it back to the flag as text either way).
fn toml_scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

fn toml_value(values: &[String], list: bool) -> Option<toml::Value> {
    if list {
        Some(toml::Value::Array(values.iter().map(|v| toml_scalar(v)).collect()))
    } else {
        values.first().map(|v| toml_scalar(v))
    }
}

/// Knobs grouped by section, the top level first, sections in the order
/// their first knob is declared.
fn by_section(knobs: Vec<Knob>) -> Vec<(String, Vec<Knob>)> {
    let mut out: Vec<(String, Vec<Knob>)> = vec![(String::new(), Vec::new())];
    for k in knobs {
        match out.iter_mut().find(|(s, _)| *s == k.section) {
            Some((_, v)) => v.push(k),
            None => out.push((k.section.clone(), vec![k])),
        }
    }
    out
}

/// `text` as comment lines of at most about 78 columns.
fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        let mut at = String::from("#");
        for word in line.split_whitespace() {
            if at.len() > 1 && at.len() + 1 + word.len() > 78 {
                let _ = writeln!(out, "{at}");
                at = String::from("#");
            }
            at.push(' ');
            at.push_str(word);
        }
        let _ = writeln!(out, "{at}");
    }
}

/// A complete `volley.toml`: every knob at its default, each with what it
/// does, its flag and its environment variable. A knob with no default is
/// there commented out. Read as it is, it changes nothing.
pub fn example() -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "volley.toml: every knob of `volley serve`, each at its default (printed by\n\
         `volley config --example`). Key `k` in section `[s]` is also flag `--s-k` and\n\
         environment variable `VOLLEY_S_K`; flags beat the environment, which beats\n\
         this file, which beats the defaults. Use it with `volley serve -c volley.toml`.",
    );
    for (section, knobs) in by_section(knobs()) {
        if !section.is_empty() {
            let _ = write!(out, "\n[{section}]\n");
        }
        for k in knobs {
            out.push('\n');
            comment(&mut out, &k.help);
            comment(&mut out, &format!("--{}, {}", k.flag, env_of(&k.flag)));
            match toml_value(&k.default, k.list) {
                Some(v) => {
                    let _ = writeln!(out, "{} = {v}", k.key);
                }
                None => {
                    let _ = writeln!(out, "# {} =   (unset by default)", k.key);
                }
            }
        }
    }
    out
}

/// Knobs whose values are secrets: printed as `"(set)"`.
const SECRETS: &[&str] = &["api-key", "auth-jwt-secret"];

/// The configuration `matches` (of `serve` or `config`, after layering)
/// hold, as a `volley.toml`: every knob with the value in force, secrets
/// masked (an API key or JWT secret as `(set)`, Redis passwords left out).
pub fn effective(matches: &ArgMatches) -> String {
    let mut out = String::new();
    for (section, knobs) in by_section(knobs()) {
        if !section.is_empty() {
            let _ = write!(out, "\n[{section}]\n");
        }
        for k in knobs {
            let id = k.flag.as_str();
            let mut values: Vec<String> = matches
                .get_raw(&k.id)
                .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if k.list {
                // A delimited flag's raw value is the text before splitting.
                values = values.iter().flat_map(|v| v.split(',').map(str::to_string)).collect();
                values.retain(|v| !v.is_empty());
            }
            if SECRETS.contains(&id) && !values.is_empty() {
                values = vec!["(set)".into()];
            }
            if id == "redis-urls" {
                values = values
                    .iter()
                    .map(|u| crate::redis::RedisUrl::parse(u).map_or_else(|e| e, |u| u.to_string()))
                    .collect();
            }
            match toml_value(&values, k.list) {
                Some(v) => {
                    let _ = writeln!(out, "{} = {v}", k.key);
                }
                None => {
                    let _ = writeln!(out, "# {} =   (unset)", k.key);
                }
            }
        }
    }
    out
}
