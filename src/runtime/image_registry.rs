//! The kernel image in a registry. Owns checking a repository or pinned reference for shape,
//! tagging the local image into the repository, pushing it through the engine, and reading
//! back the digest the registry gave it, so nodes pull exactly that image (`repo@sha256:…`)
//! and never a tag that may have moved. It must not start or remove anything, nor talk to a
//! registry except through the engine.

use std::fmt;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
use futures::StreamExt;

use super::engine::{is_not_found, local_engine};

#[derive(Debug, thiserror::Error)]
pub enum ImageRegistryError {
    #[error("the container engine is unreachable: {0}")]
    Unreachable(String),
    #[error(
        "{given:?} is not a registry repository: give HOST[:PORT]/PATH in lower case, with no tag or digest (for example registry.example.com:5000/kernelbox)"
    )]
    BadRepository { given: String },
    #[error("the image {image} is not on this engine: {detail}")]
    ImageMissing { image: String, detail: String },
    #[error("tagging {image} as {target} failed: {detail}")]
    Tag {
        image: String,
        target: String,
        detail: String,
    },
    #[error(
        "pushing {target} failed: {detail} (an engine speaks plain HTTP only to registries on 127.0.0.0/8 or listed in its insecure-registries; credentials come from KERNELBOX_REGISTRY_USERNAME and KERNELBOX_REGISTRY_PASSWORD)"
    )]
    Push { target: String, detail: String },
    #[error("the registry took {target} but the engine recorded no digest for {repository}")]
    NoDigest { target: String, repository: String },
}

/// A registry repository: `HOST[:PORT]/PATH`, no tag, no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository(String);

impl Repository {
    /// Checks the shape: a registry host (it has a dot or a port, or is `localhost`) and a
    /// lower-case path of `[a-z0-9._/-]` components.
    pub fn parse(given: &str) -> Result<Self, ImageRegistryError> {
        let bad = || ImageRegistryError::BadRepository {
            given: given.to_string(),
        };
        let (host, path) = given.split_once('/').ok_or_else(bad)?;
        let host_ok = !host.is_empty()
            && (host.contains('.') || host.contains(':') || host == "localhost")
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        let path_ok = !path.is_empty()
            && path.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
            });
        if host_ok && path_ok {
            Ok(Self(given.to_string()))
        } else {
            Err(bad())
        }
    }

    /// The registry's host (and port): what credentials are for.
    pub fn host(&self) -> &str {
        registry_host(&self.0)
    }
}

