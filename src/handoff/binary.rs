//! Which binary an upgrade may start besides the server's own: one an
//! operator put beside it. The API key lets its holder ask for an upgrade;
//! it must not let them run a program of their choosing as the server's
//! user. So a binary named over the API (`POST /v1/upgrade?binary=`,
//! `volley upgrade --binary`) is started only if its resolved path is in
//! the folder of the server's own binary, it is a regular executable
//! file owned by root or by the server's user, nobody else may write it,
//! and nobody else may swap it in its folder (not writable by group or
//! others unless sticky).
//!
//! Runs on an API thread when the upgrade is asked for; pure but for the
//! file system's answers.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Group- or other-writable.
const OTHERS_WRITE: u32 = 0o022;
/// The sticky bit: in such a folder only a file's owner may rename or
/// remove it.
const STICKY: u32 = 0o1000;

/// `given`, resolved, if an upgrade of the server whose binary is `own`
/// may start it; otherwise why not.
pub fn allowed(own: &Path, given: &Path) -> Result<PathBuf, String> {
    if !given.is_absolute() {
        return Err(format!("{}: give an absolute path", given.display()));
    }
    let real = given.canonicalize().map_err(|e| format!("{}: {e}", given.display()))?;
    let own = own
        .canonicalize()
        .map_err(|e| format!("this server's binary {}: {e}", own.display()))?;
    let folder = own.parent().ok_or("this server's binary has no folder")?;
    if real.parent() != Some(folder) {
        return Err(format!(
            "{} is not in {}, the folder of this server's binary",
            real.display(),
            folder.display()
        ));
    }
    let file = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !file.is_file() || file.mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", real.display()));
    }
    if file.mode() & OTHERS_WRITE != 0 {
        return Err(format!("{} is writable by group or others", real.display()));
    }
    // SAFETY: plain syscall, no arguments.
    let me = unsafe { libc::geteuid() };
    if file.uid() != 0 && file.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, neither root nor this server's user",
            real.display(),
            file.uid()
        ));
    }
    let dir = std::fs::metadata(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    if dir.mode() & OTHERS_WRITE != 0 && dir.mode() & STICKY == 0 {
        return Err(format!(
            "{} is writable by group or others: anyone could swap the binary",
            folder.display()
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A private folder with this server's "own" binary and others.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Folder {
            let p = std::env::temp_dir().join(format!("volley-binary-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            Folder(p)
        }

        fn file(&self, name: &str, mode: u32) -> PathBuf {
            let f = self.0.join(name);
            std::fs::write(&f, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            f
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_binary_beside_the_servers_own_and_kept_by_its_owner_is_allowed() {
        let d = Folder::new("ok");
        let own = d.file("volley", 0o755);
        let next = d.file("volley-2", 0o755);
        assert_eq!(allowed(&own, &next), Ok(next.canonicalize().unwrap()));
        // A link in the folder to a binary in the folder is that binary.
        let link = d.0.join("volley-next");
        std::os::unix::fs::symlink(&next, &link).unwrap();
        assert_eq!(allowed(&own, &link), Ok(next.canonicalize().unwrap()));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let d = Folder::new("refused");
        let own = d.file("volley", 0o755);
        let why = |given: &Path| allowed(&own, given).unwrap_err();
        assert!(why(Path::new("volley")).contains("absolute"));
        assert!(why(Path::new("/bin/sh")).contains("not in"));
        assert!(why(&d.0.join("missing")).contains("No such file"));
        assert!(why(&d.file("plain", 0o644)).contains("not an executable"));
        assert!(why(&d.file("shared", 0o775)).contains("writable by group or others"));
        assert!(why(&d.0).contains("not in"), "the folder itself");
        // A link in the folder to a binary elsewhere is that binary.
        let out = Folder::new("outside");
        let elsewhere = out.file("tool", 0o755);
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(why(&link).contains("not in"));
        // A folder others may write to without the sticky bit.
        let next = d.file("volley-2", 0o755);
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(why(&next).contains("anyone could swap"));
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(allowed(&own, &next).is_ok(), "sticky: only the owner may swap it");
        // Another user's binary (only root can make one here).
        // SAFETY: plain syscall, no arguments.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = d.file("theirs", 0o755);
            std::os::unix::fs::chown(&theirs, Some(12345), None).unwrap();
            assert!(why(&theirs).contains("uid 12345"));
        }
    }
}
