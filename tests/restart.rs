//! A restarted server finds its sessions again: kernels left running are adopted with their
//! variables, dead ones come back fresh, and containers no record claims are removed.

mod common;

use common::{
    ContainerSweeper, HttpServer, call, create_session, run, structured, wait_until_running,
};
use serde_json::json;

fn data_dir() -> (tempfile::TempDir, std::path::PathBuf, ContainerSweeper) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sweeper = ContainerSweeper::for_data_dir(&data);
    (dir, data, sweeper)
}

#[tokio::test]
async fn a_restarted_server_adopts_its_kernels_with_their_variables() {
    let (_dir, data, sweeper) = data_dir();
    let mut first = HttpServer::start_in(&data, &[]).await;
    let client = first.client().await;
    run(&client, "x = 42", json!({})).await;
    create_session(&client, "second", json!({"description": "kept"})).await;
    run(&client, "y = 'still here'", json!({"session_id": "second"})).await;
    drop(client);
    assert!(first.stop().await.success());
    first.keep_containers();
    drop(first);
    assert_eq!(
        sweeper.containers().len(),
        2,
        "SIGTERM leaves kernels running"
    );

    let second = HttpServer::start_in(&data, &[]).await;
    let client = second.client().await;
    assert_eq!(run(&client, "print(x)", json!({})).await["stdout"], "42\n");
    let kept = run(&client, "print(y)", json!({"session_id": "second"})).await;
    assert_eq!(kept["stdout"], "still here\n", "{kept}");
    let listed = structured(&call(&client, "list_sessions", json!({})).await);
    assert_eq!(
        listed["sessions"]["second"]["metadata"]["description"],
        "kept"
    );
    assert_eq!(sweeper.containers().len(), 2, "no kernel was started anew");
    let logs = second.logs.lock().unwrap().join("\n");
    assert!(logs.contains("adopted=2"), "{logs}");
}

#[tokio::test]
async fn dead_kernels_come_back_fresh_and_unclaimed_containers_are_removed() {
    let (_dir, data, sweeper) = data_dir();
    let mut first = HttpServer::start_in(&data, &[]).await;
    let client = first.client().await;
    run(
        &client,
        "x = 1\nopen('kept.txt', 'w').write('workspace survives')",
        json!({}),
    )
    .await;
    create_session(&client, "forgotten", json!({})).await;
    drop(client);
    assert!(first.stop().await.success());
    first.keep_containers();
    drop(first);

    let containers = sweeper.containers();
    assert_eq!(containers.len(), 2);
    let killed = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=kernelbox.session-id=default",
            "--filter",
        ])
        .arg(format!("label=kernelbox.instance={}", sweeper.instance))
        .output()
        .unwrap();
    let default_container = String::from_utf8_lossy(&killed.stdout).trim().to_string();
    std::process::Command::new("docker")
        .args(["kill", &default_container])
        .output()
        .unwrap();
    std::fs::remove_file(data.join("state/sessions/local/forgotten.json")).unwrap();

    let second = HttpServer::start_in(&data, &[]).await;
    let client = second.client().await;
    let after = run(&client, "print(open('kept.txt').read())\nx", json!({})).await;
    assert_eq!(after["stdout"], "workspace survives\n");
    assert_eq!(
        after["error"]["ename"], "NameError",
        "a fresh kernel replaced the dead one"
    );
    let listed = structured(&call(&client, "list_sessions", json!({})).await);
    assert!(listed["sessions"].get("forgotten").is_none(), "{listed}");
    let left = sweeper.containers();
    assert_eq!(left.len(), 1, "only the new default kernel runs: {left:?}");
}

#[tokio::test]
async fn sigterm_lets_a_running_cell_finish_before_exiting() {
    let (_dir, data, _sweeper) = data_dir();
    let mut server = HttpServer::start_in(&data, &[]).await;
    let client = server.client().await;
    run(&client, "1", json!({})).await;
    let (result, status) = tokio::join!(
        run(
            &client,
            "import time\ntime.sleep(3)\nprint('done')",
            json!({})
        ),
        async {
            // SIGTERM only once the server holds the cell as running: that is what it waits on.
            wait_until_running(&client, "default").await;
            server.stop().await
        }
    );
    assert_eq!(result["stdout"], "done\n", "{result}");
    assert!(status.success());
}
