//! The Docker Swarm engine, through bollard. Owns one service (one task, never restarted by
//! Swarm) and one attachable overlay network per kernel, the service's sandbox and its
//! read-back, naming the kernel image (pinned by registry digest, or by id on nodes labelled
//! as holding it), attaching the server's own container to each kernel's network, and
//! reading a task's death from its status. It must not schedule anything itself: Swarm
//! places tasks, kernelbox only decides restarts.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountTmpfsOptions, MountType,
    NetworkAttachmentConfig, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
    Node, NodeState, ResourceObject, ResourcesUlimits, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecPrivileges, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListNetworksOptionsBuilder, ListNodesOptions,
    ListServicesOptionsBuilder, ListTasksOptionsBuilder, UpdateNodeOptionsBuilder,
};
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::docker::{
    CA_BUNDLE_IN_CONTAINER, KERNEL_BOOTSTRAP, KERNEL_LAUNCH, ca_bundle_env, collect_job_output,
    container_usage, is_not_found, local_engine, logs_tail, managed_labels, resolve_image,
    tail_options,
};
use super::image_registry::{self, Credentials, PinnedImage, Repository};
use super::{
    ContainerExit, ContainerUsage, ExecCommand, ExecOutput, JobSpec, KernelContainer,
    KernelEndpoint, KernelSpec, Limits, ManagedContainer, Runtime, RuntimeError, RuntimeHealth,
    labels,
};
use crate::kernel::ChannelPorts;

/// The oldest engine API whose services carry the whole sandbox: `CapabilityDrop`,
/// `Ulimits` and `Pids` arrived in 1.41.
const MINIMUM_API: (u32, u32) = (1, 41);
/// `Privileges.NoNewPrivileges` on services arrived in 1.44; older engines drop it.
const NO_NEW_PRIVILEGES_API: (u32, u32) = (1, 44);
/// Node label reserving a node for one owner: a tenant, or `pool` for the warm pool. An owner
/// with reserved nodes runs only there; everyone else stays off them.
pub const RESERVED_LABEL: &str = "kernelbox.reserved-for";
/// Label on each kernel network naming the service it was made for.
const SERVICE_LABEL: &str = "kernelbox.service";
/// How long a task may take from create to running before it is given up.
const TASK_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a task may take to get going while its node prepares it: a node's first task
/// from a registry pulls the whole image (1.4 GB).
const IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the task's name may take to appear in the network's DNS.
const DNS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a removed service's network may stay busy before its removal is given up.
const NETWORK_REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// How kernel services are made on this swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Image reference of the kernel image: a tag or id on this node, or a digest reference
    /// (`HOST/PATH@sha256:…`) that nodes pull from its registry.
    pub image: String,
    /// Registry repository to push the kernel image to at start; tasks then name it by the
    /// digest the registry gave it. `None`: nodes must hold the image (`image distribute`),
    /// unless `image` is already a digest reference.
    pub registry: Option<Repository>,
    /// Credentials for the image's registry, sent with the push and with every service so
    /// nodes can pull.
    pub registry_credentials: Option<Credentials>,
    /// Recipe hash recorded on every service.
    pub recipe: String,
    /// Distinguishes this server's services from any other server's on the same swarm.
    pub instance: String,
    /// `uid:gid` the kernel runs as.
    pub user: String,
    /// CA bundle mounted read-only into every kernel; the path must exist on every node.
    pub ca_bundle: Option<PathBuf>,
    /// The server's own container, attached to each kernel's network.
    pub server_container: String,
    /// Extra placement constraints for every kernel (`node.labels.pool == kernels`, ...).
    pub constraints: Vec<String>,
}

