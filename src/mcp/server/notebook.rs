//! The `notebook` tool: decodes the action, opens the session's notebook in its turn, calls
//! the notebook service and hands back its typed result. Everything the actions do lives in
//! `crate::notebook`.

use rmcp::handler::server::wrapper::Json;
use rmcp::model::Extensions;
use rmcp::{tool, tool_router};
use tokio::sync::mpsc;

use super::kernel::describe;
use super::{KernelboxServer, Refusal};
use crate::mcp::params::{Engine, NotebookAction, NotebookParams, Parameters};
use crate::mcp::results::NotebookResult;
use crate::mcp::tasks::running_task;
use crate::notebook::NotebookId;

#[tool_router(router = notebook_tools, vis = "pub(super)")]
impl KernelboxServer {
    #[tool(
        description = "Notebook surface over the session's kernel. Actions: run (execute `code` as a numbered cell, record its manifest under outputs/notebooks/, save_dfs also saves DataFrames), cells, cell (cell_index), export (.ipynb with images and .html; export_to ipynb|html|both), reset (forget the cells; the kernel keeps running), datasets.register (dataset_name, paths, format), datasets.list, datasets.describe, datasets.drop, datasets.sql (query over registered datasets with DuckDB; limit_preview rows inline, all rows to a Parquet file)."
    )]
    async fn notebook(
        &self,
        Parameters(NotebookParams { target, action }): Parameters<NotebookParams>,
        extensions: Extensions,
    ) -> Result<Json<NotebookResult>, Refusal> {
        let id = NotebookId::parse(target.notebook_id.as_deref())?;
        let session = self.session(target.session_id.as_deref())?;
        let notebook = self.notebooks.open(&session, id).await;
        let result = match action {
            NotebookAction::Run { code, save_dfs } => {
                // Run as a task, the cell's output so far is the task's; otherwise it is
                // only in the result.
                let (task, stop) = running_task(&extensions);
                let (events, mut received) = mpsc::unbounded_channel();
                let forward = async {
                    while let Some(event) = received.recv().await {
                        if let Some(task) = &task {
                            task.record(&describe(event).1);
                        }
                    }
                };
                let (ran, ()) = tokio::join!(notebook.run(&code, save_dfs, events, &stop), forward);
                ran.map(NotebookResult::Ran)
            }
            NotebookAction::Cells {} => notebook.cells().await.map(NotebookResult::Cells),
            NotebookAction::Cell { cell_index } => {
                notebook.cell(cell_index).await.map(NotebookResult::Cell)
            }
            NotebookAction::Export { export_to } => notebook
                .export(export_to)
                .await
                .map(NotebookResult::Exported),
            NotebookAction::Reset {} => notebook.reset().await.map(NotebookResult::Reset),
            NotebookAction::RegisterDataset {
                dataset_name,
                paths,
                format,
                engine: Engine::Duckdb,
            } => notebook
                .register_dataset(&dataset_name, &paths, format.as_deref())
                .await
                .map(NotebookResult::DatasetRegistered),
            NotebookAction::ListDatasets {
                engine: Engine::Duckdb,
            } => notebook.datasets().await.map(NotebookResult::Datasets),
            NotebookAction::DescribeDataset {
                dataset_name,
                engine: Engine::Duckdb,
            } => notebook
                .describe_dataset(&dataset_name)
                .await
                .map(NotebookResult::DatasetDescribed),
            NotebookAction::DropDataset {
                dataset_name,
                engine: Engine::Duckdb,
            } => notebook
                .drop_dataset(&dataset_name)
                .await
                .map(NotebookResult::DatasetDropped),
            NotebookAction::Query {
                query,
                limit_preview,
                engine: Engine::Duckdb,
            } => notebook
                .query(&query, limit_preview)
                .await
                .map(NotebookResult::Queried),
        };
        result.map(Json).map_err(|error| error.to_string())
    }
}
