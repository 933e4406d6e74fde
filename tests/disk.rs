//! The disk cap on kernel writes. Where the server may mount (these tests run it as root on
//! the host), each workspace is a loop-mounted ext4 image of the quota's size: a kernel that
//! writes twice its quota stops at the cap with ENOSPC, keeps its variables and earlier
//! files, the host holds no more than the quota for it, and the cap follows the workspace
//! through the warm pool, a server restart and deletion (nothing stays mounted). Where it may
//! not (`--workspace-quota-mode watchdog`), a watchdog stops a writer that crosses the quota.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    ContainerSweeper, HttpServer, call, create_session, metric_sample, mounts_under, run,
    structured, wait_until,
};
use serde_json::json;

const QUOTA: u64 = 64 << 20;

/// A cell that writes 1 MiB at a time into `name` until it has written `limit` bytes (or
/// forever when `limit` is None), flushing each time.
fn writer(name: &str, limit: Option<u64>) -> String {
    let until = limit.map_or("True".to_string(), |l| format!("written < {l}"));
    format!(
        "chunk = b'k' * (1 << 20)\nwritten = 0\nwith open('/workspace/{name}', 'wb') as f:\n    while {until}:\n        f.write(chunk)\n        f.flush()\n        written += len(chunk)\n"
    )
}

/// The image holding a session's workspace, as the server lays it out.
fn image_of(data_dir: &Path, owner: &str, session: &str) -> PathBuf {
    data_dir.join(format!("volumes/workspaces/{owner}/{session}.img"))
}

/// Bytes of host disk a file takes (its allocated blocks, not its length).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn file_size(server: &HttpServer, session: &str, name: &str) -> u64 {
    std::fs::metadata(
        server
            .data_dir
            .join(format!("workspaces/local/{session}/{name}")),
    )
    .map(|m| m.len())
    .unwrap_or(0)
}

#[tokio::test]
async fn a_kernel_writing_twice_its_quota_stops_at_the_cap() {
    let server = HttpServer::start_with(&["--workspace-quota", "64m"]).await;
    let health = server.healthz().await;
    assert_eq!(health["workspace_quota"]["mode"], "mount", "{health}");
    assert_eq!(health["workspace_quota"]["bytes"], QUOTA);
    let metrics = server.metrics_text().await;
    assert_eq!(
        metric_sample(&metrics, "kernelbox_workspace_quota_bytes{mode=\"mount\"}"),
        Some(QUOTA as f64)
    );
    let client = server.client().await;
    create_session(&client, "filler", json!({})).await;
    create_session(&client, "neighbour", json!({})).await;
    let filler = json!({"session_id": "filler"});
    run(
        &client,
        "x = 42\nopen('/workspace/before.txt', 'w').write('kept')",
        filler.clone(),
    )
    .await;

    let full = run(&client, &writer("big.bin", Some(2 * QUOTA)), filler.clone()).await;
    assert_eq!(full["status"], "quota_exceeded", "{full}");
    assert_eq!(full["error"]["ename"], "OSError", "{full}");
    let note = full["kernel_note"].as_str().unwrap();
    assert!(note.contains(&QUOTA.to_string()), "{note}");
    let stopped_at = file_size(&server, "filler", "big.bin");
    eprintln!(
        "mount mode: a writer of {} bytes stopped at {stopped_at} bytes",
        2 * QUOTA
    );
    assert!(
        stopped_at <= QUOTA && stopped_at > QUOTA / 2,
        "{stopped_at}"
    );

    let after = run(
        &client,
        "import os\nprint(x, open('/workspace/before.txt').read(), os.path.getsize('/workspace/big.bin') > 0)",
        filler.clone(),
    )
    .await;
    assert_eq!(after["stdout"], "42 kept True\n", "{after}");
    assert_eq!(after["execution_count"], 3, "the same kernel: {after}");
    let neighbour = run(&client, "print(1 + 1)", json!({"session_id": "neighbour"})).await;
    assert_eq!(neighbour["stdout"], "2\n");

    let image = image_of(&server.data_dir, "local", "filler");
    assert!(
        allocated(&image) <= QUOTA,
        "the host holds {} bytes for a {QUOTA}-byte quota",
        allocated(&image)
    );
    let health = structured(&call(&client, "get_kernel_health", filler.clone()).await);
    assert_eq!(health["workspace_quota_mode"], "mount");
    assert!(
        health["workspace_used_mb"].as_f64().unwrap() > 32.0,
        "{health}"
    );

    let refused = common::call_refused(
        &client,
        "write_file",
        json!({"session_id": "filler", "path": "more.txt", "content": "x".repeat(1 << 20)}),
    )
    .await;
    assert!(refused.contains("past its quota"), "{refused}");

    // Ending without removal unmounts and keeps the files; a session of that id gets them back.
    let ended = call(
        &client,
        "delete_session",
        json!({"session_id": "neighbour"}),
    )
    .await;
    assert_eq!(structured(&ended)["status"], "deleted");
    let root = server.data_dir.join("workspaces/local");
    assert_eq!(mounts_under(&root), vec![root.join("filler")]);
    call(
        &client,
        "delete_session",
        json!({"session_id": "filler", "remove_workspace": true}),
    )
    .await;
    assert!(mounts_under(&server.data_dir).is_empty());
    assert!(!image.exists(), "the image goes with the workspace");
    assert!(image_of(&server.data_dir, "local", "neighbour").exists());
}

