//! Tool results: the seed's field names first, kernelbox's additions after.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::kernel::{DisplayBundle, ErrorInfo};
use crate::session::RunStatus;

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
    /// ok, error, timeout, interrupted or kernel_died.
    pub status: RunStatus,
    /// The kernel's execution counter for this cell.
    pub execution_count: Option<usize>,
    /// The exception the cell raised, if any.
    pub error: Option<ErrorInfo>,
    /// Every MIME bundle the kernel displayed, as sent.
    pub displays: Vec<DisplayBundle>,
    /// Session the cell ran in.
    pub session_id: String,
    /// What happened to the kernel beyond the cell: restarted, died and why.
    pub kernel_note: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PingResult {
    pub ok: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionMetadata {
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
    pub execution_count: usize,
    /// Seconds since the kernel started (0 when none runs).
    pub uptime: f64,
    pub metadata: SessionMetadata,
    pub executions: u64,
    pub kernel_starts: u64,
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
    pub timestamp: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InterruptKernelResult {
    pub session_id: String,
    /// Whether a cell was running and was interrupted.
    pub interrupted: bool,
    pub timestamp: f64,
}
