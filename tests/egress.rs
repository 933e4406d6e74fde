//! Egress by allowlist: a session created with `egress_allow` reaches what it lists, through
//! kernelbox's proxy (the kernel's HTTP_PROXY and HTTPS_PROXY), with urllib, requests and
//! curl, in plain HTTP and through a CONNECT tunnel, and after the server restarts; nothing
//! else. Everything off the list is refused with the reason in the cell's error: another
//! port of an allowed address, an address literal, a name that resolves to loopback, the
//! metadata address, a public name. Unsetting the proxy variables leaves no way out at all.
//! Asking for more than the server or the token allows is refused naming the pattern. On
//! both runtimes: on one host the kernel reaches the proxy through a relay to its run
//! directory, on Swarm at the server's alias on its own overlay. The installer (one host)
//! reaches the package index and nothing else.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    ContainerSweeper, HttpServer, assert_metrics, create_session, create_session_refused,
    host_address, run, swarm_mode,
};
use serde_json::{Value, json};

const GREETING: &str = "hello from the allowlisted server";
/// The host's CA bundle, which kernels need where TLS is intercepted on the way out.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// This machine reaches pypi.org on 443 and has a CA bundle to give kernels.
fn reaches_pypi() -> bool {
    let Ok(mut addresses) = std::net::ToSocketAddrs::to_socket_addrs(&("pypi.org", 443)) else {
        return false;
    };
    std::path::Path::new(CA_BUNDLE).exists()
        && addresses.any(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(3)).is_ok()
        })
}

