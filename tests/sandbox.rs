//! A container engine that silently drops a sandbox setting (as an engine older than the
//! negotiated API does with fields it does not know) fails the kernel's start with the
//! setting's name and leaves no container, run directory, service or network behind. The server talks to the
//! real engine through a Unix-socket proxy written here that deletes one field from every
//! create request it forwards: `containers/create` under the Docker runtime,
//! `services/create` under the Swarm runtime.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HttpServer, call, docker_lines, instance_of, run, structured, swarm_mode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// A field of a create request's JSON body, as a path; `Key=value` selects the element of an
/// array whose `Key` is `value`.
type FieldPath = &'static [&'static str];

/// Docker runtime: a field of `POST /containers/create`, and the setting the server must name.
/// (`User` is not among them: the engine fills a container's user from the image, whose own
/// user is the kernel's, so a dropped `User` still runs and reports the kernel's user.)
const DOCKER_CASES: &[(FieldPath, &str)] = &[
    (&["HostConfig", "PidsLimit"], "pids-limit"),
    (&["HostConfig", "Ulimits"], "ulimit nofile"),
    (&["HostConfig", "Tmpfs"], "tmpfs /tmp"),
    (&["HostConfig", "CapDrop"], "cap-drop"),
    (&["HostConfig", "ReadonlyRootfs"], "read-only root"),
    (&["HostConfig", "SecurityOpt"], "no-new-privileges"),
    (&["HostConfig", "NanoCpus"], "cpus"),
    (&["HostConfig", "MemorySwap"], "memory-swap"),
    (&["HostConfig", "Binds"], "mount /workspace"),
    (&["HostConfig", "NetworkMode"], "network"),
    (&["Labels"], "labels"),
];

/// Swarm runtime: a field of `POST /services/create`, and the setting the server must name.
const SWARM_CASES: &[(FieldPath, &str)] = &[
    (
        &["TaskTemplate", "Resources", "Limits", "Pids"],
        "pids-limit",
    ),
    (
        &["TaskTemplate", "ContainerSpec", "Ulimits"],
        "ulimit nofile",
    ),
    (
        &["TaskTemplate", "ContainerSpec", "Mounts", "Target=/tmp"],
        "tmpfs /tmp",
    ),
    (&["TaskTemplate", "ContainerSpec", "User"], "user"),
    (
        &["TaskTemplate", "ContainerSpec", "CapabilityDrop"],
        "cap-drop",
    ),
    (
        &["TaskTemplate", "ContainerSpec", "ReadOnly"],
        "read-only root",
    ),
    (&["TaskTemplate", "Resources", "Limits", "NanoCPUs"], "cpus"),
    (
        &[
            "TaskTemplate",
            "ContainerSpec",
            "Mounts",
            "Target=/workspace",
        ],
        "mount /workspace",
    ),
    (&["TaskTemplate", "Networks"], "network"),
    (&["Labels"], "labels"),
    (
        &["TaskTemplate", "Resources", "Reservations"],
        "memory reservation",
    ),
    (&["TaskTemplate", "ContainerSpec", "Labels"], "task labels"),
    (&["TaskTemplate", "RestartPolicy"], "restart condition none"),
    (&["EndpointSpec"], "endpoint mode dnsrr"),
];

/// Removes the field at `path` from `body`; false when there was none.
fn remove(body: &mut Value, path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = body;
    for step in parents {
        at = match at.get_mut(*step) {
            Some(next) => next,
            None => return false,
        };
    }
    match (last.split_once('='), at) {
        (Some((key, value)), Value::Array(items)) => {
            let before = items.len();
            items.retain(|item| item[key] != value);
            items.len() < before
        }
        (None, Value::Object(fields)) => fields.remove(*last).is_some(),
        _ => false,
    }
}

