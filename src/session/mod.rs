//! One session: a kernel container, its client, its workspace and its execution queue, and
//! the public face of all four. Its concerns live beside it: `kernel` (starting, adopting,
//! watching, restarting and closing kernels), `run` (a cell end to end, timeout escalation and
//! the status it ends with) and `output` (where long output and displays go). Cells of one
//! session run one at a time, in order; code is sent to the kernel exactly once and never
//! re-run. A session knows nothing of other sessions, tenants or the MCP layer.

mod kernel;
mod output;
mod run;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use self::kernel::Kernel;
pub use self::kernel::WarmKernel;
pub use self::run::RunStatus;
use crate::egress::{Allowlist, ListenAt, ProxyScope};
pub use crate::ids::SessionId;
use crate::kernel::KernelError;
use crate::metrics::Metrics;
use crate::records::{KernelRecord, RecordStore, SessionRecord};
use crate::runtime::{
    ContainerUsage, ExecCommand, ExecOutput, JobEgress, JobSpec, KernelEgress, Limits,
    RuntimeError, SharedRuntime,
};
use crate::snippets;
use crate::templates::Template;
use crate::workspace::Workspace;

/// Settings every session of a server shares.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub limits: Limits,
    /// How long a new kernel may take to answer on shell and iopub.
    pub ready_timeout: Duration,
    /// How long each timeout step (interrupt request, then SIGINT) waits before the next.
    pub interrupt_grace: Duration,
    /// How often the heartbeat is checked.
    pub heartbeat_interval: Duration,
    /// Bytes of each output stream a result holds; the rest goes to a file in `outputs/`.
    pub max_output_bytes: usize,
    /// Where the server makes a directory for each installer's egress proxy socket.
    pub egress_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the kernel of session {session_id} did not start: {detail}")]
    KernelStart { session_id: String, detail: String },
    #[error("talking to the kernel of session {session_id} failed: {source}")]
    Kernel {
        session_id: String,
        #[source]
        source: Box<KernelError>,
    },
    #[error("session {0} is being deleted")]
    Closed(String),
    #[error("kernelbox's helper code failed in session {session_id}: {detail}")]
    Helper { session_id: String, detail: String },
    #[error(
        "this works in Python kernels only, and session {session_id} runs template {template:?} \
         (language {language}); run it in a session of a Python template"
    )]
    NotPython {
        session_id: String,
        template: String,
        language: String,
    },
    #[error("could not start the installer's egress proxy for session {session_id}: {detail}")]
    InstallerProxy { session_id: String, detail: String },
}

/// How long kernelbox's own requests to a kernel (completion, helpers) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Output kept per stream of a command run in a container.
const EXEC_OUTPUT_LIMIT: usize = 4 << 20;

/// What `restart_kernel` did with the variables.
#[derive(Debug, Default)]
pub struct RestartReport {
    pub preserved_vars: usize,
    pub skipped_vars: Vec<String>,
    pub restored_vars: usize,
    pub note: Option<String>,
}

/// Counters shown by `list_sessions`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionStats {
    pub executions: u64,
    pub execution_count: usize,
    pub total_execution_seconds: f64,
    pub last_execution_seconds: Option<f64>,
    pub kernel_starts: u64,
}

/// What a session is created with.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The caps of its kernels: the server's, lowered by the tenant's quota.
    pub limits: Limits,
    pub egress: bool,
    /// What the kernel may reach through the egress proxy (empty: nothing).
    pub egress_allow: Allowlist,
    /// Kept on disk for the next start (a warm-pool placeholder is not).
    pub persistent: bool,
    /// The template's name and the template its kernels are made from.
    pub template: (String, Arc<Template>),
}

/// What every session of a server shares: the engine, the settings, the task tracker and the
/// server's shutdown token.
#[derive(Clone)]
pub struct SessionServices {
    pub runtime: SharedRuntime,
    pub settings: Arc<SessionSettings>,
    pub tasks: TaskTracker,
    /// Cancelled when the server shuts down; kernel clients' socket readers stop with it.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub records: RecordStore,
    /// Turns to start a kernel: no more start at once than it holds permits.
    pub starts: Arc<tokio::sync::Semaphore>,
}

