//! Command-line flags (every one also an environment variable), in one group per part of the
//! server, and the one place each group becomes the config its part takes (`Limits`,
//! `ToolConfig`, `DockerConfig`, `SwarmConfig`, `RegistryConfig`). Values are parsed by their
//! types in `units`; checks that span flags live here. It reads only what flags name (the
//! tokens file, /etc/hostname, the registry password variable); it starts nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::{AuthError, Authentication, TokenStore};
use crate::egress::Allowlist;
use crate::mcp::{TaskConfig, ToolConfig};
use crate::packages::PackageIndex;
use crate::runtime::{Credentials, DockerConfig, Limits, Repository, SwarmConfig};
use crate::session::SessionSettings;
use crate::sessions::RegistryConfig;
use crate::templates::{Catalog, TemplateError};
use crate::units::{ByteSize, Cpus, OptionalSeconds, Pids, Seconds};
use crate::workspace::{Disk, DiskError, KernelUser, QuotaModeChoice};

#[derive(Debug, Parser)]
#[command(
    name = "kernelbox",
    version,
    about = "A real Python kernel in a box for AI agents: ipykernel in Docker, served over MCP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, env = "KERNELBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the MCP tools.
    Serve(Box<ServeArgs>),
    /// Build or name the images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the kernel images, Python's and R's (each skipped when present), and the server
    /// image for Compose.
    Build {
        /// Build only the kernel images.
        #[arg(long)]
        kernel_only: bool,
    },
    /// Print the tag of this version's kernel image: Python's, or with `r` the R image.
    Name {
        #[arg(value_enum, default_value = "python")]
        kernel: KernelImageName,
    },
    /// Copy the kernel image to Swarm nodes without a registry (save, load, check the id) and
    /// label each node as holding it, so the Swarm runtime places kernels there.
    Distribute {
        /// A node's Docker engine: tcp://HOST:2375 or unix:///PATH (repeat the flag).
        #[arg(long, required = true)]
        node: Vec<String>,
        /// The manager's engine that labels the nodes. Default: this host's engine.
        #[arg(long)]
        manager: Option<String>,
        /// The image to copy. Default: this recipe's kernel image.
        #[arg(long)]
        image: Option<String>,
    },
    /// Push the kernel image to a registry as REPOSITORY:<recipe> and print it pinned by
    /// digest (REPOSITORY@sha256:…), for `serve --runtime swarm --image`. The password, when
    /// the registry wants one, comes from KERNELBOX_REGISTRY_PASSWORD.
    Push {
        /// Registry repository: HOST[:PORT]/PATH.
        #[arg(long, value_parser = parse_repository)]
        registry: Repository,
        /// User name for the registry.
        #[arg(long, env = "KERNELBOX_REGISTRY_USERNAME")]
        registry_username: Option<String>,
        /// The image to push. Default: this recipe's kernel image.
        #[arg(long)]
        image: Option<String>,
    },
}

/// kernelbox's own kernel images, by the template that names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelImageName {
    /// The kernel image (templates `python` and `bash`).
    Python,
    /// The R image (template `r`).
    R,
}

/// Which container engine runs the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// One Docker engine: kernels are containers on this host.
    Docker,
    /// A Docker Swarm: kernels are one-task services placed on the swarm's nodes; the server
    /// runs as a container on a manager.
    Swarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Stdio,
    Http,
}

/// `kernelbox serve`: the wiring flags here, the rest in one group per part of the server.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Container engine for kernels: one Docker host, or a Docker Swarm.
    #[arg(long, env = "KERNELBOX_RUNTIME", value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,
    /// Kernel image: a tag or id on this engine, or with `--runtime swarm` a digest reference
    /// (`HOST/PATH@sha256:…`, as `kernelbox image push` prints) that nodes pull. Default: this
    /// recipe's `kernelbox-kernel:<hash>`.
    #[arg(long, env = "KERNELBOX_IMAGE")]
    pub image: Option<String>,
    /// Do not build the kernel image when it is missing; fail instead.
    #[arg(long, env = "KERNELBOX_NO_BUILD")]
    pub no_build: bool,
    /// Where workspaces live. In a container it must have the same path as on the host.
    #[arg(long, env = "KERNELBOX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub swarm: SwarmArgs,
    #[command(flatten)]
    pub docker: DockerArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub tools: ToolArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// Flags that no single group can judge alone are refused here, and the chosen runtime's
