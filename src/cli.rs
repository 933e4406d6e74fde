//! Command-line flags (every one also an environment variable) and their parsing. Owns no
//! behaviour: `main` turns these into the server's parts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::runtime::{KernelAccess, Repository};
use crate::workspace::KernelUser;

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
    /// Build the kernel image (skipped when present) and the server image for Compose.
    Build {
        /// Build only the kernel image.
        #[arg(long)]
        kernel_only: bool,
    },
    /// Print the kernel image tag of this recipe.
    Name,
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

#[derive(Debug, Args)]
pub struct ServeArgs {
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
    /// Container engine for kernels: one Docker host, or a Docker Swarm.
    #[arg(long, env = "KERNELBOX_RUNTIME", value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,
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
    /// Kernel image: a tag or id on this engine, or with `--runtime swarm` a digest reference
    /// (`HOST/PATH@sha256:…`, as `kernelbox image push` prints) that nodes pull. Default: this
    /// recipe's `kernelbox-kernel:<hash>`.
    #[arg(long, env = "KERNELBOX_IMAGE")]
    pub image: Option<String>,
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
    /// Do not build the kernel image when it is missing; fail instead.
    #[arg(long, env = "KERNELBOX_NO_BUILD")]
    pub no_build: bool,
    /// Where workspaces live. In a container it must have the same path as on the host.
    #[arg(long, env = "KERNELBOX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Internal Docker network (no egress) the kernels join; created when missing, with
    /// traffic between its containers off.
    #[arg(long, env = "KERNELBOX_NETWORK", default_value = "kernelbox-internal")]
    pub network: String,
    /// Network with egress, for the package installer and sessions allowed egress.
    #[arg(
        long,
        env = "KERNELBOX_EGRESS_NETWORK",
        default_value = "kernelbox-egress"
    )]
    pub egress_network: String,
    /// Let sessions be created with egress (`create_session` with `egress: true`; a tenant's
    /// token must allow it too).
    #[arg(long, env = "KERNELBOX_ALLOW_EGRESS")]
    pub allow_egress: bool,
    /// How the server reaches kernel ports: by container address on the network, or by ports
    /// published on 127.0.0.1.
    #[arg(long, env = "KERNELBOX_KERNEL_ACCESS", value_enum, default_value_t = KernelAccess::Network)]
    pub kernel_access: KernelAccess,
    /// uid:gid the kernels run as.
    #[arg(long, env = "KERNELBOX_KERNEL_USER", default_value = "1000:1000")]
    pub kernel_user: KernelUser,
    /// Memory per kernel (swap is set equal, so there is none): 512m, 1g, ...
    #[arg(long, env = "KERNELBOX_MEMORY", default_value = "1g", value_parser = parse_bytes)]
    pub memory: i64,
    /// CPUs per kernel.
    #[arg(long, env = "KERNELBOX_CPUS", default_value_t = 1.0, value_parser = parse_cpus)]
    pub cpus: f64,
    /// Processes per kernel.
    #[arg(long, env = "KERNELBOX_PIDS_LIMIT", default_value_t = 256, value_parser = clap::value_parser!(i64).range(16..=65536))]
    pub pids_limit: i64,
    /// Open files per kernel.
    #[arg(long, env = "KERNELBOX_OPEN_FILES", default_value_t = 1024, value_parser = clap::value_parser!(i64).range(64..=1048576))]
    pub open_files: i64,
    /// Size of each kernel's /tmp (tmpfs).
    #[arg(long, env = "KERNELBOX_TMP_SIZE", default_value = "256m", value_parser = parse_bytes)]
    pub tmp_size: i64,
    /// Seconds a cell may run when the call names no timeout.
    #[arg(long, env = "KERNELBOX_DEFAULT_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub default_timeout: f64,
    /// Largest timeout a call may ask for, in seconds.
    #[arg(long, env = "KERNELBOX_MAX_TIMEOUT", default_value_t = 600.0, value_parser = parse_seconds)]
    pub max_timeout: f64,
    /// Largest `code` accepted, in bytes.
    #[arg(long, env = "KERNELBOX_MAX_CODE_BYTES", default_value_t = 1 << 20)]
    pub max_code_bytes: usize,
    /// Output kept per stream in one result; the rest is written to a file in `outputs/`.
    #[arg(long, env = "KERNELBOX_MAX_OUTPUT_BYTES", default_value = "1m", value_parser = parse_bytes)]
    pub max_output_bytes: i64,
    /// What one session's workspace may hold: the server's own writes past it are refused,
    /// and health reports the usage (kernel code writes through its mount regardless).
    #[arg(long, env = "KERNELBOX_WORKSPACE_QUOTA", default_value = "2g", value_parser = parse_bytes)]
    pub workspace_quota: i64,
    /// Largest file `read_file` returns.
    #[arg(long, env = "KERNELBOX_MAX_READ_BYTES", default_value = "10m", value_parser = parse_bytes)]
    pub max_read_bytes: i64,
    /// Largest file `write_file`, `save_script` and uploads may write.
    #[arg(long, env = "KERNELBOX_MAX_WRITE_BYTES", default_value = "100m", value_parser = parse_bytes)]
    pub max_write_bytes: i64,
    /// Kernels kept started ahead of demand: `create_session` takes one (no container start
    /// to wait for) and a replacement starts behind it. Each holds memory while it waits.
    #[arg(long, env = "KERNELBOX_POOL_SIZE", default_value_t = 0, value_parser = parse_pool_size)]
    pub pool_size: usize,
    /// Seconds without a cell after which a session is ended (its workspace is kept); 0 keeps
    /// idle sessions.
    #[arg(long, env = "KERNELBOX_IDLE_TIMEOUT", default_value_t = 3600.0, value_parser = parse_optional_seconds)]
    pub idle_timeout: f64,
    /// Seconds after which a session is ended whatever it does; 0 for no limit.
    #[arg(long, env = "KERNELBOX_MAX_LIFETIME", default_value_t = 0.0, value_parser = parse_optional_seconds)]
    pub max_lifetime: f64,
    /// Seconds the workspace of an ended session is kept before it is removed; 0 keeps it.
    #[arg(long, env = "KERNELBOX_WORKSPACE_RETENTION", default_value_t = 604800.0, value_parser = parse_optional_seconds)]
    pub workspace_retention: f64,
    /// Most sessions this server holds at once.
    #[arg(long, env = "KERNELBOX_MAX_SESSIONS", default_value_t = 64)]
    pub max_sessions: usize,
    /// On SIGTERM or SIGINT, end every session (kernels removed) instead of leaving them
    /// running for the next start to adopt.
    #[arg(long, env = "KERNELBOX_STOP_SESSIONS_ON_EXIT")]
    pub stop_sessions_on_exit: bool,
    /// Seconds running cells get to finish after SIGTERM before the server exits.
    #[arg(long, env = "KERNELBOX_SHUTDOWN_GRACE", default_value_t = 30.0, value_parser = parse_seconds)]
    pub shutdown_grace: f64,
    /// Seconds a new kernel may take to become ready.
    #[arg(long, env = "KERNELBOX_READY_TIMEOUT", default_value_t = 60.0, value_parser = parse_seconds)]
    pub ready_timeout: f64,
    /// Seconds each timeout step (interrupt request, then SIGINT) waits before the next one.
    #[arg(long, env = "KERNELBOX_INTERRUPT_GRACE", default_value_t = 2.0, value_parser = parse_seconds)]
    pub interrupt_grace: f64,
    /// Package index `install_dependencies` uses instead of PyPI (a mirror, for air-gapped
    /// hosts).
    #[arg(long, env = "KERNELBOX_PIP_INDEX_URL")]
    pub pip_index_url: Option<String>,
    /// Host pip trusts without TLS (an HTTP mirror).
    #[arg(long, env = "KERNELBOX_PIP_TRUSTED_HOST")]
    pub pip_trusted_host: Option<String>,
    /// Seconds `install_dependencies` may take.
    #[arg(long, env = "KERNELBOX_INSTALL_TIMEOUT", default_value_t = 300.0, value_parser = parse_seconds)]
    pub install_timeout: f64,
    /// CA bundle (PEM) given to every kernel, for TLS through an intercepting proxy.
    #[arg(long, env = "KERNELBOX_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
}

