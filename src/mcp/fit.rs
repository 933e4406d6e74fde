//! Keeps what kernelbox sends under the size stock MCP clients accept: the Python SDK refuses
//! a server-sent event over 1 MiB, and a run's result carries its output twice (structured
//! content and its JSON text) besides its images. A result that would not fit has its large
//! parts (streams, results, display data, a traceback) cut to an excerpt, each written whole
//! to a file in `outputs/` first, and says so; output notifications go in pieces. It must not
//! lose output: nothing is cut before it is on disk.

use std::io::Write as _;

use rmcp::model::{CallToolResult, ContentBlock};
use serde::Serialize;

use super::results::{ReadFileResult, RunPythonCodeResult};
use crate::workspace::Workspace;

/// The largest event stock clients accept (the Python SDK's default SSE event limit).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// What a run's result may take, leaving room for the JSON-RPC envelope and SSE framing.
const RESULT_BUDGET: usize = MAX_MESSAGE_BYTES - (96 << 10);
/// Text per output notification: JSON escaping can grow text up to six times, so a piece
/// stays under the limit whatever it holds.
pub const NOTIFICATION_TEXT_BYTES: usize = 128 << 10;
/// The shortest excerpt a cut part keeps.
const SHORTEST_EXCERPT: usize = 1 << 10;

