//! A notebook's cells on disk: the notebook id, one manifest per executed cell and the index,
//! all under `outputs/notebooks/<id>/` in the session's workspace. It reads and writes only
//! through the workspace's confined file operations and never runs anything in a kernel.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::is_plain_name;
use crate::kernel::{DisplayBundle, ErrorInfo};
use crate::session::RunStatus;
use crate::workspace::{Workspace, WorkspaceError};

/// Largest manifest or index read back.
const MANIFEST_LIMIT: usize = 64 << 20;

/// Output text kept per stream in a manifest.
const STREAM_LIMIT: usize = 1 << 20;

/// Why a notebook file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("{path} is not a notebook file kernelbox can read: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not encode {path}: {source}")]
    Encode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("notebook {notebook_id} has no cell {index}; action cells lists them")]
    NoCell { notebook_id: String, index: usize },
}

/// A validated notebook id: 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotebookId(String);

impl NotebookId {
    /// The id, or `default` when none is given.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let value = value.unwrap_or("default");
        if is_plain_name(value) {
            Ok(Self(value.to_string()))
        } else {
            Err(format!(
                "invalid notebook_id {:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'",
                value.chars().take(80).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn dir(&self) -> String {
        format!("outputs/notebooks/{}", self.0)
    }

    fn index_path(&self) -> String {
        format!("{}/index.json", self.dir())
    }

    fn cell_path(&self, index: usize) -> String {
        format!("{}/cell_{index:04}.json", self.dir())
    }

    /// Where DataFrames and query results of this notebook go, as the kernel sees it.
    pub fn data_dir_in_kernel(&self) -> String {
        crate::workspace::in_kernel(&format!("outputs/data/{}", self.0))
    }
}

/// A DataFrame a cell saved, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SavedDataFrame {
    /// The variable holding it.
    pub name: String,
    pub rows: u64,
    pub cols: u64,
    /// Workspace-relative Parquet file (CSV when Parquet failed) with every row.
    pub path: String,
    /// Workspace-relative CSV of its first 50 rows.
    pub preview_path: String,
}

/// One executed cell, as stored in its manifest.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CellManifest {
    pub notebook_id: String,
    pub cell_index: usize,
    /// When the cell ran, seconds since the Unix epoch.
    pub created_at: f64,
    pub code: String,
    /// ok, error, timeout, interrupted or kernel_died.
    pub status: RunStatus,
    pub execution_count: Option<usize>,
    /// stdout, cut at 1 MiB.
    pub stdout: String,
    /// stderr and the traceback, cut at 1 MiB.
    pub stderr: String,
    /// `text/plain` of each result and display, in order.
    pub results: Vec<String>,
    /// Workspace-relative paths of saved display outputs.
    pub outputs: Vec<String>,
    /// Workspace-relative paths of files that appeared during the cell.
    pub new_files: Vec<String>,
    pub error: Option<ErrorInfo>,
    /// Every MIME bundle the kernel displayed, as sent.
    pub displays: Vec<DisplayBundle>,
    /// DataFrames saved with save_dfs.
    pub dataframes: Vec<SavedDataFrame>,
}

impl CellManifest {
    /// Keeps the stored streams bounded.
    pub fn clip_streams(&mut self) {
        for text in [&mut self.stdout, &mut self.stderr] {
            if text.len() > STREAM_LIMIT {
                let mut end = STREAM_LIMIT;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str("\n[output truncated]");
            }
        }
    }
}

/// A cell as the index lists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct CellEntry {
    pub cell_index: usize,
    /// When the cell ran, seconds since the Unix epoch.
    pub created_at: f64,
    pub status: Option<RunStatus>,
    /// How many display outputs it saved.
    pub n_outputs: usize,
    /// How many DataFrames it saved.
    pub n_dataframes: usize,
}

/// A notebook's cells, in the order they were recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NotebookIndex {
    pub notebook_id: String,
    pub cells: Vec<CellEntry>,
}

