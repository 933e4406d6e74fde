//! Network isolation: kernels have no egress and cannot reach each other by default, while
//! the server reaches every kernel; packages still install (through the installer container);
//! egress is granted per session only when the server's policy allows it.

mod common;

use common::{
    HttpServer, PackageIndex, call, create_session, create_session_refused, run, structured,
};
use serde_json::json;

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

#[tokio::test]
async fn kernels_reach_neither_the_internet_nor_each_other() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    create_session(&client, "neighbour", json!({})).await;
    let served = run(&client, SERVE, json!({"session_id": "neighbour"})).await;
    let address = served["stdout"].as_str().unwrap().trim().to_string();
    assert!(!address.is_empty(), "{served}");
    let probe = run(&client, &reach(&address, 8000), json!({})).await;
    assert!(
        probe["stdout"].as_str().unwrap().starts_with("blocked"),
        "{probe}"
    );
    let internet = run(
        &client,
        "import urllib.request\ntry:\n    urllib.request.urlopen('https://pypi.org/simple/', timeout=5)\n    print('reached')\nexcept Exception as error:\n    print('blocked', type(error).__name__)",
        json!({}),
    )
    .await;
    assert!(
        internet["stdout"].as_str().unwrap().starts_with("blocked"),
        "{internet}"
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
