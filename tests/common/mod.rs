//! Test harness: starts the real `kernelbox` binary against the real Docker engine, connects a
//! real MCP client, and removes every container the server started when the test ends, even
//! when it panics.

#![allow(dead_code)]

pub mod cluster;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_kernelbox");

/// Notifications a client received: log messages and progress messages, as text.
#[derive(Clone, Default)]
pub struct Recorder {
    pub logs: Arc<Mutex<Vec<Value>>>,
    pub progress: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }

    #[allow(deprecated)]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.logs.lock().unwrap().push(params.data);
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(message) = params.message {
            self.progress.lock().unwrap().push(message);
        }
    }
}

pub type Client = RunningService<RoleClient, Recorder>;

/// The label value that marks this data directory's containers (same rule as the server).
pub fn instance_of(data_dir: &Path) -> String {
    let canonical = data_dir.canonicalize().unwrap();
    hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..12].to_string()
}

/// Ids of the containers, running or not, that carry `label=value`.
pub fn containers_with_label(label: &str, value: &str) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={label}={value}"))
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub fn remove_containers(ids: &[String]) {
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes every container of one data directory when dropped, even after a panic.
pub struct ContainerSweeper {
    pub instance: String,
}

impl ContainerSweeper {
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Self {
            instance: instance_of(data_dir),
        }
    }
}

impl ContainerSweeper {
    /// The kernels of this data directory: containers, or services under `--runtime swarm`.
    pub fn containers(&self) -> Vec<String> {
        if swarm_mode() {
            docker_lines(&[
                "service",
                "ls",
                "-q",
                "--filter",
                &format!("label=kernelbox.instance={}", self.instance),
            ])
        } else {
            containers_with_label("kernelbox.instance", &self.instance)
        }
    }
}

impl Drop for ContainerSweeper {
    fn drop(&mut self) {
        if self.instance.is_empty() {
            return;
        }
        if swarm_mode() {
            let services = self.containers();
            if !services.is_empty() {
                docker_lines(
                    &[
                        &["service", "rm"][..],
                        &services.iter().map(String::as_str).collect::<Vec<_>>(),
                    ]
                    .concat(),
                );
            }
            remove_networks_labelled(&format!("kernelbox.instance={}", self.instance));
        }
        remove_containers(&containers_with_label("kernelbox.instance", &self.instance));
    }
}