pub struct SwarmRuntime {
    docker: Docker,
    config: SwarmConfig,
    image: KernelImage,
    /// What nodes present to the image's registry when they pull it.
    registry_auth: Option<DockerCredentials>,
    no_new_privileges: bool,
    api_version: String,
    /// Three dispatcher heartbeats and a margin: the manager declares a silent node down
    /// after about three missed heartbeats.
    node_loss_grace: Duration,
    reaper: mpsc::UnboundedSender<String>,
    /// Network removals that wait for a task to let go run here, until `cancel`.
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// How tasks name the kernel image, and so where they may run.
#[derive(Debug)]
enum KernelImage {
    /// Copied to nodes without a registry: named by id (without `sha256:`), so no node ever
    /// tries to pull it, and placed only on nodes labelled as holding it.
    Held { id_hex: String },
    /// In a registry: named by digest, so any node pulls exactly this image.
    Pinned(PinnedImage),
}

impl KernelImage {
    /// With a registry configured: pushes the image and pins what the registry stored. With
    /// a digest reference: takes it as is. Otherwise: the local image by id, labelling this
    /// node (`node_id`) as holding it.
    async fn resolve(
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

    fn reference(&self) -> String {
        match self {
            Self::Held { id_hex } => format!("sha256:{id_hex}"),
            Self::Pinned(pinned) => pinned.to_string(),
        }
    }
}

/// The node label saying a node holds this recipe's image, with the image id as its value.
pub fn image_label(recipe: &str) -> String {
    format!("kernelbox.image-{recipe}")
}

/// Labels `node` (through the manager `docker`) as holding the image `image_hex` of `recipe`,
/// so kernels may be placed on it.
pub(super) async fn label_node(
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

fn parse_api(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn engine_error(action: &'static str, service: &str) -> impl FnOnce(BollardError) -> RuntimeError {
    let container = service.to_string();
    move |e| RuntimeError::Engine {
        action,
        container,
        detail: e.to_string(),
    }
}

/// A refusal from the engine, or the engine not answering at all (said plainly: the caller
/// may retry once the engine is back).
fn session_error(
    action: &'static str,
    session_id: &str,
) -> impl FnOnce(BollardError) -> RuntimeError {
    let session_id = session_id.to_string();
    move |e| match e {
        e @ BollardError::DockerResponseServerError { .. } => RuntimeError::Container {
            action,
            session_id,
            detail: e.to_string(),
        },
        e => RuntimeError::Unreachable(format!(
            "the Docker engine did not answer while trying to {action} the kernel for session {session_id}: {e}"
        )),
    }
}

/// A task's state is final: it will never run again.
fn is_final(state: &TaskState) -> bool {
    matches!(
        state,
        TaskState::COMPLETE
            | TaskState::SHUTDOWN
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::REMOVE
            | TaskState::ORPHANED
    )
}

/// Whether `node` meets one Swarm placement constraint (`key == value` or `key != value`).
/// Attributes this does not know count as met: the scheduler has the last word.
fn satisfies(node: &Node, constraint: &str) -> bool {
    let (key, wanted, equal) = match constraint.split_once("==") {
        Some((key, value)) => (key, value, true),
        None => match constraint.split_once("!=") {
            Some((key, value)) => (key, value, false),
            None => return true,
        },
    };
    let (key, wanted) = (key.trim(), wanted.trim());
    let spec = node.spec.as_ref();
    let description = node.description.as_ref();
    let actual: Option<String> = match key {
        "node.id" => node.id.clone(),
        "node.hostname" => description.and_then(|d| d.hostname.clone()),
        "node.role" => spec.and_then(|s| s.role).map(|r| r.to_string()),
        "node.platform.os" => description.and_then(|d| d.platform.as_ref()?.os.clone()),
        "node.platform.arch" => description.and_then(|d| d.platform.as_ref()?.architecture.clone()),
        key => match key.strip_prefix("node.labels.") {
            Some(label) => node_label(node, label).cloned(),
            None => return true,
        },
    };
    let same = actual.is_some_and(|actual| actual.eq_ignore_ascii_case(wanted));
    same == equal
}

fn node_label<'a>(node: &'a Node, label: &str) -> Option<&'a String> {
    node.spec.as_ref()?.labels.as_ref()?.get(label)
}

/// Which nodes an owner's kernels may use, from the nodes' reservations.
struct Reservations {
    /// Owners that have nodes reserved for them.
    owners: BTreeSet<String>,
}

impl Reservations {
    fn of(nodes: &[Node]) -> Self {
        Self {
            owners: nodes
                .iter()
                .filter_map(|n| node_label(n, RESERVED_LABEL).cloned())
                .collect(),
        }
    }

