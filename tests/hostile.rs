//! Hostile code, each case with a typed outcome, and the other sessions' `1+1` still
//! answering while it runs.

mod common;

use std::time::{Duration, Instant};

use common::{Client, HttpServer, call, run, structured};
use serde_json::{Value, json};

/// Runs `1+1` in `session` every 200 ms until `stop` resolves; returns the latencies.
async fn probe_while<F: std::future::Future<Output = Value>>(
    client: &Client,
    session: &str,
    work: F,
) -> (Value, Vec<Duration>) {
    let mut latencies = Vec::new();
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return (result, latencies),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let started = Instant::now();
                let answer = run(client, "1+1", json!({ "session_id": session })).await;
                assert_eq!(answer["results"], json!(["2"]), "{answer}");
                latencies.push(started.elapsed());
            }
        }
    }
}

fn report(case: &str, latencies: &[Duration]) {
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[hostile] {case}: other session answered 1+1 {} times, slowest {:.1} ms",
        latencies.len(),
        max.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn out_of_memory_kills_the_kernel_reports_the_cause_and_restarts() {
    let server = HttpServer::start_with(&["--memory", "256m"]).await;
    let client = server.client().await;
    call(
        &client,
        "create_session",
        json!({"session_id": "bystander"}),
    )
    .await;
    run(
        &client,
        "open('kept.txt', 'w').write('safe')\nbefore = 1",
        json!({}),
    )
    .await;
    let hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))";
    let (result, latencies) = probe_while(
        &client,
        "bystander",
        run(&client, hog, json!({"timeout": 60})),
    )
    .await;
    report("out of memory", &latencies);
    assert_eq!(result["status"], "kernel_died", "{result}");
    let note = result["kernel_note"].as_str().unwrap();
    assert!(
        note.contains("out of memory") && note.contains("256 MiB"),
        "{note}"
    );
    let after = run(&client, "print(open('kept.txt').read())\nbefore", json!({})).await;
    assert_eq!(after["stdout"], "safe\n", "the workspace is intact");
    assert_eq!(after["error"]["ename"], "NameError", "a fresh kernel runs");
}

#[tokio::test]
async fn a_crashing_kernel_is_reported_with_its_exit_code_and_replaced() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let started = Instant::now();
    let result = run(&client, "import os\nos._exit(3)", json!({"timeout": 60})).await;
    assert_eq!(result["status"], "kernel_died", "{result}");
    assert!(
        result["kernel_note"].as_str().unwrap().contains("code 3"),
        "{result}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let segfault = run(
        &client,
        "import ctypes\nctypes.string_at(0)",
        json!({"timeout": 60}),
    )
    .await;
    assert_eq!(segfault["status"], "kernel_died", "{segfault}");
    assert!(
        segfault["kernel_note"].as_str().unwrap().contains("139"),
        "{segfault}"
    );
    let after = run(&client, "1+1", json!({})).await;
    assert_eq!(after["results"], json!(["2"]));
    assert_eq!(server.containers().len(), 1, "dead containers are removed");
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_pids_limit() {
    let server = HttpServer::start_with(&["--pids-limit", "64"]).await;
    let client = server.client().await;
    call(
        &client,
        "create_session",
        json!({"session_id": "bystander"}),
    )
    .await;
    let bomb = "import os, time\nchildren = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        children += 1\nexcept OSError as error:\n    print('stopped after', children, type(error).__name__)";
    let (result, latencies) = probe_while(
        &client,
        "bystander",
        run(&client, bomb, json!({"timeout": 60})),
    )
    .await;
    report("fork bomb", &latencies);
    let stdout = result["stdout"].as_str().unwrap_or_default();
    assert!(stdout.starts_with("stopped after"), "{result}");
    let health = structured(&call(&client, "get_kernel_health", json!({})).await);
    assert!(
        health["kernel_process"]["pids"].as_u64().unwrap() <= 64,
        "{health}"
    );
}

#[tokio::test]
async fn a_cpu_hog_does_not_starve_other_sessions() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    call(
        &client,
        "create_session",
        json!({"session_id": "bystander"}),
    )
    .await;
    let hog = "import time\nend = time.time() + 4\nwhile time.time() < end: pass\nprint('done')";
    let (result, latencies) = probe_while(&client, "bystander", run(&client, hog, json!({}))).await;
    report("cpu hog", &latencies);
    assert_eq!(result["stdout"], "done\n");
    assert!(
        latencies.len() >= 5,
        "the bystander answered only {} times",
        latencies.len()
    );
}

#[tokio::test]
async fn an_output_flood_is_capped_in_the_result_and_kept_whole_in_a_file() {
    let server = HttpServer::start_with(&["--max-output-bytes", "1m"]).await;
    let client = server.client().await;
    let flood = "import sys\nfor i in range(50):\n    sys.stdout.write(str(i % 10) * 1_000_000)\nprint('end')";
    let result = run(&client, flood, json!({"timeout": 120})).await;
    assert_eq!(
        result["status"],
        "ok",
        "{}",
        &result.to_string()[..500.min(result.to_string().len())]
    );
    assert_eq!(result["truncated"], true);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 1 << 20);
    let files = result["output_files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let path = server
        .data_dir
        .join("workspaces/local/default")
        .join(files[0].as_str().unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(size, 50_000_000 + 4, "the file holds the whole stream");
    assert!(
        result["kernel_note"]
            .as_str()
            .unwrap()
            .contains(files[0].as_str().unwrap())
    );
    let after = run(&client, "1+1", json!({})).await;
    assert_eq!(after["results"], json!(["2"]));
}
