//! The `notebook` tool's server side, apart from MCP: `service` opens one session's notebook
//! in its turn and runs its actions, `store` keeps cell manifests and the index under
//! `outputs/notebooks/<id>/`, `export` renders `.ipynb` and `.html`, and `datasets` runs the
//! DuckDB dataset actions in the kernel. Files are touched only through the workspace's confined
//! operations; the kernel is reached only through the session's queue.

mod datasets;
mod export;
mod service;
mod store;

pub use datasets::{
    DatasetDescription, DatasetDropped, DatasetList, DatasetRegistered, QueryResult,
};
pub use export::{ExportTo, Exported};
pub use service::{CellRun, NotebookLimits, NotebookService, Reset};
pub use store::{CellManifest, NotebookId, NotebookIndex};
