//! MCP tasks (the tasks extension, SEP-2663) over streamable HTTP, on MCP 2025-11-25 (after
//! `initialize`) and 2026-07-28 (no handshake): a long cell comes back as a task at once and is
//! polled to its result with its output seen on the way; a cancel stops the cell and keeps the
//! kernel and its variables; a task outlives the connection that started it and only its
//! tenant sees it; the number of working tasks per tenant is capped; ended tasks are dropped
//! after their retention.

mod common;

use std::time::Duration;

use common::mcp::{Client, Recorder, args, call, run, structured};
use common::server::HttpServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, GetTaskResult,
    ProtocolVersion, TaskPayload, TaskStatus,
};
use rmcp::service::ClientLifecycleMode;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientServiceExt, ServiceExt};
use serde_json::{Value, json};

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";

/// How a client talks to the server: after `initialize` (MCP 2025-11-25), or with no
/// handshake at all (MCP 2026-07-28).
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Initialized,
    Connectionless,
}

/// A client that declares the tasks extension, speaking `protocol`, with `token` if given.
async fn task_client(server: &HttpServer, protocol: Protocol, token: Option<&str>) -> Client {
    client_of(server, protocol, token, Recorder::with_tasks()).await
}

/// A client speaking `protocol`, with `token` if given, handled by `recorder`.
async fn client_of(
    server: &HttpServer,
    protocol: Protocol,
    token: Option<&str>,
    recorder: Recorder,
) -> Client {
    let mut config = StreamableHttpClientTransportConfig::with_uri(server.url.clone());
    config.auth_header = token.map(str::to_string);
    let transport = StreamableHttpClientTransport::from_config(config);
    let client = match protocol {
        Protocol::Initialized => recorder.serve(transport).await,
        Protocol::Connectionless => {
            recorder
                .serve_with_lifecycle(
                    transport,
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    },
                )
                .await
        }
    }
    .unwrap_or_else(|e| panic!("a tasks client connects over {protocol:?}: {e}"));
    let version = client.peer_info().map(|info| info.protocol_version.clone());
    let expected = match protocol {
        Protocol::Initialized => ProtocolVersion::V_2025_11_25,
        Protocol::Connectionless => ProtocolVersion::V_2026_07_28,
    };
    assert_eq!(version, Some(expected), "{protocol:?}");
    client
}

/// Calls `tool`, which must come back as a task; returns the task's id.
async fn start_task(client: &Client, tool: &str, arguments: Value) -> String {
    let response = client
        .call_tool_once(
            CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments)),
        )
        .await
        .unwrap_or_else(|e| panic!("{tool} failed: {e}"));
    match response {
        CallToolResponse::Task(created) => {
            assert_eq!(created.task.status, TaskStatus::Working, "{created:?}");
            created.task.task_id
        }
        other => panic!("{tool} should have come back as a task: {other:?}"),
    }
}

async fn get(client: &Client, id: &str) -> GetTaskResult {
    client
        .get_task(GetTaskParams::new(id))
        .await
        .unwrap_or_else(|e| panic!("tasks/get {id} failed: {e}"))
}

