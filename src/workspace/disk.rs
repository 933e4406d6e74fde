//! The hard cap on what a workspace holds, kernel writes included. In `mount` mode each
//! workspace is a filesystem of its own: a sparse ext4 image of the quota's size under
//! `<data-dir>/volumes/`, loop-mounted at the workspace's path before its kernel starts, so a
//! write past it fails in the kernel with ENOSPC. In `watchdog` mode (the server may not
//! mount) workspaces are plain directories, and the session registry stops a kernel that
//! crosses the quota. This module owns the choice of mode, the images and the mounts; it must
//! not talk to Docker or to kernels, and it never unmounts anything outside the data
//! directory's `workspaces/` and `pool/` trees.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{KernelUser, Workspace, WorkspaceError};

/// The mode asked for with `--workspace-quota-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuotaModeChoice {
    /// `mount` where the server may mount loop devices, else `watchdog`.
    Auto,
    /// Each workspace an ext4 image of the quota's size; refused at start where impossible.
    Mount,
    /// Plain directories; a kernel that crosses the quota is stopped.
    Watchdog,
}

/// How the quota is held in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaMode {
    /// The workspace is a filesystem of the quota's size: writes past it fail.
    Mount,
    /// A watchdog stops the kernel within a second of crossing the quota.
    Watchdog,
}

