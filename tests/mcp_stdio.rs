//! The tools over stdio, as an MCP client launches the server: a real child process.

mod common;

use common::{StdioServer, call, create_session, run, structured, wait_until};
use serde_json::json;

#[tokio::test]
async fn a_cell_runs_over_stdio_and_sessions_are_managed() {
    let server = StdioServer::start().await;
    let client = &server.client;

    let pong = structured(&call(client, "ping", json!({})).await);
    assert_eq!(pong["ok"], true);

    let first = run(client, "x = 6 * 7\nprint(x)", json!({})).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["stdout"], "42\n");

    create_session(client, "second", json!({"description": "scratch"})).await;
    call(client, "switch_session", json!({"session_id": "second"})).await;
    let isolated = run(client, "x", json!({})).await;
    assert_eq!(isolated["session_id"], "second");
    assert_eq!(isolated["error"]["ename"], "NameError");

    let listed = structured(&call(client, "list_sessions", json!({})).await);
    assert_eq!(listed["active_session"], "second");
    assert_eq!(
        listed["sessions"]["second"]["metadata"]["description"],
        "scratch"
    );
    assert_eq!(server.containers().len(), 2);
}

/// Every tool of `python-mcp-server` 0.6.2 (and 1.0.1's `notebook`), with the seed's
/// parameter names and result fields, plus kernelbox's additions.
#[tokio::test]
async fn every_seed_tool_is_listed_with_its_parameters_and_result_fields() {
    let server = StdioServer::start().await;
    let tools = server.client.list_all_tools().await.unwrap();
    let expected: &[(&str, &[&str], &[&str])] = &[
        (
            "run_python_code",
            &["code", "session_id", "timeout"],
            &[
                "stdout",
                "stderr",
                "results",
                "outputs",
                "new_files",
                "execution_time",
                "status",
                "execution_count",
                "error",
                "displays",
            ],
        ),
        (
            "code_completion",
            &["code", "cursor_pos", "session_id"],
            &[],
        ),
        (
            "inspect_object",
            &["code", "cursor_pos", "detail_level", "session_id"],
            &[],
        ),
        (
            "list_files",
            &[
                "path",
                "recursive",
                "tree",
                "max_depth",
                "include_files",
                "include_dirs",
                "session_id",
            ],
            &["root", "files", "tree"],
        ),
        ("ping", &[], &["ok"]),
        ("delete_file", &["filename", "session_id"], &["success"]),
        (
            "read_file",
            &["path", "max_bytes", "session_id"],
            &["text", "base64"],
        ),
        (
            "write_file",
            &["path", "content", "binary_base64", "session_id"],
            &["path"],
        ),
        (
            "save_script",
            &["name", "content", "session_id"],
            &["script"],
        ),
        (
            "run_script",
            &["path", "args", "timeout", "session_id"],
            &["stdout", "stderr", "returncode", "new_files"],
        ),
        (
            "install_dependencies",
            &["packages", "session_id"],
            &["returncode", "stdout", "stderr"],
        ),
        ("list_variables", &["session_id"], &["variables"]),
        (
            "restart_kernel",
            &["preserve_state", "session_id"],
            &[
                "restarted",
                "session_id",
                "preserve_state",
                "preserved_vars",
                "restored_vars",
                "timestamp",
            ],
        ),
        (
            "get_workspace_info",
            &["session_id"],
            &["workspace", "scripts", "outputs", "uploads"],
        ),
        (
            "get_kernel_health",
            &["session_id"],
            &[
                "status",
                "session_id",
                "uptime",
                "execution_count",
                "last_execution_time",
                "average_execution_time",
                "kernel_process",
                "metadata",
            ],
        ),
        (
            "check_kernel_responsiveness",
            &["timeout", "session_id"],
            &["responsive", "response_time", "timeout"],
        ),
        (
            "create_session",
            &["session_id", "description", "template"],
            &["session_id", "status", "metadata", "timestamp"],
        ),
        ("list_templates", &[], &["templates", "default_template"]),
        (
            "switch_session",
            &["session_id"],
            &["previous_session", "current_session", "status", "timestamp"],
        ),
        (
            "list_sessions",
            &[],
            &[
                "sessions",
                "active_session",
                "total_sessions",
                "max_sessions",
                "timestamp",
            ],
        ),
        (
            "delete_session",
            &["session_id"],
            &["session_id", "status", "was_active", "timestamp"],
        ),
        (
            "interrupt_kernel",
            &["session_id"],
            &["session_id", "interrupted"],
        ),
        (
            "notebook",
            &[
                "action",
                "notebook_id",
                "code",
                "save_dfs",
                "dataset_name",
                "paths",
                "format",
                "engine",
                "query",
                "limit_preview",
                "cell_index",
                "export_to",
                "session_id",
            ],
            &[],
        ),
    ];
    assert_eq!(
        tools.len(),
        expected.len(),
        "tools: {:?}",
        tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()
    );
    for (name, parameters, fields) in expected {
        let tool = tools
            .iter()
            .find(|t| t.name == *name)
            .unwrap_or_else(|| panic!("tool {name} missing"));
        let properties = tool.input_schema.get("properties");
        for parameter in *parameters {
            assert!(
                properties.and_then(|p| p.get(*parameter)).is_some(),
                "{name} lacks parameter {parameter}"
            );
        }
        if fields.is_empty() {
            continue;
        }
        let output = tool
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no output schema"));
        for field in *fields {
            assert!(
                output["properties"].get(*field).is_some(),
                "{name} output lacks {field}"
            );
        }
    }
}

#[tokio::test]
async fn closing_stdin_shuts_the_server_down_and_removes_its_kernels() {
    let server = StdioServer::start().await;
    run(&server.client, "1", json!({})).await;
    assert_eq!(server.containers().len(), 1);
    let (client, sweeper, _dir) = server.into_parts();
    client.cancel().await.unwrap();
    let removed = wait_until(std::time::Duration::from_secs(30), || async {
        sweeper.containers().is_empty()
    })
    .await;
    assert!(
        removed,
        "kernels still running 30 s after the client closed stdin"
    );
}
