//! `docker compose up` brings the server up in a container that drives the host's engine, and
//! a cell runs through it in a kernel with no network at all (the server in its container
//! reaches it over IPC through the shared data directory); a session with `egress_allow`
//! reaches the listed host and port through the server's proxy, and nothing else; `down`
//! leaves no kernel container behind.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BINARY, ContainerSweeper, Recorder, run};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

/// `docker compose` when the plugin is there, else the standalone `docker-compose`.
fn compose_command() -> Vec<String> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A Compose project that is taken down, and its kernels swept, when dropped.
struct Project {
    name: String,
    env: Vec<(String, String)>,
    _sweeper: ContainerSweeper,
}

impl Project {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        let command = compose_command();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
        Command::new(&command[0])
            .args(&command[1..])
            .arg("-f")
            .arg(file)
            .args(["-p", &self.name])
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .expect("compose runs")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-t", "60"]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn compose_up_serves_a_cell_and_down_leaves_no_kernel() {
    let built = Command::new(BINARY)
        .args(["image", "build"])
        .status()
        .expect("kernelbox image build runs");
    assert!(built.success(), "image build failed");

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data_dir = data_dir.canonicalize().unwrap();
    let port = free_port();
    // A host service the allowlist names, and another port of the host's it does not.
    let listed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let listed_port = listed.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listed.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlisted",
            );
        }
    });
    let host = common::host_address();
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let project = Project {
        name: format!("kernelbox-test-{suffix}"),
        env: vec![
            ("KERNELBOX_PORT".into(), port.to_string()),
            ("KERNELBOX_DATA_DIR".into(), data_dir.display().to_string()),
            (
                "KERNELBOX_EGRESS_ALLOW".into(),
                format!("{host}/32:{listed_port}"),
            ),
        ],
        _sweeper: ContainerSweeper::for_data_dir(&data_dir),
    };
    let up = project.compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    let health_url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = reqwest::get(&health_url).await
            && response.status().is_success()
        {
            let health: serde_json::Value = response.json().await.unwrap();
            assert_eq!(
                health["workspace_quota"]["mode"], "watchdog",
                "a server in a container without the privilege to mount holds quotas with its watchdog: {health}"
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let logs = project.compose(&["logs"]);
            panic!(
                "the server never became healthy: {}",
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/mcp")),
    );
    let client = Recorder::default().serve(transport).await.unwrap();
    let result = run(
        &client,
        "import numpy\nprint(numpy.arange(3).sum())",
        json!({}),
    )
    .await;
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["stdout"], "3\n");
    assert!(data_dir.join("workspaces/local/default/outputs").is_dir());
    let isolated = run(
        &client,
        &format!(
            "import socket\n\
             try:\n    socket.create_connection(('172.17.0.1', {port}), timeout=2).close()\n    reached = 'reached'\n\
             except OSError as error:\n    reached = type(error).__name__\n\
             print([name for _, name in socket.if_nameindex()], reached)"
        ),
        json!({}),
    )
    .await;
    assert_eq!(isolated["stdout"], "['lo'] OSError\n", "{isolated}");
    common::create_session(
        &client,
        "listed",
        json!({"egress_allow": [format!("{host}:{listed_port}")]}),
    )
    .await;
    let fetched = run(
        &client,
        &format!(
            "import urllib.request, urllib.error\n\
             print(urllib.request.urlopen('http://{host}:{listed_port}/', timeout=20).read().decode())\n\
             try:\n    urllib.request.urlopen('http://{host}:{port}/', timeout=20)\n\
             except urllib.error.HTTPError as error:\n    print(error.code, error.reason)"
        ),
        json!({"session_id": "listed"}),
    )
    .await;
    let stdout = fetched["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.starts_with("listed\n403 kernelbox egress: ")
            && stdout.contains("is not on this session's egress allowlist"),
        "{fetched}"
    );
    drop(client);

    let down = project.compose(&["down", "-t", "60"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = project._sweeper.containers();
    assert!(
        left.is_empty(),
        "kernel containers left after down: {left:?}"
    );
}
