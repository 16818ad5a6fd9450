//! `volley check-host`: what on this host is not tuned for many connections,
//! and how to fix it.
//!
//! Runs once, on the main thread, before (or instead of) serving; it only
//! reads `/proc` and resource limits. Reading (`HostFacts::read`) is kept
//! apart from judging (`checks`) so the judgement is unit-tested with made-up
//! hosts. tuning/README.md explains each knob and what it costs.

use std::fmt::Write as _;

/// What was read from the host; `None` where the value is not available.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: (u64, u64),
    /// RLIMIT_MEMLOCK soft limit in bytes (`u64::MAX` = unlimited).
    pub memlock: u64,
    /// fs.file-max.
    pub file_max: Option<u64>,
    /// fs.nr_open.
    pub nr_open: Option<u64>,
    /// net.core.somaxconn.
    pub somaxconn: Option<u64>,
    /// net.ipv4.tcp_max_syn_backlog.
    pub syn_backlog: Option<u64>,
    /// net.core.netdev_max_backlog.
    pub netdev_backlog: Option<u64>,
    /// net.ipv4.ip_local_port_range.
    pub port_range: Option<(u64, u64)>,
    /// net.netfilter.nf_conntrack_max (absent when conntrack is not loaded).
    pub conntrack_max: Option<u64>,
    /// kernel.io_uring_disabled (absent on kernels without the knob = enabled).
    pub io_uring_disabled: Option<u64>,
    /// Kernel release, e.g. "6.18.44".
    pub kernel: String,
}

fn read_u64s(path: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(path).ok()?;
    s.split_whitespace().map(|w| w.parse().ok()).collect()
}

fn read_u64(path: &str) -> Option<u64> {
    read_u64s(path)?.first().copied()
}

fn rlimit(which: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    unsafe { libc::getrlimit(which, &mut r) };
    let v = |x: libc::rlim_t| if x == libc::RLIM_INFINITY { u64::MAX } else { x };
    (v(r.rlim_cur), v(r.rlim_max))
}

/// Memory this process may use: the host's (`MemTotal`), or its cgroup's
/// limit when that is lower (cgroup v2 `memory.max`; "max" = none).
pub fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = parse_meminfo_total(&meminfo)?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| {
        let path = c.lines().find_map(|l| l.strip_prefix("0::"))?;
        read_u64(&format!("/sys/fs/cgroup{}/memory.max", path.trim_end_matches('/')))
    });
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The outbound budget when the configuration leaves it to the host (`[limits]
/// outbound_budget = 0`): a quarter of `memory_bytes`, 1 GiB if unknown.
pub fn default_outbound_budget() -> usize {
    memory_bytes().map_or(1 << 30, |m| (m / 4) as usize)
}

/// Client connections when the configuration leaves it to the host
/// (`[limits] max_conns = 0`): the open-file limit less `reserve`
/// descriptors for everything else, but at least half of it.
pub fn default_max_conns(reserve: usize) -> usize {
    let nofile = usize::try_from(rlimit(libc::RLIMIT_NOFILE).0).unwrap_or(usize::MAX);
    nofile.saturating_sub(reserve).max(nofile / 2).max(1)
}