/// A Unix socket in front of the engine's that forwards everything, except that it deletes
/// the field `dropping` names from each create request whose path ends in `creates`.
struct DroppingProxy {
    socket: PathBuf,
    dropping: Arc<Mutex<FieldPath>>,
    /// How many create requests lost their field.
    dropped: Arc<Mutex<usize>>,
    accepting: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for DroppingProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl DroppingProxy {
    /// Listens in a fresh directory under `/tmp`, which a server's container under the Swarm
    /// runtime sees at the same path.
    fn start(creates: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kernelbox-proxy-")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let dropping: Arc<Mutex<FieldPath>> = Arc::new(Mutex::new(&[]));
        let dropped = Arc::new(Mutex::new(0));
        let (rule, count) = (dropping.clone(), dropped.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rule, count) = (rule.clone(), count.clone());
                tokio::spawn(async move {
                    let _ = forward(client, creates, rule, count).await;
                });
            }
        });
        Self {
            socket,
            dropping,
            dropped,
            accepting,
            _dir: dir,
        }
    }

    fn drop_field(&self, path: FieldPath) {
        *self.dropping.lock().unwrap() = path;
        *self.dropped.lock().unwrap() = 0;
    }

    fn dropped(&self) -> usize {
        *self.dropped.lock().unwrap()
    }
}