/// config is built from its group and the sandbox.
impl ServeArgs {
    /// Refuses registry flags with `--runtime docker`, and `--kernel-access ports`, before
    /// anything is built or started.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.runtime == RuntimeKind::Docker && self.swarm.names_a_registry() {
            return Err(ConfigError::RegistryWithoutSwarm);
        }
        if self.docker.kernel_access == KernelAccess::Ports {
            return Err(ConfigError::KernelAccessPorts);
        }
        if self.runtime == RuntimeKind::Swarm && self.sandbox.oci_runtime.is_some() {
            return Err(ConfigError::OciRuntimeOnSwarm);
        }
        Ok(())
    }

    pub fn runtime_config(&self, deployment: Deployment) -> Result<RuntimeConfig, ConfigError> {
        Ok(match self.runtime {
            RuntimeKind::Docker => {
                RuntimeConfig::Docker(self.docker.config(deployment, &self.sandbox))
            }
            RuntimeKind::Swarm => {
                RuntimeConfig::Swarm(self.swarm.config(deployment, &self.sandbox)?)
            }
        })
    }
}

/// What the server decided about its kernels before choosing a runtime.
pub struct Deployment {
    /// The kernel image reference.
    pub image: String,
    /// The hash of the image's recipe, recorded on every kernel.
    pub recipe: String,
    /// This server's instance id, so servers sharing an engine never touch each other's kernels.
    pub instance: String,
    /// The data directory, resolved: the same path on the host and, under Compose, in the
    /// server's container.
    pub data_dir: PathBuf,
}

/// The config of the runtime `--runtime` chose.
pub enum RuntimeConfig {
    Docker(DockerConfig),
    Swarm(SwarmConfig),
}

/// A flag combination or a file named by a flag that the server cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--default-timeout ({default}) must not exceed --max-timeout ({max})")]
    DefaultTimeoutAboveMax { default: Seconds, max: Seconds },
    #[error("loading the tokens file")]
    Tokens(#[source] AuthError),
    #[error(
        "refusing to serve unauthenticated HTTP on {host}: give --tokens-file, or listen on a loopback address, or pass --allow-unauthenticated if something in front of kernelbox authenticates callers"
    )]
    Unauthenticated { host: String },
    #[error(
        "--registry and --registry-username apply only to --runtime swarm: on one host kernels run the local image"
    )]
    RegistryWithoutSwarm,
    #[error(
        "--oci-runtime (KERNELBOX_OCI_RUNTIME) needs --runtime docker: a Swarm service cannot name an OCI runtime; set \"default-runtime\" in each node's daemon.json instead"
    )]
    OciRuntimeOnSwarm,
    #[error("{0}")]
    PackageIndex(String),
    #[error(
        "--kernel-access ports (KERNELBOX_KERNEL_ACCESS=ports) is no longer supported: on one host the server reaches each kernel through IPC sockets in the kernel's run directory, and kernels without egress have no network, so there are no ports to publish (on Swarm the server joins each kernel's own network); remove the setting"
    )]
    KernelAccessPorts,
    #[error("reading /etc/hostname to name the server's container; set --swarm-server-container")]
    Hostname(#[source] std::io::Error),
}

/// How clients reach the server, and who may.
#[derive(Debug, Args)]
#[command(next_help_heading = "Transport")]
pub struct HttpArgs {
    /// MCP transport: stdio (one client, stdout is the protocol) or streamable HTTP.
    #[arg(long, env = "KERNELBOX_TRANSPORT", value_enum, default_value_t = Transport::Stdio)]
    pub transport: Transport,
    /// Address the HTTP server listens on.
    #[arg(long, env = "KERNELBOX_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port the HTTP server listens on (0 picks a free one; the log says which).
    #[arg(long, env = "KERNELBOX_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Host names HTTP requests may carry in their Host header (DNS-rebinding protection).
    #[arg(long = "allowed-host", env = "KERNELBOX_ALLOWED_HOSTS", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    pub allowed_hosts: Vec<String>,
    /// JSON file of bearer tokens, each naming a tenant and its quotas; HTTP callers must
    /// present one.
    #[arg(long, env = "KERNELBOX_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve HTTP without tokens on a non-loopback address (something in front authenticates).
    #[arg(long, env = "KERNELBOX_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
}