impl HostFacts {
    /// Reads this host.
    pub fn read() -> HostFacts {
        HostFacts {
            nofile: rlimit(libc::RLIMIT_NOFILE),
            memlock: rlimit(libc::RLIMIT_MEMLOCK).0,
            file_max: read_u64("/proc/sys/fs/file-max"),
            nr_open: read_u64("/proc/sys/fs/nr_open"),
            somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
            syn_backlog: read_u64("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            netdev_backlog: read_u64("/proc/sys/net/core/netdev_max_backlog"),
            port_range: read_u64s("/proc/sys/net/ipv4/ip_local_port_range")
                .and_then(|v| Some((*v.first()?, *v.get(1)?))),
            conntrack_max: read_u64("/proc/sys/net/netfilter/nf_conntrack_max"),
            io_uring_disabled: read_u64("/proc/sys/kernel/io_uring_disabled"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Tuned enough for the target.
    Ok,
    /// Works, but caps or slows the target.
    Warn,
    /// volley cannot reach the target (or cannot run) until fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// The knob.
    pub name: &'static str,
    /// Its value here.
    pub have: String,
    /// What the target needs.
    pub want: String,
    /// Verdict.
    pub status: Status,
    /// How to fix it (empty when fine).
    pub fix: String,
}

/// Judges `f` for `conns` concurrent client connections on this host (one
/// volley process; `shards` executors).
pub fn checks(f: &HostFacts, conns: u64, shards: u64) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |name, have: String, want: String, ok: bool, warn_only: bool, fix: String| {
        let status = match (ok, warn_only) {
            (true, _) => Status::Ok,
            (false, true) => Status::Warn,
            (false, false) => Status::Fail,
        };
        let fix = if ok { String::new() } else { fix };
        out.push(Check {
            name,
            have,
            want,
            status,
            fix,
        });
    };
    let fds = conns + 1024;
    add(
        "RLIMIT_NOFILE (soft)",
        f.nofile.0.to_string(),
        format!(">= {fds}"),
        f.nofile.0 >= fds,
        false,
        format!(
            "LimitNOFILE={fds} in the systemd unit (tuning/volley.service), or `ulimit -n {fds}` (hard limit now {})",
            f.nofile.1
        ),
    );
    if let Some(n) = f.nr_open {
        add(
            "fs.nr_open",
            n.to_string(),
            format!(">= {fds}"),
            n >= fds,
            false,
            format!(
                "sysctl -w fs.nr_open={} (tuning/sysctl.d/99-volley.conf)",
                fds.max(1 << 20)
            ),
        );
    }
    if let Some(n) = f.file_max {
        let want = 2 * conns + 65_536;
        add(
            "fs.file-max",
            n.to_string(),
            format!(">= {want} (server and clients on one host count twice)"),
            n >= want,
            true,
            format!("sysctl -w fs.file-max={want}"),
        );
    }
    add(
        "RLIMIT_MEMLOCK",
        if f.memlock == u64::MAX {
            "unlimited".into()
        } else {
            format!("{} KiB", f.memlock / 1024)
        },
        format!(
            ">= {} KiB ({shards} shards x 512 KiB; glommio refuses below 512 KiB)",
            512 * shards.max(1)
        ),
        f.memlock >= (512 << 10) * shards.max(1),
        f.memlock >= 512 << 10,
        "LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited`".into(),
    );
    match f.io_uring_disabled {
        Some(0) | None => add(
            "io_uring",
            "enabled".into(),
            "enabled".into(),
            true,
            false,
            String::new(),
        ),
        Some(v) => add(
            "io_uring",
            format!("kernel.io_uring_disabled = {v}"),
            "0".into(),
            false,
            false,
            "sysctl -w kernel.io_uring_disabled=0 (volley runs on io_uring)".into(),
        ),
    }
    if let Some(n) = f.somaxconn {
        add(
            "net.core.somaxconn",
            n.to_string(),
            ">= 65535 (volley's listen backlog)".into(),
            n >= 65_535,
            true,
            "sysctl -w net.core.somaxconn=65535; a reconnect storm otherwise overflows the accept queue and clients wait 1-3 s for SYN retries".into(),
        );
    }
    if let Some(n) = f.syn_backlog {
        add(
            "net.ipv4.tcp_max_syn_backlog",
            n.to_string(),
            ">= 65535".into(),
            n >= 65_535,
            true,
            "sysctl -w net.ipv4.tcp_max_syn_backlog=65535".into(),
        );
    }
    if let Some(n) = f.netdev_backlog {
        add(
            "net.core.netdev_max_backlog",
            n.to_string(),
            ">= 16384".into(),
            n >= 16_384,
            true,
            "sysctl -w net.core.netdev_max_backlog=16384 (packet bursts, loopback included)".into(),
        );
    }
    if let Some((lo, hi)) = f.port_range {
        let n = hi.saturating_sub(lo) + 1;
        add(
            "net.ipv4.ip_local_port_range",
            format!("{lo} {hi} ({n} ports)"),
            ">= 60000 ports (for load generators and proxies on this host)".into(),
            n >= 60_000,
            true,
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into(),
        );
    }
    if let Some(n) = f.conntrack_max {
        add(
            "net.netfilter.nf_conntrack_max",
            n.to_string(),
            format!(">= {conns} (matters only while conntrack hooks are active, e.g. with NAT rules)"),
            n >= conns,
            true,
            format!(
                "sysctl -w net.netfilter.nf_conntrack_max={}, or exempt the client port from conntrack (NOTRACK); a full table drops new connections",
                conns.next_power_of_two()
            ),
        );
    }
    out
}

/// The report as text (one line per check).
pub fn render(f: &HostFacts, checks: &[Check], conns: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "volley check-host: target {conns} connections per process, kernel {}",
        f.kernel
    );
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(s, "[{tag}] {:<32} {} (want {})", c.name, c.have, c.want);
        if !c.fix.is_empty() {
            let _ = writeln!(s, "       fix: {}", c.fix);
        }
    }
    let bad: Vec<&Check> = checks.iter().filter(|c| c.status != Status::Ok).collect();
    if bad.is_empty() {
        let _ = writeln!(s, "host is tuned for the target");
        return s;
    }
    let _ = writeln!(s, "{} item(s) to fix; tuning/README.md explains each", bad.len());
    let (script, by_hand): (Vec<&Check>, Vec<&Check>) = bad.iter().partition(|c| by_tune_sh(c.name));
    let names = |cs: &[&Check]| cs.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    if !script.is_empty() {
        let _ = writeln!(s, "tuning/tune.sh apply sets: {}", names(&script));
    }
    if !by_hand.is_empty() {
        let _ = writeln!(
            s,
            "not set by tuning/tune.sh apply (see each fix above): {}",
            names(&by_hand)
        );
    }
    s
}

/// The sysctl file `tuning/tune.sh apply` applies.
const TUNE_SH_SETS: &str = include_str!("../tuning/sysctl.d/99-volley.conf");

/// Whether `tuning/tune.sh apply` sets the check named `name` (a sysctl
/// key of its file).
fn by_tune_sh(name: &str) -> bool {
    TUNE_SH_SETS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split('=').next())
        .any(|k| k.trim() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24600000 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24_600_000 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }

    fn tuned() -> HostFacts {
        HostFacts {
            nofile: (2_000_000, 2_000_000),
            memlock: u64::MAX,
            file_max: Some(4_000_000),
            nr_open: Some(2_097_152),
            somaxconn: Some(65_535),
            syn_backlog: Some(65_535),
            netdev_backlog: Some(16_384),
            port_range: Some((1024, 65_535)),
            conntrack_max: None,
            io_uring_disabled: Some(0),
            kernel: "6.18".into(),
        }
    }

    #[test]
    fn a_tuned_host_passes_and_this_dev_host_does_not() {
        let f = tuned();
        assert!(checks(&f, 1_000_000, 2).iter().all(|c| c.status == Status::Ok));

        // The development host: 20,000 files, somaxconn 4096, memlock 8 MiB.
        let dev = HostFacts {
            nofile: (20_000, 20_000),
            memlock: 8 << 20,
            somaxconn: Some(4096),
            conntrack_max: Some(262_144),
            ..tuned()
        };
        let c = checks(&dev, 1_000_000, 2);
        let status = |n: &str| c.iter().find(|c| c.name == n).unwrap().status;
        assert_eq!(status("RLIMIT_NOFILE (soft)"), Status::Fail);
        assert_eq!(status("net.core.somaxconn"), Status::Warn);
        assert_eq!(status("net.netfilter.nf_conntrack_max"), Status::Warn);
        assert_eq!(status("RLIMIT_MEMLOCK"), Status::Ok);
        let text = render(&dev, &c, 1_000_000);
        assert!(text.contains("fix: LimitNOFILE=1001024"), "{text}");
        // What the script sets, and what it does not, named apart.
        assert!(
            text.contains("tuning/tune.sh apply sets: net.core.somaxconn\n"),
            "{text}"
        );
        assert!(
            text.contains("not set by tuning/tune.sh apply (see each fix above): RLIMIT_NOFILE (soft), net.netfilter.nf_conntrack_max\n"),
            "{text}"
        );
        assert!(checks(&dev, 10_000, 2).iter().all(|c| c.status != Status::Fail));
    }

    #[test]
    fn io_uring_disabled_and_tiny_memlock_fail() {
        let f = HostFacts {
            memlock: 64 << 10,
            io_uring_disabled: Some(2),
            ..tuned()
        };
        let c = checks(&f, 1000, 2);
        assert_eq!(c.iter().filter(|c| c.status == Status::Fail).count(), 2);
    }
}
