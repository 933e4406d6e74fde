//! Turns the iopub messages of one `execute_request` into what the caller sees: stdout, stderr,
//! results, every display bundle, and the error. Pure data handling: no sockets, no Docker, and
//! nothing from the kernel is ever evaluated.

use jupyter_protocol::{JupyterMessage, JupyterMessageContent, Stdio};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which output stream a chunk of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One MIME bundle the kernel displayed (`display_data`, `update_display_data`, or
/// `execute_result`), exactly as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DisplayBundle {
    /// `display_data`, `update_display_data` or `execute_result`.
    pub kind: String,
    /// MIME type to data, for example `text/plain`, `text/html`, `image/png` (base64).
    pub data: Map<String, Value>,
    /// The kernel's metadata for the bundle (image sizes and the like).
    pub metadata: Map<String, Value>,
}

/// The exception a cell raised, traceback free of ANSI colour codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorInfo {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

/// Something a running cell produced, as it arrives: what callers stream to their clients.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// A chunk of a stream; `kept` is how many of its bytes fit under the in-memory cap
    /// (the rest, and every later chunk of that stream, must go elsewhere).
    Text {
        stream: OutputStream,
        text: String,
        kept: usize,
    },
    Display {
        mime_types: Vec<String>,
    },
    /// A stream went past the in-memory cap; the rest of it goes to `file`.
    Truncated {
        stream: OutputStream,
        file: String,
    },
    Error {
        ename: String,
        evalue: String,
    },
}

/// Everything one execution produced so far. Each stream keeps at most `stream_limit` bytes
/// in memory; `stdout_total` and `stderr_total` count all of it.
#[derive(Debug, Default, Clone)]
pub struct ExecutionOutput {
    pub stream_limit: usize,
    pub stdout_total: u64,
    pub stderr_total: u64,
    pub stdout: String,
    pub stderr: String,
    /// `text/plain` of every display and result, in order.
    pub results: Vec<String>,
    pub displays: Vec<DisplayBundle>,
    pub error: Option<ErrorInfo>,
    /// Set once the kernel reported `idle` for this request: no more output follows.
    pub idle: bool,
    /// The kernel's execution counter, from the `execute_reply`.
    pub execution_count: Option<usize>,
    /// The `execute_reply` said `error` or `aborted`.
    pub reply_failed: bool,
}

impl ExecutionOutput {
    /// An empty output keeping at most `stream_limit` bytes of each stream in memory.
    pub fn with_stream_limit(stream_limit: usize) -> Self {
        Self {
            stream_limit,
            ..Self::default()
        }
    }

    /// Folds one iopub message (already matched to this request) into the output, and says
    /// what it added.
    pub fn absorb(&mut self, message: &JupyterMessage) -> Option<OutputEvent> {
        match &message.content {
            JupyterMessageContent::StreamContent(stream) => {
                let (target, total, which) = match stream.name {
                    Stdio::Stdout => (
                        &mut self.stdout,
                        &mut self.stdout_total,
                        OutputStream::Stdout,
                    ),
                    Stdio::Stderr => (
                        &mut self.stderr,
                        &mut self.stderr_total,
                        OutputStream::Stderr,
                    ),
                };
                let already_over = *total > target.len() as u64;
                *total += stream.text.len() as u64;
                let kept = if already_over {
                    0
                } else {
                    let mut room = self
                        .stream_limit
                        .saturating_sub(target.len())
                        .min(stream.text.len());
                    while !stream.text.is_char_boundary(room) {
                        room -= 1;
                    }
                    target.push_str(&stream.text[..room]);
                    room
                };
                Some(OutputEvent::Text {
                    stream: which,
                    text: stream.text.clone(),
                    kept,
                })
            }
            JupyterMessageContent::DisplayData(display) => {
                self.add_display("display_data", &display.data, &display.metadata)
            }
            JupyterMessageContent::UpdateDisplayData(display) => {
                self.add_display("update_display_data", &display.data, &display.metadata)
            }
            JupyterMessageContent::ExecuteResult(result) => {
                self.add_display("execute_result", &result.data, &result.metadata)
            }
            JupyterMessageContent::ErrorOutput(error) => {
                let traceback: Vec<String> =
                    error.traceback.iter().map(|l| strip_ansi(l)).collect();
                if !self.stderr.is_empty() && !self.stderr.ends_with('\n') {
                    self.stderr.push('\n');
                }
                self.stderr.push_str(&traceback.join("\n"));
                self.error = Some(ErrorInfo {
                    ename: error.ename.clone(),
                    evalue: strip_ansi(&error.evalue),
                    traceback,
                });
                Some(OutputEvent::Error {
                    ename: error.ename.clone(),
                    evalue: strip_ansi(&error.evalue),
                })
            }
            JupyterMessageContent::Status(status) => {
                if status.execution_state == jupyter_protocol::ExecutionState::Idle {
                    self.idle = true;
                }
                None
            }
            _ => None,
        }
    }

    /// Takes the `execute_reply` on shell: the execution counter and the reply status.
    pub fn absorb_reply(&mut self, message: &JupyterMessage) {
        if let JupyterMessageContent::ExecuteReply(reply) = &message.content {
            self.execution_count = Some(reply.execution_count.value());
            self.reply_failed = reply.status != jupyter_protocol::ReplyStatus::Ok;
        }
    }

