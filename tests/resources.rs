//! Workspace files as MCP resources over streamable HTTP, end to end: a plot and a written file
//! are listed and read back, the template is listed, and bad URIs are refused.

mod common;

use base64::Engine as _;
use common::{HttpServer, call, run, structured};
use rmcp::ServiceError;
use rmcp::model::{ErrorCode, ReadResourceRequestParams, ResourceContents};
use serde_json::json;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The error code and message of a read that must fail.
async fn read_error(client: &common::Client, uri: &str) -> (ErrorCode, String) {
    match client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
    {
        Err(ServiceError::McpError(error)) => (error.code, error.message.to_string()),
        other => panic!("reading {uri} should fail with an MCP error: {other:?}"),
    }
}

#[tokio::test]
async fn workspace_files_are_listed_and_read_as_resources() {
    let server = HttpServer::start().await;
    let client = server.client().await;

    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert_eq!(
        templates[0].uri_template,
        "kernelbox://sessions/{session_id}/files/{path}"
    );

    let plot = run(
        &client,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
        json!({}),
    )
    .await;
    assert_eq!(plot["status"], "ok", "{plot}");
    let written = call(
        &client,
        "write_file",
        json!({"path": "outputs/note.txt", "content": "hello"}),
    )
    .await;
    assert_ne!(written.is_error, Some(true), "{written:?}");
    assert_eq!(structured(&written)["path"], "outputs/note.txt");

    let resources = client.list_all_resources().await.unwrap();
    let png = resources
        .iter()
        .find(|r| r.name.starts_with("outputs/") && r.name.ends_with(".png"))
        .unwrap_or_else(|| panic!("no PNG under outputs/ in {resources:?}"));
    assert_eq!(png.mime_type.as_deref(), Some("image/png"));
    assert!(
        png.uri
            .starts_with("kernelbox://sessions/default/files/outputs/"),
        "{}",
        png.uri
    );
    let note = resources
        .iter()
        .find(|r| r.name == "outputs/note.txt")
        .unwrap_or_else(|| panic!("no outputs/note.txt in {resources:?}"));
    assert_eq!(
        note.uri,
        "kernelbox://sessions/default/files/outputs/note.txt"
    );
    assert_eq!(note.mime_type.as_deref(), Some("text/plain"));

    let read = client
        .read_resource(ReadResourceRequestParams::new(png.uri.clone()))
        .await
        .unwrap();
    match &read.contents[..] {
        [
            ResourceContents::BlobResourceContents {
                uri,
                mime_type,
                blob,
                ..
            },
        ] => {
            assert_eq!(uri, &png.uri);
            assert_eq!(mime_type.as_deref(), Some("image/png"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(blob)
                .unwrap();
            assert!(bytes.starts_with(PNG_SIGNATURE), "not a PNG");
        }
        other => panic!("expected one blob, got {other:?}"),
    }

    let read = client
        .read_resource(ReadResourceRequestParams::new(note.uri.clone()))
        .await
        .unwrap();
    match &read.contents[..] {
        [
            ResourceContents::TextResourceContents {
                text, mime_type, ..
            },
        ] => {
            assert_eq!(text, "hello");
            assert_eq!(mime_type.as_deref(), Some("text/plain"));
        }
        other => panic!("expected one text, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_resource_uris_are_refused_with_clear_errors() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let ready = run(&client, "1", json!({})).await;
    assert_eq!(ready["status"], "ok", "{ready}");

    let (code, message) =
        read_error(&client, "kernelbox://sessions/nope/files/outputs/a.png").await;
    assert_eq!(code, ErrorCode::RESOURCE_NOT_FOUND);
    assert!(message.contains("unknown session_id"), "{message}");

    let (code, message) = read_error(&client, "file:///etc/passwd").await;
    assert_eq!(code, ErrorCode::INVALID_PARAMS);
    assert!(
        message.contains("kernelbox://sessions/{session_id}/files/{path}"),
        "{message}"
    );

    let (code, message) =
        read_error(&client, "kernelbox://sessions/default/files/outputs/a%zz").await;
    assert_eq!(code, ErrorCode::INVALID_PARAMS);
    assert!(message.contains("percent-escape"), "{message}");

    let (code, message) =
        read_error(&client, "kernelbox://sessions/default/files/../etc/passwd").await;
    assert_eq!(code, ErrorCode::INVALID_PARAMS);
    assert!(message.contains("leaves the workspace"), "{message}");

    let (code, message) = read_error(
        &client,
        "kernelbox://sessions/default/files/outputs/missing.txt",
    )
    .await;
    assert_eq!(code, ErrorCode::RESOURCE_NOT_FOUND);
    assert!(message.contains("does not exist"), "{message}");
}