/// The kernel image tag of this recipe, as `kernelbox image name` prints it.
pub fn kernel_image() -> String {
    let output = std::process::Command::new(BINARY)
        .args(["image", "name"])
        .output()
        .expect("kernelbox runs");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The suite runs against the Swarm runtime (`KERNELBOX_TEST_RUNTIME=swarm`): each server then
/// runs as a container on this engine, which must be a swarm manager.
pub fn swarm_mode() -> bool {
    std::env::var("KERNELBOX_TEST_RUNTIME").as_deref() == Ok("swarm")
}

/// Runs `docker` with `args`; its stdout's lines (nothing when it fails).
pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Removes the networks carrying `label` (`key=value`), waiting while their last endpoints
/// are let go (a removed service's task takes a moment to stop).
pub fn remove_networks_labelled(label: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let networks =
            docker_lines(&["network", "ls", "-q", "--filter", &format!("label={label}")]);
        if networks.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for network in networks {
            docker_lines(&["network", "rm", &network]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The user-defined network test servers run on under the Swarm runtime (Docker's DNS, which
/// resolves kernel tasks by name, serves only such networks).
const SERVER_NETWORK: &str = "kernelbox-test-servers";

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
fn serve_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
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
    container: Option<String>,
    sweeper: ContainerSweeper,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            remove_containers(std::slice::from_ref(container));
        }
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
        let sweeper = ContainerSweeper {
            instance: instance_of(&data_dir),
        };
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
            (logs, Some(name))
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
        let url = match &container {
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

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        match &self.container {
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

    /// Leaves this server's containers running when it is dropped (the next server on the
    /// same data directory adopts them, and its own sweeper removes them).
    pub fn keep_containers(&mut self) {
        self.sweep = false;
    }

    pub fn base_url(&self) -> String {
        self.url.trim_end_matches("/mcp").to_string()
    }

    pub async fn client(&self) -> Client {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.clone()),
        );
        Recorder::default()
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
        if let Some(name) = &self.container {
            use std::os::unix::process::ExitStatusExt;
            docker_lines(&["kill", "--signal", "TERM", name]);
            let name = name.clone();
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
        let sweeper = ContainerSweeper {
            instance: instance_of(&data_dir),
        };
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

pub fn args(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("tool arguments must be an object"),
    }
}

/// Calls a tool and returns its result, panicking on a protocol error.
pub async fn call(client: &Client, tool: &str, arguments: Value) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments)))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed: {e}"))
}

/// Calls a tool that must be refused before doing anything: an `isError` result with no
/// structured content (as rmcp reports bad arguments). Returns the message.
pub async fn call_refused(client: &Client, tool: &str, arguments: Value) -> String {
    let result = call(client, tool, arguments).await;
    assert_eq!(
        result.is_error,
        Some(true),
        "{tool} should be refused: {result:?}"
    );
    assert!(result.structured_content.is_none(), "{result:?}");
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The structured content of a tool result.
pub fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .unwrap_or_else(|| panic!("no structured content in {result:?}"))
}

/// Runs code and returns the structured result.
pub async fn run(client: &Client, code: &str, extra: Value) -> Value {
    let mut arguments = json!({ "code": code });
    if let Value::Object(extra) = extra {
        arguments.as_object_mut().unwrap().extend(extra);
    }
    structured(&call(client, "run_python_code", arguments).await)
}

/// A Docker network and a package index container on it, serving one pure-Python wheel
/// (`kbtestpkg`, `VALUE = 42`) the way a PyPI mirror would. Removed when dropped. Under the
/// Swarm runtime, where kernels with egress leave through `docker_gwbridge`, the index is
/// published on that bridge's gateway address instead.
pub struct PackageIndex {
    pub network: String,
    pub url: String,
    pub host: String,
    pub port: u16,
    container: String,
}

const INDEX_SERVER: &str = r#"
import base64, hashlib, http.server, os, zipfile
root = '/tmp/index/simple/kbtestpkg'
os.makedirs(root)
files = {
    'kbtestpkg/__init__.py': 'VALUE = 42\n',
    'kbtestpkg-1.0.dist-info/METADATA': 'Metadata-Version: 2.1\nName: kbtestpkg\nVersion: 1.0\n',
    'kbtestpkg-1.0.dist-info/WHEEL': 'Wheel-Version: 1.0\nGenerator: kernelbox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}
record = []
wheel = 'kbtestpkg-1.0-py3-none-any.whl'
with zipfile.ZipFile(os.path.join(root, wheel), 'w') as archive:
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record.append('%s,sha256=%s,%d' % (name, digest, len(data)))
        archive.writestr(name, data)
    record.append('kbtestpkg-1.0.dist-info/RECORD,,')
    archive.writestr('kbtestpkg-1.0.dist-info/RECORD', '\n'.join(record) + '\n')
with open(os.path.join(root, 'index.html'), 'w') as page:
    page.write('<html><body><a href="%s">%s</a></body></html>' % (wheel, wheel))
os.chdir('/tmp/index')
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

impl PackageIndex {
    pub async fn start() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let network = format!("kernelbox-index-{suffix}");
        let docker = |args: &[&str]| {
            let output = std::process::Command::new("docker")
                .args(args)
                .output()
                .expect("docker runs");
            assert!(
                output.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        };
        docker(&["network", "create", &network]);
        let image = kernel_image();
        let gateway = swarm_mode().then(|| {
            docker(&[
                "network",
                "inspect",
                "docker_gwbridge",
                "-f",
                "{{(index .IPAM.Config 0).Gateway}}",
            ])
        });
        let mut run = vec!["run", "-d"];
        let publish = gateway.as_ref().map(|gateway| format!("{gateway}::8080"));
        if let Some(publish) = &publish {
            run.extend(["-p", publish]);
        }
        run.extend([
            "--network",
            &network,
            "--label",
            "kernelbox.test=package-index",
            &image,
            "python3",
            "-c",
            INDEX_SERVER,
        ]);
        let container = docker(&run);
        let mut index = Self {
            url: String::new(),
            host: String::new(),
            port: 8080,
            network,
            container,
        };
        let (ip, port) = match gateway {
            Some(gateway) => {
                let published = docker(&["port", &index.container, "8080/tcp"]);
                let port = published.rsplit(':').next().unwrap().parse().unwrap();
                (gateway, port)
            }
            None => (
                docker(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    &index.container,
                ]),
                8080,
            ),
        };
        let url = format!("http://{ip}:{port}/simple/");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = tokio::net::TcpStream::connect(format!("{ip}:{port}"))
                .await
                .is_ok();
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the package index did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        index.url = url;
        index.host = ip;
        index.port = port;
        index
    }
}

impl Drop for PackageIndex {
    fn drop(&mut self) {
        remove_containers(std::slice::from_ref(&self.container));
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The value of the unlabelled-or-exactly-labelled sample `name` in a metrics text, 0 if absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Installs `spec` of the test package index's `kbtestpkg` and checks the kernel imports it.
pub async fn install_test_package(client: &Client, spec: &str) {
    let installed = structured(
        &call(
            client,
            "install_dependencies",
            json!({ "packages": [spec] }),
        )
        .await,
    );
    assert_eq!(installed["returncode"], 0, "{installed}");
    let imported = run(
        client,
        "import kbtestpkg\nprint(kbtestpkg.VALUE)",
        json!({}),
    )
    .await;
    assert_eq!(imported["stdout"], "42\n", "{imported}");
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