impl HttpArgs {
    /// The tokens file's tenants, or none; unauthenticated HTTP off loopback is refused
    /// unless `--allow-unauthenticated` says something in front authenticates.
    pub fn authentication(&self) -> Result<Authentication, ConfigError> {
        let authentication = match &self.tokens_file {
            Some(path) => Authentication::Tokens(Arc::new(
                TokenStore::load(path).map_err(ConfigError::Tokens)?,
            )),
            None => Authentication::Disabled,
        };
        if self.transport == Transport::Http
            && matches!(authentication, Authentication::Disabled)
            && !self.allow_unauthenticated
            && !is_loopback(&self.host)
        {
            return Err(ConfigError::Unauthenticated {
                host: self.host.clone(),
            });
        }
        Ok(authentication)
    }
}

/// Whether `host` names only this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The Swarm runtime and the registry its nodes pull the kernel image from.
#[derive(Debug, Args)]
#[command(next_help_heading = "Swarm runtime")]
pub struct SwarmArgs {
    /// With `--runtime swarm`: the server's own container (name or id), which is attached to
    /// every kernel's overlay network. Default: this container's hostname.
    #[arg(long, env = "KERNELBOX_SWARM_SERVER_CONTAINER")]
    pub swarm_server_container: Option<String>,
    /// With `--runtime swarm`: extra placement constraints for every kernel, e.g.
    /// `node.labels.kernelbox.pool==kernels` (repeat the flag, or separate with commas).
    #[arg(
        long = "swarm-constraint",
        env = "KERNELBOX_SWARM_CONSTRAINTS",
        value_delimiter = ','
    )]
    pub swarm_constraints: Vec<String>,
    /// With `--runtime swarm`: registry repository (HOST[:PORT]/PATH) the server pushes the
    /// kernel image to at start; nodes then pull it pinned by digest instead of needing
    /// `kernelbox image distribute`. The password comes from KERNELBOX_REGISTRY_PASSWORD.
    #[arg(long, env = "KERNELBOX_REGISTRY", value_parser = parse_repository)]
    pub registry: Option<Repository>,
    /// With `--runtime swarm`: user name for the kernel image's registry, used for the push
    /// and sent with every service so nodes can pull. The password comes from
    /// KERNELBOX_REGISTRY_PASSWORD.
    #[arg(long, env = "KERNELBOX_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,
}

impl SwarmArgs {
    fn names_a_registry(&self) -> bool {
        self.registry.is_some() || self.registry_username.is_some()
    }

    /// Without `--swarm-server-container`, the server's container is the one it runs in,
    /// named by its hostname (Docker sets it to the container's short id).
    pub fn config(
        &self,
        deployment: Deployment,
        sandbox: &SandboxArgs,
    ) -> Result<SwarmConfig, ConfigError> {
        let server_container = match &self.swarm_server_container {
            Some(container) => container.clone(),
            None => std::fs::read_to_string("/etc/hostname")
                .map_err(ConfigError::Hostname)?
                .trim()
                .to_string(),
        };
        Ok(SwarmConfig {
            image: deployment.image,
            recipe: deployment.recipe,
            instance: deployment.instance,
            user: sandbox.kernel_user.to_string(),
            ca_bundle: sandbox.ca_bundle.clone(),
            server_container,
            constraints: self.swarm_constraints.clone(),
            registry: self.registry.clone(),
            registry_credentials: registry_credentials(self.registry_username.clone()),
        })
    }
}

/// Registry credentials when a user name is given; the password is read from
/// KERNELBOX_REGISTRY_PASSWORD only, so it never shows in a process list.
pub fn registry_credentials(username: Option<String>) -> Option<Credentials> {
    let password = std::env::var("KERNELBOX_REGISTRY_PASSWORD").ok();
    username.map(|username| Credentials::new(username, password))
}

/// How the server reaches kernels on one Docker host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelAccess {
    /// Through IPC sockets in each kernel's run directory; a kernel without egress has no
    /// network at all. `network`, the name of the way before it, means the same.
    #[value(alias = "network")]
    Ipc,
    /// Ports published on 127.0.0.1: no longer supported, refused at start with the reason.
    Ports,
}

