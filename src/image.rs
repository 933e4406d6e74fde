//! The kernel image recipes (`images/kernel/` for Python, `images/kernel-r/` for R, sharing
//! `images/build.sh`; embedded in the binary), their hashes and tags, and building images by
//! running the build script: the Dockerfile when a registry answers, Debian packages through
//! mmdebstrap and `docker import` when none does. Also builds the server image for Compose.
//! It never talks to the Docker API itself.

use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// A kernel image's recipe: the shared build script and the files of its directory under
/// `images/`, embedded in the binary.
pub struct Recipe {
    /// The image's repository name; its tag is the recipe's hash.
    repository: &'static str,
    files: [(&'static str, &'static str); 5],
}

/// The build script every kernel recipe shares.
const BUILD_SCRIPT: (&str, &str) = ("build.sh", include_str!("../images/build.sh"));

/// The kernel image: Python with ipykernel (the `python` and `bash` templates), and the
/// base of the server's image.
pub const KERNEL: Recipe = Recipe {
    repository: "kernelbox-kernel",
    files: [
        ("Dockerfile", include_str!("../images/kernel/Dockerfile")),
        BUILD_SCRIPT,
        (
            "packages.txt",
            include_str!("../images/kernel/packages.txt"),
        ),
        (
            "pip-packages.txt",
            include_str!("../images/kernel/pip-packages.txt"),
        ),
        (
            "image-config.txt",
            include_str!("../images/kernel/image-config.txt"),
        ),
    ],
};

/// The R kernel image (IRkernel), for the `r` template.
pub const R_KERNEL: Recipe = Recipe {
    repository: "kernelbox-kernel-r",
    files: [
        ("Dockerfile", include_str!("../images/kernel-r/Dockerfile")),
        BUILD_SCRIPT,
        (
            "packages.txt",
            include_str!("../images/kernel-r/packages.txt"),
        ),
        ("pip-packages.txt", ""),
        (
            "image-config.txt",
            include_str!("../images/kernel-r/image-config.txt"),
        ),
    ],
};

/// Every kernel image recipe, as `kernelbox image build` builds them.
pub const KERNEL_RECIPES: [&Recipe; 2] = [&KERNEL, &R_KERNEL];

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

impl Recipe {
    /// First 12 hex digits of the SHA-256 over the recipe files' names and contents.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, content) in self.files {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(content.as_bytes());
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())[..12].to_string()
    }

    /// The image tag of this recipe.
    pub fn tag(&self) -> String {
        format!("{}:{}", self.repository, self.hash())
    }

    /// Builds the image under its tag unless it exists. Progress goes to stderr.
    pub fn build(&self) -> Result<(), ImageError> {
        let dir = tempfile::tempdir()?;
        for (name, content) in self.files {
            std::fs::write(dir.path().join(name), content)?;
        }
        run(Command::new("bash")
            .arg(dir.path().join("build.sh"))
            .arg(self.tag()))
    }
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
        .arg(format!("kernelbox.recipe={}", KERNEL.hash()))
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
    fn recipe_hashes_are_stable_short_and_distinct() {
        assert_eq!(KERNEL.hash(), KERNEL.hash());
        assert_eq!(KERNEL.hash().len(), 12);
        assert_ne!(KERNEL.hash(), R_KERNEL.hash());
        assert!(KERNEL.tag().starts_with("kernelbox-kernel:"));
        assert!(R_KERNEL.tag().starts_with("kernelbox-kernel-r:"));
    }

    #[test]
    fn every_recipe_runs_under_tini_as_uid_1000_without_setuid_files() {
        for recipe in KERNEL_RECIPES {
            let [(_, dockerfile), (_, build), ..] = recipe.files;
            for text in [dockerfile, build] {
                assert!(text.contains("/usr/bin/tini"));
                assert!(text.contains("1000:1000"));
                assert!(
                    text.contains("-perm /6000"),
                    "setuid/setgid bits must be stripped"
                );
            }
        }
        let [(_, dockerfile), _, _, _, (_, config)] = KERNEL.files;
        for text in [dockerfile, config] {
            assert!(text.contains("MPLBACKEND=module://matplotlib_inline.backend_inline"));
        }
    }
}
