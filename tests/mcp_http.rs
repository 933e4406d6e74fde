//! The tools over streamable HTTP, end to end: a real MCP client, the real server binary, real
//! kernel containers.

mod common;

use std::time::Duration;

use common::{
    HttpServer, assert_metrics, call, call_refused, create_session, create_session_refused, run,
    structured, wait_until, wait_until_running,
};
use rmcp::model::{CallToolRequestParams, ClientRequest, Request};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};

#[tokio::test]
async fn state_persists_across_calls_and_output_is_captured() {
    let server = HttpServer::start().await;
    let client = server.client().await;

    let first = run(&client, "x = 41\nprint('hello')", json!({})).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["stdout"], "hello\n");
    assert_eq!(first["session_id"], "default");

    let second = run(
        &client,
        "import sys\nprint('oops', file=sys.stderr)\nx + 1",
        json!({}),
    )
    .await;
    assert_eq!(second["status"], "ok", "{second}");
    assert_eq!(second["stderr"], "oops\n");
    assert_eq!(second["results"], json!(["42"]));
    assert_eq!(second["displays"][0]["kind"], "execute_result");
    assert_eq!(second["displays"][0]["data"]["text/plain"], "42");
    assert!(second["execution_count"].as_u64().unwrap() >= 2);
    for field in ["outputs", "new_files", "execution_time"] {
        assert!(second.get(field).is_some(), "missing {field}");
    }
}

#[tokio::test]
async fn an_exception_gives_error_status_with_ename_and_evalue() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let result = call(
        &client,
        "run_python_code",
        json!({"code": "print('before')\n1/0"}),
    )
    .await;
    assert_eq!(result.is_error, Some(true));
    let result = structured(&result);
    assert_eq!(result["status"], "error");
    assert_eq!(result["stdout"], "before\n");
    assert_eq!(result["error"]["ename"], "ZeroDivisionError");
    assert_eq!(result["error"]["evalue"], "division by zero");
    let traceback = result["error"]["traceback"].to_string();
    assert!(traceback.contains("ZeroDivisionError"));
    assert!(
        !traceback.contains("\\u001b["),
        "ANSI codes left in {traceback}"
    );
    assert!(
        result["stderr"]
            .as_str()
            .unwrap()
            .contains("ZeroDivisionError")
    );
}

#[tokio::test]
async fn a_plot_comes_back_as_an_image_and_a_png_in_outputs() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()";
    let result = call(&client, "run_python_code", json!({ "code": code })).await;
    let value = structured(&result);
    assert_eq!(value["status"], "ok", "{value}");
    let image = result
        .content
        .iter()
        .find_map(|c| c.as_image())
        .expect("an image content item");
    assert_eq!(image.mime_type, "image/png");
    let outputs = value["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{value}");
    let path = outputs[0].as_str().unwrap();
    assert!(path.starts_with("outputs/") && path.ends_with(".png"));
    let png = std::fs::read(server.data_dir.join("workspaces/local/default").join(path)).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(value["displays"][0]["data"]["image/png"].is_string());
}

#[tokio::test]
async fn output_after_a_silence_is_not_lost() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let result = run(&client, "import time\ntime.sleep(2)\nprint('x')", json!({})).await;
    assert_eq!(result["status"], "ok");
    assert_eq!(result["stdout"], "x\n");
}

