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
    /// `kernels_here` says whether kernels run on this host (they do not see its mounts on
    /// other nodes).
    pub fn choose(
        choice: QuotaModeChoice,
        kernels_here: bool,
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
                let possible = if kernels_here {
                    mount.probe()
                } else {
                    Err(
                        "kernels run on other nodes, which do not see this server's mounts"
                            .to_string(),
                    )
                };
                match possible {
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
                if image.exists() {
                    mount_image(&image, &root)?;
                } else {
                    make_image(&image, self.quota_bytes, self.user)?;
                    let holds_files = std::fs::read_dir(&root)
                        .map(|mut entries| entries.next().is_some())
                        .unwrap_or(false);
                    if holds_files && let Err(error) = self.move_into_image(&root, &image) {
                        let _ = std::fs::remove_file(&image);
                        return Err(error.into());
                    }
                    mount_image(&image, &root)?;
                    // mkfs leaves lost+found, which would show in every listing.
                    let _ = std::fs::remove_dir(root.join("lost+found"));
                }
            }
        }
        Ok(Workspace::prepare(root, self.user)?.with_cap(self.quota_bytes, self.mode))
    }

    /// Fills a fresh `image` with what the plain directory `root` holds (a workspace made
    /// before this mode, or in `watchdog` mode), so that mounting it there hides nothing.
    /// Fails, leaving `root` as it was, when the files do not fit.
    fn move_into_image(&self, root: &Path, image: &Path) -> Result<(), DiskError> {
        let staging = PathBuf::from(format!("{}.staging", image.display()));
        let failed = |reason: String| DiskError::Image {
            path: image.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(&staging).map_err(|e| failed(e.to_string()))?;
        mount_image(image, &staging)?;
        let _ = std::fs::remove_dir(staging.join("lost+found"));
        let copied = run(Command::new(program("cp")?)
            .arg("-a")
            .arg(root.join("."))
            .arg(&staging));
        unmount(&staging)?;
        let _ = std::fs::remove_dir(&staging);
        copied.map_err(|reason| failed(format!("the workspace's files do not fit: {reason}")))?;
        for entry in std::fs::read_dir(root).map_err(|e| failed(e.to_string()))? {
            let path = entry.map_err(|e| failed(e.to_string()))?.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| failed(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether `prepare` would mount the workspace at `root` (it is not mounted now).
    pub fn needs_mount(&self, root: &Path) -> bool {
        self.mode == QuotaMode::Mount && !is_mount_point(root)
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

    /// Removes the tree `tree` of workspaces (the warm pool's) with their mounts and images.
    pub fn clear(&self, tree: &Path) {
        self.sweep(tree, &HashSet::new());
        for dir in [tree.to_path_buf(), self.volumes_of(tree)] {
            if let Err(error) = std::fs::remove_dir_all(&dir)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), %error, "could not clear a workspace tree");
            }
        }
    }

    /// Where the images of the workspaces at or under `path` are.
    fn volumes_of(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix(&self.data_dir).unwrap_or(path);
        self.data_dir.join("volumes").join(relative)
    }

    /// The image that holds the workspace at `root`: the same path under `volumes/`.
    fn image_of(&self, root: &Path) -> PathBuf {
        let mut image = self.volumes_of(root).into_os_string();
        image.push(".img");
        PathBuf::from(image)
    }

    /// Makes, mounts, unmounts and removes a small image, saying what failed. Outside the
    /// engine's mount namespace (a server in a container), the data directory must be on a
    /// mount of shared propagation, or the engine would bind the empty directory under each
    /// mount.
    fn probe(&self) -> Result<(), String> {
        if !beside_the_engine() && !on_shared_mount(&self.data_dir) {
            return Err(format!(
                "this server is not in the Docker engine's mount namespace (in a container?) and {} is not on a mount of shared propagation (bind it with `propagation: rshared`), so the engine would not see the workspace mounts",
                self.data_dir.display()
            ));
        }
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
    mount_table().into_iter().map(|(path, _)| path).collect()
}

/// Whether this process shares its mount namespace with a `dockerd` it can see.
fn beside_the_engine() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|process| {
        let path = process.path();
        std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "dockerd")
            && std::fs::read_link(path.join("ns/mnt")).ok() == ours
    })
}

/// Whether the mount `path` is on propagates mounts made under it to its peers.
fn on_shared_mount(path: &Path) -> bool {
    mount_table()
        .into_iter()
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.as_os_str().len())
        .is_some_and(|(_, shared)| shared)
}

/// Each mount point this process sees, and whether it is shared.
fn mount_table() -> Vec<(PathBuf, bool)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| text.lines().filter_map(mount_entry).collect())
        .unwrap_or_default()
}

/// One mountinfo line's mount point and whether its optional fields say `shared:N`.
fn mount_entry(line: &str) -> Option<(PathBuf, bool)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let path = PathBuf::from(unescape(fields.get(4)?));
    let shared = fields
        .iter()
        .skip(6)
        .take_while(|field| **field != "-")
        .any(|field| field.starts_with("shared:"));
    Some((path, shared))
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
    fn mountinfo_lines_give_the_mount_point_and_its_propagation() {
        let shared = "36 35 98:0 / /var/lib/kernelbox rw,noatime shared:1 - ext4 /dev/vda rw";
        let private = "37 35 7:0 / /data/workspaces/a\\040b rw,nosuid - ext4 /dev/loop0 rw";
        assert_eq!(
            mount_entry(shared),
            Some((PathBuf::from("/var/lib/kernelbox"), true))
        );
        assert_eq!(
            mount_entry(private),
            Some((PathBuf::from("/data/workspaces/a b"), false))
        );
        assert_eq!(mount_entry("short line"), None);
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
