//! The container engine behind a small trait. Owns starting, inspecting, signalling and removing
//! kernel containers, and finding the ones this server started. Only this module talks to
//! Docker; the rest of the server sees [`Runtime`] and plain data. It knows nothing about the
//! Jupyter protocol beyond where a kernel listens: on which ports (Swarm), or on which socket
//! files in its run directory (one Docker host, where kernels without egress have no network).

mod distribute;
mod docker;
mod engine;
mod image_registry;
mod reaper;
mod sandbox;
mod swarm;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::egress::ListenAt;
use crate::kernel::{ChannelPorts, KernelConnection};

pub use distribute::distribute;
pub use docker::{DockerConfig, DockerRuntime};
pub use image_registry::{Credentials, ImageRegistryError, Repository, push_from_this_engine};
pub use swarm::{SwarmConfig, SwarmRuntime};

/// Labels every kernel container carries.
pub mod labels {
    pub const MANAGED_BY: &str = "kernelbox.managed-by";
    pub const MANAGED_BY_VALUE: &str = "kernelbox";
    pub const INSTANCE: &str = "kernelbox.instance";
    pub const SESSION_ID: &str = "kernelbox.session-id";
    pub const OWNER: &str = "kernelbox.owner";
    pub const RECIPE: &str = "kernelbox.recipe";
    /// `kernel`, or `installer` for a package-install job.
    pub const ROLE: &str = "kernelbox.role";
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container engine is unreachable: {0}")]
    Unreachable(String),
    #[error("kernel image {image} is not present in the container engine: {detail}")]
    ImageMissing { image: String, detail: String },
    #[error("could not {action} the kernel container for session {session_id}: {detail}")]
    Container {
        action: &'static str,
        session_id: String,
        detail: String,
    },
    #[error(
        "the container engine dropped the sandbox setting {setting} for session {session_id} (engine API {api_version}); refusing to run without it"
    )]
    SandboxSettingDropped {
        setting: &'static str,
        session_id: String,
        api_version: String,
    },
    #[error(
        "the container engine speaks API {api_version}, but the {runtime} runtime needs {minimum} or later for its sandbox"
    )]
    EngineTooOld {
        runtime: &'static str,
        api_version: String,
        minimum: &'static str,
    },
    #[error("the Swarm runtime cannot run here: {0}")]
    SwarmSetup(String),
    #[error(
        "the container engine has no OCI runtime {name:?} (--oci-runtime); it has: {known}. Register it under \"runtimes\" in the engine's daemon.json"
    )]
    UnknownOciRuntime { name: String, known: String },
    #[error(transparent)]
    ImageRegistry(#[from] ImageRegistryError),
    #[error("no Swarm node can hold the kernel of session {session_id}: {shortfall}")]
    NoNodeFits {
        session_id: String,
        shortfall: String,
    },
    #[error("the Docker network {network} cannot serve kernels: {detail}")]
    NetworkPolicy { network: String, detail: String },
    #[error("{action} failed for container {container}: {detail}")]
    Engine {
        action: &'static str,
        container: String,
        detail: String,
    },
}

/// Resource caps of one kernel container; session records store them as they are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    pub open_files: i64,
    pub tmp_bytes: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            nano_cpus: 1_000_000_000,
            pids: 256,
            open_files: 1024,
            tmp_bytes: 256 << 20,
        }
    }
}

/// Everything needed to start one kernel container.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    pub session_id: String,
    pub owner: String,
    /// Host directory mounted at `/workspace`.
    pub workspace: PathBuf,
    /// The kernel's HMAC key; the engine renders the connection file for where the kernel
    /// listens, and the kernel writes it to its own tmpfs at start-up.
    pub connection: KernelConnection,
    /// `NAME=value` variables for the kernel process.
    pub env: Vec<String>,
    /// What the kernel may reach beyond the server.
    pub egress: KernelEgress,
    pub limits: Limits,
    /// The image the kernel runs in (tag, id or digest reference); the runtime's kernel image
    /// when `None`.
    pub image: Option<String>,
    /// How the kernel starts in the image.
    pub launch: KernelLaunch,
}

