//! The server under test, started as a user would: `kernelbox serve` over HTTP on a free port
//! or over stdio as an MCP client launches it, each on its own data directory, stopped and
//! swept when dropped. Under the Swarm runtime each server runs in a container on this engine,
//! as an operator would run it on a swarm manager.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::docker::{ContainerSweeper, docker_lines, kernel_image, remove_containers, swarm_mode};
use super::mcp::{Client, Recorder};

pub const BINARY: &str = env!("CARGO_BIN_EXE_kernelbox");

/// The user-defined network test servers run on under the Swarm runtime (Docker's DNS, which
/// resolves kernel tasks by name, serves only such networks).
pub const SERVER_NETWORK: &str = "kernelbox-test-servers";

/// Creates the servers' network once: test threads creating it at the same time would make
/// duplicates, and a swarm engine then finds no network by that name.
fn ensure_server_network() {
    static CREATED: std::sync::Once = std::sync::Once::new();
    CREATED.call_once(|| {
        let filter = format!("name=^{SERVER_NETWORK}$");
        if docker_lines(&["network", "ls", "-q", "--filter", &filter]).is_empty() {
            docker_lines(&["network", "create", SERVER_NETWORK]);
        }
    });
}

/// `docker run` arguments that start `kernelbox` in a container the way an operator would on
/// a swarm manager: the engine's socket, `/tmp` (where every test directory lives) at the
/// same path, the binary under test, on a user-defined network.
fn server_container_args(name: &str, env: &[(&str, &str)]) -> Vec<String> {
    ensure_server_network();
    let image = kernel_image();
    let mut args: Vec<String> = [
        "--name",
        name,
        "--label",
        "kernelbox.test=server",
        "--network",
        SERVER_NETWORK,
        "--user",
        "0",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        "/tmp:/tmp",
        "-v",
        &format!("{BINARY}:/usr/local/bin/kernelbox:ro"),
        "-e",
        "RUST_LOG=info,kernelbox=debug",
        "-e",
        "KERNELBOX_RUNTIME=swarm",
        "--entrypoint",
        "/usr/local/bin/kernelbox",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (key, value) in env {
        args.push("-e".to_string());
        args.push(format!("{key}={value}"));
    }
    args.push(image);
    args
}

/// Flags every test server gets: its own data dir, the prebuilt image, no build.
pub fn serve_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--no-build",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--interrupt-grace",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A kernelbox server over HTTP on a free port, stopped (SIGTERM) and swept when dropped.
pub struct HttpServer {
    pub url: String,
    pub data_dir: PathBuf,
    sweep: bool,
    /// Every line the server wrote to stderr so far.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The server process, or under the Swarm runtime `docker logs -f` of its container.
    child: Child,
    /// The server's container under the Swarm runtime.
    container: Option<ServerContainer>,
    sweeper: ContainerSweeper,
    _dir: Option<tempfile::TempDir>,
}

/// A Swarm test server's container, removed when dropped: also when the server never came to
/// serve and the test panicked before it had an `HttpServer`.
struct ServerContainer(String);

impl Drop for ServerContainer {
    fn drop(&mut self) {
        remove_containers(std::slice::from_ref(&self.0));
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if !self.sweep {
            self.sweeper.instance.clear();
        }
    }
}

impl HttpServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[]).await
    }

    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        Self::launch(data_dir, Some(dir), extra, env).await
    }

    /// A server on a data directory the caller owns (to restart a server on it).
    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        Self::launch(data_dir.to_path_buf(), None, extra, &[]).await
    }

    async fn launch(
        data_dir: PathBuf,
        dir: Option<tempfile::TempDir>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let sweeper = ContainerSweeper::for_data_dir(&data_dir);
        let (mut child, container) = if swarm_mode() {
            let name = format!(
                "kernelbox-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..10]
            );
            let mut args = vec![
                "run".to_string(),
                "-d".to_string(),
                "-p".to_string(),
                "127.0.0.1::8000".to_string(),
            ];
            args.extend(server_container_args(&name, env));
            args.extend(serve_args(
                &data_dir,
                &[
                    "--transport",
                    "http",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "8000",
                    "--allow-unauthenticated",
                ],
            ));
            args.extend(extra.iter().map(|s| s.to_string()));
            let started = std::process::Command::new("docker")
                .args(&args)
                .output()
                .unwrap();
            let container = ServerContainer(name.clone());
            assert!(
                started.status.success(),
                "docker run: {}",
                String::from_utf8_lossy(&started.stderr)
            );
            let logs = Command::new("docker")
                .args(["logs", "-f", &name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("docker logs starts");
            (logs, Some(container))
        } else {
            let mut args = serve_args(&data_dir, &["--transport", "http", "--port", "0"]);
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = Command::new(BINARY)
                .args(&args)
                .envs(env.iter().copied())
                .env("RUST_LOG", "info,kernelbox=debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("kernelbox starts");
            (child, None)
        };
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let url = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("[server] {line}");
                logs.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("serving MCP at ").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("kernelbox exited before serving");
        })
        .await
        .expect("kernelbox serves within 120 s");
        let url = match container.as_ref().map(|c| c.0.as_str()) {
            Some(name) => {
                let published = docker_lines(&["port", name, "8000/tcp"]);
                format!(
                    "http://{}/mcp",
                    published.first().expect("the server's port is published")
                )
            }
            None => url,
        };
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[server] {line}");
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            url,
            data_dir,
            sweep: true,
            logs,
            child,
            container,
            sweeper,
            _dir: dir,
        }
    }

    /// The `/healthz` document.
    pub async fn healthz(&self) -> serde_json::Value {
        reqwest::get(format!("{}/healthz", self.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The server's container under the Swarm runtime.
    fn container_name(&self) -> Option<&str> {
        self.container
            .as_ref()
            .map(|container| container.0.as_str())
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        match self.container_name() {
            Some(name) => docker_lines(&["inspect", "-f", "{{.State.Pid}}", name])
                .first()
                .and_then(|pid| pid.parse().ok())
                .expect("the server's container runs"),
            None => self.child.id().expect("the server runs"),
        }
    }

    /// A field of the server process's `/proc/<pid>/status`, in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Under the Swarm runtime, each network the server's container is on and its IPv4
    /// address there; nothing on one host, where the server is not in a container.
    pub fn container_networks(&self) -> Vec<(String, String)> {
        let Some(name) = self.container_name() else {
            return Vec::new();
        };
        let format =
            "{{range $net, $ep := .NetworkSettings.Networks}}{{$net}} {{$ep.IPAddress}}\n{{end}}";
        docker_lines(&["inspect", "-f", format, name])
            .iter()
            .filter_map(|line| {
                let (network, address) = line.split_once(' ')?;
                Some((network.to_string(), address.to_string()))
            })
            .collect()
    }

    /// Under the Swarm runtime, every TCP socket listening in the server's container and every
    /// UDP socket bound there, as `(protocol, address, port)`, read from its `/proc/net`.
    pub fn container_sockets(&self) -> Vec<(&'static str, IpAddr, u16)> {
        let Some(name) = self.container_name() else {
            return Vec::new();
        };
        let mut sockets = Vec::new();
        for (protocol, table) in [
            ("tcp", "tcp"),
            ("tcp", "tcp6"),
            ("udp", "udp"),
            ("udp", "udp6"),
        ] {
            let path = format!("/proc/net/{table}");
            for line in docker_lines(&["exec", name, "cat", &path]).iter().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                    continue;
                };
                // 0A is TCP_LISTEN; a UDP socket is bound whatever its state.
                if protocol == "tcp" && *state != "0A" {
                    continue;
                }
                if let Some((address, port)) = proc_net_address(local) {
                    sockets.push((protocol, address, port));
                }
            }
        }
        sockets
    }

    /// Leaves this server's containers running when it is dropped (the next server on the
    /// same data directory adopts them, and its own sweeper removes them).
    pub fn keep_containers(&mut self) {
        self.sweep = false;
    }

    pub fn base_url(&self) -> String {
        self.url.trim_end_matches("/mcp").to_string()
    }

    pub async fn client(&self) -> Client {
        self.client_with(Recorder::default()).await
    }

    /// An MCP client handled by `recorder` (one that takes tasks, say).
    pub async fn client_with(&self, recorder: Recorder) -> Client {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.clone()),
        );
        recorder
            .serve(transport)
            .await
            .expect("MCP client connects over HTTP")
    }

    /// An MCP client presenting `token` as its bearer token.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.url.clone());
        config.auth_header = Some(token.to_string());
        Recorder::default()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("MCP client connects with its token")
    }

    pub fn containers(&self) -> Vec<String> {
        self.sweeper.containers()
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(name) = self.container_name().map(str::to_string) {
            use std::os::unix::process::ExitStatusExt;
            docker_lines(&["kill", "--signal", "TERM", &name]);
            let code = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::task::spawn_blocking(move || docker_lines(&["wait", &name])),
            )
            .await
            .expect("kernelbox stops within 60 s of SIGTERM")
            .unwrap();
            let code: i32 = code.first().and_then(|c| c.parse().ok()).unwrap_or(-1);
            return std::process::ExitStatus::from_raw(code << 8);
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("kernelbox stops within 60 s of SIGTERM")
            .unwrap()
    }
}

