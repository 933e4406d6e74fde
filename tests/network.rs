//! Network isolation: a kernel without egress has no network at all (the server speaks to it
//! over IPC sockets in its run directory), so from inside it nothing answers: not a listener
//! on the host through any of the host's addresses, not another session's kernel, not the
//! server's HTTP port, not the cloud metadata address, not the internet. Packages still
//! install (through the installer container), and egress is granted per session only when
//! the server's policy allows it; a kernel with egress still speaks IPC to the server.

mod common;

use std::net::TcpListener;

use common::{
    HttpServer, PackageIndex, call, create_session, create_session_refused, run, structured,
};
use serde_json::{Value, json};

const SERVE: &str = "import socket, subprocess, sys\n\
server = subprocess.Popen([sys.executable, '-m', 'http.server', '8000'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
print(socket.gethostbyname(socket.gethostname()))";

fn reach(address: &str, port: u16) -> String {
    format!(
        "import socket\n\
         try:\n    socket.create_connection(({address:?}, {port}), timeout=3).close()\n    print('reached')\n\
         except OSError as error:\n    print('blocked', type(error).__name__)"
    )
}

/// A cell that tries a TCP connection to each `[label, host, port]` of `targets` with a short
/// timeout and prints the kernel's network interfaces and each outcome as JSON.
fn probe(targets: &Value) -> String {
    format!(
        "import json, socket\n\
         results = []\n\
         for label, host, port in json.loads({targets:?}):\n    \
         try:\n        socket.create_connection((host, port), timeout=2).close()\n        outcome = 'reached'\n    \
         except OSError as error:\n        outcome = f'blocked: {{type(error).__name__}}: {{error}}'\n    \
         results.append([label, host, port, outcome])\n\
         print(json.dumps({{'interfaces': [name for _, name in socket.if_nameindex()], 'results': results}}))",
        targets = targets.to_string()
    )
}

/// Every address of this host but loopback and link-local ones (`ip -o addr`): its own
/// interfaces, Docker's bridge `docker0` and the gateway of every Docker network here.
fn host_addresses() -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let interface = fields.nth(1)?;
            let address = fields.nth(1)?.split('/').next()?.to_string();
            (interface != "lo" && !address.starts_with("fe80:")).then_some(address)
        })
        .collect()
}

#[tokio::test]
async fn a_kernel_without_egress_reaches_nothing_on_the_host_the_network_or_other_kernels() {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listening = listener.local_addr().unwrap().port();
    let server = HttpServer::start_with(&[
        "--allow-egress",
        "--host",
        "0.0.0.0",
        "--allow-unauthenticated",
        "--allowed-host",
        "0.0.0.0,localhost,127.0.0.1",
    ])
    .await;
    let server_port: u16 = server
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the server's port");
    let client = server.client().await;
    create_session(&client, "neighbour", json!({"egress": true})).await;
    let served = run(&client, SERVE, json!({"session_id": "neighbour"})).await;
    let neighbour = served["stdout"].as_str().unwrap().trim().to_string();
    assert!(!neighbour.is_empty(), "{served}");

    let mut targets = Vec::new();
    for address in host_addresses() {
        targets.push(json!(["host listener on 0.0.0.0", address, listening]));
        targets.push(json!(["server's HTTP port", address, server_port]));
    }
    targets.push(json!(["another session's kernel", neighbour, 8000]));
    targets.push(json!(["cloud metadata", "169.254.169.254", 80]));
    targets.push(json!(["public address", "1.1.1.1", 443]));
    targets.push(json!(["public name", "pypi.org", 443]));
    let targets = Value::Array(targets);

    let isolated = run(&client, &probe(&targets), json!({})).await;
    let report: Value = serde_json::from_str(isolated["stdout"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {isolated}"));
    eprintln!("from a kernel without egress:");
    for result in report["results"].as_array().unwrap() {
        eprintln!("  {result}");
    }
    assert_eq!(report["interfaces"], json!(["lo"]), "{report}");
    for result in report["results"].as_array().unwrap() {
        let outcome = result[3].as_str().unwrap();
        assert!(outcome.starts_with("blocked"), "reached {result}");
    }
    assert!(
        listener.accept().is_err(),
        "the host listener took a connection from the kernel"
    );

    // The targets are live: the kernel with egress reaches the host's listener.
    let open = run(
        &client,
        &probe(&targets),
        json!({"session_id": "neighbour"}),
    )
    .await;
    let report: Value = serde_json::from_str(open["stdout"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {open}"));
    eprintln!("from a kernel with egress:");
    for result in report["results"].as_array().unwrap() {
        eprintln!("  {result}");
    }
    assert!(
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| { r[0] == "host listener on 0.0.0.0" && r[3] == "reached" }),
        "{report}"
    );

    let sealed = run(
        &client,
        "import os\n\
         names = sorted(os.listdir('/run/kernel'))\n\
         try:\n    os.rename('/run/kernel/k-1', '/run/kernel/moved')\n    changed = 'renamed'\n\
         except OSError as error:\n    changed = type(error).__name__\n\
         print(names, changed)",
        json!({}),
    )
    .await;
    assert_eq!(
        sealed["stdout"], "['k-1', 'k-2', 'k-3', 'k-4', 'k-5'] PermissionError\n",
        "{sealed}"
    );
    let listed = structured(&call(&client, "list_sessions", json!({})).await);
    assert_eq!(listed["sessions"]["default"]["egress"], false);
}

#[tokio::test]
async fn packages_install_for_a_kernel_without_egress_and_egress_is_granted_by_policy_only() {
    let index = PackageIndex::start().await;
    let refusing = HttpServer::start_with(&["--egress-network", &index.network]).await;
    let client = refusing.client().await;
    let error = create_session_refused(&client, "open", json!({"egress": true})).await;
    assert!(error.contains("egress is not allowed"), "{error}");

    let server = HttpServer::start_with(&[
        "--egress-network",
        &index.network,
        "--allow-egress",
        "--pip-index-url",
        &index.url,
        "--pip-trusted-host",
        &index.host,
    ])
    .await;
    let client = server.client().await;
    let closed = run(&client, &reach(&index.host, index.port), json!({})).await;
    assert!(
        closed["stdout"].as_str().unwrap().starts_with("blocked"),
        "{closed}"
    );
    common::install_test_package(&client, "kbtestpkg").await;
    assert_eq!(
        server.containers().len(),
        1,
        "the installer container is gone"
    );

    create_session(&client, "open", json!({"egress": true})).await;
    let open = run(
        &client,
        &reach(&index.host, index.port),
        json!({"session_id": "open"}),
    )
    .await;
    assert_eq!(open["stdout"], "reached\n", "{open}");
}
