//! The single-host Docker engine, through bollard. Owns the API version negotiation, the kernel
//! container's sandbox (caps, read-only root, dropped capabilities), reading that sandbox back
//! after create, and the reaper that removes containers whose owner went away.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, NetworkCreateRequest, PortBinding,
    ResourcesUlimits,
};
use bollard::query_parameters::LogsOptions;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder,
};
use futures::{Stream, StreamExt};
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    ContainerExit, ContainerUsage, ExecCommand, ExecOutput, JobSpec, KernelContainer,
    KernelEndpoint, KernelSpec, Limits, ManagedContainer, Runtime, RuntimeError, RuntimeHealth,
    labels,
};
use crate::kernel::ChannelPorts;

/// Where a kernel's CA bundle is mounted inside its container.
pub(super) const CA_BUNDLE_IN_CONTAINER: &str = "/etc/ssl/certs/kernelbox-ca-bundle.pem";

/// The command the image's entry point (`tini --`) runs: write the connection file to the
/// container's own tmpfs (ipykernel writes it back, so it cannot be a read-only mount), drop the
/// variable that carried it, and become the kernel.
pub(super) const KERNEL_LAUNCH: &str = "umask 077 && printf '%s' \"$KERNELBOX_CONNECTION\" > /tmp/kernelbox-connection.json \
&& unset KERNELBOX_CONNECTION && exec python3 -c \"$KERNELBOX_BOOTSTRAP\" -f /tmp/kernelbox-connection.json";

/// Starts ipykernel with stdout and stderr that flush whenever a megabyte is buffered: a cell
/// that floods output then sends bounded messages (and waits for each to leave) instead of
/// one message as large as everything it printed.
pub(super) const KERNEL_BOOTSTRAP: &str = r#"import ipykernel.iostream


class ChunkedOutStream(ipykernel.iostream.OutStream):
    chunk = 1 << 20

    def write(self, string):
        written = 0
        for start in range(0, len(string), self.chunk):
            written += super().write(string[start:start + self.chunk]) or 0
            if self._buffer.tell() >= self.chunk:
                self.flush()
        return written


from ipykernel.kernelapp import launch_new_instance

launch_new_instance(outstream_class="__main__.ChunkedOutStream")
"#;

/// The sandbox every container of a session runs in: memory with swap equal to it, CPU quota,
/// pids and open-files limits, all capabilities dropped, no new privileges, read-only root
/// with a small tmpfs `/tmp`.
fn sandbox(limits: &Limits) -> HostConfig {
    HostConfig {
        memory: Some(limits.memory_bytes),
        memory_swap: Some(limits.memory_bytes),
        nano_cpus: Some(limits.nano_cpus),
        pids_limit: Some(limits.pids),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".to_string()),
            soft: Some(limits.open_files),
            hard: Some(limits.open_files),
        }]),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            format!("rw,nosuid,nodev,size={}", limits.tmp_bytes),
        )])),
        ..Default::default()
    }
}

/// How the server reaches kernel ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelAccess {
    /// Dial the container's address on the kernel network; nothing is published.
    Network,
    /// Publish the ports on 127.0.0.1 only and dial those.
    Ports,
}

/// How kernel containers are made on this engine.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Image reference (tag or id) of the kernel image.
    pub image: String,
    /// Recipe hash recorded on every container.
    pub recipe: String,
    /// Distinguishes this server's containers from any other server's on the same engine.
    pub instance: String,
    /// Internal Docker network (no egress; created if missing, with inter-container traffic
    /// off) the kernels join when access is `Network`.
    pub network: String,
    /// Network with egress, for installer jobs and the sessions allowed egress.
    pub egress_network: String,
    pub access: KernelAccess,
    /// `uid:gid` the kernel runs as.
    pub user: String,
    /// Host CA bundle mounted read-only into every kernel and named by its TLS variables.
    pub ca_bundle: Option<PathBuf>,
}

pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    /// The networks by id: the engine allows duplicate names, and a name can be ambiguous.
    network_id: Option<String>,
    egress_network_id: String,
    image_id: String,
    api_version: String,
    reaper: mpsc::UnboundedSender<String>,
}

/// The labels of every container or service this server starts.
pub(super) fn managed_labels(
    instance: &str,
    recipe: &str,
    session_id: &str,
    owner: &str,
    role: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::INSTANCE.to_string(), instance.to_string()),
        (labels::SESSION_ID.to_string(), session_id.to_string()),
        (labels::OWNER.to_string(), owner.to_string()),
        (labels::RECIPE.to_string(), recipe.to_string()),
        (labels::ROLE.to_string(), role.to_string()),
    ])
}

/// The variables that point TLS clients in a kernel at the mounted CA bundle.
pub(super) fn ca_bundle_env() -> impl Iterator<Item = String> {
    [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "PIP_CERT",
        "CURL_CA_BUNDLE",
    ]
    .into_iter()
    .map(|var| format!("{var}={CA_BUNDLE_IN_CONTAINER}"))
}

/// Reads a finished job's stdout and stderr from `logs` (called once per stream) into
/// `result`, each kept to `limit` bytes.
pub(super) async fn collect_job_output<S>(
    result: &mut ExecOutput,
    limit: usize,
    logs: impl Fn(LogsOptions) -> S,
) where
    S: Stream<Item = Result<LogOutput, BollardError>>,
{
    for (stdout, target) in [(true, &mut result.stdout), (false, &mut result.stderr)] {
        let options = LogsOptionsBuilder::new()
            .stdout(stdout)
            .stderr(!stdout)
            .build();
        let mut chunks = std::pin::pin!(logs(options));
        while let Some(Ok(chunk)) = chunks.next().await {
            result.truncated |= !append_bounded(target, &chunk.to_string(), limit);
        }
    }
}

/// The options for the last lines a container or service printed.
pub(super) fn tail_options() -> LogsOptions {
    LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build()
}

/// The text of a log stream.
pub(super) async fn logs_tail<S>(logs: S) -> String
where
    S: Stream<Item = Result<LogOutput, BollardError>>,
{
    let mut chunks = std::pin::pin!(logs);
    let mut text = String::new();
    while let Some(Ok(chunk)) = chunks.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}

/// Appends as much of `text` as fits under `limit` bytes in all, cut at a character
/// boundary; false when some of it did not fit.
pub(super) fn append_bounded(target: &mut String, text: &str, limit: usize) -> bool {
    let room = limit.saturating_sub(target.len());
    let mut cut = room.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    target.push_str(&text[..cut]);
    cut == text.len()
}

/// This host's engine (socket or `DOCKER_HOST`), speaking the newest API version both sides
/// know: bollard's default is newer than many engines.
pub(super) async fn local_engine() -> Result<Docker, BollardError> {
    Docker::connect_with_defaults()?.negotiate_version().await
}