    fn add_display(
        &mut self,
        kind: &str,
        data: &jupyter_protocol::Media,
        metadata: &Map<String, Value>,
    ) -> Option<OutputEvent> {
        let data = match serde_json::to_value(data) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        if let Some(Value::String(text)) = data.get("text/plain") {
            self.results.push(text.clone());
        }
        let mime_types = data.keys().cloned().collect();
        self.displays.push(DisplayBundle {
            kind: kind.to_string(),
            data,
            metadata: metadata.clone(),
        });
        Some(OutputEvent::Display { mime_types })
    }
}

/// A Jupyter message from its JSON form, for the property tests.
#[cfg(test)]
pub fn message_from_json(value: Value) -> Option<JupyterMessage> {
    JupyterMessage::from_value(value).ok()
}

/// Removes ANSI escape sequences (colours, cursor moves) from kernel text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                // OSC: ends with BEL or ESC \
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jupyter_protocol::{
        DisplayData, ErrorOutput, ExecuteResult, ExecutionCount, Media, MediaType, Status,
        StreamContent,
    };

    fn message(content: impl Into<JupyterMessageContent>) -> JupyterMessage {
        JupyterMessage::new(content, None)
    }

    #[test]
    fn strip_ansi_removes_colour_and_keeps_text() {
        let coloured = "\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero";
        assert_eq!(strip_ansi(coloured), "ZeroDivisionError: division by zero");
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(strip_ansi("dangling\u{1b}"), "dangling");
    }

    #[test]
    fn streams_accumulate_in_order() {
        let mut out = ExecutionOutput::with_stream_limit(1 << 20);
        out.absorb(&message(StreamContent::stdout("a\n")));
        out.absorb(&message(StreamContent::stderr("warn\n")));
        let event = out.absorb(&message(StreamContent::stdout("b\n")));
        assert_eq!(out.stdout, "a\nb\n");
        assert_eq!(out.stderr, "warn\n");
        assert_eq!(
            event,
            Some(OutputEvent::Text {
                stream: OutputStream::Stdout,
                text: "b\n".into(),
                kept: 2
            })
        );
    }

    #[test]
    fn a_stream_past_its_cap_is_cut_on_a_character_boundary_and_counted() {
        let mut out = ExecutionOutput::with_stream_limit(4);
        out.absorb(&message(StreamContent::stdout("abcé")));
        let event = out.absorb(&message(StreamContent::stdout("xyz")));
        assert_eq!(out.stdout, "abc", "é would straddle the cap");
        assert_eq!(out.stdout_total, 8);
        assert_eq!(out.stderr_total, 0);
        assert_eq!(
            event,
            Some(OutputEvent::Text {
                stream: OutputStream::Stdout,
                text: "xyz".into(),
                kept: 0
            })
        );
    }

    #[test]
    fn displays_keep_every_mime_type_and_plain_text_becomes_a_result() {
        let mut out = ExecutionOutput::default();
        let media = Media::new(vec![
            MediaType::Plain("<Figure>".into()),
            MediaType::Png("iVBORw0KGgo=".into()),
        ]);
        out.absorb(&message(DisplayData::new(media.clone())));
        out.absorb(&message(ExecuteResult::new(ExecutionCount::new(3), media)));
        assert_eq!(out.displays.len(), 2);
        assert_eq!(out.displays[0].kind, "display_data");
        assert_eq!(out.displays[1].kind, "execute_result");
        assert_eq!(out.displays[0].data["image/png"], "iVBORw0KGgo=");
        assert_eq!(out.results, vec!["<Figure>", "<Figure>"]);
    }

    #[test]
    fn error_is_recorded_without_ansi_and_added_to_stderr() {
        let mut out = ExecutionOutput::default();
        out.absorb(&message(ErrorOutput {
            ename: "ValueError".into(),
            evalue: "bad".into(),
            traceback: vec![
                "\u{1b}[31mTraceback\u{1b}[0m".into(),
                "ValueError: bad".into(),
            ],
        }));
        let error = out.error.expect("error recorded");
        assert_eq!(error.ename, "ValueError");
        assert_eq!(error.traceback[0], "Traceback");
        assert_eq!(out.stderr, "Traceback\nValueError: bad");
    }

    #[test]
    fn the_execute_reply_gives_the_count_and_the_status() {
        let mut out = ExecutionOutput::default();
        let mut reply = jupyter_protocol::ExecuteReply {
            status: jupyter_protocol::ReplyStatus::Error,
            execution_count: ExecutionCount::new(7),
            payload: vec![],
            user_expressions: None,
            error: None,
        };
        out.absorb_reply(&message(reply.clone()));
        assert_eq!(out.execution_count, Some(7));
        assert!(out.reply_failed);
        reply.status = jupyter_protocol::ReplyStatus::Ok;
        out.absorb_reply(&message(reply));
        assert!(!out.reply_failed);
    }

    #[test]
    fn idle_status_marks_the_end() {
        let mut out = ExecutionOutput::default();
        out.absorb(&message(Status::busy()));
        assert!(!out.idle);
        out.absorb(&message(Status::idle()));
        assert!(out.idle);
    }
}