/// What a kernel's argv says where its connection file goes, as in a Jupyter kernelspec.
pub const CONNECTION_FILE_ARG: &str = "{connection_file}";

/// How a kernel starts in its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelLaunch {
    /// kernelbox's bootstrap runs ipykernel's app with this `Kernel` subclass (`module.Class`;
    /// IPython's when `None`).
    IPyKernel { kernel_class: Option<String> },
    /// The image's own kernel command, as a kernelspec's argv: `{connection_file}` stands
    /// for the connection file's path.
    Argv(Vec<String>),
}

/// What a kernel may reach beyond the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEgress {
    /// Nothing: no network at all (one host) or an internal overlay (Swarm).
    None,
    /// Only the server's egress proxy, where [`Runtime::egress_listener`] says it listens:
    /// a socket in the run directory, relayed from a loopback port inside the container (one
    /// host), or the server's alias on the kernel's internal overlay (Swarm).
    Proxy,
    /// The network: the egress network (one host) or a non-internal overlay (Swarm).
    Full,
}

/// Where the server reaches a started kernel. Session records keep it as it is (`run_dir`,
/// or `host` and `ports`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum KernelEndpoint {
    /// ZeroMQ over IPC: the kernel's socket files `k-1` to `k-5` in this host directory, its
    /// run directory (mounted in the container at `/run/kernel`). The Docker runtime.
    Ipc { run_dir: PathBuf },
    /// ZeroMQ over TCP: an address and the ports there. The Swarm runtime, where the kernel
    /// may run on another node.
    Tcp { host: String, ports: ChannelPorts },
}

impl KernelEndpoint {
    /// The prefix of an IPC kernel's socket files, as the server sees them.
    pub fn ipc_prefix(run_dir: &std::path::Path) -> PathBuf {
        run_dir.join(IPC_SOCKET_NAME)
    }
}

/// The name a kernel's socket files start with in its run directory: `k-1` to `k-5`.
const IPC_SOCKET_NAME: &str = "k";
/// The socket in a kernel's run directory where the server takes its egress.
const EGRESS_SOCKET_NAME: &str = "egress.sock";

impl std::fmt::Display for KernelEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelEndpoint::Ipc { run_dir } => write!(f, "ipc:{}", run_dir.display()),
            KernelEndpoint::Tcp { host, .. } => write!(f, "tcp:{host}"),
        }
    }
}

/// Why a container is not running any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerExit {
    Running,
    OutOfMemory {
        limit_bytes: i64,
    },
    /// Exit code 137 under a memory limit, from an engine that reports no OOM kill (a Swarm
    /// task's status carries only the exit code).
    KilledUnderMemoryLimit {
        limit_bytes: i64,
    },
    Exited {
        code: i64,
    },
    /// The node that ran the kernel is down or left the swarm.
    NodeLost {
        node: String,
    },
    Gone,
}

impl ContainerExit {
    /// A short label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ContainerExit::Running => "running",
            ContainerExit::OutOfMemory { .. } | ContainerExit::KilledUnderMemoryLimit { .. } => {
                "out_of_memory"
            }
            ContainerExit::Exited { .. } => "exited",
            ContainerExit::NodeLost { .. } => "node_lost",
            ContainerExit::Gone => "removed",
        }
    }
}

impl std::fmt::Display for ContainerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerExit::Running => f.write_str("still running"),
            ContainerExit::OutOfMemory { limit_bytes } => write!(
                f,
                "out of memory (limit {} MiB): the kernel was killed",
                limit_bytes >> 20
            ),
            ContainerExit::KilledUnderMemoryLimit { limit_bytes } => write!(
                f,
                "killed with exit code 137 under a memory limit of {} MiB: most likely out of memory (a Swarm task reports an OOM kill only as this exit code)",
                limit_bytes >> 20
            ),
            ContainerExit::Exited { code } => {
                write!(f, "the kernel process exited with code {code}")
            }
            ContainerExit::NodeLost { node } => {
                write!(
                    f,
                    "node lost: the node {node} that ran the kernel went down"
                )
            }
            ContainerExit::Gone => f.write_str("the kernel's container was removed"),
        }
    }
}

