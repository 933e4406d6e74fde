//! The tool router. One `KernelboxServer` exists per MCP client connection, so each client has
//! its own current session; the session registry behind it is shared.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ProtocolVersion,
    RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::json;
use tokio::sync::mpsc;

use super::params::{
    CompletionParams, CreateSessionParams, DeleteFileParams, DeleteSessionParams, InspectParams,
    InstallParams, ListFilesParams, NotebookParams, Parameters, ReadFileParams,
    ResponsivenessParams, RestartKernelParams, RunPythonCodeParams, RunScriptParams,
    SaveScriptParams, SessionParams, SwitchSessionParams, WriteFileParams,
};
use super::results::{
    CreateSessionResult, DeleteFileResult, DeleteSessionResult, InstallResult,
    InterruptKernelResult, KernelHealthResult, KernelLimits, KernelProcess, ListFilesResult,
    ListSessionsResult, ListVariablesResult, PingResult, ReadFileResult, ResponsivenessResult,
    RestartKernelResult, RunPythonCodeResult, RunScriptResult, SaveScriptResult, SessionMetadata,
    SessionSummary, SwitchSessionResult, WorkspaceInfoResult, WriteFileResult,
};
use crate::auth::Tenant;
use crate::kernel::{OutputEvent, OutputStream};
use crate::notebook::{self, CellManifest, NotebookId};
use crate::packages::{self, PackageIndex};
use crate::session::{RunStatus, Session, SessionId};
use crate::sessions::{RegistryError, SessionRequest, Sessions};
use crate::snippets::{self, PACKAGES_DIR};
use crate::units::cpus_of_nano;
use crate::workspace::{ListOptions, Listing, WorkspaceError};
use base64::Engine as _;

/// Bounds on what a tool call may ask for, and where packages come from.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_code_bytes: usize,
    pub package_index: PackageIndex,
    pub install_timeout: Duration,
    /// Largest file read returned by read_file.
    pub max_read_bytes: usize,
    /// Largest file write_file, save_script and uploads may write.
    pub max_write_bytes: usize,
}

#[derive(Clone)]
pub struct KernelboxServer {
    sessions: Arc<Sessions>,
    limits: Arc<ToolConfig>,
    /// Who this MCP connection belongs to: fixed at construction over stdio, taken from the
    /// authenticated `initialize` request over HTTP. Every later request must carry it.
    tenant: Arc<OnceLock<Tenant>>,
    current: Arc<Mutex<SessionId>>,
    tool_router: ToolRouter<Self>,
}

/// Sends cell output as an MCP logging notification. Logging is deprecated for 2026 protocol
/// clients (SEP-2577), but it is how the 2025 clients this server speaks to see live output.
#[allow(deprecated)]
async fn log_output(peer: &Peer<RoleServer>, data: serde_json::Value) {
    let _ = peer
        .notify_logging_message(
            rmcp::model::LoggingMessageNotificationParam::new(
                rmcp::model::LoggingLevel::Info,
                data,
            )
            .with_logger("kernelbox.output"),
        )
        .await;
}

fn now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// A call that was refused or failed before any code ran. rmcp reports unparsable arguments
/// as an `isError` result (MCP SEP-1303: the model sees the message and corrects itself);
/// every other refusal takes the same form, so a client handles them all alike. The message
/// names the field and what is allowed.
type Refusal = String;

fn registry_error(error: RegistryError) -> Refusal {
    error.to_string()
}

fn parse_session_id(value: &str) -> Result<SessionId, Refusal> {
    SessionId::parse(value)
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 100.0).round() / 100.0
}

impl KernelProcess {
    fn unavailable(error: String) -> Self {
        Self {
            memory_mb: None,
            memory_limit_mb: None,
            cpu_percent: None,
            pids: None,
            pids_limit: None,
            error: Some(error),
        }
    }
}

/// Runs a workspace operation off the async threads; its error becomes the refusal text.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(error) => Err(format!("the file operation failed: {error}")),
    }
}

/// Runs a blocking notebook-file operation off the async threads.
async fn blocking_text<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result,
        Err(error) => Err(format!("the notebook operation failed: {error}")),
    }
}

/// Jupyter cursor positions count characters; one past the end is the end.
fn check_cursor(code: &str, cursor_pos: usize) -> Result<(), Refusal> {
    let length = code.chars().count();
    if cursor_pos > length {
        return Err(format!(
            "cursor_pos must be between 0 and the length of code ({length} characters); got {cursor_pos}"
        ));
    }
    Ok(())
}

