//! How Swarm tasks name a kernel image (the server's, or a template's own), and so where they
//! may run: pinned by the digest a registry gave it (any node pulls exactly it), or by image
//! id on nodes labelled as holding it (this node is labelled when the image is first used;
//! `kernelbox image distribute` labels the others). It never places a task: the constraint
//! it implies is handed to `placement.rs`.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::UpdateNodeOptionsBuilder;

use super::SwarmConfig;
use crate::runtime::RuntimeError;
use crate::runtime::engine::resolve_image;
use crate::runtime::image_registry::{self, PinnedImage};

/// How tasks name the kernel image, and so where they may run.
#[derive(Debug)]
pub(super) enum KernelImage {
    /// Copied to nodes without a registry: named by id (without `sha256:`), so no node ever
    /// tries to pull it, and placed only on nodes labelled as holding it.
    Held { id_hex: String },
    /// In a registry: named by digest, so any node pulls exactly this image.
    Pinned(PinnedImage),
}

/// The node label saying a node holds the image `image_hex` (its id without `sha256:`),
/// named by the id's first 12 hex digits, with the whole id as its value.
pub(super) fn image_label(image_hex: &str) -> String {
    format!("kernelbox.image-{}", &image_hex[..image_hex.len().min(12)])
}

/// Labels `node` (through the manager `docker`) as holding the image `image_hex`, so kernels
/// in it may be placed there.
pub(in crate::runtime) async fn label_node(
    docker: &Docker,
    node: &str,
    image_hex: &str,
) -> Result<(), BollardError> {
    let inspect = docker.inspect_node(node).await?;
    let mut spec = inspect.spec.unwrap_or_default();
    let label = image_label(image_hex);
    let labels = spec.labels.get_or_insert_with(HashMap::new);
    if labels.get(&label).map(String::as_str) == Some(image_hex) {
        return Ok(());
    }
    labels.insert(label, image_hex.to_string());
    let version = inspect.version.and_then(|v| v.index).unwrap_or_default();
    let options = UpdateNodeOptionsBuilder::new()
        .version(version as i64)
        .build();
    docker.update_node(node, spec, options).await
}

impl KernelImage {
    /// How tasks name `image`. With a registry configured: pushes the local image (tagged
    /// `tag`) and pins what the registry stored. Else a digest reference: as it is.
    /// Otherwise: the local image by id, labelling this node (`node_id`) as holding it.
    pub(super) async fn resolve(
        docker: &Docker,
        config: &SwarmConfig,
        node_id: &str,
        (image, tag): (&str, &str),
    ) -> Result<Self, RuntimeError> {
        if config.registry.is_none()
            && let Some(pinned) = PinnedImage::parse(image)
        {
            return Ok(Self::Pinned(pinned));
        }
        let id = resolve_image(docker, image).await?;
        let id_hex = id.strip_prefix("sha256:").unwrap_or(&id).to_string();
        if let Some(repository) = &config.registry {
            let started = std::time::Instant::now();
            let credentials = config.registry_credentials.as_ref();
            let pinned = image_registry::push(docker, image, repository, tag, credentials).await?;
            tracing::info!(
                image = %pinned,
                seconds = started.elapsed().as_secs_f64(),
                "pushed a kernel image; tasks pull it by digest"
            );
            return Ok(Self::Pinned(pinned));
        }
        label_node(docker, node_id, &id_hex)
            .await
            .map_err(|e| RuntimeError::SwarmSetup(format!("labelling node {node_id}: {e}")))?;
        Ok(Self::Held { id_hex })
    }

    /// The placement constraint it implies: a node labelled as holding it, unless nodes pull
    /// it.
    pub(super) fn constraint(&self) -> Option<String> {
        match self {
            Self::Held { id_hex } => {
                Some(format!("node.labels.{} == {id_hex}", image_label(id_hex)))
            }
            Self::Pinned(_) => None,
        }
    }

    /// The image a task names by [`KernelImage::reference`].
    pub(super) fn from_reference(reference: &str) -> Option<Self> {
        match reference.strip_prefix("sha256:") {
            Some(id_hex) => Some(Self::Held {
                id_hex: id_hex.to_string(),
            }),
            None => PinnedImage::parse(reference).map(Self::Pinned),
        }
    }

    pub(super) fn reference(&self) -> String {
        match self {
            Self::Held { id_hex } => format!("sha256:{id_hex}"),
            Self::Pinned(pinned) => pinned.to_string(),
        }
    }
}
