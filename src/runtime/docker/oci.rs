//! The OCI runtime the single-host engine runs kernels under: `--oci-runtime` resolved
//! against the runtimes the engine has registered (refused with their list), and what that
//! runtime means for the sandbox (gVisor, and whether it gives containers a network). It
//! reads the engine's registration; it creates nothing.

use bollard::Docker;

use crate::runtime::RuntimeError;

/// The OCI runtime kernels run under, as the engine registered it.
pub(super) struct OciRuntime {
    pub name: String,
    /// Containers under it get the network they are put on (gVisor registered with
    /// `--network=none` gives none at all).
    pub has_network: bool,
    /// It is gVisor (by name or path).
    pub gvisor: bool,
}

impl OciRuntime {
    /// The runtime called `asked` (the engine's default when `None`), refused with the
    /// engine's list when the engine has no such runtime.
    pub async fn resolve(docker: &Docker, asked: Option<&str>) -> Result<Self, RuntimeError> {
        let info = docker
            .info()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let runtimes = info.runtimes.unwrap_or_default();
        let name = match asked {
            Some(name) => name.to_string(),
            None => info.default_runtime.unwrap_or_else(|| "runc".to_string()),
        };
        let Some(registered) = runtimes.get(&name) else {
            let mut known: Vec<&String> = runtimes.keys().collect();
            known.sort();
            return Err(RuntimeError::UnknownOciRuntime {
                known: known
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                name,
            });
        };
        let has_network = !registered
            .runtime_args
            .iter()
            .flatten()
            .any(|arg| arg == "--network=none");
        let gvisor = name == "runsc"
            || registered
                .path
                .as_deref()
                .is_some_and(|path| path.ends_with("runsc"));
        Ok(Self {
            name,
            has_network,
            gvisor,
        })
    }
}
