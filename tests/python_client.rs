//! The stock MCP Python SDK (`mcp` 2.3.0 from PyPI, installed here into a virtualenv under
//! the target directory on first use) against the real server over streamable HTTP, on MCP
//! 2026-07-28 (requests without a handshake or connection) and on 2025-11-25 (the handshake):
//! the tools work, and the current session belongs to the connection (2025) or to the
//! identity (2026); a cell that prints 200 MB, and one that prints 600 KB under a raised
//! `--max-output-bytes`, both come back in events the SDK accepts (it refuses any over
//! 1 MiB), with the whole output in a file the result names; and the SDK logs no failure, its
//! `DELETE /mcp` included.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{BINARY, ContainerSweeper, HttpServer, run, serve_args};
use serde_json::{Value, json};

/// The SDK version the tests use: the current one, which speaks MCP 2026-07-28 first.
const SDK: &str = "mcp==2.3.0";

/// The virtualenv's Python, made (once per test binary) when it is missing.
fn stock_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-mcp-2.3.0");
            let python = venv.join("bin/python");
            if !python.exists() {
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("python3 runs");
                assert!(made.success(), "python3 -m venv {}", venv.display());
                let installed = Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check", SDK])
                    .status()
                    .expect("pip runs");
                assert!(installed.success(), "pip install {SDK}");
            }
            python
        })
        .clone()
}

/// Runs a scenario of `tests/python/stock_client.py` against `server`, off the async
/// runtime: what the SDK saw.
async fn stock_client(server: &HttpServer, scenario: &'static str, mode: &'static str) -> Value {
    stock_client_as(server, scenario, mode, None).await
}

/// The same, with a bearer token.
async fn stock_client_as(
    server: &HttpServer,
    scenario: &'static str,
    mode: &'static str,
    token: Option<&'static str>,
) -> Value {
    let env = token.map(|token| ("KERNELBOX_TOKEN", token.to_string()));
    let target = format!("{}/mcp", server.base_url());
    run_script(target, scenario, mode, env).await
}

