//! MCP resources: the files of a client's session workspaces, addressed as
//! `kernelbox://sessions/{session_id}/files/{path}` with each path segment percent-encoded. It
//! owns that URI form, the resource template, listing the files under `outputs/` and reading
//! one file for `resources/read`. It must not open a file any other way than through
//! `Workspace` (which resolves beneath the root and refuses `..`), and must not show or read a
//! session of another owner: such a session answers exactly like an unknown one.

use base64::Engine as _;
use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use serde_json::json;

use crate::session::SessionId;
use crate::sessions::Sessions;
use crate::workspace::{ListOptions, Listing, WorkspaceError};

/// What every resource URI starts with.
const PREFIX: &str = "kernelbox://sessions/";

/// The URI form, as the template and error messages show it.
const FORM: &str = "kernelbox://sessions/{session_id}/files/{path}";

/// Resources listed at most, over all sessions.
const MAX_LISTED: usize = 200;

/// The URI of the workspace-relative `path` of session `session_id`.
pub fn file_uri(session_id: &SessionId, path: &str) -> String {
    format!("{PREFIX}{session_id}/files/{}", encode_path(path))
}

/// `path` with each `/`-separated segment percent-encoded.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// Percent-encodes every byte of `segment` except the unreserved characters of RFC 3986.
fn encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Decodes the percent-escapes of one path segment.
fn decode(segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let escape = bytes
                .get(index + 1..index + 3)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "the path segment {segment:?} has an invalid percent-escape: `%` must be \
                         followed by two hexadecimal digits"
                    )
                })?;
            decoded.push(escape);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    let decoded = String::from_utf8(decoded)
        .map_err(|_| format!("the path segment {segment:?} does not decode to UTF-8"))?;
    if decoded.contains('/') {
        return Err(format!(
            "the path segment {segment:?} holds an encoded `/`; separate path segments with a \
             plain `/`"
        ));
    }
    Ok(decoded)
}

/// The session id and workspace-relative path a resource URI names. The path is only decoded,
/// not validated: the workspace refuses what it must (such as `..`).
pub(crate) fn parse_uri(uri: &str) -> Result<(SessionId, String), String> {
    let malformed = |what: &str| format!("{what} in the resource URI {uri:?}; expected {FORM}");
    let rest = uri
        .strip_prefix(PREFIX)
        .ok_or_else(|| malformed("no kernelbox://sessions/ prefix"))?;
    let (id, rest) = rest
        .split_once('/')
        .ok_or_else(|| malformed("no /files/{path} after the session id"))?;
    let path = rest
        .strip_prefix("files/")
        .ok_or_else(|| malformed("no /files/ after the session id"))?;
    if path.is_empty() {
        return Err(malformed("no file path"));
    }
    let id = SessionId::parse(id).map_err(|error| malformed(&error))?;
    let segments = path.split('/').map(decode).collect::<Result<Vec<_>, _>>();
    let path = segments.map_err(|error| malformed(&error))?.join("/");
    Ok((id, path))
}

/// The MIME type of a file, guessed from its extension.
fn mime_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = match name.rsplit_once('.') {
        Some((_, extension)) => extension.to_ascii_lowercase(),
        None => return "application/octet-stream",
    };
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "html" => "text/html",
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "ipynb" => "application/x-ipynb+json",
        "parquet" => "application/vnd.apache.parquet",
        "py" => "text/x-python",
        _ => "application/octet-stream",
    }
}

/// Whether a file of this MIME type is returned as text (when its bytes are UTF-8).
fn is_textual(mime_type: &str) -> bool {
    mime_type.starts_with("text/")
        || matches!(
            mime_type,
            "application/json" | "application/x-ipynb+json" | "image/svg+xml"
        )
}

/// The one resource template: any file of one of the client's sessions.
pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new(FORM, "workspace-file")
            .with_title("Session workspace file")
            .with_description(
                "Reads any file of your session's workspace: {session_id} is the session \
                 (list_sessions shows them), {path} the workspace-relative path with each \
                 segment percent-encoded, such as outputs/my%20plot.png. UTF-8 text comes back \
                 as text, other files as base64 blobs; files over the read limit are served \
                 over HTTP at GET /files/download/{path}?session_id={session_id}.",
            ),
    ])
}

