//! Where a durable store's files live, and who may use them: the folder
//! (`[storage] dir`), its lock, and which generation of shard folders is
//! current.
//!
//! ```text
//! DIR/LOCK                   flock'ed by the one server using DIR
//! DIR/CURRENT                "volley-store 1 generation G shards N\n" (written whole, renamed into place)
//! DIR/G/shard-I/NNNN.seg     shard I's journal segments in generation G
//! ```
//!
//! A start with the shard count of `CURRENT` continues generation G, each
//! shard replaying its own folder. A start with another count (rooms and
//! users move between shards) begins generation G+1: every new shard
//! replays every folder of G, keeps what it owns, and writes it as a
//! checkpoint into its new folder; once every shard has, `CURRENT` names
//! G+1 and G is removed. A crash before that leaves `CURRENT` at G, and the
//! next start does it again.
//!
//! Runs on the main thread at start, before any shard (blocking file calls
//! are fine there), and at the end of a generation change.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The first line of `CURRENT`, naming the format.
const MAGIC: &str = "volley-store 1";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file call failed.
    #[error("storage dir {dir}: {what}: {source}")]
    Io {
        /// The folder.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Another server holds the lock.
    #[error(
        "storage dir {0} is in use by another volley server (its LOCK is held); give each server its own [storage] dir"
    )]
    Locked(PathBuf),
    /// `CURRENT` is not ours.
    #[error("storage dir {dir}: CURRENT reads {got:?}, not a volley store of this version")]
    Current {
        /// The folder.
        dir: PathBuf,
        /// What it holds.
        got: String,
    },
}

/// One shard's part of a store at start.
#[derive(Debug, Clone)]
pub struct ShardFiles {
    /// Its folder, which its journal writes to.
    pub dir: PathBuf,
    /// Folders to replay, in order, each with its segments (oldest first):
    /// its own folder, or every folder of the previous generation.
    pub replay: Vec<(PathBuf, Vec<u64>)>,
    /// Bytes of the segments to replay, all folders (progress for
    /// `/healthz`; measured here so the shard need not stat files).
    pub bytes: u64,
    /// The store is changing generation (replay keeps only what this
    /// shard owns, and ends with a checkpoint).
    pub moving: bool,
}

/// A store in use: its lock is held as long as this lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
    /// The generation the shards write.
    pub generation: u64,
    /// The previous generation, while the store moves away from it.
    pub from: Option<u64>,
    /// Per shard.
    pub shards: Vec<ShardFiles>,
}

fn io<'a>(dir: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        dir: dir.to_path_buf(),
        what,
        source,
    }
}

/// Opens the store in `dir` for `shards` shards: creates it if missing,
/// takes its lock, and says what each shard replays.
pub fn open(dir: &Path, shards: usize) -> Result<Store, LayoutError> {
    fs::create_dir_all(dir).map_err(io(dir, "cannot create it"))?;
    // Absolute from here on: glommio opens a relative directory against no
    // descriptor at all (EBADF), and `volley-data`, the default, is relative.
    let dir = &fs::canonicalize(dir).map_err(io(dir, "cannot resolve it"))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io(dir, "cannot open LOCK"))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LayoutError::Locked(dir.to_path_buf()));
        }
        return Err(io(dir, "cannot lock LOCK")(e));
    }
    let current = read_current(dir)?;
    let (generation, from) = match current {
        None => {
            write_current(dir, 1, shards)?;
            (1, None)
        }
        Some((g, n)) if n == shards => (g, None),
        Some((g, _)) => (g + 1, Some(g)),
    };
    let gen_dir = dir.join(generation.to_string());
    if from.is_none() {
        // A move that ended after `CURRENT` changed but before the old
        // generation was removed.
        remove_generations_but(dir, generation)?;
    }
    if from.is_some() {
        // A move that did not finish before: start it over.
        if gen_dir.exists() {
            fs::remove_dir_all(&gen_dir).map_err(io(dir, "cannot clear an unfinished generation"))?;
        }
    }
    let old: Vec<(PathBuf, Vec<u64>)> = match from {
        Some(g) => shard_dirs(&dir.join(g.to_string()))?
            .into_iter()
            .map(|d| {
                let segs = crate::disk::driver::list_segments(&d).map_err(io(dir, "cannot list segments"))?;
                Ok((d, segs))
            })
            .collect::<Result<_, LayoutError>>()?,
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(shards);
    for i in 0..shards {
        let d = gen_dir.join(format!("shard-{i}"));
        fs::create_dir_all(&d).map_err(io(dir, "cannot create a shard folder"))?;
        let replay = if from.is_some() {
            old.clone()
        } else {
            let segs = crate::disk::driver::list_segments(&d).map_err(io(dir, "cannot list segments"))?;
            vec![(d.clone(), segs)]
        };
        let bytes = replay
            .iter()
            .flat_map(|(d, segs)| segs.iter().map(move |&n| crate::disk::driver::segment_path(d, n)))
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        out.push(ShardFiles {
            dir: d,
            replay,
            bytes,
            moving: from.is_some(),
        });
    }
    sync_dir(&gen_dir)?;
    sync_dir(dir)?;
    Ok(Store {
        dir: dir.to_path_buf(),
        _lock: lock,
        generation,
        from,
        shards: out,
    })
}

