//! `volley upgrade` between two processes: the running one ("old") starts
//! the next binary with one end of a socket pair, and the two hold the
//! conversation of `wire` over it.
//!
//! ```text
//! old: spawn BINARY (same arguments, VOLLEY_HANDOFF_FD=3 is its end)
//! new: configuration checked ─ Hello ─────────────────────────────> old
//! old: version and shard count the same? else Refuse (new exits 1)
//! old: hand_off (accepts and reads nothing from here) ─ Keys, Listeners,
//!      Shard × n (with every socket) ───────────────────────────> new
//! new: Server::adopt (serves the connections; the durable store follows
//!      once the old lets go of it) ─ Adopted ───────────────────> old
//! old: let_go, exit 0
//! ```
//!
//! Failure is safe until `Adopted`: if the new binary does not start,
//! refuses its configuration, speaks another version, or dies before it
//! says `Adopted`, the old one resumes (`ServerHandle::resume`) and says
//! why; its clients notice nothing but a pause. One upgrade at a time.
//!
//! Runs on the `volley` binary's main thread (blocking), in each process.

use super::{fds, wire, Adoption};
use crate::config::Config;
use crate::shard::handoff::{decode, encode, VERSION};
use crate::{Server, ServerHandle};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use wire::Message;

/// The variable that tells a starting process it takes over, and which
/// descriptor is its end of the conversation.
pub const ENV: &str = "VOLLEY_HANDOFF_FD";
/// Test only: a process taking over dies right before it would take the
/// connections (the old one must serve on).
pub const ABORT_ENV: &str = "VOLLEY_TEST_HANDOFF_ABORT";
/// The descriptor number the new process finds its end at.
const CHILD_FD: RawFd = 3;
/// How long the old process waits for the new one at each turn: to say
/// hello (it starts and checks its configuration), and to take over.
const TURN: Duration = Duration::from_secs(60);
/// How long the shards have to go quiet and settle.
const SETTLE: Duration = Duration::from_secs(10);

/// Where the upgrade stands, for `GET /v1/upgrade` and `volley upgrade`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    /// An upgrade runs now.
    pub running: bool,
    /// Why the last one failed, if it did.
    pub last_error: Option<String>,
    /// Upgrades that failed since this process started.
    pub failed: u64,
    /// The binary the running (or last) upgrade started.
    pub binary: Option<String>,
    /// The binary asked for over the API, for the upgrade about to run
    /// (`None`: the process's own).
    #[serde(skip)]
    pub next: Option<PathBuf>,
}

/// This process's upgrade status.
pub static STATUS: std::sync::Mutex<Status> = std::sync::Mutex::new(Status {
    running: false,
    last_error: None,
    failed: 0,
    binary: None,
    next: None,
});

/// The status, locked (a poisoned lock holds plain data, still good).
pub fn status() -> std::sync::MutexGuard<'static, Status> {
    STATUS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set once the process's main thread handles SIGUSR2 (the `volley`
/// binary does; a program embedding the server does not, and SIGUSR2
/// would end it).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The binary this process was started from, as named then.
static OWN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// This process's main thread runs upgrades on SIGUSR2 from now on; its
/// own binary is `own`.
pub fn enable(own: PathBuf) {
    let _ = OWN.set(own);
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The binary the next upgrade starts (taking the one asked for over the
/// API, if any), noted in the status.
pub fn next_binary() -> PathBuf {
    let mut s = status();
    let binary = s.next.take().or_else(|| OWN.get().cloned()).unwrap_or_default();
    s.binary = Some(binary.display().to_string());
    binary
}

/// Why an upgrade was not begun.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Nothing in this process runs upgrades (a program embedding the
    /// server, not the `volley` binary).
    #[error("this process does not run upgrades (only the volley binary does)")]
    NotHere,
    /// One runs already.
    #[error("an upgrade runs already")]
    Running,
    /// The binary asked for may not be started (`binary::allowed`).
    #[error("that binary may not be started: {0}")]
    Binary(String),
}

/// Asks this process's main thread for an upgrade, as SIGUSR2 does: to
/// `binary` if given (and `binary::allowed`), else to its own.
pub fn request(binary: Option<&Path>) -> Result<(), Refused> {
    if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Refused::NotHere);
    }
    let next = match (binary, OWN.get()) {
        (Some(given), Some(own)) => Some(super::binary::allowed(own, given).map_err(Refused::Binary)?),
        _ => None,
    };
    let mut s = status();
    if s.running {
        return Err(Refused::Running);
    }
    s.running = true;
    s.next = next;
    drop(s);
    // SAFETY: raising a signal at this process; no memory involved.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
    Ok(())
}

