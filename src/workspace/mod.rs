//! One session's workspace directory on the host: its layout (`scripts/`, `outputs/`,
//! `uploads/`), ownership for the kernel user, saving display outputs, and the file tools'
//! operations (list, read, write, delete, download). Kernel code can put symlinks anywhere in
//! it and swap a file for one at any moment, so every access goes through descriptors opened
//! beneath the workspace root without following symlinks (`resolve.rs`): nothing the server
//! reads, writes, lists or deletes can be outside it. This module owns the types, the layout
//! and ownership; it must not open a client's path any other way than through `resolve.rs`.

mod disk;
mod files;
mod listing;
mod path;
mod resolve;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

pub use disk::{Disk, DiskError, QuotaMode, QuotaModeChoice};
pub use listing::{ListOptions, Listing};

/// The kernel's path of its workspace, as a literal for `concat!` (constants under it).
macro_rules! kernel_workspace {
    () => {
        "/workspace"
    };
}
pub(crate) use kernel_workspace;

/// Where every kernel sees its session's workspace.
pub const IN_KERNEL: &str = kernel_workspace!();

/// The kernel's path of a workspace-relative path.
pub fn in_kernel(relative: &str) -> String {
    format!("{IN_KERNEL}/{relative}")
}

/// The workspace-relative path of a path the kernel gave, if it lies in the workspace.
pub fn from_kernel(path: &str) -> Option<&str> {
    path.strip_prefix(IN_KERNEL)?.strip_prefix('/')
}

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
    #[error("the session's workspace directory could not be opened (was it removed?): {source}")]
    Unavailable {
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?} is not a usable workspace path: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error(
        "{path:?} leaves the workspace: give a path relative to the workspace root, without `..` \
         (for /workspace/scripts/a.py give scripts/a.py)"
    )]
    PathEscapes { path: String },
    #[error(
        "{path:?} is or goes through a symlink, and the server never follows symlinks in a \
         workspace (one could lead outside it); if the link points inside the workspace, use the \
         path it points to"
    )]
    Symlink { path: String },
    #[error("{path:?} does not exist in the workspace")]
    NotFound { path: String },
    #[error("{path:?} is a {kind}, not a regular file")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path:?} is a {kind}, not a directory")]
    NotADirectory { path: String, kind: &'static str },
    #[error("{path:?} would be {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        path: String,
        size: usize,
        limit: usize,
    },
    #[error(
        "writing {size} bytes to {path:?} would take the workspace past its quota: {used} of {quota} bytes are used; delete files first"
    )]
    QuotaExceeded {
        path: String,
        size: usize,
        used: u64,
        quota: u64,
    },
    #[error("{path:?} is a directory that is not empty; delete what is inside it first")]
    DirectoryNotEmpty { path: String },
    #[error(transparent)]
    Disk(Box<DiskError>),
    #[error("could not {action} {path:?} in the workspace: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl WorkspaceError {
    /// Explains why resolving `path` beneath the root failed while trying to `action` it.
    fn resolving(errno: Errno, path: &str, action: &'static str) -> Self {
        let path = path.to_string();
        match errno {
            Errno::NOENT | Errno::NOTDIR => Self::NotFound { path },
            Errno::LOOP => Self::Symlink { path },
            Errno::XDEV => Self::PathEscapes { path },
            Errno::NAMETOOLONG => Self::InvalidPath {
                path,
                reason: "one of its names is longer than 255 bytes",
            },
            errno => Self::Io {
                action,
                path,
                source: errno.into(),
            },
        }
    }

    /// An error of `action` on `path` the caller has no better explanation for.
    fn io(action: &'static str, path: &str) -> impl FnOnce(Errno) -> Self {
        move |errno| Self::Io {
            action,
            path: path.to_string(),
            source: errno.into(),
        }
    }
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
    user: KernelUser,
    /// Bytes the workspace may hold: the server's own writes past this are refused, and
    /// `mode` says how kernel writes are held to it.
    quota_bytes: u64,
    /// `None` for a workspace without a cap (before `with_cap`).
    mode: Option<QuotaMode>,
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
        give_to(&root_fd, user, Handed::Directory).map_err(prepare_error(&root))?;
        for name in LAYOUT {
            let path = root.join(name);
            match rustix::fs::mkdirat(&root_fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {}
                Err(e) => return Err(prepare_error(&path)(e.into())),
            }
            let dir = open_dir(&root_fd, name).map_err(prepare_error(&path))?;
            give_to(&dir, user, Handed::Directory).map_err(prepare_error(&path))?;
        }
        Ok(Self {
            root,
            user,
            quota_bytes: u64::MAX,
            mode: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same workspace held to `quota_bytes` in `mode`.
    fn with_cap(mut self, quota_bytes: u64, mode: QuotaMode) -> Self {
        self.quota_bytes = quota_bytes;
        self.mode = Some(mode);
        self
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// How kernel writes are held to the quota, if they are.
    pub fn quota_mode(&self) -> Option<QuotaMode> {
        self.mode
    }

    /// Bytes the workspace holds: the blocks in use of its filesystem when it is one of its
    /// own, else the sizes of its regular files (symlinks are not followed), counted over at
    /// most 100,000 entries.
    pub fn usage(&self) -> u64 {
        if self.mode == Some(QuotaMode::Mount)
            && let Ok(stat) = rustix::fs::statvfs(&self.root)
        {
            return stat.f_blocks.saturating_sub(stat.f_bfree) * stat.f_frsize;
        }
        self.files_size()
    }

    /// Whether a write can fail for want of space: the workspace's own filesystem has less
    /// than 1 MiB (or 1 %) left.
    pub fn is_full(&self) -> bool {
        match (self.mode, rustix::fs::statvfs(&self.root)) {
            (Some(QuotaMode::Mount), Ok(stat)) => {
                let free = stat.f_bavail * stat.f_frsize;
                let size = stat.f_blocks * stat.f_frsize;
                free < (1 << 20).max(size / 100)
            }
            _ => self.usage() >= self.quota_bytes,
        }
    }

    /// Bytes held by the regular files in the workspace.
    fn files_size(&self) -> u64 {
        const ENTRY_LIMIT: usize = 100_000;
        let mut total = 0;
        let mut seen = 0;
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                seen += 1;
                if seen > ENTRY_LIMIT {
                    return total;
                }
                match entry.path().symlink_metadata() {
                    Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                    Ok(meta) if meta.is_file() => total += meta.len(),
                    _ => {}
                }
            }
        }
        total
    }

    /// Writes `bytes` to a new file `outputs/<name>`, owned by the kernel user, and returns its
    /// workspace-relative path.
    pub fn save_output(&self, name: &str, bytes: &[u8]) -> Result<String, WorkspaceError> {
        let (path, mut file) = self.create_output(name)?;
        file.write_all(bytes)
            .map_err(|source| WorkspaceError::Write {
                name: path.clone(),
                source,
            })?;
        Ok(path)
    }

    /// Creates a new file `outputs/<name>` (never through a symlink, never over an existing
    /// file), owned by the kernel user; returns its workspace-relative path and the open file.
    pub fn create_output(&self, name: &str) -> Result<(String, std::fs::File), WorkspaceError> {
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
                let dir = open_dir(&root, "outputs").map_err(write_error)?;
                give_to(&dir, self.user, Handed::Directory).map_err(write_error)?;
                dir
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
        give_to(&file, self.user, Handed::File).map_err(write_error)?;
        Ok((format!("outputs/{name}"), std::fs::File::from(file)))
    }

    /// Workspace-relative paths of the regular files in the workspace (symlinks are listed,
    /// never followed), up to a limit.
    pub fn snapshot(&self) -> BTreeSet<String> {
        match open_dir(rustix::fs::CWD, &self.root) {
            Ok(root) => listing::files(&root, SNAPSHOT_LIMIT).into_iter().collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Opens the workspace root, the directory every client path is resolved beneath.
    fn open_root(&self) -> Result<OwnedFd, WorkspaceError> {
        open_dir(rustix::fs::CWD, &self.root)
            .map_err(|source| WorkspaceError::Unavailable { source })
    }
}

/// What a file type is called in messages.
fn kind_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
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

/// What the server hands to the kernel user.
#[derive(Debug, Clone, Copy)]
enum Handed {
    Directory,
    File,
}

/// Hands a directory or file the server made to the kernel user. As root the server chowns
/// it; otherwise it cannot, and opens it to every user instead.
fn give_to(fd: &OwnedFd, user: KernelUser, handed: Handed) -> std::io::Result<()> {
    let (owned, shared) = match handed {
        Handed::Directory => (0o755, 0o777),
        Handed::File => (0o644, 0o666),
    };
    if rustix::process::geteuid().is_root() {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(user.uid)),
            Some(rustix::fs::Gid::from_raw(user.gid)),
        )?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(owned))?;
    } else {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(shared))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_paths_go_both_ways() {
        assert_eq!(in_kernel("scripts/a.py"), "/workspace/scripts/a.py");
        assert_eq!(
            from_kernel("/workspace/outputs/x.png"),
            Some("outputs/x.png")
        );
        assert_eq!(from_kernel("/workspaces/x"), None);
        assert_eq!(from_kernel("/tmp/x"), None);
        assert!(crate::snippets::PACKAGES_DIR.starts_with(&in_kernel(".kernelbox/")));
    }

    fn user() -> KernelUser {
        KernelUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    /// The kernel user of `fixture`: another user when the tests run as root, so that handing
    /// files over is seen.
    fn kernel_user() -> KernelUser {
        if rustix::process::geteuid().is_root() {
            KernelUser {
                uid: 1000,
                gid: 1000,
            }
        } else {
            user()
        }
    }

    /// Checks that the kernel user of `fixture` owns `path` with write access or, when the
    /// tests do not run as root, that every user may write it.
    pub(super) fn assert_kernel_user_can_write(path: &Path) {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::symlink_metadata(path).unwrap();
        if rustix::process::geteuid().is_root() {
            assert_eq!((metadata.uid(), metadata.gid()), (1000, 1000), "{path:?}");
            assert_ne!(metadata.mode() & 0o200, 0, "{path:?}");
        } else {
            assert_ne!(metadata.mode() & 0o002, 0, "{path:?}");
        }
    }

    /// A prepared workspace and, outside it, a host directory holding `passwd`, standing for
    /// the host's `/etc`.
    pub(super) struct Fixture {
        pub(super) ws: Workspace,
        pub(super) host: PathBuf,
        _dirs: [tempfile::TempDir; 2],
    }

    impl Fixture {
        /// The host path of a workspace-relative path.
        pub(super) fn path(&self, rel: &str) -> PathBuf {
            self.ws.root().join(rel)
        }

        pub(super) fn host_passwd(&self) -> PathBuf {
            self.host.join("passwd")
        }
    }

    pub(super) fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "root:x:0:0").unwrap();
        Fixture {
            ws: Workspace::prepare(dir.path().join("ws"), kernel_user()).unwrap(),
            host: host.path().to_path_buf(),
            _dirs: [dir, host],
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
    fn save_output_makes_a_file_the_kernel_user_can_write() {
        let fixture = fixture();
        let path = fixture.ws.save_output("a.png", b"png").unwrap();
        assert_kernel_user_can_write(&fixture.path(&path));
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