pub(super) fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the engine, negotiates the API version, resolves the kernel image to its id
    /// and makes sure the kernel network exists. The reaper runs on `tasks` until `cancel`.
    pub async fn connect(
        config: DockerConfig,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, RuntimeError> {
        let docker = local_engine()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let version = docker
            .version()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let api_version = docker.client_version().to_string();
        tracing::info!(
            engine = version.version.as_deref().unwrap_or("unknown"),
            engine_api = version.api_version.as_deref().unwrap_or("unknown"),
            negotiated_api = %api_version,
            "connected to the Docker engine"
        );
        let image_id = resolve_image(&docker, &config.image).await?;
        let network_id = match config.access {
            KernelAccess::Network => Some(ensure_network(&docker, &config.network, true).await?),
            KernelAccess::Ports => None,
        };
        let egress_network_id = ensure_network(&docker, &config.egress_network, false).await?;
        let (reaper, reaped) = mpsc::unbounded_channel();
        tasks.spawn(reap(docker.clone(), reaped, cancel));
        Ok(Arc::new(Self {
            docker,
            config,
            network_id,
            egress_network_id,
            image_id,
            api_version,
            reaper,
        }))
    }

    /// The labels of every container this server starts for `session_id`.
    fn labels(&self, session_id: &str, owner: &str, role: &str) -> HashMap<String, String> {
        managed_labels(
            &self.config.instance,
            &self.config.recipe,
            session_id,
            owner,
            role,
        )
    }

    /// The workspace mount, and the CA bundle's mount and variables.
    fn mounts_and_env(&self, workspace: &std::path::Path, env: &mut Vec<String>) -> Vec<String> {
        let mut binds = vec![format!("{}:/workspace:rw", workspace.display())];
        if let Some(bundle) = &self.config.ca_bundle {
            binds.push(format!("{}:{CA_BUNDLE_IN_CONTAINER}:ro", bundle.display()));
            env.extend(ca_bundle_env());
        }
        binds
    }

    fn network_for(&self, egress: bool) -> &str {
        if egress {
            &self.config.egress_network
        } else {
            &self.config.network
        }
    }

    fn container_body(&self, spec: &KernelSpec) -> ContainerCreateBody {
        let ports = ChannelPorts::IN_CONTAINER.all();
        let mut env = vec![
            format!("KERNELBOX_CONNECTION={}", spec.connection_file),
            format!("KERNELBOX_BOOTSTRAP={KERNEL_BOOTSTRAP}"),
            "HOME=/tmp".to_string(),
            "MPLCONFIGDIR=/tmp/.matplotlib".to_string(),
        ];
        env.extend(spec.env.iter().cloned());
        let binds = self.mounts_and_env(&spec.workspace, &mut env);
        let (network_mode, port_bindings) = match self.config.access {
            KernelAccess::Network => {
                let id = if spec.egress {
                    Some(self.egress_network_id.clone())
                } else {
                    self.network_id.clone()
                };
                (id, None)
            }
            KernelAccess::Ports => {
                let bindings = ports
                    .iter()
                    .map(|port| {
                        (
                            format!("{port}/tcp"),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".to_string()),
                                host_port: Some(String::new()),
                            }]),
                        )
                    })
                    .collect();
                (None, Some(bindings))
            }
        };
        let labels = self.labels(&spec.session_id, &spec.owner, "kernel");
        ContainerCreateBody {
            image: Some(self.image_id.clone()),
            cmd: Some(vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                KERNEL_LAUNCH.to_string(),
            ]),
            env: Some(env),
            user: Some(self.config.user.clone()),
            working_dir: Some("/workspace".to_string()),
            labels: Some(labels),
            exposed_ports: Some(ports.iter().map(|p| format!("{p}/tcp")).collect()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode,
                port_bindings,
                ..sandbox(&spec.limits)
            }),
            ..Default::default()
        }
    }

    fn job_body(&self, job: &JobSpec) -> ContainerCreateBody {
        let mut env = vec!["HOME=/tmp".to_string()];
        env.extend(job.env.iter().cloned());
        let binds = self.mounts_and_env(&job.workspace, &mut env);
        let seconds = job.timeout.as_secs_f64().max(0.1);
        let mut cmd = vec![
            "timeout".to_string(),
            "--signal=KILL".to_string(),
            format!("{seconds:.1}"),
        ];
        cmd.extend(job.argv.iter().cloned());
        ContainerCreateBody {
            image: Some(self.image_id.clone()),
            cmd: Some(cmd),
            env: Some(env),
            user: Some(self.config.user.clone()),
            working_dir: Some("/workspace".to_string()),
            labels: Some(self.labels(&job.session_id, &job.owner, "installer")),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(self.egress_network_id.clone()),
                ..sandbox(&job.limits)
            }),
            ..Default::default()
        }
    }

    /// An engine older than our API version may drop fields without a word: read the sandbox
    /// back and refuse a container that lacks any part of it.
    fn verify_sandbox(
        &self,
        session_id: &str,
        limits: &Limits,
        inspect: &ContainerInspectResponse,
    ) -> Result<(), RuntimeError> {
        let host = inspect.host_config.clone().unwrap_or_default();
        let checks: [(&'static str, bool); 7] = [
            ("Memory", host.memory == Some(limits.memory_bytes)),
            ("MemorySwap", host.memory_swap == Some(limits.memory_bytes)),
            ("NanoCpus", host.nano_cpus == Some(limits.nano_cpus)),
            ("PidsLimit", host.pids_limit == Some(limits.pids)),
            ("ReadonlyRootfs", host.readonly_rootfs == Some(true)),
            (
                "CapDrop",
                host.cap_drop
                    .as_ref()
                    .is_some_and(|caps| caps.iter().any(|c| c == "ALL")),
            ),
            (
                "SecurityOpt no-new-privileges",
                host.security_opt
                    .as_ref()
                    .is_some_and(|opts| opts.iter().any(|o| o.starts_with("no-new-privileges"))),
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

    fn endpoint(&self, inspect: &ContainerInspectResponse, egress: bool) -> Option<KernelEndpoint> {
        let settings = inspect.network_settings.as_ref()?;
        match self.config.access {
            KernelAccess::Network => {
                let network = settings.networks.as_ref()?.get(self.network_for(egress))?;
                let ip = network.ip_address.clone().filter(|ip| !ip.is_empty())?;
                Some(KernelEndpoint {
                    host: ip,
                    ports: ChannelPorts::IN_CONTAINER,
                })
            }
            KernelAccess::Ports => {
                let published = settings.ports.as_ref()?;
                let host_port = |port: u16| -> Option<u16> {
                    published
                        .get(&format!("{port}/tcp"))?
                        .as_ref()?
                        .iter()
                        .find_map(|b| b.host_port.as_ref()?.parse().ok())
                };
                let inside = ChannelPorts::IN_CONTAINER;
                Some(KernelEndpoint {
                    host: "127.0.0.1".to_string(),
                    ports: ChannelPorts {
                        shell: host_port(inside.shell)?,
                        iopub: host_port(inside.iopub)?,
                        stdin: host_port(inside.stdin)?,
                        control: host_port(inside.control)?,
                        heartbeat: host_port(inside.heartbeat)?,
                    },
                })
            }
        }
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
        let created = self
            .docker
            .create_container(Some(options), self.container_body(spec))
            .await
            .map_err(|e| match e {
                e if is_not_found(&e) => RuntimeError::ImageMissing {
                    image: self.config.image.clone(),
                    detail: e.to_string(),
                },
                e @ BollardError::DockerResponseServerError { .. } => {
                    Self::container_error("create", spec, e)
                }
                e => RuntimeError::Unreachable(format!(
                    "the Docker engine did not answer while creating a kernel for session {}: {e}",
                    spec.session_id
                )),
            })?;
        // From here on the container is owned: any early return reaps it.
        let placeholder = KernelEndpoint {
            host: String::new(),
            ports: ChannelPorts::IN_CONTAINER,
        };
        let mut container = KernelContainer::new(created.id, placeholder, self.reaper.clone());
        let inspect = self
            .docker
            .inspect_container(&container.id, None)
            .await
            .map_err(|e| Self::container_error("inspect", spec, e))?;
        self.verify_sandbox(&spec.session_id, &spec.limits, &inspect)?;
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(|e| Self::container_error("start", spec, e))?;
        let inspect = self
            .docker
            .inspect_container(&container.id, None)
            .await
            .map_err(|e| Self::container_error("inspect", spec, e))?;
        container.endpoint = self.endpoint(&inspect, spec.egress).ok_or_else(|| {
            Self::container_error(
                "find the address of",
                spec,
                "the engine reported no address for the kernel's ports",
            )
        })?;
        tracing::debug!(
            session_id = %spec.session_id,
            container = %container.id,
            host = %container.endpoint.host,
            "kernel container started"
        );
        Ok(container)
    }

    async fn adopt(
        &self,
        container: String,
        endpoint: KernelEndpoint,
    ) -> Result<KernelContainer, RuntimeError> {
        Ok(KernelContainer::new(
            container,
            endpoint,
            self.reaper.clone(),
        ))
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

    async fn remove_by_id(&self, container: &str) -> Result<(), RuntimeError> {
        remove_container(&self.docker, container).await
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={}", labels::INSTANCE, self.config.instance),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                Some(ManagedContainer {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn exec(
        &self,
        container: &str,
        command: &ExecCommand,
    ) -> Result<ExecOutput, RuntimeError> {
        let engine_error = |action: &'static str| {
            let container = container.to_string();
            move |e: BollardError| RuntimeError::Engine {
                action,
                container,
                detail: e.to_string(),
            }
        };
        // coreutils `timeout` inside the container ends the command: the engine has no way to
        // kill an exec'd process.
        let seconds = command.timeout.as_secs_f64().max(0.1);
        let mut argv = vec![
            "timeout".to_string(),
            "--signal=KILL".to_string(),
            format!("{seconds:.1}"),
        ];
        argv.extend(command.argv.iter().cloned());
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(argv),
                    env: Some(command.env.clone()),
                    working_dir: Some(command.working_dir.clone()),
                    user: Some(self.config.user.clone()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine_error("exec"))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(engine_error("exec"))?;
        let mut result = ExecOutput::default();
        if let StartExecResults::Attached { mut output, .. } = started {
            let limit = command.max_output_bytes;
            let collect = async {
                while let Some(chunk) = output.next().await {
                    let (target, bytes) = match chunk {
                        Ok(bollard::container::LogOutput::StdOut { message }) => {
                            (&mut result.stdout, message)
                        }
                        Ok(bollard::container::LogOutput::StdErr { message }) => {
                            (&mut result.stderr, message)
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    };
                    let room = limit.saturating_sub(target.len());
                    if bytes.len() > room {
                        result.truncated = true;
                    }
                    target.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(room)]));
                }
            };
            // The in-container timeout ends the command; this bounds a stuck engine.
            let _ = tokio::time::timeout(
                command.timeout + std::time::Duration::from_secs(10),
                collect,
            )
            .await;
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(engine_error("inspect exec"))?;
        result.exit_code = inspect.exit_code;
        // `timeout --signal=KILL` makes a timed-out command exit with 137.
        result.timed_out = inspect.exit_code == Some(137);
        Ok(result)
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
        let created = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                self.job_body(job),
            )
            .await
            .map_err(job_error("create the installer for"))?;
        let placeholder = KernelEndpoint {
            host: String::new(),
            ports: ChannelPorts::IN_CONTAINER,
        };
        let container = KernelContainer::new(created.id, placeholder, self.reaper.clone());
        let inspect = self
            .docker
            .inspect_container(&container.id, None)
            .await
            .map_err(job_error("inspect the installer of"))?;
        self.verify_sandbox(&job.session_id, &job.limits, &inspect)?;
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(job_error("start the installer of"))?;
        let mut waiting = self.docker.wait_container(&container.id, None);
        let bound = job.timeout + std::time::Duration::from_secs(30);
        let exit_code = match tokio::time::timeout(bound, waiting.next()).await {
            Ok(Some(Ok(response))) => Some(response.status_code),
            Ok(Some(Err(BollardError::DockerContainerWaitError { code, .. }))) => Some(code),
            _ => None,
        };
        let mut result = ExecOutput {
            exit_code,
            timed_out: exit_code == Some(137) || exit_code.is_none(),
            ..ExecOutput::default()
        };
        collect_job_output(&mut result, job.max_output_bytes, |options| {
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

    async fn health(&self) -> RuntimeHealth {
        let version = self.docker.version().await.ok();
        let image_present = self.docker.inspect_image(&self.image_id).await.is_ok();
        RuntimeHealth {
            engine_reachable: version.is_some(),
            engine_version: version.and_then(|v| v.version),
            image_present,
            image: self.config.image.clone(),
        }
    }
}

/// Memory, CPU and process counts of a container on this engine.
pub(super) async fn container_usage(
    docker: &Docker,
    container: &str,
) -> Result<ContainerUsage, RuntimeError> {
    let options = StatsOptionsBuilder::new().stream(false).build();
    let stats = docker
        .stats(container, Some(options))
        .next()
        .await
        .ok_or_else(|| RuntimeError::Engine {
            action: "stats",
            container: container.to_string(),
            detail: "the engine sent no statistics".to_string(),
        })?
        .map_err(|e| RuntimeError::Engine {
            action: "stats",
            container: container.to_string(),
            detail: e.to_string(),
        })?;
    let memory = stats.memory_stats.unwrap_or_default();
    let pids = stats.pids_stats.unwrap_or_default();
    let cpu_percent = match (stats.cpu_stats, stats.precpu_stats) {
        (Some(now), Some(before)) => {
            let total = |stats: &bollard::models::ContainerCpuStats| {
                stats
                    .cpu_usage
                    .as_ref()
                    .and_then(|u| u.total_usage)
                    .unwrap_or(0)
            };
            let used = total(&now).saturating_sub(total(&before));
            let system = now
                .system_cpu_usage
                .unwrap_or(0)
                .saturating_sub(before.system_cpu_usage.unwrap_or(0));
            let cpus = now.online_cpus.unwrap_or(1).max(1) as f64;
            (system > 0).then(|| used as f64 / system as f64 * cpus * 100.0)
        }
        _ => None,
    };
    Ok(ContainerUsage {
        memory_bytes: memory.usage,
        memory_limit_bytes: memory.limit,
        cpu_percent,
        pids: pids.current,
        pids_limit: pids.limit,
    })
}

pub(super) async fn resolve_image(docker: &Docker, image: &str) -> Result<String, RuntimeError> {
    match docker.inspect_image(image).await {
        Ok(inspect) => inspect.id.ok_or_else(|| RuntimeError::ImageMissing {
            image: image.to_string(),
            detail: "the engine reported no image id".to_string(),
        }),
        Err(e) if is_not_found(&e) => Err(RuntimeError::ImageMissing {
            image: image.to_string(),
            detail: "build it with `kernelbox image build`".to_string(),
        }),
        Err(e) => Err(RuntimeError::Unreachable(e.to_string())),
    }
}

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

/// Makes sure `name` exists and returns its id. An `internal` network must have no egress:
/// one that exists and allows it is refused rather than used. A network this server creates
/// has traffic between its containers turned off, so kernels cannot reach each other (the
/// host still reaches all of them). Servers starting together may each create one; all keep
/// the oldest and remove their own duplicate.
async fn ensure_network(
    docker: &Docker,
    name: &str,
    internal: bool,
) -> Result<String, RuntimeError> {
    let check = |network: &bollard::models::Network| -> Result<String, RuntimeError> {
        if internal && network.internal != Some(true) {
            return Err(RuntimeError::NetworkPolicy {
                network: name.to_string(),
                detail: "it exists and allows egress, but kernels without egress need an internal network; remove it or name another with --network".to_string(),
            });
        }
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
        internal: Some(internal),
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
        tracing::info!(network = name, internal, "created a kernel network");
    }
    check(oldest)
}

async fn remove_container(docker: &Docker, container: &str) -> Result<(), RuntimeError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
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
    }
}

/// Removes containers whose owning handle was dropped. On cancel it removes what is queued
/// and stops.
async fn reap(docker: Docker, mut ids: mpsc::UnboundedReceiver<String>, cancel: CancellationToken) {
    loop {
        let id = tokio::select! {
            id = ids.recv() => id,
            _ = cancel.cancelled() => break,
        };
        let Some(id) = id else { return };
        if let Err(error) = remove_container(&docker, &id).await {
            tracing::warn!(%error, "could not reap a kernel container");
        }
    }
    while let Ok(id) = ids.try_recv() {
        if let Err(error) = remove_container(&docker, &id).await {
            tracing::warn!(%error, "could not reap a kernel container");
        }
    }
}