/// A command to run inside a kernel's container, as the kernel's user.
#[derive(Debug, Clone)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    pub working_dir: String,
    pub env: Vec<String>,
    /// The process is killed (SIGKILL) when it runs longer than this.
    pub timeout: std::time::Duration,
    /// Output kept per stream; the rest is counted and dropped.
    pub max_output_bytes: usize,
    /// Kills the process (and what it started) when fired: a cancelled task.
    pub stop: CancellationToken,
}

/// What a command run inside a container did.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond `max_output_bytes` was dropped.
    pub truncated: bool,
}

/// A short-lived container next to a session's kernel (the package installer): same image,
/// same sandbox, the session's workspace, but on the egress network.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub session_id: String,
    pub owner: String,
    pub workspace: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub limits: Limits,
    pub timeout: std::time::Duration,
    pub max_output_bytes: usize,
    /// How the job reaches the network.
    pub egress: JobEgress,
    /// The image it runs in (its session's template's); the runtime's kernel image when
    /// `None`.
    pub image: Option<String>,
    /// Ends the job (its container is removed) when fired: a cancelled task.
    pub stop: CancellationToken,
}

/// How a job (the package installer) reaches the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEgress {
    /// Through the engine's egress network (Swarm, where the job may run on another node).
    Network,
    /// No network; only the egress proxy, listening on [`EGRESS_SOCKET_NAME`] in this host
    /// directory (mounted read-only), through the same relay a kernel gets. Only where
    /// [`Runtime::on_server_host`] says so.
    Proxy { socket_dir: PathBuf },
}

impl JobEgress {
    /// Where the server listens for a job given `socket_dir`.
    pub fn socket_in(socket_dir: &std::path::Path) -> PathBuf {
        socket_dir.join(EGRESS_SOCKET_NAME)
    }
}

/// Resource use of a kernel container as the engine reports it.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct ContainerUsage {
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub pids: Option<u64>,
    pub pids_limit: Option<u64>,
}

/// A container found by its labels.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// A started kernel container, owned. Dropping it without [`Runtime::remove`] hands its id to
/// the runtime's reaper, so no error path can leak a container.
pub struct KernelContainer {
    pub id: String,
    pub endpoint: KernelEndpoint,
    reaper: Option<mpsc::UnboundedSender<String>>,
}

impl KernelContainer {
    pub fn new(
        id: String,
        endpoint: KernelEndpoint,
        reaper: mpsc::UnboundedSender<String>,
    ) -> Self {
        Self {
            id,
            endpoint,
            reaper: Some(reaper),
        }
    }

    /// A container owned from the moment the engine made it, before its endpoint is known:
    /// an error on the way to starting it reaps it.
    fn created(id: String, reaper: mpsc::UnboundedSender<String>) -> Self {
        let endpoint = KernelEndpoint::Tcp {
            host: String::new(),
            ports: ChannelPorts::IN_CONTAINER,
        };
        Self::new(id, endpoint, reaper)
    }

    /// Marks the container as removed by its owner.
    fn disarm(&mut self) {
        self.reaper = None;
    }

    /// Lets go of the container without removing it: it keeps running for the server's next
    /// start to adopt.
    pub fn leave_running(mut self) {
        self.disarm();
    }
}

impl Drop for KernelContainer {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.send(self.id.clone());
        }
    }
}

