//! The notebook service: one session's notebook, opened in its turn (a session's notebook
//! actions run one at a time, so cell numbers and the index stay consistent). It runs cells
//! through the session's queue and records them, lists, reads, exports and resets them, and
//! runs the dataset actions (`datasets`). It knows nothing of MCP: requests arrive as plain
//! arguments and leave as typed results or a `NotebookError`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::{MutexGuard, mpsc};
use tokio_util::sync::CancellationToken;

use super::export::{self, ExportTo, Exported};
use super::store::{self, CellManifest, NotebookId, NotebookIndex, SavedDataFrame, StoreError};
use crate::kernel::{ErrorInfo, OutputEvent};
use crate::session::{RunStatus, Session, SessionError};
use crate::snippets;
use crate::workspace::Workspace;

/// Why a notebook action did not give its result.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    /// The request was wrong; the message names the field and what is allowed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] SessionError),
    /// kernelbox's own code in the kernel gave no answer the server can read.
    #[error("{0}")]
    Helper(String),
    /// The kernel refused a dataset action (an unknown dataset, a bad query).
    #[error("{action} failed: {detail}")]
    Dataset {
        action: &'static str,
        detail: String,
    },
    #[error("the notebook operation failed: {0}")]
    Blocking(#[source] tokio::task::JoinError),
}

/// What bounds notebook actions.
#[derive(Debug, Clone)]
pub struct NotebookLimits {
    /// How long a cell, and saving its DataFrames, may run.
    pub cell_timeout: Duration,
    /// How long a dataset action may run in the kernel.
    pub dataset_timeout: Duration,
    /// Largest cell source.
    pub max_code_bytes: usize,
    /// Largest file an export writes.
    pub max_export_bytes: usize,
}

/// A cell run and recorded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CellRun {
    /// "completed": the cell ran and was recorded; how it ended is run_status.
    pub status: String,
    /// ok, error, timeout, interrupted or kernel_died.
    pub run_status: RunStatus,
    pub notebook_id: String,
    pub cell_index: usize,
    /// Workspace-relative path of the cell's manifest.
    pub manifest: String,
    /// Workspace-relative files the cell produced: saved displays, then saved DataFrames.
    pub artifacts: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    /// `text/plain` of each result and display, in order.
    pub results: Vec<String>,
    /// The exception the cell raised, if any.
    pub error: Option<ErrorInfo>,
    /// DataFrames saved with save_dfs.
    pub dataframes: Vec<SavedDataFrame>,
}

/// A notebook whose cells were forgotten.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Reset {
    /// "reset".
    pub status: String,
    pub notebook_id: String,
    /// How many cells were forgotten.
    pub removed_cells: usize,
}

/// Opens notebooks of sessions under the server's limits.
#[derive(Debug, Clone)]
pub struct NotebookService {
    limits: NotebookLimits,
}

impl NotebookService {
    pub fn new(limits: NotebookLimits) -> Self {
        Self { limits }
    }

    /// The notebook `id` of `session`, once the session's earlier notebook actions are done.
    pub async fn open<'a>(&'a self, session: &'a Session, id: NotebookId) -> Notebook<'a> {
        Notebook {
            _turn: session.notebook_turn.lock().await,
            session,
            id,
            limits: &self.limits,
        }
    }
}

/// One notebook of one session, in its turn.
pub struct Notebook<'a> {
    _turn: MutexGuard<'a, ()>,
    session: &'a Session,
    id: NotebookId,
    limits: &'a NotebookLimits,
}

