use super::layer::parse_with_env;
use super::*;
use clap::CommandFactory;
use std::ffi::OsString;

fn serve_with(args: &[&str], env: &[(&str, &str)]) -> Result<ServeArgs, ConfigError> {
    let env: Vec<(String, OsString)> = env.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    let cli = parse_with_env(args.iter().copied(), |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })?;
    let Cmd::Serve(s) = cli.cmd else { panic!("not serve") };
    Ok(s)
}

fn serve(args: &[&str]) -> Config {
    serve_with(args, &[]).unwrap().server
}

/// A file of the test's own in a folder of its own, both removed when
/// dropped.
struct TmpFile(String);

impl std::ops::Deref for TmpFile {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = std::path::Path::new(&self.0).parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn file(name: &str, text: &str) -> TmpFile {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("volley-cfg-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    TmpFile(f.to_str().unwrap().to_string())
}

#[test]
fn defaults() {
    let c = serve(&["volley", "serve"]);
    assert_eq!(c.tcp.listen, "0.0.0.0:3101".parse().unwrap());
    assert_eq!(c.ws.listen, "0.0.0.0:3102".parse().unwrap());
    assert_eq!(c.api.listen, "127.0.0.1:3111".parse().unwrap());
    assert_eq!(c.api.publish_listen, "127.0.0.1:3112".parse().unwrap());
    assert_eq!(c.backlog, 65535);
    assert_eq!(c.limits.max_body, 4096);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.api.key, None);
    // Safe for a client port facing the internet (docs/LIMITS.md says why
    // each; tests/hostile spells the handshake limit out).
    let l = &c.limits;
    assert_eq!(
        (l.max_conns_per_ip, l.conn_rate_per_ip, l.max_handshakes_per_ip),
        (1000, 100, 64)
    );
    assert_eq!(
        (c.api.header_timeout_secs, c.api.request_timeout_secs, c.api.max_conns),
        (10, 30, 512)
    );
    c.validate().unwrap();
    let d = Config::default();
    assert_eq!((d.tcp.listen, d.limits.max_body), (c.tcp.listen, c.limits.max_body));
}

#[test]
fn sections_flags_and_environment_name_the_same_knob() {
    let f = file(
        "sections.toml",
        "backlog = 100\ncpus = [0, 1]\n\
         [ws]\npath = \"/live\"\necho = true\n\
         [limits]\nmax_body = 8192\n\
         [api]\nkey = \"from-file\"\nmax_body = 1000\n\
         [log]\nformat = \"json\"\n",
    );
    let c = serve(&["volley", "serve", "-c", &f, "--backlog", "7"]);
    assert_eq!(c.backlog, 7, "flag beats file");
    assert_eq!(c.cpus, vec![0, 1]);
    assert_eq!(c.ws.path, "/live");
    assert!(c.ws.echo);
    assert_eq!(c.limits.max_body, 8192);
    assert_eq!(c.api.key.as_deref(), Some("from-file"));
    assert_eq!(c.api.max_body, 1000);
    assert_eq!(c.log.format, LogFormat::Json);

    let env = [
        ("VOLLEY_WS_PATH", "/env"),
        ("VOLLEY_CPUS", "1"),
        ("VOLLEY_API_KEY", "from-env"),
    ];
    let c = serve_with(&["volley", "serve", "-c", &f], &env).unwrap().server;
    assert_eq!(c.ws.path, "/env", "environment beats file");
    assert_eq!(c.cpus, vec![1], "a list from the environment replaces the file's");
    assert_eq!(c.api.key.as_deref(), Some("from-env"));
    let c = serve_with(
        &["volley", "serve", "-c", &f, "--ws-path", "/flag", "--cpus", "0"],
        &env,
    )
    .unwrap()
    .server;
    assert_eq!(c.ws.path, "/flag", "flag beats environment");
    assert_eq!(c.cpus, vec![0]);

    let c = serve_with(&["volley", "serve"], &[("VOLLEY_CONFIG", &f)])
        .unwrap()
        .server;
    assert_eq!(c.ws.path, "/live", "VOLLEY_CONFIG names the file");
}

#[test]
fn old_flat_keys_flags_and_variables_keep_working_with_a_note() {
    let f = file(
        "flat.toml",
        "max_body = 8192\nhttp_listen = \"127.0.0.1:9\"\nlog_format = \"json\"\n",
    );
    let s = serve_with(&["volley", "serve", "-c", &f], &[("VOLLEY_MAX_PUSH_BODY", "100")]).unwrap();
    assert_eq!(s.server.limits.max_body, 8192);
    assert_eq!(s.server.api.listen, "127.0.0.1:9".parse().unwrap());
    assert_eq!(s.server.log.format, LogFormat::Json);
    assert_eq!(s.server.api.max_push_body, 100);
    let notes = s.notes.join("\n");
    for want in [
        "key `max_body` is now `max_body` under [limits]",
        "key `http_listen` is now `listen` under [api]",
        "VOLLEY_MAX_PUSH_BODY is now VOLLEY_API_MAX_PUSH_BODY",
    ] {
        assert!(notes.contains(want), "{want:?} missing from {notes}");
    }
    // Old flags are aliases of the new ones.
    let c = serve(&[
        "volley",
        "serve",
        "--http-listen",
        "127.0.0.1:1",
        "--max-http-body",
        "77",
        "--heartbeat-timeout-secs",
        "3",
        "--log",
        "debug",
    ]);
    assert_eq!(c.api.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(c.api.max_body, 77);
    assert_eq!(c.client.heartbeat_timeout_secs, 3);
    assert_eq!(c.log.level, "debug");
    // A new variable wins over its old name.
    let c = serve_with(
        &["volley", "serve"],
        &[("VOLLEY_MAX_HTTP_BODY", "1"), ("VOLLEY_API_MAX_BODY", "2")],
    )
    .unwrap()
    .server;
    assert_eq!(c.api.max_body, 2);
}

#[test]
fn unknown_keys_and_sections_are_refused_by_name() {
    for (text, want) in [
        ("no_such_knob = 1\n", "unknown key `no_such_knob`"),
        ("[ws]\nno_such = 1\n", "unknown key `no_such` in [ws]"),
        ("[tls]\ncert = \"x\"\n", "unknown section [tls]"),
        // A sectioned knob's flag name is not a top-level key.
        ("ws_path_x = 1\n", "unknown key `ws_path_x`"),
        ("[ws]\npath = { a = 1 }\n", "`path` in [ws]: unsupported value"),
    ] {
        let f = file("bad.toml", text);
        let e = serve_with(&["volley", "serve", "-c", &f], &[]).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn the_default_reads_no_environment() {
    // `Config::default()` must not see VOLLEY_* variables: the layering is
    // the only place that reads them. Whatever this process's environment
    // holds, the default is the embedded one.
    let d = Config::default();
    assert_eq!(d.api.key, None);
    assert_eq!(d.limits.max_body, 4096);
    assert_eq!(d.client.heartbeat_timeout_secs, 600);
}

#[test]
fn validation_names_the_knob() {
    let bad = |edit: fn(&mut Config), knob: &str| {
        let mut c = Config::default();
        edit(&mut c);
        let e = c.validate().unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { knob: k, .. } if *k == knob),
            "{knob}: {e}"
        );
    };
    bad(|c| c.limits.max_body = 10, "[limits] max_body");
    bad(
        |c| c.client.handshake_timeout_secs = 0,
        "[client] handshake_timeout_secs",
    );
    bad(|c| c.api.key = Some(String::new()), "[api] key");
    bad(|c| c.limits.outbound_limit = 100, "[limits] outbound_limit");
    bad(|c| c.limits.outbound_budget = 1000, "[limits] outbound_budget");
    bad(|c| c.limits.socket_sndbuf = 1 << 31, "[limits] socket_sndbuf");
    bad(
        |c| {
            c.ws.echo = true;
            c.ws.echo_path = c.ws.path.clone()
        },
        "[ws] echo_path",
    );
    bad(|c| c.shards = 5000, "shards");
    bad(|c| c.client.flush_delay_ms = 1001, "[client] flush_delay_ms");
    let open: std::net::SocketAddr = "0.0.0.0:3111".parse().unwrap();
    bad(|c| c.api.listen = "0.0.0.0:3111".parse().unwrap(), "[api] listen");
    bad(
        |c| c.api.publish_listen = "[::]:3112".parse().unwrap(),
        "[api] publish_listen",
    );
    bad(|c| c.auth.jwt_public_key = vec!["k.pem".into()], "[auth] mode");
    bad(|c| c.api.header_timeout_secs = 0, "[api] header_timeout_secs");
    bad(|c| c.api.max_conns = 0, "[api] max_conns");
    bad(
        |c| {
            c.ws.echo = true;
            c.ws.listen = "0.0.0.0:3102".parse().unwrap();
        },
        "[ws] echo",
    );
    let mut keyed = Config::default();
    (keyed.api.listen, keyed.api.key) = (open, Some("key".into()));
    keyed.validate().expect("a keyed API may listen anywhere");
    keyed.auth.mode = AuthMode::Jwt;
    keyed.auth.jwt_secret = vec!["s".repeat(32)];
    keyed.auth.dev_tokens = true;
    let e = keyed.validate().unwrap_err().to_string();
    assert!(e.contains("[auth] dev_tokens"), "{e}");
}

#[test]
fn careless_but_runnable_settings_are_warned_about() {
    let c = Config::default();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("[auth] mode is off"), "{w:?}");
    let mut c = Config::default();
    c.limits.max_conns_per_ip = 0;
    c.auth.mode = AuthMode::Jwt;
    let w = c.warnings();
    assert!(w.len() == 1 && w[0].contains("max_conns_per_ip"), "{w:?}");
    c.tcp.listen = "127.0.0.1:3101".parse().unwrap();
    c.ws.listen = "127.0.0.1:3102".parse().unwrap();
    assert!(c.warnings().is_empty(), "nothing to warn about on loopback");
}

#[test]
fn history_overrides_pick_the_longest_prefix() {
    let f = file(
        "history.toml",
        "[history]\nmessages = 10\noverrides = [\"chat://=1000:3600:1048576\", \"chat://vip/=2000:60:10\", \"tmp://=off\"]\n",
    );
    let c = serve(&["volley", "serve", "-c", &f]);
    c.validate().unwrap();
    let h = &c.history;
    assert_eq!(h.policy("live://1").messages, 10);
    assert_eq!(h.policy("chat://1").messages, 1000);
    assert_eq!(h.policy("chat://vip/1").max_age, 60);
    assert_eq!(h.policy("tmp://x"), HistoryPolicy::OFF);
    let c = serve(&["volley", "serve", "--history-overrides", "a=off"]);
    assert_eq!(c.history.policy("ab"), HistoryPolicy::OFF);
    for bad in ["x", "x=1:2", "x=a:b:c", "x=1:99999999999:3"] {
        let e = serve_with(&["volley", "serve", "--history-overrides", bad], &[]).unwrap_err();
        assert!(
            e.to_string().contains("expected PREFIX") || e.to_string().contains("too large"),
            "{bad}: {e}"
        );
    }
    let c = serve(&["volley", "serve", "--history-overrides", "x=5:0:10"]);
    assert!(c.validate().unwrap_err().to_string().contains("[history]"));
}

#[test]
fn redis_urls_repeat_and_each_layer_replaces_the_one_below() {
    assert!(
        serve(&["volley", "serve"]).redis.urls.is_empty(),
        "single node by default"
    );
    let f = file("redis.toml", "[redis]\nurls = [\"redis://a:1\", \"redis://b:2\"]\n");
    let c = serve(&["volley", "serve", "-c", &f]);
    assert_eq!(c.redis.urls, ["redis://a:1", "redis://b:2"]);
    c.validate().unwrap();
    let env = [("VOLLEY_REDIS_URLS", "redis://e:1,redis://e:2")];
    let c = serve_with(&["volley", "serve", "-c", &f], &env).unwrap().server;
    assert_eq!(
        c.redis.urls,
        ["redis://e:1", "redis://e:2"],
        "environment replaces the file"
    );
    let c = serve_with(
        &[
            "volley",
            "serve",
            "-c",
            &f,
            "--redis-url",
            "redis://x:1",
            "--redis-url=redis://y:2",
        ],
        &env,
    )
    .unwrap()
    .server;
    assert_eq!(
        c.redis.urls,
        ["redis://x:1", "redis://y:2"],
        "repeated flags add up and replace both"
    );
    let c = serve(&["volley", "serve", "--redis-url", "127.0.0.1:6379"]);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("[redis] urls") && e.contains("redis://"), "{e}");
}

