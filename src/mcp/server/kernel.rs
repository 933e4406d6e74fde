//! Kernel tools: run code (streaming its output as notifications), restart, list variables,
//! complete and inspect, health and responsiveness, install packages, interrupt. Each checks
//! its arguments, calls the session and maps the outcome; a cell that ran and failed is a
//! result with its status, never a refusal.

use std::time::Duration;

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::{
    CallToolResult, ContentBlock, Extensions, ProgressNotificationParam, RequestMetaObject,
};
use rmcp::{Peer, RoleServer, tool, tool_router};
use serde_json::json;
use tokio::sync::mpsc;

use super::{KernelboxServer, Refusal, metadata, now};
use crate::kernel::{OutputEvent, OutputStream};
use crate::mcp::fit;
use crate::mcp::params::{
    CompletionParams, InspectParams, InstallParams, Parameters, ResponsivenessParams,
    RestartKernelParams, RunPythonCodeParams, SessionParams,
};
use crate::mcp::results::{
    InstallResult, InterruptKernelResult, KernelHealthResult, KernelLimits, KernelProcess,
    ListVariablesResult, ResponsivenessResult, RestartKernelResult, RunPythonCodeResult,
};
use crate::mcp::tasks::running_task;
use crate::packages;
use crate::session::RunStatus;
use crate::snippets::PACKAGES_DIR;
use crate::units::cpus_of_nano;

/// How often a running cell tells the client it still runs, output or not.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);

/// An output event as the stream it belongs to and the text a notification carries.
pub(super) fn describe(event: OutputEvent) -> (&'static str, String) {
    match event {
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
    }
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

#[tool_router(router = kernel_tools, vis = "pub(super)")]
impl KernelboxServer {
    #[tool(
        description = "Execute code in the session's persistent Jupyter kernel (its own sandboxed container): Python, or the language of the session's template (list_templates; bash runs shell commands). Variables persist across calls. Returns stdout, stderr, results, saved outputs (plots as PNG under outputs/, also returned as images), new files, status (ok|error|timeout|interrupted|kernel_died|quota_exceeded: the workspace is full), the error and every display bundle. Output streams as progress and log notifications while the cell runs.",
        output_schema = schema_for_output::<RunPythonCodeResult>()
    )]
    async fn run_python_code(
        &self,
        Parameters(params): Parameters<RunPythonCodeParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        extensions: Extensions,
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
        let (task, stop) = running_task(&extensions);
        let session_id = session.id.to_string();
        let forward = async {
            let mut count = 0u64;
            let started = tokio::time::Instant::now();
            let mut output_bytes = 0usize;
            // A cell that prints nothing for a while still sends something every few seconds,
            // so clients and proxies that give up on a silent request keep it.
            let mut keepalive =
                tokio::time::interval_at(started + KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL);
            loop {
                let (stream, text) = tokio::select! {
                    event = received.recv() => match event {
                        Some(event) => describe(event),
                        None => break,
                    },
                    _ = keepalive.tick() => (
                        "status",
                        format!(
                            "[running for {} s; {output_bytes} bytes of output so far]",
                            started.elapsed().as_secs()
                        ),
                    ),
                };
                count += 1;
                if stream != "status" {
                    output_bytes += text.len();
                    if let Some(task) = &task {
                        task.record(&text);
                    }
                }
                // Each piece is its own notification: none outgrows what clients accept.
                for piece in fit::notification_pieces(&text) {
                    if let Some(token) = &progress_token {
                        let _ = peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), count as f64)
                                    .with_message(piece.to_string()),
                            )
                            .await;
                    }
                    log_output(
                        &peer,
                        json!({"session_id": session_id, "stream": stream, "text": piece}),
                    )
                    .await;
                }
            }
        };
        let (outcome, ()) =
            tokio::join!(session.run(&params.code, timeout, events, &stop), forward);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => return Err(error.to_string()),
        };
        let status = outcome.status;
        let mut result = RunPythonCodeResult {
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
        let mut images = outcome.images;
        fit::fit_run_result(&mut result, &mut images, session.workspace())?;
        let structured = serde_json::to_value(&result).map_err(|e| e.to_string())?;
        let mut content = vec![ContentBlock::text(structured.to_string())];
        content.extend(
            images
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
            workspace_quota_mode: session.workspace().quota_mode(),
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
            oci_runtime: self.sessions.oci_runtime(),
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
        description = "Install Python packages with pip inside the session's container, where the kernel imports from (kept across kernel restarts). Takes package specifiers only (name, extras, version constraints); pip options, URLs and paths are refused."
    )]
    async fn install_dependencies(
        &self,
        Parameters(params): Parameters<InstallParams>,
        extensions: Extensions,
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
        let (task, stop) = running_task(&extensions);
        if let Some(task) = task {
            task.note(format!(
                "pip is installing {} for session {}, stopped after {} s",
                params.packages.join(" "),
                session.id,
                self.limits.install_timeout.as_secs()
            ));
        }
        let output = session
            .install(
                argv,
                &self.limits.installer_hosts,
                self.limits.install_timeout,
                &stop,
            )
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
}
