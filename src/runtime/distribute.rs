//! Copying the kernel image to Swarm nodes when no registry answers. Owns exporting the image
//! from this engine, loading it into each node's engine, checking that it arrives with the
//! same id, and labelling the node (through a manager) as holding it, which is what lets the
//! Swarm runtime place kernels there. It must not start or remove anything.

use std::time::Instant;

use bollard::{API_DEFAULT_VERSION, Docker};

use super::engine::is_not_found;
use super::swarm::label_node;

/// Seconds one engine request may take: a load of a 1.4 GB image takes about a minute here.
const LOAD_TIMEOUT_SECS: u64 = 1800;

#[derive(Debug, thiserror::Error)]
pub enum DistributeError {
    #[error("cannot reach the Docker engine at {engine}: {detail}")]
    Unreachable { engine: String, detail: String },
    #[error("the image {image} is not on this engine: {detail}")]
    ImageMissing { image: String, detail: String },
    #[error("loading the image into {engine} failed: {detail}")]
    Load { engine: String, detail: String },
    #[error("{engine} holds {found} after the load, not {expected}")]
    Mismatch {
        engine: String,
        expected: String,
        found: String,
    },
    #[error("the engine at {engine} is not a node of a swarm; join it first")]
    NotInSwarm { engine: String },
    #[error("labelling node {node} through the manager failed: {detail}")]
    Label { node: String, detail: String },
}

/// What happened on one node.
#[derive(Debug)]
pub struct Delivery {
    pub engine: String,
    pub node: String,
    /// False when the node already held the image.
    pub copied: bool,
    pub seconds: f64,
}

/// The engine at `address` (`tcp://host:2375`, `unix:///path`), or this host's default one.
async fn engine(address: Option<&str>) -> Result<Docker, DistributeError> {
    let name = address.unwrap_or("the local engine").to_string();
    let unreachable = |detail: String| DistributeError::Unreachable {
        engine: name.clone(),
        detail,
    };
    let docker = match address {
        None => Docker::connect_with_defaults(),
        Some(address) if address.starts_with("unix://") => {
            Docker::connect_with_unix(address, LOAD_TIMEOUT_SECS, API_DEFAULT_VERSION)
        }
        Some(address) => Docker::connect_with_http(address, LOAD_TIMEOUT_SECS, API_DEFAULT_VERSION),
    }
    .map_err(|e| unreachable(e.to_string()))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// Copies `image` from this engine into every engine in `nodes` that lacks it, and labels each
/// node `kernelbox.image-<first 12 hex digits of its id>=<image id>` through `manager`
/// (default: this engine).
pub async fn distribute(
    image: &str,
    manager: Option<&str>,
    nodes: &[String],
) -> Result<Vec<Delivery>, DistributeError> {
    let local = engine(None).await?;
    let id = local
        .inspect_image(image)
        .await
        .map_err(|e| DistributeError::ImageMissing {
            image: image.to_string(),
            detail: e.to_string(),
        })?
        .id
        .unwrap_or_default();
    let manager = engine(manager).await?;
    let deliveries = nodes
        .iter()
        .map(|address| deliver(&local, &manager, &id, image, address));
    futures::future::try_join_all(deliveries).await
}

/// One node: loads the image unless it holds it, checks the id, labels the node.
async fn deliver(
    local: &Docker,
    manager: &Docker,
    id: &str,
    image: &str,
    address: &str,
) -> Result<Delivery, DistributeError> {
    let started = Instant::now();
    let node = engine(Some(address)).await?;
    let copied = match node.inspect_image(id).await {
        Ok(_) => false,
        Err(e) if is_not_found(&e) => {
            load(local, &node, image, address).await?;
            true
        }
        Err(e) => {
            return Err(DistributeError::Unreachable {
                engine: address.to_string(),
                detail: e.to_string(),
            });
        }
    };
    let found = node
        .inspect_image(id)
        .await
        .ok()
        .and_then(|i| i.id)
        .unwrap_or_else(|| "nothing".to_string());
    if found != id {
        return Err(DistributeError::Mismatch {
            engine: address.to_string(),
            expected: id.to_string(),
            found,
        });
    }
    let node_id = node
        .info()
        .await
        .ok()
        .and_then(|info| info.swarm?.node_id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| DistributeError::NotInSwarm {
            engine: address.to_string(),
        })?;
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    label_node(manager, &node_id, hex)
        .await
        .map_err(|e| DistributeError::Label {
            node: node_id.clone(),
            detail: e.to_string(),
        })?;
    Ok(Delivery {
        engine: address.to_string(),
        node: node_id,
        copied,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Streams `docker save` of `image` from `from` into `docker load` on `to`.
async fn load(
    from: &Docker,
    to: &Docker,
    image: &str,
    address: &str,
) -> Result<(), DistributeError> {
    use futures::StreamExt;
    let failed = |detail: String| DistributeError::Load {
        engine: address.to_string(),
        detail,
    };
    let archive = from.export_image(image);
    let options = bollard::query_parameters::ImportImageOptionsBuilder::new()
        .quiet(true)
        .build();
    let mut progress = to.import_image_stream(options, archive, None);
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| failed(e.to_string()))?;
        if let Some(error) = step.error_detail.and_then(|e| e.message) {
            return Err(failed(error));
        }
    }
    Ok(())
}