impl Store {
    /// Every shard has written its checkpoint into the new generation:
    /// it becomes current and the old one goes.
    pub fn moved(&mut self) -> Result<(), LayoutError> {
        let Some(old) = self.from.take() else { return Ok(()) };
        write_current(&self.dir, self.generation, self.shards.len())?;
        fs::remove_dir_all(self.dir.join(old.to_string()))
            .map_err(io(&self.dir, "cannot remove the old generation"))?;
        sync_dir(&self.dir)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn remove_generations_but(dir: &Path, keep: u64) -> Result<(), LayoutError> {
    for e in fs::read_dir(dir).map_err(io(dir, "cannot list it"))? {
        let e = e.map_err(io(dir, "cannot list it"))?;
        let old = e.file_name().to_string_lossy().parse::<u64>().is_ok_and(|g| g != keep);
        if old && e.path().is_dir() {
            fs::remove_dir_all(e.path()).map_err(io(dir, "cannot remove an old generation"))?;
        }
    }
    Ok(())
}

/// The shard folders of a generation, by shard number.
fn shard_dirs(gen: &Path) -> Result<Vec<PathBuf>, LayoutError> {
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(gen) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(gen, "cannot list shard folders")(e)),
    };
    for e in entries {
        let e = e.map_err(io(gen, "cannot list shard folders"))?;
        let name = e.file_name();
        if let Some(i) = name
            .to_string_lossy()
            .strip_prefix("shard-")
            .and_then(|i| i.parse::<usize>().ok())
        {
            found.push((i, e.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

fn read_current(dir: &Path) -> Result<Option<(u64, usize)>, LayoutError> {
    let text = match fs::read_to_string(dir.join("CURRENT")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(dir, "cannot read CURRENT")(e)),
    };
    let bad = || LayoutError::Current {
        dir: dir.to_path_buf(),
        got: text.trim().to_string(),
    };
    let rest = text.trim().strip_prefix(MAGIC).ok_or_else(bad)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["generation", g, "shards", n] => Ok(Some((g.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?))),
        _ => Err(bad()),
    }
}

/// Writes `CURRENT` whole (a temporary file synced, then renamed, then the
/// folder synced), so a crash leaves the old one or the new one.
fn write_current(dir: &Path, generation: u64, shards: usize) -> Result<(), LayoutError> {
    let tmp = dir.join("CURRENT.tmp");
    let mut f = File::create(&tmp).map_err(io(dir, "cannot write CURRENT"))?;
    writeln!(f, "{MAGIC} generation {generation} shards {shards}").map_err(io(dir, "cannot write CURRENT"))?;
    f.sync_all().map_err(io(dir, "cannot sync CURRENT"))?;
    fs::rename(&tmp, dir.join("CURRENT")).map_err(io(dir, "cannot rename CURRENT"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir, "cannot sync the folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("volley-layout-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_new_store_is_generation_one_and_a_second_opener_is_refused() {
        let d = tmp("new");
        let s = open(&d, 2).expect("opens");
        assert_eq!((s.generation, s.from), (1, None));
        assert_eq!(s.shards.len(), 2);
        assert!(s
            .shards
            .iter()
            .all(|f| !f.moving && f.replay.len() == 1 && f.replay[0].1.is_empty()));
        assert!(matches!(open(&d, 2), Err(LayoutError::Locked(_))));
        drop(s);
        let again = open(&d, 2).expect("the lock went with the first");
        assert_eq!(again.generation, 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn another_shard_count_replays_every_old_folder_then_moves() {
        let d = tmp("move");
        let s = open(&d, 2).expect("opens");
        fs::write(s.shards[1].dir.join(format!("{:016}.seg", 3)), b"x").unwrap();
        drop(s);
        let mut s = open(&d, 3).expect("opens with 3");
        assert_eq!((s.generation, s.from), (2, Some(1)));
        for f in &s.shards {
            assert!(f.moving);
            let segs: Vec<usize> = f.replay.iter().map(|r| r.1.len()).collect();
            assert_eq!(segs, [0, 1]);
            assert_eq!(f.bytes, 1, "the one byte of the one old segment");
        }
        s.moved().expect("moves");
        assert!(!d.join("1").exists());
        drop(s);
        let s = open(&d, 3).expect("opens again");
        assert_eq!((s.generation, s.from), (2, None));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_foreign_current_is_refused() {
        let d = tmp("foreign");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("CURRENT"), "something else\n").unwrap();
        assert!(matches!(open(&d, 1), Err(LayoutError::Current { .. })));
        fs::remove_dir_all(&d).unwrap();
    }
}