/// One client connection: responses pass through untouched; requests are read one at a time
/// (head, then a body by `Content-Length` or in chunks) so a create request's body can be
/// rewritten. After a protocol upgrade (an attached exec) the rest passes through as is.
async fn forward(
    client: UnixStream,
    creates: &str,
    rule: Arc<Mutex<FieldPath>>,
    count: Arc<Mutex<usize>>,
) -> std::io::Result<()> {
    let upstream = UnixStream::connect(ENGINE_SOCKET).await?;
    let (client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let responses =
        tokio::spawn(async move { tokio::io::copy(&mut upstream_read, &mut client_write).await });
    let mut requests = BufReader::new(client_read);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if requests.read_until(b'\n', &mut line).await? == 0 {
                upstream_write.shutdown().await?;
                let _ = responses.await;
                return Ok(());
            }
            let end = line == b"\r\n";
            head.push(String::from_utf8_lossy(&line).trim_end().to_string());
            if end {
                break;
            }
        }
        let request_line = head[0].clone();
        let header = |name: &str| {
            head[1..].iter().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_ascii_lowercase())
            })
        };
        let upgrade = header("upgrade").is_some();
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let mut size = String::new();
                requests.read_line(&mut size).await?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16)
                    .map_err(std::io::Error::other)?;
                let mut chunk = vec![0; size + 2];
                requests.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = header("content-length") {
            body.resize(length.parse().map_err(std::io::Error::other)?, 0);
            requests.read_exact(&mut body).await?;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        if request_line.starts_with("POST ") && path.ends_with(creates) {
            let mut json: Value = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
            if remove(&mut json, *rule.lock().unwrap()) {
                *count.lock().unwrap() += 1;
            }
            body = serde_json::to_vec(&json).map_err(std::io::Error::other)?;
        }
        let mut out = String::new();
        for line in head.iter().filter(|line| !line.is_empty()) {
            let name = line.split(':').next().unwrap_or_default();
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        if !body.is_empty() || header("content-length").is_some() {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        upstream_write.write_all(out.as_bytes()).await?;
        upstream_write.write_all(&body).await?;
        if upgrade {
            tokio::io::copy(&mut requests, &mut upstream_write).await?;
            let _ = responses.await;
            return Ok(());
        }
    }
}

/// What the server with data directory `data_dir` (instance `instance`) left behind:
/// containers and their run directories, or under the Swarm runtime services and networks,
/// found by label and by name.
fn leftovers(instance: &str, data_dir: &std::path::Path) -> Vec<String> {
    let label = format!("label=kernelbox.instance={instance}");
    let mut found = if swarm_mode() {
        let mut found = docker_lines(&["service", "ls", "-q", "--filter", &label]);
        let named = format!("name=kb-{instance}");
        found.extend(docker_lines(&["service", "ls", "-q", "--filter", &named]));
        found.extend(docker_lines(&["network", "ls", "-q", "--filter", &label]));
        found.extend(docker_lines(&["network", "ls", "-q", "--filter", &named]));
        found
    } else {
        let named = format!("name=kernelbox-{instance}");
        let mut found = docker_lines(&["ps", "-aq", "--filter", &label]);
        found.extend(docker_lines(&["ps", "-aq", "--filter", &named]));
        let run_dirs = std::fs::read_dir(data_dir.join("run"))
            .into_iter()
            .flatten();
        found.extend(
            run_dirs
                .flatten()
                .map(|dir| dir.path().display().to_string()),
        );
        found
    };
    found.sort();
    found.dedup();
    found
}

#[tokio::test]
async fn a_dropped_sandbox_setting_fails_the_start_and_leaves_nothing_behind() {
    let (creates, mut cases) = if swarm_mode() {
        ("/services/create", SWARM_CASES.to_vec())
    } else {
        ("/containers/create", DOCKER_CASES.to_vec())
    };
    // Under `--oci-runtime` (the harness passes the server its environment) the runtime is
    // a setting too.
    if !swarm_mode() && std::env::var_os("KERNELBOX_OCI_RUNTIME").is_some() {
        cases.push((&["HostConfig", "Runtime"], "oci runtime"));
    }
    let proxy = DroppingProxy::start(creates);
    let engine = format!("unix://{}", proxy.socket.display());
    let server = HttpServer::start_with_env(&[], &[("DOCKER_HOST", &engine)]).await;
    let instance = instance_of(&server.data_dir);
    let client = server.client().await;
    for (number, (field, setting)) in cases.iter().enumerate() {
        proxy.drop_field(field);
        let session = format!("dropped{number}");
        let result = call(&client, "create_session", json!({ "session_id": session })).await;
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        assert_eq!(result.is_error, Some(true), "{setting}: {result:?}");
        assert!(proxy.dropped() >= 1, "{field:?} was in no create request");
        assert!(
            text.contains(&format!("dropped the sandbox setting {setting} ")),
            "{field:?} should be reported as {setting}: {text}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = leftovers(&instance, &server.data_dir);
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{setting}: left behind {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    proxy.drop_field(&[]);
    let result = call(&client, "create_session", json!({ "session_id": "whole" })).await;
    assert_ne!(
        result.is_error,
        Some(true),
        "a create request the proxy leaves whole starts a kernel: {result:?}"
    );
    assert_eq!(proxy.dropped(), 0);
}

#[tokio::test]
async fn the_kernel_runs_under_the_oci_runtime_the_server_names() {
    let asked = std::env::var("KERNELBOX_OCI_RUNTIME").ok();
    let server = HttpServer::start().await;
    let client = server.client().await;
    let seen = run(
        &client,
        "print(open('/proc/version').read(), end='')",
        json!({}),
    )
    .await;
    let kernel_version = seen["stdout"].as_str().unwrap().to_string();
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    let health = structured(&call(&client, "get_kernel_health", json!({})).await);
    let healthz: serde_json::Value = reqwest::get(format!("{}/healthz", server.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!(
        "oci runtime asked {asked:?}, named {} / {}; the kernel sees {kernel_version:?}",
        health["oci_runtime"], healthz["oci_runtime"]
    );
    if swarm_mode() {
        assert_eq!(health["oci_runtime"], json!(null), "a service names none");
        return;
    }
    assert_eq!(health["oci_runtime"], healthz["oci_runtime"]);
    match asked.as_deref() {
        Some("runsc") => {
            assert_eq!(health["oci_runtime"], "runsc");
            assert_ne!(
                kernel_version, host_version,
                "under gVisor the kernel sees gVisor's kernel, not the host's"
            );
        }
        Some(other) => assert_eq!(health["oci_runtime"], other),
        None => {
            assert!(health["oci_runtime"].is_string(), "{health}");
            assert_eq!(
                kernel_version, host_version,
                "under runc the kernel shares the host's kernel"
            );
        }
    }
}
