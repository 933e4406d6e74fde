//! `cargo bench --bench latency`: the real server (release build) with real kernel containers.
//! Prints one table, each figure with p50/p95 where it is a distribution:
//! 1. `1+1` through MCP over HTTP, and the raw Jupyter round trip (execute_request to idle on
//!    the ZeroMQ sockets, HMAC-signed) against the same kernel, in the same run; their ratio.
//!    On one host that kernel is reached over IPC; the raw round trip over TCP to a kernel
//!    container started by hand on Docker's default bridge (reached by address, as kernels
//!    were before they lost their network) is measured beside it.
//!    And `1+1` called as a task (MCP tasks extension) and polled with `tasks/get` until it
//!    completed, beside the same call answered in place; one `tasks/get` round trip.
//! 2. Cold `create_session` to the first `1+1` result, beside a plain `docker run` of the same
//!    image (its own launcher, no kernelbox) to its first `1+1` over TCP.
//! 3. The same from the warm pool; and for the bash and r templates, cold and from their pools.
//! 4. 20 sessions created at once, each until it answered `1+1`: median and slowest, with
//!    warm pools of 0, 4 and 20 (filled before the burst), and with no pool and every start
//!    at once (`--max-concurrent-starts 20`, as before starts were bounded).
//! 5. 4 sessions each running `time.sleep(1)` at once: wall time.
//! 6. Server RSS with 0 and 50 idle sessions, per session; RSS of one idle kernel container.
//! 7. A cell printing 100 MB: wall time and the growth of the server's peak RSS.
//!
//! With `KERNELBOX_TEST_RUNTIME=swarm` (the engine must be a swarm manager) the same table is
//! measured with `--runtime swarm`, the server in a container as on a real manager; the raw
//! Jupyter round trip is left out (the host cannot reach overlay addresses), and two rows are
//! added from a swarm of Docker-in-Docker nodes (the server on the manager, kernels on two
//! workers): cold create to first result, and
//! 20 sessions created at once, with the number of nodes they landed on.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Client, HttpServer, call, run, structured};
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, ExecutionState, JupyterMessage, JupyterMessageContent,
    KernelInfoRequest, Transport,
};
use jupyter_zmq_client::{
    create_client_iopub_connection, create_client_shell_connection_with_identity,
    peer_identity_for_session,
};
use serde_json::{Value, json};

const COLD_RUNS: usize = 10;
const WARM_RUNS: usize = 200;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Table(Vec<(String, String, String)>);

impl Table {
    fn dist(&mut self, name: &str, samples: &mut [Duration]) -> Duration {
        let p50 = percentile(samples, 0.5);
        let p95 = percentile(samples, 0.95);
        self.0.push((
            format!("{name} ({} runs)", samples.len()),
            format!("{:.2} ms", ms(p50)),
            format!("{:.2} ms", ms(p95)),
        ));
        p50
    }

    fn single(&mut self, name: &str, value: String) {
        self.0.push((name.to_string(), value, String::new()));
    }

    fn print(&self) {
        println!(
            "| {:<62} | {:>16} | {:>12} |",
            "measure", "p50 / value", "p95"
        );
        println!("|{:-<64}|{:-<18}|{:-<14}|", "", "", "");
        for (name, a, b) in &self.0 {
            println!("| {name:<62} | {a:>16} | {b:>12} |");
        }
    }
}

/// How to reach the kernel of `session`, from the server's session record: its socket files
/// `k-1` to `k-5` in its run directory over IPC, or its address and ports over TCP.
fn recorded_kernel(data_dir: &std::path::Path, session: &str) -> ConnectionInfo {
    let record: Value = serde_json::from_slice(
        &std::fs::read(data_dir.join(format!("state/sessions/local/{session}.json"))).unwrap(),
    )
    .unwrap();
    let kernel = &record["kernel"];
    let key = kernel["key"].as_str().unwrap();
    match kernel["run_dir"].as_str() {
        Some(run_dir) => connection_info(
            Transport::IPC,
            &format!("{run_dir}/k"),
            [1, 2, 3, 4, 5],
            key,
        ),
        None => {
            let port = |name: &str| kernel["ports"][name].as_u64().unwrap() as u16;
            let ports = ["shell", "iopub", "stdin", "control", "heartbeat"].map(port);
            connection_info(Transport::TCP, kernel["host"].as_str().unwrap(), ports, key)
        }
    }
}

