//! A session's output policy: stream text past the in-memory cap goes, from its first byte, to
//! a file under `outputs/`, and PNG, SVG and JSON displays are saved there as bytes. It writes
//! only through the workspace's confined operations and never interprets what the kernel sent
//! beyond decoding a PNG's base64.

use std::io::Write as _;

use base64::Engine as _;

use super::Session;
use crate::kernel::{ExecutionOutput, OutputEvent, OutputStream};
use crate::workspace::Workspace;

/// Files under `outputs/` that receive the streams past the in-memory cap, each holding its
/// stream from the first byte.
#[derive(Default)]
pub(super) struct Spills {
    stdout: Option<Spill>,
    stderr: Option<Spill>,
    id: Option<uuid::Uuid>,
}

struct Spill {
    path: String,
    file: Option<std::fs::File>,
}

impl Spills {
    /// Writes what did not fit in memory to the stream's file and says what to stream to the
    /// client: the part that fit, and once per stream a notice where the rest goes.
    pub(super) fn take(
        &mut self,
        event: OutputEvent,
        output: &ExecutionOutput,
        workspace: &Workspace,
    ) -> Vec<OutputEvent> {
        let OutputEvent::Text { stream, text, kept } = event else {
            return vec![event];
        };
        let mut forward = Vec::new();
        if kept > 0 {
            forward.push(OutputEvent::Text {
                stream,
                text: text[..kept].to_string(),
                kept,
            });
        }
        if kept == text.len() {
            return forward;
        }
        let id = *self.id.get_or_insert_with(uuid::Uuid::new_v4);
        let slot = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        if slot.is_none() {
            let name = match stream {
                OutputStream::Stdout => format!("{id}-stdout.txt"),
                OutputStream::Stderr => format!("{id}-stderr.txt"),
            };
            let kept_so_far = match stream {
                OutputStream::Stdout => &output.stdout,
                OutputStream::Stderr => &output.stderr,
            };
            let spill = match workspace.create_output(&name) {
                Ok((path, mut file)) => {
                    let written = file.write_all(kept_so_far.as_bytes());
                    Spill {
                        path,
                        file: written.ok().map(|()| file),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not create a file for long output");
                    Spill {
                        path: format!("outputs/{name}"),
                        file: None,
                    }
                }
            };
            forward.push(OutputEvent::Truncated {
                stream,
                file: spill.path.clone(),
            });
            *slot = Some(spill);
        }
        if let Some(spill) = slot.as_mut()
            && let Some(file) = spill.file.as_mut()
            && file.write_all(&text.as_bytes()[kept..]).is_err()
        {
            spill.file = None;
        }
        forward
    }

    pub(super) fn finish(self) -> Vec<String> {
        [self.stdout, self.stderr]
            .into_iter()
            .flatten()
            .filter(|spill| spill.file.is_some())
            .map(|spill| spill.path)
            .collect()
    }
}

impl Session {
    /// Saves PNG, SVG and JSON displays under `outputs/`, returning their paths and the PNGs.
    pub(super) fn save_displays(&self, output: &ExecutionOutput) -> (Vec<String>, Vec<String>) {
        let mut paths = Vec::new();
        let mut images = Vec::new();
        for display in &output.displays {
            let id = uuid::Uuid::new_v4();
            let mut save = |name: String, bytes: &[u8]| match self
                .workspace
                .save_output(&name, bytes)
            {
                Ok(path) => paths.push(path),
                Err(error) => {
                    tracing::warn!(session_id = %self.id, %error, "could not save a display output")
                }
            };
            if let Some(serde_json::Value::String(png)) = display.data.get("image/png") {
                let cleaned: String = png.split_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(&cleaned) {
                    Ok(bytes) => {
                        save(format!("{id}.png"), &bytes);
                        images.push(cleaned);
                    }
                    Err(error) => {
                        tracing::warn!(session_id = %self.id, %error, "kernel sent a PNG that is not base64")
                    }
                }
            } else if let Some(svg) = display.data.get("image/svg+xml") {
                let text = match svg {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                save(format!("{id}.svg"), text.as_bytes());
            }
            if let Some(json) = display.data.get("application/json") {
                save(format!("{id}.json"), json.to_string().as_bytes());
            }
        }
        (paths, images)
    }
}