/// The files under `outputs/` of every session of `owner`, at most 200 in all. A session
/// whose listing fails is left out.
pub async fn list(sessions: &Sessions, owner: &str) -> ListResourcesResult {
    let options = ListOptions {
        recursive: true,
        tree: false,
        max_depth: Some(8),
        include_files: true,
        include_dirs: false,
    };
    let mut resources = Vec::new();
    for session in sessions.list(owner) {
        let remaining = MAX_LISTED - resources.len();
        if remaining == 0 {
            break;
        }
        let workspace = session.workspace().clone();
        let options = options.clone();
        let listing =
            tokio::task::spawn_blocking(move || workspace.list(Some("outputs"), &options)).await;
        let Ok(Ok(Listing::Flat { files, .. })) = listing else {
            continue;
        };
        resources.extend(files.into_iter().take(remaining).map(|path| {
            Resource::new(file_uri(&session.id, &path), path.as_str())
                .with_description(format!("{path} in the workspace of session {}", session.id))
                .with_mime_type(mime_type(&path))
        }));
    }
    ListResourcesResult::with_all_items(resources)
}

/// The error a failed workspace read answers with.
fn read_error(error: WorkspaceError, uri: &str) -> ErrorData {
    let data = Some(json!({ "uri": uri }));
    match error {
        WorkspaceError::NotFound { .. } | WorkspaceError::NotAFile { .. } => {
            ErrorData::resource_not_found(error.to_string(), data)
        }
        WorkspaceError::InvalidPath { .. }
        | WorkspaceError::PathEscapes { .. }
        | WorkspaceError::Symlink { .. } => ErrorData::invalid_params(error.to_string(), data),
        error => ErrorData::internal_error(error.to_string(), data),
    }
}

