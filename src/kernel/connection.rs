//! Connection details of one kernel: the five channel ports and a fresh HMAC key. Owns the
//! connection file the kernel reads and the addresses the client dials; holds no sockets.

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

    pub fn all(&self) -> [u16; 5] {
        [
            self.shell,
            self.iopub,
            self.stdin,
            self.control,
            self.heartbeat,
        ]
    }
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

    /// The connection file the kernel is started with: it listens on every interface of its
    /// own network namespace, on the fixed in-container ports.
    pub fn kernel_file(&self) -> String {
        let info = self.info("0.0.0.0", ChannelPorts::IN_CONTAINER);
        serde_json::to_string(&info).expect("a ConnectionInfo always serializes")
    }

    /// What the client dials to reach the kernel at `host` on `ports`.
    pub fn info(&self, host: &str, ports: ChannelPorts) -> ConnectionInfo {
        ConnectionInfo {
            ip: host.to_string(),
            transport: Transport::TCP,
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
        let file: serde_json::Value = serde_json::from_str(&conn.kernel_file()).unwrap();
        assert_eq!(file["ip"], "0.0.0.0");
        assert_eq!(file["signature_scheme"], "hmac-sha256");
        assert_eq!(file["shell_port"], 5555);
        assert_eq!(file["key"], conn.key.as_str());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let conn = KernelConnection::generate();
        assert!(!format!("{conn:?}").contains(&conn.key));
    }
}
