//! The `notebook` tool's server side: notebook ids and dataset names, the cell manifests and
//! index kept under `outputs/notebooks/<id>/` in the session's workspace, and exporting a
//! notebook to `.ipynb` (images included) and to a self-contained `.html`. It reads and writes
//! only through the workspace's confined file operations and runs nothing in the kernel; the
//! kernel side of datasets lives in `snippets`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::is_plain_name;
use crate::kernel::{DisplayBundle, ErrorInfo};
use crate::session::RunStatus;
use crate::workspace::{Workspace, WorkspaceError};

/// Largest manifest or index read back.
const MANIFEST_LIMIT: usize = 64 << 20;

/// Output text kept per stream in a manifest.
const STREAM_LIMIT: usize = 1 << 20;

/// A validated notebook id: 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotebookId(String);

impl NotebookId {
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
        format!("/workspace/outputs/data/{}", self.0)
    }
}

/// A validated dataset name: a SQL identifier, `[A-Za-z_][A-Za-z0-9_]{0,63}`.
pub fn dataset_name(value: Option<&str>) -> Result<String, String> {
    let value = value.ok_or("dataset_name is required for this action")?;
    let mut chars = value.chars();
    let valid = value.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "invalid dataset_name {:?}: start with a letter or '_', then letters, digits or '_', at most 64",
            value.chars().take(80).collect::<String>()
        ))
    }
}

/// Workspace-relative data paths (globs allowed) as the kernel sees them.
pub fn dataset_paths(paths: Option<&[String]>) -> Result<Vec<String>, String> {
    let paths = paths
        .filter(|p| !p.is_empty())
        .ok_or("paths is required for datasets.register: workspace-relative files or globs")?;
    paths
        .iter()
        .map(|path| {
            let leaves = path.starts_with('/')
                || path.split('/').any(|part| part == "..")
                || path.contains('\0')
                || path.trim().is_empty();
            if leaves {
                Err(format!(
                    "path {path:?} must be workspace-relative without '..', for example uploads/sales.csv or data/*.parquet"
                ))
            } else {
                Ok(format!("/workspace/{}", path.trim_start_matches("./")))
            }
        })
        .collect()
}

/// The reader for `format`, or one guessed from the first path's extension.
pub fn dataset_format(format: Option<&str>, first_path: &str) -> Result<String, String> {
    let guessed = first_path.rsplit('.').next().unwrap_or_default();
    let format = format.unwrap_or(guessed).to_ascii_lowercase();
    match format.as_str() {
        "parquet" | "csv" | "json" => Ok(format),
        _ => Err(format!(
            "format {format:?} is not supported: use parquet, csv or json"
        )),
    }
}