/// Reads the file `uri` names, of a session of `owner`: text when it is UTF-8 of a textual
/// type, else a base64 blob. A file over `max_bytes` is refused with where to download it.
pub async fn read(
    sessions: &Sessions,
    owner: &str,
    uri: &str,
    max_bytes: usize,
) -> Result<ReadResourceResult, ErrorData> {
    let data = || Some(json!({ "uri": uri }));
    let (id, path) =
        parse_uri(uri).map_err(|message| ErrorData::invalid_params(message, data()))?;
    let session = sessions
        .get(&id, owner)
        .map_err(|error| ErrorData::resource_not_found(error.to_string(), data()))?;
    let workspace = session.workspace().clone();
    let file = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || workspace.read(&path, 0, max_bytes)).await
    }
    .map_err(|error| ErrorData::internal_error(format!("reading {uri} failed: {error}"), data()))?
    .map_err(|error| read_error(error, uri))?;
    if file.truncated {
        return Err(ErrorData::invalid_params(
            format!(
                "{path} is {} bytes, over the resource read limit of {max_bytes} bytes; download \
                 it over HTTP with GET /files/download/{}?session_id={id}",
                file.size,
                encode_path(&path)
            ),
            data(),
        ));
    }
    let mime_type = mime_type(&path);
    let blob = |bytes: Vec<u8>| {
        ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
    };
    let contents = match String::from_utf8(file.bytes) {
        Ok(text) if is_textual(mime_type) => ResourceContents::text(text, uri),
        Ok(text) => blob(text.into_bytes()),
        Err(error) => blob(error.into_bytes()),
    };
    let result = ReadResourceResult::new(vec![contents.with_mime_type(mime_type)]);
    if !super::fit::fits_one_message(&result) {
        return Err(ErrorData::invalid_params(
            format!(
                "{path} ({} bytes) is larger than one MCP message holds ({} KiB); read it in \
                 parts with read_file (offset, max_bytes), or download it over HTTP with GET \
                 /files/download/{}?session_id={id}",
                file.size,
                super::fit::MAX_MESSAGE_BYTES >> 10,
                encode_path(&path)
            ),
            data(),
        ));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> SessionId {
        SessionId::parse(value).unwrap()
    }

    #[test]
    fn uris_round_trip_any_path() {
        for path in [
            "outputs/plot.png",
            "outputs/my plot 1.png",
            "outputs/ünïcødé/日本語.csv",
            "outputs/100%.txt",
            "outputs/a#b?c=d&e.txt",
            "uploads/~tilde_-.dot",
        ] {
            let uri = file_uri(&id("s-1"), path);
            assert_eq!(
                parse_uri(&uri).unwrap(),
                (id("s-1"), path.to_string()),
                "{uri}"
            );
        }
    }

    #[test]
    fn uris_encode_everything_but_unreserved_characters() {
        assert_eq!(
            file_uri(&id("default"), "outputs/a b%#?é/~x-y_z.1"),
            "kernelbox://sessions/default/files/outputs/a%20b%25%23%3F%C3%A9/~x-y_z.1"
        );
    }

    #[test]
    fn parse_decodes_lowercase_escapes_and_plain_characters() {
        assert_eq!(
            parse_uri("kernelbox://sessions/default/files/outputs/%c3%a9 x.txt").unwrap(),
            (id("default"), "outputs/é x.txt".to_string())
        );
    }

    #[test]
    fn parse_rejects_malformed_uris_and_shows_the_expected_form() {
        for uri in [
            "file:///etc/passwd",
            "kernelbox://session/default/files/a.txt",
            "kernelbox://sessions/default",
            "kernelbox://sessions/default/",
            "kernelbox://sessions/default/file/a.txt",
            "kernelbox://sessions/default/files/",
            "kernelbox://sessions//files/a.txt",
            "kernelbox://sessions/bad%20id/files/a.txt",
            "kernelbox://sessions/default/files/a%2",
            "kernelbox://sessions/default/files/a%zz.txt",
            "kernelbox://sessions/default/files/a%+F.txt",
            "kernelbox://sessions/default/files/%FF.txt",
            "kernelbox://sessions/default/files/a%2Fb.txt",
            "kernelbox://sessions/default/files/a%2fb.txt",
        ] {
            let error = parse_uri(uri).unwrap_err();
            assert!(error.contains(FORM), "{uri}: {error}");
            assert!(error.contains(uri), "{uri}: {error}");
        }
        let error = parse_uri("kernelbox://sessions/default/files/a%zz.txt").unwrap_err();
        assert!(error.contains("percent-escape"), "{error}");
        let error = parse_uri("kernelbox://sessions/bad%20id/files/a.txt").unwrap_err();
        assert!(error.contains("invalid session_id"), "{error}");
    }

    #[test]
    fn parse_keeps_dot_dot_segments_for_the_workspace_to_refuse() {
        assert_eq!(
            parse_uri("kernelbox://sessions/default/files/../etc/passwd").unwrap(),
            (id("default"), "../etc/passwd".to_string())
        );
        assert_eq!(
            parse_uri("kernelbox://sessions/default/files/outputs/%2E%2E/%2E%2E/x").unwrap(),
            (id("default"), "outputs/../../x".to_string())
        );
    }

    #[test]
    fn mime_types_are_guessed_from_the_extension() {
        for (path, expected) in [
            ("outputs/plot.png", "image/png"),
            ("outputs/PHOTO.JPG", "image/jpeg"),
            ("a.jpeg", "image/jpeg"),
            ("a.gif", "image/gif"),
            ("a.svg", "image/svg+xml"),
            ("a.html", "text/html"),
            ("a.json", "application/json"),
            ("a.csv", "text/csv"),
            ("a.txt", "text/plain"),
            ("README.md", "text/markdown"),
            ("outputs/run.ipynb", "application/x-ipynb+json"),
            ("data.parquet", "application/vnd.apache.parquet"),
            ("scripts/main.py", "text/x-python"),
            ("archive.tar.gz", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
            ("dir.png/file", "application/octet-stream"),
        ] {
            assert_eq!(mime_type(path), expected, "{path}");
        }
    }

    #[test]
    fn textual_types_are_the_text_json_svg_notebook_and_python_ones() {
        for textual in [
            "text/plain",
            "text/x-python",
            "application/json",
            "application/x-ipynb+json",
            "image/svg+xml",
        ] {
            assert!(is_textual(textual), "{textual}");
        }
        for binary in [
            "image/png",
            "application/vnd.apache.parquet",
            "application/octet-stream",
        ] {
            assert!(!is_textual(binary), "{binary}");
        }
    }

    #[test]
    fn the_template_has_the_uri_form() {
        let templates = templates().resource_templates;
        assert_eq!(templates.len(), 1);
        assert_eq!(templates[0].uri_template, FORM);
        assert!(templates[0].title.is_some());
        assert!(templates[0].description.is_some());
    }
}
