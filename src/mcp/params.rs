//! Tool arguments as the agent sends them. Field docs are what the agent reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::egress::EgressRule;
use crate::notebook::ExportTo;

mod notebook;

use crate::units::{ByteSize, Cpus, Pids};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunPythonCodeParams {
    /// Python source to execute in the session's persistent kernel.
    pub code: String,
    /// Session to run in; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Seconds to wait before interrupting the cell (default 30; the server sets the maximum).
    #[serde(default)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionParams {
    /// Id for the new session (1-64 of A-Z a-z 0-9 _ -); generated when omitted.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Free text kept with the session and shown by list_sessions.
    #[serde(default)]
    pub description: Option<String>,
    /// Let the kernel reach the network (default false; the server's policy and your token
    /// must allow it). install_dependencies works without it.
    #[serde(default)]
    pub egress: bool,
    /// What the kernel may reach, and nothing else, through kernelbox's egress proxy (its
    /// HTTP_PROXY and HTTPS_PROXY: pip, urllib, requests and curl use it): host names
    /// ("pypi.org"), subdomain wildcards ("*.example.com") or IPv4 CIDRs ("10.0.0.0/8"), each
    /// with an optional ":port" (80 and 443 when none). At most what the server and your token
    /// allow; empty (the default) reaches nothing.
    #[serde(default)]
    pub egress_allow: Vec<EgressRule>,
    /// Memory for this session's kernel, such as "512m" (at least "1m"), at most the server's.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// CPUs for this session's kernel (0.01 to 512), at most the server's.
    #[serde(default)]
    pub cpus: Option<Cpus>,
    /// Processes for this session's kernel (16 to 65536), at most the server's.
    #[serde(default)]
    pub pids_limit: Option<Pids>,
    /// The kernel template (list_templates shows them): "python" (the default), "bash", or
    /// one of the server's own.
    #[serde(default)]
    pub template: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchSessionParams {
    /// Session that later calls without a session_id use.
    pub session_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteSessionParams {
    /// Session to end; its container is removed.
    pub session_id: String,
    /// Also delete the session's workspace files (default false: they are kept).
    #[serde(default)]
    pub remove_workspace: bool,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionParams {
    /// Session to act on; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartKernelParams {
    /// Session to restart; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Carry picklable variables over to the new kernel (default false).
    #[serde(default)]
    pub preserve_state: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionParams {
    /// The code to complete in.
    pub code: String,
    /// Cursor position in `code`, in characters.
    pub cursor_pos: usize,
    /// Session to ask; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectParams {
    /// The code containing the object to inspect.
    pub code: String,
    /// Cursor position in `code`, in characters.
    pub cursor_pos: usize,
    /// 0 for the signature and docstring, 1 to add the source.
    #[serde(default)]
    pub detail_level: usize,
    /// Session to ask; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsivenessParams {
    /// Seconds to wait for the kernel's answer (default 5).
    #[serde(default = "default_responsiveness_timeout")]
    pub timeout: f64,
    /// Session to check; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

fn default_responsiveness_timeout() -> f64 {
    5.0
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunScriptParams {
    /// Workspace-relative path of the Python script, for example scripts/job.py.
    pub path: String,
    /// Command-line arguments for the script.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Seconds before the script is killed (default 120).
    #[serde(default = "default_script_timeout")]
    pub timeout: f64,
    /// Session whose container runs the script; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

fn default_script_timeout() -> f64 {
    120.0
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallParams {
    /// Package specifiers such as requests or pandas>=2,<3 (no pip options, URLs or paths).
    pub packages: Vec<String>,
    /// Session to install into; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesParams {
    /// Workspace-relative directory to list; the workspace root when omitted.
    #[serde(default)]
    pub path: Option<String>,
    /// List all descendants, not only direct children (default false).
    #[serde(default)]
    pub recursive: bool,
    /// Render an ASCII tree in `tree` instead of a flat list (default false).
    #[serde(default)]
    pub tree: bool,
    /// Depth cap for recursive and tree listings (default 3; null for no cap).
    #[serde(default = "default_max_depth")]
    pub max_depth: Option<usize>,
    /// Include files (default true).
    #[serde(default = "yes")]
    pub include_files: bool,
    /// Include directories (default true).
    #[serde(default = "yes")]
    pub include_dirs: bool,
    /// Session whose workspace to list; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

fn default_max_depth() -> Option<usize> {
    Some(3)
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileParams {
    /// Workspace-relative path of the file.
    pub path: String,
    /// Read at most this many bytes (the server caps it too).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// Start reading at this byte (default 0): a result cut to fit one message says where
    /// to go on in `next_offset`.
    #[serde(default)]
    pub offset: u64,
    /// Session whose workspace to read; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileParams {
    /// Workspace-relative destination; missing parent directories are created.
    pub path: String,
    /// Text to write, or base64 data when binary_base64 is true.
    pub content: String,
    /// Decode `content` as base64 and write the bytes (default false).
    #[serde(default)]
    pub binary_base64: bool,
    /// Session whose workspace to write; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteFileParams {
    /// Workspace-relative path of the file (or empty directory) to delete.
    pub filename: String,
    /// Session whose workspace to change; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveScriptParams {
    /// Script file name under scripts/; `.py` is appended when missing.
    pub name: String,
    /// Python source code.
    pub content: String,
    /// Session whose workspace to write; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Arguments of the `notebook` tool: the notebook and session, and one action with its own
/// fields. Clients send them flat (`{"action": "run", "code": ..., "notebook_id": ...}`), as
/// python-mcp-server's clients do; a field another action uses is accepted and ignored, a field
/// no action uses is refused. The input schema lists every field once, each saying which
/// actions read it (see `notebook_params`).
#[derive(Debug)]
pub struct NotebookParams {
    pub target: NotebookTarget,
    pub action: NotebookAction,
}

/// Which notebook of which session a `notebook` call acts on.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct NotebookTarget {
    /// Notebook to act on (1-64 of A-Z a-z 0-9 _ -); "default" when omitted.
    #[serde(default)]
    pub notebook_id: Option<String>,
    /// Session to act on; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// One `notebook` action and the fields it reads.
#[derive(Debug, Deserialize, JsonSchema)]
pub enum NotebookAction {
    /// Execute `code` as the next numbered cell; its manifest goes under outputs/notebooks/.
    #[serde(rename = "run")]
    Run {
        /// the cell's code.
        code: String,
        /// also save every pandas DataFrame (Parquet, plus a CSV preview) under outputs/data/.
        #[serde(default)]
        save_dfs: bool,
    },
    /// The notebook's cells.
    #[serde(rename = "cells")]
    Cells {},
    /// One cell's manifest.
    #[serde(rename = "cell")]
    Cell {
        /// which cell.
        cell_index: usize,
    },
    /// Write the notebook as .ipynb (with images) and/or .html.
    #[serde(rename = "export")]
    Export {
        /// ipynb, html or both (default both).
        #[serde(default)]
        export_to: ExportTo,
    },
    /// Forget the cells; the kernel keeps running.
    #[serde(rename = "reset")]
    Reset {},
    /// Make workspace files queryable as a dataset.
    #[serde(rename = "datasets.register")]
    RegisterDataset {
        /// the dataset (a SQL identifier).
        dataset_name: String,
        /// workspace-relative files or globs.
        paths: Vec<String>,
        /// parquet, csv or json (guessed from the first path when omitted).
        #[serde(default)]
        format: Option<String>,
        /// the engine; only duckdb.
        #[serde(default)]
        engine: Engine,
    },
    /// The registered datasets.
    #[serde(rename = "datasets.list")]
    ListDatasets {
        /// the engine; only duckdb.
        #[serde(default)]
        engine: Engine,
    },
    /// A dataset's columns and first rows.
    #[serde(rename = "datasets.describe")]
    DescribeDataset {
        /// the dataset (a SQL identifier).
        dataset_name: String,
        /// the engine; only duckdb.
        #[serde(default)]
        engine: Engine,
    },
    /// Forget a dataset; its files stay.
    #[serde(rename = "datasets.drop")]
    DropDataset {
        /// the dataset (a SQL identifier).
        dataset_name: String,
        /// the engine; only duckdb.
        #[serde(default)]
        engine: Engine,
    },
    /// Query the registered datasets with SQL.
    #[serde(rename = "datasets.sql")]
    Query {
        /// the query; it can name registered datasets as tables.
        query: String,
        /// rows returned inline (1 to 10000, default 1000); all rows go to a file.
        #[serde(default = "default_limit_preview")]
        limit_preview: usize,
        /// the engine; only duckdb.
        #[serde(default)]
        engine: Engine,
    },
}

/// The engine behind the dataset actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Duckdb,
}

fn default_limit_preview() -> usize {
    1000
}

impl<'de> Deserialize<'de> for NotebookParams {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = serde_json::Map::deserialize(deserializer)?;
        notebook::decode(fields).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for NotebookParams {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NotebookParams".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        notebook::schema(generator)
    }
}

/// Tool arguments, parsed so that an error names the offending field (`code: invalid type:
/// integer, expected a string`), which serde alone does not. Named `Parameters` so rmcp's
/// `#[tool]` macro derives the input schema from `T`. The message keeps rmcp's prefix, so the
/// router reports it as a tool error the model can read and correct.
pub struct Parameters<T>(pub T);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T>
    rmcp::handler::server::common::FromContextPart<
        rmcp::handler::server::tool::ToolCallContext<'_, S>,
    > for Parameters<T>
where
    T: serde::de::DeserializeOwned,
{
    fn from_context_part(
        context: &mut rmcp::handler::server::tool::ToolCallContext<'_, S>,
    ) -> Result<Self, rmcp::ErrorData> {
        let arguments = serde_json::Value::Object(context.arguments.take().unwrap_or_default());
        serde_path_to_error::deserialize(arguments)
            .map(Parameters)
            .map_err(|error| {
                let field = error.path().to_string();
                let message = if field == "." {
                    format!("failed to deserialize parameters: {}", error.inner())
                } else {
                    format!(
                        "failed to deserialize parameters: {field}: {}",
                        error.inner()
                    )
                };
                rmcp::ErrorData::invalid_params(message, None)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
        serde_path_to_error::deserialize::<_, T>(value)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    #[test]
    fn wrong_types_name_the_field() {
        let error = parse::<RunPythonCodeParams>(serde_json::json!({"code": 5})).unwrap_err();
        assert!(error.starts_with("code:"), "{error}");
        let error =
            parse::<RunPythonCodeParams>(serde_json::json!({"code": "1", "timeout": "soon"}))
                .unwrap_err();
        assert!(error.starts_with("timeout:"), "{error}");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let error = parse::<RunPythonCodeParams>(serde_json::json!({})).unwrap_err();
        assert!(error.contains("missing field `code`"), "{error}");
        let error =
            parse::<RunPythonCodeParams>(serde_json::json!({"code": "1", "sesion_id": "x"}))
                .unwrap_err();
        assert!(error.contains("unknown field `sesion_id`"), "{error}");
    }

    #[test]
    fn create_session_limits_follow_the_flags_rules_and_name_the_field() {
        let params = parse::<CreateSessionParams>(
            serde_json::json!({"memory": "256m", "cpus": 0.5, "pids_limit": 64}),
        )
        .unwrap();
        assert_eq!(params.memory.map(ByteSize::bytes), Some(256 << 20));
        assert_eq!(params.cpus.map(Cpus::nano), Some(500_000_000));
        assert_eq!(params.pids_limit.map(Pids::get), Some(64));
        for (field, value, allowed) in [
            ("memory", serde_json::json!("1k"), "at least 1m"),
            ("memory", serde_json::json!("lots"), "512m or 2g"),
            ("cpus", serde_json::json!(-1), "between 0.01 and 512"),
            ("pids_limit", serde_json::json!(8), "between 16 and 65536"),
        ] {
            let error =
                parse::<CreateSessionParams>(serde_json::json!({ field: value })).unwrap_err();
            assert!(error.starts_with(&format!("{field}:")), "{error}");
            assert!(error.contains(allowed), "{error}");
        }
    }
}