fn metadata(session: &Session) -> SessionMetadata {
    SessionMetadata {
        description: session.description.clone(),
        created_at: session.created_at.timestamp_micros() as f64 / 1e6,
    }
}

#[tool_router]
impl KernelboxServer {
    /// A handler for one MCP connection; `tenant` is `None` when the first (authenticated)
    /// request will say who it is.
    pub fn new(sessions: Arc<Sessions>, limits: Arc<ToolConfig>, tenant: Option<Tenant>) -> Self {
        let owner = OnceLock::new();
        if let Some(tenant) = tenant {
            let _ = owner.set(tenant);
        }
        Self {
            sessions,
            limits,
            tenant: Arc::new(owner),
            current: Arc::new(Mutex::new(SessionId::default_id())),
            tool_router: Self::tool_router(),
        }
    }

    fn tenant(&self) -> Result<&Tenant, Refusal> {
        self.tenant.get().ok_or_else(|| {
            "this MCP connection has not said who it is; initialize first".to_string()
        })
    }

    fn current_session_id(&self) -> SessionId {
        self.current.lock().expect("current session lock").clone()
    }

    /// The named session, or the client's current one.
    fn session(&self, id: Option<&str>) -> Result<Arc<Session>, Refusal> {
        let id = match id {
            Some(id) => parse_session_id(id)?,
            None => self.current_session_id(),
        };
        self.sessions
            .get_or_default(&id, self.tenant()?)
            .map_err(registry_error)
    }

    fn timeout(&self, requested: Option<f64>) -> Result<Duration, Refusal> {
        let max = self.limits.max_timeout.as_secs_f64();
        match requested {
            None => Ok(self.limits.default_timeout),
            Some(t) if t.is_finite() && t > 0.0 && t <= max => Ok(Duration::from_secs_f64(t)),
            Some(t) => Err(format!(
                "timeout must be a number of seconds greater than 0 and at most {max}; got {t}"
            )),
        }
    }