/// The single-host Docker runtime: the egress network and how the server reaches kernels.
#[derive(Debug, Args)]
#[command(next_help_heading = "Docker runtime")]
pub struct DockerArgs {
    /// No longer used: kernels without egress have no network at all (the server reaches them
    /// over IPC). Accepted so that existing configurations start; a warning says it is
    /// ignored.
    #[arg(long, env = "KERNELBOX_NETWORK")]
    pub network: Option<String>,
    /// Network with egress, for the package installer and sessions allowed egress.
    #[arg(
        long,
        env = "KERNELBOX_EGRESS_NETWORK",
        default_value = "kernelbox-egress"
    )]
    pub egress_network: String,
    /// How the server reaches kernels: through IPC sockets in each kernel's run directory
    /// (`ipc`; `network` is the same). `ports` is refused: there are no ports to publish.
    #[arg(long, env = "KERNELBOX_KERNEL_ACCESS", value_enum, default_value_t = KernelAccess::Ipc)]
    pub kernel_access: KernelAccess,
}

impl DockerArgs {
    pub fn config(&self, deployment: Deployment, sandbox: &SandboxArgs) -> DockerConfig {
        DockerConfig {
            image: deployment.image,
            recipe: deployment.recipe,
            instance: deployment.instance,
            egress_network: self.egress_network.clone(),
            run_root: deployment.data_dir.join("run"),
            user: sandbox.kernel_user.to_string(),
            ca_bundle: sandbox.ca_bundle.clone(),
            oci_runtime: sandbox.oci_runtime.clone(),
        }
    }
}

/// What each kernel gets: its user, resource caps, workspace quota, network policy and CA
/// bundle.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kernel sandbox")]
pub struct SandboxArgs {
    /// Let sessions be created with egress (`create_session` with `egress: true`; a tenant's
    /// token must allow it too).
    #[arg(long, env = "KERNELBOX_ALLOW_EGRESS")]
    pub allow_egress: bool,
    /// What sessions may reach through the egress proxy, comma-separated: host names
    /// (pypi.org), subdomain wildcards (*.example.com), IPv4 CIDRs (10.0.0.0/8), each with an
    /// optional :port (80 and 443 when none). A session asks with `create_session`
    /// `egress_allow`, a tenant's token may narrow it; default: nothing.
    #[arg(long, env = "KERNELBOX_EGRESS_ALLOW")]
    pub egress_allow: Option<Allowlist>,
    /// OCI runtime of kernels and the jobs beside them, by the engine's name for it (`runsc`
    /// for gVisor); default: the engine's default runtime. `docker` runtime only: on Swarm
    /// set each node's default runtime.
    #[arg(long, env = "KERNELBOX_OCI_RUNTIME")]
    pub oci_runtime: Option<String>,
    /// uid:gid the kernels run as.
    #[arg(long, env = "KERNELBOX_KERNEL_USER", default_value = "1000:1000")]
    pub kernel_user: KernelUser,
    /// Memory per kernel (swap is set equal, so there is none): 512m, 1g, ...
    #[arg(long, env = "KERNELBOX_MEMORY", default_value = "1g")]
    pub memory: ByteSize,
    /// CPUs per kernel.
    #[arg(long, env = "KERNELBOX_CPUS", default_value = "1")]
    pub cpus: Cpus,
    /// Processes per kernel.
    #[arg(long, env = "KERNELBOX_PIDS_LIMIT", default_value = "256")]
    pub pids_limit: Pids,
    /// Open files per kernel.
    #[arg(long, env = "KERNELBOX_OPEN_FILES", default_value_t = 1024, value_parser = clap::value_parser!(i64).range(64..=1048576))]
    pub open_files: i64,
    /// Size of each kernel's /tmp (tmpfs).
    #[arg(long, env = "KERNELBOX_TMP_SIZE", default_value = "256m")]
    pub tmp_size: ByteSize,
    /// What one session's workspace may hold, kernel writes included (how: see
    /// --workspace-quota-mode).
    #[arg(long, env = "KERNELBOX_WORKSPACE_QUOTA", default_value = "2g")]
    pub workspace_quota: ByteSize,
    /// How kernel writes are held to the quota: `mount` makes each workspace a loop-mounted
    /// ext4 image of the quota's size (writes past it fail with ENOSPC; needs root and loop
    /// devices), `watchdog` stops a kernel within a second of crossing it, `auto` mounts where
    /// it can.
    #[arg(
        long,
        env = "KERNELBOX_WORKSPACE_QUOTA_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub workspace_quota_mode: QuotaModeChoice,
    /// CA bundle (PEM) given to every kernel, for TLS through an intercepting proxy.
    #[arg(long, env = "KERNELBOX_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
}