/// A container engine that runs kernels.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Creates and starts a kernel container and reads back that its sandbox holds.
    async fn start_kernel(&self, spec: &KernelSpec) -> Result<KernelContainer, RuntimeError>;
    /// Takes ownership of a kernel container started by an earlier run of this server, and
    /// makes sure the server can reach it again; refuses an endpoint this runtime no longer
    /// serves kernels on.
    async fn adopt(
        &self,
        container: String,
        endpoint: KernelEndpoint,
    ) -> Result<KernelContainer, RuntimeError>;
    /// Called once the kernel answered, before any code runs in it: a runtime that gave the
    /// kernel a directory to bind its sockets in takes away its right to change what is there,
    /// so kernel code cannot swap a socket the server dials for something else.
    async fn kernel_ready(&self, _container: &KernelContainer) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Why the container stopped, or that it still runs.
    async fn exit_status(&self, container: &str) -> Result<ContainerExit, RuntimeError>;
    /// Sends SIGINT to the kernel process.
    async fn interrupt(&self, container: &str) -> Result<(), RuntimeError>;
    /// Removes the container and everything it ran.
    async fn remove(&self, mut container: KernelContainer) -> Result<(), RuntimeError> {
        container.disarm();
        self.remove_by_id(&container.id).await
    }
    async fn remove_by_id(&self, container: &str) -> Result<(), RuntimeError>;
    /// Containers of this server instance, running or not.
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError>;
    /// Runs a command inside the container as the kernel's user.
    async fn exec(
        &self,
        container: &str,
        command: &ExecCommand,
    ) -> Result<ExecOutput, RuntimeError>;
    /// Runs a job container to its end (killed at its timeout) and removes it.
    async fn run_job(&self, job: &JobSpec) -> Result<ExecOutput, RuntimeError>;
    /// Memory, CPU and process counts of the container.
    async fn usage(&self, container: &str) -> Result<ContainerUsage, RuntimeError>;
    /// The last lines the container printed, for diagnosing a kernel that would not start.
    async fn logs_tail(&self, container: &str) -> String;
    /// Engine reachable and kernel image present: a short description of each.
    async fn health(&self) -> RuntimeHealth;
    /// The id of `image` (the runtime's kernel image when `None`), when kernels can run in
    /// it here.
    async fn image_id(&self, image: Option<&str>) -> Result<String, RuntimeError>;
    /// Where an HTTP listener asked to listen on every interface (`wildcard`, `0.0.0.0` or
    /// `::`) listens instead, so no kernel can reach it. On one host, the wildcard itself:
    /// kernels without egress have no network. On Swarm, where the server's container joins
    /// every kernel's overlay, its addresses on the other networks and loopback.
    /// Where the egress proxy of a kernel with [`KernelEgress::Proxy`] must listen: where the
    /// kernel's sandbox points its proxy variables, reachable from that kernel alone.
    async fn egress_listener(&self, container: &KernelContainer) -> Result<ListenAt, RuntimeError>;
    /// The OCI runtime kernels run under, where known (`runc`, `runsc`, ...).
    fn oci_runtime(&self) -> Option<&str> {
        None
    }
    /// Whether a kernel with [`KernelEgress::Full`] gets a network: not under an OCI runtime
    /// registered without one (gVisor's `runsc --network=none`).
    fn full_egress(&self) -> bool {
        true
    }
    /// Whether kernels and jobs run on the server's own host, where they see its directories
    /// and mounts: then installer jobs go out through an egress proxy of their own
    /// ([`JobEgress::Proxy`]) rather than an egress network, and a workspace the server
    /// loop-mounts is what the kernel writes to.
    fn on_server_host(&self) -> bool {
        false
    }
    async fn listen_addresses(&self, wildcard: IpAddr) -> Result<Vec<IpAddr>, RuntimeError> {
        Ok(vec![wildcard])
    }
    /// How long a kernel may stay silent while its container still looks alive before it is
    /// given up: long enough for the engine to notice a lost machine, so `exit_status` can say
    /// so. Nothing on one host.
    fn unresponsive_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// What `/healthz` reports about the engine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuntimeHealth {
    pub engine_reachable: bool,
    pub engine_version: Option<String>,
    pub image_present: bool,
    pub image: String,
    /// The OCI runtime kernels run under (`runc`, `runsc`, ...), where the engine says.
    pub oci_runtime: Option<String>,
}

pub type SharedRuntime = Arc<dyn Runtime>;
