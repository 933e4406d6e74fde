//! One session's workspace directory on the host: its layout (`scripts/`, `outputs/`,
//! `uploads/`), ownership for the kernel user, saving display outputs, and listing files.
//! Kernel code can put symlinks anywhere in it, so every access here goes through directory
//! file descriptors opened with `O_NOFOLLOW` beneath the workspace root: nothing the server
//! reads or writes can resolve outside it.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Dir, FileType, Mode, OFlags};

/// Sub-directories every workspace has.
pub const LAYOUT: [&str; 3] = ["scripts", "outputs", "uploads"];

/// Files listed at most when looking for what a cell created.
const SNAPSHOT_LIMIT: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("could not prepare the workspace {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write {name} in the workspace: {source}")]
    Write {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The kernel's user and group, which must be able to write the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelUser {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for KernelUser {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (uid, gid) = value
            .split_once(':')
            .ok_or_else(|| format!("expected uid:gid (for example 1000:1000), got {value:?}"))?;
        let parse = |part: &str| {
            part.parse::<u32>()
                .map_err(|_| format!("expected numeric uid:gid, got {value:?}"))
        };
        Ok(Self {
            uid: parse(uid)?,
            gid: parse(gid)?,
        })
    }
}

impl std::fmt::Display for KernelUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// Creates (or reuses) the workspace at `root` with its layout, writable by `user`.
    pub fn prepare(root: PathBuf, user: KernelUser) -> Result<Self, WorkspaceError> {
        let prepare_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorkspaceError::Prepare { path, source }
        };
        std::fs::create_dir_all(&root).map_err(prepare_error(&root))?;
        let root_fd = open_dir(rustix::fs::CWD, &root).map_err(prepare_error(&root))?;
        give_to(&root_fd, user).map_err(prepare_error(&root))?;
        for name in LAYOUT {
            let path = root.join(name);
            match rustix::fs::mkdirat(&root_fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(prepare_error(&path)(e.into())),
            }
            let dir = open_dir(&root_fd, name).map_err(prepare_error(&path))?;
            give_to(&dir, user).map_err(prepare_error(&path))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `bytes` to a new file `outputs/<name>` and returns its workspace-relative path.
    pub fn save_output(&self, name: &str, bytes: &[u8]) -> Result<String, WorkspaceError> {
        let write_error = |source: std::io::Error| WorkspaceError::Write {
            name: format!("outputs/{name}"),
            source,
        };
        let root = open_dir(rustix::fs::CWD, &self.root).map_err(write_error)?;
        let outputs = match open_dir(&root, "outputs") {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                rustix::fs::mkdirat(&root, "outputs", Mode::from_raw_mode(0o755))
                    .map_err(|e| write_error(e.into()))?;
                open_dir(&root, "outputs").map_err(write_error)?
            }
            Err(e) => return Err(write_error(e)),
        };
        let file = rustix::fs::openat(
            &outputs,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| write_error(e.into()))?;
        let mut file = std::fs::File::from(file);
        file.write_all(bytes).map_err(write_error)?;
        Ok(format!("outputs/{name}"))
    }

    /// Workspace-relative paths of the regular files in the workspace (symlinks are listed,
    /// never followed), up to a limit.
    pub fn snapshot(&self) -> BTreeSet<String> {
        let mut files = BTreeSet::new();
        if let Ok(root) = open_dir(rustix::fs::CWD, &self.root) {
            collect_files(root, String::new(), &mut files);
        }
        files
    }
}

fn collect_files(dir: OwnedFd, prefix: String, files: &mut BTreeSet<String>) {
    let Ok(entries) = Dir::read_from(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if files.len() >= SNAPSHOT_LIMIT {
            return;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match entry.file_type() {
            FileType::Directory => {
                if let Ok(child) = open_dir(&dir, &name) {
                    collect_files(child, path, files);
                }
            }
            FileType::RegularFile | FileType::Symlink => {
                files.insert(path);
            }
            _ => {}
        }
    }
}

/// Opens a directory beneath `parent` without following a symlink in its last component.
fn open_dir(parent: impl std::os::fd::AsFd, name: impl AsRef<Path>) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name.as_ref(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// Hands a directory to the kernel user. As root the server chowns it; otherwise it cannot,
/// and opens the directory to every user instead.
fn give_to(dir: &OwnedFd, user: KernelUser) -> std::io::Result<()> {
    if rustix::process::geteuid().is_root() {
        rustix::fs::fchown(
            dir,
            Some(rustix::fs::Uid::from_raw(user.uid)),
            Some(rustix::fs::Gid::from_raw(user.gid)),
        )?;
        rustix::fs::fchmod(dir, Mode::from_raw_mode(0o755))?;
    } else {
        rustix::fs::fchmod(dir, Mode::from_raw_mode(0o777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> KernelUser {
        KernelUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    #[test]
    fn prepare_makes_the_layout_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        Workspace::prepare(root.clone(), user()).unwrap();
        let ws = Workspace::prepare(root.clone(), user()).unwrap();
        for name in LAYOUT {
            assert!(ws.root().join(name).is_dir());
        }
    }

    #[test]
    fn save_output_refuses_a_symlinked_outputs_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ws = Workspace::prepare(dir.path().join("ws"), user()).unwrap();
        std::fs::remove_dir(ws.root().join("outputs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.root().join("outputs")).unwrap();
        assert!(ws.save_output("a.png", b"x").is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn snapshot_lists_files_and_does_not_follow_symlinked_directories() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let ws = Workspace::prepare(dir.path().join("ws"), user()).unwrap();
        std::fs::write(ws.root().join("scripts/a.py"), "print(1)").unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.root().join("link")).unwrap();
        let files = ws.snapshot();
        assert!(files.contains("scripts/a.py"));
        assert!(files.contains("link"));
        assert!(!files.iter().any(|f| f.contains("secret")));
    }

    #[test]
    fn kernel_user_parses_uid_gid_and_rejects_names() {
        assert_eq!(
            "1000:1001".parse::<KernelUser>().unwrap(),
            KernelUser {
                uid: 1000,
                gid: 1001
            }
        );
        assert!("kernel".parse::<KernelUser>().is_err());
        assert!("a:b".parse::<KernelUser>().is_err());
    }
}