    #[tool(
        description = "Execute Python code in the session's persistent Jupyter kernel (its own sandboxed container). Variables persist across calls. Returns stdout, stderr, results, saved outputs (plots as PNG under outputs/, also returned as images), new files, status (ok|error|timeout|interrupted|kernel_died), the error and every display bundle. Output streams as progress and log notifications while the cell runs.",
        output_schema = schema_for_output::<RunPythonCodeResult>()
    )]
    async fn run_python_code(
        &self,
        Parameters(params): Parameters<RunPythonCodeParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, Refusal> {
        if params.code.len() > self.limits.max_code_bytes {
            return Err(format!(
                "code is {} bytes; at most {} bytes are allowed",
                params.code.len(),
                self.limits.max_code_bytes
            ));
        }
        let timeout = self.timeout(params.timeout)?;
        let session = self.session(params.session_id.as_deref())?;
        let (events, mut received) = mpsc::unbounded_channel();
        let progress_token = meta.get_progress_token();
        let session_id = session.id.to_string();
        let forward = async {
            let mut count = 0u64;
            while let Some(event) = received.recv().await {
                count += 1;
                let (stream, text) = match event {
                    OutputEvent::Text { stream, text, .. } => (
                        match stream {
                            OutputStream::Stdout => "stdout",
                            OutputStream::Stderr => "stderr",
                        },
                        text,
                    ),
                    OutputEvent::Display { mime_types } => {
                        ("display", format!("[display: {}]", mime_types.join(", ")))
                    }
                    OutputEvent::Error { ename, evalue } => ("error", format!("{ename}: {evalue}")),
                    OutputEvent::Truncated { stream, file } => (
                        "notice",
                        format!("[{stream:?} output past the cap continues in {file}]"),
                    ),
                };
                if let Some(token) = &progress_token {
                    let _ = peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), count as f64)
                                .with_message(text.clone()),
                        )
                        .await;
                }
                log_output(
                    &peer,
                    json!({"session_id": session_id, "stream": stream, "text": text}),
                )
                .await;
            }
        };
        let (outcome, ()) = tokio::join!(session.run(&params.code, timeout, events), forward);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => return Err(error.to_string()),
        };
        let status = outcome.status;
        let result = RunPythonCodeResult {
            stdout: outcome.output.stdout,
            stderr: outcome.output.stderr,
            results: outcome.output.results,
            outputs: outcome.outputs,
            new_files: outcome.new_files,
            execution_time: (outcome.execution_time.as_secs_f64() * 1000.0).round() / 1000.0,
            status,
            execution_count: outcome.execution_count,
            error: outcome.output.error,
            displays: outcome.output.displays,
            session_id,
            kernel_note: outcome.kernel_note,
            truncated: outcome.truncated,
            output_files: outcome.output_files,
        };
        let structured = serde_json::to_value(&result).map_err(|e| e.to_string())?;
        let mut content = vec![ContentBlock::text(structured.to_string())];
        content.extend(
            outcome
                .images
                .into_iter()
                .map(|png| ContentBlock::image(png, "image/png")),
        );
        let mut call_result = if status == RunStatus::Ok {
            CallToolResult::success(content)
        } else {
            CallToolResult::error(content)
        };
        call_result.structured_content = Some(structured);
        Ok(call_result)
    }

    #[tool(
        description = "Create a new isolated session: its own kernel in its own container, with its own workspace. It does not become the current session; pass its id or call switch_session."
    )]
    async fn create_session(
        &self,
        Parameters(params): Parameters<CreateSessionParams>,
    ) -> Result<Json<CreateSessionResult>, Refusal> {
        let id = params
            .session_id
            .as_deref()
            .map(parse_session_id)
            .transpose()?;
        let session = self
            .sessions
            .create(
                id,
                self.tenant()?,
                SessionRequest {
                    description: params.description,
                    egress: params.egress,
                    memory: params.memory,
                    cpus: params.cpus,
                    pids: params.pids_limit,
                },
            )
            .await
            .map_err(registry_error)?;
        Ok(Json(CreateSessionResult {
            session_id: session.id.to_string(),
            status: "created".to_string(),
            metadata: metadata(&session),
            timestamp: now(),
        }))
    }

    #[tool(
        description = "Make a session this client's current one: later calls without session_id use it."
    )]
    async fn switch_session(
        &self,
        Parameters(params): Parameters<SwitchSessionParams>,
    ) -> Result<Json<SwitchSessionResult>, Refusal> {
        let session = self.session(Some(&params.session_id))?;
        let previous = std::mem::replace(
            &mut *self.current.lock().expect("current session lock"),
            session.id.clone(),
        );
        Ok(Json(SwitchSessionResult {
            previous_session: previous.to_string(),
            current_session: session.id.to_string(),
            status: "switched".to_string(),
            timestamp: now(),
        }))
    }

    #[tool(description = "List your sessions with their state, execution counts and metadata.")]
    async fn list_sessions(&self) -> Result<Json<ListSessionsResult>, Refusal> {
        let current = self.current_session_id();
        let mut sessions = BTreeMap::new();
        for session in self.sessions.list(&self.tenant()?.name) {
            let uptime = session.kernel_uptime().await;
            let stats = session.stats();
            sessions.insert(
                session.id.to_string(),
                SessionSummary {
                    active: uptime.is_some(),
                    current: session.id == current,
                    busy: session.is_busy(),
                    egress: session.egress,
                    execution_count: stats.execution_count,
                    uptime: uptime.unwrap_or(0.0),
                    metadata: metadata(&session),
                    executions: stats.executions,
                    kernel_starts: stats.kernel_starts,
                    idle_seconds: (session.idle_for().as_secs_f64() * 10.0).round() / 10.0,
                    expires_in_seconds: self
                        .sessions
                        .expires_in(&session)
                        .map(|left| left.as_secs_f64().round()),
                },
            );
        }
        Ok(Json(ListSessionsResult {
            total_sessions: sessions.len(),
            sessions,
            active_session: current.to_string(),
            max_sessions: self.sessions.max_sessions(),
            timestamp: now(),
        }))
    }

    #[tool(
        description = "Delete a session: its kernel container is removed. Its workspace is kept unless remove_workspace is true. Deleting your current session makes 'default' current again."
    )]
    async fn delete_session(
        &self,
        Parameters(params): Parameters<DeleteSessionParams>,
    ) -> Result<Json<DeleteSessionResult>, Refusal> {
        let id = parse_session_id(&params.session_id)?;
        self.sessions
            .delete(&id, &self.tenant()?.name, params.remove_workspace)
            .await
            .map_err(registry_error)?;
        let mut current = self.current.lock().expect("current session lock");
        let was_active = *current == id;
        if was_active {
            *current = SessionId::default_id();
        }
        Ok(Json(DeleteSessionResult {
            session_id: id.to_string(),
            status: "deleted".to_string(),
            was_active,
            workspace_removed: params.remove_workspace,
            new_active_session: was_active.then(|| current.to_string()),
            timestamp: now(),
        }))
    }

    #[tool(
        description = "Restart the session's kernel. Variables are cleared unless preserve_state is true (then picklable variables are carried over; the rest are listed in skipped_vars). The workspace is kept."
    )]
    async fn restart_kernel(
        &self,
        Parameters(params): Parameters<RestartKernelParams>,
    ) -> Result<Json<RestartKernelResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        let report = session
            .restart(params.preserve_state)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(RestartKernelResult {
            restarted: true,
            session_id: session.id.to_string(),
            preserve_state: params.preserve_state,
            preserved_vars: report.preserved_vars,
            restored_vars: report.restored_vars,
            skipped_vars: report.skipped_vars,
            note: report.note,
            timestamp: now(),
        }))
    }

    #[tool(
        description = "List the user's variables in the session's kernel: names, types and short reprs (private names and modules left out)."
    )]
    async fn list_variables(
        &self,
        Parameters(params): Parameters<SessionParams>,
    ) -> Result<Json<ListVariablesResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        let details = session.variables().await.map_err(|e| e.to_string())?;
        Ok(Json(ListVariablesResult {
            variables: details.iter().map(|v| v.name.clone()).collect(),
            details,
            session_id: session.id.to_string(),
        }))
    }

    #[tool(
        description = "Code completion from the kernel at cursor_pos (in characters): the kernel's complete_reply (matches, cursor_start, cursor_end, metadata, status)."
    )]
    async fn code_completion(
        &self,
        Parameters(params): Parameters<CompletionParams>,
    ) -> Result<CallToolResult, Refusal> {
        check_cursor(&params.code, params.cursor_pos)?;
        let session = self.session(params.session_id.as_deref())?;
        let reply = session
            .complete(&params.code, params.cursor_pos)
            .await
            .map_err(|e| e.to_string())?;
        Ok(CallToolResult::structured(reply))
    }

    #[tool(
        description = "Inspect the object at cursor_pos (in characters): the kernel's inspect_reply (found, data with text/plain and more, metadata, status). detail_level 1 adds the source."
    )]
    async fn inspect_object(
        &self,
        Parameters(params): Parameters<InspectParams>,
    ) -> Result<CallToolResult, Refusal> {
        check_cursor(&params.code, params.cursor_pos)?;
        if params.detail_level > 1 {
            return Err(format!(
                "detail_level must be 0 or 1; got {}",
                params.detail_level
            ));
        }
        let session = self.session(params.session_id.as_deref())?;
        let reply = session
            .inspect(&params.code, params.cursor_pos, params.detail_level)
            .await
            .map_err(|e| e.to_string())?;
        Ok(CallToolResult::structured(reply))
    }

    #[tool(
        description = "Health of the session's kernel: status, uptime, execution statistics, the container's memory, CPU and process figures from the engine, and its limits."
    )]
    async fn get_kernel_health(
        &self,
        Parameters(params): Parameters<SessionParams>,
    ) -> Result<Json<KernelHealthResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        let uptime = session.kernel_uptime().await;
        let stats = session.stats();
        let kernel_process = match session.usage().await {
            Some(Ok(usage)) => KernelProcess {
                memory_mb: usage.memory_bytes.map(mib),
                memory_limit_mb: usage.memory_limit_bytes.map(mib),
                cpu_percent: usage.cpu_percent.map(|c| (c * 10.0).round() / 10.0),
                pids: usage.pids,
                pids_limit: usage.pids_limit,
                error: None,
            },
            Some(Err(error)) => KernelProcess::unavailable(error.to_string()),
            None => KernelProcess::unavailable("no kernel is running".to_string()),
        };
        let limits = session.limits();
        let workspace = session.workspace().clone();
        let used = tokio::task::spawn_blocking(move || workspace.usage())
            .await
            .unwrap_or_default();
        Ok(Json(KernelHealthResult {
            workspace_used_mb: mib(used),
            workspace_quota_mb: mib(session.workspace().quota_bytes()),
            status: if uptime.is_some() { "alive" } else { "dead" }.to_string(),
            session_id: session.id.to_string(),
            uptime: uptime.map(|u| (u * 100.0).round() / 100.0).unwrap_or(0.0),
            execution_count: stats.execution_count,
            last_execution_time: stats.last_execution_seconds,
            average_execution_time: stats.total_execution_seconds / stats.executions.max(1) as f64,
            busy: session.is_busy(),
            kernel_process,
            limits: KernelLimits {
                memory_mb: mib(limits.memory_bytes as u64),
                cpus: cpus_of_nano(limits.nano_cpus),
                pids: limits.pids,
                open_files: limits.open_files,
            },
            metadata: metadata(&session),
        }))
    }

    #[tool(
        description = "Check that the session's kernel answers a kernel_info_request within timeout seconds (default 5). A kernel busy with a cell answers only when the cell ends."
    )]
    async fn check_kernel_responsiveness(
        &self,
        Parameters(params): Parameters<ResponsivenessParams>,
    ) -> Result<Json<ResponsivenessResult>, Refusal> {
        if !(params.timeout.is_finite() && params.timeout > 0.0 && params.timeout <= 60.0) {
            return Err(format!(
                "timeout must be a number of seconds greater than 0 and at most 60; got {}",
                params.timeout
            ));
        }
        let session = self.session(params.session_id.as_deref())?;
        let started = std::time::Instant::now();
        let answer = session
            .responsiveness(Duration::from_secs_f64(params.timeout))
            .await
            .map_err(|e| e.to_string())?;
        let waited = answer.unwrap_or_else(|| started.elapsed());
        Ok(Json(ResponsivenessResult {
            responsive: answer.is_some(),
            response_time: (waited.as_secs_f64() * 1000.0).round() / 1000.0,
            timeout: params.timeout,
        }))
    }

    #[tool(
        description = "The session's workspace layout, as paths inside the kernel: workspace, scripts, outputs, uploads, and where installed packages go."
    )]
    async fn get_workspace_info(
        &self,
        Parameters(params): Parameters<SessionParams>,
    ) -> Result<Json<WorkspaceInfoResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        Ok(Json(WorkspaceInfoResult {
            workspace: "/workspace".to_string(),
            scripts: "/workspace/scripts".to_string(),
            outputs: "/workspace/outputs".to_string(),
            uploads: "/workspace/uploads".to_string(),
            packages: PACKAGES_DIR.to_string(),
            session_id: session.id.to_string(),
        }))
    }

    #[tool(
        description = "Install Python packages with pip inside the session's container, where the kernel imports from (kept across kernel restarts). Takes package specifiers only (name, extras, version constraints); pip options, URLs and paths are refused."
    )]
    async fn install_dependencies(
        &self,
        Parameters(params): Parameters<InstallParams>,
    ) -> Result<Json<InstallResult>, Refusal> {
        if params.packages.is_empty() {
            return Err("packages is empty; name at least one package".to_string());
        }
        if params.packages.len() > packages::MAX_PACKAGES {
            return Err(format!(
                "packages holds {} entries; at most {} are allowed per call",
                params.packages.len(),
                packages::MAX_PACKAGES
            ));
        }
        for spec in &params.packages {
            packages::validate(spec)?;
        }
        let session = self.session(params.session_id.as_deref())?;
        let argv = packages::pip_command(&params.packages, &self.limits.package_index);
        let output = session
            .install(argv, self.limits.install_timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(InstallResult {
            returncode: output.exit_code,
            stdout: output.stdout,
            stderr: output.stderr,
            target: PACKAGES_DIR.to_string(),
        }))
    }

    #[tool(
        description = "Interrupt the cell running in the session (like Ctrl-C); the kernel and its variables stay."
    )]
    async fn interrupt_kernel(
        &self,
        Parameters(params): Parameters<SessionParams>,
    ) -> Result<Json<InterruptKernelResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        let interrupted = session.interrupt().await.map_err(|e| e.to_string())?;
        Ok(Json(InterruptKernelResult {
            session_id: session.id.to_string(),
            interrupted,
            timestamp: now(),
        }))
    }

    #[tool(
        description = "List workspace files and directories: a flat list in `files` (direct children, or every descendant with recursive) or an ASCII tree in `tree`. Paths are workspace-relative; symlinks are listed, never followed."
    )]
    async fn list_files(
        &self,
        Parameters(params): Parameters<ListFilesParams>,
    ) -> Result<Json<ListFilesResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        let workspace = session.workspace().clone();
        let options = ListOptions {
            recursive: params.recursive,
            tree: params.tree,
            max_depth: params.max_depth,
            include_files: params.include_files,
            include_dirs: params.include_dirs,
        };
        let listing = blocking(move || workspace.list(params.path.as_deref(), &options)).await?;
        Ok(Json(match listing {
            Listing::Flat {
                root,
                files,
                truncated,
            } => ListFilesResult {
                root,
                files: Some(files),
                tree: None,
                truncated,
            },
            Listing::Tree {
                root,
                tree,
                truncated,
            } => ListFilesResult {
                root,
                files: None,
                tree: Some(tree),
                truncated,
            },
        }))
    }

    #[tool(
        description = "Read a workspace file: `text` when it is UTF-8, else `base64`. max_bytes reads only the start; the server caps reads too."
    )]
    async fn read_file(
        &self,
        Parameters(params): Parameters<ReadFileParams>,
    ) -> Result<Json<ReadFileResult>, Refusal> {
        let limit = self.limits.max_read_bytes;
        let max_bytes = match params.max_bytes {
            Some(requested) => requested.min(limit),
            None => limit,
        };
        let session = self.session(params.session_id.as_deref())?;
        let workspace = session.workspace().clone();
        let path = params.path.clone();
        let file = blocking(move || workspace.read(&path, max_bytes)).await?;
        if params.max_bytes.is_none() && file.truncated {
            return Err(format!(
                "{} is {} bytes, over the read limit of {limit} bytes; pass max_bytes to read its start, or download it over HTTP",
                params.path, file.size
            ));
        }
        let (text, base64) = match String::from_utf8(file.bytes) {
            Ok(text) => (Some(text), None),
            Err(error) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(error.into_bytes())),
            ),
        };
        Ok(Json(ReadFileResult {
            text,
            base64,
            path: params.path,
            size: file.size,
            truncated: file.truncated,
        }))
    }

    #[tool(
        description = "Write a workspace file (created or replaced, parents created): text, or bytes from base64 with binary_base64. Returns the workspace-relative path."
    )]
    async fn write_file(
        &self,
        Parameters(params): Parameters<WriteFileParams>,
    ) -> Result<Json<WriteFileResult>, Refusal> {
        let bytes = if params.binary_base64 {
            base64::engine::general_purpose::STANDARD
                .decode(params.content.trim())
                .map_err(|e| format!("content is not valid base64 ({e}); binary_base64 is true"))?
        } else {
            params.content.into_bytes()
        };
        let session = self.session(params.session_id.as_deref())?;
        let workspace = session.workspace().clone();
        let limit = self.limits.max_write_bytes;
        let path = blocking(move || workspace.write(&params.path, &bytes, limit)).await?;
        Ok(Json(WriteFileResult { path }))
    }

    #[tool(
        description = "Delete a workspace file, a symlink (never its target) or an empty directory."
    )]
    async fn delete_file(
        &self,
        Parameters(params): Parameters<DeleteFileParams>,
    ) -> Result<Json<DeleteFileResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        let workspace = session.workspace().clone();
        blocking(move || workspace.delete(&params.filename)).await?;
        Ok(Json(DeleteFileResult { success: true }))
    }

    #[tool(description = "Save a Python script under scripts/ (`.py` appended when missing).")]
    async fn save_script(
        &self,
        Parameters(params): Parameters<SaveScriptParams>,
    ) -> Result<Json<SaveScriptResult>, Refusal> {
        let name = if params.name.ends_with(".py") {
            params.name
        } else {
            format!("{}.py", params.name)
        };
        let session = self.session(params.session_id.as_deref())?;
        let workspace = session.workspace().clone();
        let limit = self.limits.max_write_bytes;
        let content = params.content;
        let script = blocking(move || {
            workspace.write(&format!("scripts/{name}"), content.as_bytes(), limit)
        })
        .await?;
        Ok(Json(SaveScriptResult { script }))
    }

    #[tool(
        description = "Run a workspace Python script with arguments inside the session's container (never on the host), in /workspace, killed after timeout seconds (default 120). Returns stdout, stderr, returncode and the files it created."
    )]
    async fn run_script(
        &self,
        Parameters(params): Parameters<RunScriptParams>,
    ) -> Result<Json<RunScriptResult>, Refusal> {
        let max = self.limits.max_timeout.as_secs_f64();
        if !(params.timeout.is_finite() && params.timeout > 0.0 && params.timeout <= max) {
            return Err(format!(
                "timeout must be a number of seconds greater than 0 and at most {max}; got {}",
                params.timeout
            ));
        }
        let session = self.session(params.session_id.as_deref())?;
        let workspace = session.workspace().clone();
        let path = params.path.clone();
        let script = blocking(move || workspace.existing_file(&path)).await?;
        let mut argv = vec![
            "python3".to_string(),
            "--".to_string(),
            format!("/workspace/{script}"),
        ];
        argv.extend(params.args.unwrap_or_default());
        let before = session.workspace().snapshot();
        let output = session
            .exec(argv, Duration::from_secs_f64(params.timeout))
            .await
            .map_err(|e| e.to_string())?;
        let after = session.workspace().snapshot();
        Ok(Json(RunScriptResult {
            stdout: output.stdout,
            stderr: output.stderr,
            returncode: output.exit_code,
            new_files: after.difference(&before).cloned().collect(),
            timed_out: output.timed_out,
            truncated: output.truncated,
        }))
    }

    #[tool(
        description = "Notebook surface over the session's kernel. Actions: run (execute `code` as a numbered cell, record its manifest under outputs/notebooks/, save_dfs also saves DataFrames), cells, cell (cell_index), export (.ipynb with images and .html; export_to ipynb|html|both), reset (forget the cells; the kernel keeps running), datasets.register (dataset_name, paths, format), datasets.list, datasets.describe, datasets.drop, datasets.sql (query over registered datasets with DuckDB; limit_preview rows inline, all rows to a Parquet file)."
    )]
    async fn notebook(
        &self,
        Parameters(params): Parameters<NotebookParams>,
    ) -> Result<CallToolResult, Refusal> {
        let id = NotebookId::parse(params.notebook_id.as_deref())?;
        let session = self.session(params.session_id.as_deref())?;
        let _turn = session.notebook_turn.lock().await;
        let workspace = session.workspace().clone();
        let action = params.action.as_str();
        let result = match action {
            "run" => {
                let code = params
                    .code
                    .as_deref()
                    .filter(|c| !c.trim().is_empty())
                    .ok_or("code is required for action run")?;
                if code.len() > self.limits.max_code_bytes {
                    return Err(format!(
                        "code is {} bytes; at most {} bytes are allowed",
                        code.len(),
                        self.limits.max_code_bytes
                    ));
                }
                let cell_index = {
                    let (workspace, id) = (workspace.clone(), id.clone());
                    blocking_text(move || notebook::next_cell_index(&workspace, &id)).await?
                };
                let (events, _) = mpsc::unbounded_channel();
                let outcome = session
                    .run(code, self.limits.default_timeout, events)
                    .await
                    .map_err(|e| e.to_string())?;
                let dataframes = if params.save_dfs {
                    let saved = session
                        .run_helper(
                            &snippets::save_dataframes(
                                &id.data_dir_in_kernel(),
                                &format!("cell_{cell_index:04}"),
                            ),
                            self.limits.default_timeout,
                        )
                        .await
                        .map_err(|e| e.to_string())?
                        .parse::<serde_json::Value>()?;
                    saved["dataframes"].as_array().cloned().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let mut manifest = CellManifest {
                    notebook_id: id.as_str().to_string(),
                    cell_index,
                    created_at: now(),
                    code: code.to_string(),
                    status: outcome.status,
                    execution_count: outcome.execution_count,
                    stdout: outcome.output.stdout,
                    stderr: outcome.output.stderr,
                    results: outcome.output.results,
                    outputs: outcome.outputs,
                    new_files: outcome.new_files,
                    error: outcome.output.error,
                    displays: outcome.output.displays,
                    dataframes,
                };
                manifest.clip_streams();
                let stored = manifest.clone();
                let path = {
                    let (workspace, id) = (workspace.clone(), id.clone());
                    blocking_text(move || notebook::record(&workspace, &id, &stored)).await?
                };
                let mut artifacts = manifest.outputs.clone();
                artifacts.extend(
                    manifest
                        .dataframes
                        .iter()
                        .filter_map(|df| df["path"].as_str().map(str::to_string)),
                );
                json!({
                    "status": "completed",
                    "run_status": manifest.status,
                    "notebook_id": id.as_str(),
                    "cell_index": cell_index,
                    "manifest": path,
                    "artifacts": artifacts,
                    "stdout": manifest.stdout,
                    "stderr": manifest.stderr,
                    "results": manifest.results,
                    "error": manifest.error,
                    "dataframes": manifest.dataframes,
                })
            }
            "cells" => {
                let index = blocking_text(move || notebook::index(&workspace, &id)).await?;
                json!(index)
            }
            "cell" => {
                let cell_index = params
                    .cell_index
                    .ok_or("cell_index is required for action cell")?;
                let cell =
                    blocking_text(move || notebook::cell(&workspace, &id, cell_index)).await?;
                json!(cell)
            }
            "export" => {
                let (ipynb, html) = notebook::export_targets(&params.export_to)?;
                let limit = self.limits.max_write_bytes;
                let notebook_id = id.as_str().to_string();
                let (ipynb, html) =
                    blocking_text(move || notebook::export(&workspace, &id, ipynb, html, limit))
                        .await?;
                json!({"notebook_id": notebook_id, "ipynb": ipynb, "html": html})
            }
            "reset" => {
                let notebook_id = id.as_str().to_string();
                let removed = blocking_text(move || notebook::reset(&workspace, &id)).await?;
                json!({"status": "reset", "notebook_id": notebook_id, "removed_cells": removed})
            }
            "datasets.register" | "datasets.list" | "datasets.describe" | "datasets.drop"
            | "datasets.sql" => {
                if params.engine != "duckdb" {
                    return Err(format!(
                        "engine {:?} is not supported; use duckdb",
                        params.engine
                    ));
                }
                let request = match action {
                    "datasets.register" => {
                        let name = notebook::dataset_name(params.dataset_name.as_deref())?;
                        let paths = notebook::dataset_paths(params.paths.as_deref())?;
                        let format = notebook::dataset_format(params.format.as_deref(), &paths[0])?;
                        json!({"action": "register", "name": name, "paths": paths, "format": format})
                    }
                    "datasets.list" => json!({"action": "list"}),
                    "datasets.describe" | "datasets.drop" => {
                        let name = notebook::dataset_name(params.dataset_name.as_deref())?;
                        json!({"action": action.trim_start_matches("datasets."), "name": name})
                    }
                    _ => {
                        let query = params
                            .query
                            .as_deref()
                            .filter(|q| !q.trim().is_empty())
                            .ok_or("query is required for datasets.sql")?;
                        if !(1..=10_000).contains(&params.limit_preview) {
                            return Err(format!(
                                "limit_preview must be between 1 and 10000; got {}",
                                params.limit_preview
                            ));
                        }
                        let file = format!("query_{}.parquet", uuid::Uuid::new_v4().simple());
                        json!({
                            "action": "sql",
                            "query": query,
                            "limit": params.limit_preview,
                            "result_path": format!("{}/{file}", id.data_dir_in_kernel()),
                        })
                    }
                };
                let mut answer = session
                    .run_helper(&snippets::datasets(&request), self.limits.max_timeout)
                    .await
                    .map_err(|e| e.to_string())?
                    .parse::<serde_json::Value>()?;
                if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
                    return Err(format!("{action} failed: {error}"));
                }
                if let Some(path) = request["result_path"].as_str() {
                    answer["result_path"] =
                        json!(path.trim_start_matches("/workspace/").to_string());
                }
                answer
            }
            other => {
                return Err(format!(
                    "unknown action {other:?}: use run, cells, cell, export, reset, datasets.register, datasets.list, datasets.describe, datasets.drop or datasets.sql"
                ));
            }
        };
        Ok(CallToolResult::structured(result))
    }

    #[tool(description = "Health check of the MCP server.")]
    async fn ping(&self) -> Json<PingResult> {
        Json(PingResult { ok: true })
    }
}