#[tokio::test]
async fn sessions_do_not_share_variables_and_run_in_parallel() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    for id in ["alpha", "beta"] {
        let created = create_session(&client, id, json!({})).await;
        assert_eq!(created["session_id"], id);
    }
    run(
        &client,
        "secret = 'alpha only'",
        json!({"session_id": "alpha"}),
    )
    .await;
    let beta = run(&client, "secret", json!({"session_id": "beta"})).await;
    assert_eq!(beta["status"], "error");
    assert_eq!(beta["error"]["ename"], "NameError");

    let timed = "import time\nstart = time.time()\ntime.sleep(2)\nprint(start, time.time())";
    let (a, b) = tokio::join!(
        run(&client, timed, json!({"session_id": "alpha"})),
        run(&client, timed, json!({"session_id": "beta"})),
    );
    let span = |v: &Value| -> (f64, f64) {
        let text = v["stdout"].as_str().unwrap_or_default();
        let parts: Vec<f64> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(parts.len(), 2, "unexpected result: {v}");
        (parts[0], parts[1])
    };
    let (a_start, a_end) = span(&a);
    let (b_start, b_end) = span(&b);
    assert!(
        a_start < b_end && b_start < a_end,
        "cells did not overlap: alpha {a_start}..{a_end}, beta {b_start}..{b_end}"
    );
}

#[tokio::test]
async fn cells_of_one_session_queue_in_order() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(&client, "order = []", json!({})).await;
    let (first, second) = tokio::join!(
        run(
            &client,
            "import time\ntime.sleep(1)\norder.append(1)",
            json!({})
        ),
        async {
            // Send the second cell only while the first runs, so it has to queue.
            wait_until_running(&client, "default").await;
            run(&client, "order.append(2)\nprint(order)", json!({})).await
        }
    );
    assert_eq!(first["status"], "ok");
    assert_eq!(second["stdout"], "[1, 2]\n");
}

#[tokio::test]
async fn an_endless_loop_times_out_and_the_session_keeps_its_variables() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(&client, "kept = 'still here'", json!({})).await;
    let result = run(
        &client,
        "print('started', flush=True)\nwhile True: pass",
        json!({"timeout": 2}),
    )
    .await;
    assert_eq!(result["status"], "timeout", "{result}");
    assert_eq!(result["stdout"], "started\n");
    let after = run(&client, "print(kept)", json!({})).await;
    assert_eq!(after["status"], "ok", "{after}");
    assert_eq!(after["stdout"], "still here\n");
}

#[tokio::test]
async fn restart_clears_variables_and_keeps_the_workspace() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(
        &client,
        "gone = 1\nopen('kept.txt', 'w').write('data')",
        json!({}),
    )
    .await;
    let restarted = structured(&call(&client, "restart_kernel", json!({})).await);
    assert_eq!(restarted["restarted"], true);
    let after = run(&client, "print(open('kept.txt').read())\ngone", json!({})).await;
    assert_eq!(after["stdout"], "data\n");
    assert_eq!(after["error"]["ename"], "NameError");
}

#[tokio::test]
async fn deleting_a_session_leaves_no_container_behind() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    create_session(&client, "doomed", json!({})).await;
    assert_eq!(server.containers().len(), 1);
    let deleted =
        structured(&call(&client, "delete_session", json!({"session_id": "doomed"})).await);
    assert_eq!(deleted["status"], "deleted");
    assert!(server.containers().is_empty(), "{:?}", server.containers());
    let error = call_refused(
        &client,
        "run_python_code",
        json!({"code": "1", "session_id": "doomed"}),
    )
    .await;
    assert!(error.contains("unknown session_id"), "{error}");
    assert!(
        server.data_dir.join("workspaces/local/doomed").is_dir(),
        "the workspace is kept by default"
    );
}

#[tokio::test]
async fn shutdown_with_stop_sessions_removes_every_container() {
    let mut server = HttpServer::start_with(&["--stop-sessions-on-exit"]).await;
    let client = server.client().await;
    run(&client, "1", json!({})).await;
    create_session(&client, "other", json!({})).await;
    assert_eq!(server.containers().len(), 2);
    let status = server.stop().await;
    assert!(status.success(), "{status}");
    assert!(server.containers().is_empty(), "{:?}", server.containers());
}