/// `text` in pieces of at most [`NOTIFICATION_TEXT_BYTES`], split on character boundaries.
pub fn notification_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > NOTIFICATION_TEXT_BYTES {
        let (piece, tail) = rest.split_at(char_boundary(rest, NOTIFICATION_TEXT_BYTES));
        pieces.push(piece);
        rest = tail;
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// Makes a run's result (with its inline PNGs, base64) fit in one message, writing what it
/// cuts to `workspace`'s `outputs/` first. Inline images go first (each is already saved and
/// listed in `outputs`), then every large part is cut to an excerpt, shorter each round.
pub fn fit_run_result(
    result: &mut RunPythonCodeResult,
    images: &mut Vec<String>,
    workspace: &Workspace,
) -> Result<(), String> {
    if size(result, images) <= RESULT_BUDGET {
        return Ok(());
    }
    let dropped_images = images.len();
    images.clear();
    let mut saver = Saver::new(workspace);
    let mut excerpt = RESULT_BUDGET / 8;
    while size(result, images) > RESULT_BUDGET && excerpt >= SHORTEST_EXCERPT {
        cut_parts(result, excerpt, &mut saver)?;
        excerpt /= 2;
    }
    if size(result, images) > RESULT_BUDGET {
        // Many small parts: every display and result goes to one file each.
        let displays = std::mem::take(&mut result.displays);
        saver.save_json("displays", &displays)?;
        let results = std::mem::take(&mut result.results);
        saver.save_json("results", &results)?;
    }
    result.output_files.extend(saver.saved);
    let mut note = format!(
        "this result was larger than MCP clients accept ({} KiB); its long parts are cut here and whole in {}",
        MAX_MESSAGE_BYTES >> 10,
        result.output_files.join(", ")
    );
    if dropped_images > 0 {
        note.push_str(&format!(
            "; {dropped_images} image(s) are not inline, see outputs"
        ));
    }
    result.truncated = true;
    result.kernel_note = Some(match result.kernel_note.take() {
        Some(earlier) => format!("{earlier}; {note}"),
        None => note,
    });
    Ok(())
}

/// The last guard on a tool's result: one larger than a message (a completion with very many
/// matches, a query preview of wide rows) becomes an error result that says so and how to ask
/// for less. Results that may grow with what a cell printed are fitted before this
/// (`fit_run_result`, `fit_read`), so nothing a kernel produced is lost here.
pub fn guard_result(tool: &str, result: CallToolResult) -> CallToolResult {
    let size = serde_json::to_string(&result).map_or(usize::MAX, |json| json.len());
    if size <= RESULT_BUDGET {
        return result;
    }
    tracing::warn!(
        tool,
        size,
        "a tool result was larger than one MCP message; refused"
    );
    CallToolResult::error(vec![ContentBlock::text(format!(
        "the result of {tool} was {size} bytes, larger than one MCP message holds ({} KiB); ask for less (a smaller max_bytes, limit_preview or path, or a narrower query)",
        MAX_MESSAGE_BYTES >> 10
    ))])
}

/// Whether `value` fits in one message as JSON (a resource's contents go once).
pub fn fits_one_message(value: &impl Serialize) -> bool {
    serde_json::to_string(value).is_ok_and(|json| json.len() <= RESULT_BUDGET)
}

/// Cuts a file read to what fits in one message (its content goes twice, as structured
/// content and as its JSON text): text on a character boundary, base64 on a whole group.
/// Returns whether it cut. The file itself stays whole in the workspace.
pub fn fit_read(result: &mut ReadFileResult) -> bool {
    let mut cut_any = false;
    loop {
        let size = 2 * serde_json::to_string(result).map_or(0, |json| json.len());
        if size <= RESULT_BUDGET {
            return cut_any;
        }
        // Shrink in proportion, with a margin: escaping is not even across the text.
        let keep = |length: usize| length * RESULT_BUDGET / size * 9 / 10;
        match (&mut result.text, &mut result.base64) {
            (Some(text), _) if !text.is_empty() => {
                let kept = keep(text.len()).min(text.len() - 1);
                cut(text, kept);
            }
            (None, Some(base64)) if base64.len() >= 4 => {
                let kept = (keep(base64.len()) / 4 * 4).min(base64.len() - 4);
                base64.truncate(kept);
            }
            _ => return cut_any,
        }
        cut_any = true;
    }
}

/// One round: every part longer than `excerpt` is saved whole (once) and cut to it.
fn cut_parts(
    result: &mut RunPythonCodeResult,
    excerpt: usize,
    saver: &mut Saver,
) -> Result<(), String> {
    let spilled = |suffix: &str| {
        result
            .output_files
            .iter()
            .any(|file| file.ends_with(suffix))
    };
    let (stdout_spilled, stderr_spilled) = (spilled("-stdout.txt"), spilled("-stderr.txt"));
    for (text, name, spilled) in [
        (&mut result.stdout, "stdout", stdout_spilled),
        (&mut result.stderr, "stderr", stderr_spilled),
    ] {
        if text.len() > excerpt {
            if !spilled {
                saver.save_text(name, text)?;
            }
            cut(text, excerpt);
        }
    }
    for (index, text) in result.results.iter_mut().enumerate() {
        if text.len() > excerpt {
            saver.save_text(&format!("result-{index}"), text)?;
            cut(text, excerpt);
        }
    }
    if let Some(error) = &mut result.error {
        let long = serde_json::to_string(&error.traceback).map_or(0, |t| t.len()) > excerpt
            || error.evalue.len() > excerpt;
        if long {
            saver.save_json("error", error)?;
            cut(&mut error.evalue, excerpt);
            let mut kept = 0;
            error.traceback.retain(|line| {
                kept += line.len();
                kept <= excerpt
            });
        }
    }
    for (index, display) in result.displays.iter_mut().enumerate() {
        if serde_json::to_string(&display.data).map_or(0, |d| d.len()) > excerpt {
            let file = saver.save_json(&format!("display-{index}"), &display.data)?;
            for value in display.data.values_mut() {
                let length = value.to_string().len();
                if length > excerpt {
                    *value =
                        serde_json::Value::String(format!("[{length} bytes, whole in {file}]"));
                }
            }
        }
    }
    Ok(())
}

/// Cuts `text` to at most `excerpt` bytes, on a character boundary.
fn cut(text: &mut String, excerpt: usize) {
    let end = char_boundary(text, excerpt);
    text.truncate(end);
}

/// The largest character boundary of `text` at or below `at`.
fn char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The bytes a result takes on the wire: its JSON twice (structured content and text) and
/// its images.
fn size(result: &RunPythonCodeResult, images: &[String]) -> usize {
    let json = serde_json::to_string(result).map_or(usize::MAX / 4, |json| json.len());
    2 * json + images.iter().map(|image| image.len() + 64).sum::<usize>()
}

/// Writes cut parts whole to `outputs/`, each part once.
struct Saver<'a> {
    workspace: &'a Workspace,
    id: uuid::Uuid,
    /// Workspace-relative paths written so far.
    saved: Vec<String>,
}