impl SandboxArgs {
    /// Where workspaces go in `data_dir` (canonical) and how their quota is held, with why;
    /// `kernels_here` says whether kernels run on this host.
    pub fn disk(&self, kernels_here: bool, data_dir: &Path) -> Result<(Disk, String), DiskError> {
        Disk::choose(
            self.workspace_quota_mode,
            kernels_here,
            data_dir,
            self.workspace_quota.as_u64(),
            self.kernel_user,
        )
    }

    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.memory.bytes(),
            nano_cpus: self.cpus.nano(),
            pids: self.pids_limit.get(),
            open_files: self.open_files,
            tmp_bytes: self.tmp_size.bytes(),
        }
    }
}

/// What one tool call may ask for and send, and where packages come from.
#[derive(Debug, Args)]
#[command(next_help_heading = "Tool calls")]
pub struct ToolArgs {
    /// Seconds a cell may run when the call names no timeout.
    #[arg(long, env = "KERNELBOX_DEFAULT_TIMEOUT", default_value = "30")]
    pub default_timeout: Seconds,
    /// Largest timeout a call may ask for, in seconds.
    #[arg(long, env = "KERNELBOX_MAX_TIMEOUT", default_value = "600")]
    pub max_timeout: Seconds,
    /// Largest `code` accepted, in bytes.
    #[arg(long, env = "KERNELBOX_MAX_CODE_BYTES", default_value_t = 1 << 20)]
    pub max_code_bytes: usize,
    /// Largest file `read_file` returns.
    #[arg(long, env = "KERNELBOX_MAX_READ_BYTES", default_value = "10m")]
    pub max_read_bytes: ByteSize,
    /// Largest file `write_file`, `save_script` and uploads may write.
    #[arg(long, env = "KERNELBOX_MAX_WRITE_BYTES", default_value = "100m")]
    pub max_write_bytes: ByteSize,
    /// Package index `install_dependencies` uses instead of PyPI (a mirror, for air-gapped
    /// hosts).
    #[arg(long, env = "KERNELBOX_PIP_INDEX_URL")]
    pub pip_index_url: Option<String>,
    /// Host pip trusts without TLS (an HTTP mirror).
    #[arg(long, env = "KERNELBOX_PIP_TRUSTED_HOST")]
    pub pip_trusted_host: Option<String>,
    /// Seconds `install_dependencies` may take.
    #[arg(long, env = "KERNELBOX_INSTALL_TIMEOUT", default_value = "300")]
    pub install_timeout: Seconds,
    /// Seconds a task's result stays readable after the task ended (MCP tasks extension).
    #[arg(long, env = "KERNELBOX_TASK_RETENTION", default_value = "3600")]
    pub task_retention: Seconds,
    /// Tasks one tenant may have working at once; more are refused until one ends.
    #[arg(long, env = "KERNELBOX_MAX_TASKS_PER_TENANT", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_tasks_per_tenant: u16,
}

impl ToolArgs {
    /// How long tasks' results are kept and how many a tenant may run at once.
    pub fn task_config(&self) -> TaskConfig {
        TaskConfig {
            retention: self.task_retention.duration(),
            max_open_per_tenant: usize::from(self.max_tasks_per_tenant),
        }
    }

    pub fn config(&self) -> Result<ToolConfig, ConfigError> {
        if self.default_timeout.duration() > self.max_timeout.duration() {
            return Err(ConfigError::DefaultTimeoutAboveMax {
                default: self.default_timeout,
                max: self.max_timeout,
            });
        }
        let package_index = PackageIndex {
            index_url: self.pip_index_url.clone(),
            trusted_host: self.pip_trusted_host.clone(),
        };
        let installer_hosts = package_index.hosts().map_err(ConfigError::PackageIndex)?;
        Ok(ToolConfig {
            default_timeout: self.default_timeout.duration(),
            max_timeout: self.max_timeout.duration(),
            max_code_bytes: self.max_code_bytes,
            package_index,
            installer_hosts,
            install_timeout: self.install_timeout.duration(),
            max_read_bytes: self.max_read_bytes.as_usize(),
            max_write_bytes: self.max_write_bytes.as_usize(),
        })
    }
}