pub struct Session {
    pub id: SessionId,
    pub owner: String,
    pub description: Option<String>,
    /// The kernel may reach the network beyond the server.
    pub egress: bool,
    /// What the kernel may reach through the egress proxy (empty: nothing).
    pub egress_allow: Arc<Allowlist>,
    persistent: bool,
    pub created_at: DateTime<Utc>,
    /// The name of the template its kernels are made from.
    pub template: String,
    kind: Arc<Template>,
    workspace: Workspace,
    /// The caps of this session's kernels: the server's, lowered by the tenant's quota.
    limits: Limits,
    runtime: SharedRuntime,
    settings: Arc<SessionSettings>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    records: RecordStore,
    starts: Arc<tokio::sync::Semaphore>,
    queue: tokio::sync::Mutex<()>,
    /// Notebook actions of this session, one at a time (cell numbering, index updates).
    pub notebook_turn: tokio::sync::Mutex<()>,
    kernel: tokio::sync::Mutex<Option<Arc<Kernel>>>,
    interrupt_requested: AtomicBool,
    /// Woken by the quota watchdog when the workspace is past its quota while a cell runs.
    quota_crossed: tokio::sync::Notify,
    last_activity: Mutex<Instant>,
    stats: Mutex<SessionStats>,
    closed: CancellationToken,
}

impl Session {
    pub fn new(
        id: SessionId,
        owner: String,
        options: SessionOptions,
        workspace: Workspace,
        services: SessionServices,
        closed: CancellationToken,
    ) -> Self {
        Self {
            id,
            owner,
            description: options.description,
            egress: options.egress,
            egress_allow: Arc::new(options.egress_allow),
            persistent: options.persistent,
            template: options.template.0,
            kind: options.template.1,
            created_at: options.created_at,
            limits: options.limits,
            workspace,
            runtime: services.runtime,
            settings: services.settings,
            tasks: services.tasks,
            shutdown: services.shutdown,
            metrics: services.metrics,
            records: services.records,
            starts: services.starts,
            queue: tokio::sync::Mutex::new(()),
            notebook_turn: tokio::sync::Mutex::new(()),
            kernel: tokio::sync::Mutex::new(None),
            interrupt_requested: AtomicBool::new(false),
            quota_crossed: tokio::sync::Notify::new(),
            last_activity: Mutex::new(Instant::now()),
            stats: Mutex::new(SessionStats::default()),
            closed,
        }
    }

    /// What this session's kernels may reach beyond the server.
    pub fn kernel_egress(&self) -> KernelEgress {
        if self.egress {
            KernelEgress::Full
        } else if self.egress_allow.is_empty() {
            KernelEgress::None
        } else {
            KernelEgress::Proxy
        }
    }

    /// The language its kernels speak.
    pub fn language(&self) -> &str {
        &self.kind.language
    }

    /// Refuses kernelbox's Python helpers (variables, saved state, installs, datasets) for a
    /// session whose template is not Python.
    pub fn require_python(&self) -> Result<(), SessionError> {
        if self.kind.is_python() {
            return Ok(());
        }
        Err(SessionError::NotPython {
            session_id: self.id.to_string(),
            template: self.template.clone(),
            language: self.kind.language.clone(),
        })
    }

    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    pub fn stats(&self) -> SessionStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Seconds since the current kernel started, if one runs.
    pub async fn kernel_uptime(&self) -> Option<f64> {
        let kernel = self.kernel.lock().await;
        kernel
            .as_ref()
            .filter(|k| !k.death.is_cancelled())
            .map(|k| k.started_at.elapsed().as_secs_f64())
    }