impl<'a> Saver<'a> {
    fn new(workspace: &'a Workspace) -> Self {
        Self {
            workspace,
            id: uuid::Uuid::new_v4(),
            saved: Vec::new(),
        }
    }

    fn save_text(&mut self, part: &str, text: &str) -> Result<String, String> {
        self.save(part, "txt", text.as_bytes())
    }

    fn save_json(&mut self, part: &str, value: &impl Serialize) -> Result<String, String> {
        let json = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        self.save(part, "json", &json)
    }

    /// Writes `bytes` to `outputs/<id>-<part>.<extension>` unless that part was written.
    fn save(&mut self, part: &str, extension: &str, bytes: &[u8]) -> Result<String, String> {
        let name = format!("{}-{part}.{extension}", self.id);
        let path = format!("outputs/{name}");
        if self.saved.contains(&path) {
            return Ok(path);
        }
        let (path, mut file) = self
            .workspace
            .create_output(&name)
            .map_err(|e| format!("could not save a long part of the result: {e}"))?;
        file.write_all(bytes)
            .map_err(|e| format!("could not save a long part of the result to {path}: {e}"))?;
        self.saved.push(path.clone());
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_of(text: Option<String>, base64: Option<String>) -> ReadFileResult {
        ReadFileResult {
            text,
            base64,
            path: "big".to_string(),
            size: 0,
            truncated: false,
            offset: 0,
            next_offset: None,
            note: None,
        }
    }

    #[test]
    fn a_read_is_cut_to_one_message_however_its_text_escapes() {
        for text in ["a".repeat(3 << 20), "\u{1}é".repeat(1 << 20)] {
            let mut read = read_of(Some(text.clone()), None);
            assert!(fit_read(&mut read));
            let held = read.text.as_deref().unwrap();
            assert!(2 * serde_json::to_string(&read).unwrap().len() <= RESULT_BUDGET);
            assert!(text.starts_with(held) && held.len() > RESULT_BUDGET / 20);
        }
        let mut small = read_of(Some("fits".to_string()), None);
        assert!(!fit_read(&mut small));
        assert_eq!(small.bytes_held(), 4);
    }

    #[test]
    fn a_result_past_one_message_becomes_an_error_naming_the_tool() {
        let small = CallToolResult::success(vec![ContentBlock::text("fine")]);
        assert_eq!(guard_result("ping", small.clone()), small);
        let big = CallToolResult::success(vec![ContentBlock::text("m".repeat(2 << 20))]);
        let guarded = guard_result("code_completion", big);
        assert_eq!(guarded.is_error, Some(true));
        let text = guarded.content[0].as_text().unwrap().text.clone();
        assert!(
            text.starts_with("the result of code_completion was"),
            "{text}"
        );
    }

    #[test]
    fn a_binary_read_is_cut_on_whole_base64_groups() {
        let mut read = read_of(None, Some("QUJD".repeat(1 << 20)));
        assert!(fit_read(&mut read));
        let held = read.base64.as_deref().unwrap();
        assert_eq!(held.len() % 4, 0);
        assert_eq!(read.bytes_held() as usize, held.len() / 4 * 3);
        assert!(2 * serde_json::to_string(&read).unwrap().len() <= RESULT_BUDGET);
    }

    #[test]
    fn notification_pieces_stay_small_and_keep_every_character() {
        let text = "é".repeat(NOTIFICATION_TEXT_BYTES);
        let pieces = notification_pieces(&text);
        assert!(pieces.iter().all(|p| p.len() <= NOTIFICATION_TEXT_BYTES));
        assert_eq!(pieces.concat(), text);
        assert_eq!(notification_pieces(""), [""]);
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let mut text = "aé".repeat(10);
        cut(&mut text, 4);
        assert_eq!(text, "aéa");
    }
}
