//! The single-host engine's egress network: found by name (the oldest of duplicates) or
//! created with traffic between its containers off, for sessions allowed full egress.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use crate::runtime::{RuntimeError, labels};

/// The networks called exactly `name`, oldest first (the engine allows duplicate names).
async fn networks_named(
    docker: &Docker,
    name: &str,
) -> Result<Vec<bollard::models::Network>, RuntimeError> {
    let filters = HashMap::from([("name", vec![name.to_string()])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let mut networks: Vec<_> = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| RuntimeError::Unreachable(e.to_string()))?
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(name))
        .collect();
    networks.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    Ok(networks)
}

/// Makes sure the egress network `name` exists and returns its id. A network this server
/// creates has traffic between its containers turned off, so kernels with egress cannot reach
/// each other. Servers starting together may each create one; all keep the oldest and remove
/// their own duplicate.
pub(super) async fn ensure_network(docker: &Docker, name: &str) -> Result<String, RuntimeError> {
    let check = |network: &bollard::models::Network| -> Result<String, RuntimeError> {
        network
            .id
            .clone()
            .ok_or_else(|| RuntimeError::NetworkPolicy {
                network: name.to_string(),
                detail: "the engine reported no id for it".to_string(),
            })
    };
    if let Some(oldest) = networks_named(docker, name).await?.first() {
        return check(oldest);
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".to_string()),
        internal: Some(false),
        options: Some(HashMap::from([(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        )])),
        labels: Some(HashMap::from([(
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        )])),
        ..Default::default()
    };
    let created = docker
        .create_network(request)
        .await
        .map_err(|e| {
            RuntimeError::Unreachable(format!("could not create the kernel network {name}: {e}"))
        })?
        .id;
    let networks = networks_named(docker, name).await?;
    let oldest = networks
        .first()
        .ok_or_else(|| RuntimeError::NetworkPolicy {
            network: name.to_string(),
            detail: "it vanished right after it was created".to_string(),
        })?;
    if oldest.id.as_deref() != Some(created.as_str()) {
        let _ = docker.remove_network(&created).await;
    } else {
        tracing::info!(network = name, "created the egress network");
    }
    check(oldest)
}
