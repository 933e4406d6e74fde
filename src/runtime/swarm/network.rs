//! The overlay network of each kernel's service (internal unless the kernel has egress,
//! labelled with the service it was made for), attaching the server's own container to it,
//! and removing it once its task lets go, sweeping at start what an earlier run left. Also
//! which of the server container's addresses its HTTP listener may take: none on a kernel
//! network, where the server is only to dial its kernel. It creates no service.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    EndpointSettings, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::{SwarmRuntime, session_error};

/// The name the server's container has on every kernel overlay, for the egress proxy.
const EGRESS_ALIAS: &str = "kernelbox-egress";
/// The port a kernel's egress proxy listens on, on the server's address on its overlay.
pub(super) const EGRESS_PORT: u16 = 3128;
/// A kernel's proxy variables: the server, by its alias on the kernel's overlay.
pub(super) const EGRESS_PROXY_URL: &str = "http://kernelbox-egress:3128";
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

    /// Where an HTTP listener asked for every interface (`wildcard`) listens instead: the
    /// server container's addresses of that family on every network that is not a kernel
    /// network (of any kernelbox instance), after loopback (for probes inside the container;
    /// kernels have their own). Kernels sit on internal overlays
    /// with no route to those networks, and on their own overlay the server listens on
    /// nothing, so no kernel reaches the listener. Read once, before serving: overlays joined
    /// later are never listened on.
    pub(super) async fn server_listen_addresses(
        &self,
        wildcard: IpAddr,
    ) -> Result<Vec<IpAddr>, RuntimeError> {
        let unreachable = |e: BollardError| RuntimeError::Unreachable(e.to_string());
        let attached = self.server_endpoints().await?;
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                SERVICE_LABEL.to_string(),
            ],
        )]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let kernel_networks: HashSet<String> = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(unreachable)?
            .into_iter()
            .flat_map(|network| [network.id, network.name])
            .flatten()
            .collect();
        let outside = listen_addresses(wildcard, &attached, &kernel_networks);
        if outside.is_empty() {
            return Err(RuntimeError::SwarmSetup(format!(
                "the server's container {} has no address outside kernel networks for the HTTP listener; run it on a user-defined network",
                self.config.server_container
            )));
        }
        Ok([IpAddr::V4(Ipv4Addr::LOCALHOST)]
            .into_iter()
            .chain(outside)
            .collect())
    }

    /// The server container's endpoints, by network name.
    async fn server_endpoints(&self) -> Result<HashMap<String, EndpointSettings>, RuntimeError> {
        let container = self
            .docker
            .inspect_container(&self.config.server_container, None)
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(container
            .network_settings
            .and_then(|settings| settings.networks)
            .unwrap_or_default())
    }

    /// The server container's address on `network`, where a kernel's egress proxy listens.
    pub(super) async fn server_address_on(&self, network: &str) -> Result<IpAddr, RuntimeError> {
        self.server_endpoints()
            .await?
            .iter()
            .find(|(name, endpoint)| {
                *name == network || endpoint.network_id.as_deref() == Some(network)
            })
            .and_then(|(_, endpoint)| endpoint.ip_address.as_deref())
            .and_then(|address| address.parse().ok())
            .ok_or_else(|| RuntimeError::NetworkPolicy {
                network: network.to_string(),
                detail: "the server's container has no address on it for the egress proxy"
                    .to_string(),
            })
    }

    /// Attaches the server's container to a kernel network, where it answers to
    /// [`EGRESS_ALIAS`] (the name a kernel's proxy variables give).
    pub(super) async fn attach_server(&self, network: &str) -> Result<(), RuntimeError> {
        let request = NetworkConnectRequest {
            container: self.config.server_container.clone(),
            endpoint_config: Some(EndpointSettings {
                aliases: Some(vec![EGRESS_ALIAS.to_string()]),
                ..Default::default()
            }),
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

/// The addresses of `wildcard`'s family that the server's endpoints (`attached`, by network
/// name) hold on networks not in `kernel_networks` (ids and names), in network name order.
fn listen_addresses(
    wildcard: IpAddr,
    attached: &HashMap<String, EndpointSettings>,
    kernel_networks: &HashSet<String>,
) -> Vec<IpAddr> {
    let mut names: Vec<&String> = attached.keys().collect();
    names.sort();
    let mut addresses = Vec::new();
    for name in names {
        let endpoint = &attached[name];
        let kernel = kernel_networks.contains(name)
            || endpoint
                .network_id
                .as_ref()
                .is_some_and(|id| kernel_networks.contains(id));
        if kernel {
            continue;
        }
        let found = [&endpoint.ip_address, &endpoint.global_ipv6_address]
            .into_iter()
            .flatten()
            .filter_map(|address| address.parse::<IpAddr>().ok())
            .filter(|address| wildcard.is_ipv6() || address.is_ipv4())
            .filter(|address| !address.is_unspecified());
        for address in found {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_url_names_the_alias_and_port() {
        assert_eq!(
            EGRESS_PROXY_URL,
            format!("http://{EGRESS_ALIAS}:{EGRESS_PORT}")
        );
    }

    fn endpoint(id: &str, v4: &str, v6: &str) -> EndpointSettings {
        EndpointSettings {
            network_id: Some(id.to_string()),
            ip_address: Some(v4.to_string()),
            global_ipv6_address: Some(v6.to_string()),
            ..Default::default()
        }
    }

    fn attached() -> HashMap<String, EndpointSettings> {
        HashMap::from([
            (
                "kernelbox-server".to_string(),
                endpoint("aaa", "172.20.0.2", "fd00::2"),
            ),
            ("kb-1234".to_string(), endpoint("kkk1", "10.0.1.3", "")),
            ("kb-5678".to_string(), endpoint("kkk2", "10.0.2.3", "")),
            ("monitoring".to_string(), endpoint("mmm", "172.21.0.5", "")),
        ])
    }

    fn ips(addresses: &[&str]) -> Vec<IpAddr> {
        addresses.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn kernel_networks_are_left_out_by_id_or_name() {
        let kernel = HashSet::from(["kkk1".to_string(), "kb-5678".to_string()]);
        let chosen = listen_addresses("0.0.0.0".parse().unwrap(), &attached(), &kernel);
        assert_eq!(chosen, ips(&["172.20.0.2", "172.21.0.5"]));
    }

    #[test]
    fn an_ipv6_wildcard_takes_both_families_and_ipv4_only_its_own() {
        let kernel = HashSet::from(["kkk1".to_string(), "kkk2".to_string()]);
        let mut server_only = attached();
        server_only.remove("monitoring");
        let v6 = listen_addresses("::".parse().unwrap(), &server_only, &kernel);
        assert_eq!(v6, ips(&["172.20.0.2", "fd00::2"]));
        let v4 = listen_addresses("0.0.0.0".parse().unwrap(), &server_only, &kernel);
        assert_eq!(v4, ips(&["172.20.0.2"]));
    }

    #[test]
    fn a_server_only_on_kernel_networks_has_nothing_to_listen_on() {
        let kernel = HashSet::from([
            "aaa".to_string(),
            "kkk1".to_string(),
            "kkk2".to_string(),
            "mmm".to_string(),
        ]);
        let chosen = listen_addresses("0.0.0.0".parse().unwrap(), &attached(), &kernel);
        assert!(chosen.is_empty(), "{chosen:?}");
    }

    #[test]
    fn empty_and_unparsable_addresses_are_skipped() {
        let attached = HashMap::from([
            ("host".to_string(), endpoint("hhh", "", "")),
            (
                "odd".to_string(),
                endpoint("ooo", "not an address", "0.0.0.0"),
            ),
        ]);
        let chosen = listen_addresses("::".parse().unwrap(), &attached, &HashSet::new());
        assert!(chosen.is_empty(), "{chosen:?}");
    }
}