/// How many sessions, how they start, run and end, and what happens at shutdown.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sessions")]
pub struct LifecycleArgs {
    /// Most sessions this server holds at once.
    #[arg(long, env = "KERNELBOX_MAX_SESSIONS", default_value_t = 64)]
    pub max_sessions: usize,
    /// Kernels kept started ahead of demand: `create_session` takes one (no container start
    /// to wait for) and a replacement starts behind it. Each holds memory while it waits.
    #[arg(long, env = "KERNELBOX_POOL_SIZE", default_value_t = 0, value_parser = parse_pool_size)]
    pub pool_size: usize,
    /// Kernels started at once (cold creates, restarts and pool refills together); more wait
    /// their turn, so a burst does not split the CPU between every start. Default: the
    /// host's cores.
    #[arg(long, env = "KERNELBOX_MAX_CONCURRENT_STARTS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_concurrent_starts: Option<u16>,
    /// Kernel templates sessions may be made from (`create_session(template=...)`): a TOML
    /// or JSON file of templates by name (language, description, image, kernel_class or
    /// argv, memory, cpus, pids_limit, pool_size), one of them `python`; default: the
    /// built-in python, bash and r.
    #[arg(long, env = "KERNELBOX_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Seconds a new kernel may take to become ready.
    #[arg(long, env = "KERNELBOX_READY_TIMEOUT", default_value = "60")]
    pub ready_timeout: Seconds,
    /// Seconds each timeout step (interrupt request, then SIGINT) waits before the next one.
    #[arg(long, env = "KERNELBOX_INTERRUPT_GRACE", default_value = "2")]
    pub interrupt_grace: Seconds,
    /// Output kept per stream in one result; the rest is written to a file in `outputs/`.
    #[arg(long, env = "KERNELBOX_MAX_OUTPUT_BYTES", default_value = "1m")]
    pub max_output_bytes: ByteSize,
    /// Seconds without a cell after which a session is ended (its workspace is kept); 0 keeps
    /// idle sessions.
    #[arg(long, env = "KERNELBOX_IDLE_TIMEOUT", default_value = "3600")]
    pub idle_timeout: OptionalSeconds,
    /// Seconds after which a session is ended whatever it does; 0 for no limit.
    #[arg(long, env = "KERNELBOX_MAX_LIFETIME", default_value = "0")]
    pub max_lifetime: OptionalSeconds,
    /// Seconds the workspace of an ended session is kept before it is removed; 0 keeps it.
    #[arg(long, env = "KERNELBOX_WORKSPACE_RETENTION", default_value = "604800")]
    pub workspace_retention: OptionalSeconds,
    /// On SIGTERM or SIGINT, end every session (kernels removed) instead of leaving them
    /// running for the next start to adopt.
    #[arg(long, env = "KERNELBOX_STOP_SESSIONS_ON_EXIT")]
    pub stop_sessions_on_exit: bool,
    /// Seconds running cells get to finish after SIGTERM before the server exits.
    #[arg(long, env = "KERNELBOX_SHUTDOWN_GRACE", default_value = "30")]
    pub shutdown_grace: Seconds,
}

impl LifecycleArgs {
    /// The templates file's catalog, or the built-in one.
    pub fn catalog(&self) -> Result<Catalog, TemplateError> {
        match &self.templates {
            Some(path) => Catalog::load(path),
            None => Ok(Catalog::builtin(&crate::image::R_KERNEL.tag())),
        }
    }

    /// The registry's config, with the settings every session shares: the sandbox's limits
    /// and policy, and this group's counts, timeouts and lifetimes.
    pub fn registry_config(
        &self,
        data_dir: PathBuf,
        sandbox: &SandboxArgs,
        disk: Disk,
        catalog: Catalog,
    ) -> RegistryConfig {
        RegistryConfig {
            disk,
            catalog,
            own_images: crate::image::KERNEL_RECIPES
                .iter()
                .map(|recipe| recipe.tag())
                .collect(),
            max_sessions: self.max_sessions,
            settings: Arc::new(SessionSettings {
                limits: sandbox.limits(),
                ready_timeout: self.ready_timeout.duration(),
                interrupt_grace: self.interrupt_grace.duration(),
                heartbeat_interval: Duration::from_secs(1),
                max_output_bytes: self.max_output_bytes.as_usize(),
                egress_dir: data_dir.join("egress"),
            }),
            data_dir,
            allow_egress: sandbox.allow_egress,
            egress_allow: sandbox.egress_allow.clone().unwrap_or_default(),
            pool_size: self.pool_size,
            max_concurrent_starts: self.max_concurrent_starts.map_or_else(
                || std::thread::available_parallelism().map_or(2, usize::from),
                usize::from,
            ),
            idle_timeout: self.idle_timeout.duration(),
            max_lifetime: self.max_lifetime.duration(),
            workspace_retention: self.workspace_retention.duration(),
        }
    }
}