fn read_json<T: serde::de::DeserializeOwned>(
    workspace: &Workspace,
    path: &str,
) -> Result<Option<T>, StoreError> {
    match workspace.read(path, 0, MANIFEST_LIMIT) {
        Ok(file) => serde_json::from_slice(&file.bytes)
            .map(Some)
            .map_err(|source| StoreError::Unreadable {
                path: path.to_string(),
                source,
            }),
        Err(WorkspaceError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn write_json(
    workspace: &Workspace,
    path: &str,
    value: &impl Serialize,
) -> Result<String, StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode {
        path: path.to_string(),
        source,
    })?;
    Ok(workspace.write(path, &bytes, MANIFEST_LIMIT)?)
}

/// The notebook's index; empty when it has no cells yet.
pub fn index(workspace: &Workspace, id: &NotebookId) -> Result<NotebookIndex, StoreError> {
    Ok(
        read_json(workspace, &id.index_path())?.unwrap_or_else(|| NotebookIndex {
            notebook_id: id.as_str().to_string(),
            cells: Vec::new(),
        }),
    )
}

/// The index the next cell will get.
pub fn next_cell_index(workspace: &Workspace, id: &NotebookId) -> Result<usize, StoreError> {
    Ok(index(workspace, id)?
        .cells
        .iter()
        .map(|c| c.cell_index)
        .max()
        .unwrap_or(0)
        + 1)
}

/// Stores a cell's manifest and adds it to the index; returns the manifest's path.
pub fn record(
    workspace: &Workspace,
    id: &NotebookId,
    manifest: &CellManifest,
) -> Result<String, StoreError> {
    let path = write_json(workspace, &id.cell_path(manifest.cell_index), manifest)?;
    let mut index = index(workspace, id)?;
    index.cells.retain(|c| c.cell_index != manifest.cell_index);
    index.cells.push(CellEntry {
        cell_index: manifest.cell_index,
        created_at: manifest.created_at,
        status: Some(manifest.status),
        n_outputs: manifest.outputs.len(),
        n_dataframes: manifest.dataframes.len(),
    });
    write_json(workspace, &id.index_path(), &index)?;
    Ok(path)
}

/// One cell's manifest.
pub fn cell(
    workspace: &Workspace,
    id: &NotebookId,
    index: usize,
) -> Result<CellManifest, StoreError> {
    read_json(workspace, &id.cell_path(index))?.ok_or_else(|| StoreError::NoCell {
        notebook_id: id.as_str().to_string(),
        index,
    })
}

/// Forgets every cell (the kernel is not restarted). Returns how many were removed.
pub fn reset(workspace: &Workspace, id: &NotebookId) -> Result<usize, StoreError> {
    let index = index(workspace, id)?;
    for entry in &index.cells {
        match workspace.delete(&id.cell_path(entry.cell_index)) {
            Ok(()) | Err(WorkspaceError::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    match workspace.delete(&id.index_path()) {
        Ok(()) | Err(WorkspaceError::NotFound { .. }) => Ok(index.cells.len()),
        Err(error) => Err(error.into()),
    }
}

/// Every cell in order.
pub fn cells(workspace: &Workspace, id: &NotebookId) -> Result<Vec<CellManifest>, StoreError> {
    let mut entries = index(workspace, id)?.cells;
    entries.sort_by_key(|c| c.cell_index);
    entries
        .iter()
        .map(|entry| cell(workspace, id, entry.cell_index))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    /// A stored cell that printed, raised and displayed a plot.
    pub(in crate::notebook) fn manifest(index: usize) -> CellManifest {
        CellManifest {
            notebook_id: "nb".into(),
            cell_index: index,
            created_at: 1.0,
            code: "print('<b>')\n1/0".into(),
            status: RunStatus::Error,
            execution_count: Some(index),
            stdout: "<b>\n".into(),
            stderr: "Traceback\nZeroDivisionError: division by zero".into(),
            results: vec![],
            outputs: vec![],
            new_files: vec![],
            error: Some(ErrorInfo {
                ename: "ZeroDivisionError".into(),
                evalue: "division by zero".into(),
                traceback: vec![
                    "Traceback".into(),
                    "ZeroDivisionError: division by zero".into(),
                ],
            }),
            displays: vec![DisplayBundle {
                kind: "display_data".into(),
                data: serde_json::from_value(
                    json!({"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
                )
                .unwrap(),
                metadata: Default::default(),
            }],
            dataframes: vec![],
        }
    }

    #[test]
    fn notebook_ids_are_validated() {
        assert_eq!(NotebookId::parse(None).unwrap().as_str(), "default");
        assert!(NotebookId::parse(Some("../x")).is_err());
        assert!(NotebookId::parse(Some("")).is_err());
    }

    #[test]
    fn streams_are_clipped_on_a_character_boundary() {
        let mut cell = manifest(1);
        cell.stdout = "é".repeat(STREAM_LIMIT);
        cell.clip_streams();
        assert!(cell.stdout.ends_with("[output truncated]"));
        assert!(cell.stdout.len() <= STREAM_LIMIT + 20);
    }
}