/// Parses a size such as `512m`, `1g`, `1048576` into bytes.
pub fn parse_bytes(value: &str) -> Result<i64, String> {
    let lower = value.trim().to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => trimmed.split_at(i),
        None => (trimmed, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("expected a size such as 512m or 2g, got {value:?}")),
    };
    let number: i64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 512m or 2g, got {value:?}"))?;
    number
        .checked_mul(1 << shift)
        .filter(|bytes| *bytes >= 1 << 20)
        .ok_or_else(|| format!("size {value:?} is out of range (at least 1m)"))
}

fn parse_repository(value: &str) -> Result<Repository, String> {
    Repository::parse(value).map_err(|e| e.to_string())
}

/// Seconds where 0 means "no limit".
fn parse_optional_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.0..=31_536_000.0).contains(&seconds) => {
            Ok(seconds)
        }
        _ => Err(format!(
            "expected seconds between 0 (no limit) and 31536000, got {value:?}"
        )),
    }
}

fn parse_pool_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(size) if size <= 256 => Ok(size),
        _ => Err(format!("expected a pool size from 0 to 256, got {value:?}")),
    }
}

fn parse_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 => Ok(seconds),
        _ => Err(format!(
            "expected seconds between 0 and 86400, got {value:?}"
        )),
    }
}

fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && (0.01..=512.0).contains(&cpus) => Ok(cpus),
        _ => Err(format!(
            "expected a CPU count between 0.01 and 512, got {value:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2097152"), Ok(2 << 20));
        assert!(parse_bytes("1k").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999g").is_err());
    }

    #[test]
    fn every_serve_flag_has_an_environment_variable() {
        use clap::CommandFactory;
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
    fn timeouts_and_cpus_are_bounded() {
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("nan").is_err());
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        assert!(parse_cpus("0").is_err());
        assert_eq!(parse_cpus("1.5"), Ok(1.5));
    }
}