fn parse_repository(value: &str) -> Result<Repository, String> {
    Repository::parse(value).map_err(|e| e.to_string())
}

fn parse_pool_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(size) if size <= 256 => Ok(size),
        _ => Err(format!("expected a pool size from 0 to 256, got {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::QuotaMode;
    use clap::CommandFactory;

    fn serve(flags: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["kernelbox", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(*args),
            Command::Image { .. } => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn every_serve_flag_has_an_environment_variable() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            if arg.get_id() == "help" || arg.get_id() == "log_format" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
    }

    #[test]
    fn defaults_become_the_documented_limits() {
        let args = serve(&[]).unwrap();
        let limits = args.sandbox.limits();
        assert_eq!(limits, Limits::default());
        let tools = args.tools.config().unwrap();
        assert_eq!(tools.default_timeout, Duration::from_secs(30));
        assert_eq!(tools.max_timeout, Duration::from_secs(600));
        assert_eq!(tools.max_read_bytes, 10 << 20);
        assert_eq!(args.sandbox.workspace_quota_mode, QuotaModeChoice::Auto);
        let watchdog = serve(&["--workspace-quota-mode", "watchdog"]).unwrap();
        let (disk, _) = watchdog.sandbox.disk(true, Path::new("/d")).unwrap();
        assert_eq!(disk.mode(), QuotaMode::Watchdog);
        let registry = args.lifecycle.registry_config(
            PathBuf::from("/d"),
            &args.sandbox,
            disk,
            Catalog::builtin("r"),
        );
        assert_eq!(registry.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(registry.max_lifetime, None);
        assert_eq!(registry.disk.quota_bytes(), 2 << 30);
        assert_eq!(registry.settings.max_output_bytes, 1 << 20);
    }

    #[test]
    fn flags_are_parsed_by_their_types() {
        let args = serve(&["--cpus", "0.5", "--memory", "512m", "--pids-limit", "64"]).unwrap();
        let limits = args.sandbox.limits();
        assert_eq!(limits.nano_cpus, 500_000_000);
        assert_eq!(limits.memory_bytes, 512 << 20);
        assert_eq!(limits.pids, 64);
        for bad in [
            ["--cpus", "0"],
            ["--memory", "1k"],
            ["--pids-limit", "8"],
            ["--default-timeout", "0"],
            ["--idle-timeout", "-1"],
        ] {
            assert!(serve(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_default_timeout_above_the_maximum_is_refused() {
        let args = serve(&["--default-timeout", "700"]).unwrap();
        let error = args.tools.config().unwrap_err();
        assert_eq!(
            error.to_string(),
            "--default-timeout (700) must not exceed --max-timeout (600)"
        );
    }

    #[test]
    fn registry_flags_need_the_swarm_runtime() {
        let args = serve(&["--registry-username", "me"]).unwrap();
        assert!(matches!(
            args.check(),
            Err(ConfigError::RegistryWithoutSwarm)
        ));
        let args = serve(&["--runtime", "swarm", "--registry-username", "me"]).unwrap();
        assert!(args.check().is_ok());
    }

    #[test]
    fn kernel_access_ports_is_refused_naming_the_flag_and_why_and_the_old_default_still_parses() {
        let args = serve(&["--kernel-access", "ports"]).unwrap();
        let refused = args.check().unwrap_err().to_string();
        assert!(refused.contains("--kernel-access ports"), "{refused}");
        assert!(refused.contains("no ports to publish"), "{refused}");
        for access in ["network", "ipc"] {
            let args = serve(&["--kernel-access", access, "--network", "old-net"]).unwrap();
            assert_eq!(args.docker.kernel_access, KernelAccess::Ipc);
            assert!(args.check().is_ok(), "{access}");
        }
    }

    #[test]
    fn unauthenticated_http_is_refused_off_loopback() {
        let args = serve(&["--transport", "http", "--host", "0.0.0.0"]).unwrap();
        assert!(matches!(
            args.http.authentication(),
            Err(ConfigError::Unauthenticated { .. })
        ));
        for host in ["127.0.0.1", "localhost", "[::1]"] {
            let args = serve(&["--transport", "http", "--host", host]).unwrap();
            assert!(args.http.authentication().is_ok(), "{host}");
        }
    }
}
