//! The introspection, health, restart and package tools through a real MCP client.

mod common;

use common::{
    HttpServer, PackageIndex, call, call_refused, create_session, create_session_refused, run,
    structured,
};
use serde_json::json;

#[tokio::test]
async fn list_variables_shows_names_types_and_reprs_without_leaking_names() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(
        &client,
        "import os\nalpha = 1\nbeta = 'text'\n_hidden = 3\ndef gamma(): pass",
        json!({}),
    )
    .await;
    let listed = structured(&call(&client, "list_variables", json!({})).await);
    assert_eq!(
        listed["variables"],
        json!(["alpha", "beta", "gamma"]),
        "{listed}"
    );
    assert_eq!(listed["details"][0]["type"], "int");
    assert_eq!(listed["details"][1]["repr"], "'text'");
    let after = run(
        &client,
        "print(sorted(k for k in globals() if 'kernelbox' in k))",
        json!({}),
    )
    .await;
    assert_eq!(after["stdout"], "[]\n", "the helper left names behind");
    let count = run(&client, "1", json!({})).await["execution_count"].clone();
    assert_eq!(count, 3, "helpers must not advance the execution counter");
}

#[tokio::test]
async fn the_kernel_starts_without_the_debugger_which_user_code_can_still_import() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let loaded = run(
        &client,
        "import sys
print('debugpy' in sys.modules)
import debugpy
print(bool(debugpy.__version__))",
        json!({}),
    )
    .await;
    assert_eq!(loaded["stdout"], "False\nTrue\n", "{loaded}");
}

#[tokio::test]
async fn completion_and_inspection_answer_from_the_kernel() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(&client, "import math\nmy_long_variable = 1", json!({})).await;
    let completion = structured(
        &call(
            &client,
            "code_completion",
            json!({"code": "my_lo", "cursor_pos": 5}),
        )
        .await,
    );
    assert!(
        completion["matches"]
            .to_string()
            .contains("my_long_variable"),
        "{completion}"
    );
    let inspected = structured(
        &call(
            &client,
            "inspect_object",
            json!({"code": "math.sqrt", "cursor_pos": 9}),
        )
        .await,
    );
    assert_eq!(inspected["found"], true, "{inspected}");
    assert!(
        inspected["data"]["text/plain"]
            .as_str()
            .unwrap()
            .contains("sqrt")
    );
    let error = call_refused(
        &client,
        "code_completion",
        json!({"code": "ab", "cursor_pos": 10}),
    )
    .await;
    assert!(error.contains("cursor_pos"), "{error}");
}

#[tokio::test]
async fn health_reports_the_containers_real_figures_and_limits() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(&client, "data = bytearray(50 * 1024 * 1024)", json!({})).await;
    let health = structured(&call(&client, "get_kernel_health", json!({})).await);
    assert_eq!(health["status"], "alive", "{health}");
    assert_eq!(health["session_id"], "default");
    let memory = health["kernel_process"]["memory_mb"]
        .as_f64()
        .expect("memory figure");
    assert!(memory > 50.0, "{health}");
    assert_eq!(health["kernel_process"]["memory_limit_mb"], 1024.0);
    assert_eq!(health["limits"]["pids"], 256);
    assert!(health["kernel_process"]["pids"].as_u64().unwrap() >= 1);
    for field in [
        "uptime",
        "execution_count",
        "last_execution_time",
        "average_execution_time",
        "metadata",
    ] {
        assert!(health.get(field).is_some(), "missing {field}");
    }
    let responsive = structured(
        &call(
            &client,
            "check_kernel_responsiveness",
            json!({"timeout": 5}),
        )
        .await,
    );
    assert_eq!(responsive["responsive"], true);
    assert!(responsive["response_time"].as_f64().unwrap() < 5.0);
    let info = structured(&call(&client, "get_workspace_info", json!({})).await);
    assert_eq!(info["workspace"], "/workspace");
    assert_eq!(info["outputs"], "/workspace/outputs");
}

#[tokio::test]
async fn restart_with_preserve_state_carries_picklable_variables() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(
        &client,
        "import threading\nnumbers = [1, 2, 3]\nlabel = 'kept'\nlock = threading.Lock()",
        json!({}),
    )
    .await;
    let restarted =
        structured(&call(&client, "restart_kernel", json!({"preserve_state": true})).await);
    assert_eq!(restarted["restarted"], true, "{restarted}");
    assert_eq!(restarted["preserved_vars"], 2, "{restarted}");
    assert_eq!(restarted["restored_vars"], 2, "{restarted}");
    assert_eq!(restarted["skipped_vars"], json!(["lock"]));
    let after = run(&client, "print(numbers, label)", json!({})).await;
    assert_eq!(after["stdout"], "[1, 2, 3] kept\n");
    let plain = structured(&call(&client, "restart_kernel", json!({})).await);
    assert_eq!(plain["preserved_vars"], 0);
    assert_eq!(
        run(&client, "numbers", json!({})).await["error"]["ename"],
        "NameError"
    );
}

#[tokio::test]
async fn install_dependencies_installs_from_the_configured_index_and_survives_a_restart() {
    let index = PackageIndex::start().await;
    let server = HttpServer::start_with(&index.server_flags()).await;
    let client = server.client().await;
    common::install_test_package(&client, "kbtestpkg==1.0").await;
    call(&client, "restart_kernel", json!({})).await;
    let again = run(
        &client,
        "import kbtestpkg\nprint(kbtestpkg.VALUE)",
        json!({}),
    )
    .await;
    assert_eq!(again["stdout"], "42\n", "{again}");
}

#[tokio::test]
async fn install_dependencies_refuses_pip_options_urls_and_paths() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    for packages in [
        json!([]),
        json!(["--index-url=http://evil/simple", "x"]),
        json!(["-r", "requirements.txt"]),
        json!(["https://example.com/x.whl"]),
        json!(["./local"]),
    ] {
        let error = call_refused(
            &client,
            "install_dependencies",
            json!({ "packages": packages }),
        )
        .await;
        assert!(
            error.contains("package") || error.contains("packages"),
            "{packages}: {error}"
        );
    }
}

#[tokio::test]
async fn a_session_may_lower_its_limits_but_not_raise_them() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    create_session(
        &client,
        "small",
        json!({"memory": "256m", "cpus": 0.5, "pids_limit": 64}),
    )
    .await;
    let health =
        structured(&call(&client, "get_kernel_health", json!({"session_id": "small"})).await);
    assert_eq!(health["limits"]["memory_mb"], 256.0, "{health}");
    assert_eq!(health["limits"]["cpus"], 0.5);
    assert_eq!(health["limits"]["pids"], 64);
    assert_eq!(health["kernel_process"]["memory_limit_mb"], 256.0);
    let error = create_session_refused(&client, "big", json!({"memory": "4g"})).await;
    assert!(
        error.contains("memory must be") && error.contains("1024 MiB"),
        "{error}"
    );
    let error = create_session_refused(&client, "big", json!({"cpus": -1})).await;
    assert!(error.contains("cpus"), "{error}");
}
