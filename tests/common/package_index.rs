//! A package index for tests: a container serving one pure-Python wheel the way a PyPI mirror
//! would (and `kbprobe`, an sdist whose build probes the network), on its own Docker network,
//! and the install that checks a kernel can use it.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use super::docker::{kernel_image, remove_containers, swarm_mode};
use super::mcp::{Client, call, run, structured};

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

/// `setup.py` of `kbprobe`, an sdist whose build runs code, as a malicious package's would:
/// it tries each socket and URL of `/workspace/probe-targets.json` and writes the outcomes
/// to `/workspace/probe.json`.
const PROBE_SETUP: &str = r#"
import json, socket, urllib.request
from setuptools import setup
targets = json.load(open('/workspace/probe-targets.json'))
rows = []
for label, host, port in targets['sockets']:
    try:
        socket.create_connection((host, port), timeout=3).close()
        rows.append([label, 'reached'])
    except OSError as error:
        rows.append([label, f'{type(error).__name__}: {error}'])
for label, url in targets['urls']:
    try:
        urllib.request.urlopen(url, timeout=10).read()
        rows.append([label, 'reached'])
    except Exception as error:
        rows.append([label, f'{type(error).__name__}: {error}'])
json.dump(rows, open('/workspace/probe.json', 'w'))
setup(name='kbprobe', version='1.0', py_modules=[])
"#;

const INDEX_SERVER: &str = r#"
import base64, hashlib, http.server, io, os, tarfile, zipfile
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
probe_root = '/tmp/index/simple/kbprobe'
os.makedirs(probe_root)
sdist = 'kbprobe-1.0.tar.gz'
with tarfile.open(os.path.join(probe_root, sdist), 'w:gz') as archive:
    for name, text in {
        'kbprobe-1.0/setup.py': PROBE_SETUP,
        'kbprobe-1.0/PKG-INFO': 'Metadata-Version: 2.1\nName: kbprobe\nVersion: 1.0\n',
    }.items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
with open(os.path.join(probe_root, 'index.html'), 'w') as page:
    page.write('<html><body><a href="%s">%s</a></body></html>' % (sdist, sdist))
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
        let index_server = format!("PROBE_SETUP = {PROBE_SETUP:?}\n{INDEX_SERVER}");
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
            &index_server,
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

impl PackageIndex {
    /// The server flags that install from this index: its network as the egress network (for
    /// installers on Swarm), its URL, and its host trusted without TLS.
    pub fn server_flags(&self) -> [&str; 6] {
        [
            "--egress-network",
            &self.network,
            "--pip-index-url",
            &self.url,
            "--pip-trusted-host",
            &self.host,
        ]
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
