//! The Swarm runtime with an image registry (Debian's `docker-registry`, run on this host,
//! asking for a password): the kernel image is pushed once and every node pulls it pinned by
//! digest, so nodes need no `kernelbox image distribute` and carry no image label. Both ways
//! in are tested: an operator pushing with `kernelbox image push` and serving the printed
//! reference, and the server pushing at start with `--registry`. The worker never logs in: it
//! pulls with the credentials the server sends along with each service. A push without
//! credentials and a digest the registry lacks are refused, naming what was wrong. The nodes
//! start with no kernel image.

mod common;

use std::process::Command;
use std::time::Instant;

use common::cluster::{Cluster, image_id, output};
use common::registry::Registry;
use common::{BINARY, create_session, create_session_refused, run};
use serde_json::{Value, json};

const WORKERS_ONLY: [&str; 4] = [
    "--memory",
    "512m",
    "--swarm-constraint",
    "node.role==worker",
];

/// The image a session's kernel service names.
fn service_image(cluster: &Cluster, session: &str) -> String {
    cluster.docker(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &cluster.service_of(session),
    ])
}

async fn health(cluster: &Cluster, port: u16) -> (u16, Value) {
    let reply = reqwest::get(format!("http://{}:{port}/healthz", cluster.address(1)))
        .await
        .expect("the health check answers");
    (reply.status().as_u16(), reply.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_pull_the_kernel_image_pinned_by_digest() {
    let registry = Registry::start().await;
    let mut cluster = Cluster::bare(2);
    let tag = common::kernel_image();
    let recipe = tag.rsplit(':').next().unwrap();
    let image_id = image_id(&tag);

    let refused = Command::new(BINARY)
        .args(["image", "push", "--registry", "kernelbox"])
        .output()
        .unwrap();
    let complaint = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && complaint.contains("HOST[:PORT]/PATH"),
        "{complaint}"
    );

    // An operator pushes from this host and serves the reference it prints.
    let local = format!("127.0.0.1:{}/kernelbox", registry.port);
    let refused = Command::new(BINARY)
        .args(["image", "push", "--registry", &local])
        .env_remove("KERNELBOX_REGISTRY_USERNAME")
        .output()
        .unwrap();
    let complaint = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && complaint.contains(&format!("pushing {local}:{recipe} failed"))
            && complaint.contains("KERNELBOX_REGISTRY_USERNAME"),
        "{complaint}"
    );
    eprintln!(
        "push without credentials: {}",
        complaint.lines().next().unwrap_or_default()
    );
    let login = [
        ("KERNELBOX_REGISTRY_USERNAME", registry.username.clone()),
        ("KERNELBOX_REGISTRY_PASSWORD", registry.password.clone()),
    ];
    let started = Instant::now();
    let printed = output(
        Command::new(BINARY)
            .args(["image", "push", "--registry", &local])
            .envs(login.clone()),
    );
    eprintln!("image push: {:.1} s", started.elapsed().as_secs_f64());
    let digest = printed
        .strip_prefix(&format!("{local}@"))
        .unwrap_or_else(|| panic!("image push prints {local}@<digest>, not {printed:?}"));
    assert_eq!(
        registry.digest_of("kernelbox", recipe).await.as_deref(),
        Some(digest),
        "the printed digest is the one the registry serves for kernelbox:{recipe}"
    );
    let registry_host = format!("{}:{}", cluster.host_address(), registry.port);
    let pinned = format!("{registry_host}/kernelbox@{digest}");
    cluster.docker(&[
        "login",
        "-u",
        &registry.username,
        "-p",
        &registry.password,
        &registry_host,
    ]);
    let started = Instant::now();
    cluster.docker(&["pull", &pinned]);
    eprintln!("manager pull: {:.1} s", started.elapsed().as_secs_f64());
    cluster.image = pinned.clone();
    cluster.env = login.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let client = cluster.serve(&WORKERS_ONLY).await;
    let started = Instant::now();
    create_session(&client, "s1", json!({})).await;
    eprintln!(
        "first create on a worker without the image (pull included): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let result = run(&client, "print(6 * 7)", json!({"session_id": "s1"})).await;
    assert_eq!(result["stdout"], "42\n", "{result}");
    assert_eq!(cluster.node_of("s1"), cluster.node(2));
    assert_eq!(service_image(&cluster, "s1"), pinned);
    let worker_id = output(Command::new("docker").args([
        "exec",
        &cluster.node(2),
        "docker",
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        &pinned,
    ]));
    assert_eq!(
        worker_id, image_id,
        "the worker pulled exactly the pushed image"
    );
    let labels = cluster.docker(&[
        "node",
        "inspect",
        "-f",
        "{{json .Spec.Labels}}",
        &cluster.node(2),
    ]);
    assert!(!labels.contains("kernelbox.image-"), "{labels}");
    let (status, report) = health(&cluster, 8000).await;
    assert_eq!(
        (status, &report["image"]),
        (200, &json!(pinned)),
        "{report}"
    );

    // The server pushes at start and pins what the registry gave it.
    let mut flags = WORKERS_ONLY.to_vec();
    let repository = format!("{registry_host}/pushed");
    flags.extend(["--registry", &repository]);
    let pusher = cluster.serve_as("pusher", 8001, &flags).await;
    create_session(&pusher, "s2", json!({})).await;
    let result = run(&pusher, "print(6 * 7)", json!({"session_id": "s2"})).await;
    assert_eq!(result["stdout"], "42\n", "{result}");
    let served = registry
        .digest_of("pushed", recipe)
        .await
        .expect("the server pushed pushed:<recipe>");
    assert_eq!(
        service_image(&cluster, "s2"),
        format!("{repository}@{served}")
    );

    // A digest the registry does not hold: unhealthy, and no session, naming the reference.
    let missing = format!("{registry_host}/kernelbox@sha256:{}", "0".repeat(64));
    let mut flags = WORKERS_ONLY.to_vec();
    flags.extend(["--image", &missing]);
    let stray = cluster.serve_as("stray", 8002, &flags).await;
    let (status, report) = health(&cluster, 8002).await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["image_present"], false, "{report}");
    let refused = create_session_refused(&stray, "s3", json!({})).await;
    assert!(refused.contains(&"0".repeat(64)), "{refused}");
}
