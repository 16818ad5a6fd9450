//! What `volley config` prints: a complete `volley.toml` with every knob at
//! its default and what it does (`example`), and the configuration a
//! `volley serve` with the same flags, environment and file would run with
//! (`effective`, secrets masked).
//!
//! Runs on the main thread before anything starts. Both walk clap's own
//! declarations of `serve`'s flags (their help, default and section), so
//! neither can name a knob that does not exist or miss one that does; the
//! example is checked by parsing it back (`tests.rs`).

use super::{env_of, key_of, section_of, Cli};
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
            let section = section_of(a);
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
        "volley.toml: every knob of `volley serve`, each at its default (printed by \
         `volley config --example`). Key `k` in section `[s]` is also flag `--s-k` and \
         environment variable `VOLLEY_S_K`; flags beat the environment, which beats \
         this file, which beats the defaults. Use it with `volley serve -c volley.toml`.",
    );
    file(&mut out, true, "unset by default", |k| k.default.clone());
    out
}

/// Every knob as a `volley.toml`, section by section, with the values
/// `values` gives it; `described` puts each knob's help, flag and variable
/// above it. A knob without a value is there commented out, saying
/// `unset`.
fn file(out: &mut String, described: bool, unset: &str, values: impl Fn(&Knob) -> Vec<String>) {
    for (section, knobs) in by_section(knobs()) {
        if !section.is_empty() {
            let _ = write!(out, "\n[{section}]\n");
        }
        for k in knobs {
            if described {
                out.push('\n');
                comment(out, &k.help);
                comment(out, &format!("--{}, {}", k.flag, env_of(&k.flag)));
            }
            match toml_value(&values(&k), k.list) {
                Some(v) => {
                    let _ = writeln!(out, "{} = {v}", k.key);
                }
                None => {
                    let _ = writeln!(out, "# {} =   ({unset})", k.key);
                }
            }
        }
    }
}

/// Knobs whose values are secrets: printed as `"(set)"`.
const SECRETS: &[&str] = &["api-key", "auth-jwt-secret"];

/// The configuration `matches` (of `serve` or `config`, after layering)
/// hold, as a `volley.toml`: every knob with the value in force, secrets
/// masked (an API key or JWT secret as `(set)`, Redis passwords left out).
pub fn effective(matches: &ArgMatches) -> String {
    let mut out = String::new();
    file(&mut out, false, "unset", |k| {
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
            values = values.iter().map(|u| crate::redis::RedisUrl::shown(u)).collect();
        }
        values
    });
    out
}

/// Bytes as the docs write them (KiB, MiB, GiB).
fn bytes(n: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && n % (size / 16) == 0 {
            let v = n as f64 / size as f64;
            return format!(
                "{} {unit}",
                format!("{v:.2}").trim_end_matches('0').trim_end_matches('.')
            );
        }
    }
    format!("{n} B")
}

/// What a server with `c` has in force, a line each, for the log at start:
/// every listener, auth, the API key, development tokens, what is kept
/// and where, and cluster mode. Listener addresses are as bound.
pub fn summary(c: &super::Config) -> Vec<String> {
    use super::AuthMode;
    let mut out = vec![
        format!("listening for TCP clients on {} (goim binary protocol)", c.tcp.listen),
        format!("listening for WebSocket clients on ws://{}{}", c.ws.listen, c.ws.path),
    ];
    if c.ws.echo {
        out.push(format!(
            "listening for WebSocket echo on ws://{}{} (conformance runs only)",
            c.ws.listen, c.ws.echo_path
        ));
    }
    let key = if c.api.key.is_some() {
        "an API key is set"
    } else {
        "no API key: anyone who reaches it may publish"
    };
    out.push(format!("listening for the HTTP API on http://{} ({key})", c.api.listen));
    out.push(format!(
        "listening for TCP publishers on {} ({key})",
        c.api.publish_listen
    ));
    out.push(match c.auth.mode {
        AuthMode::Off => "auth: off (a client's auth body names its user; no tokens)".to_string(),
        AuthMode::Jwt => format!(
            "auth: jwt ({} HS256 secret(s), {} public key file(s); tokens refreshed {} s before exp)",
            c.auth.jwt_secret.len(),
            c.auth.jwt_public_key.len(),
            c.auth.refresh_secs
        ),
    });
    if c.auth.dev_tokens {
        out.push("dev tokens: on (POST /v1/dev/token signs a token for anyone: development only)".into());
    }
    let h = &c.history;
    let history = if h.messages == 0 {
        "history off".to_string()
    } else {
        format!(
            "history {} messages, {} s, {} per room ({} in all)",
            h.messages,
            h.max_age_secs,
            bytes(h.max_bytes),
            bytes(h.memory)
        )
    };
    let i = &c.inbox;
    let inbox = if i.messages == 0 {
        "inboxes off".to_string()
    } else {
        format!(
            "inboxes {} pushes, {}, {} s per user ({} in all)",
            i.messages,
            bytes(i.bytes),
            i.ttl_secs,
            bytes(i.memory)
        )
    };
    let place = if !c.redis.urls.is_empty() {
        "history in Redis, inboxes in memory while their user is connected here".to_string()
    } else if c.durable() {
        let sync = match c.storage.sync {
            super::SyncMode::Batch => "each publish answered once on disk".to_string(),
            super::SyncMode::Interval => format!("synced every {} ms", c.storage.sync_interval_ms),
            super::SyncMode::None => "syncing left to the OS".to_string(),
        };
        format!("on disk in {} ({sync})", c.storage.dir.display())
    } else {
        "in memory, lost on restart".to_string()
    };
    out.push(format!("storage: {place}: {history}; {inbox}"));
    out.push(if c.redis.urls.is_empty() {
        "cluster: off (a single node, no Redis)".to_string()
    } else {
        let urls: Vec<String> = c.redis.urls.iter().map(|u| crate::redis::RedisUrl::shown(u)).collect();
        format!(
            "cluster: on, through {} Redis instance(s): {} (history, marks and offline inboxes in Redis)",
            urls.len(),
            urls.join(", ")
        )
    });
    out
}
