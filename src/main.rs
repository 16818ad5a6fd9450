//! The `volley` binary: command line → `Config` → `Server::start`, then wait
//! for SIGINT/SIGTERM and shut down cleanly; or one of the tools beside the
//! server (`check-host`, `config`, `sub`, `drain`, `upgrade`), which print
//! and exit. SIGUSR2 upgrades the running server in place (`handoff`); a
//! process started by an upgrade takes over instead of binding.
//!
//! Under systemd (`Type=notify`, tuning/volley.service) the server says
//! READY=1 once it serves, STOPPING=1 when told to stop, and, when an
//! upgrade has handed everything over, MAINPID= of the new process before
//! this one exits: the service lives on in it instead of being stopped.

use anyhow::Context;
use std::io::IsTerminal;
use volley::config::{parse_cli, Cmd, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = match parse_cli(std::env::args_os()) {
        Ok(c) => c,
        Err(volley::config::ConfigError::Args(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let serve = match cli.cmd {
        Cmd::Serve(s) => s,
        Cmd::CheckHost(a) => {
            let facts = volley::host::HostFacts::read();
            let shards = if a.shards == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get()) as u64
            } else {
                a.shards
            };
            let checks = volley::host::checks(&facts, a.conns, shards);
            print!("{}", volley::host::render(&facts, &checks, a.conns));
            let tuned = checks.iter().all(|c| c.status == volley::host::Status::Ok);
            std::process::exit(if tuned { 0 } else { 1 });
        }
        Cmd::Config(c) => {
            print!("{}", c.text);
            return Ok(());
        }
        Cmd::Sub(a) => return volley::sub::run(&a, &mut std::io::stdout().lock()),
        Cmd::Drain(d) => return volley::ctl::drain(&d, &mut std::io::stdout().lock()),
        Cmd::Upgrade(u) => return volley::ctl::upgrade(&u, &mut std::io::stdout().lock()),
    };
    let config = serve.server;
    let notes = serve.notes;
    if !config.transparent_hugepages {
        // Process-wide and inherited by the shard threads; pages touched so
        // far (a few, at start-up) keep whatever they got.
        // SAFETY: plain prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            eprintln!(
                "volley: cannot disable transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level).context("bad --log-level filter")?;
    // Colour only for a person at a terminal: journald, files and pipes get
    // plain text (and NO_COLOR is honoured, https://no-color.org).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => sub.json().init(),
        LogFormat::Text => sub.init(),
    }
    match &serve.config {
        Some(path) => tracing::info!("configuration: {}, then the environment and flags", path.display()),
        None => tracing::info!("configuration: no file; the embedded defaults, the environment and flags"),
    }
    for note in notes {
        tracing::warn!("{note}");
    }
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
    use volley::handoff::process;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR2]).context("cannot install signal handlers")?;
    // The binary an upgrade starts: this one, as it was named when it
    // started (a deploy may replace the file since), unless the API names
    // another beside it.
    let own = std::env::current_exe().context("cannot tell this binary's path")?;
    process::enable(own);
    let handle = if std::env::var_os(process::ENV).is_some() {
        match process::take_over(config) {
            Ok(h) => {
                tracing::info!("took over from the previous process");
                h
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot take over; the previous process serves on");
                std::process::exit(1);
            }
        }
    } else {
        let handle = volley::Server::start(config).context("cannot start server")?;
        tell_systemd(&[NotifyState::Ready]);
        handle
    };
    for sig in signals.forever() {
        if sig != SIGUSR2 {
            tracing::info!(signal = sig, "shutting down");
            tell_systemd(&[NotifyState::Stopping]);
            break;
        }
        // Set here too: SIGUSR2 may come from outside (`request` sets it
        // for the API).
        process::status().running = true;
        let binary = process::next_binary();
        tracing::info!(binary = %binary.display(), "upgrading: handing every connection to the new process");
        match process::upgrade(&handle, &binary) {
            Ok(t) => {
                tracing::info!(
                    connections = t.connections,
                    hello_ms = t.hello.as_millis() as u64,
                    quiet_ms = t.quiet.as_millis() as u64,
                    adopted_ms = t.adopted.as_millis() as u64,
                    "handed over; this process ends"
                );
                // The new process is the service now; said before this
                // one exits, or systemd would take the exit for the
                // service's end and stop the new one with it.
                tell_systemd(&[NotifyState::MainPid(t.pid)]);
                handle.let_go();
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade failed; serving on");
                let mut s = process::status();
                s.running = false;
                s.failed += 1;
                s.last_error = Some(e);
            }
        }
    }
    handle.shutdown();
    handle.join();
    tracing::info!("stopped");
    Ok(())
}

use sd_notify::NotifyState;

/// Tells the service manager `state`, when one started us with a
/// notification socket (NOTIFY_SOCKET); otherwise nothing.
fn tell_systemd(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
