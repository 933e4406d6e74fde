//! The single-host Docker engine, through bollard. Owns rendering a kernel's or a job's
//! [`Sandbox`] into a container and mapping the container's inspect back for the sandbox's
//! check, the egress network, each kernel's run directory (where it binds its ZeroMQ sockets
//! and the server connects to them: kernels without egress have no network at all), `exec`
//! (in `exec.rs`), and removing containers with their run directories. What Swarm
//! does alike lives in `engine.rs`, `sandbox.rs` and `reaper.rs`; this module knows nothing of
//! Swarm.

mod exec;
mod network;
mod oci;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::network::ensure_network;
use self::oci::OciRuntime;
use super::engine::{
    connect_local, container_usage, instance_filter, is_not_found, job_output, logs_tail, managed,
    resolve_image, tail_options,
};
use super::reaper::reap;
use super::sandbox::{
    Bind, Check, Listen, NetworkPolicy, RUN_DIR, Reported, Sandbox, SandboxConfig, TMP, WORKSPACE,
};
use super::{
    ContainerExit, ContainerUsage, EGRESS_SOCKET_NAME, ExecCommand, ExecOutput, IPC_SOCKET_NAME,
    JobEgress, JobSpec, KernelContainer, KernelEndpoint, KernelLaunch, KernelSpec,
    ManagedContainer, Runtime, RuntimeError, RuntimeHealth,
};
use crate::egress::ListenAt;
use crate::kernel::ChannelPorts;

/// The network mode of a kernel without egress: no interface but loopback.
const NO_NETWORK: &str = "none";

/// A run directory while its kernel starts: the kernel's user binds its sockets in it.
const RUN_DIR_STARTING: u32 = 0o777;
/// A run directory once its kernel answered: nobody but the server may change what is in it,
/// so kernel code cannot swap a socket the server dials for a link to something else.
const RUN_DIR_SEALED: u32 = 0o755;

/// How kernel containers are made on this engine.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Image reference (tag or id) of the kernel image.
    pub image: String,
    /// Recipe hash recorded on every container.
    pub recipe: String,
    /// Distinguishes this server's containers from any other server's on the same engine.
    pub instance: String,
    /// Network with egress, for installer jobs and the sessions allowed egress.
    pub egress_network: String,
    /// Where each kernel gets a run directory of its own (`<data-dir>/run`): a host path,
    /// the same inside the server's container under Compose.
    pub run_root: PathBuf,
    /// `uid:gid` the kernel runs as.
    pub user: String,
    /// Host CA bundle mounted read-only into every kernel and named by its TLS variables.
    pub ca_bundle: Option<PathBuf>,
    /// The OCI runtime of kernels and jobs (`--oci-runtime`); `None` is the engine's default.
    pub oci_runtime: Option<String>,
}

pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    /// The egress network by id (the engine allows duplicate names, and a name can be
    /// ambiguous).
    egress_network_id: String,
    image_id: String,
    api_version: String,
    /// The OCI runtime in force, as the engine registered it.
    oci_runtime: OciRuntime,
    reaper: mpsc::UnboundedSender<String>,
}

impl DockerRuntime {
    /// Connects to the engine, negotiates the API version, resolves the kernel image to its id,
    /// makes sure the egress network exists and the run root too, and removes run directories
    /// no container of this server mounts any more. The reaper runs on `tasks` until `cancel`.
    pub async fn connect(
        config: DockerConfig,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, RuntimeError> {
        let (docker, api_version) = connect_local("docker").await?;
        let oci_runtime = OciRuntime::resolve(&docker, config.oci_runtime.as_deref()).await?;
        tracing::info!(
            oci_runtime = %oci_runtime.name,
            full_egress = oci_runtime.has_network,
            "kernels run under this OCI runtime"
        );
        let image_id = resolve_image(&docker, &config.image).await?;
        let egress_network_id = ensure_network(&docker, &config.egress_network).await?;
        prepare_run_root(&docker, &config).await?;
        let (reaper, reaped) = mpsc::unbounded_channel();
        let engine = docker.clone();
        let run_root = config.run_root.clone();
        tasks.spawn(reap(reaped, cancel, move |id| {
            let engine = engine.clone();
            let run_root = run_root.clone();
            async move { remove_container(&engine, &run_root, &id).await }
        }));
        Ok(Arc::new(Self {
            docker,
            config,
            egress_network_id,
            image_id,
            api_version,
            oci_runtime,
            reaper,
        }))
    }

    fn sandbox_config(&self) -> SandboxConfig<'_> {
        SandboxConfig {
            instance: &self.config.instance,
            recipe: &self.config.recipe,
            user: &self.config.user,
            ca_bundle: self.config.ca_bundle.as_deref(),
            no_new_privileges: true,
            egress_proxy: None,
            oci_runtime: self.config.oci_runtime.as_deref(),
            gvisor: self.oci_runtime.gvisor,
        }
    }

