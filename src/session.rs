//! One session: a kernel container, its client, its workspace and its execution queue. Owns
//! running a cell end to end (queueing, output collection, timeout escalation, saving plots),
//! restarts, and noticing a dead kernel. Cells of one session run one at a time, in order; code
//! is sent to the kernel exactly once and never re-run.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kernel::{
    ExecutionOutput, KernelClient, KernelConnection, KernelError, OutputEvent, OutputStream,
};
use crate::metrics::Metrics;
use crate::records::{KernelRecord, RecordStore, SessionRecord};
use crate::runtime::{
    ContainerExit, ContainerUsage, ExecCommand, ExecOutput, JobSpec, KernelContainer,
    KernelEndpoint, KernelSpec, Limits, RuntimeError, SharedRuntime,
};
use crate::snippets;
use crate::workspace::Workspace;

/// Whether `value` is 1 to 64 of `[A-Za-z0-9_-]`: the rule for session ids, notebook ids and
/// tenant names, all of which become file names.
pub fn is_plain_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A validated session id: 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionId(String);

impl SessionId {
    pub const DEFAULT: &'static str = "default";
    pub const RULE: &'static str = "1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'";

    pub fn parse(value: &str) -> Result<Self, String> {
        if is_plain_name(value) {
            Ok(Self(value.to_string()))
        } else {
            let shown: String = value.chars().take(80).collect();
            Err(format!(
                "invalid session_id {shown:?}: a session id is {}",
                Self::RULE
            ))
        }
    }

    pub fn default_id() -> Self {
        Self(Self::DEFAULT.to_string())
    }

    pub fn generate() -> Self {
        Self(format!(
            "s-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    Error,
    Timeout,
    Interrupted,
    KernelDied,
}

/// Everything a finished cell produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub output: ExecutionOutput,
    pub execution_count: Option<usize>,
    /// Workspace-relative paths of saved display outputs (PNG, SVG, JSON).
    pub outputs: Vec<String>,
    /// Base64 PNGs the cell displayed, to return inline.
    pub images: Vec<String>,
    pub new_files: Vec<String>,
    pub execution_time: Duration,
    /// What happened to the kernel beyond the cell itself (restarted, died and why), and
    /// where output past the cap went.
    pub kernel_note: Option<String>,
    /// Output went past the in-memory cap; `output_files` hold all of it.
    pub truncated: bool,
    /// Workspace-relative files with the full stdout and stderr, when they were too long.
    pub output_files: Vec<String>,
}

/// How one execute request ended.
struct Executed {
    status: RunStatus,
    output: ExecutionOutput,
    kernel_note: Option<String>,
    output_files: Vec<String>,
}

/// Files under `outputs/` that receive the streams past the in-memory cap, each holding its
/// stream from the first byte.
#[derive(Default)]
struct Spills {
    stdout: Option<Spill>,
    stderr: Option<Spill>,
    id: Option<uuid::Uuid>,
}

struct Spill {
    path: String,
    file: Option<std::fs::File>,
}

impl Spills {
    /// Writes what did not fit in memory to the stream's file and says what to stream to the
    /// client: the part that fit, and once per stream a notice where the rest goes.
    fn take(
        &mut self,
        event: OutputEvent,
        output: &ExecutionOutput,
        workspace: &Workspace,
    ) -> Vec<OutputEvent> {
        let OutputEvent::Text { stream, text, kept } = event else {
            return vec![event];
        };
        let mut forward = Vec::new();
        if kept > 0 {
            forward.push(OutputEvent::Text {
                stream,
                text: text[..kept].to_string(),
                kept,
            });
        }
        if kept == text.len() {
            return forward;
        }
        let id = *self.id.get_or_insert_with(uuid::Uuid::new_v4);
        let slot = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        if slot.is_none() {
            let name = match stream {
                OutputStream::Stdout => format!("{id}-stdout.txt"),
                OutputStream::Stderr => format!("{id}-stderr.txt"),
            };
            let kept_so_far = match stream {
                OutputStream::Stdout => &output.stdout,
                OutputStream::Stderr => &output.stderr,
            };
            let spill = match workspace.create_output(&name) {
                Ok((path, mut file)) => {
                    let written = file.write_all(kept_so_far.as_bytes());
                    Spill {
                        path,
                        file: written.ok().map(|()| file),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not create a file for long output");
                    Spill {
                        path: format!("outputs/{name}"),
                        file: None,
                    }
                }
            };
            forward.push(OutputEvent::Truncated {
                stream,
                file: spill.path.clone(),
            });
            *slot = Some(spill);
        }
        if let Some(spill) = slot.as_mut()
            && let Some(file) = spill.file.as_mut()
            && file.write_all(&text.as_bytes()[kept..]).is_err()
        {
            spill.file = None;
        }
        forward
    }

    fn finish(self) -> Vec<String> {
        [self.stdout, self.stderr]
            .into_iter()
            .flatten()
            .filter(|spill| spill.file.is_some())
            .map(|spill| spill.path)
            .collect()
    }
}

/// How long a kernel left by an earlier run may take to answer before it is replaced.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long kernelbox's own requests to a kernel (completion, helpers) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Output kept per stream of a command run in a container.
const EXEC_OUTPUT_LIMIT: usize = 4 << 20;

/// What a helper run printed and how it ended.
#[derive(Debug)]
pub struct HelperOutput {
    pub status: RunStatus,
    pub stdout: String,
    pub error: Option<String>,
    pub kernel_note: Option<String>,
}

impl HelperOutput {
    /// The helper's JSON line, or why there is none.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.status != RunStatus::Ok {
            let note = self.kernel_note.as_deref().unwrap_or("no detail");
            return Err(format!("it ended with status {:?}: {note}", self.status));
        }
        snippets::parse(&self.stdout)
    }
}

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

/// A running kernel: its container, its client and whether it is still alive.
struct Kernel {
    client: KernelClient,
    container_id: String,
    /// How to reach it again, for the session record.
    record: KernelRecord,
    container: tokio::sync::Mutex<Option<KernelContainer>>,
    started_at: Instant,
    death: CancellationToken,
    cause: OnceLock<String>,
}

impl Kernel {
    fn declare_dead(&self, cause: impl Into<String>) {
        let _ = self.cause.set(cause.into());
        self.death.cancel();
    }