/// The registry part of a checked repository or reference: everything before the first `/`.
fn registry_host(reference: &str) -> &str {
    reference
        .split_once('/')
        .map_or(reference, |(host, _)| host)
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An image named by its registry digest: `HOST[:PORT]/PATH@sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImage(String);

impl PinnedImage {
    /// `Some` when `reference` names an image by digest in a registry repository.
    pub fn parse(reference: &str) -> Option<Self> {
        let (repository, digest) = reference.split_once("@sha256:")?;
        let hex_ok = digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit());
        (hex_ok && Repository::parse(repository).is_ok()).then(|| Self(reference.to_string()))
    }

    /// The registry's host (and port) the image is pulled from.
    pub fn host(&self) -> &str {
        registry_host(&self.0)
    }
}

impl fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user name and password for the kernel image's registry. Its `Debug` never shows the
/// password.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: Option<String>,
}

impl Credentials {
    pub fn new(username: String, password: Option<String>) -> Self {
        Self { username, password }
    }

    /// What the engine sends to the registry `host` (and, on a service, what every node that
    /// pulls sends).
    pub(super) fn engine_auth(&self, host: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: self.password.clone(),
            serveraddress: Some(host.to_string()),
            ..Default::default()
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// [`push`] through this host's engine: what `kernelbox image push` does.
pub async fn push_from_this_engine(
    image: &str,
    repository: &Repository,
    tag: &str,
    credentials: Option<&Credentials>,
) -> Result<PinnedImage, ImageRegistryError> {
    let docker = local_engine()
        .await
        .map_err(|e| ImageRegistryError::Unreachable(e.to_string()))?;
    push(&docker, image, repository, tag, credentials).await
}

/// Tags the local `image` as `repository:tag`, pushes it, and returns it pinned by the digest
/// the registry gave it.
pub(super) async fn push(
    docker: &Docker,
    image: &str,
    repository: &Repository,
    tag: &str,
    credentials: Option<&Credentials>,
) -> Result<PinnedImage, ImageRegistryError> {
    let target = format!("{repository}:{tag}");
    let options = TagImageOptionsBuilder::new()
        .repo(&repository.to_string())
        .tag(tag)
        .build();
    docker.tag_image(image, Some(options)).await.map_err(|e| {
        let detail = e.to_string();
        if is_not_found(&e) {
            ImageRegistryError::ImageMissing {
                image: image.to_string(),
                detail,
            }
        } else {
            ImageRegistryError::Tag {
                image: image.to_string(),
                target: target.clone(),
                detail,
            }
        }
    })?;
    let failed = |detail: String| ImageRegistryError::Push {
        target: target.clone(),
        detail,
    };
    let options = PushImageOptionsBuilder::new().tag(tag).build();
    let mut progress = docker.push_image(
        &repository.to_string(),
        Some(options),
        credentials.map(|c| c.engine_auth(repository.host())),
    );
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| failed(e.to_string()))?;
        if let Some(error) = step.error_detail.and_then(|e| e.message) {
            return Err(failed(error));
        }
    }
    let prefix = format!("{repository}@sha256:");
    docker
        .inspect_image(&target)
        .await
        .map_err(|e| failed(e.to_string()))?
        .repo_digests
        .unwrap_or_default()
        .iter()
        .find(|digest| digest.starts_with(&prefix))
        .and_then(|digest| PinnedImage::parse(digest))
        .ok_or_else(|| ImageRegistryError::NoDigest {
            target,
            repository: repository.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_name_a_registry_host_and_a_lower_case_path() {
        for good in [
            "127.0.0.1:5000/kernelbox",
            "registry.example.com/team/kernelbox",
            "localhost/kernelbox",
            "[::1]:5000/k.b_x-1",
        ] {
            assert!(Repository::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "kernelbox",
            "library/kernelbox",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/Kernelbox",
            "127.0.0.1:5000/kernelbox:tag",
            "127.0.0.1:5000/kernelbox@sha256:00",
            "127.0.0.1:5000//kernelbox",
            "reg istry.io/kernelbox",
        ] {
            let error = Repository::parse(bad).unwrap_err().to_string();
            assert!(error.contains("HOST[:PORT]/PATH"), "{bad}: {error}");
        }
        assert_eq!(
            Repository::parse("127.0.0.1:5000/a/b").unwrap().host(),
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn credentials_never_show_their_password() {
        let credentials = Credentials::new("ci".into(), Some("hunter2".into()));
        let shown = format!("{credentials:?}");
        assert!(shown.contains("ci"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let auth = credentials.engine_auth("registry.example.com");
        assert_eq!(auth.serveraddress.as_deref(), Some("registry.example.com"));
    }

    #[test]
    fn only_digest_references_in_a_repository_are_pinned() {
        let digest = "a".repeat(64);
        let reference = format!("10.0.0.1:5000/kernelbox@sha256:{digest}");
        let pinned = PinnedImage::parse(&reference).expect("a digest reference is pinned");
        assert_eq!(pinned.to_string(), reference);
        assert_eq!(pinned.host(), "10.0.0.1:5000");
        for not_pinned in [
            "kernelbox-kernel:abc".to_string(),
            format!("sha256:{digest}"),
            format!("kernelbox@sha256:{digest}"),
            format!("10.0.0.1:5000/kernelbox@sha256:{}", "a".repeat(63)),
            format!("10.0.0.1:5000/kernelbox:tag@sha256:{digest}"),
        ] {
            assert!(PinnedImage::parse(&not_pinned).is_none(), "{not_pinned}");
        }
    }
}