/// How long each part of a successful upgrade took.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// From the start until the new process said hello (it started and
    /// read its configuration; the old one still served meanwhile).
    pub hello: Duration,
    /// From hello until every shard was quiet and settled and its records
    /// taken: the start of the pause clients see.
    pub quiet: Duration,
    /// From then until the new process said it had adopted everything:
    /// sending, decoding, importing (the rest of the pause).
    pub adopted: Duration,
    /// Connections handed over.
    pub connections: usize,
    /// The new process.
    pub pid: u32,
}

/// Upgrades to `binary`, started with this process's arguments. `Ok`: the
/// new process has everything; let go (`ServerHandle::let_go`) and exit.
/// `Err`: why not; the server serves on as before.
pub fn upgrade(handle: &ServerHandle, binary: &Path) -> Result<Timings, String> {
    let start = std::time::Instant::now();
    let (ours, theirs) = fds::pair().map_err(|e| format!("cannot make the socket pair: {e}"))?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.args(std::env::args_os().skip(1)).env(ENV, CHILD_FD.to_string());
    // SAFETY: between fork and exec only dup2 and close_range, which are
    // async-signal-safe system calls; the duplicate (unlike the original)
    // is not closed on exec.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(theirs_raw, CHILD_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Nothing else of this process goes with it: a socket not
            // marked close-on-exec (an API connection, say) would stay
            // open in the new process, which does not know of it, and its
            // client would wait for an answer forever. Marked, not closed:
            // the pipe that reports a failed exec must stay open until
            // then.
            if libc::syscall(libc::SYS_close_range, CHILD_FD + 1, u32::MAX, CLOSE_RANGE_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    drop(theirs);
    socket2::SockRef::from(&ours)
        .set_read_timeout(Some(TURN))
        .map_err(|e| e.to_string())?;
    let hello = match wire::recv(ours.as_fd()) {
        Ok(Some((m, _))) => m,
        Ok(None) | Err(_) => return Err(gone(&mut child, "before it said hello")),
    };
    let nr = handle.nr_shards() as u32;
    match hello {
        Message::Hello { version, shards, .. } if version == VERSION && shards == nr => {}
        Message::Hello { version, shards, .. } => {
            let reason = if version != VERSION {
                format!("it speaks hand-off version {version}, this process {VERSION}")
            } else {
                format!("it would run {shards} shards, this process runs {nr}")
            };
            let _ = wire::send(ours.as_fd(), &Message::Refuse { reason: reason.clone() }, &[]);
            let _ = child.wait();
            return Err(format!("the new binary cannot take over: {reason}"));
        }
        other => return Err(gone(&mut child, &format!("after {other:?} instead of hello"))),
    }
    let hello = start.elapsed();
    let lent = match handle.lend(SETTLE) {
        Ok(lent) => lent,
        Err(e) => {
            // Some shards may have gone quiet: all serve again.
            let _ = wire::send(ours.as_fd(), &Message::Abort { reason: e.clone() }, &[]);
            handle.resume(SETTLE)?;
            let _ = gone(&mut child, "after the hand-off was called off");
            return Err(format!("the shards did not hand over: {e}"));
        }
    };
    let quiet = start.elapsed() - hello;
    let connections = lent.shards.iter().map(|s| s.1.len()).sum();
    let sent = send_all(&ours, lent);
    let answer = sent.and_then(|()| wire::recv(ours.as_fd()).map_err(|e| e.to_string()));
    match answer {
        Ok(Some((Message::Adopted, _))) => Ok(Timings {
            hello,
            quiet,
            adopted: start.elapsed() - hello - quiet,
            connections,
            pid: child.id(),
        }),
        other => {
            handle.resume(SETTLE)?;
            let why = match other {
                Ok(Some((Message::Abort { reason }, _))) => format!("it could not take over: {reason}"),
                Ok(_) => gone(&mut child, "while taking over"),
                Err(e) => format!("{e}; {}", gone(&mut child, "while taking over")),
            };
            Err(why)
        }
    }
}

/// Why the new process is not there, once it is reaped (or killed after a
/// moment).
fn gone(child: &mut Child, when: &str) -> String {
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            return format!("the new binary ended {when} ({status})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    format!("the new binary did not answer {when}; it was stopped")
}

/// Everything the new process takes over, with the sockets.
fn send_all(sock: &OwnedFd, a: super::local::Lent) -> Result<(), String> {
    let fail = |e: io::Error| format!("cannot hand over: {e}");
    let (tag, secret) = a.keys;
    wire::send(sock.as_fd(), &Message::Keys { tag, secret }, &[]).map_err(fail)?;
    let sockets = a.listeners.iter().map(|(k, s, _)| (*k, *s as u32)).collect();
    let raw: Vec<RawFd> = a.listeners.iter().map(|(_, _, fd)| fd.as_raw_fd()).collect();
    wire::send(sock.as_fd(), &Message::Listeners { sockets }, &raw).map_err(fail)?;
    for (state, raw) in &a.shards {
        let msg = Message::Shard {
            shard: state.shard,
            records: encode(state),
        };
        wire::send(sock.as_fd(), &msg, raw).map_err(fail)?;
    }
    Ok(())
}

/// In a process started by `upgrade` (`ENV` set): says hello, takes
/// everything the old process hands over, and serves it. `Err`: why not
/// (the old process serves on; this one should exit 1).
pub fn take_over(config: Config) -> Result<ServerHandle, String> {
    let fd: RawFd = std::env::var(ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{ENV} does not name a descriptor"))?;
    // Not for the processes this one starts.
    std::env::remove_var(ENV);
    // SAFETY: the old process put its end of the pair at this number for
    // us; nothing else in this process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let n = config.nr_shards();
    let hello = Message::Hello {
        version: VERSION,
        pid: std::process::id(),
        shards: n as u32,
    };
    wire::send(sock.as_fd(), &hello, &[]).map_err(|e| format!("cannot say hello: {e}"))?;
    let next = || -> Result<(Message, Vec<OwnedFd>), String> {
        match wire::recv(sock.as_fd()) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the old process went away".into()),
            Err(e) => Err(format!("cannot hear the old process: {e}")),
        }
    };
    let (tag, secret) = match next()? {
        (Message::Keys { tag, secret }, _) => (tag, secret),
        (Message::Refuse { reason }, _) => return Err(format!("the old process refused: {reason}")),
        (other, _) => return Err(format!("{other:?} instead of the keys")),
    };
    let listeners = match next()? {
        (Message::Listeners { sockets }, fds) if sockets.len() == fds.len() => sockets
            .into_iter()
            .zip(fds)
            .map(|((kind, shard), fd)| (kind, shard as usize, fd))
            .collect(),
        (other, _) => return Err(format!("{other:?} instead of the listeners")),
    };
    let mut shards = Vec::with_capacity(n);
    for i in 0..n {
        match next()? {
            (Message::Shard { shard, records }, fds) if shard as usize == i => {
                let state = decode(&records).ok_or_else(|| format!("shard {i}'s records do not decode"))?;
                shards.push((state, fds));
            }
            (other, _) => return Err(format!("{other:?} instead of shard {i}")),
        }
    }
    if std::env::var_os(ABORT_ENV).is_some() {
        std::process::abort();
    }
    let adoption = Adoption {
        keys: (tag, secret),
        listeners,
        shards,
    };
    match Server::adopt(config, adoption) {
        Ok(handle) => {
            wire::send(sock.as_fd(), &Message::Adopted, &[]).map_err(|e| format!("cannot say adopted: {e}"))?;
            Ok(handle)
        }
        Err(e) => {
            let reason = e.to_string();
            let _ = wire::send(sock.as_fd(), &Message::Abort { reason: reason.clone() }, &[]);
            Err(reason)
        }
    }
}
