//! The overlay network of each kernel's service (internal unless the kernel has egress,
//! labelled with the service it was made for), attaching the server's own container to it,
//! and removing it once its task lets go, sweeping at start what an earlier run left. It
//! creates no service.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest};
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::{SwarmRuntime, session_error};
use crate::runtime::engine::{instance_filter, is_not_found};
use crate::runtime::sandbox::NetworkPolicy;
use crate::runtime::{Runtime, RuntimeError, labels};

/// Label on each kernel network naming the service it was made for.
const SERVICE_LABEL: &str = "kernelbox.service";

/// How long a removed service's network may stay busy before its removal is given up.
const NETWORK_REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

impl SwarmRuntime {
    /// Removes kernel networks of this instance whose service is gone (a crash between
    /// creating the two, or a removal that gave up).
    pub(super) async fn sweep_networks(&self) {
        let Ok(networks) = self.list_networks(None).await else {
            return;
        };
        let services: Vec<String> = match self.list_managed().await {
            Ok(services) => services.into_iter().map(|s| s.id).collect(),
            Err(_) => return,
        };
        for network in networks {
            let service = network
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_LABEL))
                .cloned()
                .unwrap_or_default();
            if !services.contains(&service) {
                self.remove_networks(&service).await;
            }
        }
    }

    /// Networks of this instance, all of them or those made for `service`.
    pub(super) async fn list_networks(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<bollard::models::Network>, RuntimeError> {
        let mut wanted = instance_filter(&self.config.instance);
        if let Some(service) = service {
            wanted.push(format!("{SERVICE_LABEL}={service}"));
        }
        let filters = HashMap::from([("label", wanted)]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))
    }

    /// A fresh overlay network for one service, realizing `policy`.
    pub(super) async fn create_network(
        &self,
        service: &str,
        session_id: &str,
        policy: NetworkPolicy,
    ) -> Result<String, RuntimeError> {
        let mut network_labels = HashMap::from([
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::INSTANCE.to_string(), self.config.instance.clone()),
            (labels::SESSION_ID.to_string(), session_id.to_string()),
        ]);
        network_labels.insert(SERVICE_LABEL.to_string(), service.to_string());
        let request = NetworkCreateRequest {
            name: service.to_string(),
            driver: Some("overlay".to_string()),
            attachable: Some(true),
            internal: Some(policy == NetworkPolicy::Internal),
            labels: Some(network_labels),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(request)
            .await
            .map_err(session_error("create the overlay network of", session_id))?;
        Ok(created.id)
    }

    /// Disconnects the server from `service`'s networks and removes them. A network whose
    /// task has not let go yet (it is stopping, or its node is lost) is retried in the
    /// background until it can go, for at most `NETWORK_REMOVE_TIMEOUT` after shutdown begins.
    pub(super) async fn remove_networks(&self, service: &str) {
        let Ok(networks) = self.list_networks(Some(service)).await else {
            return;
        };
        for id in networks.into_iter().filter_map(|n| n.id) {
            let _ = self
                .docker
                .disconnect_network(
                    &id,
                    NetworkDisconnectRequest {
                        container: self.config.server_container.clone(),
                        force: Some(true),
                    },
                )
                .await;
            match self.docker.remove_network(&id).await {
                Ok(()) => continue,
                Err(e) if is_not_found(&e) => continue,
                Err(_) => {}
            }
            let docker = self.docker.clone();
            let cancel = self.cancel.clone();
            self.tasks.spawn(async move {
                let mut deadline: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = cancel.cancelled(), if deadline.is_none() => {
                            deadline = Some(tokio::time::Instant::now() + NETWORK_REMOVE_TIMEOUT);
                        }
                    }
                    match docker.remove_network(&id).await {
                        Ok(()) => return,
                        Err(e) if is_not_found(&e) => return,
                        Err(error) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                            tracing::warn!(network = %id, %error, "could not remove a kernel network; the next start sweeps it");
                            return;
                        }
                        Err(_) => {}
                    }
                }
            });
        }
    }

    /// Attaches the server's container to a kernel network.
    pub(super) async fn attach_server(&self, network: &str) -> Result<(), RuntimeError> {
        let request = NetworkConnectRequest {
            container: self.config.server_container.clone(),
            endpoint_config: None,
        };
        match self.docker.connect_network(network, request).await {
            Ok(()) => Ok(()),
            // Already attached (an adopted kernel after a server restart in the same container).
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("already exists") =>
            {
                Ok(())
            }
            Err(e) => Err(RuntimeError::NetworkPolicy {
                network: network.to_string(),
                detail: format!("could not attach the server's container to it: {e}"),
            }),
        }
    }
}