#[tokio::test]
async fn bad_session_ids_and_arguments_get_clear_errors() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let cases = [
        (
            "run_python_code",
            json!({"code": "1", "session_id": "../etc"}),
            "invalid session_id",
        ),
        (
            "run_python_code",
            json!({"code": "1", "session_id": "x".repeat(65)}),
            "invalid session_id",
        ),
        ("run_python_code", json!({}), "code"),
        ("run_python_code", json!({"code": 5}), "code"),
        (
            "run_python_code",
            json!({"code": "1", "timeout": -1}),
            "timeout must be",
        ),
        (
            "run_python_code",
            json!({"code": "1", "timeout": 100000}),
            "timeout must be",
        ),
        (
            "run_python_code",
            json!({"code": "1", "session_id": "nosuch"}),
            "unknown session_id",
        ),
        ("switch_session", json!({}), "session_id"),
        (
            "switch_session",
            json!({"session_id": "nosuch"}),
            "unknown session_id",
        ),
        (
            "delete_session",
            json!({"session_id": "a b"}),
            "invalid session_id",
        ),
        (
            "create_session",
            json!({"session_id": "bad/id"}),
            "invalid session_id",
        ),
        (
            "run_python_code",
            json!({"code": "1", "bogus": true}),
            "bogus",
        ),
    ];
    for (tool, arguments, expected) in cases {
        let error = call_refused(&client, tool, arguments.clone()).await;
        assert!(
            error.contains(expected),
            "{tool} {arguments}: expected {expected:?} in {error:?}"
        );
    }
    create_session(&client, "twice", json!({})).await;
    let error = create_session_refused(&client, "twice", json!({})).await;
    assert!(error.contains("already exists"), "{error}");
}

#[tokio::test]
async fn each_client_has_its_own_current_session() {
    let server = HttpServer::start().await;
    let first = server.client().await;
    let second = server.client().await;
    create_session(&first, "mine", json!({})).await;
    let switched = structured(&call(&first, "switch_session", json!({"session_id": "mine"})).await);
    assert_eq!(switched["previous_session"], "default");
    assert_eq!(switched["current_session"], "mine");

    assert_eq!(run(&first, "1", json!({})).await["session_id"], "mine");
    assert_eq!(run(&second, "1", json!({})).await["session_id"], "default");

    let listed = structured(&call(&second, "list_sessions", json!({})).await);
    assert_eq!(listed["active_session"], "default");
    assert_eq!(listed["total_sessions"], 2);
    assert_eq!(listed["sessions"]["default"]["current"], true);
    assert_eq!(listed["sessions"]["mine"]["current"], false);
}

#[tokio::test]
async fn output_streams_as_progress_and_log_notifications() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let code =
        "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.3)";
    // A slow start (a kernel made for the call, on Swarm) may bring a keepalive in between.
    let progress: Vec<String> = run_with_progress(&client, code, "tick 2\n")
        .await
        .into_iter()
        .filter(|p| !p.starts_with("[running for "))
        .collect();
    let recorder = client.service();
    assert_eq!(progress, ["tick 0\n", "tick 1\n", "tick 2\n"]);
    let logs = recorder.logs.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|l| l["text"] == "tick 2\n" && l["stream"] == "stdout"),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_silent_cell_still_sends_progress_every_few_seconds() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let progress = run_with_progress(
        &client,
        "import time\ntime.sleep(7.5)\nprint('done')",
        "done\n",
    )
    .await;
    let alive: Vec<&String> = progress
        .iter()
        .filter(|p| p.starts_with("[running for "))
        .collect();
    assert!(alive.len() >= 2, "a notification every 3 s: {progress:?}");
    assert!(
        alive[0].ends_with("0 bytes of output so far]"),
        "{progress:?}"
    );
    assert_eq!(progress.last().unwrap(), "done\n", "{progress:?}");
}

#[tokio::test]
async fn interrupt_kernel_stops_a_running_cell() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(&client, "kept = 7", json!({})).await;
    let (running, interrupted) = tokio::join!(
        run(
            &client,
            "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
            json!({})
        ),
        async {
            // Interrupt only once the kernel is inside the cell, as its first output shows.
            let recorder = client.service();
            let inside = wait_until(Duration::from_secs(30), || async {
                recorder
                    .logs
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l["text"] == "sleeping\n")
            })
            .await;
            assert!(inside, "the cell never started");
            structured(&call(&client, "interrupt_kernel", json!({})).await)
        }
    );
    assert_eq!(interrupted["interrupted"], true);
    assert_eq!(running["status"], "interrupted", "{running}");
    assert_eq!(
        run(&client, "print(kept)", json!({})).await["stdout"],
        "7\n"
    );
}