impl Notebook<'_> {
    pub fn id(&self) -> &NotebookId {
        &self.id
    }

    pub(super) fn limits(&self) -> &NotebookLimits {
        self.limits
    }

    /// Runs `code` as the next cell and records its manifest; with `save_dfs` also saves the
    /// session's DataFrames beside it. Output streams to `events`; `stop` stops the cell as
    /// its timeout would.
    pub async fn run(
        &self,
        code: &str,
        save_dfs: bool,
        events: mpsc::UnboundedSender<OutputEvent>,
        stop: &CancellationToken,
    ) -> Result<CellRun, NotebookError> {
        if code.trim().is_empty() {
            return Err(NotebookError::Invalid(
                "code is required for action run".to_string(),
            ));
        }
        if code.len() > self.limits.max_code_bytes {
            return Err(NotebookError::Invalid(format!(
                "code is {} bytes; at most {} bytes are allowed",
                code.len(),
                self.limits.max_code_bytes
            )));
        }
        let cell_index = self.on_disk(store::next_cell_index).await?;
        let outcome = self
            .session
            .run(code, self.limits.cell_timeout, events, stop)
            .await?;
        let dataframes = if save_dfs {
            let snippet = snippets::save_dataframes(
                &self.id.data_dir_in_kernel(),
                &format!("cell_{cell_index:04}"),
            );
            self.helper::<SavedDataFrames>(&snippet, self.limits.cell_timeout)
                .await?
                .dataframes
        } else {
            Vec::new()
        };
        let mut manifest = CellManifest {
            notebook_id: self.id.as_str().to_string(),
            cell_index,
            created_at: chrono::Utc::now().timestamp_micros() as f64 / 1e6,
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
        let path = self
            .on_disk(move |workspace, id| store::record(workspace, id, &stored))
            .await?;
        let artifacts = manifest
            .outputs
            .iter()
            .chain(manifest.dataframes.iter().map(|df| &df.path))
            .cloned()
            .collect();
        Ok(CellRun {
            status: "completed".to_string(),
            run_status: manifest.status,
            notebook_id: manifest.notebook_id,
            cell_index,
            manifest: path,
            artifacts,
            stdout: manifest.stdout,
            stderr: manifest.stderr,
            results: manifest.results,
            error: manifest.error,
            dataframes: manifest.dataframes,
        })
    }

    /// The notebook's index.
    pub async fn cells(&self) -> Result<NotebookIndex, NotebookError> {
        self.on_disk(store::index).await
    }

    /// One cell's manifest.
    pub async fn cell(&self, index: usize) -> Result<CellManifest, NotebookError> {
        self.on_disk(move |workspace, id| store::cell(workspace, id, index))
            .await
    }

    /// Writes the notebook as `.ipynb` and/or `.html`.
    pub async fn export(&self, to: ExportTo) -> Result<Exported, NotebookError> {
        let max_bytes = self.limits.max_export_bytes;
        self.on_disk(move |workspace, id| export::export(workspace, id, to, max_bytes))
            .await
    }

    /// Forgets every cell; the kernel and its variables stay.
    pub async fn reset(&self) -> Result<Reset, NotebookError> {
        let removed_cells = self.on_disk(store::reset).await?;
        Ok(Reset {
            status: "reset".to_string(),
            notebook_id: self.id.as_str().to_string(),
            removed_cells,
        })
    }

    /// Runs a blocking store operation on this notebook off the async threads.
    async fn on_disk<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Workspace, &NotebookId) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, NotebookError> {
        let (workspace, id) = (self.session.workspace().clone(), self.id.clone());
        tokio::task::spawn_blocking(move || operation(&workspace, &id))
            .await
            .map_err(NotebookError::Blocking)?
            .map_err(Into::into)
    }

    /// Runs kernelbox's own snippet in the session's queue and reads the JSON it printed.
    pub(super) async fn helper<T: serde::de::DeserializeOwned>(
        &self,
        code: &str,
        timeout: Duration,
    ) -> Result<T, NotebookError> {
        self.session
            .run_helper(code, timeout)
            .await?
            .parse()
            .map_err(NotebookError::Helper)
    }
}

/// What `snippets::save_dataframes` prints.
#[derive(serde::Deserialize)]
struct SavedDataFrames {
    dataframes: Vec<SavedDataFrame>,
}