    fn death_cause(&self) -> String {
        self.cause
            .get()
            .cloned()
            .unwrap_or_else(|| "the kernel stopped".to_string())
    }
}

/// A ready kernel handed from a warm-pool session to a new one.
pub struct WarmKernel {
    kernel: Arc<Kernel>,
}

impl WarmKernel {
    /// Removes a warm kernel nobody will use.
    pub async fn discard(self, runtime: &SharedRuntime) {
        self.kernel.declare_dead("discarded from the warm pool");
        if let Some(container) = self.kernel.container.lock().await.take()
            && let Err(error) = runtime.remove(container).await
        {
            tracing::warn!(%error, "could not remove a warm kernel");
        }
    }
}

/// What a session is created with.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The caps of its kernels: the server's, lowered by the tenant's quota.
    pub limits: Limits,
    pub egress: bool,
    /// Kept on disk for the next start (a warm-pool placeholder is not).
    pub persistent: bool,
}

/// What every session of a server shares: the engine, the settings, the task tracker.
#[derive(Clone)]
pub struct SessionServices {
    pub runtime: SharedRuntime,
    pub settings: Arc<SessionSettings>,
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    pub records: RecordStore,
}

pub struct Session {
    pub id: SessionId,
    pub owner: String,
    pub description: Option<String>,
    /// The kernel may reach the network beyond the server.
    pub egress: bool,
    persistent: bool,
    pub created_at: DateTime<Utc>,
    workspace: Workspace,
    /// The caps of this session's kernels: the server's, lowered by the tenant's quota.
    limits: Limits,
    runtime: SharedRuntime,
    settings: Arc<SessionSettings>,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    records: RecordStore,
    queue: tokio::sync::Mutex<()>,
    /// Notebook actions of this session, one at a time (cell numbering, index updates).
    pub notebook_turn: tokio::sync::Mutex<()>,
    kernel: tokio::sync::Mutex<Option<Arc<Kernel>>>,
    interrupt_requested: AtomicBool,
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
            persistent: options.persistent,
            created_at: options.created_at,
            limits: options.limits,
            workspace,
            runtime: services.runtime,
            settings: services.settings,
            tasks: services.tasks,
            metrics: services.metrics,
            records: services.records,
            queue: tokio::sync::Mutex::new(()),
            notebook_turn: tokio::sync::Mutex::new(()),
            kernel: tokio::sync::Mutex::new(None),
            interrupt_requested: AtomicBool::new(false),
            last_activity: Mutex::new(Instant::now()),
            stats: Mutex::new(SessionStats::default()),
            closed,
        }
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

    /// Starts the kernel if none runs (or the last one died) and returns it.
    pub async fn ensure_kernel(&self) -> Result<(), SessionError> {
        self.current_kernel().await.map(|_| ())
    }

    async fn current_kernel(&self) -> Result<Arc<Kernel>, SessionError> {
        if self.closed.is_cancelled() {
            return Err(SessionError::Closed(self.id.to_string()));
        }
        let mut slot = self.kernel.lock().await;
        if let Some(kernel) = slot.as_ref()
            && !kernel.death.is_cancelled()
        {
            return Ok(kernel.clone());
        }
        if let Some(dead) = slot.take() {
            self.remove_container(&dead).await;
        }
        let kernel = self.start_kernel().await?;
        *slot = Some(kernel.clone());
        Ok(kernel)
    }

    async fn start_kernel(&self) -> Result<Arc<Kernel>, SessionError> {
        let started = Instant::now();
        let connection = KernelConnection::generate();
        let spec = KernelSpec {
            session_id: self.id.to_string(),
            owner: self.owner.clone(),
            workspace: self.workspace.root().to_path_buf(),
            connection: connection.clone(),
            env: vec![format!("PYTHONPATH={}", snippets::PACKAGES_DIR)],
            egress: self.egress,
            limits: self.limits.clone(),
        };
        let container = self.runtime.start_kernel(&spec).await?;
        let container_started = started.elapsed();
        self.metrics
            .container_start_seconds
            .observe(container_started);
        let ready = connect(
            &connection,
            &container.endpoint,
            self.settings.ready_timeout,
        );
        let outcome = tokio::select! {
            ready = ready => ready.map_err(|e| e.to_string()),
            exit = wait_for_exit(&self.runtime, &container.id) => Err(exit.to_string()),
        };
        let outcome = match outcome {
            Ok(client) => match self.runtime.kernel_ready(&container).await {
                Ok(()) => Ok(client),
                Err(error) => Err(error.to_string()),
            },
            Err(detail) => Err(detail),
        };
        let endpoint = container.endpoint.clone();
        let client = match outcome {
            Ok(client) => client,
            Err(detail) => {
                let logs = self.runtime.logs_tail(&container.id).await;
                let _ = self.runtime.remove(container).await;
                return Err(SessionError::KernelStart {
                    session_id: self.id.to_string(),
                    detail: format!("{detail}; last output of the container: {}", logs.trim()),
                });
            }
        };
        tracing::info!(
            session_id = %self.id,
            container = %container.id,
            container_ms = container_started.as_millis() as u64,
            ready_ms = started.elapsed().as_millis() as u64,
            "kernel ready"
        );
        let record = KernelRecord {
            container_id: container.id.clone(),
            endpoint,
            key: connection.key().to_string(),
        };
        let kernel = Arc::new(Kernel {
            client,
            container_id: container.id.clone(),
            record,
            container: tokio::sync::Mutex::new(Some(container)),
            started_at: Instant::now(),
            death: CancellationToken::new(),
            cause: OnceLock::new(),
        });
        self.stats.lock().expect("stats lock").kernel_starts += 1;
        self.metrics.kernel_ready_seconds.observe(started.elapsed());
        self.metrics
            .kernel_starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.watch(&kernel);
        self.save_record(Some(kernel.record.clone()));
        Ok(kernel)
    }

    /// Gives up this (warm-pool) session's ready kernel for another session to install.
    pub async fn surrender(&self) -> Option<WarmKernel> {
        self.closed.cancel();
        let kernel = self.kernel.lock().await.take()?;
        (!kernel.death.is_cancelled()).then_some(WarmKernel { kernel })
    }

    /// Makes a warm kernel this session's kernel.
    pub async fn install_kernel(&self, warm: WarmKernel) {
        let kernel = warm.kernel;
        self.watch(&kernel);
        self.save_record(Some(kernel.record.clone()));
        *self.kernel.lock().await = Some(kernel);
    }

    fn watch(&self, kernel: &Arc<Kernel>) {
        self.tasks.spawn(watch_kernel(
            kernel.clone(),
            self.runtime.clone(),
            self.metrics.clone(),
            self.settings.heartbeat_interval,
            self.closed.clone(),
        ));
    }

    /// This session as it is kept on disk, with `kernel` as its running kernel.
    pub fn record(&self, kernel: Option<KernelRecord>) -> SessionRecord {
        SessionRecord {
            session_id: self.id.to_string(),
            owner: self.owner.clone(),
            description: self.description.clone(),
            egress: self.egress,
            created_at: self.created_at.timestamp(),
            limits: self.limits.clone(),
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

    /// Takes over the kernel an earlier run of the server left running, if it still answers
    /// (its variables are then intact). On failure the container is removed and the next call
    /// starts a fresh kernel.
    pub async fn adopt(&self, record: &KernelRecord) -> Result<(), String> {
        match self.runtime.exit_status(&record.container_id).await {
            Ok(ContainerExit::Running) => {}
            Ok(exit) => {
                let _ = self.runtime.remove_by_id(&record.container_id).await;
                return Err(format!("its container stopped: {exit}"));
            }
            Err(error) => return Err(error.to_string()),
        }
        let adopted = self
            .runtime
            .adopt(record.container_id.clone(), record.endpoint.clone())
            .await;
        let container = match adopted {
            Ok(container) => container,
            Err(error) => {
                let _ = self.runtime.remove_by_id(&record.container_id).await;
                return Err(error.to_string());
            }
        };
        let connection = KernelConnection::from_key(record.key.clone());
        let ready = connect(&connection, &record.endpoint, ADOPT_TIMEOUT);
        let client = match tokio::time::timeout(ADOPT_TIMEOUT, ready).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                let _ = self.runtime.remove(container).await;
                return Err(error.to_string());
            }
            Err(_) => {
                let _ = self.runtime.remove(container).await;
                return Err(format!("it did not answer within {ADOPT_TIMEOUT:?}"));
            }
        };
        let kernel = Arc::new(Kernel {
            client,
            container_id: record.container_id.clone(),
            record: record.clone(),
            container: tokio::sync::Mutex::new(Some(container)),
            started_at: Instant::now(),
            death: CancellationToken::new(),
            cause: OnceLock::new(),
        });
        self.watch(&kernel);
        *self.kernel.lock().await = Some(kernel);
        Ok(())
    }

    /// Stops watching the kernel and lets go of it without removing it: the next start of
    /// the server adopts it from the record.
    pub async fn detach(&self) {
        self.closed.cancel();
        if let Some(kernel) = self.kernel.lock().await.take()
            && let Some(container) = kernel.container.lock().await.take()
        {
            container.leave_running();
        }
    }

    async fn remove_container(&self, kernel: &Kernel) {
        let container = kernel.container.lock().await.take();
        if let Some(container) = container
            && let Err(error) = self.runtime.remove(container).await
        {
            tracing::warn!(session_id = %self.id, %error, "could not remove a kernel container");
        }
    }

    /// Stops the current kernel (any running cell reports `kernel_died` with `cause`) and
    /// removes its container.
    async fn retire_kernel(&self, cause: &str) {
        let kernel = self.kernel.lock().await.take();
        if let Some(kernel) = kernel {
            kernel.declare_dead(cause);
            self.remove_container(&kernel).await;
            self.save_record(None);
        }
    }

    /// Replaces the kernel with a fresh one; variables are lost, the workspace stays.
    pub async fn restart(&self, preserve_state: bool) -> Result<RestartReport, SessionError> {
        let mut report = RestartReport::default();
        if preserve_state {
            let saved = self
                .run_helper(&snippets::save_state(), HELPER_TIMEOUT)
                .await?;
            match saved.parse::<snippets::SavedState>() {
                Ok(state) => {
                    report.preserved_vars = state.saved;
                    report.skipped_vars = state.skipped;
                }
                Err(error) => report.note = Some(format!("saving state failed: {error}")),
            }
        }
        self.retire_kernel("the kernel was restarted by request")
            .await;
        self.ensure_kernel().await?;
        if preserve_state && report.note.is_none() {
            let restored = self
                .run_helper(&snippets::restore_state(), HELPER_TIMEOUT)
                .await?;
            match restored.parse::<snippets::RestoredState>() {
                Ok(state) => report.restored_vars = state.restored,
                Err(error) => report.note = Some(format!("restoring state failed: {error}")),
            }
        }
        Ok(report)
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
    /// `/workspace`, as the kernel's user, with the kernel's `PYTHONPATH`.
    pub async fn exec(
        &self,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput, SessionError> {
        let kernel = self.current_kernel().await?;
        let command = ExecCommand {
            argv,
            working_dir: "/workspace".to_string(),
            env: vec![
                format!("PYTHONPATH={}", snippets::PACKAGES_DIR),
                "HOME=/tmp".to_string(),
            ],
            timeout,
            max_output_bytes: EXEC_OUTPUT_LIMIT,
        };
        Ok(self.runtime.exec(&kernel.container_id, &command).await?)
    }

    /// Runs pip (`argv`) in a short-lived installer container beside the kernel (same image,
    /// same caps, this workspace, but with egress: the kernel itself needs none), then lets
    /// the running kernel see what it installed.
    pub async fn install(
        &self,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput, SessionError> {
        self.current_kernel().await?;
        let job = JobSpec {
            session_id: self.id.to_string(),
            owner: self.owner.clone(),
            workspace: self.workspace.root().to_path_buf(),
            argv,
            env: vec![format!("PYTHONPATH={}", snippets::PACKAGES_DIR)],
            limits: self.limits.clone(),
            timeout,
            max_output_bytes: EXEC_OUTPUT_LIMIT,
        };
        let output = self.runtime.run_job(&job).await?;
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

    /// Ends the session: the kernel container is removed; the workspace stays on disk.
    pub async fn close(&self) {
        self.closed.cancel();
        self.retire_kernel("the session was deleted").await;
        if let Err(error) = self.records.remove(&self.owner, self.id.as_str()) {
            tracing::warn!(session_id = %self.id, %error, "could not remove the session record");
        }
    }

    /// Runs `code` once, waiting for it at most `timeout`, streaming output events to
    /// `events` as they arrive.
    pub async fn run(
        &self,
        code: &str,
        timeout: Duration,
        events: mpsc::UnboundedSender<OutputEvent>,
    ) -> Result<RunOutcome, SessionError> {
        let _turn = self.queue.lock().await;
        self.touch();
        self.interrupt_requested.store(false, Ordering::SeqCst);
        let before = self.workspace.snapshot();
        let started = Instant::now();
        let Executed {
            status,
            output,
            mut kernel_note,
            output_files,
        } = self.execute(code, false, timeout, events).await?;
        let execution_time = started.elapsed();
        self.touch();
        self.metrics.executions.increment(status.as_str());
        self.metrics.execution_seconds.observe(execution_time);
        let used = self.workspace.usage();
        if used > self.workspace.quota_bytes() {
            let over = format!(
                "the workspace holds {used} bytes, over its quota of {} bytes: the server refuses to write into it until files are deleted",
                self.workspace.quota_bytes()
            );
            kernel_note = Some(match kernel_note {
                Some(note) => format!("{note}; {over}"),
                None => over,
            });
        }
        if !output_files.is_empty() {
            let spilled = format!(
                "output past {} bytes per stream was left out of this result; the full output is in {}",
                self.settings.max_output_bytes,
                output_files.join(" and ")
            );
            kernel_note = Some(match kernel_note {
                Some(note) => format!("{note}; {spilled}"),
                None => spilled,
            });
        }
        let (outputs, images) = self.save_displays(&output);
        let after = self.workspace.snapshot();
        let new_files = after.difference(&before).cloned().collect();
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.executions += 1;
            stats.total_execution_seconds += execution_time.as_secs_f64();
            stats.last_execution_seconds = Some(execution_time.as_secs_f64());
            if let Some(count) = output.execution_count {
                stats.execution_count = count;
            }
        }
        Ok(RunOutcome {
            status,
            truncated: !output_files.is_empty(),
            output_files,
            execution_count: output.execution_count,
            output,
            outputs,
            images,
            new_files,
            execution_time,
            kernel_note,
        })
    }

    /// Runs kernelbox's own helper code silently (no history, no execution count) in its turn,
    /// and returns what it printed. Helper code prints JSON; the server parses it as data.
    pub async fn run_helper(
        &self,
        code: &str,
        timeout: Duration,
    ) -> Result<HelperOutput, SessionError> {
        let _turn = self.queue.lock().await;
        let (events, _) = mpsc::unbounded_channel();
        let Executed {
            status,
            output,
            kernel_note,
            ..
        } = self.execute(code, true, timeout, events).await?;
        Ok(HelperOutput {
            status,
            stdout: output.stdout,
            error: output.error.map(|e| format!("{}: {}", e.ename, e.evalue)),
            kernel_note,
        })
    }

    /// Sends one execute request and follows it to its end: idle and replied, dead kernel, or
    /// timeout (interrupt request, then SIGINT, then a kernel restart). The caller holds the
    /// queue.
    async fn execute(
        &self,
        code: &str,
        silent: bool,
        timeout: Duration,
        events: mpsc::UnboundedSender<OutputEvent>,
    ) -> Result<Executed, SessionError> {
        let kernel = self.current_kernel().await?;
        let mut handle = match kernel.client.start_execute(code, silent).await {
            Ok(handle) => handle,
            Err(source) => {
                // The connection is gone (a lost node resets it): the kernel's watcher says
                // whether the kernel is gone too, and why, within the runtime's grace.
                let verdict = self.runtime.unresponsive_grace() + Duration::from_secs(10);
                let lost = matches!(source, KernelError::Send { .. })
                    && tokio::time::timeout(verdict, kernel.death.cancelled())
                        .await
                        .is_ok();
                if !lost {
                    return Err(SessionError::Kernel {
                        session_id: self.id.to_string(),
                        source: Box::new(source),
                    });
                }
                return Ok(Executed {
                    status: RunStatus::KernelDied,
                    output: ExecutionOutput::with_stream_limit(self.settings.max_output_bytes),
                    kernel_note: Some(self.explain_death(&kernel).await),
                    output_files: Spills::default().finish(),
                });
            }
        };

        let mut output = ExecutionOutput::with_stream_limit(self.settings.max_output_bytes);
        let mut spills = Spills::default();
        let mut reply_pending = true;
        let mut escalation = Escalation::None;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let ending = loop {
            if output.idle && !reply_pending {
                break Ending::Finished;
            }
            tokio::select! {
                message = handle.iopub.recv() => match message {
                    Some(message) => {
                        if let Some(event) = output.absorb(&message) {
                            for event in spills.take(event, &output, &self.workspace) {
                                let _ = events.send(event);
                            }
                        }
                    }
                    None => break Ending::KernelDied,
                },
                answer = &mut handle.reply, if reply_pending => {
                    reply_pending = false;
                    if let Ok(reply) = answer {
                        output.absorb_reply(&reply);
                    }
                }
                _ = kernel.death.cancelled() => break Ending::KernelDied,
                _ = tokio::time::sleep_until(deadline) => {
                    escalation = escalation.next();
                    deadline = tokio::time::Instant::now() + self.settings.interrupt_grace;
                    match escalation {
                        Escalation::InterruptRequested => {
                            tracing::info!(session_id = %self.id, "cell timed out; interrupting");
                            if let Err(error) = kernel.client.interrupt().await {
                                tracing::warn!(session_id = %self.id, %error, "interrupt_request failed");
                            }
                        }
                        Escalation::Signalled => {
                            tracing::info!(session_id = %self.id, "kernel ignored the interrupt; sending SIGINT");
                            if let Err(error) = self.runtime.interrupt(&kernel.container_id).await {
                                tracing::warn!(session_id = %self.id, %error, "SIGINT failed");
                            }
                        }
                        Escalation::Restart | Escalation::None => break Ending::MustRestart,
                    }
                }
            }
        };
        drop(handle);

        let (status, kernel_note) = match ending {
            Ending::Finished if self.interrupt_requested.load(Ordering::SeqCst) => {
                (RunStatus::Interrupted, None)
            }
            Ending::Finished if escalation != Escalation::None => (
                RunStatus::Timeout,
                Some(format!(
                    "the cell ran past its {:.1} s timeout and was interrupted; the kernel and its variables were kept",
                    timeout.as_secs_f64()
                )),
            ),
            Ending::Finished if output.reply_failed || output.error.is_some() => {
                (RunStatus::Error, None)
            }
            Ending::Finished => (RunStatus::Ok, None),
            Ending::KernelDied => {
                let cause = self.explain_death(&kernel).await;
                (RunStatus::KernelDied, Some(cause))
            }
            Ending::MustRestart => {
                self.retire_kernel("the cell ignored interrupts and the kernel was restarted")
                    .await;
                let restarted = match self.ensure_kernel().await {
                    Ok(()) => "a fresh kernel was started; earlier variables are lost".to_string(),
                    Err(error) => format!("starting a fresh kernel failed: {error}"),
                };
                (
                    RunStatus::Timeout,
                    Some(format!(
                        "the cell ran past its {:.1} s timeout and ignored interrupts, so its kernel was restarted: {restarted}",
                        timeout.as_secs_f64()
                    )),
                )
            }
        };
        Ok(Executed {
            status,
            output,
            kernel_note,
            output_files: spills.finish(),
        })
    }

    /// Finds out why a kernel died, and makes sure the next call starts a fresh one.
    async fn explain_death(&self, kernel: &Kernel) -> String {
        if kernel.cause.get().is_none() {
            let (category, cause) = match self.runtime.exit_status(&kernel.container_id).await {
                Ok(ContainerExit::Running) => {
                    ("unresponsive", "the kernel stopped answering".to_string())
                }
                Ok(exit) => (exit.category(), exit.to_string()),
                Err(error) => ("unknown", error.to_string()),
            };
            self.metrics.kernel_deaths.increment(category);
            kernel.declare_dead(cause);
        }
        format!(
            "{}; a fresh kernel starts on the next call (variables are lost, the workspace is kept)",
            kernel.death_cause()
        )
    }

    /// Saves PNG, SVG and JSON displays under `outputs/`, returning their paths and the PNGs.
    fn save_displays(&self, output: &ExecutionOutput) -> (Vec<String>, Vec<String>) {
        let mut paths = Vec::new();
        let mut images = Vec::new();
        for display in &output.displays {
            let id = uuid::Uuid::new_v4();
            let mut save = |name: String, bytes: &[u8]| match self
                .workspace
                .save_output(&name, bytes)
            {
                Ok(path) => paths.push(path),
                Err(error) => {
                    tracing::warn!(session_id = %self.id, %error, "could not save a display output")
                }
            };
            if let Some(serde_json::Value::String(png)) = display.data.get("image/png") {
                let cleaned: String = png.split_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(&cleaned) {
                    Ok(bytes) => {
                        save(format!("{id}.png"), &bytes);
                        images.push(cleaned);
                    }
                    Err(error) => {
                        tracing::warn!(session_id = %self.id, %error, "kernel sent a PNG that is not base64")
                    }
                }
            } else if let Some(svg) = display.data.get("image/svg+xml") {
                let text = match svg {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                save(format!("{id}.svg"), text.as_bytes());
            }
            if let Some(json) = display.data.get("application/json") {
                save(format!("{id}.json"), json.to_string().as_bytes());
            }
        }
        (paths, images)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escalation {
    None,
    InterruptRequested,
    Signalled,
    Restart,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::Timeout => "timeout",
            RunStatus::Interrupted => "interrupted",
            RunStatus::KernelDied => "kernel_died",
        }
    }
}

impl Escalation {
    fn next(self) -> Self {
        match self {
            Escalation::None => Escalation::InterruptRequested,
            Escalation::InterruptRequested => Escalation::Signalled,
            Escalation::Signalled | Escalation::Restart => Escalation::Restart,
        }
    }
}

enum Ending {
    Finished,
    KernelDied,
    MustRestart,
}

/// Connects to the kernel at `endpoint` with `connection`'s key and waits until it is ready.
async fn connect(
    connection: &KernelConnection,
    endpoint: &KernelEndpoint,
    timeout: Duration,
) -> Result<KernelClient, KernelError> {
    let info = match endpoint {
        KernelEndpoint::Ipc { run_dir } => {
            connection.ipc_info(&KernelEndpoint::ipc_prefix(run_dir))
        }
        KernelEndpoint::Tcp { host, ports } => connection.info(host, *ports),
    };
    let client = KernelClient::connect(info, timeout).await?;
    client.wait_ready(timeout).await?;
    Ok(client)
}

/// Resolves when the container stops running, with the reason.
async fn wait_for_exit(runtime: &SharedRuntime, container: &str) -> ContainerExit {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match runtime.exit_status(container).await {
            Ok(ContainerExit::Running) | Err(_) => {}
            Ok(exit) => return exit,
        }
    }
}

/// Watches one kernel until it dies or its session closes: a missed heartbeat makes it look
/// at the container; a stopped container, or heartbeats missed for long, is a death. "Long" is
/// at least the runtime's own grace for noticing a lost machine, so a lost node is reported as
/// such rather than as silence.
async fn watch_kernel(
    kernel: Arc<Kernel>,
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    interval: Duration,
    closed: CancellationToken,
) {
    const MISSES_BEFORE_DEAD: u32 = 5;
    let grace = runtime.unresponsive_grace();
    let mut misses = 0;
    let mut first_miss = Instant::now();
    loop {
        tokio::select! {
            _ = kernel.death.cancelled() => return,
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if kernel
            .client
            .heartbeat(interval.max(Duration::from_secs(1)))
            .await
        {
            misses = 0;
            continue;
        }
        if misses == 0 {
            first_miss = Instant::now();
        }
        misses += 1;
        let given_up = misses >= MISSES_BEFORE_DEAD && first_miss.elapsed() >= grace;
        match runtime.exit_status(&kernel.container_id).await {
            Ok(ContainerExit::Running) if !given_up => {}
            Ok(ContainerExit::Running) => {
                metrics.kernel_deaths.increment("heartbeat_lost");
                kernel.declare_dead(format!(
                    "the kernel missed {misses} heartbeats in a row and was given up"
                ));
                return;
            }
            Ok(exit) => {
                tracing::warn!(container = %kernel.container_id, cause = %exit, "kernel died");
                metrics.kernel_deaths.increment(exit.category());
                kernel.declare_dead(exit.to_string());
                return;
            }
            Err(error) => tracing::warn!(%error, "could not inspect a kernel container"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_follow_the_rule() {
        for good in ["default", "a", "A-b_9", &"x".repeat(64)] {
            assert!(SessionId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "../x", "a/b", "é", &"x".repeat(65), "a\0"] {
            let error = SessionId::parse(bad).unwrap_err();
            assert!(error.contains("invalid session_id"), "{error}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert!(SessionId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn escalation_goes_interrupt_then_signal_then_restart() {
        let steps: Vec<_> = std::iter::successors(Some(Escalation::None), |s| Some(s.next()))
            .take(5)
            .collect();
        assert_eq!(
            steps,
            [
                Escalation::None,
                Escalation::InterruptRequested,
                Escalation::Signalled,
                Escalation::Restart,
                Escalation::Restart
            ]
        );
    }
}
