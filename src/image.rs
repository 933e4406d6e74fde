//! The kernel image recipe (`images/kernel/`, embedded in the binary), its hash and tag, and
//! building images by running the recipe's own build script: the Dockerfile when a registry
//! answers, Debian packages through mmdebstrap and `docker import` when none does. Also builds
//! the server image for Compose. It never talks to the Docker API itself.

use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

const KERNEL_RECIPE: [(&str, &str); 4] = [
    ("Dockerfile", include_str!("../images/kernel/Dockerfile")),
    ("build.sh", include_str!("../images/kernel/build.sh")),
    (
        "packages.txt",
        include_str!("../images/kernel/packages.txt"),
    ),
    (
        "pip-packages.txt",
        include_str!("../images/kernel/pip-packages.txt"),
    ),
];

const SERVER_DOCKERFILE: &str = include_str!("../images/server/Dockerfile");

/// The tag Compose runs the server image under.
pub const SERVER_IMAGE: &str = "kernelbox-server:local";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("could not stage the image recipe: {0}")]
    Stage(#[from] std::io::Error),
    #[error("`{command}` failed ({status}); its output above says why")]
    Failed { command: String, status: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// First 12 hex digits of the SHA-256 over the recipe files' names and contents.
pub fn recipe_hash() -> String {
    let mut hasher = Sha256::new();
    for (name, content) in KERNEL_RECIPE {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(content.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())[..12].to_string()
}

/// The kernel image tag of this recipe.
pub fn kernel_tag() -> String {
    format!("kernelbox-kernel:{}", recipe_hash())
}

/// Builds the kernel image under `tag` unless it exists. Progress goes to stderr.
pub fn build_kernel(tag: &str) -> Result<(), ImageError> {
    let dir = tempfile::tempdir()?;
    for (name, content) in KERNEL_RECIPE {
        std::fs::write(dir.path().join(name), content)?;
    }
    run(Command::new("bash")
        .arg(dir.path().join("build.sh"))
        .arg(tag))
}

/// Builds the server image for Compose: the kernel image `base` plus this very binary.
pub fn build_server(base: &str) -> Result<(), ImageError> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("Dockerfile"), SERVER_DOCKERFILE)?;
    let binary = std::env::current_exe()?;
    std::fs::copy(&binary, dir.path().join("kernelbox"))?;
    eprintln!(
        "kernelbox image: building {SERVER_IMAGE} from {base} and {}",
        binary.display()
    );
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--build-arg"])
        .arg(format!("BASE={base}"))
        .args(["--label"])
        .arg(format!("kernelbox.recipe={}", recipe_hash()))
        .args(["-t", SERVER_IMAGE])
        .arg(dir.path()))
}

/// Runs a build step with its stdout sent to our stderr: stdout belongs to MCP over stdio.
fn run(command: &mut Command) -> Result<(), ImageError> {
    let described = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|a| Path::new(a).display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let stderr = std::io::stderr();
    let stdout_to_stderr = Stdio::from(
        std::os::fd::AsFd::as_fd(&stderr)
            .try_clone_to_owned()
            .map_err(ImageError::Stage)?,
    );
    let status = command
        .stdin(Stdio::null())
        .stdout(stdout_to_stderr)
        .status()
        .map_err(|source| ImageError::Spawn {
            command: described.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Failed {
            command: described,
            status: status.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_hash_is_stable_and_short() {
        assert_eq!(recipe_hash(), recipe_hash());
        assert_eq!(recipe_hash().len(), 12);
        assert!(kernel_tag().starts_with("kernelbox-kernel:"));
    }

    #[test]
    fn the_recipe_keeps_plots_inline_and_runs_under_tini_as_uid_1000() {
        let (_, dockerfile) = KERNEL_RECIPE[0];
        let (_, build) = KERNEL_RECIPE[1];
        for recipe in [dockerfile, build] {
            assert!(recipe.contains("MPLBACKEND=module://matplotlib_inline.backend_inline"));
            assert!(recipe.contains("/usr/bin/tini"));
            assert!(recipe.contains("1000:1000"));
            assert!(
                recipe.contains("-perm /6000"),
                "setuid/setgid bits must be stripped"
            );
        }
    }
}
