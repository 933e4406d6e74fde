//! How Swarm tasks name the kernel image, and so where they may run: pinned by the digest a
//! registry gave it (any node pulls exactly it), or by image id on nodes labelled as holding
//! it (this node is labelled at start; `kernelbox image distribute` labels the others). It
//! never places a task: the constraint it implies is handed to `placement.rs`.

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

/// The node label saying a node holds this recipe's image, with the image id as its value.
pub(super) fn image_label(recipe: &str) -> String {
    format!("kernelbox.image-{recipe}")
}

/// Labels `node` (through the manager `docker`) as holding the image `image_hex` of `recipe`,
/// so kernels may be placed on it.
pub(in crate::runtime) async fn label_node(
    docker: &Docker,
    node: &str,
    recipe: &str,
    image_hex: &str,
) -> Result<(), BollardError> {
    let inspect = docker.inspect_node(node).await?;
    let mut spec = inspect.spec.unwrap_or_default();
    let label = image_label(recipe);
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
    /// With a registry configured: pushes the image and pins what the registry stored. With
    /// a digest reference: takes it as is. Otherwise: the local image by id, labelling this
    /// node (`node_id`) as holding it.
    pub(super) async fn resolve(
        docker: &Docker,
        config: &SwarmConfig,
        node_id: &str,
    ) -> Result<Self, RuntimeError> {
        if let Some(repository) = &config.registry {
            resolve_image(docker, &config.image).await?;
            let started = std::time::Instant::now();
            let credentials = config.registry_credentials.as_ref();
            let pinned = image_registry::push(
                docker,
                &config.image,
                repository,
                &config.recipe,
                credentials,
            )
            .await?;
            tracing::info!(
                image = %pinned,
                seconds = started.elapsed().as_secs_f64(),
                "pushed the kernel image; tasks pull it by digest"
            );
            return Ok(Self::Pinned(pinned));
        }
        if let Some(pinned) = PinnedImage::parse(&config.image) {
            return Ok(Self::Pinned(pinned));
        }
        let id = resolve_image(docker, &config.image).await?;
        let id_hex = id.strip_prefix("sha256:").unwrap_or(&id).to_string();
        label_node(docker, node_id, &config.recipe, &id_hex)
            .await
            .map_err(|e| RuntimeError::SwarmSetup(format!("labelling node {node_id}: {e}")))?;
        Ok(Self::Held { id_hex })
    }

    pub(super) fn reference(&self) -> String {
        match self {
            Self::Held { id_hex } => format!("sha256:{id_hex}"),
            Self::Pinned(pinned) => pinned.to_string(),
        }
    }
}
