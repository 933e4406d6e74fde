//! The Swarm runtime on a real multi-node swarm: Docker-in-Docker nodes built offline
//! (`scripts/swarm-cluster`), a shared workspace directory mounted at the same path in every
//! node, and the server running as a container on the manager, as an operator would run it.
//! Sessions land on more than one node, a kernel reaches neither another kernel nor the
//! internet, and a lost node costs its sessions their variables but not their workspaces. The
//! test builds and removes its nodes itself, even when it fails.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{BINARY, Client, Recorder, call, run, structured};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-cluster");

fn output(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A swarm of Docker-in-Docker nodes, torn down when dropped.
struct Cluster {
    name: String,
    shared: PathBuf,
}

impl Cluster {
    fn up(nodes: usize, image: &str) -> Self {
        let name = format!("kbt{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let shared = PathBuf::from(format!("/tmp/{name}-shared"));
        let cluster = Self { name, shared };
        output(Command::new("bash").arg(SCRIPT).args([
            "up",
            &cluster.name,
            &nodes.to_string(),
            cluster.shared.to_str().unwrap(),
            image,
        ]));
        cluster
    }

    fn node(&self, index: usize) -> String {
        format!("{}-node{index}", self.name)
    }

    /// Runs `docker` on the manager's engine.
    fn docker(&self, args: &[&str]) -> String {
        output(
            Command::new("docker")
                .args(["exec", &self.node(1), "docker"])
                .args(args),
        )
    }

    fn address(&self, index: usize) -> String {
        output(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.node(index),
        ]))
    }

    /// The node running the kernel of `session`.
    fn node_of(&self, session: &str) -> String {
        let service = self.docker(&[
            "service",
            "ls",
            "--filter",
            &format!("label=kernelbox.session-id={session}"),
            "--filter",
            "label=kernelbox.role=kernel",
            "--format",
            "{{.Name}}",
        ]);
        assert!(!service.is_empty(), "session {session} has no service");
        self.docker(&[
            "service",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}",
            &service,
        ])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["down", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.shared);
    }
}

async fn connect(url: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let health = url.replace("/mcp", "/healthz");
    while reqwest::get(&health)
        .await
        .ok()
        .map(|r| r.status().as_u16())
        != Some(200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server on the manager did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Recorder::default()
        .serve(StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.to_string()),
        ))
        .await
        .expect("MCP client connects to the server on the manager")
}

/// Whether the kernel of `session` can open a TCP connection to `host:port` within 3 s.
async fn reaches(client: &Client, session: &str, host: &str, port: u16) -> String {
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(({host:?}, {port}), timeout=3).close()\n    print('reached')\nexcept OSError as error:\n    print('blocked', type(error).__name__)"
    );
    let result = run(client, &code, json!({"session_id": session})).await;
    assert_eq!(result["status"], "ok", "{result}");
    result["stdout"].as_str().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_spread_over_nodes_stay_apart_and_outlive_a_lost_node() {
    let tag = output(Command::new(BINARY).args(["image", "name"]));
    let image_id = output(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &tag]));
    let recipe = tag.rsplit(':').next().unwrap().to_string();
    let cluster = Cluster::up(2, &tag);
    // The loader vouches for node 2's copy of the image; the server labels its own node.
    cluster.docker(&[
        "node",
        "update",
        "--label-add",
        &format!(
            "kernelbox.image-{recipe}={}",
            image_id.trim_start_matches("sha256:")
        ),
        &cluster.node(2),
    ]);
    // Nodes are declared down within about 3 s of their last heartbeat.
    cluster.docker(&["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    let shared = cluster.shared.to_str().unwrap().to_string();
    std::fs::copy(BINARY, cluster.shared.join("kernelbox")).unwrap();
    let manager = cluster.address(1);
    cluster.docker(&["network", "create", "kernelbox-server"]);
    cluster.docker(&[
        "run",
        "-d",
        "--name",
        "kernelbox",
        "--network",
        "kernelbox-server",
        "--user",
        "0",
        "-p",
        "8000:8000",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{shared}:{shared}"),
        "-e",
        "RUST_LOG=info,kernelbox=debug",
        "--entrypoint",
        &format!("{shared}/kernelbox"),
        &image_id,
        "serve",
        "--runtime",
        "swarm",
        "--image",
        &image_id,
        "--data-dir",
        &format!("{shared}/data"),
        "--transport",
        "http",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--allow-unauthenticated",
        "--allowed-host",
        &manager,
        "--memory",
        "512m",
        "--interrupt-grace",
        "1",
    ]);
    let client = connect(&format!("http://{manager}:8000/mcp")).await;

    let sessions = ["s1", "s2", "s3"];
    let mut addresses = HashMap::new();
    for session in sessions {
        let created =
            structured(&call(&client, "create_session", json!({"session_id": session})).await);
        assert_eq!(created["status"], "created", "{created}");
        let result = run(
            &client,
            "import socket\nopen('precious.txt', 'w').write('kept')\nprint(socket.gethostbyname(socket.gethostname()))",
            json!({"session_id": session}),
        )
        .await;
        assert_eq!(result["status"], "ok", "{result}");
        addresses.insert(
            session,
            result["stdout"].as_str().unwrap().trim().to_string(),
        );
    }
    let nodes: HashMap<&str, String> = sessions.iter().map(|s| (*s, cluster.node_of(s))).collect();
    let distinct: BTreeSet<&String> = nodes.values().collect();
    assert!(
        distinct.len() >= 2,
        "sessions all landed on one node: {nodes:?}"
    );

    let remote = sessions
        .iter()
        .copied()
        .find(|s| nodes[s] == cluster.node(2))
        .expect("a session runs on node 2");
    let local = sessions
        .iter()
        .copied()
        .find(|s| nodes[s] == cluster.node(1))
        .expect("a session runs on node 1");
    for (from, to) in [(local, remote), (remote, local)] {
        let outcome = reaches(&client, from, &addresses[to], 5555).await;
        assert!(
            outcome.starts_with("blocked"),
            "{from} on {} reached {to}'s kernel on {}: {outcome}",
            nodes[from],
            nodes[to]
        );
    }
    for session in [local, remote] {
        let outcome = reaches(&client, session, "deb.debian.org", 80).await;
        assert!(
            outcome.starts_with("blocked"),
            "{session} reached the internet: {outcome}"
        );
    }

    let lost = output(Command::new("docker").args(["kill", &cluster.node(2)]));
    assert!(!lost.is_empty());
    let died = run(
        &client,
        "print('still here')",
        json!({"session_id": remote, "timeout": 120}),
    )
    .await;
    assert_eq!(died["status"], "kernel_died", "{died}");
    let note = died["kernel_note"].as_str().unwrap_or_default();
    assert!(note.contains("node lost"), "{died}");

    let back = run(
        &client,
        "print(open('precious.txt').read())",
        json!({"session_id": remote}),
    )
    .await;
    assert_eq!(back["status"], "ok", "{back}");
    assert_eq!(
        back["stdout"], "kept\n",
        "the workspace survived the node: {back}"
    );
    assert_eq!(cluster.node_of(remote), cluster.node(1));
    let untouched = run(&client, "print('fine')", json!({"session_id": local})).await;
    assert_eq!(untouched["stdout"], "fine\n", "{untouched}");
    let _: Value = untouched;
}
