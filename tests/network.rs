//! Network isolation: a kernel without egress has no network at all (the server speaks to it
//! over IPC sockets in its run directory), so from inside it nothing answers: not a listener
//! on the host through any of the host's addresses, not another session's kernel, not the
//! server's HTTP port, not the cloud metadata address, not the internet. On Swarm, where the
//! kernel sits on an internal overlay the server's container joins to dial it, the same
//! holds, and the server's HTTP port answers on none of the container's addresses: refused
//! on the kernel's own overlay (the server listens on nothing there), no route to the rest.
//! Packages still install (through the installer container), and egress is granted per
//! session only when the server's policy allows it; a kernel with egress still speaks IPC to
//! the server on one host.

mod common;

use std::net::{IpAddr, TcpListener};

use common::{
    HttpServer, PackageIndex, call, create_session, create_session_refused, docker_lines,
    host_addresses, run, structured, swarm_mode,
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
/// timeout and prints the kernel's network interfaces, its routes (`[interface, destination]`)
/// and each outcome as JSON.
fn probe(targets: &Value) -> String {
    format!(
        "import json, socket\n\
         results = []\n\
         for label, host, port in json.loads({targets:?}):\n    \
         try:\n        socket.create_connection((host, port), timeout=2).close()\n        outcome = 'reached'\n    \
         except OSError as error:\n        outcome = f'blocked: {{type(error).__name__}}: {{error}}'\n    \
         results.append([label, host, port, outcome])\n\
         routes = [line.split()[:2] for line in open('/proc/net/route').read().splitlines()[1:]]\n\
         print(json.dumps({{'interfaces': [name for _, name in socket.if_nameindex()], 'routes': routes, 'results': results}}))",
        targets = targets.to_string()
    )
}

/// The port the server listens on inside its container under the Swarm runtime.
const SERVER_PORT_IN_CONTAINER: u16 = 8000;

/// One of the server container's addresses under the Swarm runtime, as a target.
struct ServerAddress {
    label: String,
    address: String,
    /// The session whose kernel overlay the address is on; `None` on the server's own network.
    overlay_of: Option<String>,
}

impl ServerAddress {
    /// As a probe's target, on the port the server listens on in its container.
    fn target(&self) -> Value {
        json!([self.label, self.address, SERVER_PORT_IN_CONTAINER])
    }

    /// Whether a probe's `result` row tried this address.
    fn tried_by(&self, result: &Value) -> bool {
        result[0] == self.label.as_str() && result[1] == self.address.as_str()
    }
}

/// The server container's addresses (nothing on one host), each named by the network it is
/// on: a session's kernel overlay, or a network of its own.
fn server_addresses(server: &HttpServer) -> Vec<ServerAddress> {
    server
        .container_networks()
        .into_iter()
        .map(|(network, address)| {
            let owner = docker_lines(&[
                "network",
                "inspect",
                "-f",
                "{{index .Labels \"kernelbox.session-id\"}}",
                &network,
            ]);
            let overlay_of = owner
                .into_iter()
                .next()
                .filter(|owner| !owner.is_empty() && owner != "<no value>");
            let place = match &overlay_of {
                Some(session) => format!("session {session}'s kernel overlay"),
                None => format!("its own network {network}"),
            };
            ServerAddress {
                label: format!("server's HTTP port, its address on {place}"),
                address,
                overlay_of,
            }
        })
        .collect()
}

/// The gateway of `session`'s kernel overlay under the Swarm runtime (nothing on one host, or
/// when the overlay has none).
fn overlay_gateway(server: &HttpServer, session: &str) -> Option<String> {
    let filter = format!("label=kernelbox.session-id={session}");
    let instance = format!(
        "label=kernelbox.instance={}",
        common::instance_of(&server.data_dir)
    );
    let network = docker_lines(&[
        "network", "ls", "-q", "--filter", &filter, "--filter", &instance,
    ])
    .into_iter()
    .next()?;
    let gateway = docker_lines(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &network,
    ]);
    gateway.into_iter().next().filter(|g| !g.is_empty())
}

