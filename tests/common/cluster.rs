//! A Docker Swarm of Docker-in-Docker nodes built by `scripts/swarm-cluster`, with a shared
//! directory at the same path in every node and kernelbox served from a container on the
//! manager, as an operator would run it. Torn down when dropped, even after a panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use super::{BINARY, Client, Recorder, serve_args};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-cluster");

/// The id of `image` on this host's engine.
pub fn image_id(image: &str) -> String {
    output(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", image]))
}

pub fn output(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A swarm of Docker-in-Docker nodes, torn down when dropped.
pub struct Cluster {
    pub name: String,
    pub shared: PathBuf,
    nodes: usize,
    /// The kernel image as servers on the manager name it: what their container runs and
    /// their `--image`.
    pub image: String,
    /// Environment (`NAME=value`) every server on the manager gets.
    pub env: Vec<String>,
}

impl Cluster {
    /// Starts `nodes` nodes and puts this recipe's kernel image on every one with `kernelbox
    /// image distribute` (which labels each as holding it).
    pub fn up(nodes: usize) -> Self {
        let mut cluster = Self::bare(nodes);
        let engine = |index| format!("tcp://{}:2375", cluster.address(index));
        let mut distribute = Command::new(BINARY);
        distribute.args(["image", "distribute", "--manager", &engine(1)]);
        for index in 1..=nodes {
            distribute.args(["--node", &engine(index)]);
        }
        let delivered = output(&mut distribute);
        eprintln!("{delivered}");
        cluster.image = image_id(&super::kernel_image());
        cluster
    }

    /// Starts `nodes` nodes holding no image: set `image` to one the manager has before
    /// serving. Every node trusts plain-HTTP registries on the cluster's network, whose
    /// gateway is this host.
    pub fn bare(nodes: usize) -> Self {
        let name = format!("kbt{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let shared = PathBuf::from(format!("/tmp/{name}-shared"));
        let cluster = Self {
            name,
            shared,
            nodes,
            image: String::new(),
            env: Vec::new(),
        };
        output(Command::new("bash").arg(SCRIPT).args([
            "up",
            &cluster.name,
            &nodes.to_string(),
            cluster.shared.to_str().unwrap(),
        ]));
        std::fs::copy(BINARY, cluster.shared.join("kernelbox")).unwrap();
        cluster
    }

    /// This host's address on the cluster's network: where the nodes reach a service that
    /// runs on the host.
    pub fn host_address(&self) -> String {
        output(Command::new("docker").args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &format!("{}-net", self.name),
        ]))
    }

    /// Starts kernelbox (`--runtime swarm`) in a container on the manager, on a user-defined
    /// network, with the engine's socket and the shared directory (its data directory), and
    /// connects an MCP client to it.
    pub async fn serve(&self, extra: &[&str]) -> Client {
        self.serve_as("kernelbox", 8000, extra).await
    }

    /// Another server on the manager: its own container `name`, port and data directory.
    /// Its kernel image is the cluster's `image` unless `extra` names one with `--image`.
    pub async fn serve_as(&self, name: &str, port: u16, extra: &[&str]) -> Client {
        let shared = self.shared.to_str().unwrap().to_string();
        let manager = self.address(1);
        if self
            .docker_status(&["network", "inspect", "kernelbox-server"])
            .is_err()
        {
            self.docker(&["network", "create", "kernelbox-server"]);
        }
        let entrypoint = format!("{shared}/kernelbox");
        let mount = format!("{shared}:{shared}");
        let data_dir = format!("{shared}/data-{name}");
        let published = format!("{port}:8000");
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "kernelbox-server",
            "--user",
            "0",
            "-p",
            &published,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &mount,
            "-e",
            "RUST_LOG=info,kernelbox=debug",
            "--entrypoint",
            &entrypoint,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for variable in &self.env {
            args.extend(["-e".to_string(), variable.clone()]);
        }
        args.push(self.image.clone());
        let mut flags = vec!["--runtime", "swarm"];
        if !extra.contains(&"--image") {
            flags.extend(["--image", &self.image]);
        }
        flags.extend([
            "--transport",
            "http",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--allow-unauthenticated",
            "--allowed-host",
            &manager,
        ]);
        flags.extend(extra);
        args.extend(serve_args(Path::new(&data_dir), &flags));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker(&args);
        connect(&format!("http://{manager}:{port}/mcp")).await
    }

    /// Runs `docker` on the manager's engine; its stdout, or its stderr as the error.
    pub fn docker_status(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("docker")
            .args(["exec", &self.node(1), "docker"])
            .args(args)
            .output()
            .unwrap();
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// What the server on the manager logged.
    pub fn server_logs(&self) -> String {
        let logs = Command::new("docker")
            .args(["exec", &self.node(1), "docker", "logs", "kernelbox"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&logs.stderr).into_owned()
    }

    pub fn node(&self, index: usize) -> String {
        format!("{}-node{index}", self.name)
    }

    /// Runs `docker` on the manager's engine.
    pub fn docker(&self, args: &[&str]) -> String {
        self.docker_status(args)
            .unwrap_or_else(|error| panic!("docker {args:?} on the manager failed: {error}"))
    }

    pub fn address(&self, index: usize) -> String {
        output(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.node(index),
        ]))
    }

    /// The kernel service of `session`.
    pub fn service_of(&self, session: &str) -> String {
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
        service
    }

    /// The node running the kernel of `session`.
    pub fn node_of(&self, session: &str) -> String {
        let service = self.service_of(session);
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
        if std::thread::panicking() {
            let logs = self.server_logs();
            let tail: Vec<&str> = logs.lines().rev().take(80).collect();
            for line in tail.into_iter().rev() {
                eprintln!("[manager server] {line}");
            }
            for index in 1..=self.nodes {
                let logs = Command::new("docker")
                    .args(["logs", &self.node(index)])
                    .output();
                if let Ok(logs) = logs {
                    let text = String::from_utf8_lossy(&logs.stderr).into_owned();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    for line in tail.into_iter().rev() {
                        eprintln!("[node{index} dockerd] {line}");
                    }
                }
            }
        }
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["down", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.shared);
    }
}

/// Waits until the server answers its health check (healthy or not: a server whose image
/// is missing answers 503) and connects an MCP client.
pub async fn connect(url: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let health = url.replace("/mcp", "/healthz");
    while reqwest::get(&health).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server on the manager did not answer its health check"
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
