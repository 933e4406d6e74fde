//! The Swarm runtime on a real multi-node swarm: Docker-in-Docker nodes built offline
//! (`scripts/swarm-cluster`), a shared workspace directory mounted at the same path in every
//! node, and the server running as a container on the manager, as an operator would run it,
//! with kernels kept on the two workers (every kernel network the server joins counts as a
//! task on its node, so Swarm's spread would keep kernels off the server's node anyway).
//! Sessions land on both workers, a kernel reaches neither another kernel nor the
//! internet, and a lost node costs its sessions their variables but not their workspaces. The
//! test builds and removes its nodes itself, even when it fails.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use common::cluster::{Cluster, output};
use common::{Client, create_session, create_session_refused, run};
use serde_json::json;

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
    let cluster = Cluster::up(3);
    let client = cluster
        .serve(&[
            "--memory",
            "512m",
            "--swarm-constraint",
            "node.role==worker",
        ])
        .await;

    let sessions = ["s1", "s2", "s3"];
    let mut addresses = HashMap::new();
    for session in sessions {
        create_session(&client, session, json!({})).await;
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
    assert_eq!(
        distinct,
        BTreeSet::from([&cluster.node(2), &cluster.node(3)]),
        "sessions land on both workers and nowhere else"
    );

    let remote = sessions
        .iter()
        .copied()
        .find(|s| nodes[s] == cluster.node(3))
        .expect("a session runs on node 3");
    let local = sessions
        .iter()
        .copied()
        .find(|s| nodes[s] == cluster.node(2))
        .expect("a session runs on node 2");
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

    let lost = output(Command::new("docker").args(["kill", &cluster.node(3)]));
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
    assert_eq!(cluster.node_of(remote), cluster.node(2));
    let untouched = run(&client, "print('fine')", json!({"session_id": local})).await;
    assert_eq!(untouched["stdout"], "fine\n", "{untouched}");

    // A node reserved for another tenant takes none of this owner's kernels: with node 3 lost
    // and node 2 reserved, nothing can hold a new session, and that is said at once.
    let reserve = |owner: &str| {
        cluster.docker(&[
            "node",
            "update",
            "--label-add",
            &format!("kernelbox.reserved-for={owner}"),
            &cluster.node(2),
        ])
    };
    reserve("acme");
    let refused = create_session_refused(&client, "s4", json!({})).await;
    assert!(
        refused.contains("no ready node meets the kernel's placement")
            && refused.contains("kernelbox.reserved-for != acme"),
        "{refused}"
    );
    reserve("local");
    create_session(&client, "s4", json!({})).await;
    assert_eq!(cluster.node_of("s4"), cluster.node(2));

    // More memory than any node has free fails at once, naming the shortfall.
    let greedy = cluster
        .serve_as(
            "greedy",
            8001,
            &["--memory", "64g", "--swarm-constraint", "node.role==worker"],
        )
        .await;
    let refused = create_session_refused(&greedy, "big", json!({})).await;
    assert!(
        refused.contains("no node has 65536 MiB of memory free to reserve")
            && refused.contains(&cluster.node(2)),
        "{refused}"
    );
}
