//! The tools over stdio, as an MCP client launches the server: a real child process.

mod common;

use common::{StdioServer, call, run, structured};
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

    call(
        client,
        "create_session",
        json!({"session_id": "second", "description": "scratch"}),
    )
    .await;
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

#[tokio::test]
async fn every_tool_of_this_stage_is_listed_with_its_parameters() {
    let server = StdioServer::start().await;
    let tools = server.client.list_all_tools().await.unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("run_python_code", &["code", "session_id", "timeout"]),
        ("create_session", &["session_id", "description"]),
        ("switch_session", &["session_id"]),
        ("list_sessions", &[]),
        ("delete_session", &["session_id", "remove_workspace"]),
        ("restart_kernel", &["session_id"]),
        ("interrupt_kernel", &["session_id"]),
        ("ping", &[]),
    ];
    for (name, parameters) in expected {
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
    }
    let run_tool = tools.iter().find(|t| t.name == "run_python_code").unwrap();
    let output = run_tool.output_schema.as_ref().expect("output schema");
    for field in [
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
    ] {
        assert!(
            output["properties"].get(field).is_some(),
            "output lacks {field}"
        );
    }
}

#[tokio::test]
async fn closing_stdin_shuts_the_server_down_and_removes_its_kernels() {
    let server = StdioServer::start().await;
    run(&server.client, "1", json!({})).await;
    assert_eq!(server.containers().len(), 1);
    let (client, sweeper, _dir) = server.into_parts();
    client.cancel().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sweeper.containers().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kernels still running 30 s after the client closed stdin"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
