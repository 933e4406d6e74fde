//! Connection details of one kernel: the five channel ports and a fresh HMAC key. Owns the
//! connection file the kernel reads and the addresses the client dials, over TCP or over IPC
//! (socket files `{prefix}-1` to `{prefix}-5`); holds no sockets.

use std::path::Path;

use jupyter_protocol::{ConnectionInfo, Transport};
use rand::RngCore;

/// The ports of the five Jupyter channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelPorts {
    pub shell: u16,
    pub iopub: u16,
    pub stdin: u16,
    pub control: u16,
    pub heartbeat: u16,
}

impl ChannelPorts {
    /// Inside its own container every kernel listens on the same ports.
    pub const IN_CONTAINER: ChannelPorts = ChannelPorts {
        shell: 5555,
        iopub: 5556,
        stdin: 5557,
        control: 5558,
        heartbeat: 5559,
    };

    /// Over IPC the ports are the suffixes of the socket files: `{prefix}-1` is shell.
    pub const IPC: ChannelPorts = ChannelPorts {
        shell: 1,
        iopub: 2,
        stdin: 3,
        control: 4,
        heartbeat: 5,
    };
}

/// The secret half of a kernel connection: the HMAC key, never logged or returned to clients.
#[derive(Clone)]
pub struct KernelConnection {
    key: String,
}

impl std::fmt::Debug for KernelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelConnection { key: <redacted> }")
    }
}

impl KernelConnection {
    /// A connection with a fresh random 256-bit key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            key: hex::encode(bytes),
        }
    }

    /// The connection of a kernel started earlier, from its recorded key.
    pub fn from_key(key: String) -> Self {
        Self { key }
    }

    /// The HMAC key, for the server's private session record only.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The connection file of a kernel reached over TCP: it listens on every interface of its
    /// own network namespace, on the fixed in-container ports.
    pub fn tcp_kernel_file(&self) -> String {
        Self::file(&self.info("0.0.0.0", ChannelPorts::IN_CONTAINER))
    }

    /// The connection file of a kernel reached over IPC: it binds its socket files at
    /// `prefix` (a path inside its container) followed by `-1` to `-5`.
    pub fn ipc_kernel_file(&self, prefix: &str) -> String {
        Self::file(&self.with(Transport::IPC, prefix, ChannelPorts::IPC))
    }

    fn file(info: &ConnectionInfo) -> String {
        serde_json::to_string(info).expect("a ConnectionInfo always serializes")
    }

    /// What the client dials to reach the kernel at `host` on `ports` over TCP.
    pub fn info(&self, host: &str, ports: ChannelPorts) -> ConnectionInfo {
        self.with(Transport::TCP, host, ports)
    }

    /// What the client dials to reach the kernel whose socket files are `prefix` followed by
    /// `-1` to `-5` (a path the server sees).
    pub fn ipc_info(&self, prefix: &Path) -> ConnectionInfo {
        self.with(Transport::IPC, &prefix.to_string_lossy(), ChannelPorts::IPC)
    }

    fn with(&self, transport: Transport, ip: &str, ports: ChannelPorts) -> ConnectionInfo {
        ConnectionInfo {
            ip: ip.to_string(),
            transport,
            shell_port: ports.shell,
            iopub_port: ports.iopub,
            stdin_port: ports.stdin,
            control_port: ports.control,
            hb_port: ports.heartbeat,
            key: self.key.clone(),
            signature_scheme: "hmac-sha256".to_string(),
            kernel_name: Some("python3".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_fresh_and_long() {
        let a = KernelConnection::generate();
        let b = KernelConnection::generate();
        assert_ne!(a.key, b.key);
        assert_eq!(a.key.len(), 64);
    }

    #[test]
    fn kernel_file_listens_on_all_interfaces_with_hmac_sha256() {
        let conn = KernelConnection::generate();
        let file: serde_json::Value = serde_json::from_str(&conn.tcp_kernel_file()).unwrap();
        assert_eq!(file["ip"], "0.0.0.0");
        assert_eq!(file["transport"], "tcp");
        assert_eq!(file["signature_scheme"], "hmac-sha256");
        assert_eq!(file["shell_port"], 5555);
        assert_eq!(file["key"], conn.key.as_str());
    }

    #[test]
    fn over_ipc_the_kernel_binds_numbered_socket_files_the_client_dials_by_host_path() {
        let conn = KernelConnection::generate();
        let file: serde_json::Value =
            serde_json::from_str(&conn.ipc_kernel_file("/run/kernel/k")).unwrap();
        assert_eq!(file["transport"], "ipc");
        assert_eq!(file["ip"], "/run/kernel/k");
        assert_eq!(file["shell_port"], 1);
        assert_eq!(file["hb_port"], 5);
        let info = conn.ipc_info(Path::new("/data/run/abc/k"));
        assert_eq!(info.shell_url(), "ipc:///data/run/abc/k-1");
        assert_eq!(info.iopub_url(), "ipc:///data/run/abc/k-2");
        assert_eq!(info.control_url(), "ipc:///data/run/abc/k-4");
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let conn = KernelConnection::generate();
        assert!(!format!("{conn:?}").contains(&conn.key));
    }
}
