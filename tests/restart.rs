//! A restarted server finds its sessions again: kernels left running are adopted with their
//! variables, dead ones come back fresh, and containers no record claims are removed with
//! their run directories. A kernel recorded by an earlier version as reached over TCP (it has
//! a network) is replaced, not adopted.

mod common;

use common::{
    ContainerSweeper, HttpServer, call, create_session, run, structured, swarm_mode,
    wait_until_running,
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
    assert_eq!(
        run_dirs(&data),
        with_run_dirs(2),
        "each kernel keeps its run directory"
    );
    let logs = second.logs.lock().unwrap().join("\n");
    assert!(logs.contains("adopted=2"), "{logs}");
}

/// How many kernel run directories the data directory holds.
fn run_dirs(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("run")).map_or(0, |dir| dir.count())
}

/// The run directories `kernels` kernels have: one each on one host, where the server speaks
/// to them over IPC; none on Swarm, where it dials them over their overlay networks.
fn with_run_dirs(kernels: usize) -> usize {
    if swarm_mode() { 0 } else { kernels }
}

#[tokio::test]
async fn a_kernel_recorded_over_tcp_by_an_earlier_version_is_replaced_not_adopted() {
    if swarm_mode() {
        eprintln!("skipped: on Swarm the server reaches every kernel over TCP");
        return;
    }
    let (_dir, data, sweeper) = data_dir();
    let mut first = HttpServer::start_in(&data, &[]).await;
    let client = first.client().await;
    run(&client, "x = 1", json!({})).await;
    drop(client);
    assert!(first.stop().await.success());
    first.keep_containers();
    drop(first);
    let path = data.join("state/sessions/local/default.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let kernel = record["kernel"].as_object_mut().unwrap();
    kernel
        .remove("run_dir")
        .expect("the record names a run directory");
    kernel.insert("host".into(), json!("172.18.0.2"));
    kernel.insert(
        "ports".into(),
        json!({"shell": 5555, "iopub": 5556, "stdin": 5557, "control": 5558, "heartbeat": 5559}),
    );
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let old = sweeper.containers();
    assert_eq!(old.len(), 1);

    let second = HttpServer::start_in(&data, &[]).await;
    let logs = second.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("kernels without egress now have no network"),
        "{logs}"
    );
    assert!(logs.contains("adopted=0"), "{logs}");
    let client = second.client().await;
    let after = run(&client, "x", json!({})).await;
    assert_eq!(after["error"]["ename"], "NameError", "{after}");
    let left = sweeper.containers();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left, old, "the recorded container was removed");
    assert_eq!(run_dirs(&data), with_run_dirs(1));
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
    assert_eq!(
        run_dirs(&data),
        with_run_dirs(1),
        "removed kernels took their run directories"
    );
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