#[tokio::test]
async fn healthz_reports_engine_and_image() {
    let server = HttpServer::start().await;
    let response = reqwest::get(format!("{}/healthz", server.base_url()))
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["engine_reachable"], true);
    assert_eq!(health["image_present"], true);
}

#[tokio::test]
async fn a_cell_that_ignores_interrupts_gets_its_kernel_restarted() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    run(&client, "lost = 1", json!({})).await;
    let stubborn = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('spinning', flush=True)\nwhile True: pass";
    let result = run(&client, stubborn, json!({"timeout": 1})).await;
    assert_eq!(result["status"], "timeout", "{result}");
    assert_eq!(result["stdout"], "spinning\n");
    let note = result["kernel_note"].as_str().unwrap();
    assert!(note.contains("restarted"), "{note}");
    let after = run(&client, "lost", json!({})).await;
    assert_eq!(after["error"]["ename"], "NameError", "{after}");
    assert_eq!(server.containers().len(), 1, "the old container is gone");
}

#[test]
fn a_failing_test_leaves_no_container_behind() {
    let instance = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = instance.clone();
    let failed = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let server = HttpServer::start().await;
                *seen.lock().unwrap() = common::instance_of(&server.data_dir);
                let client = server.client().await;
                run(&client, "1", json!({})).await;
                assert_eq!(server.containers().len(), 1);
                panic!("a test failing while its kernel runs");
            })
    })
    .join();
    assert!(failed.is_err());
    let instance = instance.lock().unwrap().clone();
    assert!(!instance.is_empty());
    let left = common::containers_with_label("kernelbox.instance", &instance);
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

#[tokio::test]
async fn the_metrics_endpoint_parses_and_its_counters_move() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let before = server.metrics_text().await;
    assert_metrics(&before, &[("kernelbox_sessions_active", 0.0)]);
    run(&client, "1+1", json!({})).await;
    run(&client, "1/0", json!({})).await;
    let after = server.metrics_text().await;
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(
            !name.is_empty() && value.parse::<f64>().is_ok(),
            "bad line {line}"
        );
    }
    assert_metrics(
        &after,
        &[
            ("kernelbox_sessions_active", 1.0),
            ("kernelbox_kernels_running", 1.0),
            ("kernelbox_executions_total{status=\"ok\"}", 1.0),
            ("kernelbox_executions_total{status=\"error\"}", 1.0),
            ("kernelbox_kernel_starts_total", 1.0),
            ("kernelbox_execution_seconds_count", 2.0),
            ("kernelbox_container_start_seconds_count", 1.0),
        ],
    );
}

#[tokio::test]
async fn a_cell_sent_right_after_an_exception_still_runs() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    for i in 0..20 {
        let failed = run(&client, "1/0", json!({})).await;
        assert_eq!(failed["status"], "error");
        let next = run(&client, &format!("print({i})"), json!({})).await;
        assert_eq!(
            next["stdout"],
            format!("{i}\n"),
            "cell {i} was not run: {next}"
        );
    }
}

/// Runs `code` with a progress token and returns the progress messages, once `last` came
/// (it may arrive just after the response) or 5 s passed.
async fn run_with_progress(client: &common::Client, code: &str, last: &str) -> Vec<String> {
    let request = ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new("run_python_code")
            .with_arguments(common::args(json!({ "code": code }))),
    ));
    let handle = client
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    handle.await_response().await.unwrap();
    let recorder = client.service();
    wait_until(Duration::from_secs(5), || async {
        recorder.progress.lock().unwrap().iter().any(|p| p == last)
    })
    .await;
    recorder.progress.lock().unwrap().clone()
}
