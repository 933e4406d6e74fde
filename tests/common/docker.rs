//! The Docker engine as the tests see it: which containers (or, under the Swarm runtime,
//! services) a data directory's server started, found by label; removing them, networks
//! included, and unmounting the workspaces the server left mounted, when a test ends; the
//! kernel image; and whether the suite runs on Swarm.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::server::BINARY;

/// The label value that marks this data directory's containers (same rule as the server).
pub fn instance_of(data_dir: &Path) -> String {
    let canonical = data_dir.canonicalize().unwrap();
    hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..12].to_string()
}

/// Ids of the containers, running or not, that carry `label=value`.
pub fn containers_with_label(label: &str, value: &str) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={label}={value}"))
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub fn remove_containers(ids: &[String]) {
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes every container of one data directory, and unmounts its workspaces, when
/// dropped, even after a panic: a server that stops without ending its sessions leaves both
/// for its next start.
pub struct ContainerSweeper {
    pub instance: String,
    data_dir: PathBuf,
}

impl ContainerSweeper {
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Self {
            instance: instance_of(data_dir),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The kernels of this data directory: containers, or services under `--runtime swarm`.
    pub fn containers(&self) -> Vec<String> {
        if swarm_mode() {
            docker_lines(&[
                "service",
                "ls",
                "-q",
                "--filter",
                &format!("label=kernelbox.instance={}", self.instance),
            ])
        } else {
            containers_with_label("kernelbox.instance", &self.instance)
        }
    }
}

impl Drop for ContainerSweeper {
    fn drop(&mut self) {
        if self.instance.is_empty() {
            return;
        }
        if swarm_mode() {
            let services = self.containers();
            if !services.is_empty() {
                docker_lines(
                    &[
                        &["service", "rm"][..],
                        &services.iter().map(String::as_str).collect::<Vec<_>>(),
                    ]
                    .concat(),
                );
            }
            remove_networks_labelled(&format!("kernelbox.instance={}", self.instance));
        }
        remove_containers(&containers_with_label("kernelbox.instance", &self.instance));
        for mount in mounts_under(&self.data_dir) {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .status();
        }
    }
}

/// Mount points under `dir` (workspaces in `mount` quota mode), from this process's view.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(&dir))
        .collect()
}

/// The kernel image tag of this recipe, as `kernelbox image name` prints it.
pub fn kernel_image() -> String {
    image_name("python")
}

/// The R image tag of this recipe, as `kernelbox image name r` prints it.
pub fn r_kernel_image() -> String {
    image_name("r")
}

fn image_name(kernel: &str) -> String {
    let output = std::process::Command::new(BINARY)
        .args(["image", "name", kernel])
        .output()
        .expect("kernelbox runs");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The suite runs against the Swarm runtime (`KERNELBOX_TEST_RUNTIME=swarm`): each server then
/// runs as a container on this engine, which must be a swarm manager.
pub fn swarm_mode() -> bool {
    std::env::var("KERNELBOX_TEST_RUNTIME").as_deref() == Ok("swarm")
}

/// Runs `docker` with `args`; its stdout's lines (nothing when it fails).
pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Removes the networks carrying `label` (`key=value`), waiting while their last endpoints
/// are let go (a removed service's task takes a moment to stop).
pub fn remove_networks_labelled(label: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let networks =
            docker_lines(&["network", "ls", "-q", "--filter", &format!("label={label}")]);
        if networks.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for network in networks {
            docker_lines(&["network", "rm", &network]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
