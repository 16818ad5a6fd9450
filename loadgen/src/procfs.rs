//! What the load generator reads from /proc: memory and CPU of processes
//! and of the machine, kernel socket memory, and — when a ramp stops moving
//! — what the threads on either side are doing and how full each target's
//! accept queue is.
//!
//! Linux only; every reader returns `None` or zero for what it cannot read
//! (a process that exited), never fails the run.

use std::net::SocketAddr;

/// (rss bytes, cpu ticks) of a process.
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss_kb * 1024, ticks))
}

/// (rss bytes, cpu ticks) summed over processes; None if any is gone.
pub fn procs_usage(pids: &[u32]) -> Option<(u64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .try_fold((0, 0), |(r, t), &p| proc_usage(p).map(|(r2, t2)| (r + r2, t + t2)))
}

/// Kernel memory the TCP stack holds: slab plus socket buffer pages, bytes.
pub fn kernel_net_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|w| *w == "mem")
                .and_then(|i| f.get(i + 1)?.parse().ok())
        })
        .unwrap_or(0);
    slab_kb * 1024 + tcp_pages * 4096
}

/// (busy, total) jiffies of the whole machine.
pub fn machine_cpu() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

pub fn tick_secs() -> f64 {
    // SAFETY: sysconf has no memory effects.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// This process's RSS, bytes.
pub fn self_rss() -> u64 {
    proc_usage(std::process::id()).map_or(0, |u| u.0)
}

/// One thread of a process, as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadState {
    /// Thread id.
    pub tid: u32,
    /// Its name (`comm`).
    pub name: String,
    /// Scheduler state letter (R running, S sleeping, D disk wait...).
    pub state: char,
    /// The system call it is in (number), if blocked in one.
    pub syscall: Option<i64>,
}

/// The threads of `pid` whose name starts with `prefix`.
pub fn threads(pid: u32, prefix: &str) -> Vec<ThreadState> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<ThreadState> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?.trim().to_string();
            if !name.starts_with(prefix) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
            // "running" or "-1 ..." (not in a call) or "<nr> <args...>".
            let syscall = std::fs::read_to_string(e.path().join("syscall"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
                .filter(|&n| n >= 0);
            Some(ThreadState {
                tid,
                name,
                state,
                syscall,
            })
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// A system call number, named where the load generator's diagnosis cares.
pub fn syscall_name(nr: i64) -> String {
    match nr {
        0 => "read".into(),
        1 => "write".into(),
        7 => "poll".into(),
        23 => "select".into(),
        35 => "nanosleep".into(),
        43 => "accept".into(),
        46 => "sendmsg".into(),
        202 => "futex".into(),
        230 => "clock_nanosleep".into(),
        232 => "epoll_wait".into(),
        281 => "epoll_pwait".into(),
        288 => "accept4".into(),
        426 => "io_uring_enter".into(),
        n => format!("syscall {n}"),
    }
}

/// Connections waiting to be accepted on `addr`, summed over every socket
/// listening there (one per shard with SO_REUSEPORT). IPv4 only (loopback
/// benchmarks).
pub fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(a) = addr else { return None };
    // /proc/net/tcp: "sl local rem st tx_queue:rx_queue ..."; for a listener
    // (st 0A) rx_queue is the accept queue's length.
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port());
    // Listeners come first; with a million connections the rest is hundreds
    // of megabytes, so stop at the first socket that is not listening.
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open("/proc/net/tcp").ok()?);
    let mut found = None;
    for line in file.lines().skip(1) {
        let line = line.ok()?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        if f[3] != "0A" {
            break;
        }
        if f[1] != want {
            continue;
        }
        let (_, rx) = f[4].split_once(':')?;
        found = Some(found.unwrap_or(0) + u64::from_str_radix(rx, 16).ok()?);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_listeners_are_readable() {
        assert!(self_rss() > 0);
        let (rss, _) = proc_usage(std::process::id()).unwrap();
        assert!(rss > 0);
        let me = threads(std::process::id(), "");
        assert!(!me.is_empty());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _waiting = std::net::TcpStream::connect(addr).unwrap();
        let waiting = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while accept_queue(addr) != Some(1) {
            assert!(std::time::Instant::now() < waiting, "{:?}", accept_queue(addr));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(syscall_name(426), "io_uring_enter");
    }
}
