//! The warm pool: sessions start from ready kernels, the pool refills, and a pooled kernel
//! serves one session only.

mod common;

use std::time::Duration;

use common::{HttpServer, call, create_session, run, structured, wait_until};
use serde_json::json;

async fn pool_ready(server: &HttpServer) -> f64 {
    common::metric_value(&server.metrics_text().await, "kernelbox_pool_ready")
}

async fn wait_for_pool(server: &HttpServer, ready: f64) {
    let filled = wait_until(Duration::from_secs(60), || async {
        pool_ready(server).await >= ready
    })
    .await;
    assert!(filled, "the pool never filled");
}

#[tokio::test]
async fn sessions_start_from_the_warm_pool_which_refills() {
    let server = HttpServer::start_with(&["--pool-size", "1"]).await;
    let client = server.client().await;
    wait_for_pool(&server, 1.0).await;
    let pooled = server.containers();
    assert_eq!(pooled.len(), 1);

    create_session(&client, "warm", json!({})).await;
    let ran = run(&client, "open('mine.txt', 'w').write('x')\nprint(sorted(k for k in globals() if not k.startswith('_')))", json!({"session_id": "warm"})).await;
    assert_eq!(ran["execution_count"], 1, "a fresh kernel: {ran}");
    assert!(
        server
            .data_dir
            .join("workspaces/local/warm/mine.txt")
            .is_file(),
        "the pool workspace became the session's"
    );
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("session_id=warm container_ms"),
        "no cold start for warm"
    );

    wait_for_pool(&server, 1.0).await;
    assert_eq!(
        server.containers().len(),
        2,
        "one session and one refilled pool kernel"
    );

    let delete = structured(&call(&client, "delete_session", json!({"session_id": "warm"})).await);
    assert_eq!(delete["status"], "deleted");
    let left = server.containers();
    assert_eq!(left.len(), 1);
    assert!(
        !left.contains(&pooled[0]),
        "the used kernel is gone, never returned to the pool"
    );

    create_session(&client, "custom", json!({"memory": "256m"})).await;
    assert_eq!(
        pool_ready(&server).await,
        1.0,
        "a session with its own limits starts cold"
    );
}

#[tokio::test]
async fn idle_sessions_are_culled_and_their_workspaces_removed_after_retention() {
    let server =
        HttpServer::start_with(&["--idle-timeout", "4", "--workspace-retention", "3"]).await;
    let client = server.client().await;
    create_session(&client, "sleepy", json!({})).await;
    let listed = structured(&call(&client, "list_sessions", json!({})).await);
    let expires = listed["sessions"]["sleepy"]["expires_in_seconds"]
        .as_f64()
        .unwrap();
    assert!(expires <= 4.0, "{listed}");
    let working = run(&client, "import time\ntime.sleep(6)", json!({})).await;
    assert_eq!(
        working["status"], "ok",
        "a running cell is not idle: {working}"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = structured(&call(&client, "list_sessions", json!({})).await);
        if listed["sessions"].get("sleepy").is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleepy was never culled: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let workspace = server.data_dir.join("workspaces/local/sleepy");
    let removed = wait_until(Duration::from_secs(30), || async { !workspace.exists() }).await;
    assert!(removed, "the workspace outlived its retention");
    let text = server.metrics_text().await;
    assert!(
        text.contains("kernelbox_sessions_ended_total{reason=\"idle\"}"),
        "{text}"
    );
}