/// One executed cell, as stored in its manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellManifest {
    pub notebook_id: String,
    pub cell_index: usize,
    pub created_at: f64,
    pub code: String,
    pub status: RunStatus,
    pub execution_count: Option<usize>,
    pub stdout: String,
    pub stderr: String,
    pub results: Vec<String>,
    pub outputs: Vec<String>,
    pub new_files: Vec<String>,
    pub error: Option<ErrorInfo>,
    pub displays: Vec<DisplayBundle>,
    pub dataframes: Vec<Value>,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CellEntry {
    pub cell_index: usize,
    pub created_at: f64,
    pub status: Option<RunStatus>,
    pub n_outputs: usize,
    pub n_dataframes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotebookIndex {
    pub notebook_id: String,
    pub cells: Vec<CellEntry>,
}

fn read_json<T: serde::de::DeserializeOwned>(
    workspace: &Workspace,
    path: &str,
) -> Result<Option<T>, String> {
    match workspace.read(path, MANIFEST_LIMIT) {
        Ok(file) => serde_json::from_slice(&file.bytes)
            .map(Some)
            .map_err(|e| format!("{path} is not a notebook file kernelbox can read: {e}")),
        Err(WorkspaceError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

fn write_json(workspace: &Workspace, path: &str, value: &impl Serialize) -> Result<String, String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    workspace
        .write(path, &bytes, MANIFEST_LIMIT)
        .map_err(|e| e.to_string())
}

/// The notebook's index; empty when it has no cells yet.
pub fn index(workspace: &Workspace, id: &NotebookId) -> Result<NotebookIndex, String> {
    Ok(
        read_json(workspace, &id.index_path())?.unwrap_or_else(|| NotebookIndex {
            notebook_id: id.as_str().to_string(),
            cells: Vec::new(),
        }),
    )
}

/// The index the next cell will get.
pub fn next_cell_index(workspace: &Workspace, id: &NotebookId) -> Result<usize, String> {
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
) -> Result<String, String> {
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
pub fn cell(workspace: &Workspace, id: &NotebookId, index: usize) -> Result<CellManifest, String> {
    read_json(workspace, &id.cell_path(index))?.ok_or_else(|| {
        format!(
            "notebook {} has no cell {index}; action cells lists them",
            id.as_str()
        )
    })
}

/// Forgets every cell (the kernel is not restarted). Returns how many were removed.
pub fn reset(workspace: &Workspace, id: &NotebookId) -> Result<usize, String> {
    let index = index(workspace, id)?;
    for entry in &index.cells {
        match workspace.delete(&id.cell_path(entry.cell_index)) {
            Ok(()) | Err(WorkspaceError::NotFound { .. }) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
    match workspace.delete(&id.index_path()) {
        Ok(()) | Err(WorkspaceError::NotFound { .. }) => Ok(index.cells.len()),
        Err(error) => Err(error.to_string()),
    }
}

/// Every cell in order, for export.
fn cells(workspace: &Workspace, id: &NotebookId) -> Result<Vec<CellManifest>, String> {
    let mut entries = index(workspace, id)?.cells;
    entries.sort_by_key(|c| c.cell_index);
    entries
        .iter()
        .map(|entry| cell(workspace, id, entry.cell_index))
        .collect()
}

/// Which exports to write.
pub fn export_targets(export_to: &str) -> Result<(bool, bool), String> {
    match export_to {
        "ipynb" => Ok((true, false)),
        "html" => Ok((false, true)),
        "both" => Ok((true, true)),
        other => Err(format!(
            "export_to {other:?} is not supported: use ipynb, html or both"
        )),
    }
}

/// Writes the notebook as `.ipynb` and/or `.html` under `outputs/notebooks/`; returns the
/// workspace-relative paths written.
pub fn export(
    workspace: &Workspace,
    id: &NotebookId,
    ipynb: bool,
    html: bool,
    max_bytes: usize,
) -> Result<(Option<String>, Option<String>), String> {
    let cells = cells(workspace, id)?;
    let write = |name: String, bytes: Vec<u8>| {
        workspace
            .write(&format!("outputs/notebooks/{name}"), &bytes, max_bytes)
            .map_err(|e| e.to_string())
    };
    let ipynb_path = if ipynb {
        let document = serde_json::to_vec_pretty(&to_ipynb(&cells)).map_err(|e| e.to_string())?;
        Some(write(format!("{}.ipynb", id.as_str()), document)?)
    } else {
        None
    };
    let html_path = if html {
        Some(write(
            format!("{}.html", id.as_str()),
            to_html(id, &cells).into_bytes(),
        )?)
    } else {
        None
    };
    Ok((ipynb_path, html_path))
}

/// The cells as an nbformat 4.5 document, with every display bundle (plots included).
pub fn to_ipynb(cells: &[CellManifest]) -> Value {
    let cells: Vec<Value> = cells
        .iter()
        .map(|cell| {
            let mut outputs = Vec::new();
            if !cell.stdout.is_empty() {
                outputs.push(json!({"output_type": "stream", "name": "stdout", "text": cell.stdout}));
            }
            let stderr_without_traceback = match &cell.error {
                Some(error) => cell
                    .stderr
                    .strip_suffix(&error.traceback.join("\n"))
                    .unwrap_or(&cell.stderr)
                    .trim_end()
                    .to_string(),
                None => cell.stderr.clone(),
            };
            if !stderr_without_traceback.is_empty() {
                outputs.push(json!({"output_type": "stream", "name": "stderr", "text": stderr_without_traceback}));
            }
            for display in &cell.displays {
                let output = match display.kind.as_str() {
                    "execute_result" => json!({
                        "output_type": "execute_result",
                        "execution_count": cell.execution_count,
                        "data": display.data,
                        "metadata": display.metadata,
                    }),
                    _ => json!({
                        "output_type": "display_data",
                        "data": display.data,
                        "metadata": display.metadata,
                    }),
                };
                outputs.push(output);
            }
            if let Some(error) = &cell.error {
                outputs.push(json!({
                    "output_type": "error",
                    "ename": error.ename,
                    "evalue": error.evalue,
                    "traceback": error.traceback,
                }));
            }
            json!({
                "cell_type": "code",
                "id": format!("cell-{:04}", cell.cell_index),
                "execution_count": cell.execution_count,
                "metadata": {},
                "source": cell.code,
                "outputs": outputs,
            })
        })
        .collect();
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": cells,
    })
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn is_base64(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
}

/// The cells as one self-contained HTML page. Kernel HTML is shown in sandboxed iframes, so a
/// page opened from the export cannot run a cell's scripts.
pub fn to_html(id: &NotebookId, cells: &[CellManifest]) -> String {
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Notebook {0}</title>\n<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}pre{{background:#f6f6f6;padding:.6em;overflow-x:auto}}pre.stderr,pre.error{{background:#fdecea}}.count{{color:#888}}iframe{{width:100%;border:1px solid #ddd}}img{{max-width:100%}}</style>\n</head><body>\n<h1>Notebook {0}</h1>\n",
        escape_html(id.as_str())
    );
    for cell in cells {
        let count = cell
            .execution_count
            .map(|c| c.to_string())
            .unwrap_or_else(|| " ".to_string());
        page.push_str(&format!(
            "<section id=\"cell-{:04}\">\n<div class=\"count\">In [{count}]:</div>\n<pre class=\"in\">{}</pre>\n",
            cell.cell_index,
            escape_html(&cell.code)
        ));
        if !cell.stdout.is_empty() {
            page.push_str(&format!(
                "<pre class=\"stdout\">{}</pre>\n",
                escape_html(&cell.stdout)
            ));
        }
        for display in &cell.displays {
            let text = |mime: &str| display.data.get(mime).and_then(Value::as_str);
            if let Some(png) = text("image/png").filter(|p| is_base64(p)) {
                page.push_str(&format!(
                    "<img alt=\"plot\" src=\"data:image/png;base64,{}\">\n",
                    png.replace(['\n', '\r'], "")
                ));
            } else if let Some(html) = text("text/html") {
                page.push_str(&format!(
                    "<iframe sandbox srcdoc=\"{}\"></iframe>\n",
                    escape_html(html)
                ));
            } else if let Some(plain) = text("text/plain") {
                page.push_str(&format!(
                    "<pre class=\"result\">{}</pre>\n",
                    escape_html(plain)
                ));
            }
        }
        if !cell.stderr.is_empty() {
            let class = if cell.error.is_some() {
                "error"
            } else {
                "stderr"
            };
            page.push_str(&format!(
                "<pre class=\"{class}\">{}</pre>\n",
                escape_html(&cell.stderr)
            ));
        }
        page.push_str("</section>\n");
    }
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(index: usize) -> CellManifest {
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
    fn ids_names_and_paths_are_validated() {
        assert_eq!(NotebookId::parse(None).unwrap().as_str(), "default");
        assert!(NotebookId::parse(Some("../x")).is_err());
        assert!(NotebookId::parse(Some("")).is_err());
        assert_eq!(dataset_name(Some("sales_2024")), Ok("sales_2024".into()));
        for bad in ["1abc", "a-b", "x; DROP TABLE y", "\"q\"", ""] {
            assert!(dataset_name(Some(bad)).is_err(), "{bad}");
        }
        assert!(dataset_name(None).is_err());
        assert_eq!(
            dataset_paths(Some(&["data/*.csv".to_string()])),
            Ok(vec!["/workspace/data/*.csv".to_string()])
        );
        for bad in ["/etc/passwd", "../x.csv", "a/../../b", ""] {
            assert!(dataset_paths(Some(&[bad.to_string()])).is_err(), "{bad}");
        }
        assert!(dataset_paths(None).is_err());
        assert_eq!(dataset_format(None, "/workspace/a.CSV"), Ok("csv".into()));
        assert!(dataset_format(Some("xlsx"), "a").is_err());
    }

    #[test]
    fn ipynb_export_keeps_code_streams_images_and_the_error() {
        let document = to_ipynb(&[manifest(1)]);
        assert_eq!(document["nbformat"], 4);
        let cell = &document["cells"][0];
        assert_eq!(cell["source"], "print('<b>')\n1/0");
        let outputs = cell["outputs"].as_array().unwrap();
        assert_eq!(outputs[0]["output_type"], "stream");
        assert_eq!(outputs[1]["output_type"], "display_data");
        assert_eq!(outputs[1]["data"]["image/png"], "iVBORw0KGgo=");
        assert_eq!(outputs[2]["output_type"], "error");
        assert_eq!(outputs.len(), 3, "the traceback is not repeated as stderr");
    }

    #[test]
    fn html_export_escapes_code_and_embeds_images() {
        let page = to_html(&NotebookId::parse(Some("nb")).unwrap(), &[manifest(1)]);
        assert!(page.contains("print(&#39;&lt;b&gt;&#39;)"));
        assert!(!page.contains("<b>\n"));
        assert!(page.contains("data:image/png;base64,iVBORw0KGgo="));
        assert!(page.contains("class=\"error\""));
    }

    #[test]
    fn kernel_html_goes_into_a_sandboxed_iframe() {
        let mut cell = manifest(1);
        cell.displays[0].data =
            serde_json::from_value(json!({"text/html": "<script>alert(1)</script>"})).unwrap();
        let page = to_html(&NotebookId::parse(None).unwrap(), &[cell]);
        assert!(page.contains("<iframe sandbox srcdoc=\"&lt;script&gt;"));
        assert!(!page.contains("<script>"));
    }

    #[test]
    fn streams_are_clipped_on_a_character_boundary() {
        let mut cell = manifest(1);
        cell.stdout = "é".repeat(STREAM_LIMIT);
        cell.clip_streams();
        assert!(cell.stdout.ends_with("[output truncated]"));
        assert!(cell.stdout.len() <= STREAM_LIMIT + 20);
    }

    #[test]
    fn export_targets_are_checked() {
        assert_eq!(export_targets("both"), Ok((true, true)));
        assert!(export_targets("pdf").is_err());
    }
}