    /// The watchdog found the workspace growing past its quota, to `used` bytes. A running
    /// cell is stopped (the timeout's ladder: interrupt, SIGINT, restart); with no cell
    /// running something writes in the background, and the kernel is stopped (the next call
    /// starts a fresh one).
    pub async fn quota_crossed(&self, used: u64) {
        let quota = self.workspace.quota_bytes();
        match self.queue.try_lock() {
            Err(_) => self.quota_crossed.notify_waiters(),
            Ok(_turn) => {
                tracing::warn!(session_id = %self.id, used, quota, "the workspace grew past its quota with no cell running; stopping the kernel");
                self.metrics.kernel_deaths.increment("quota_exceeded");
                self.retire_kernel(&format!(
                    "the workspace grew past its quota of {quota} bytes ({used} held) with no cell running, so the watchdog stopped the kernel"
                ))
                .await;
            }
        }
    }

    /// Whether a cell is running now.
    pub fn is_busy(&self) -> bool {
        self.queue.try_lock().is_err()
    }

    /// Time since the session was created or last ran a cell.
    pub fn idle_for(&self) -> Duration {
        self.last_activity.lock().expect("activity lock").elapsed()
    }

    fn touch(&self) {
        *self.last_activity.lock().expect("activity lock") = Instant::now();
    }

    /// This session as it is kept on disk, with `kernel` as its running kernel.
    pub fn record(&self, kernel: Option<KernelRecord>) -> SessionRecord {
        SessionRecord {
            session_id: self.id.to_string(),
            owner: self.owner.clone(),
            description: self.description.clone(),
            egress: self.egress,
            egress_allow: (*self.egress_allow).clone(),
            created_at: self.created_at.timestamp(),
            limits: self.limits.clone(),
            template: self.template.clone(),
            kernel,
        }
    }

    /// Keeps the record on disk in step; a failure is logged: the session goes on.
    pub fn save_record(&self, kernel: Option<KernelRecord>) {
        if !self.persistent {
            return;
        }
        if let Err(error) = self.records.save(&self.record(kernel)) {
            tracing::warn!(session_id = %self.id, %error, "could not save the session record");
        }
    }

    /// The user's variables: names, types and short reprs.
    pub async fn variables(&self) -> Result<Vec<snippets::Variable>, SessionError> {
        let listed = self
            .run_helper(&snippets::list_variables(), HELPER_TIMEOUT)
            .await?;
        listed.parse().map_err(|detail| SessionError::Helper {
            session_id: self.id.to_string(),
            detail,
        })
    }

    /// `complete_request` to the kernel.
    pub async fn complete(
        &self,
        code: &str,
        cursor_pos: usize,
    ) -> Result<serde_json::Value, SessionError> {
        let kernel = self.current_kernel().await?;
        kernel
            .client
            .complete(code, cursor_pos, HELPER_TIMEOUT)
            .await
            .map_err(|source| self.kernel_error(source))
    }

    /// `inspect_request` to the kernel.
    pub async fn inspect(
        &self,
        code: &str,
        cursor_pos: usize,
        detail_level: usize,
    ) -> Result<serde_json::Value, SessionError> {
        let kernel = self.current_kernel().await?;
        kernel
            .client
            .inspect(code, cursor_pos, detail_level, HELPER_TIMEOUT)
            .await
            .map_err(|source| self.kernel_error(source))
    }

    /// How long the kernel takes to answer `kernel_info_request`, if it does within `timeout`.
    pub async fn responsiveness(
        &self,
        timeout: Duration,
    ) -> Result<Option<Duration>, SessionError> {
        let kernel = self.current_kernel().await?;
        Ok(kernel.client.kernel_info(timeout).await.ok())
    }

    /// The container's resource use, if a kernel runs.
    pub async fn usage(&self) -> Option<Result<ContainerUsage, SessionError>> {
        let kernel = self.kernel.lock().await.clone()?;
        if kernel.death.is_cancelled() {
            return None;
        }
        Some(
            self.runtime
                .usage(&kernel.container_id)
                .await
                .map_err(Into::into),
        )
    }