/// Shell, iopub, stdin, control and heartbeat at `ip` over `transport`.
fn connection_info(transport: Transport, ip: &str, ports: [u16; 5], key: &str) -> ConnectionInfo {
    ConnectionInfo {
        ip: ip.to_string(),
        transport,
        shell_port: ports[0],
        iopub_port: ports[1],
        stdin_port: ports[2],
        control_port: ports[3],
        hb_port: ports[4],
        key: key.to_string(),
        signature_scheme: "hmac-sha256".to_string(),
        kernel_name: None,
    }
}

/// A kernel container started by hand on Docker's default bridge and reached over TCP at its
/// address, as kernels were before they lost their network; removed when dropped.
struct TcpKernel {
    id: String,
    info: ConnectionInfo,
}

impl TcpKernel {
    fn start() -> Self {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let ports = [5555, 5556, 5557, 5558, 5559];
        let file = serde_json::to_string(&connection_info(Transport::TCP, "0.0.0.0", ports, &key))
            .unwrap();
        let started = common::docker_lines(&[
            "run",
            "-d",
            "--label",
            "kernelbox.test=bench",
            "-e",
            &format!("KERNELBOX_CONNECTION={file}"),
            &common::kernel_image(),
            "sh",
            "-c",
            "printf '%s' \"$KERNELBOX_CONNECTION\" > /tmp/c.json && exec python3 -m ipykernel_launcher -f /tmp/c.json",
        ]);
        let id = started
            .last()
            .expect("the kernel container started")
            .clone();
        let address =
            common::docker_lines(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]);
        let info = connection_info(Transport::TCP, &address[0], ports, &key);
        Self { id, info }
    }
}

impl Drop for TcpKernel {
    fn drop(&mut self) {
        common::docker_lines(&["rm", "-f", &self.id]);
    }
}

