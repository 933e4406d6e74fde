//! A real image registry for tests: Debian's `docker-registry` (the CNCF distribution server)
//! run from this host on a free port, storing into a temporary directory, on every address so
//! the nodes of a test cluster reach it at their network's gateway, and asking for a user
//! name and password (htpasswd, bcrypt) on every request. Stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

pub struct Registry {
    pub port: u16,
    pub username: String,
    pub password: String,
    process: Child,
    storage: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Self {
        let storage = tempfile::tempdir().unwrap();
        let (username, password) = ("kernelbox-ci".to_string(), "s3cret-for-tests".to_string());
        let htpasswd = storage.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{username}:{}\n", bcrypt(&password))).unwrap();
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 0.0.0.0:{port}\nauth:\n  htpasswd:\n    realm: kernelbox-test\n    path: {}\n",
                storage.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        // It logs every 404 a pusher's existence check gets as an error: keep that out of the
        // test's output unless the test fails.
        let log = std::fs::File::create(storage.path().join("registry.log")).unwrap();
        let process = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "docker-registry runs (Debian's docker-registry package; scripts/test installs it)",
            );
        let registry = Self {
            port,
            username,
            password,
            process,
            storage,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while registry.get("/v2/").await.map(|r| r.status()) != Some(StatusCode::OK) {
            assert!(
                Instant::now() < deadline,
                "the registry did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        registry
    }

    /// The digest the registry serves for `repository:tag`, from its manifest's
    /// `Docker-Content-Digest` header.
    pub async fn digest_of(&self, repository: &str, tag: &str) -> Option<String> {
        let reply = self
            .get(&format!("/v2/{repository}/manifests/{tag}"))
            .await
            .filter(|r| r.status() == StatusCode::OK)?;
        let digest = reply.headers().get("docker-content-digest")?;
        Some(digest.to_str().ok()?.to_string())
    }

    /// One GET of the registry's HTTP API.
    async fn get(&self, path: &str) -> Option<reqwest::Response> {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .basic_auth(&self.username, Some(&self.password))
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .ok()
    }
}

/// A bcrypt hash of `password`, made by the kernel image's Python (the registry takes no
/// other hash, and the host has no bcrypt tool).
fn bcrypt(password: &str) -> String {
    let output = Command::new("docker")
        .args(["run", "--rm", "--network", "none", &super::kernel_image()])
        .args(["python3", "-W", "ignore", "-c"])
        .arg(format!(
            "import crypt; print(crypt.crypt({password:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))"
        ))
        .output()
        .expect("docker runs");
    let hash = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        hash.starts_with("$2"),
        "no bcrypt hash: {hash:?} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    hash
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            let log = self.storage.path().join("registry.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for line in tail.into_iter().rev() {
                eprintln!("[registry] {line}");
            }
        }
    }
}