    /// The caps every kernel of this session runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs a command in the session's container (starting a kernel if none runs), in
    /// `/workspace`, as the kernel's user, with the kernel's `PYTHONPATH`; `stop` kills it
    /// and what it started.
    pub async fn exec(
        &self,
        argv: Vec<String>,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<ExecOutput, SessionError> {
        let kernel = self.current_kernel().await?;
        let command = ExecCommand {
            argv,
            working_dir: crate::workspace::IN_KERNEL.to_string(),
            env: vec![
                format!("PYTHONPATH={}", snippets::PACKAGES_DIR),
                "HOME=/tmp".to_string(),
            ],
            timeout,
            max_output_bytes: EXEC_OUTPUT_LIMIT,
            stop: stop.clone(),
        };
        Ok(self.runtime.exec(&kernel.container_id, &command).await?)
    }

    /// Runs pip (`argv`) in a short-lived installer container beside the kernel (same image,
    /// same caps, this workspace, but with egress: the kernel itself needs none), then lets
    /// the running kernel see what it installed. `stop` ends the installer.
    pub async fn install(
        &self,
        argv: Vec<String>,
        index: &Allowlist,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<ExecOutput, SessionError> {
        self.require_python()?;
        self.current_kernel().await?;
        // Where the runtime can, the installer has no network but a proxy to the index.
        let proxy = if self.runtime.on_server_host() {
            Some(self.installer_proxy(index).await?)
        } else {
            None
        };
        let egress = match &proxy {
            Some((dir, _)) => JobEgress::Proxy {
                socket_dir: dir.path().to_path_buf(),
            },
            None => JobEgress::Network,
        };
        let job = JobSpec {
            session_id: self.id.to_string(),
            owner: self.owner.clone(),
            workspace: self.workspace.root().to_path_buf(),
            argv,
            env: vec![format!("PYTHONPATH={}", snippets::PACKAGES_DIR)],
            limits: self.limits.clone(),
            timeout,
            max_output_bytes: EXEC_OUTPUT_LIMIT,
            egress,
            image: self.kind.image.clone(),
            stop: stop.clone(),
        };
        let output = self.runtime.run_job(&job).await;
        drop(proxy);
        let output = output?;
        if output.exit_code == Some(0) {
            self.run_helper(&snippets::refresh_imports(), HELPER_TIMEOUT)
                .await?
                .parse::<serde_json::Value>()
                .map_err(|detail| SessionError::Helper {
                    session_id: self.id.to_string(),
                    detail,
                })?;
        }
        Ok(output)
    }

    /// A directory of its own with the installer's egress proxy listening in it, allowing
    /// `index`; the proxy stops and the directory goes when both are dropped.
    async fn installer_proxy(
        &self,
        index: &Allowlist,
    ) -> Result<(tempfile::TempDir, DropGuard), SessionError> {
        let failed = |detail: String| SessionError::InstallerProxy {
            session_id: self.id.to_string(),
            detail,
        };
        std::fs::create_dir_all(&self.settings.egress_dir)
            .map_err(|e| failed(format!("{}: {e}", self.settings.egress_dir.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("installer-")
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir_in(&self.settings.egress_dir)
            .map_err(|e| failed(e.to_string()))?;
        let stop = self.shutdown.child_token();
        let scope = ProxyScope {
            session_id: self.id.to_string(),
            tenant: self.owner.clone(),
            allowlist: Arc::new(index.clone()),
            names_resolve_anywhere: true,
        };
        crate::egress::serve(
            &ListenAt::Unix(JobEgress::socket_in(dir.path())),
            scope,
            self.metrics.clone(),
            &self.tasks,
            stop.clone(),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        Ok((dir, stop.drop_guard()))
    }

    fn kernel_error(&self, source: KernelError) -> SessionError {
        SessionError::Kernel {
            session_id: self.id.to_string(),
            source: Box::new(source),
        }
    }

    /// Interrupts the running cell, if any. Returns whether a cell was running.
    pub async fn interrupt(&self) -> Result<bool, SessionError> {
        let busy = self.is_busy();
        let kernel = self.current_kernel().await?;
        if busy {
            self.interrupt_requested.store(true, Ordering::SeqCst);
        }
        kernel
            .client
            .interrupt()
            .await
            .map_err(|source| SessionError::Kernel {
                session_id: self.id.to_string(),
                source: Box::new(source),
            })?;
        Ok(busy)
    }
}