#[test]
fn rust_log_sets_the_log_filter_below_volley_log_level_and_the_flag() {
    let level = |args: &[&str], env: &[(&str, &str)]| serve_with(args, env).unwrap().server.log.level;
    assert_eq!(level(&["volley", "serve"], &[]), "info");
    let rust_log = ("RUST_LOG", "volley=debug");
    assert_eq!(level(&["volley", "serve"], &[rust_log]), "volley=debug");
    assert_eq!(
        level(&["volley", "serve"], &[rust_log, ("VOLLEY_LOG_LEVEL", "warn")]),
        "warn"
    );
    assert_eq!(
        level(&["volley", "serve", "--log-level", "error"], &[rust_log]),
        "error"
    );
    let f = file("rust_log.toml", "[log]\nlevel = \"trace\"\n");
    assert_eq!(
        level(&["volley", "serve", "-c", &f], &[rust_log]),
        "volley=debug",
        "beats the file"
    );
}

fn config_text(args: &[&str], env: &[(&str, &str)]) -> String {
    let env: Vec<(String, OsString)> = env.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    let cli = parse_with_env(args.iter().copied(), |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .unwrap();
    let Cmd::Config(c) = cli.cmd else { panic!("not config") };
    c.text
}

#[test]
fn the_example_file_names_every_knob_at_its_default_and_changes_nothing() {
    let text = config_text(&["volley", "config", "--example"], &[]);
    let f = file("example.toml", &text);
    let read = serve_with(&["volley", "serve", "-c", &f], &[]).unwrap();
    assert_eq!(format!("{:?}", read.server), format!("{:?}", Config::default()));
    assert!(read.notes.is_empty(), "{:?}", read.notes);

    // Every flag of `serve` is there: its line of names, and its key at its
    // default in its section (commented out only where there is none).
    let table: toml::Table = text.parse().unwrap();
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").unwrap();
    let mut checked = 0;
    for a in serve.get_arguments() {
        let flag = a.get_long().unwrap();
        if flag == "config" {
            continue;
        }
        let env = format!("VOLLEY_{}", flag.replace('-', "_").to_ascii_uppercase());
        assert!(text.contains(&format!("# --{flag}, {env}\n")), "{flag}: names");
        let section = a.get_help_heading().map(|h| h.trim_matches(['[', ']']));
        let key = match section {
            Some(s) => flag.strip_prefix(&format!("{s}-")).unwrap().replace('-', "_"),
            None => flag.replace('-', "_"),
        };
        let within = match section {
            Some(s) => table[s].as_table().unwrap(),
            None => &table,
        };
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into())
            .collect();
        match within.get(&key) {
            Some(toml::Value::Array(items)) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|v| v.to_string().trim_matches('"').to_string())
                    .collect();
                assert_eq!(items, defaults, "{flag}");
            }
            Some(v) => assert_eq!(v.to_string().trim_matches('"'), defaults[0], "{flag}"),
            None => {
                assert!(defaults.is_empty(), "{flag}: left out but has a default");
                assert!(text.contains(&format!("# {key} =   (unset by default)")), "{flag}");
            }
        }
        checked += 1;
    }
    assert!(checked > 60, "{checked} knobs");
}

