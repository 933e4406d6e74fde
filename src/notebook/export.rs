//! A notebook exported for people: `.ipynb` (nbformat 4.5, every display bundle, images
//! included) and one self-contained `.html` (code escaped, kernel HTML in sandboxed iframes),
//! written under `outputs/notebooks/` through the workspace's confined file operations. It
//! only renders what the store holds; it runs nothing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::store::{self, CellManifest, NotebookId, StoreError};
use crate::workspace::Workspace;

/// Which files an export writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportTo {
    Ipynb,
    Html,
    #[default]
    Both,
}

/// What an export wrote.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Exported {
    pub notebook_id: String,
    /// Workspace-relative `.ipynb` written, if asked for.
    pub ipynb: Option<String>,
    /// Workspace-relative `.html` written, if asked for.
    pub html: Option<String>,
}

/// Writes the notebook as `.ipynb` and/or `.html` under `outputs/notebooks/`, files of at most
/// `max_bytes`.
pub fn export(
    workspace: &Workspace,
    id: &NotebookId,
    to: ExportTo,
    max_bytes: usize,
) -> Result<Exported, StoreError> {
    let cells = store::cells(workspace, id)?;
    let write = |name: String, bytes: Vec<u8>| {
        workspace.write(&format!("outputs/notebooks/{name}"), &bytes, max_bytes)
    };
    let ipynb = match to {
        ExportTo::Ipynb | ExportTo::Both => {
            let name = format!("{}.ipynb", id.as_str());
            let document = serde_json::to_vec_pretty(&to_ipynb(&cells)).map_err(|source| {
                StoreError::Encode {
                    path: name.clone(),
                    source,
                }
            })?;
            Some(write(name, document)?)
        }
        ExportTo::Html => None,
    };
    let html = match to {
        ExportTo::Html | ExportTo::Both => Some(write(
            format!("{}.html", id.as_str()),
            to_html(id, &cells).into_bytes(),
        )?),
        ExportTo::Ipynb => None,
    };
    Ok(Exported {
        notebook_id: id.as_str().to_string(),
        ipynb,
        html,
    })
}

/// The cells as an nbformat 4.5 document, with every display bundle (plots included).
fn to_ipynb(cells: &[CellManifest]) -> Value {
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
fn to_html(id: &NotebookId, cells: &[CellManifest]) -> String {
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
    use crate::notebook::store::tests::manifest;

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
    fn export_targets_are_named_in_lowercase() {
        let to: ExportTo = serde_json::from_value(json!("ipynb")).unwrap();
        assert_eq!(to, ExportTo::Ipynb);
        assert!(serde_json::from_value::<ExportTo>(json!("pdf")).is_err());
    }
}