/// Runs the script against `target` (a URL, or `stdio:COMMAND`) with one more variable in
/// its environment.
async fn run_script(
    target: String,
    scenario: &'static str,
    mode: &'static str,
    env: Option<(&'static str, String)>,
) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/stock_client.py");
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(stock_python());
        command.envs(env).args([script, &target, scenario, mode]);
        command.output().expect("the script runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{scenario} ({mode}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{scenario} printed no report ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The size of a workspace file of the default session, asked of its kernel.
async fn file_size(server: &HttpServer, path: &str) -> u64 {
    let client = server.client().await;
    let sized = run(
        &client,
        &format!("import os\nprint(os.path.getsize({path:?}))"),
        json!({}),
    )
    .await;
    sized["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sized}"))
}

#[tokio::test]
async fn a_cell_printing_200_mb_reaches_the_stock_python_client_whole_on_disk() {
    let server = HttpServer::start().await;
    let report = stock_client(&server, "print-200m", "2026-07-28").await;
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");
    assert_eq!(report["warnings"], json!([]), "{report}");
    assert_eq!(report["is_error"], false, "{report}");
    let result = &report["structured"];
    assert_eq!(result["status"], "ok", "{report}");
    assert_eq!(result["truncated"], true, "{report}");
    let stdout_file = result["output_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|f| f.ends_with("-stdout.txt"))
        .unwrap_or_else(|| panic!("the result names the stdout file: {report}"))
        .to_string();
    assert_eq!(file_size(&server, &stdout_file).await, 200_000_001);
    assert!(
        report["largest_progress_message"].as_u64().unwrap() <= 128 << 10,
        "{report}"
    );
}

#[tokio::test]
async fn a_result_past_one_mib_is_cut_to_fit_with_its_whole_output_saved() {
    let server = HttpServer::start_with(&["--max-output-bytes", "50m"]).await;
    let report = stock_client(&server, "print-600k", "legacy").await;
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    assert_eq!(report["warnings"], json!([]), "{report}");
    let result = &report["structured"];
    assert_eq!(result["status"], "ok", "{report}");
    assert_eq!(result["truncated"], true, "{report}");
    assert!(
        result["kernel_note"]
            .as_str()
            .unwrap_or_default()
            .contains("larger than MCP clients accept"),
        "{report}"
    );
    let saved = result["output_files"][0].as_str().unwrap().to_string();
    assert_eq!(file_size(&server, &saved).await, 600_001, "{report}");
    assert!(report["text_bytes"].as_u64().unwrap() < 1 << 20, "{report}");
}

#[tokio::test]
async fn the_stock_python_client_works_on_both_protocol_versions() {
    for (mode, version, next_client_session) in [
        ("2026-07-28", "2026-07-28", "py"),
        ("legacy", "2025-11-25", "default"),
    ] {
        let server = HttpServer::start().await;
        let report = stock_client(&server, "tools", mode).await;
        assert_eq!(report["protocol_version"], version, "{report}");
        assert_eq!(
            report["warnings"],
            json!([]),
            "no failure logged, the session's DELETE included: {report}"
        );
        assert!(
            report["tools"]
                .as_array()
                .unwrap()
                .contains(&json!("run_python_code")),
            "{report}"
        );
        assert_eq!(report["structured"]["stdout"], "42\n", "{report}");
        assert_eq!(report["created"]["status"], "created", "{report}");
        assert_eq!(report["after_switch"]["session_id"], "py", "{report}");
        assert_eq!(report["after_switch"]["stdout"], "False\n", "{report}");
        assert_eq!(
            report["next_client"]["session_id"], next_client_session,
            "a new client's current session: the identity's on 2026-07-28, a fresh connection's `default` before: {report}"
        );
    }
}

#[tokio::test]
async fn a_file_past_one_mib_reaches_the_stock_python_client_in_parts() {
    let server = HttpServer::start().await;
    let report = stock_client(&server, "read-big", "auto").await;
    assert_eq!(report["read_bytes"], 3 << 20, "{report}");
    assert!(report["parts"].as_u64().unwrap() > 3, "{report}");
    assert_eq!(report["warnings"], json!([]), "{report}");
}

#[tokio::test]
async fn a_five_second_cell_runs_as_a_task_for_the_stock_python_client() {
    let server = HttpServer::start().await;
    let report = stock_client(&server, "task", "2026-07-28").await;
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");
    assert_eq!(report["task_status"], "completed", "{report}");
    let seen = report["seen_while_working"].as_array().unwrap();
    assert!(
        seen.iter().any(|output| {
            let output = output.as_str().unwrap();
            output.contains("tick 0") && !output.contains("tick 4")
        }),
        "output so far was seen while the task worked: {report}"
    );
    assert_eq!(
        report["structured"]["results"],
        json!(["'done'"]),
        "{report}"
    );
    assert_eq!(report["warnings"], json!([]), "{report}");

    let cancelled = stock_client(&server, "task-cancel", "2026-07-28").await;
    assert_eq!(
        cancelled["task_statuses"],
        json!(["completed", "cancelled", "completed"]),
        "{cancelled}"
    );
    assert_eq!(cancelled["after"]["results"], json!(["42"]), "{cancelled}");

    // On a 2025 connection the SDK takes no task (its extension claims need 2026-07-28):
    // the same call answers in place.
    let legacy = stock_client(&server, "task", "legacy").await;
    assert_eq!(legacy["protocol_version"], "2025-11-25", "{legacy}");
    assert!(legacy.get("task_status").is_none(), "{legacy}");
    assert_eq!(
        legacy["structured"]["results"],
        json!(["'done'"]),
        "{legacy}"
    );
}

#[tokio::test]
async fn over_2026_07_28_the_current_session_belongs_to_the_tenant_and_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"token": "alice-token-0123456789abcdef", "tenant": "alice"},
            {"token": "bob-token-0123456789abcdefgh", "tenant": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    let server = HttpServer::start_with(&["--tokens-file", tokens.to_str().unwrap()]).await;
    let alice = Some("alice-token-0123456789abcdef");
    let bob = Some("bob-token-0123456789abcdefgh");
    let claimed = stock_client_as(&server, "claim", "2026-07-28", alice).await;
    assert_eq!(claimed["switched"]["current_session"], "mine", "{claimed}");
    let alice_again = stock_client_as(&server, "look", "2026-07-28", alice).await;
    assert_eq!(
        alice_again["ran_in"], "mine",
        "alice's next client: {alice_again}"
    );
    let bobs = stock_client_as(&server, "look", "2026-07-28", bob).await;
    assert_eq!(bobs["ran_in"], "default", "bob keeps his own: {bobs}");
    assert_eq!(bobs["sessions"], json!(["default"]), "{bobs}");
    assert_eq!(bobs["mine_refused"], true, "{bobs}");
    assert!(
        bobs["mine_message"]
            .as_str()
            .unwrap()
            .contains("unknown session_id"),
        "{bobs}"
    );
    assert_eq!(bobs["warnings"], json!([]), "{bobs}");
}

#[tokio::test]
async fn the_stock_python_client_runs_cells_over_stdio_on_both_versions() {
    for (mode, version) in [("2026-07-28", "2026-07-28"), ("legacy", "2025-11-25")] {
        let dir = tempfile::tempdir().unwrap();
        let _sweeper = ContainerSweeper::for_data_dir(dir.path());
        let args =
            serde_json::to_string(&serve_args(dir.path(), &["--transport", "stdio"])).unwrap();
        let target = format!("stdio:{BINARY}");
        let report = run_script(target, "tools", mode, Some(("KERNELBOX_STDIO_ARGS", args))).await;
        assert_eq!(report["protocol_version"], version, "{report}");
        assert_eq!(report["structured"]["stdout"], "42\n", "{report}");
        assert_eq!(report["after_switch"]["session_id"], "py", "{report}");
    }
}