    /// Swarm constraints saying the same.
    fn constraints(&self, owner: &str) -> Vec<String> {
        if self.owners.contains(owner) {
            vec![format!("node.labels.{RESERVED_LABEL} == {owner}")]
        } else {
            self.owners
                .iter()
                .map(|other| format!("node.labels.{RESERVED_LABEL} != {other}"))
                .collect()
        }
    }
}

/// What one task is doing, as far as kernelbox cares.
enum TaskProgress {
    Waiting,
    /// On a node, getting ready: pulling the image when the node lacks it.
    Preparing,
    /// Pending with a scheduler complaint (no node fits).
    Unplaceable(String),
    Running(Task),
    Ended(Task),
}

impl SwarmRuntime {
    /// Connects to a manager's engine, checks the API version, that the server runs in a
    /// container on a user-defined network, and settles how tasks name the kernel image.
    /// The reaper runs on `tasks` until `cancel`.
    pub async fn connect(
        config: SwarmConfig,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, RuntimeError> {
        let docker = local_engine()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let api_version = docker.client_version().to_string();
        let api = parse_api(&api_version);
        if api < MINIMUM_API {
            return Err(RuntimeError::EngineTooOld {
                runtime: "swarm",
                api_version,
                minimum: "1.41",
            });
        }
        let info = docker
            .info()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let swarm = info.swarm.unwrap_or_default();
        let heartbeat = swarm
            .cluster
            .as_ref()
            .and_then(|c| c.spec.as_ref()?.dispatcher.as_ref()?.heartbeat_period)
            .filter(|period| *period > 0)
            .map(|period| Duration::from_nanos(period as u64))
            .unwrap_or(Duration::from_secs(5));
        if swarm.control_available != Some(true) {
            return Err(RuntimeError::SwarmSetup(
                "this engine is not a Swarm manager; run the server on a manager node (`docker swarm init` makes one)".to_string(),
            ));
        }
        let node_id = swarm.node_id.unwrap_or_default();
        docker
            .inspect_container(&config.server_container, None)
            .await
            .map_err(|e| {
                RuntimeError::SwarmSetup(format!(
                    "the server must run as a container on the manager (the host cannot reach overlay addresses), but this engine has no container {}: {e}; set --swarm-server-container",
                    config.server_container
                ))
            })?;
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        if !resolv.contains("127.0.0.11") {
            return Err(RuntimeError::SwarmSetup(
                "the server's container must be on a user-defined network (docker run --network NAME) so Docker's DNS resolves kernel tasks by name".to_string(),
            ));
        }
        let image = KernelImage::resolve(&docker, &config, &node_id).await?;
        let registry_auth = match (&image, &config.registry_credentials) {
            (KernelImage::Pinned(pinned), Some(credentials)) => {
                Some(credentials.engine_auth(pinned.host()))
            }
            _ => None,
        };
        let (reaper, reaped) = mpsc::unbounded_channel();
        let runtime = Arc::new(Self {
            docker,
            registry_auth,
            no_new_privileges: api >= NO_NEW_PRIVILEGES_API,
            config,
            image,
            api_version,
            node_loss_grace: heartbeat * 3 + Duration::from_secs(3),
            reaper,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        });
        runtime.sweep_networks().await;
        tracing::info!(
            engine_api = %runtime.api_version,
            node = %node_id,
            image = %runtime.image.reference(),
            no_new_privileges = runtime.no_new_privileges,
            "connected to the Swarm manager"
        );
        tasks.spawn(reap(runtime.clone(), reaped, cancel));
        Ok(runtime)
    }

    /// Removes kernel networks of this instance whose service is gone (a crash between
    /// creating the two, or a removal that gave up).
    async fn sweep_networks(&self) {
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
    async fn list_networks(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<bollard::models::Network>, RuntimeError> {
        let mut wanted = vec![
            format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            format!("{}={}", labels::INSTANCE, self.config.instance),
        ];
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

    /// A fresh overlay network for one service, with egress or without.
    async fn create_network(
        &self,
        service: &str,
        session_id: &str,
        egress: bool,
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
            internal: Some(!egress),
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
    async fn remove_networks(&self, service: &str) {
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

    /// The sandbox and labels every task of a session runs with.
    fn task_template(
        &self,
        workspace: &std::path::Path,
        argv: Vec<String>,
        mut env: Vec<String>,
        limits: &Limits,
        network: &str,
        placement: Vec<String>,
    ) -> TaskSpec {
        let mut mounts = vec![
            Mount {
                target: Some("/workspace".to_string()),
                source: Some(workspace.display().to_string()),
                typ: Some(MountType::BIND),
                ..Default::default()
            },
            Mount {
                target: Some("/tmp".to_string()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(limits.tmp_bytes),
                    mode: Some(0o1777),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        if let Some(bundle) = &self.config.ca_bundle {
            mounts.push(Mount {
                target: Some(CA_BUNDLE_IN_CONTAINER.to_string()),
                source: Some(bundle.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
            env.extend(ca_bundle_env());
        }
        let constraints = self.constraints(placement);
        TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(self.image.reference()),
                args: Some(argv),
                env: Some(env),
                user: Some(self.config.user.clone()),
                dir: Some("/workspace".to_string()),
                read_only: Some(true),
                mounts: Some(mounts),
                capability_drop: Some(vec!["ALL".to_string()]),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".to_string()),
                    soft: Some(limits.open_files),
                    hard: Some(limits.open_files),
                }]),
                privileges: self
                    .no_new_privileges
                    .then(|| TaskSpecContainerSpecPrivileges {
                        no_new_privileges: Some(true),
                        ..Default::default()
                    }),
                stop_grace_period: Some(2_000_000_000),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: Some(limits.nano_cpus),
                    memory_bytes: Some(limits.memory_bytes),
                    pids: Some(limits.pids),
                }),
                reservations: Some(ResourceObject {
                    memory_bytes: Some(limits.memory_bytes),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(constraints),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(network.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    /// Creates a one-task service and reads its sandbox back.
    async fn create_service(
        &self,
        name: &str,
        session_id: &str,
        owner: &str,
        role: &str,
        template: TaskSpec,
        limits: &Limits,
    ) -> Result<(), RuntimeError> {
        let service_labels = managed_labels(
            &self.config.instance,
            &self.config.recipe,
            session_id,
            owner,
            role,
        );
        let mut template = template;
        if let Some(container) = template.container_spec.as_mut() {
            container.labels = Some(service_labels.clone());
        }
        let spec = ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(service_labels),
            task_template: Some(template),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_service(spec, self.registry_auth.clone())
            .await
            .map_err(session_error("create the service of", session_id))?;
        let service = self
            .docker
            .inspect_service(name, None)
            .await
            .map_err(session_error("inspect the service of", session_id))?;
        let spec = service.spec.unwrap_or_default();
        self.verify_sandbox(session_id, limits, &spec)
    }

    /// An engine older than our API version drops fields it does not know without a word:
    /// read the service back and refuse one that lacks any part of the sandbox.
    fn verify_sandbox(
        &self,
        session_id: &str,
        limits: &Limits,
        spec: &ServiceSpec,
    ) -> Result<(), RuntimeError> {
        let template = spec.task_template.clone().unwrap_or_default();
        let container = template.container_spec.unwrap_or_default();
        let resources = template.resources.unwrap_or_default();
        let limit = resources.limits.unwrap_or_default();
        let reserved = resources.reservations.unwrap_or_default();
        let tmp_size = container.mounts.as_ref().and_then(|mounts| {
            mounts
                .iter()
                .find(|m| m.target.as_deref() == Some("/tmp"))
                .and_then(|m| m.tmpfs_options.as_ref()?.size_bytes)
        });
        let no_new_privileges = container
            .privileges
            .as_ref()
            .and_then(|p| p.no_new_privileges)
            == Some(true);
        let checks: [(&'static str, bool); 12] = [
            (
                "Resources.Limits.MemoryBytes",
                limit.memory_bytes == Some(limits.memory_bytes),
            ),
            (
                "Resources.Reservations.MemoryBytes",
                reserved.memory_bytes == Some(limits.memory_bytes),
            ),
            (
                "Resources.Limits.NanoCPUs",
                limit.nano_cpus == Some(limits.nano_cpus),
            ),
            ("Resources.Limits.Pids", limit.pids == Some(limits.pids)),
            ("ContainerSpec.ReadOnly", container.read_only == Some(true)),
            (
                "ContainerSpec.User",
                container.user.as_deref() == Some(&self.config.user),
            ),
            (
                "ContainerSpec.CapabilityDrop",
                container
                    .capability_drop
                    .as_ref()
                    .is_some_and(|caps| caps.iter().any(|c| c == "ALL")),
            ),
            (
                "ContainerSpec.Ulimits nofile",
                container.ulimits.as_ref().is_some_and(|u| {
                    u.iter().any(|u| {
                        u.name.as_deref() == Some("nofile") && u.hard == Some(limits.open_files)
                    })
                }),
            ),
            (
                "ContainerSpec.Mounts tmpfs /tmp",
                tmp_size == Some(limits.tmp_bytes),
            ),
            (
                "ContainerSpec.Privileges.NoNewPrivileges",
                !self.no_new_privileges || no_new_privileges,
            ),
            (
                "RestartPolicy.Condition none",
                template.restart_policy.and_then(|r| r.condition)
                    == Some(TaskSpecRestartPolicyConditionEnum::NONE),
            ),
            (
                "EndpointSpec.Mode dnsrr",
                spec.endpoint_spec.as_ref().and_then(|e| e.mode)
                    == Some(EndpointSpecModeEnum::DNSRR),
            ),
        ];
        match checks.into_iter().find(|(_, held)| !held) {
            Some((setting, _)) => Err(RuntimeError::SandboxSettingDropped {
                setting,
                session_id: session_id.to_string(),
                api_version: self.api_version.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The newest task of `service`, if it has one.
    async fn task(&self, service: &str) -> Result<Option<Task>, RuntimeError> {
        let filters = HashMap::from([("service", vec![service.to_string()])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        let tasks = self
            .docker
            .list_tasks(Some(options))
            .await
            .map_err(engine_error("list the tasks of", service))?;
        Ok(tasks
            .into_iter()
            .max_by_key(|t| t.version.as_ref().and_then(|v| v.index)))
    }

    async fn progress(&self, service: &str) -> Result<TaskProgress, RuntimeError> {
        let Some(task) = self.task(service).await? else {
            return Ok(TaskProgress::Waiting);
        };
        let status = task.status.clone().unwrap_or_default();
        let state = status.state.unwrap_or(TaskState::NEW);
        Ok(match state {
            TaskState::RUNNING => TaskProgress::Running(task),
            state if is_final(&state) => TaskProgress::Ended(task),
            TaskState::PENDING => match status.err {
                Some(err) if !err.is_empty() => TaskProgress::Unplaceable(err),
                _ => TaskProgress::Waiting,
            },
            TaskState::PREPARING => TaskProgress::Preparing,
            _ => TaskProgress::Waiting,
        })
    }

    async fn nodes(&self) -> Vec<Node> {
        self.docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .unwrap_or_default()
    }

    /// The reservation constraints for `owner`'s tasks.
    async fn placement(&self, owner: &str) -> Vec<String> {
        Reservations::of(&self.nodes().await).constraints(owner)
    }

    /// Every placement constraint of a task: a node holding the image (unless nodes pull it
    /// from a registry), the configured ones, and the owner's reservations.
    fn constraints(&self, placement: Vec<String>) -> Vec<String> {
        let mut constraints = match &self.image {
            KernelImage::Held { id_hex } => vec![format!(
                "node.labels.{} == {id_hex}",
                image_label(&self.config.recipe)
            )],
            KernelImage::Pinned(_) => Vec::new(),
        };
        constraints.extend(self.config.constraints.iter().cloned());
        constraints.extend(placement);
        constraints
    }

    /// Why no node takes `owner`'s task reserving `memory` bytes: the most memory any node it
    /// may use has unreserved, or that it may use none.
    async fn shortfall(&self, memory: i64, owner: &str, scheduler: &str) -> String {
        let nodes = self.nodes().await;
        let constraints = self.constraints(Reservations::of(&nodes).constraints(owner));
        let eligible: Vec<_> = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY)
                    && constraints.iter().all(|c| satisfies(n, c))
            })
            .collect();
        if eligible.is_empty() {
            let image = match &self.image {
                KernelImage::Held { .. } => {
                    "nodes must hold the kernel image (`kernelbox image distribute` labels them), and "
                }
                KernelImage::Pinned(_) => "",
            };
            return format!(
                "no ready node meets the kernel's placement ({}): {image}nodes labelled {RESERVED_LABEL}=<owner> take only that owner's kernels, here {owner}'s; the scheduler said: {scheduler}",
                constraints.join(", ")
            );
        }
        let tasks = self.docker.list_tasks(None).await.unwrap_or_default();
        let mut best: Option<(i64, String)> = None;
        for node in &eligible {
            let total = node
                .description
                .as_ref()
                .and_then(|d| d.resources.as_ref()?.memory_bytes)
                .unwrap_or(0);
            let reserved: i64 = tasks
                .iter()
                .filter(|t| t.node_id == node.id && t.desired_state == Some(TaskState::RUNNING))
                .filter_map(|t| {
                    t.spec
                        .as_ref()?
                        .resources
                        .as_ref()?
                        .reservations
                        .as_ref()?
                        .memory_bytes
                })
                .sum();
            let free = total - reserved;
            let name = node
                .description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .unwrap_or_default();
            if best.as_ref().is_none_or(|(most, _)| free > *most) {
                best = Some((free, name));
            }
        }
        let (free, node) = best.unwrap_or_default();
        format!(
            "no node has {} MiB of memory free to reserve; the most free is {} MiB on {node} ({} node(s) open to {owner} can run the image); the scheduler said: {scheduler}",
            memory >> 20,
            free.max(0) >> 20,
            eligible.len()
        )
    }

    /// Waits for the service's task to run (or, with `to_end`, to finish), failing fast when
    /// no node can take it.
    async fn wait_task(
        &self,
        service: &str,
        session_id: &str,
        owner: &str,
        memory: i64,
        to_end: Option<Duration>,
    ) -> Result<Task, RuntimeError> {
        let started = tokio::time::Instant::now();
        let mut deadline = started + TASK_START_TIMEOUT + to_end.unwrap_or_default();
        loop {
            match self.progress(service).await? {
                TaskProgress::Running(task) if to_end.is_none() => return Ok(task),
                TaskProgress::Ended(task) if to_end.is_some() => return Ok(task),
                TaskProgress::Ended(task) => {
                    let status = task.status.unwrap_or_default();
                    let logs = self.logs_tail(service).await;
                    return Err(RuntimeError::Container {
                        action: "start",
                        session_id: session_id.to_string(),
                        detail: format!(
                            "its task ended as {}: {} {}{}",
                            status.state.map(|s| s.to_string()).unwrap_or_default(),
                            status.message.unwrap_or_default(),
                            status.err.unwrap_or_default(),
                            if logs.is_empty() {
                                String::new()
                            } else {
                                format!("; it printed: {logs}")
                            }
                        ),
                    });
                }
                TaskProgress::Unplaceable(err) => {
                    return Err(RuntimeError::NoNodeFits {
                        session_id: session_id.to_string(),
                        shortfall: self.shortfall(memory, owner, &err).await,
                    });
                }
                TaskProgress::Preparing => {
                    deadline = deadline.max(started + IMAGE_PULL_TIMEOUT);
                }
                TaskProgress::Waiting | TaskProgress::Running(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Container {
                    action: "wait for",
                    session_id: session_id.to_string(),
                    detail: format!("its task did not get going within {:?}", deadline - started),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The task's address on its network, from Docker's DNS inside the server's container.
    async fn resolve_task(&self, service: &str, session_id: &str) -> Result<String, RuntimeError> {
        let deadline = tokio::time::Instant::now() + DNS_TIMEOUT;
        let name = format!("tasks.{service}");
        loop {
            if let Ok(mut addresses) = tokio::net::lookup_host((name.as_str(), 0)).await
                && let Some(address) = addresses.next()
            {
                return Ok(address.ip().to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Container {
                    action: "find the address of",
                    session_id: session_id.to_string(),
                    detail: format!(
                        "{name} did not resolve within {DNS_TIMEOUT:?} from the server's container"
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Attaches the server's container to a kernel network.
    async fn attach_server(&self, network: &str) -> Result<(), RuntimeError> {
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

    /// The container id of the service's running task, when it runs on this node.
    async fn local_container(&self, service: &str) -> Result<String, RuntimeError> {
        let task = self
            .task(service)
            .await?
            .ok_or_else(|| RuntimeError::Engine {
                action: "find the task of",
                container: service.to_string(),
                detail: "the service has no task".to_string(),
            })?;
        let container = task
            .status
            .and_then(|s| s.container_status?.container_id)
            .unwrap_or_default();
        match self.docker.inspect_container(&container, None).await {
            Ok(_) if !container.is_empty() => Ok(container),
            _ => Err(RuntimeError::Engine {
                action: "reach the container of",
                container: service.to_string(),
                detail: format!(
                    "its task runs on another node ({}); only that node's engine reaches its container",
                    task.node_id.unwrap_or_default()
                ),
            }),
        }
    }

    /// Runs `argv` to its end in a one-task service on `network` and removes the service.
    async fn run_to_end(
        &self,
        job: &JobSpec,
        network: Option<&str>,
        role: &str,
    ) -> Result<ExecOutput, RuntimeError> {
        let name = self.service_name();
        let guard = KernelContainer::new(
            name.clone(),
            KernelEndpoint {
                host: String::new(),
                ports: ChannelPorts::IN_CONTAINER,
            },
            self.reaper.clone(),
        );
        let network = match network {
            Some(network) => network.to_string(),
            None => self.create_network(&name, &job.session_id, true).await?,
        };
        let seconds = job.timeout.as_secs_f64().max(0.1);
        let mut argv = vec![
            "timeout".to_string(),
            "--signal=KILL".to_string(),
            format!("{seconds:.1}"),
        ];
        argv.extend(job.argv.iter().cloned());
        let mut env = vec!["HOME=/tmp".to_string()];
        env.extend(job.env.iter().cloned());
        let placement = self.placement(&job.owner).await;
        let template =
            self.task_template(&job.workspace, argv, env, &job.limits, &network, placement);
        self.create_service(
            &name,
            &job.session_id,
            &job.owner,
            role,
            template,
            &job.limits,
        )
        .await?;
        let bound = job.timeout + Duration::from_secs(30);
        let task = self
            .wait_task(
                &name,
                &job.session_id,
                &job.owner,
                job.limits.memory_bytes,
                Some(bound),
            )
            .await;
        let exit_code = match &task {
            Ok(task) => task
                .status
                .as_ref()
                .and_then(|s| s.container_status.as_ref()?.exit_code),
            Err(_) => None,
        };
        let mut result = ExecOutput {
            exit_code,
            timed_out: exit_code == Some(137) || exit_code.is_none(),
            ..ExecOutput::default()
        };
        collect_job_output(&mut result, job.max_output_bytes, |options| {
            self.docker.service_logs(&name, Some(options))
        })
        .await;
        self.remove(guard).await?;
        Ok(result)
    }

    fn service_name(&self) -> String {
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 10)
            .to_lowercase();
        format!("kb-{}-{suffix}", self.config.instance)
    }

    /// What a command run beside a kernel takes from the kernel's service: its workspace,
    /// network, labels and limits (read in one inspect).
    async fn kernel_placement(&self, service: &str) -> Result<KernelPlacement, RuntimeError> {
        let spec = self
            .docker
            .inspect_service(service, None)
            .await
            .map_err(engine_error("inspect", service))?
            .spec
            .unwrap_or_default();
        let label = |key: &str| {
            spec.labels
                .as_ref()
                .and_then(|l| l.get(key).cloned())
                .unwrap_or_default()
        };
        let (session_id, owner) = (label(labels::SESSION_ID), label(labels::OWNER));
        let template = spec.task_template.unwrap_or_default();
        let limit = template
            .resources
            .and_then(|r| r.limits)
            .unwrap_or_default();
        let defaults = Limits::default();
        let limits = Limits {
            memory_bytes: limit.memory_bytes.unwrap_or(defaults.memory_bytes),
            nano_cpus: limit.nano_cpus.unwrap_or(defaults.nano_cpus),
            pids: limit.pids.unwrap_or(defaults.pids),
            ..defaults
        };
        let workspace = template
            .container_spec
            .and_then(|c| c.mounts)
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.target.as_deref() == Some("/workspace"))
            .and_then(|m| m.source);
        let network = template
            .networks
            .unwrap_or_default()
            .into_iter()
            .find_map(|n| n.target);
        match (workspace, network) {
            (Some(workspace), Some(network)) => Ok(KernelPlacement {
                workspace: PathBuf::from(workspace),
                network,
                session_id,
                owner,
                limits,
            }),
            _ => Err(RuntimeError::Engine {
                action: "inspect",
                container: service.to_string(),
                detail: "the service names no workspace or network".to_string(),
            }),
        }
    }
}

/// A kernel service as a command run beside it sees it.
struct KernelPlacement {
    workspace: PathBuf,
    network: String,
    session_id: String,
    owner: String,
    limits: Limits,
}

#[async_trait::async_trait]
impl Runtime for SwarmRuntime {
    async fn start_kernel(&self, spec: &KernelSpec) -> Result<KernelContainer, RuntimeError> {
        let name = self.service_name();
        // Owned from the start: any early return removes whatever was made under this name.
        let mut container = KernelContainer::new(
            name.clone(),
            KernelEndpoint {
                host: String::new(),
                ports: ChannelPorts::IN_CONTAINER,
            },
            self.reaper.clone(),
        );
        let network = self
            .create_network(&name, &spec.session_id, spec.egress)
            .await?;
        self.attach_server(&network).await?;
        let mut env = vec![
            format!("KERNELBOX_CONNECTION={}", spec.connection_file),
            format!("KERNELBOX_BOOTSTRAP={KERNEL_BOOTSTRAP}"),
            "HOME=/tmp".to_string(),
            "MPLCONFIGDIR=/tmp/.matplotlib".to_string(),
        ];
        env.extend(spec.env.iter().cloned());
        let argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            KERNEL_LAUNCH.to_string(),
        ];
        let placement = self.placement(&spec.owner).await;
        let template = self.task_template(
            &spec.workspace,
            argv,
            env,
            &spec.limits,
            &network,
            placement,
        );
        self.create_service(
            &name,
            &spec.session_id,
            &spec.owner,
            "kernel",
            template,
            &spec.limits,
        )
        .await?;
        let task = self
            .wait_task(
                &name,
                &spec.session_id,
                &spec.owner,
                spec.limits.memory_bytes,
                None,
            )
            .await?;
        container.endpoint = KernelEndpoint {
            host: self.resolve_task(&name, &spec.session_id).await?,
            ports: ChannelPorts::IN_CONTAINER,
        };
        tracing::debug!(
            session_id = %spec.session_id,
            service = %name,
            node = task.node_id.as_deref().unwrap_or(""),
            host = %container.endpoint.host,
            "kernel task running"
        );
        Ok(container)
    }

    async fn adopt(
        &self,
        container: String,
        endpoint: KernelEndpoint,
    ) -> Result<KernelContainer, RuntimeError> {
        let guard = KernelContainer::new(container.clone(), endpoint, self.reaper.clone());
        let kernel = self.kernel_placement(&container).await?;
        self.attach_server(&kernel.network).await?;
        Ok(guard)
    }

    async fn exit_status(&self, container: &str) -> Result<ContainerExit, RuntimeError> {
        let task = match self.task(container).await? {
            Some(task) => task,
            None => return Ok(ContainerExit::Gone),
        };
        if let Some(node) = &task.node_id {
            match self.docker.inspect_node(node).await {
                Ok(inspect) => {
                    let state = inspect.status.as_ref().and_then(|s| s.state);
                    if matches!(state, Some(NodeState::DOWN | NodeState::DISCONNECTED)) {
                        let name = inspect
                            .description
                            .and_then(|d| d.hostname)
                            .unwrap_or_else(|| node.clone());
                        return Ok(ContainerExit::NodeLost { node: name });
                    }
                }
                Err(e) if is_not_found(&e) => {
                    return Ok(ContainerExit::NodeLost { node: node.clone() });
                }
                Err(e) => return Err(engine_error("inspect the node of", container)(e)),
            }
        }
        let status = task.status.clone().unwrap_or_default();
        let state = status.state.unwrap_or(TaskState::NEW);
        if state == TaskState::ORPHANED {
            return Ok(ContainerExit::NodeLost {
                node: task.node_id.unwrap_or_default(),
            });
        }
        if !is_final(&state) {
            return Ok(ContainerExit::Running);
        }
        let code = status
            .container_status
            .and_then(|c| c.exit_code)
            .unwrap_or(-1);
        let limit_bytes = task
            .spec
            .and_then(|s| s.resources?.limits?.memory_bytes)
            .unwrap_or_default();
        Ok(if code == 137 && limit_bytes > 0 {
            ContainerExit::KilledUnderMemoryLimit { limit_bytes }
        } else {
            ContainerExit::Exited { code }
        })
    }

    async fn interrupt(&self, container: &str) -> Result<(), RuntimeError> {
        let local = self.local_container(container).await?;
        let options = KillContainerOptionsBuilder::new().signal("SIGINT").build();
        self.docker
            .kill_container(&local, Some(options))
            .await
            .map_err(engine_error("SIGINT", container))
    }

    async fn remove_by_id(&self, container: &str) -> Result<(), RuntimeError> {
        match self.docker.delete_service(container).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine_error("remove", container)(e)),
        }
        self.remove_networks(container).await;
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={}", labels::INSTANCE, self.config.instance),
            ],
        )]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let services = self
            .docker
            .list_services(Some(options))
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec?;
                Some(ManagedContainer {
                    id: spec.name?,
                    labels: spec.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Runs the command in a task of its own beside the kernel: same image, sandbox,
    /// workspace and network (a manager cannot exec into a task on another node).
    async fn exec(
        &self,
        container: &str,
        command: &ExecCommand,
    ) -> Result<ExecOutput, RuntimeError> {
        let kernel = self.kernel_placement(container).await?;
        let job = JobSpec {
            session_id: kernel.session_id,
            owner: kernel.owner,
            workspace: kernel.workspace,
            argv: command.argv.clone(),
            env: command.env.clone(),
            limits: kernel.limits,
            timeout: command.timeout,
            max_output_bytes: command.max_output_bytes,
        };
        self.run_to_end(&job, Some(&kernel.network), "exec").await
    }

    async fn run_job(&self, job: &JobSpec) -> Result<ExecOutput, RuntimeError> {
        self.run_to_end(job, None, "installer").await
    }

    async fn usage(&self, container: &str) -> Result<ContainerUsage, RuntimeError> {
        let local = self.local_container(container).await?;
        container_usage(&self.docker, &local).await
    }

    async fn logs_tail(&self, container: &str) -> String {
        logs_tail(self.docker.service_logs(container, Some(tail_options()))).await
    }

    fn unresponsive_grace(&self) -> Duration {
        self.node_loss_grace
    }

    async fn health(&self) -> RuntimeHealth {
        let version = self.docker.version().await.ok();
        let (image, image_present) = match &self.image {
            KernelImage::Held { .. } => {
                let held = self.docker.inspect_image(&self.image.reference()).await;
                (self.config.image.clone(), held.is_ok())
            }
            KernelImage::Pinned(pinned) => {
                let image = pinned.to_string();
                let auth = self.registry_auth.clone();
                let in_registry = self.docker.inspect_registry_image(&image, auth).await;
                (image, in_registry.is_ok())
            }
        };
        RuntimeHealth {
            engine_reachable: version.is_some(),
            engine_version: version.and_then(|v| v.version),
            image_present,
            image,
        }
    }
}

/// Removes services whose owning handle was dropped, with their networks. On cancel it
/// removes what is queued and stops.
async fn reap(
    runtime: Arc<SwarmRuntime>,
    mut names: mpsc::UnboundedReceiver<String>,
    cancel: CancellationToken,
) {
    loop {
        let name = tokio::select! {
            name = names.recv() => name,
            _ = cancel.cancelled() => break,
        };
        let Some(name) = name else { return };
        if let Err(error) = runtime.remove_by_id(&name).await {
            tracing::warn!(%error, "could not reap a kernel service");
        }
    }
    while let Ok(name) = names.try_recv() {
        if let Err(error) = runtime.remove_by_id(&name).await {
            tracing::warn!(%error, "could not reap a kernel service");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{NodeDescription, NodeSpec, NodeSpecRoleEnum};

    fn node(role: NodeSpecRoleEnum, labels: &[(&str, &str)]) -> Node {
        Node {
            id: Some("n1".to_string()),
            spec: Some(NodeSpec {
                role: Some(role),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some("worker-1".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn constraints_are_judged_like_the_scheduler_judges_them() {
        let worker = node(
            NodeSpecRoleEnum::WORKER,
            &[("kernelbox.reserved-for", "acme")],
        );
        assert!(satisfies(&worker, "node.role==worker"));
        assert!(!satisfies(&worker, "node.role == manager"));
        assert!(satisfies(&worker, "node.hostname != worker-2"));
        assert!(satisfies(
            &worker,
            "node.labels.kernelbox.reserved-for == acme"
        ));
        assert!(!satisfies(
            &worker,
            "node.labels.kernelbox.reserved-for != acme"
        ));
        assert!(!satisfies(&worker, "node.labels.absent == x"));
        assert!(satisfies(&worker, "node.labels.absent != x"));
        assert!(satisfies(&worker, "engine.labels.unknown == x"));
    }

    #[test]
    fn reservations_keep_owners_apart() {
        let nodes = [
            node(NodeSpecRoleEnum::WORKER, &[(RESERVED_LABEL, "acme")]),
            node(NodeSpecRoleEnum::WORKER, &[]),
        ];
        let reservations = Reservations::of(&nodes);
        let acme = reservations.constraints("acme");
        assert!(acme.iter().all(|c| satisfies(&nodes[0], c)));
        assert!(!acme.iter().all(|c| satisfies(&nodes[1], c)));
        let others = reservations.constraints("globex");
        assert!(!others.iter().all(|c| satisfies(&nodes[0], c)));
        assert!(others.iter().all(|c| satisfies(&nodes[1], c)));
    }
}