/// The tenant the HTTP layer authenticated for this request; `None` over stdio.
fn tenant_of(context: &rmcp::service::RequestContext<RoleServer>) -> Option<&Tenant> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Tenant>())
}

impl KernelboxServer {
    /// The connection's tenant, checked against the request's own when it has one.
    fn request_tenant(
        &self,
        context: &rmcp::service::RequestContext<RoleServer>,
    ) -> Result<&Tenant, rmcp::ErrorData> {
        let owner = self.tenant.get().ok_or_else(|| {
            rmcp::ErrorData::invalid_request("initialize this MCP connection first", None)
        })?;
        match tenant_of(context) {
            Some(caller) if caller != owner => Err(rmcp::ErrorData::invalid_request(
                "this MCP session belongs to another token",
                None,
            )),
            _ => Ok(owner),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for KernelboxServer {
    #[allow(deprecated)] // logging: see `log_output`
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("kernelbox", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "A Python kernel in a sandboxed container per session. run_python_code executes code; \
             variables persist per session. Each client has its own current session ('default' \
             until switch_session); every session tool also takes session_id.",
        )
    }

    /// Binds the connection to the tenant of its authenticated `initialize` request.
    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, rmcp::ErrorData> {
        if let Some(tenant) = tenant_of(&context) {
            let _ = self.tenant.set(tenant.clone());
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    /// Every tool call must come from the connection's own tenant.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        self.request_tenant(&context)?;
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

    /// Versions that keep a connection-scoped MCP session: each client's current session is
    /// state of that connection.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(&[
            ProtocolVersion::V_2025_03_26,
            ProtocolVersion::V_2025_06_18,
            ProtocolVersion::V_2025_11_25,
        ])
    }

    async fn list_resources(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        Ok(super::resources::list(&self.sessions, &tenant.name).await)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, rmcp::ErrorData> {
        Ok(super::resources::templates())
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        super::resources::read(
            &self.sessions,
            &tenant.name,
            &request.uri,
            self.limits.max_read_bytes,
        )
        .await
        .map(Into::into)
    }
}