/// A plain HTTP server on every interface of the host that answers each request with
/// [`GREETING`] and counts the connections it took.
struct HostServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl HostServer {
    fn start() -> Self {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{GREETING}",
                        GREETING.len()
                    );
                });
            }
        });
        Self { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A cell that fetches each `[label, url]` through the kernel's proxy variables with urllib
/// and prints `[label, outcome]` rows as JSON: the body, or the error with its reason.
fn fetch_all(urls: &Value) -> String {
    format!(
        "import json, urllib.request, urllib.error\n\
         rows = []\n\
         for label, url in json.loads({urls:?}):\n    \
         try:\n        outcome = 'body: ' + urllib.request.urlopen(url, timeout=20).read().decode()\n    \
         except urllib.error.HTTPError as error:\n        outcome = f'HTTP {{error.code}}: {{error.reason}}'\n    \
         except Exception as error:\n        outcome = f'{{type(error).__name__}}: {{error}}'\n    \
         rows.append([label, outcome])\n\
         print(json.dumps(rows))",
        urls = urls.to_string()
    )
}

/// A cell that opens a CONNECT tunnel to `host:port` through the proxy with http.client and
/// sends a GET through it; prints the body or the error.
fn tunnel(host: &str, port: u16) -> String {
    format!(
        "import http.client, os, urllib.parse\n\
         proxy = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])\n\
         connection = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=20)\n\
         connection.set_tunnel({host:?}, {port})\n\
         try:\n    connection.request('GET', '/')\n    print('body: ' + connection.getresponse().read().decode())\n\
         except OSError as error:\n    print(f'{{type(error).__name__}}: {{error}}')"
    )
}

/// A connection that found no way out: no network at all (runc says the network is
/// unreachable, gVisor that there is no route).
fn no_route(outcome: &str) -> bool {
    outcome.contains("Network is unreachable") || outcome.contains("No route to host")
}

fn rows(result: &Value) -> Vec<(String, String)> {
    let rows: Vec<(String, String)> = serde_json::from_str(result["stdout"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {result}"));
    for (label, outcome) in &rows {
        eprintln!("  {label}: {outcome}");
    }
    rows
}

#[tokio::test]
async fn a_kernel_reaches_its_allowlist_through_the_proxy_and_nothing_else() {
    let allowed = HostServer::start();
    let other = HostServer::start();
    // The host as the proxy sees it: loopback on one host, where the server runs on the host;
    // its address under Swarm, where the server runs in a container. Another literal of the
    // host's is not on the list.
    let host = host_address();
    let (listed, unlisted) = if swarm_mode() {
        (host.clone(), "172.17.0.1".to_string())
    } else {
        ("127.0.0.1".to_string(), host.clone())
    };
    let server_list = format!(
        "{listed}/32:{port}, localhost:{other}, {listed}:{other}, pypi.org, files.pythonhosted.org:443",
        port = allowed.port,
        other = other.port
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sweeper = ContainerSweeper::for_data_dir(&data);
    let flags = ["--egress-allow", &server_list, "--ca-bundle", CA_BUNDLE];
    let mut first = HttpServer::start_in(&data, &flags).await;
    let client = first.client().await;

    let wider = create_session_refused(
        &client,
        "wider",
        json!({"egress_allow": ["*.pythonhosted.org"]}),
    )
    .await;
    assert!(
        wider.contains(
            "\"*.pythonhosted.org\" is wider than what this server's --egress-allow allows"
        ),
        "{wider}"
    );
    let both = create_session_refused(
        &client,
        "both",
        json!({"egress": true, "egress_allow": ["pypi.org"]}),
    )
    .await;
    assert!(both.contains("not both"), "{both}");
    let bad = create_session_refused(&client, "bad", json!({"egress_allow": ["*"]})).await;
    assert!(bad.contains("matches every host"), "{bad}");

    let session = json!({"session_id": "listed"});
    create_session(
        &client,
        "listed",
        json!({"egress_allow": [format!("{listed}:{}", allowed.port), format!("localhost:{}", other.port)]}),
    )
    .await;
    let url = format!("http://{listed}:{}/", allowed.port);
    eprintln!("through the proxy, allowed:");
    let reached = run(
        &client,
        &fetch_all(&json!([["urllib, by the CIDR pattern", url]])),
        session.clone(),
    )
    .await;
    assert_eq!(
        rows(&reached),
        [(
            "urllib, by the CIDR pattern".to_string(),
            format!("body: {GREETING}")
        )]
    );
    let tunnelled = run(&client, &tunnel(&listed, allowed.port), session.clone()).await;
    assert_eq!(
        tunnelled["stdout"],
        format!("body: {GREETING}\n"),
        "{tunnelled}"
    );
    let requests = run(
        &client,
        &format!("import requests\nprint(requests.get({url:?}, timeout=20).text)"),
        session.clone(),
    )
    .await;
    assert_eq!(requests["stdout"], format!("{GREETING}\n"), "{requests}");
    let curl = run(
        &client,
        &format!("import subprocess\nprint(subprocess.run(['curl', '-sS', {url:?}], capture_output=True, text=True, timeout=30).stdout)"),
        session.clone(),
    )
    .await;
    assert_eq!(curl["stdout"], format!("{GREETING}\n"), "{curl}");
    let reached_so_far = allowed.connections();
    assert_eq!(reached_so_far, 4, "one connection per client");

    eprintln!("through the proxy, refused:");
    let refused = run(
        &client,
        &fetch_all(&json!([
            [
                "another port of the allowed address",
                format!("http://{listed}:{}/", other.port)
            ],
            [
                "another address of the host's, as a literal",
                format!("http://{unlisted}:{}/", allowed.port)
            ],
            [
                "a listed name that resolves to loopback",
                format!("http://localhost:{}/", other.port)
            ],
            ["cloud metadata", "http://169.254.169.254/latest/meta-data/"],
            [
                "a public name the server allows but the session does not",
                "https://pypi.org/simple/"
            ],
        ])),
        session.clone(),
    )
    .await;
    for (label, outcome) in rows(&refused) {
        assert!(outcome.contains("kernelbox egress: "), "{label}: {outcome}");
        let reason = if label.starts_with("a listed name") {
            "resolves only to addresses kernels may not reach"
        } else {
            "is not on this session's egress allowlist"
        };
        assert!(outcome.contains(reason), "{label}: {outcome}");
    }
    let other_port = run(&client, &tunnel(&listed, other.port), session.clone()).await;
    let other_port = other_port["stdout"].as_str().unwrap();
    assert!(
        other_port.starts_with(&format!(
            "OSError: Tunnel connection failed: 403 kernelbox egress: {listed}:"
        )) && other_port.contains("is not on this session's egress allowlist"),
        "{other_port}"
    );

    eprintln!("without the proxy variables:");
    let direct = run(
        &client,
        &format!(
            "import json, os, socket, urllib.request\n\
             for name in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):\n    os.environ.pop(name, None)\n\
             rows = []\n\
             for label, target in [['urllib, no proxy', 'http://{host}:{port}/'], ['urllib, no proxy, public', 'http://1.1.1.1/']]:\n    \
             try:\n        urllib.request.build_opener().open(target, timeout=5)\n        rows.append([label, 'reached'])\n    \
             except Exception as error:\n        rows.append([label, f'{{type(error).__name__}}: {{error}}'])\n\
             for label, address in [['socket to the host', '{host}'], ['socket to docker0', '172.17.0.1']]:\n    \
             try:\n        socket.create_connection((address, {port}), timeout=5).close()\n        rows.append([label, 'reached'])\n    \
             except OSError as error:\n        rows.append([label, f'{{type(error).__name__}}: {{error}}'])\n\
             print(json.dumps(rows))",
            port = allowed.port
        ),
        session.clone(),
    )
    .await;
    for (label, outcome) in rows(&direct) {
        assert!(no_route(&outcome), "{label}: {outcome}");
    }
    assert_eq!(other.connections(), 0, "nothing reached the unlisted port");
    assert_eq!(
        allowed.connections(),
        reached_so_far,
        "no refused request got through"
    );

    let metrics = first.metrics_text().await;
    assert_metrics(
        &metrics,
        &[
            (
                "kernelbox_egress_connections_total{outcome=\"allowed\"}",
                4.0,
            ),
            (
                "kernelbox_egress_connections_total{outcome=\"refused\"}",
                6.0,
            ),
            (
                "kernelbox_egress_connections_total{outcome=\"failed\"}",
                0.0,
            ),
        ],
    );
    let logged = first.logs.lock().unwrap().clone();
    assert!(
        logged.iter().any(|line| line.contains("egress refused")
            && line.contains("session_id=listed")
            && line.contains("tenant=local")),
        "refusals are logged with session and tenant"
    );

    // A public index by name, where this machine reaches it: urllib and pip through the
    // proxy, with the host's CA bundle (TLS here may be intercepted on the way).
    if reaches_pypi() {
        eprintln!("pypi.org through the proxy:");
        create_session(
            &client,
            "pypi",
            json!({"egress_allow": ["pypi.org:443", "files.pythonhosted.org:443"]}),
        )
        .await;
        let pypi = json!({"session_id": "pypi"});
        let index = run(
            &client,
            "import urllib.request
print(urllib.request.urlopen('https://pypi.org/simple/six/', timeout=30).status)",
            pypi.clone(),
        )
        .await;
        assert_eq!(index["stdout"], "200\n", "{index}");
        let pip = run(
            &client,
            "import subprocess, sys
print(subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--dest', '/tmp/dl', 'six==1.16.0'], capture_output=True, text=True, timeout=120).stdout)",
            pypi,
        )
        .await;
        assert!(
            pip["stdout"]
                .as_str()
                .unwrap()
                .contains("Saved /tmp/dl/six-1.16.0"),
            "{pip}"
        );
    } else {
        eprintln!("skipped: pypi.org (this machine does not reach it, or has no CA bundle)");
    }

    // A restarted server adopts the kernel and serves its egress again.
    drop(client);
    assert!(first.stop().await.success());
    first.keep_containers();
    drop(first);
    let second = HttpServer::start_in(&data, &flags).await;
    let client = second.client().await;
    let again = run(
        &client,
        &format!("import urllib.request\nprint(urllib.request.urlopen({url:?}, timeout=20).read().decode())"),
        session.clone(),
    )
    .await;
    assert_eq!(again["stdout"], format!("{GREETING}\n"), "{again}");
    drop(sweeper);
}

#[tokio::test]
async fn a_token_narrows_what_the_server_allows() {
    const NARROWED: &str = "narrowed-token-0123456789abcdef";
    const WIDE: &str = "wide-token-0123456789abcdef";
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tokens.path(),
        json!({"tokens": [
            {"token": NARROWED, "tenant": "narrowed", "egress_allow": ["pypi.org:443"]},
            {"token": WIDE, "tenant": "wide"},
        ]})
        .to_string(),
    )
    .unwrap();
    let server = HttpServer::start_with(&[
        "--tokens-file",
        tokens.path().to_str().unwrap(),
        "--egress-allow",
        "pypi.org, 10.0.0.0/8:5432",
    ])
    .await;
    let narrowed = server.client_with_token(NARROWED).await;
    let refused =
        create_session_refused(&narrowed, "web", json!({"egress_allow": ["pypi.org"]})).await;
    assert!(
        refused.contains("\"pypi.org\" is wider than what your token allows (pypi.org:443)"),
        "{refused}"
    );
    create_session(&narrowed, "web", json!({"egress_allow": ["pypi.org:443"]})).await;
    let wide = server.client_with_token(WIDE).await;
    create_session(&wide, "db", json!({"egress_allow": ["10.1.0.0/16:5432"]})).await;
    let listed = common::structured(&common::call(&wide, "list_sessions", json!({})).await);
    assert_eq!(
        listed["sessions"]["db"]["egress_allow"],
        json!(["10.1.0.0/16:5432"])
    );
}

#[tokio::test]
async fn the_installer_reaches_the_package_index_and_nothing_else() {
    if swarm_mode() {
        eprintln!("skipped: the installer's proxy (on Swarm the installer has an egress network)");
        return;
    }
    let listener = HostServer::start();
    let host = host_address();
    let index = common::PackageIndex::start().await;
    let server = HttpServer::start_with(&index.server_flags()).await;
    let client = server.client().await;
    let targets = json!({
        "sockets": [
            ["socket to the host listener", host, listener.port],
            ["socket to docker0", "172.17.0.1", listener.port],
            ["socket to the index, around the proxy", index.host, index.port],
        ],
        "urls": [
            ["the host listener through the proxy", format!("http://{host}:{}/", listener.port)],
            ["the index through the proxy", index.url],
        ],
    });
    let written = run(
        &client,
        &format!(
            "open('probe-targets.json', 'w').write({:?})",
            targets.to_string()
        ),
        json!({}),
    )
    .await;
    assert_eq!(written["status"], "ok", "{written}");
    let installed = common::structured(
        &common::call(
            &client,
            "install_dependencies",
            json!({"packages": ["kbprobe"]}),
        )
        .await,
    );
    assert_eq!(installed["returncode"], 0, "{installed}");
    let probed = run(&client, "print(open('probe.json').read())", json!({})).await;
    eprintln!("from the installer's build of an sdist:");
    for (label, outcome) in rows(&probed) {
        let expected = match label.as_str() {
            "the index through the proxy" => "reached",
            "the host listener through the proxy" => "HTTP Error 403: kernelbox egress: ",
            _ => {
                assert!(no_route(&outcome), "{label}: {outcome}");
                continue;
            }
        };
        assert!(outcome.contains(expected), "{label}: {outcome}");
    }
    assert_eq!(listener.connections(), 0, "the installer reached the host");
}