#[tokio::test]
async fn a_pooled_workspace_keeps_its_cap() {
    let server = HttpServer::start_with(&["--pool-size", "1", "--workspace-quota", "32m"]).await;
    let filled = wait_until(Duration::from_secs(60), || async {
        metric_sample(&server.metrics_text().await, "kernelbox_pool_ready") == Some(1.0)
    })
    .await;
    assert!(filled, "the pool never filled");
    let client = server.client().await;
    create_session(&client, "pooled", json!({})).await;
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("session_id=pooled container_ms"),
        "the session came from the pool"
    );
    let pooled = json!({"session_id": "pooled"});
    let size = run(
        &client,
        "import os\ns = os.statvfs('/workspace')\nprint(s.f_blocks * s.f_frsize)",
        pooled.clone(),
    )
    .await;
    let size: u64 = size["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(size <= 32 << 20 && size > 24 << 20, "{size}");
    let full = run(&client, &writer("big.bin", Some(64 << 20)), pooled.clone()).await;
    assert_eq!(full["status"], "quota_exceeded", "{full}");
    let workspace = server.data_dir.join("workspaces/local/pooled");
    assert!(mounts_under(&server.data_dir).contains(&workspace));
    assert!(
        allocated(&image_of(&server.data_dir, "local", "pooled")) <= 32 << 20,
        "the pool's image moved with its workspace"
    );
}

#[tokio::test]
async fn a_restarted_server_adopts_a_session_whose_workspace_is_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _sweeper = ContainerSweeper::for_data_dir(&data);
    let mut first = HttpServer::start_in(&data, &["--workspace-quota", "32m"]).await;
    let client = first.client().await;
    run(
        &client,
        "x = 'adopted'\nopen('/workspace/a.txt', 'w').write('a')",
        json!({}),
    )
    .await;
    drop(client);
    assert!(first.stop().await.success());
    first.keep_containers();
    drop(first);
    let workspace = data.join("workspaces/local/default");
    assert_eq!(mounts_under(&data), vec![workspace.clone()], "left mounted");

    let second = HttpServer::start_in(&data, &["--workspace-quota", "32m"]).await;
    let client = second.client().await;
    let kept = run(
        &client,
        "print(x, open('/workspace/a.txt').read())",
        json!({}),
    )
    .await;
    assert_eq!(kept["stdout"], "adopted a\n", "{kept}");
    assert_eq!(mounts_under(&data), vec![workspace], "mounted once");
    let full = run(&client, &writer("big.bin", Some(64 << 20)), json!({})).await;
    assert_eq!(full["status"], "quota_exceeded", "{full}");
    let deleted = call(
        &client,
        "delete_session",
        json!({"session_id": "default", "remove_workspace": true}),
    )
    .await;
    assert_eq!(structured(&deleted)["status"], "deleted", "{deleted:?}");
    assert!(mounts_under(&data).is_empty(), "{:?}", mounts_under(&data));
}