#[test]
fn config_print_shows_what_serve_would_run_with_and_masks_secrets() {
    let f = file("print.toml", "[ws]\npath = \"/from-file\"\n[limits]\nmax_body = 777\n");
    let env = [("VOLLEY_API_KEY", "hunter2-key"), ("VOLLEY_LIMITS_MAX_BODY", "888")];
    let args = [
        "volley",
        "config",
        "--print",
        "-c",
        &f,
        "--redis-url",
        "redis://:pw-in-url@127.0.0.1:6390/2",
        "--auth-jwt-secret",
        "a-secret-of-at-least-thirty-two-bytes!!",
    ];
    let text = config_text(&args, &env);
    assert!(text.contains(&format!("file {}", &*f)), "{text}");
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(table["ws"]["path"].as_str(), Some("/from-file"));
    assert_eq!(
        table["limits"]["max_body"].as_integer(),
        Some(888),
        "environment beats file"
    );
    assert_eq!(table["api"]["key"].as_str(), Some("(set)"));
    assert_eq!(table["auth"]["jwt_secret"].as_array().unwrap().len(), 1);
    assert_eq!(table["redis"]["urls"][0].as_str(), Some("redis://127.0.0.1:6390/2"));
    for secret in ["hunter2", "pw-in-url", "a-secret-of"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    assert_eq!(table["tcp"]["listen"].as_str(), Some("0.0.0.0:3101"), "defaults too");
    assert!(
        parse_with_env(["volley", "config"], |_| None).is_err(),
        "--example or --print"
    );
}

#[test]
fn the_start_summary_says_what_is_in_force_without_secrets() {
    let lines = summary(&Config::default()).join("\n");
    for part in [
        "TCP clients on 0.0.0.0:3101",
        "WebSocket clients on ws://0.0.0.0:3102/sub",
        "HTTP API on http://127.0.0.1:3111 (no API key",
        "TCP publishers on 127.0.0.1:3112",
        "auth: off",
        "storage: on disk in volley-data (each publish answered once on disk): history 100 messages, 300 s, 256 KiB per room",
        "inboxes 100 pushes, 256 KiB, 86400 s per user",
        "cluster: off",
    ] {
        assert!(lines.contains(part), "{part}:\n{lines}");
    }
    assert!(!lines.contains("dev tokens"), "{lines}");
    let mut c = Config::default();
    c.storage.mode = crate::config::StorageMode::Memory;
    assert!(summary(&c)
        .join("\n")
        .contains("storage: in memory, lost on restart: history"));
    c.api.key = Some("hunter2-key".into());
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt_secret = vec!["a-secret-of-at-least-thirty-two-bytes!!".into()];
    c.auth.dev_tokens = true;
    c.redis.urls = vec!["redis://:pw-in-url@10.0.0.9:6390/2".into()];
    c.history.messages = 0;
    let lines = summary(&c).join("\n");
    for part in [
        "(an API key is set)",
        "auth: jwt (1 HS256 secret(s), 0 public key file(s)",
        "dev tokens: on",
        "history off",
        "cluster: on, through 1 Redis instance(s): redis://10.0.0.9:6390/2",
    ] {
        assert!(lines.contains(part), "{part}:\n{lines}");
    }
    for secret in ["hunter2", "pw-in-url", "a-secret-of"] {
        assert!(!lines.contains(secret), "{secret}:\n{lines}");
    }
}

#[test]
fn old_flag_names_work_and_say_their_new_name() {
    let s = serve_with(
        &[
            "volley",
            "serve",
            "--max-body",
            "1000",
            "--redis-url",
            "redis://127.0.0.1:6390",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(s.server.limits.max_body, 1000);
    assert_eq!(s.server.redis.urls, vec!["redis://127.0.0.1:6390".to_string()]);
    assert!(
        s.notes
            .contains(&"flag --max-body is now --limits-max-body".to_string()),
        "{:?}",
        s.notes
    );
    assert!(
        s.notes.contains(&"flag --redis-url is now --redis-urls".to_string()),
        "{:?}",
        s.notes
    );
    let s = serve_with(&["volley", "serve", "--limits-max-body", "1000"], &[]).unwrap();
    assert!(s.notes.is_empty(), "{:?}", s.notes);
}

#[test]
fn a_bad_value_is_blamed_on_the_file_key_or_variable_that_set_it() {
    let f = file("bad.toml", "[limits]\nmax_body = \"abc\"\n[log]\nformat = \"xml\"\n");
    let e = serve_with(&["volley", "serve", "-c", &f], &[]).unwrap_err().to_string();
    assert!(e.starts_with(&format!("config file {}: ", &*f)), "{e}");
    assert!(e.contains("`max_body` in [limits]: \"abc\" is not valid"), "{e}");
    let f = file("bad_enum.toml", "[log]\nformat = \"xml\"\n");
    let e = serve_with(&["volley", "serve", "-c", &f], &[]).unwrap_err().to_string();
    assert!(
        e.contains("`format` in [log]: \"xml\" is not valid: expected one of text, json"),
        "{e}"
    );

    let e = serve_with(&["volley", "serve"], &[("VOLLEY_API_LISTEN", "localhost:3111")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("environment variable VOLLEY_API_LISTEN: \"localhost:3111\""),
        "{e}"
    );
    assert!(e.contains("is not an IP:port; write e.g. 127.0.0.1:3101"), "{e}");

    // A flag's own bad value stays the flag's error.
    let e = serve_with(&["volley", "serve", "--tcp-listen", "localhost:3101"], &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Args(_)), "{e}");
    assert!(e.to_string().contains("--tcp-listen"), "{e}");
    assert!(
        e.to_string().contains("host names such as localhost are not resolved"),
        "{e}"
    );
}