/// The output so far that `tasks/get` carries.
fn output_so_far(task: &GetTaskResult) -> String {
    task.meta
        .as_ref()
        .and_then(|meta| meta.0.get("kernelbox/output"))
        .and_then(|output| output["text"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Polls the task until it ends; returns every output-so-far seen while it worked, and the
/// final state.
async fn poll_to_end(client: &Client, id: &str) -> (Vec<String>, GetTaskResult) {
    let mut seen = Vec::new();
    for _ in 0..600 {
        let task = get(client, id).await;
        if task.task.status().is_terminal() {
            return (seen, task);
        }
        seen.push(output_so_far(&task));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("task {id} did not end within 2 minutes");
}

/// The structured content of a completed task's result.
fn completed(task: &GetTaskResult) -> Value {
    match &task.task.payload {
        TaskPayload::Completed { result } => result["structuredContent"].clone(),
        other => panic!("the task should have completed: {other:?}"),
    }
}

#[tokio::test]
async fn a_long_cell_run_as_a_task_is_polled_to_its_result_with_its_output_on_the_way() {
    let server = HttpServer::start().await;
    for protocol in [Protocol::Initialized, Protocol::Connectionless] {
        let client = task_client(&server, protocol, None).await;
        let id = start_task(
            &client,
            "run_python_code",
            json!({"code": "import time\nfor i in range(5):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n'done'"}),
        )
        .await;
        let (seen, task) = poll_to_end(&client, &id).await;
        assert!(
            seen.iter()
                .any(|output| output.contains("tick 0") && !output.contains("tick 4")),
            "{protocol:?}: partial output was seen while the cell ran: {seen:?}"
        );
        let result = completed(&task);
        assert_eq!(result["status"], "ok", "{protocol:?}: {result}");
        assert_eq!(result["results"], json!(["'done'"]), "{protocol:?}");
        assert!(result["stdout"].as_str().unwrap().contains("tick 4"));
        assert_eq!(result["session_id"], "default");

        let id = start_task(
            &client,
            "notebook",
            json!({"action": "run", "code": "print('from the notebook')"}),
        )
        .await;
        let (_, task) = poll_to_end(&client, &id).await;
        let cell = completed(&task);
        assert_eq!(cell["run_status"], "ok", "{protocol:?}: {cell}");
        assert!(
            cell["stdout"]
                .as_str()
                .unwrap()
                .contains("from the notebook")
        );

        let listed = client
            .call_tool_once(CallToolRequestParams::new("list_sessions"))
            .await
            .unwrap();
        assert!(
            matches!(listed, CallToolResponse::Complete(_)),
            "{protocol:?}: a quick tool answers in place: {listed:?}"
        );
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn without_a_handshake_the_core_tools_work_for_a_client_that_takes_no_tasks() {
    let server = HttpServer::start().await;
    let client = client_of(&server, Protocol::Connectionless, None, Recorder::default()).await;
    let ran = run(&client, "x = 6 * 7\nprint(x)", json!({})).await;
    assert_eq!(
        (ran["stdout"].as_str(), ran["session_id"].as_str()),
        (Some("42\n"), Some("default"))
    );
    common::mcp::create_session(&client, "other", json!({})).await;
    let switched =
        structured(&call(&client, "switch_session", json!({"session_id": "other"})).await);
    assert_eq!(switched["current_session"], "other", "{switched}");
    call(
        &client,
        "write_file",
        json!({"path": "a.txt", "content": "hi"}),
    )
    .await;
    let read = structured(&call(&client, "read_file", json!({"path": "a.txt"})).await);
    assert_eq!(read["text"], "hi");
    let variables =
        structured(&call(&client, "list_variables", json!({"session_id": "default"})).await);
    assert_eq!(variables["variables"], json!(["x"]), "{variables}");
    let listed = structured(&call(&client, "list_sessions", json!({})).await);
    assert_eq!(listed["active_session"], "other", "{listed}");
}

#[tokio::test]
async fn a_cancelled_task_stops_its_cell_and_keeps_the_kernel_and_its_variables() {
    let server = HttpServer::start().await;
    for protocol in [Protocol::Initialized, Protocol::Connectionless] {
        cancel_a_cell(&server, protocol).await;
    }
}

async fn cancel_a_cell(server: &HttpServer, protocol: Protocol) {
    let client = task_client(server, protocol, None).await;
    let id = start_task(&client, "run_python_code", json!({"code": "x = 42"})).await;
    poll_to_end(&client, &id).await;
    let id = start_task(
        &client,
        "run_python_code",
        json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(300)", "timeout": 600}),
    )
    .await;
    for _ in 0..300 {
        if output_so_far(&get(&client, &id).await).contains("started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .cancel_task(CancelTaskParams::new(&id))
        .await
        .expect("tasks/cancel of a working task");
    let (_, task) = poll_to_end(&client, &id).await;
    assert_eq!(task.task.status(), TaskStatus::Cancelled, "{task:?}");
    assert!(output_so_far(&task).contains("started"), "{task:?}");
    let again = client.cancel_task(CancelTaskParams::new(&id)).await;
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already ended")),
        "{again:?}"
    );

    let plain = server.client().await;
    let after = run(&plain, "x", json!({})).await;
    assert_eq!(
        after["results"],
        json!(["42"]),
        "{protocol:?}: the kernel kept x: {after}"
    );
}

#[tokio::test]
async fn a_task_outlives_its_connection_and_only_its_tenant_sees_it() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tokens.path(),
        json!({"tokens": [{"token": ALICE, "tenant": "alice"}, {"token": BOB, "tenant": "bob"}]})
            .to_string(),
    )
    .unwrap();
    let server = HttpServer::start_with(&["--tokens-file", tokens.path().to_str().unwrap()]).await;
    let first = task_client(&server, Protocol::Initialized, Some(ALICE)).await;
    let id = start_task(
        &first,
        "run_python_code",
        json!({"code": "import time\ntime.sleep(3)\nprint('finished after its client left')"}),
    )
    .await;
    first.cancel().await.unwrap();

    for protocol in [Protocol::Initialized, Protocol::Connectionless] {
        let bob = task_client(&server, protocol, Some(BOB)).await;
        for refused in [
            bob.get_task(GetTaskParams::new(&id)).await.err(),
            bob.cancel_task(CancelTaskParams::new(&id)).await.err(),
        ] {
            let refused = refused
                .expect("another tenant's task is refused")
                .to_string();
            assert!(refused.contains("no task"), "{protocol:?}: {refused}");
        }
        bob.cancel().await.unwrap();
    }

    let second = task_client(&server, Protocol::Connectionless, Some(ALICE)).await;
    let (_, task) = poll_to_end(&second, &id).await;
    let result = completed(&task);
    assert!(
        result["stdout"]
            .as_str()
            .unwrap()
            .contains("finished after its client left"),
        "{result}"
    );
}

#[tokio::test]
async fn working_tasks_are_capped_per_tenant_and_ended_ones_expire() {
    let server =
        HttpServer::start_with(&["--task-retention", "2", "--max-tasks-per-tenant", "1"]).await;
    let client = task_client(&server, Protocol::Initialized, None).await;
    let workspace = structured(
        &call(
            &client,
            "save_script",
            json!({"name": "slow.py", "content": "import time\ntime.sleep(2)\nprint('script done')"}),
        )
        .await,
    );
    let id = start_task(
        &client,
        "run_script",
        json!({"path": workspace["script"], "timeout": 60}),
    )
    .await;
    let refused = client
        .call_tool_once(
            CallToolRequestParams::new("run_python_code")
                .with_arguments(args(json!({"code": "1"}))),
        )
        .await
        .expect_err("a second working task is refused");
    assert!(
        refused.to_string().contains("--max-tasks-per-tenant 1"),
        "{refused}"
    );
    let (_, task) = poll_to_end(&client, &id).await;
    let result = completed(&task);
    assert!(
        result["stdout"].as_str().unwrap().contains("script done"),
        "{result}"
    );
    assert!(task.task.task.ttl_ms.is_some());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let gone = client
        .get_task(GetTaskParams::new(&id))
        .await
        .expect_err("an ended task past its retention is gone")
        .to_string();
    assert!(gone.contains("no task"), "{gone}");
}

#[tokio::test]
async fn a_cancelled_script_is_killed_with_what_it_started_and_the_kernel_stays() {
    let server = HttpServer::start().await;
    let client = task_client(&server, Protocol::Initialized, None).await;
    let plain = server.client().await;
    run(&plain, "y = 7", json!({})).await;
    call(
        &client,
        "save_script",
        json!({"name": "spin.py", "content": "import subprocess, time\nsubprocess.Popen(['sleep', '301'])\nopen('started', 'w').close()\ntime.sleep(302)"}),
    )
    .await;
    let id = start_task(
        &client,
        "run_script",
        json!({"path": "scripts/spin.py", "timeout": 600}),
    )
    .await;
    let started = "import os, time\nfor _ in range(600):\n    if os.path.exists('started'): break\n    time.sleep(0.1)\nprint(os.path.exists('started'))";
    let waited = run(&plain, started, json!({"timeout": 120})).await;
    assert_eq!(waited["stdout"], "True\n", "{waited}");
    client
        .cancel_task(CancelTaskParams::new(&id))
        .await
        .expect("tasks/cancel of a working script");
    let (_, task) = poll_to_end(&client, &id).await;
    assert_eq!(task.task.status(), TaskStatus::Cancelled, "{task:?}");

    // Nothing the script started runs on, in the kernel's container or beside it.
    let left = "import os\nleft = []\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n    try:\n        cmd = open(f'/proc/{pid}/cmdline').read().replace('\\0', ' ')\n    except OSError:\n        continue\n    if 'spin.py' in cmd or 'sleep 301' in cmd:\n        left.append(cmd)\nprint(left, y)";
    let after = run(&plain, left, json!({})).await;
    assert_eq!(after["stdout"], "[] 7\n", "{after}");
}