    /// The network that realizes `policy`: none at all, or the egress network by id.
    fn network(&self, policy: NetworkPolicy) -> &str {
        match policy {
            NetworkPolicy::Internal => NO_NETWORK,
            NetworkPolicy::Egress => &self.egress_network_id,
        }
    }

    /// The container `sandbox` describes.
    fn container_body(&self, sandbox: &Sandbox, image_id: &str) -> ContainerCreateBody {
        let limits = &sandbox.limits;
        let binds = sandbox.mounts.iter().map(|mount| {
            let mode = if mount.read_only { "ro" } else { "rw" };
            format!("{}:{}:{mode}", mount.source, mount.target)
        });
        ContainerCreateBody {
            image: Some(image_id.to_string()),
            cmd: Some(sandbox.command.clone()),
            env: Some(sandbox.env.clone()),
            user: Some(sandbox.user.clone()),
            working_dir: Some(WORKSPACE.to_string()),
            labels: Some(sandbox.labels.clone()),
            host_config: Some(HostConfig {
                memory: Some(limits.memory_bytes),
                memory_swap: Some(limits.memory_bytes),
                nano_cpus: Some(limits.nano_cpus),
                pids_limit: Some(limits.pids),
                ulimits: Some(
                    [
                        ("nofile", Some(limits.open_files)),
                        ("nproc", sandbox.nproc),
                    ]
                    .into_iter()
                    .filter_map(|(name, limit)| {
                        Some(ResourcesUlimits {
                            name: Some(name.to_string()),
                            soft: Some(limit?),
                            hard: limit,
                        })
                    })
                    .collect(),
                ),
                cap_drop: Some(sandbox.cap_drop.clone()),
                security_opt: sandbox
                    .no_new_privileges
                    .then(|| vec!["no-new-privileges".to_string()]),
                readonly_rootfs: Some(sandbox.read_only_root),
                tmpfs: Some(HashMap::from([(
                    TMP.to_string(),
                    format!("rw,nosuid,nodev,size={}", limits.tmp_bytes),
                )])),
                binds: Some(binds.collect()),
                network_mode: Some(sandbox.network.clone()),
                runtime: sandbox.oci_runtime.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Inspects the created container and checks its sandbox.
    async fn verify(
        &self,
        id: &str,
        sandbox: &Sandbox,
        session_id: &str,
    ) -> Result<(), RuntimeError> {
        let inspect =
            self.docker
                .inspect_container(id, None)
                .await
                .map_err(|e| RuntimeError::Container {
                    action: "inspect",
                    session_id: session_id.to_string(),
                    detail: e.to_string(),
                })?;
        sandbox.verify(&reported(sandbox, &inspect), session_id, &self.api_version)
    }

    /// A fresh run directory for one kernel, named apart from its session (a warm-pool kernel
    /// changes sessions): `<run root>/<random>`, open to the kernel's user until it is ready.
    fn make_run_dir(&self, spec: &KernelSpec) -> Result<PathBuf, RuntimeError> {
        let name = Alphanumeric
            .sample_string(&mut rand::rng(), 16)
            .to_lowercase();
        let dir = self.config.run_root.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .and_then(|()| set_mode(&dir, RUN_DIR_STARTING))
            .and_then(|()| match spec.launch {
                KernelLaunch::Argv(_) => link_colon_names(&dir),
                KernelLaunch::IPyKernel { .. } => Ok(()),
            })
            .map_err(|e| Self::container_error("make the run directory of", spec, e))?;
        Ok(dir)
    }

    /// Whether `dir` is a run directory this runtime made.
    fn owns_run_dir(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.config.run_root.as_path())
    }

    fn container_error(
        action: &'static str,
        spec: &KernelSpec,
        detail: impl ToString,
    ) -> RuntimeError {
        RuntimeError::Container {
            action,
            session_id: spec.session_id.clone(),
            detail: detail.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    async fn start_kernel(&self, spec: &KernelSpec) -> Result<KernelContainer, RuntimeError> {
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 6)
            .to_lowercase();
        let name = format!(
            "kernelbox-{}-{}-{suffix}",
            self.config.instance, spec.session_id
        );
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let network = self.network(NetworkPolicy::of(spec.egress));
        let image_id = self.image_id(spec.image.as_deref()).await?;
        let run_dir = self.make_run_dir(spec)?;
        let listen = Listen::Ipc { run_dir: &run_dir };
        let sandbox = Sandbox::kernel(spec, &self.sandbox_config(), network, listen);
        let created = match self
            .docker
            .create_container(Some(options), self.container_body(&sandbox, &image_id))
            .await
        {
            Ok(created) => created,
            Err(e) => {
                remove_run_dir(&run_dir);
                return Err(match e {
                    e if is_not_found(&e) => RuntimeError::ImageMissing {
                        image: spec.image.clone().unwrap_or(self.config.image.clone()),
                        detail: e.to_string(),
                    },
                    e @ BollardError::DockerResponseServerError { .. } => {
                        Self::container_error("create", spec, e)
                    }
                    e => RuntimeError::Unreachable(format!(
                        "the Docker engine did not answer while creating a kernel for session {}: {e}",
                        spec.session_id
                    )),
                });
            }
        };
        // From here on the container is owned: any early return reaps it. Its run directory
        // goes at once when the container does not start: the engine may have dropped the
        // mount that would name it to the reaper.
        let mut container = KernelContainer::created(created.id, self.reaper.clone());
        let started = async {
            self.verify(&container.id, &sandbox, &spec.session_id)
                .await?;
            self.docker
                .start_container(&container.id, None)
                .await
                .map_err(|e| Self::container_error("start", spec, e))
        };
        if let Err(error) = started.await {
            remove_run_dir(&run_dir);
            return Err(error);
        }
        container.endpoint = KernelEndpoint::Ipc { run_dir };
        tracing::debug!(
            session_id = %spec.session_id,
            container = %container.id,
            endpoint = %container.endpoint,
            "kernel container started"
        );
        Ok(container)
    }

    async fn kernel_ready(&self, container: &KernelContainer) -> Result<(), RuntimeError> {
        match &container.endpoint {
            KernelEndpoint::Ipc { run_dir } if self.owns_run_dir(run_dir) => {
                set_mode(run_dir, RUN_DIR_SEALED).map_err(|e| RuntimeError::Engine {
                    action: "seal the run directory",
                    container: container.id.clone(),
                    detail: e.to_string(),
                })
            }
            other => Err(RuntimeError::Engine {
                action: "seal the run directory",
                container: container.id.clone(),
                detail: format!("{other} is not a run directory of this server"),
            }),
        }
    }

    async fn adopt(
        &self,
        container: String,
        endpoint: KernelEndpoint,
    ) -> Result<KernelContainer, RuntimeError> {
        let refused = |detail: String| RuntimeError::Engine {
            action: "adopt",
            container: container.clone(),
            detail,
        };
        match &endpoint {
            KernelEndpoint::Ipc { run_dir } if self.owns_run_dir(run_dir) => {}
            KernelEndpoint::Ipc { run_dir } => {
                return Err(refused(format!(
                    "its run directory {} is not under {}",
                    run_dir.display(),
                    self.config.run_root.display()
                )));
            }
            KernelEndpoint::Tcp { .. } => {
                return Err(refused(
                    "it was started on a kernel network by an earlier version; kernels without egress now have no network at all, so it is replaced".to_string(),
                ));
            }
        }
        let kernel = KernelContainer::new(container, endpoint, self.reaper.clone());
        self.kernel_ready(&kernel).await?;
        Ok(kernel)
    }

    async fn exit_status(&self, container: &str) -> Result<ContainerExit, RuntimeError> {
        let inspect = match self.docker.inspect_container(container, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(ContainerExit::Gone),
            Err(e) => {
                return Err(RuntimeError::Engine {
                    action: "inspect",
                    container: container.to_string(),
                    detail: e.to_string(),
                });
            }
        };
        let state = inspect.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(ContainerExit::Running);
        }
        if state.oom_killed == Some(true) {
            let limit_bytes = inspect
                .host_config
                .and_then(|h| h.memory)
                .unwrap_or_default();
            return Ok(ContainerExit::OutOfMemory { limit_bytes });
        }
        Ok(ContainerExit::Exited {
            code: state.exit_code.unwrap_or(-1),
        })
    }

    async fn interrupt(&self, container: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::new().signal("SIGINT").build();
        self.docker
            .kill_container(container, Some(options))
            .await
            .map_err(|e| RuntimeError::Engine {
                action: "SIGINT",
                container: container.to_string(),
                detail: e.to_string(),
            })
    }

    async fn egress_listener(&self, container: &KernelContainer) -> Result<ListenAt, RuntimeError> {
        match &container.endpoint {
            KernelEndpoint::Ipc { run_dir } => Ok(ListenAt::Unix(run_dir.join(EGRESS_SOCKET_NAME))),
            KernelEndpoint::Tcp { .. } => Err(RuntimeError::Engine {
                action: "serve egress for",
                container: container.id.clone(),
                detail: "it is reached over TCP and has no run directory for the egress proxy"
                    .to_string(),
            }),
        }
    }

    fn on_server_host(&self) -> bool {
        true
    }

    fn oci_runtime(&self) -> Option<&str> {
        Some(&self.oci_runtime.name)
    }

    fn full_egress(&self) -> bool {
        self.oci_runtime.has_network
    }

    async fn remove_by_id(&self, container: &str) -> Result<(), RuntimeError> {
        remove_container(&self.docker, &self.config.run_root, container).await
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let filters = HashMap::from([("label", instance_filter(&self.config.instance))]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self.docker.list_containers(Some(options)).await;
        managed(containers, |c| Some((c.id?, c.labels)))
    }

    async fn exec(
        &self,
        container: &str,
        command: &ExecCommand,
    ) -> Result<ExecOutput, RuntimeError> {
        exec::run(&self.docker, &self.config.user, container, command).await
    }

    async fn run_job(&self, job: &JobSpec) -> Result<ExecOutput, RuntimeError> {
        let job_error = |action: &'static str| {
            let session_id = job.session_id.clone();
            move |e: BollardError| RuntimeError::Container {
                action,
                session_id,
                detail: e.to_string(),
            }
        };
        let network = match job.egress {
            JobEgress::Network => &self.egress_network_id,
            JobEgress::Proxy { .. } => self.network(NetworkPolicy::Internal),
        };
        let sandbox = Sandbox::job(job, &self.sandbox_config(), "installer", network);
        let image_id = self.image_id(job.image.as_deref()).await?;
        let created = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                self.container_body(&sandbox, &image_id),
            )
            .await
            .map_err(job_error("create the installer for"))?;
        let container = KernelContainer::created(created.id, self.reaper.clone());
        self.verify(&container.id, &sandbox, &job.session_id)
            .await?;
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(job_error("start the installer of"))?;
        let mut waiting = self.docker.wait_container(&container.id, None);
        let bound = job.timeout + std::time::Duration::from_secs(30);
        // A stop leaves the job running until its removal below kills it.
        let waited = tokio::select! {
            waited = tokio::time::timeout(bound, waiting.next()) => Some(waited),
            _ = job.stop.cancelled() => None,
        };
        let exit_code = match waited {
            Some(Ok(Some(Ok(response)))) => Some(response.status_code),
            Some(Ok(Some(Err(BollardError::DockerContainerWaitError { code, .. })))) => Some(code),
            _ => None,
        };
        let result = job_output(exit_code, job.max_output_bytes, |options| {
            self.docker.logs(&container.id, Some(options))
        })
        .await;
        self.remove(container).await?;
        Ok(result)
    }

    async fn usage(&self, container: &str) -> Result<ContainerUsage, RuntimeError> {
        container_usage(&self.docker, container).await
    }

    async fn logs_tail(&self, container: &str) -> String {
        logs_tail(self.docker.logs(container, Some(tail_options()))).await
    }

    async fn image_id(&self, image: Option<&str>) -> Result<String, RuntimeError> {
        match image {
            Some(image) => resolve_image(&self.docker, image).await,
            None => Ok(self.image_id.clone()),
        }
    }

    async fn health(&self) -> RuntimeHealth {
        let version = self.docker.version().await.ok();
        let image_present = self.docker.inspect_image(&self.image_id).await.is_ok();
        RuntimeHealth {
            engine_reachable: version.is_some(),
            engine_version: version.and_then(|v| v.version),
            image_present,
            image: self.config.image.clone(),
            oci_runtime: Some(self.oci_runtime.name.clone()),
        }
    }
}

/// Kernels not started by ipykernel (IRkernel's, say) name their socket files `k:1` where
/// ipykernel and the server's client name them `k-1`: each name the server dials gets a link
/// to the other one. A kernel that binds `k-1` itself replaces the link (ZeroMQ removes
/// what is in the way of a socket it binds).
fn link_colon_names(run_dir: &Path) -> std::io::Result<()> {
    let ports = ChannelPorts::IPC;
    for port in [
        ports.shell,
        ports.iopub,
        ports.stdin,
        ports.control,
        ports.heartbeat,
    ] {
        std::os::unix::fs::symlink(
            format!("{IPC_SOCKET_NAME}:{port}"),
            run_dir.join(format!("{IPC_SOCKET_NAME}-{port}")),
        )?;
    }
    Ok(())
}

/// Removes a container and then its run directory, if it has one under `run_root`.
async fn remove_container(
    docker: &Docker,
    run_root: &Path,
    container: &str,
) -> Result<(), RuntimeError> {
    let run_dir = match docker.inspect_container(container, None).await {
        Ok(inspect) => run_dir_of(inspect.host_config.and_then(|h| h.binds), run_root),
        Err(_) => None,
    };
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let removed = match docker.remove_container(container, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(BollardError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(RuntimeError::Engine {
            action: "remove",
            container: container.to_string(),
            detail: e.to_string(),
        }),
    };
    if removed.is_ok()
        && let Some(dir) = run_dir
    {
        remove_run_dir(&dir);
    }
    removed
}

/// The run directory among a container's bind mounts (`source:target:mode`), if it is one
/// under `run_root`.
fn run_dir_of(binds: Option<Vec<String>>, run_root: &Path) -> Option<PathBuf> {
    binds.into_iter().flatten().find_map(|bind| {
        let mut parts = bind.rsplitn(3, ':');
        let (_mode, target, source) = (parts.next()?, parts.next()?, parts.next()?);
        let source = PathBuf::from(source);
        (target == RUN_DIR && source.parent() == Some(run_root)).then_some(source)
    })
}

fn set_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

fn remove_run_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), %error, "could not remove a kernel's run directory");
    }
}