/// `ADDRESS:PORT` as `/proc/net/tcp` prints it: the address as 32-bit words in hex, each in
/// the host's (little-endian) byte order, the port in hex.
fn proc_net_address(local: &str) -> Option<(IpAddr, u16)> {
    let (address, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::new();
    for word in address.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let address = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some((address, port))
}

/// A kernelbox server over stdio, as an MCP client launches it.
pub struct StdioServer {
    pub client: Client,
    sweeper: ContainerSweeper,
    _dir: tempfile::TempDir,
}

impl StdioServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let sweeper = ContainerSweeper::for_data_dir(&data_dir);
        let mut command = if swarm_mode() {
            let name = format!(
                "kernelbox-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..10]
            );
            let mut command = Command::new("docker");
            command
                .args(["run", "-i", "--rm"])
                .args(server_container_args(&name, &[]));
            command
        } else {
            Command::new(BINARY)
        };
        command
            .args(serve_args(&data_dir, &["--transport", "stdio"]))
            .stderr(Stdio::inherit());
        let transport = TokioChildProcess::new(command).expect("kernelbox starts");
        let client = Recorder::default()
            .serve(transport)
            .await
            .expect("MCP client connects over stdio");
        Self {
            client,
            sweeper,
            _dir: dir,
        }
    }

    pub fn containers(&self) -> Vec<String> {
        self.sweeper.containers()
    }

    /// The client alone, with the sweeper and data directory still held by the caller.
    pub fn into_parts(self) -> (Client, ContainerSweeper, tempfile::TempDir) {
        (self.client, self.sweeper, self._dir)
    }
}

/// Runs `kernelbox serve` with `args` on a fresh data directory; it must refuse to start.
/// Returns what it printed on stderr.
pub fn serve_refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BINARY)
        .args(["serve", "--port", "0", "--no-build", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "kernelbox started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
