//! Workspace tools: the layout, listing, reading, writing and deleting files, saving and
//! running scripts. Every path goes through the workspace's confined operations, run off the
//! async threads; scripts run inside the session's container, never on the host.

use std::time::Duration;

use base64::Engine as _;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::Extensions;
use rmcp::{tool, tool_router};

use super::{KernelboxServer, Refusal};
use crate::mcp::fit;
use crate::mcp::params::{
    DeleteFileParams, ListFilesParams, Parameters, ReadFileParams, RunScriptParams,
    SaveScriptParams, SessionParams, WriteFileParams,
};
use crate::mcp::results::{
    DeleteFileResult, ListFilesResult, ReadFileResult, RunScriptResult, SaveScriptResult,
    WorkspaceInfoResult, WriteFileResult,
};
use crate::mcp::tasks::running_task;
use crate::snippets::PACKAGES_DIR;
use crate::workspace::{self, ListOptions, Listing, WorkspaceError};

/// Runs a workspace operation off the async threads; its error becomes the refusal text.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(error) => Err(format!("the file operation failed: {error}")),
    }
}

#[tool_router(router = file_tools, vis = "pub(super)")]
impl KernelboxServer {
    #[tool(
        description = "The session's workspace layout, as paths inside the kernel: workspace, scripts, outputs, uploads, and where installed packages go."
    )]
    async fn get_workspace_info(
        &self,
        Parameters(params): Parameters<SessionParams>,
    ) -> Result<Json<WorkspaceInfoResult>, Refusal> {
        let session = self.session(params.session_id.as_deref())?;
        Ok(Json(WorkspaceInfoResult {
            workspace: workspace::IN_KERNEL.to_string(),
            scripts: workspace::in_kernel("scripts"),
            outputs: workspace::in_kernel("outputs"),
            uploads: workspace::in_kernel("uploads"),
            packages: PACKAGES_DIR.to_string(),
            session_id: session.id.to_string(),
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
        let offset = params.offset;
        let file = blocking(move || workspace.read(&path, offset, max_bytes)).await?;
        if params.max_bytes.is_none() && file.truncated {
            return Err(format!(
                "{} is {} bytes, over the read limit of {limit} bytes; pass max_bytes (and offset) to read it in parts, or download it over HTTP",
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
        let mut result = ReadFileResult {
            text,
            base64,
            path: params.path,
            size: file.size,
            truncated: file.truncated,
            offset,
            next_offset: None,
            note: None,
        };
        let cut = fit::fit_read(&mut result);
        if result.truncated || cut {
            let next = offset.min(file.size) + result.bytes_held();
            result.truncated = true;
            result.next_offset = Some(next);
            if cut {
                result.note = Some(format!(
                    "this read was cut to fit one MCP message ({} KiB): it holds {} bytes from offset {offset}; call read_file with offset {next} for the rest, or download the file over HTTP (GET /files/download/{}?session_id={})",
                    fit::MAX_MESSAGE_BYTES >> 10,
                    result.bytes_held(),
                    result.path,
                    session.id
                ));
            }
        }
        Ok(Json(result))
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
        extensions: Extensions,
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
            workspace::in_kernel(&script),
        ];
        argv.extend(params.args.unwrap_or_default());
        let (task, stop) = running_task(&extensions);
        if let Some(task) = task {
            task.note(format!(
                "running {script} in session {}, killed after {} s",
                session.id, params.timeout
            ));
        }
        let before = session.workspace().snapshot();
        let output = session
            .exec(argv, Duration::from_secs_f64(params.timeout), &stop)
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
}