#[tokio::test]
async fn the_watchdog_stops_a_writer_that_crosses_the_quota() {
    let server = HttpServer::start_with(&[
        "--workspace-quota-mode",
        "watchdog",
        "--workspace-quota",
        "64m",
    ])
    .await;
    let health = server.healthz().await;
    assert_eq!(health["workspace_quota"]["mode"], "watchdog", "{health}");
    assert!(mounts_under(&server.data_dir).is_empty());
    let client = server.client().await;
    run(&client, "x = 42", json!({})).await;

    let stopped = run(
        &client,
        &writer("endless.bin", None),
        json!({"timeout": 120}),
    )
    .await;
    assert_eq!(stopped["status"], "quota_exceeded", "{stopped}");
    let note = stopped["kernel_note"].as_str().unwrap();
    assert!(
        note.contains("watchdog") && note.contains(&QUOTA.to_string()),
        "{note}"
    );
    let stopped_at = file_size(&server, "default", "endless.bin");
    eprintln!("watchdog mode: an endless writer stopped at {stopped_at} bytes");
    assert!(stopped_at > QUOTA, "{stopped_at}");
    let kept = run(&client, "print(x)", json!({})).await;
    assert_eq!(
        kept["stdout"], "42\n",
        "the kernel and its variables are kept"
    );

    // A writer in the background (it starts once its cell has ended), with no cell running:
    // the kernel is stopped.
    call(&client, "delete_file", json!({"path": "endless.bin"})).await;
    let background = format!(
        "import threading, time\ndef fill():\n    time.sleep(1)\n{}\nthreading.Thread(target=fill, daemon=True).start()",
        writer("background.bin", None)
            .lines()
            .map(|line| format!("    {line}\n"))
            .collect::<String>()
    );
    let started = run(&client, &background, json!({})).await;
    assert_eq!(started["status"], "ok", "{started}");
    let stalled = wait_until(Duration::from_secs(30), || async {
        let before = file_size(&server, "default", "background.bin");
        tokio::time::sleep(Duration::from_secs(2)).await;
        before > QUOTA && file_size(&server, "default", "background.bin") == before
    })
    .await;
    assert!(stalled, "the background writer was stopped");
    eprintln!(
        "watchdog mode: a background writer stopped at {} bytes",
        file_size(&server, "default", "background.bin")
    );
    let metrics = server.metrics_text().await;
    // At least the cell and the background writer; a busy machine can make the watchdog
    // look at a workspace twice before the stop it asked for has landed.
    for sample in [
        "kernelbox_executions_total{status=\"quota_exceeded\"}",
        "kernelbox_kernel_deaths_total{cause=\"quota_exceeded\"}",
    ] {
        let value = metric_sample(&metrics, sample).unwrap_or(0.0);
        eprintln!("{sample} {value}");
        assert!(value >= 1.0, "{sample}: {metrics}");
    }
}

#[tokio::test]
async fn a_workspace_made_without_a_mount_moves_into_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sweeper = ContainerSweeper::for_data_dir(&data);
    let mut plain = HttpServer::start_in(
        &data,
        &[
            "--workspace-quota-mode",
            "watchdog",
            "--workspace-quota",
            "32m",
        ],
    )
    .await;
    let client = plain.client().await;
    run(
        &client,
        "x = 1\nimport os\nos.makedirs('/workspace/nested', exist_ok=True)\nopen('/workspace/nested/old.txt', 'w').write('old')",
        json!({}),
    )
    .await;
    drop(client);
    assert!(plain.stop().await.success());
    plain.keep_containers();
    drop(plain);
    let old_kernel = sweeper.containers();
    assert_eq!(old_kernel.len(), 1);

    let capped = HttpServer::start_in(&data, &["--workspace-quota", "32m"]).await;
    let client = capped.client().await;
    let moved = run(
        &client,
        "print(open('/workspace/nested/old.txt').read(), 'x' in globals())",
        json!({}),
    )
    .await;
    assert_eq!(
        moved["stdout"], "old False\n",
        "the files moved; the kernel, which saw the plain directory, was replaced: {moved}"
    );
    assert!(!sweeper.containers().contains(&old_kernel[0]));
    assert_eq!(
        mounts_under(&data),
        vec![data.join("workspaces/local/default")]
    );
    let full = run(&client, &writer("big.bin", Some(64 << 20)), json!({})).await;
    assert_eq!(full["status"], "quota_exceeded", "{full}");
}