impl QuotaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaMode::Mount => "mount",
            QuotaMode::Watchdog => "watchdog",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "--workspace-quota-mode mount cannot work here: {0}; the server needs to run as root with \
         loop devices and mkfs.ext4 (in a container: privileged, with its data directory on a \
         mount of rshared propagation), or use --workspace-quota-mode watchdog"
    )]
    MountUnavailable(String),
    #[error("could not make the workspace image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("could not mount the workspace image {image} at {path}: {reason}")]
    Mount {
        image: PathBuf,
        path: PathBuf,
        reason: String,
    },
    #[error("could not unmount the workspace {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not move the workspace {from} to {to}: {source}")]
    HandOver {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<DiskError> for WorkspaceError {
    fn from(error: DiskError) -> Self {
        WorkspaceError::Disk(Box::new(error))
    }
}

/// Size of the image the start-up probe mounts.
const PROBE_BYTES: u64 = 8 << 20;

/// Where workspaces live and how their quota is held.
#[derive(Debug, Clone)]
pub struct Disk {
    mode: QuotaMode,
    quota_bytes: u64,
    user: KernelUser,
    data_dir: PathBuf,
}

impl Disk {
    /// Picks the mode: `auto` tries a loop mount in the data directory and falls back to the
    /// watchdog. Returns the disk and why that mode is in force. `data_dir` must be canonical.
    pub fn choose(
        choice: QuotaModeChoice,
        data_dir: &Path,
        quota_bytes: u64,
        user: KernelUser,
    ) -> Result<(Self, String), DiskError> {
        let disk = |mode| Self {
            mode,
            quota_bytes,
            user,
            data_dir: data_dir.to_path_buf(),
        };
        match choice {
            QuotaModeChoice::Watchdog => Ok((
                disk(QuotaMode::Watchdog),
                "--workspace-quota-mode watchdog".to_string(),
            )),
            QuotaModeChoice::Mount | QuotaModeChoice::Auto => {
                let mount = disk(QuotaMode::Mount);
                match mount.probe() {
                    Ok(()) => Ok((
                        mount,
                        "each workspace is a loop-mounted ext4 image of the quota's size"
                            .to_string(),
                    )),
                    Err(reason) if choice == QuotaModeChoice::Auto => Ok((
                        disk(QuotaMode::Watchdog),
                        format!("loop mounts are not possible here ({reason})"),
                    )),
                    Err(reason) => Err(DiskError::MountUnavailable(reason)),
                }
            }
        }
    }

    pub fn mode(&self) -> QuotaMode {
        self.mode
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Makes (or reuses) the workspace at `root`: in `mount` mode its image is made when
    /// missing and mounted there when not mounted yet.
    pub fn prepare(&self, root: PathBuf) -> Result<Workspace, WorkspaceError> {
        if self.mode == QuotaMode::Mount {
            std::fs::create_dir_all(&root).map_err(|source| WorkspaceError::Prepare {
                path: root.clone(),
                source,
            })?;
            if !is_mount_point(&root) {
                let image = self.image_of(&root);
                let fresh = !image.exists();
                if fresh {
                    make_image(&image, self.quota_bytes, self.user)?;
                }
                mount_image(&image, &root)?;
                if fresh {
                    // mkfs leaves lost+found, which would show in every listing.
                    let _ = std::fs::remove_dir(root.join("lost+found"));
                }
            }
        }
        Ok(Workspace::prepare(root, self.user)?.with_cap(self.quota_bytes, self.mode))
    }

    /// Moves the workspace at `from` (a warm kernel's, mounted in that kernel) to `to`, which
    /// must not exist.
    pub fn hand_over(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        let failed = |source| DiskError::HandOver {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        if self.mode == QuotaMode::Watchdog {
            return std::fs::rename(from, to).map_err(failed);
        }
        let image = self.image_of(to);
        if let Some(parent) = image.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        std::fs::rename(self.image_of(from), &image).map_err(failed)?;
        std::fs::create_dir(to).map_err(failed)?;
        // The same filesystem, mounted at the new path too; the kernel's own mount of it is
        // in its container and does not move.
        rustix::mount::mount_bind(from, to).map_err(|e| failed(e.into()))?;
        unmount(from)?;
        std::fs::remove_dir(from).map_err(failed)
    }

    /// Unmounts the workspace at `root` and keeps its files (in its image) for a later
    /// `prepare`.
    pub fn release(&self, root: &Path) -> Result<(), DiskError> {
        if self.mode == QuotaMode::Mount && is_mount_point(root) {
            unmount(root)?;
        }
        Ok(())
    }

    /// Removes the workspace at `root` and everything it holds.
    pub fn remove(&self, root: &Path) -> Result<(), WorkspaceError> {
        self.release(root)?;
        let gone = |result: std::io::Result<()>| match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        gone(std::fs::remove_dir_all(root)).map_err(|source| WorkspaceError::Prepare {
            path: root.to_path_buf(),
            source,
        })?;
        let image = self.image_of(root);
        gone(std::fs::remove_file(&image)).map_err(|source| WorkspaceError::Prepare {
            path: image,
            source,
        })
    }

    /// Unmounts every workspace mounted under `tree` (of this data directory) that is not in
    /// `keep`: what a run that ended without cleaning up left. Returns how many.
    pub fn sweep(&self, tree: &Path, keep: &HashSet<PathBuf>) -> usize {
        let mut swept = 0;
        for mount in mount_points() {
            if mount.starts_with(tree) && mount != tree && !keep.contains(&mount) {
                match unmount(&mount) {
                    Ok(()) => swept += 1,
                    Err(error) => tracing::warn!(%error, "could not unmount a stale workspace"),
                }
            }
        }
        swept
    }

    /// The image that holds the workspace at `root`: the same path under `volumes/`.
    fn image_of(&self, root: &Path) -> PathBuf {
        let relative = root.strip_prefix(&self.data_dir).unwrap_or(root);
        let mut image = self
            .data_dir
            .join("volumes")
            .join(relative)
            .into_os_string();
        image.push(".img");
        PathBuf::from(image)
    }

    /// Makes, mounts, unmounts and removes a small image, saying what failed.
    fn probe(&self) -> Result<(), String> {
        let dir = self.data_dir.join("volumes");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let image = dir.join(format!("probe-{}.img", std::process::id()));
        let mount = dir.join(format!("probe-{}", std::process::id()));
        let result = (|| {
            make_image(&image, PROBE_BYTES, self.user).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
            mount_image(&image, &mount).map_err(|e| e.to_string())?;
            unmount(&mount).map_err(|e| e.to_string())
        })();
        let _ = std::fs::remove_dir(&mount);
        let _ = std::fs::remove_file(&image);
        result
    }
}

/// Makes a sparse ext4 image of `bytes` whose root belongs to `user`, with no blocks reserved
/// for root, the inode density of a large filesystem (a small one's would take an eighth of
/// it) and its metadata written lazily (the image stays sparse).
fn make_image(image: &Path, bytes: u64, user: KernelUser) -> Result<(), DiskError> {
    let failed = |reason: String| DiskError::Image {
        path: image.to_path_buf(),
        reason,
    };
    if let Some(parent) = image.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed(e.to_string()))?;
    }
    let file = std::fs::File::create(image).map_err(|e| failed(e.to_string()))?;
    file.set_len(bytes).map_err(|e| failed(e.to_string()))?;
    drop(file);
    let made = run(Command::new(program("mkfs.ext4")?)
        .args(["-q", "-F", "-m", "0", "-T", "default", "-E"])
        .arg(format!(
            "nodiscard,lazy_itable_init=1,lazy_journal_init=1,root_owner={}:{}",
            user.uid, user.gid
        ))
        .arg(image));
    if let Err(reason) = made {
        let _ = std::fs::remove_file(image);
        return Err(failed(reason));
    }
    Ok(())
}

/// Loop-mounts `image` at `path`, without setuid files or devices. The loop device goes with
/// the last unmount.
fn mount_image(image: &Path, path: &Path) -> Result<(), DiskError> {
    run(Command::new(program("mount")?)
        .args(["-o", "loop,nosuid,nodev"])
        .arg(image)
        .arg(path))
    .map_err(|reason| DiskError::Mount {
        image: image.to_path_buf(),
        path: path.to_path_buf(),
        reason,
    })
}

/// Unmounts `path`; when something on the host holds it open, detaches it (it goes when let
/// go).
fn unmount(path: &Path) -> Result<(), DiskError> {
    use rustix::mount::{UnmountFlags, unmount as unmount_at};
    let failed = |errno: rustix::io::Errno| DiskError::Unmount {
        path: path.to_path_buf(),
        source: errno.into(),
    };
    match unmount_at(path, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => unmount_at(path, UnmountFlags::DETACH).map_err(failed),
        Err(errno) => Err(failed(errno)),
    }
}

/// Whether `path` (canonical) is where something is mounted.
pub fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|mount| mount == path)
}

/// Every mount point this process sees.
fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| {
            text.lines()
                .filter_map(|line| line.split(' ').nth(4))
                .map(|field| PathBuf::from(unescape(field)))
                .collect()
        })
        .unwrap_or_default()
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A system program, looked for on `PATH` and in the sbin directories a non-root `PATH`
/// lacks.
fn program(name: &str) -> Result<PathBuf, DiskError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| DiskError::Image {
            path: PathBuf::from(name),
            reason: format!("{name} is not installed (Debian: e2fsprogs, mount)"),
        })
}

/// Runs a command to its end; its stderr is the error.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/data/with\040space"), "/data/with space");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn images_mirror_workspace_paths_under_volumes() {
        let disk = Disk {
            mode: QuotaMode::Mount,
            quota_bytes: 1 << 20,
            user: KernelUser {
                uid: 1000,
                gid: 1000,
            },
            data_dir: PathBuf::from("/data"),
        };
        assert_eq!(
            disk.image_of(Path::new("/data/workspaces/alice/s.1")),
            Path::new("/data/volumes/workspaces/alice/s.1.img")
        );
        assert_eq!(
            disk.image_of(Path::new("/data/pool/pool-ab")),
            Path::new("/data/volumes/pool/pool-ab.img")
        );
    }
}