/// Makes the run root (readable by the server's user only: the kernels see only their own
/// run directory, mounted) and removes every run directory in it that no container of this
/// server mounts: left by containers removed while the server was not running.
async fn prepare_run_root(docker: &Docker, config: &DockerConfig) -> Result<(), RuntimeError> {
    let root = &config.run_root;
    let unusable = |e: std::io::Error| RuntimeError::Engine {
        action: "prepare the run directories",
        container: root.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .and_then(|()| set_mode(root, 0o700))
        .map_err(unusable)?;
    let filters = HashMap::from([("label", instance_filter(&config.instance))]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let mounted: HashSet<PathBuf> = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| RuntimeError::Unreachable(e.to_string()))?
        .into_iter()
        .flat_map(|c| c.mounts.unwrap_or_default())
        .filter(|m| m.destination.as_deref() == Some(RUN_DIR))
        .filter_map(|m| m.source.map(PathBuf::from))
        .collect();
    for entry in std::fs::read_dir(root).map_err(unusable)?.flatten() {
        let dir = entry.path();
        if !mounted.contains(&dir) {
            remove_run_dir(&dir);
        }
    }
    Ok(())
}

/// What the engine reports about a created container, in the sandbox's terms, with the
/// setting only Docker has: swap equal to memory.
fn reported(sandbox: &Sandbox, inspect: &ContainerInspectResponse) -> Reported {
    let host = inspect.host_config.clone().unwrap_or_default();
    let config = inspect.config.clone().unwrap_or_default();
    let ulimit = |name: &str| {
        let found = host
            .ulimits
            .as_ref()?
            .iter()
            .find(|u| u.name.as_deref() == Some(name))?;
        Some((found.soft?, found.hard?))
    };
    let (open_files, nproc) = (ulimit("nofile"), ulimit("nproc"));
    let tmp_bytes = host.tmpfs.as_ref().and_then(|tmpfs| {
        tmpfs
            .get(TMP)?
            .split(',')
            .find_map(|option| option.strip_prefix("size=")?.parse().ok())
    });
    let mounts = host
        .binds
        .iter()
        .flatten()
        .filter_map(|bind| {
            let mut parts = bind.rsplitn(3, ':');
            let (mode, target, source) = (parts.next()?, parts.next()?, parts.next()?);
            Some(Bind {
                source: source.to_string(),
                target: target.to_string(),
                read_only: mode.split(',').any(|m| m == "ro"),
            })
        })
        .collect();
    Reported {
        memory_bytes: host.memory,
        nano_cpus: host.nano_cpus,
        pids: host.pids_limit,
        open_files,
        nproc,
        tmp_bytes,
        user: config.user,
        read_only_root: host.readonly_rootfs,
        cap_drop: host.cap_drop,
        no_new_privileges: host
            .security_opt
            .map(|opts| opts.iter().any(|o| o.starts_with("no-new-privileges"))),
        mounts,
        labels: config.labels,
        network: host.network_mode,
        oci_runtime: host.runtime,
        engine_specific: vec![Check::equal(
            "memory-swap",
            &sandbox.limits.memory_bytes,
            host.memory_swap.as_ref(),
        )],
    }
}
