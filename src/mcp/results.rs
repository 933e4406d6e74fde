//! Tool results: the seed's field names first, kernelbox's additions after.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::kernel::{DisplayBundle, ErrorInfo};
use crate::notebook::{
    CellManifest, CellRun, DatasetDescription, DatasetDropped, DatasetList, DatasetRegistered,
    Exported, NotebookIndex, QueryResult, Reset,
};
use crate::session::RunStatus;
use crate::snippets::Variable;
use crate::workspace::QuotaMode;

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunPythonCodeResult {
    /// Everything the cell printed to stdout.
    pub stdout: String,
    /// Everything printed to stderr, and the traceback of an exception.
    pub stderr: String,
    /// `text/plain` of each result and display, in order.
    pub results: Vec<String>,
    /// Workspace-relative paths of saved display outputs (plots as PNG under outputs/).
    pub outputs: Vec<String>,
    /// Workspace-relative paths of files that appeared during the cell.
    pub new_files: Vec<String>,
    /// Wall time of the cell in seconds.
    pub execution_time: f64,
    /// ok, error, timeout, interrupted, kernel_died or quota_exceeded.
    pub status: RunStatus,
    /// The kernel's execution counter for this cell.
    pub execution_count: Option<usize>,
    /// The exception the cell raised, if any.
    pub error: Option<ErrorInfo>,
    /// Every MIME bundle the kernel displayed, as sent.
    pub displays: Vec<DisplayBundle>,
    /// Session the cell ran in.
    pub session_id: String,
    /// What happened to the kernel beyond the cell: restarted, died and why; where long
    /// output went.
    pub kernel_note: Option<String>,
    /// stdout or stderr went past the per-call cap and is cut short here.
    pub truncated: bool,
    /// Workspace-relative files holding the full stdout and stderr when they were cut short.
    pub output_files: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PingResult {
    pub ok: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionMetadata {
    /// The template its kernels are made from, and their language.
    pub template: String,
    pub language: String,
    pub description: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreateSessionResult {
    pub session_id: String,
    pub status: String,
    pub metadata: SessionMetadata,
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SwitchSessionResult {
    pub previous_session: String,
    pub current_session: String,
    pub status: String,
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionSummary {
    /// A kernel is running for the session.
    pub active: bool,
    /// This is the client's current session.
    pub current: bool,
    /// A cell is running now.
    pub busy: bool,
    /// The kernel may reach the network.
    pub egress: bool,
    /// What the kernel may reach through the egress proxy.
    pub egress_allow: Vec<String>,
    pub execution_count: usize,
    /// Seconds since the kernel started (0 when none runs).
    pub uptime: f64,
    pub metadata: SessionMetadata,
    pub executions: u64,
    pub kernel_starts: u64,
    /// Seconds since the session was created or last ran a cell.
    pub idle_seconds: f64,
    /// Seconds until the lifecycle limits end the session, if any apply.
    pub expires_in_seconds: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListTemplatesResult {
    /// The templates you may create sessions from.
    pub templates: Vec<TemplateSummary>,
    /// The template a session gets when create_session names none.
    pub default_template: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TemplateSummary {
    pub name: String,
    pub language: String,
    pub description: String,
    /// The caps its kernels get unless create_session asks for less.
    pub memory_mb: f64,
    pub cpus: f64,
    pub pids_limit: i64,
    /// `ready`, `checking` (the start-time check of its image runs) or `broken`.
    pub status: String,
    /// Why a broken template cannot run kernels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListSessionsResult {
    pub sessions: BTreeMap<String, SessionSummary>,
    pub active_session: String,
    pub total_sessions: usize,
    pub max_sessions: usize,
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteSessionResult {
    pub session_id: String,
    pub status: String,
    pub was_active: bool,
    pub workspace_removed: bool,
    /// The client's current session after the delete, when the deleted one was current.
    pub new_active_session: Option<String>,
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RestartKernelResult {
    pub restarted: bool,
    pub session_id: String,
    pub preserve_state: bool,
    /// Variables the old kernel saved.
    pub preserved_vars: usize,
    /// Variables the new kernel loaded.
    pub restored_vars: usize,
    /// Variables that could not be pickled and were dropped.
    pub skipped_vars: Vec<String>,
    /// Why state could not be carried over, if it could not.
    pub note: Option<String>,
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListVariablesResult {
    /// Names of the user's globals (no private names, no modules), sorted.
    pub variables: Vec<String>,
    /// Each variable's name, type and a short repr.
    pub details: Vec<Variable>,
    pub session_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct KernelProcess {
    pub memory_mb: Option<f64>,
    pub memory_limit_mb: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub pids: Option<u64>,
    pub pids_limit: Option<u64>,
    /// Why the figures are missing, when they are.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct KernelLimits {
    pub memory_mb: f64,
    pub cpus: f64,
    pub pids: i64,
    pub open_files: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct KernelHealthResult {
    /// alive, or dead when no kernel runs.
    pub status: String,
    pub session_id: String,
    /// Seconds since the kernel started.
    pub uptime: f64,
    pub execution_count: usize,
    /// Seconds the last cell took.
    pub last_execution_time: Option<f64>,
    /// Mean seconds per cell.
    pub average_execution_time: f64,
    pub busy: bool,
    /// The container's figures from the engine.
    pub kernel_process: KernelProcess,
    pub limits: KernelLimits,
    /// The OCI runtime the kernel runs under (`runc`, `runsc` for gVisor), where known.
    pub oci_runtime: Option<String>,
    /// Bytes the workspace holds, and what it may hold.
    pub workspace_used_mb: f64,
    pub workspace_quota_mb: f64,
    /// How kernel writes are held to the quota: `mount` (the workspace is a filesystem of that
    /// size) or `watchdog` (a kernel past it is stopped).
    pub workspace_quota_mode: Option<QuotaMode>,
    pub metadata: SessionMetadata,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ResponsivenessResult {
    pub responsive: bool,
    /// Seconds until the answer, or until giving up.
    pub response_time: f64,
    pub timeout: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkspaceInfoResult {
    /// Paths as the kernel sees them.
    pub workspace: String,
    pub scripts: String,
    pub outputs: String,
    pub uploads: String,
    /// Where install_dependencies puts packages (on the kernel's PYTHONPATH).
    pub packages: String,
    pub session_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunScriptResult {
    pub stdout: String,
    pub stderr: String,
    /// The script's exit code (137 when killed at the timeout).
    pub returncode: Option<i64>,
    pub new_files: Vec<String>,
    pub timed_out: bool,
    /// Output past the per-stream limit was dropped.
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InstallResult {
    pub returncode: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    /// Where the packages went, as the kernel sees it.
    pub target: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InterruptKernelResult {
    pub session_id: String,
    /// Whether a cell was running and was interrupted.
    pub interrupted: bool,
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListFilesResult {
    /// The listed directory, workspace-relative ("." for the root).
    pub root: String,
    /// Flat listing: workspace-relative paths, sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    /// Tree listing: an ASCII tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    /// The listing stopped at its entry cap.
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadFileResult {
    /// The content, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The content base64-encoded, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    pub path: String,
    /// The file's full size in bytes.
    pub size: u64,
    /// The file holds more after what was read.
    pub truncated: bool,
    /// The byte this read started at.
    pub offset: u64,
    /// Where the next read goes on, when the file holds more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// Why less was read than asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ReadFileResult {
    /// How many of the file's bytes this result holds.
    pub fn bytes_held(&self) -> u64 {
        match (&self.text, &self.base64) {
            (Some(text), _) => text.len() as u64,
            (None, Some(base64)) => {
                let padding = base64.bytes().rev().take_while(|&b| b == b'=').count();
                (base64.len() / 4 * 3 - padding) as u64
            }
            (None, None) => 0,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WriteFileResult {
    /// Workspace-relative path written.
    pub path: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteFileResult {
    pub success: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SaveScriptResult {
    /// Workspace-relative path of the script.
    pub script: String,
}

/// What a `notebook` action returns: each action has its own shape, told apart by its
/// fields (the wire carries no tag).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(extend("type" = "object"))]
pub enum NotebookResult {
    /// run
    Ran(CellRun),
    /// cells
    Cells(NotebookIndex),
    /// cell
    Cell(CellManifest),
    /// export
    Exported(Exported),
    /// reset
    Reset(Reset),
    /// datasets.register
    DatasetRegistered(DatasetRegistered),
    /// datasets.list
    Datasets(DatasetList),
    /// datasets.describe
    DatasetDescribed(DatasetDescription),
    /// datasets.drop
    DatasetDropped(DatasetDropped),
    /// datasets.sql
    Queried(QueryResult),
}
