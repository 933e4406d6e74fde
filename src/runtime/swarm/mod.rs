//! The Docker Swarm engine, through bollard. Owns the runtime itself: connecting to a
//! manager (API 1.41 or later, the server in a container on a user-defined network), one
//! service (one task, never restarted by Swarm) and one overlay network per kernel, `exec` and
//! jobs as one-task services beside a kernel, and reading a task's death from its status and
//! its node's state. Its parts: `service.rs` renders the sandbox into a service and reads it
//! back, `placement.rs` says where a task may run, `network.rs` owns the overlay networks,
//! `task.rs` follows a task, `image.rs` names the kernel image; `network.rs` also says where a
//! wildcard HTTP listener may listen: never on a kernel's overlay. It must not schedule anything
//! itself (Swarm places tasks, kernelbox only decides restarts), and it knows nothing of the
//! single-host Docker runtime.

mod image;
mod network;
mod placement;
mod service;
mod task;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{NodeState, TaskState};
use bollard::query_parameters::{KillContainerOptionsBuilder, ListServicesOptionsBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{
    connect_local, container_usage, instance_filter, is_not_found, job_output, logs_tail, managed,
    tail_options,
};
use super::image_registry::{Credentials, Repository};
use super::reaper::reap;
use super::sandbox::{Listen, NetworkPolicy, Sandbox};
use super::{
    ContainerExit, ContainerUsage, ExecCommand, ExecOutput, JobEgress, JobSpec, KernelContainer,
    KernelEndpoint, KernelSpec, ManagedContainer, Runtime, RuntimeError, RuntimeHealth,
};
use crate::egress::ListenAt;
use crate::kernel::ChannelPorts;
use image::KernelImage;
use network::EGRESS_PORT;
use task::is_final;

pub(super) use image::label_node;

/// The oldest engine API whose services carry the whole sandbox: `CapabilityDrop`,
/// `Ulimits` and `Pids` arrived in 1.41.
const MINIMUM_API: (u32, u32) = (1, 41);
/// `Privileges.NoNewPrivileges` on services arrived in 1.44; older engines drop it.
const NO_NEW_PRIVILEGES_API: (u32, u32) = (1, 44);

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
    /// The server's kernel image.
    image: Arc<KernelImage>,
    /// Templates' own images by reference, each settled when a kernel first needs it.
    template_images: tokio::sync::Mutex<HashMap<String, Arc<KernelImage>>>,
    /// The manager node this server runs on, labelled as holding the images it has.
    node_id: String,
    /// What nodes present to the image's registry when they pull it.
    registry_auth: Option<DockerCredentials>,
    /// Whether services here can carry no-new-privileges (engine API 1.44 or later).
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

impl SwarmRuntime {
    /// How tasks name `image` (the server's kernel image when `None`): a template's own
    /// image is settled (pushed, or this node labelled) the first time a kernel needs it.
    async fn kernel_image(&self, image: Option<&str>) -> Result<Arc<KernelImage>, RuntimeError> {
        let Some(image) = image else {
            return Ok(self.image.clone());
        };
        let mut known = self.template_images.lock().await;
        if let Some(settled) = known.get(image) {
            return Ok(settled.clone());
        }
        let tag: String = image
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(128)
            .collect();
        let settled = Arc::new(
            KernelImage::resolve(&self.docker, &self.config, &self.node_id, (image, &tag)).await?,
        );
        known.insert(image.to_string(), settled.clone());
        Ok(settled)
    }

    /// Connects to a manager's engine, checks the API version, that the server runs in a
    /// container on a user-defined network, and settles how tasks name the kernel image.
    /// The reaper runs on `tasks` until `cancel`.
    pub async fn connect(
        config: SwarmConfig,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, RuntimeError> {
        let (docker, api_version) = connect_local("swarm").await?;
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
        let image =
            KernelImage::resolve(&docker, &config, &node_id, (&config.image, &config.recipe))
                .await?;
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
            image: Arc::new(image),
            template_images: tokio::sync::Mutex::new(HashMap::new()),
            node_id: node_id.clone(),
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
        let owner = runtime.clone();
        tasks.spawn(reap(reaped, cancel, move |name| {
            let runtime = owner.clone();
            async move { runtime.remove_by_id(&name).await }
        }));
        Ok(runtime)
    }

    /// Runs `argv` to its end in a one-task service in `image` on `network` and removes the
    /// service.
    async fn run_to_end(
        &self,
        job: &JobSpec,
        (image, network): (&KernelImage, Option<&str>),
        role: &str,
    ) -> Result<ExecOutput, RuntimeError> {
        let name = self.service_name();
        let guard = KernelContainer::created(name.clone(), self.reaper.clone());
        let network = match network {
            Some(network) => network.to_string(),
            None => {
                self.create_network(&name, &job.session_id, NetworkPolicy::Egress)
                    .await?
            }
        };
        let sandbox = Sandbox::job(job, &self.sandbox_config(), role, &network);
        let who = (job.session_id.as_str(), job.owner.as_str());
        self.create_service(&name, who, &sandbox, image).await?;
        let bound = job.timeout + Duration::from_secs(30);
        // A stop leaves the job running until its removal below ends it.
        let task = tokio::select! {
            task = self.wait_task(&name, who, (image, job.limits.memory_bytes), Some(bound)) => Some(task),
            _ = job.stop.cancelled() => None,
        };
        let exit_code = match &task {
            Some(Ok(task)) => task
                .status
                .as_ref()
                .and_then(|s| s.container_status.as_ref()?.exit_code),
            _ => None,
        };
        let result = job_output(exit_code, job.max_output_bytes, |options| {
            self.docker.service_logs(&name, Some(options))
        })
        .await;
        self.remove(guard).await?;
        Ok(result)
    }
}

#[async_trait::async_trait]
impl Runtime for SwarmRuntime {
    async fn start_kernel(&self, spec: &KernelSpec) -> Result<KernelContainer, RuntimeError> {
        let image = self.kernel_image(spec.image.as_deref()).await?;
        let name = self.service_name();
        // Owned from the start: any early return removes whatever was made under this name.
        let mut service = KernelContainer::created(name.clone(), self.reaper.clone());
        let policy = NetworkPolicy::of(spec.egress);
        let network = self.create_network(&name, &spec.session_id, policy).await?;
        self.attach_server(&network).await?;
        let sandbox = Sandbox::kernel(spec, &self.sandbox_config(), &network, Listen::Tcp);
        let who = (spec.session_id.as_str(), spec.owner.as_str());
        self.create_service(&name, who, &sandbox, &image).await?;
        let task = self
            .wait_task(&name, who, (&image, spec.limits.memory_bytes), None)
            .await?;
        service.endpoint = KernelEndpoint::Tcp {
            host: self.resolve_task(&name, &spec.session_id).await?,
            ports: ChannelPorts::IN_CONTAINER,
        };
        tracing::debug!(
            session_id = %spec.session_id,
            service = %name,
            node = task.node_id.as_deref().unwrap_or(""),
            endpoint = %service.endpoint,
            "kernel task running"
        );
        Ok(service)
    }

    async fn adopt(
        &self,
        container: String,
        endpoint: KernelEndpoint,
    ) -> Result<KernelContainer, RuntimeError> {
        if let KernelEndpoint::Ipc { .. } = endpoint {
            return Err(RuntimeError::Engine {
                action: "adopt",
                container,
                detail:
                    "its record names IPC sockets on one host; Swarm kernels are reached over TCP"
                        .to_string(),
            });
        }
        let guard = KernelContainer::new(container.clone(), endpoint, self.reaper.clone());
        let kernel = self.kernel_placement(&container).await?;
        self.attach_server(&kernel.network).await?;
        Ok(guard)
    }

    async fn egress_listener(&self, container: &KernelContainer) -> Result<ListenAt, RuntimeError> {
        let kernel = self.kernel_placement(&container.id).await?;
        let address = self.server_address_on(&kernel.network).await?;
        Ok(ListenAt::Tcp(std::net::SocketAddr::new(
            address,
            EGRESS_PORT,
        )))
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
        let filters = HashMap::from([("label", instance_filter(&self.config.instance))]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let services = self.docker.list_services(Some(options)).await;
        managed(services, |service| {
            let spec = service.spec?;
            Some((spec.name?, spec.labels))
        })
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
            egress: JobEgress::Network,
            image: None,
            stop: command.stop.clone(),
        };
        self.run_to_end(&job, (&kernel.image, Some(&kernel.network)), "exec")
            .await
    }

    async fn run_job(&self, job: &JobSpec) -> Result<ExecOutput, RuntimeError> {
        let image = self.kernel_image(job.image.as_deref()).await?;
        self.run_to_end(job, (&image, None), "installer").await
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

    async fn listen_addresses(&self, wildcard: IpAddr) -> Result<Vec<IpAddr>, RuntimeError> {
        self.server_listen_addresses(wildcard).await
    }

    async fn image_id(&self, image: Option<&str>) -> Result<String, RuntimeError> {
        Ok(self.kernel_image(image).await?.reference())
    }

    async fn health(&self) -> RuntimeHealth {
        let version = self.docker.version().await.ok();
        let (image, image_present) = match self.image.as_ref() {
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
            oci_runtime: None,
        }
    }
}