/// A plain `docker run` of the kernel image, with the image's own launcher, to its first
/// `1+1` result over TCP.
async fn docker_run_to_first_result() -> Duration {
    let started = Instant::now();
    let kernel = TcpKernel::start();
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), raw_round_trips(&kernel.info, 1)).await;
        if let Ok(Ok(_)) = attempt {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The raw Jupyter round trip of `1+1` against the kernel at `info`, `runs` times; an error
/// while the kernel does not listen yet.
async fn raw_round_trips(info: &ConnectionInfo, runs: usize) -> Result<Vec<Duration>, String> {
    let id = uuid::Uuid::new_v4().to_string();
    let mut iopub = create_client_iopub_connection(info, "", &id)
        .await
        .map_err(|e| e.to_string())?;
    let identity = peer_identity_for_session(&id).unwrap();
    let mut shell = create_client_shell_connection_with_identity(info, &id, identity)
        .await
        .map_err(|e| e.to_string())?;
    // Wait until the iopub subscription is live.
    loop {
        shell
            .send(JupyterMessage::new(KernelInfoRequest {}, None))
            .await
            .map_err(|e| e.to_string())?;
        if tokio::time::timeout(Duration::from_millis(200), iopub.read())
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut samples = Vec::new();
    for _ in 0..runs {
        let request = JupyterMessage::new(ExecuteRequest::new("1+1".to_string()), None);
        let msg_id = request.header.msg_id.clone();
        let started = Instant::now();
        shell.send(request).await.unwrap();
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            tokio::select! {
                reply = shell.read() => {
                    let reply = reply.unwrap();
                    if reply.parent_header.as_ref().is_some_and(|h| h.msg_id == msg_id) {
                        replied = true;
                    }
                }
                message = iopub.read() => {
                    let message = message.unwrap();
                    let ours = message.parent_header.as_ref().is_some_and(|h| h.msg_id == msg_id);
                    if let JupyterMessageContent::Status(status) = &message.content
                        && ours && status.execution_state == ExecutionState::Idle
                    {
                        idle = true;
                    }
                }
            }
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

async fn create_and_answer(client: &Client, id: &str) -> Duration {
    let started = Instant::now();
    call(client, "create_session", json!({ "session_id": id })).await;
    let result = run(client, "1+1", json!({ "session_id": id })).await;
    assert_eq!(result["results"], json!(["2"]), "{result}");
    started.elapsed()
}

/// Calls `run_python_code` with `code` as a task and returns the task's id.
async fn start_task(client: &Client, code: &str) -> String {
    let response = client
        .call_tool_once(
            rmcp::model::CallToolRequestParams::new("run_python_code")
                .with_arguments(common::mcp::args(json!({ "code": code }))),
        )
        .await
        .unwrap();
    match response {
        rmcp::model::CallToolResponse::Task(created) => created.task.task_id,
        other => panic!("a task was expected: {other:?}"),
    }
}

/// `COLD_RUNS` times: create a session and wait for its first `1+1`, then delete it.
async fn cold_starts(client: &Client) -> Vec<Duration> {
    let mut cold = Vec::new();
    for i in 0..COLD_RUNS {
        let id = format!("cold-{i}");
        cold.push(create_and_answer(client, &id).await);
        call(
            client,
            "delete_session",
            json!({ "session_id": id, "remove_workspace": true }),
        )
        .await;
    }
    cold
}

/// Creates 20 sessions at once: how long each took to answer `1+1`, and their ids.
async fn burst(client: &Client) -> (Vec<Duration>, Vec<String>) {
    let ids: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    let each = futures::future::join_all(ids.iter().map(|id| create_and_answer(client, id))).await;
    (each, ids)
}

/// Waits (up to `within`) until the server holds `count` warm kernels.
async fn wait_for_pool(server: &HttpServer, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while common::metric_value(&server.metrics_text().await, "kernelbox_pool_ready") < count as f64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a session of `template`, waits for the answer to `code` (which prints `2`),
/// deletes it: the time to the answer.
async fn template_answer(client: &Client, template: &str, code: &str, id: String) -> Duration {
    let started = Instant::now();
    call(
        client,
        "create_session",
        json!({ "session_id": id, "template": template }),
    )
    .await;
    let result = run(client, code, json!({ "session_id": id })).await;
    assert!(result.to_string().contains('2'), "{result}");
    let elapsed = started.elapsed();
    call(
        client,
        "delete_session",
        json!({ "session_id": id, "remove_workspace": true }),
    )
    .await;
    elapsed
}

/// Cold and warm `create_session(template=...)` of the bash and r templates to the first
/// result.
async fn template_starts(table: &mut Table) {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates.json");
    std::fs::write(
        &templates,
        json!({
            "python": {"language": "python", "description": "Python"},
            "bash": {"language": "bash", "description": "bash",
                     "kernel_class": "bash_kernel.kernel.BashKernel", "pool_size": 2},
            "r": {"language": "r", "description": "R", "image": common::r_kernel_image(),
                  "argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
                  "pool_size": 2},
        })
        .to_string(),
    )
    .unwrap();
    let cases = [("bash", "echo 2"), ("r", "cat(2)")];
    let server = HttpServer::start_with(&["--max-sessions", "100"]).await;
    let client = server.client().await;
    for (template, code) in cases {
        let mut cold = Vec::new();
        for i in 0..COLD_RUNS {
            cold.push(
                template_answer(&client, template, code, format!("{template}-cold-{i}")).await,
            );
        }
        table.dist(
            &format!("3. {template} template: create to first `{code}` (cold)"),
            &mut cold,
        );
    }
    drop(client);
    drop(server);
    let server = HttpServer::start_with(&["--templates", templates.to_str().unwrap()]).await;
    let client = server.client().await;
    for (template, code) in cases {
        let mut warm = Vec::new();
        for i in 0..COLD_RUNS {
            wait_for_pool(&server, 4, Duration::from_secs(60)).await;
            warm.push(
                template_answer(&client, template, code, format!("{template}-warm-{i}")).await,
            );
        }
        table.dist(
            &format!("3. {template} template: the same from its warm pool"),
            &mut warm,
        );
    }
}

/// A burst of 20 creates against a server (with `extra` flags) whose warm pool of `pool` is
/// full: the median and slowest create to first result.
async fn burst_with_pool(table: &mut Table, pool: usize, extra: &[&str]) {
    let size = pool.to_string();
    let mut flags = vec!["--max-sessions", "100", "--pool-size", &size];
    flags.extend_from_slice(extra);
    let server = HttpServer::start_with(&flags).await;
    let client = server.client().await;
    wait_for_pool(&server, pool, Duration::from_secs(300)).await;
    let (mut each, _) = burst(&client).await;
    let median = percentile(&mut each, 0.5);
    let slowest = percentile(&mut each, 1.0);
    table.single(
        &format!(
            "4. 20 creates at once, pool of {pool}{}: median / slowest",
            if extra.is_empty() {
                ""
            } else {
                ", 20 starts at once"
            }
        ),
        format!("{:.0} / {:.0} ms", ms(median), ms(slowest)),
    );
}

#[tokio::main]
async fn main() {
    let mut table = Table(Vec::new());

    // 1. MCP over HTTP against raw Jupyter, same kernel, same run.
    let server = HttpServer::start_with(&["--max-sessions", "100"]).await;
    let client = server.client().await;
    run(&client, "1+1", json!({})).await;
    let mut mcp = Vec::new();
    for _ in 0..WARM_RUNS {
        let started = Instant::now();
        let result = run(&client, "1+1", json!({})).await;
        mcp.push(started.elapsed());
        assert_eq!(result["status"], "ok");
    }
    let mcp_p50 = table.dist("1. `1+1` through MCP over HTTP", &mut mcp);
    if common::swarm_mode() {
        table.single("1. raw Jupyter round trip", "n/a on swarm".to_string());
    } else {
        let kernel = recorded_kernel(&server.data_dir, "default");
        let mut raw = raw_round_trips(&kernel, WARM_RUNS).await.unwrap();
        let raw_p50 = table.dist(
            &format!(
                "1. `1+1` raw Jupyter round trip, same kernel ({})",
                kernel.transport
            ),
            &mut raw,
        );
        table.single(
            "1. ratio MCP / raw (p50)",
            format!("{:.2}", mcp_p50.as_secs_f64() / raw_p50.as_secs_f64()),
        );
        let tcp = TcpKernel::start();
        let mut raw_tcp = raw_round_trips(&tcp.info, WARM_RUNS).await.unwrap();
        table.dist(
            "1. `1+1` raw round trip over tcp, hand-started kernel",
            &mut raw_tcp,
        );
    }

    // 1. The same call as a task, polled with no pause until it completed.
    let tasks = server
        .client_with(common::mcp::Recorder::with_tasks())
        .await;
    let (mut as_task, mut polls) = (Vec::new(), Vec::new());
    for _ in 0..WARM_RUNS {
        let started = Instant::now();
        let id = start_task(&tasks, "1+1").await;
        loop {
            let polled = Instant::now();
            let task = tasks
                .get_task(rmcp::model::GetTaskParams::new(&id))
                .await
                .unwrap();
            polls.push(polled.elapsed());
            if task.task.status().is_terminal() {
                break;
            }
        }
        as_task.push(started.elapsed());
    }
    let task_p50 = table.dist(
        "1. `1+1` as a task, called and polled to completion",
        &mut as_task,
    );
    table.dist("1. one `tasks/get` round trip", &mut polls);
    table.single(
        "1. ratio task / in place (p50)",
        format!("{:.2}", task_p50.as_secs_f64() / mcp_p50.as_secs_f64()),
    );

    // 2. Cold create_session to the first result.
    let mut cold = cold_starts(&client).await;
    table.dist("2. create_session to first `1+1` (cold)", &mut cold);
    if !common::swarm_mode() {
        let mut plain = Vec::new();
        for _ in 0..COLD_RUNS {
            plain.push(docker_run_to_first_result().await);
        }
        table.dist(
            "2. plain `docker run` of the image to first `1+1`",
            &mut plain,
        );
    }

    // 5. Four sessions sleeping one second at once.
    for i in 0..4 {
        call(
            &client,
            "create_session",
            json!({ "session_id": format!("sleep-{i}") }),
        )
        .await;
    }
    let started = Instant::now();
    futures::future::join_all((0..4).map(|i| {
        run(
            &client,
            "import time\ntime.sleep(1)",
            json!({ "session_id": format!("sleep-{i}") }),
        )
    }))
    .await;
    table.single(
        "5. 4 sessions × time.sleep(1) at once, wall",
        format!("{:.0} ms", ms(started.elapsed())),
    );

    // 6. Memory: server RSS with idle sessions, and one idle kernel.
    for i in 0..4 {
        call(
            &client,
            "delete_session",
            json!({ "session_id": format!("sleep-{i}"), "remove_workspace": true }),
        )
        .await;
    }
    let health = structured(&call(&client, "get_kernel_health", json!({})).await);
    let kernel_mb = health["kernel_process"]["memory_mb"]
        .as_f64()
        .unwrap_or(0.0);
    call(
        &client,
        "delete_session",
        json!({ "session_id": "default" }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = server.memory_kib("VmRSS");
    for chunk in 0..5 {
        futures::future::join_all((0..10).map(|i| {
            call(
                &client,
                "create_session",
                json!({ "session_id": format!("idle-{}", chunk * 10 + i) }),
            )
        }))
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_fifty = server.memory_kib("VmRSS");
    table.single(
        "6. server RSS, 0 sessions",
        format!("{:.1} MiB", rss_empty as f64 / 1024.0),
    );
    table.single(
        "6. server RSS, 50 idle sessions",
        format!("{:.1} MiB", rss_fifty as f64 / 1024.0),
    );
    table.single(
        "6. server overhead per idle session",
        format!(
            "{:.0} KiB",
            (rss_fifty.saturating_sub(rss_empty)) as f64 / 50.0
        ),
    );
    table.single(
        "6. RSS of one idle kernel container",
        format!("{kernel_mb:.1} MiB"),
    );
    for i in 0..50 {
        call(
            &client,
            "delete_session",
            json!({ "session_id": format!("idle-{i}"), "remove_workspace": true }),
        )
        .await;
    }

    // 7. A cell printing 100 MB.
    call(&client, "create_session", json!({ "session_id": "flood" })).await;
    let peak_before = server.memory_kib("VmHWM");
    let started = Instant::now();
    let flood = run(
        &client,
        "import sys\nfor i in range(100):\n    sys.stdout.write('x' * 1_000_000)",
        json!({ "session_id": "flood", "timeout": 300 }),
    )
    .await;
    let flood_time = started.elapsed();
    assert_eq!(flood["truncated"], true);
    let peak_after = server.memory_kib("VmHWM");
    table.single(
        "7. cell printing 100 MB, wall",
        format!("{:.0} ms", ms(flood_time)),
    );
    table.single(
        "7. server peak RSS growth during it",
        format!(
            "{:.1} MiB",
            (peak_after.saturating_sub(peak_before)) as f64 / 1024.0
        ),
    );
    drop(client);
    drop(server);

    // 3. From the warm pool.
    let server = HttpServer::start_with(&["--pool-size", "2"]).await;
    let client = server.client().await;
    let mut warm = Vec::new();
    for i in 0..COLD_RUNS {
        wait_for_pool(&server, 2, Duration::from_secs(60)).await;
        let id = format!("warm-{i}");
        warm.push(create_and_answer(&client, &id).await);
        call(
            &client,
            "delete_session",
            json!({ "session_id": id, "remove_workspace": true }),
        )
        .await;
    }
    table.dist("3. create_session to first `1+1` (warm pool)", &mut warm);
    drop(client);
    drop(server);

    // 3. The bash and r templates, cold and from their pools.
    if !common::swarm_mode() {
        template_starts(&mut table).await;
    }

    // 4. Twenty sessions created at once, with warm pools of three sizes.
    for pool in [0, 4, 20] {
        burst_with_pool(&mut table, pool, &[]).await;
    }
    burst_with_pool(&mut table, 0, &["--max-concurrent-starts", "20"]).await;

    if common::swarm_mode() {
        two_nodes(&mut table).await;
    }
    table.print();
}

/// Cold starts and a burst of 20 on a swarm of Docker-in-Docker nodes: the server on the
/// manager, kernels on two workers.
async fn two_nodes(table: &mut Table) {
    let cluster = Cluster::up(3);
    let client = cluster
        .serve(&[
            "--max-sessions",
            "100",
            "--memory",
            "512m",
            "--swarm-constraint",
            "node.role==worker",
        ])
        .await;
    let mut cold = cold_starts(&client).await;
    table.dist(
        "S. two nodes: create_session to first `1+1` (cold)",
        &mut cold,
    );
    let (mut each, ids) = burst(&client).await;
    let wall = percentile(&mut each, 1.0);
    let nodes: std::collections::BTreeSet<String> =
        ids.iter().map(|id| cluster.node_of(id)).collect();
    table.single(
        &format!(
            "S. two nodes: 20 sessions at once, all answered (on {} nodes)",
            nodes.len()
        ),
        format!("{:.0} ms", ms(wall)),
    );
}