#[tokio::test]
async fn a_kernel_without_egress_reaches_nothing_on_the_host_the_network_or_other_kernels() {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listening = listener.local_addr().unwrap().port();
    // On every interface, as a server in a container is run (under Swarm the harness runs it
    // so already).
    let on_every_interface: &[&str] = if swarm_mode() {
        &[]
    } else {
        &["--host", "0.0.0.0", "--allow-unauthenticated"]
    };
    let server = HttpServer::start_with(
        &[
            &[
                "--allow-egress",
                "--allowed-host",
                "0.0.0.0,localhost,127.0.0.1",
            ][..],
            on_every_interface,
        ]
        .concat(),
    )
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
    // The default session's kernel starts now, so the server has joined its network too.
    let started = run(&client, "1", json!({})).await;
    assert_eq!(started["status"], "ok", "{started}");

    let mut targets = Vec::new();
    for address in host_addresses() {
        targets.push(json!(["host listener on 0.0.0.0", address, listening]));
        targets.push(json!(["server's HTTP port", address, server_port]));
    }
    targets.push(json!(["another session's kernel", neighbour, 8000]));
    targets.push(json!(["cloud metadata", "169.254.169.254", 80]));
    targets.push(json!(["public address", "1.1.1.1", 443]));
    targets.push(json!(["public name", "pypi.org", 443]));
    let server_addresses = server_addresses(&server);
    let gateway = overlay_gateway(&server, "default").map(|gateway| {
        json!([
            "the default kernel's overlay gateway, host listener port",
            gateway,
            listening
        ])
    });
    if gateway.is_none() {
        eprintln!(
            "skipped: the overlay's gateway (the kernel has no overlay, or it has no gateway)"
        );
    }
    if swarm_mode() {
        assert!(
            server_addresses
                .iter()
                .any(|a| a.overlay_of.as_deref() == Some("default")),
            "the server's container is on the kernel's overlay: {:?}",
            server.container_networks()
        );
        assert!(
            server_addresses.len() >= 3,
            "the server's network and two overlays: {:?}",
            server.container_networks()
        );
    } else {
        eprintln!(
            "skipped: the server container's own addresses (on one host the server is not in a container; its port is tried on every host address)"
        );
    }
    // Each kernel tries the server's addresses on its own overlay and the server's network,
    // and the one without egress those on the other overlay and its overlay's gateway too (it
    // has no route to the first; the kernel with egress would send them out to the world).
    let with_server = |session: &str| {
        let mut all = targets.clone();
        if session == "default" {
            all.extend(gateway.clone());
        }
        all.extend(
            server_addresses
                .iter()
                .filter(|a| session == "default" || a.overlay_of.as_deref() != Some("default"))
                .map(ServerAddress::target),
        );
        Value::Array(all)
    };

    let isolated = run(&client, &probe(&with_server("default")), json!({})).await;
    let report: Value = serde_json::from_str(isolated["stdout"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {isolated}"));
    eprintln!("from a kernel without egress:");
    for result in report["results"].as_array().unwrap() {
        eprintln!("  {result}");
    }
    eprintln!(
        "  interfaces {}, routes {}",
        report["interfaces"], report["routes"]
    );
    if swarm_mode() {
        // Loopback and the kernel's own overlay, nothing else.
        assert_eq!(
            report["interfaces"].as_array().unwrap().len(),
            2,
            "{report}"
        );
    } else {
        assert_eq!(report["interfaces"], json!(["lo"]), "{report}");
    }
    assert!(
        report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|route| route[1] != "00000000"),
        "a default route: {report}"
    );
    for result in report["results"].as_array().unwrap() {
        let outcome = result[3].as_str().unwrap();
        assert!(outcome.starts_with("blocked"), "reached {result}");
    }
    assert_refused_on_own_overlay(&report, &server_addresses, "default");
    assert!(
        listener.accept().is_err(),
        "the host listener took a connection from the kernel"
    );
    assert_listens_on_no_kernel_network(&server);

    // The targets are live: the kernel with egress reaches the host's listener.
    let open = run(
        &client,
        &probe(&with_server("neighbour")),
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
    // Not the server's HTTP port in its container, on its overlay or the server's network.
    for result in report["results"].as_array().unwrap() {
        if server_addresses.iter().any(|a| a.tried_by(result)) {
            assert!(
                result[3].as_str().unwrap().starts_with("blocked"),
                "reached {result}"
            );
        }
    }
    assert_refused_on_own_overlay(&report, &server_addresses, "neighbour");

    if swarm_mode() {
        eprintln!(
            "skipped: the sealed run directory (on Swarm the server dials kernels over TCP; there is none)"
        );
    } else {
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
    }
    let listed = structured(&call(&client, "list_sessions", json!({})).await);
    assert_eq!(listed["sessions"]["default"]["egress"], false);
}

/// The server's address on `session`'s own overlay was tried, reached the server's container
/// and was refused there: the server listens on nothing on kernel networks.
fn assert_refused_on_own_overlay(report: &Value, addresses: &[ServerAddress], session: &str) {
    for address in addresses
        .iter()
        .filter(|a| a.overlay_of.as_deref() == Some(session))
    {
        let result = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| address.tried_by(r))
            .unwrap_or_else(|| panic!("{} was tried: {report}", address.label));
        assert!(
            result[3]
                .as_str()
                .unwrap()
                .contains("ConnectionRefusedError"),
            "refused by the server's container: {result}"
        );
    }
}

/// Under the Swarm runtime: no socket in the server's container listens on every address or
/// on any address it holds on a kernel's overlay (nothing to check on one host).
fn assert_listens_on_no_kernel_network(server: &HttpServer) {
    let sockets = server.container_sockets();
    if !swarm_mode() {
        eprintln!("skipped: the server container's sockets (on one host it has no container)");
        return;
    }
    eprintln!("sockets in the server's container: {sockets:?}");
    assert!(
        sockets
            .iter()
            .any(|(protocol, _, port)| *protocol == "tcp" && *port == SERVER_PORT_IN_CONTAINER),
        "the HTTP listener shows: {sockets:?}"
    );
    let overlays: Vec<IpAddr> = server
        .container_networks()
        .into_iter()
        .filter(|(network, _)| network != common::server::SERVER_NETWORK)
        .filter_map(|(_, address)| address.parse().ok())
        .collect();
    for (protocol, address, port) in &sockets {
        assert!(
            !address.is_unspecified() && !overlays.contains(address),
            "{protocol} {address}:{port} is open on a kernel's overlay: {sockets:?}"
        );
    }
}

#[tokio::test]
async fn packages_install_for_a_kernel_without_egress_and_egress_is_granted_by_policy_only() {
    let index = PackageIndex::start().await;
    let refusing = HttpServer::start_with(&["--egress-network", &index.network]).await;
    let client = refusing.client().await;
    let error = create_session_refused(&client, "open", json!({"egress": true})).await;
    assert!(error.contains("egress is not allowed"), "{error}");

    let server =
        HttpServer::start_with(&[&index.server_flags()[..], &["--allow-egress"]].concat()).await;
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
