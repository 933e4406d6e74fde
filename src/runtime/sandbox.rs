//! The sandbox every kernel and job container runs in, whatever the engine: one value holding
//! its limits, user, read-only root, dropped capabilities, no-new-privileges, `/tmp` tmpfs,
//! mounts, launch command and environment, labels and network, built once per container from
//! a [`KernelSpec`] or [`JobSpec`] and the engine's configuration (a kernel reached over IPC
//! also gets its run directory mounted and a connection file naming socket files there); and
//! the one check of that
//! value against what an engine reports back after create. Each engine renders a [`Sandbox`]
//! into its own request and maps its read-back into a [`Reported`]; this module never speaks
//! to an engine and knows none of their field names. The OCI runtime a kernel runs under
//! belongs here when it becomes configurable, rendered and checked like every other setting.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::engine::managed_labels;
use super::{
    CONNECTION_FILE_ARG, EGRESS_SOCKET_NAME, IPC_SOCKET_NAME, JobEgress, JobSpec, KernelEgress,
    KernelLaunch, KernelSpec, Limits, RuntimeError,
};

/// Where the session's workspace is mounted, and the container's working directory.
pub(super) const WORKSPACE: &str = crate::workspace::IN_KERNEL;
/// The container's only writable path besides the workspace: a tmpfs of `Limits::tmp_bytes`.
pub(super) const TMP: &str = "/tmp";
/// Where a kernel reached over IPC finds its run directory, and binds its sockets.
pub(super) const RUN_DIR: &str = "/run/kernel";
/// Where a job whose way out is the egress proxy finds the proxy's socket.
const JOB_EGRESS_DIR: &str = "/run/egress";
/// Under gVisor the container's pids cgroup counts gVisor's host threads, not the kernel's
/// processes: measured here, an idle sandbox holds 52 and one running 64 tasks 375. The
/// cgroup gets this base plus [`GVISOR_PIDS_PER_TASK`] per allowed process, a backstop
/// behind gVisor's own `RLIMIT_NPROC`.
const GVISOR_PIDS_BASE: i64 = 64;
/// Host threads per task under gVisor's ptrace platform, with room (measured: about 5).
const GVISOR_PIDS_PER_TASK: i64 = 6;
/// The loopback port in a kernel's container that relays to the egress proxy.
const EGRESS_RELAY_PORT: u16 = 3128;
/// Where a kernel's CA bundle is mounted inside its container.
const CA_BUNDLE_IN_CONTAINER: &str = "/etc/ssl/certs/kernelbox-ca-bundle.pem";

/// The command the image's entry point (`tini --`) runs: write the connection file to the
/// container's own tmpfs (ipykernel writes it back, so it cannot be a read-only mount), drop the
/// variable that carried it, and become the kernel.
const KERNEL_LAUNCH: &str = "umask 077 && printf '%s' \"$KERNELBOX_CONNECTION\" > /tmp/kernelbox-connection.json \
&& unset KERNELBOX_CONNECTION && exec python3 -c \"$KERNELBOX_BOOTSTRAP\" -f /tmp/kernelbox-connection.json";

/// The command that starts a kernel by its image's own argv (after `sh -c SCRIPT NAME`): write
/// the connection file as [`KERNEL_LAUNCH`] does, start the egress relay when the sandbox has
/// one (the image then needs `python3`), and become the kernel.
const ARGV_LAUNCH: &str = "umask 077 && printf '%s' \"$KERNELBOX_CONNECTION\" > /tmp/kernelbox-connection.json \
&& unset KERNELBOX_CONNECTION && if [ -n \"${KERNELBOX_EGRESS_RELAY:-}\" ]; then python3 -c \"$KERNELBOX_RELAY\" || exit 1; fi \
&& unset KERNELBOX_EGRESS_RELAY KERNELBOX_RELAY && exec \"$@\"";

/// Where the launch commands write the connection file, in the container's own tmpfs.
const CONNECTION_FILE: &str = "/tmp/kernelbox-connection.json";

/// The egress relay, Python that a kernel's bootstrap and a job's launcher run first: for a
/// sandbox whose way out is the egress proxy, a process of its own that listens on a
/// loopback port (bound before anything else runs, so before any user code) and passes each
/// connection on to the proxy's Unix socket. A macro, so both can `concat!` it.
macro_rules! egress_relay {
    () => {
        r#"import os
import socket

relay = os.environ.pop("KERNELBOX_EGRESS_RELAY", None)
if relay:
    port, path = relay.split(" ", 1)
    listener = socket.create_server(("127.0.0.1", int(port)), backlog=64)
    if os.fork() == 0:
        import signal
        import threading

        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def pipe(source, sink):
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        def relay_one(client):
            with client, socket.socket(socket.AF_UNIX) as upstream:
                try:
                    upstream.connect(path)
                except OSError:
                    return
                back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
                back.start()
                pipe(client, upstream)
                back.join()

        while True:
            client, _ = listener.accept()
            threading.Thread(target=relay_one, args=(client,), daemon=True).start()
    listener.close()

"#
    };
}

/// Starts ipykernel with stdout and stderr that flush whenever a megabyte is buffered: a cell
/// that floods output then sends bounded messages (and waits for each to leave) instead of
/// one message as large as everything it printed. The debugger's debugpy, a third of
/// ipykernel's import time and used by no tool, is kept out of the start (ipykernel then
/// runs without its debugger); user code can still import it.
const KERNEL_BOOTSTRAP: &str = concat!(
    egress_relay!(),
    r#"
import sys

sys.modules["debugpy"] = None
import ipykernel.iostream


class ChunkedOutStream(ipykernel.iostream.OutStream):
    chunk = 1 << 20

    def write(self, string):
        written = 0
        for start in range(0, len(string), self.chunk):
            written += super().write(string[start:start + self.chunk]) or 0
            if self._buffer.tell() >= self.chunk:
                self.flush()
        return written


from ipykernel.kernelapp import IPKernelApp
import os
import time

del sys.modules["debugpy"]

# A template's own kernel (bash_kernel's, say) runs in place of IPython's.
kernel_class = os.environ.pop("KERNELBOX_KERNEL_CLASS", None)
app = IPKernelApp.instance(
    outstream_class="__main__.ChunkedOutStream",
    **({"kernel_class": kernel_class} if kernel_class else {}),
)
# Over IPC the server, another user, connects to the socket files the kernel binds: they are
# made under umask 0 (in a directory nobody else reaches), and the kernel's own umask is back
# before any code of the user's runs. The heartbeat binds in a thread of its own.
umask = os.umask(0)
app.initialize()
# The protocol requires language_info.version; some kernels (bash_kernel) leave it out, and
# their kernel_info_reply would not parse.
app.kernel.language_info.setdefault("version", "")
if app.transport == "ipc":
    ports = (app.shell_port, app.iopub_port, app.stdin_port, app.control_port, app.hb_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        os.path.exists(f"{app.ip}-{port}") for port in ports
    ):
        time.sleep(0.005)
os.umask(umask)
app.start()
"#
);

/// The relay alone, for a kernel started by its image's argv: the relay's process stays, this
/// one ends.
const RELAY: &str = egress_relay!();

/// A job's launcher when its way out is the egress proxy: the relay, then the job's argv.
const JOB_LAUNCH: &str = concat!(
    egress_relay!(),
    r#"
import sys

os.execvp(sys.argv[1], sys.argv[1:])
"#
);

/// The variables that start the relay to the egress proxy's socket in `socket_dir` (a path in
/// the container) and point HTTP clients at it.
fn relay_env(socket_dir: &str) -> Vec<String> {
    let mut env = vec![format!(
        "KERNELBOX_EGRESS_RELAY={EGRESS_RELAY_PORT} {socket_dir}/{EGRESS_SOCKET_NAME}"
    )];
    env.extend(proxy_env(&format!("http://127.0.0.1:{EGRESS_RELAY_PORT}")));
    env
}

/// The variables that point HTTP clients at the proxy `url`, in both cases.
fn proxy_env(url: &str) -> Vec<String> {
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .iter()
        .map(|variable| format!("{variable}={url}"))
        .collect()
}

/// What a kernel's network lets it reach. Each engine realizes it its own way: Docker with no
/// network at all (the server speaks to the kernel over IPC) or its egress network, Swarm with
/// an overlay network of the kernel's own, internal or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NetworkPolicy {
    /// No route out: nothing but the server reaches the kernel.
    Internal,
    /// A route out, for installer jobs and sessions allowed egress.
    Egress,
}

impl NetworkPolicy {
    /// A kernel whose only way out is the egress proxy has no network of its own.
    pub(super) fn of(egress: KernelEgress) -> Self {
        match egress {
            KernelEgress::None | KernelEgress::Proxy => Self::Internal,
            KernelEgress::Full => Self::Egress,
        }
    }
}

/// How the server reaches a kernel, so how the kernel listens.
#[derive(Debug, Clone, Copy)]
pub(super) enum Listen<'a> {
    /// On TCP, on every interface of its container, on the fixed in-container ports.
    Tcp,
    /// On socket files in its run directory, this host directory mounted at [`RUN_DIR`].
    Ipc { run_dir: &'a Path },
}

/// What an engine's configuration gives every sandbox it makes.
pub(super) struct SandboxConfig<'a> {
    pub instance: &'a str,
    pub recipe: &'a str,
    /// `uid:gid` the container runs as.
    pub user: &'a str,
    /// Host CA bundle mounted read-only and named by the TLS variables.
    pub ca_bundle: Option<&'a Path>,
    /// Whether the engine can set no-new-privileges (Swarm services from API 1.44).
    pub no_new_privileges: bool,
    /// The egress proxy's URL for a kernel reached over TCP (Swarm: the server's alias on the
    /// kernel's overlay); over IPC the kernel's relay is its proxy.
    pub egress_proxy: Option<&'a str>,
    /// The OCI runtime containers run under (`--oci-runtime`); `None` is the engine's default.
    pub oci_runtime: Option<&'a str>,
    /// The OCI runtime is gVisor: its own threads count in the container's pids cgroup, and
    /// it enforces `RLIMIT_NPROC` inside the sandbox.
    pub gvisor: bool,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// The setting's name when the engine drops it.
    pub setting: &'static str,
    pub source: String,
    pub target: &'static str,
    pub read_only: bool,
}

/// Everything one container gets. Built by [`Sandbox::kernel`] or [`Sandbox::job`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sandbox {
    /// Memory (and no swap beyond it), CPUs, pids, open files, the size of `/tmp`.
    pub limits: Limits,
    /// The processes' own limit (`ulimit nproc`), where the OCI runtime keeps it apart from
    /// the host's (gVisor); `None` under runc, where it would count the uid host-wide.
    pub nproc: Option<i64>,
    pub user: String,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    /// Off only where the engine cannot set it (Swarm before API 1.44); the image has no
    /// setuid or setgid files either way.
    pub no_new_privileges: bool,
    pub mounts: Vec<Mount>,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// The network the container joins, by the engine's name for it: how the engine realizes
    /// the container's [`NetworkPolicy`].
    pub network: String,
    /// The OCI runtime (gVisor's `runsc`, say); `None` leaves the engine's default.
    pub oci_runtime: Option<String>,
}

impl Sandbox {
    fn new(
        config: &SandboxConfig<'_>,
        limits: &Limits,
        workspace: &Path,
        labels: HashMap<String, String>,
        network: &str,
    ) -> Self {
        let mut mounts = vec![Mount {
            setting: "mount /workspace",
            source: workspace.display().to_string(),
            target: WORKSPACE,
            read_only: false,
        }];
        if let Some(bundle) = config.ca_bundle {
            mounts.push(Mount {
                setting: "mount CA bundle",
                source: bundle.display().to_string(),
                target: CA_BUNDLE_IN_CONTAINER,
                read_only: true,
            });
        }
        // Under gVisor the session's process limit is the sandbox's own RLIMIT_NPROC (a fork
        // bomb gets EAGAIN, as under runc), and the cgroup also holds gVisor's threads.
        let mut limits = limits.clone();
        let nproc = config.gvisor.then_some(limits.pids);
        if config.gvisor {
            limits.pids = GVISOR_PIDS_BASE + GVISOR_PIDS_PER_TASK * limits.pids;
        }
        Self {
            limits,
            nproc,
            user: config.user.to_string(),
            read_only_root: true,
            cap_drop: vec!["ALL".to_string()],
            no_new_privileges: config.no_new_privileges,
            mounts,
            command: Vec::new(),
            env: Vec::new(),
            labels,
            network: network.to_string(),
            oci_runtime: config.oci_runtime.map(str::to_string),
        }
    }

    /// The variables that point TLS clients at the mounted CA bundle, when there is one.
    fn ca_bundle_env(&self) -> impl Iterator<Item = String> + use<> {
        let mounted = self
            .mounts
            .iter()
            .any(|m| m.target == CA_BUNDLE_IN_CONTAINER);
        [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "CURL_CA_BUNDLE",
        ]
        .into_iter()
        .filter(move |_| mounted)
        .map(|var| format!("{var}={CA_BUNDLE_IN_CONTAINER}"))
    }

    /// A kernel's sandbox, on `network`, listening as `listen` says.
    pub(super) fn kernel(
        spec: &KernelSpec,
        config: &SandboxConfig<'_>,
        network: &str,
        listen: Listen<'_>,
    ) -> Self {
        let labels = managed_labels(
            config.instance,
            config.recipe,
            &spec.session_id,
            &spec.owner,
            "kernel",
        );
        let mut sandbox = Self::new(config, &spec.limits, &spec.workspace, labels, network);
        sandbox.command = match &spec.launch {
            KernelLaunch::IPyKernel { .. } => ["/bin/sh", "-c", KERNEL_LAUNCH]
                .map(str::to_string)
                .to_vec(),
            KernelLaunch::Argv(argv) => ["/bin/sh", "-c", ARGV_LAUNCH, "kernelbox-kernel"]
                .into_iter()
                .map(str::to_string)
                .chain(
                    argv.iter()
                        .map(|arg| arg.replace(CONNECTION_FILE_ARG, CONNECTION_FILE)),
                )
                .collect(),
        };
        let connection_file = match listen {
            Listen::Tcp => spec.connection.tcp_kernel_file(),
            Listen::Ipc { run_dir } => {
                sandbox.mounts.push(Mount {
                    setting: "mount /run/kernel",
                    source: run_dir.display().to_string(),
                    target: RUN_DIR,
                    read_only: false,
                });
                spec.connection
                    .ipc_kernel_file(&format!("{RUN_DIR}/{IPC_SOCKET_NAME}"))
            }
        };
        sandbox.env = vec![
            format!("KERNELBOX_CONNECTION={connection_file}"),
            "HOME=/tmp".to_string(),
        ];
        match &spec.launch {
            KernelLaunch::IPyKernel { kernel_class } => {
                sandbox.env.extend([
                    format!("KERNELBOX_BOOTSTRAP={KERNEL_BOOTSTRAP}"),
                    "MPLCONFIGDIR=/tmp/.matplotlib".to_string(),
                ]);
                if let Some(class) = kernel_class {
                    sandbox.env.push(format!("KERNELBOX_KERNEL_CLASS={class}"));
                }
            }
            KernelLaunch::Argv(_) => {}
        }
        // Over IPC through the relay to the run directory; over TCP straight to the proxy the
        // engine names (none named: no way out at all).
        if spec.egress == KernelEgress::Proxy {
            match (listen, config.egress_proxy) {
                (Listen::Ipc { .. }, _) => {
                    sandbox.env.extend(relay_env(RUN_DIR));
                    if let KernelLaunch::Argv(_) = spec.launch {
                        sandbox.env.push(format!("KERNELBOX_RELAY={RELAY}"));
                    }
                }
                (Listen::Tcp, Some(proxy)) => sandbox.env.extend(proxy_env(proxy)),
                (Listen::Tcp, None) => {}
            }
        }
        sandbox.env.extend(spec.env.iter().cloned());
        sandbox.env.extend(sandbox.ca_bundle_env());
        sandbox
    }

    /// A job's sandbox (`role` on its labels), on `network`: its argv killed at its timeout.
    pub(super) fn job(
        job: &JobSpec,
        config: &SandboxConfig<'_>,
        role: &str,
        network: &str,
    ) -> Self {
        let labels = managed_labels(
            config.instance,
            config.recipe,
            &job.session_id,
            &job.owner,
            role,
        );
        let mut sandbox = Self::new(config, &job.limits, &job.workspace, labels, network);
        sandbox.command = killed_after(job.timeout, &job.argv);
        sandbox.env = vec!["HOME=/tmp".to_string()];
        if let JobEgress::Proxy { socket_dir } = &job.egress {
            sandbox.mounts.push(Mount {
                setting: "mount /run/egress",
                source: socket_dir.display().to_string(),
                target: JOB_EGRESS_DIR,
                read_only: true,
            });
            let argv = std::mem::take(&mut sandbox.command);
            sandbox.command = ["python3", "-c", JOB_LAUNCH].map(str::to_string).to_vec();
            sandbox.command.extend(argv);
            sandbox.env.extend(relay_env(JOB_EGRESS_DIR));
        }
        sandbox.env.extend(job.env.iter().cloned());
        sandbox.env.extend(sandbox.ca_bundle_env());
        sandbox
    }

    /// Every setting, compared with what the engine reported.
    fn checks(&self, reported: &Reported) -> Vec<Check> {
        let limits = &self.limits;
        let mut checks = vec![
            Check::equal(
                "memory",
                &limits.memory_bytes,
                reported.memory_bytes.as_ref(),
            ),
            Check::equal("cpus", &limits.nano_cpus, reported.nano_cpus.as_ref()),
            Check::equal("pids-limit", &limits.pids, reported.pids.as_ref()),
            Check::equal(
                "ulimit nofile",
                &(limits.open_files, limits.open_files),
                reported.open_files.as_ref(),
            ),
            Check::equal("tmpfs /tmp", &limits.tmp_bytes, reported.tmp_bytes.as_ref()),
            Check::equal("user", &self.user, reported.user.as_ref()),
            Check::on(
                "read-only root",
                self.read_only_root,
                reported.read_only_root,
            ),
            Check {
                setting: "cap-drop",
                held: reported
                    .cap_drop
                    .as_ref()
                    .is_some_and(|dropped| self.cap_drop.iter().all(|c| dropped.contains(c))),
            },
            Check::on(
                "no-new-privileges",
                self.no_new_privileges,
                reported.no_new_privileges,
            ),
        ];
        checks.extend(self.mounts.iter().map(|mount| Check {
            setting: mount.setting,
            held: reported.mounts.iter().any(|bind| {
                bind.target == mount.target
                    && bind.source == mount.source
                    && bind.read_only == mount.read_only
            }),
        }));
        checks.push(Check {
            setting: "labels",
            held: reported.labels.as_ref().is_some_and(|labels| {
                self.labels
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
            }),
        });
        checks.push(Check::equal(
            "network",
            &self.network,
            reported.network.as_ref(),
        ));
        if let Some(nproc) = self.nproc {
            checks.push(Check::equal(
                "ulimit nproc",
                &(nproc, nproc),
                reported.nproc.as_ref(),
            ));
        }
        if let Some(runtime) = &self.oci_runtime {
            checks.push(Check::equal(
                "oci runtime",
                runtime,
                reported.oci_runtime.as_ref(),
            ));
        }
        checks.extend(reported.engine_specific.iter().cloned());
        checks
    }

    /// The names of the settings the engine dropped or changed, in a stable order.
    pub(super) fn dropped(&self, reported: &Reported) -> Vec<&'static str> {
        self.checks(reported)
            .into_iter()
            .filter(|check| !check.held)
            .map(|check| check.setting)
            .collect()
    }

    /// Refuses a container whose engine dropped any part of its sandbox (an engine older than
    /// the negotiated API version drops fields it does not know without a word).
    pub(super) fn verify(
        &self,
        reported: &Reported,
        session_id: &str,
        api_version: &str,
    ) -> Result<(), RuntimeError> {
        match self.dropped(reported).first() {
            Some(setting) => Err(RuntimeError::SandboxSettingDropped {
                setting,
                session_id: session_id.to_string(),
                api_version: api_version.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// `argv` under coreutils `timeout`, killed when it runs longer than `timeout`: the engine
/// itself cannot bound a job or an exec'd process.
pub(super) fn killed_after(timeout: Duration, argv: &[String]) -> Vec<String> {
    let seconds = timeout.as_secs_f64().max(0.1);
    let mut command = vec![
        "timeout".to_string(),
        "--signal=KILL".to_string(),
        format!("{seconds:.1}"),
    ];
    command.extend(argv.iter().cloned());
    command
}

/// A bind mount as an engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bind {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// What an engine reports back about a container it created, in the sandbox's terms: `None`
/// (or missing) where it reports nothing.
#[derive(Debug, Clone, Default)]
pub(super) struct Reported {
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
    /// The open-files limit, soft and hard.
    pub open_files: Option<(i64, i64)>,
    /// The processes limit, soft and hard.
    pub nproc: Option<(i64, i64)>,
    pub tmp_bytes: Option<i64>,
    pub user: Option<String>,
    pub read_only_root: Option<bool>,
    pub cap_drop: Option<Vec<String>>,
    pub no_new_privileges: Option<bool>,
    pub mounts: Vec<Bind>,
    pub labels: Option<HashMap<String, String>>,
    pub network: Option<String>,
    pub oci_runtime: Option<String>,
    /// Settings only this engine has, each already compared with what it was asked for.
    pub engine_specific: Vec<Check>,
}

/// One setting by its stable name, and whether the engine kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Check {
    pub setting: &'static str,
    pub held: bool,
}

impl Check {
    /// Held when the engine reports exactly what was asked.
    pub(super) fn equal<T: PartialEq + ?Sized>(
        setting: &'static str,
        asked: &T,
        reported: Option<&T>,
    ) -> Self {
        Self {
            setting,
            held: reported == Some(asked),
        }
    }

    /// Held when a switch that was asked on is reported on; one asked off holds either way.
    fn on(setting: &'static str, asked: bool, reported: Option<bool>) -> Self {
        Self {
            setting,
            held: !asked || reported == Some(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ca_bundle: Option<&Path>) -> SandboxConfig<'_> {
        SandboxConfig {
            instance: "inst",
            recipe: "recipe",
            user: "1000:1000",
            ca_bundle,
            no_new_privileges: true,
            egress_proxy: None,
            oci_runtime: None,
            gvisor: false,
        }
    }

    fn kernel(config: &SandboxConfig<'_>) -> Sandbox {
        let spec = KernelSpec {
            session_id: "s1".to_string(),
            owner: "acme".to_string(),
            workspace: "/data/workspaces/s1".into(),
            connection: crate::kernel::KernelConnection::generate(),
            env: vec!["A=1".to_string()],
            egress: KernelEgress::None,
            limits: Limits::default(),
            image: None,
            launch: KernelLaunch::IPyKernel { kernel_class: None },
        };
        Sandbox::kernel(
            &spec,
            config,
            "net-1",
            Listen::Ipc {
                run_dir: Path::new("/data/run/r1"),
            },
        )
    }

    /// Everything `sandbox` asked for, reported back as it was asked.
    fn faithful(sandbox: &Sandbox) -> Reported {
        let limits = &sandbox.limits;
        Reported {
            memory_bytes: Some(limits.memory_bytes),
            nano_cpus: Some(limits.nano_cpus),
            pids: Some(limits.pids),
            open_files: Some((limits.open_files, limits.open_files)),
            nproc: sandbox.nproc.map(|n| (n, n)),
            tmp_bytes: Some(limits.tmp_bytes),
            user: Some(sandbox.user.clone()),
            read_only_root: Some(true),
            cap_drop: Some(vec!["ALL".to_string()]),
            no_new_privileges: Some(true),
            mounts: sandbox
                .mounts
                .iter()
                .map(|m| Bind {
                    source: m.source.clone(),
                    target: m.target.to_string(),
                    read_only: m.read_only,
                })
                .collect(),
            labels: Some(sandbox.labels.clone()),
            network: Some(sandbox.network.clone()),
            oci_runtime: sandbox.oci_runtime.clone(),
            engine_specific: vec![Check {
                setting: "restart condition none",
                held: true,
            }],
        }
    }

    #[test]
    fn a_faithful_read_back_passes() {
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let sandbox = kernel(&config(Some(bundle)));
        assert_eq!(sandbox.dropped(&faithful(&sandbox)), Vec::<&str>::new());
        assert!(sandbox.verify(&faithful(&sandbox), "s1", "1.41").is_ok());
    }

    #[test]
    fn every_setting_missing_or_different_is_named() {
        type Change = fn(&mut Reported);
        let cases: [(&str, Change); 26] = [
            ("memory", |r| r.memory_bytes = None),
            ("memory", |r| r.memory_bytes = Some(1)),
            ("cpus", |r| r.nano_cpus = None),
            ("pids-limit", |r| r.pids = Some(0)),
            ("ulimit nofile", |r| r.open_files = None),
            ("ulimit nofile", |r| {
                r.open_files = r.open_files.map(|(_, hard)| (64, hard))
            }),
            ("tmpfs /tmp", |r| r.tmp_bytes = None),
            ("user", |r| r.user = Some(String::new())),
            ("user", |r| r.user = None),
            ("read-only root", |r| r.read_only_root = Some(false)),
            ("read-only root", |r| r.read_only_root = None),
            ("cap-drop", |r| r.cap_drop = None),
            ("cap-drop", |r| {
                r.cap_drop = Some(vec!["NET_RAW".to_string()])
            }),
            ("no-new-privileges", |r| r.no_new_privileges = None),
            ("mount /workspace", |r| {
                r.mounts.retain(|m| m.target != WORKSPACE)
            }),
            ("mount /workspace", |r| r.mounts[0].read_only = true),
            ("mount CA bundle", |r| {
                r.mounts.retain(|m| m.target != CA_BUNDLE_IN_CONTAINER)
            }),
            ("mount CA bundle", |r| r.mounts[1].read_only = false),
            ("mount /run/kernel", |r| {
                r.mounts.retain(|m| m.target != RUN_DIR)
            }),
            ("mount /run/kernel", |r| {
                r.mounts[2].source = "/data/run/other".to_string()
            }),
            ("labels", |r| r.labels = None),
            ("labels", |r| {
                if let Some(labels) = r.labels.as_mut() {
                    labels.remove(crate::runtime::labels::INSTANCE);
                }
            }),
            ("network", |r| r.network = None),
            ("network", |r| r.network = Some("bridge".to_string())),
            ("restart condition none", |r| {
                r.engine_specific[0].held = false
            }),
            ("no-new-privileges", |r| r.no_new_privileges = Some(false)),
        ];
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let sandbox = kernel(&config(Some(bundle)));
        for (setting, change) in cases {
            let mut reported = faithful(&sandbox);
            change(&mut reported);
            assert_eq!(sandbox.dropped(&reported), vec![setting]);
            match sandbox.verify(&reported, "s1", "1.41") {
                Err(RuntimeError::SandboxSettingDropped {
                    setting: named,
                    session_id,
                    api_version,
                }) => {
                    assert_eq!(named, setting);
                    assert_eq!(session_id, "s1");
                    assert_eq!(api_version, "1.41");
                }
                other => panic!("{setting}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_oci_runtime_asked_for_is_checked_and_none_leaves_the_default() {
        let under_runsc = SandboxConfig {
            oci_runtime: Some("runsc"),
            ..config(None)
        };
        let sandbox = kernel(&under_runsc);
        assert_eq!(sandbox.oci_runtime.as_deref(), Some("runsc"));
        assert_eq!(sandbox.nproc, None);
        let gvisor = kernel(&SandboxConfig {
            gvisor: true,
            ..config(None)
        });
        assert_eq!(
            gvisor.limits.pids,
            GVISOR_PIDS_BASE + GVISOR_PIDS_PER_TASK * Limits::default().pids
        );
        assert_eq!(gvisor.nproc, Some(Limits::default().pids));
        assert_eq!(gvisor.dropped(&faithful(&gvisor)), Vec::<&str>::new());
        let mut no_nproc = faithful(&gvisor);
        no_nproc.nproc = None;
        assert_eq!(gvisor.dropped(&no_nproc), vec!["ulimit nproc"]);
        assert_eq!(sandbox.dropped(&faithful(&sandbox)), Vec::<&str>::new());
        for reported in [None, Some("runc".to_string())] {
            let mut changed = faithful(&sandbox);
            changed.oci_runtime = reported;
            assert_eq!(sandbox.dropped(&changed), vec!["oci runtime"]);
        }
        let default = kernel(&config(None));
        let mut reported = faithful(&default);
        reported.oci_runtime = Some("runc".to_string());
        assert_eq!(default.dropped(&reported), Vec::<&str>::new());
    }

    #[test]
    fn every_dropped_setting_is_listed_in_a_stable_order() {
        let sandbox = kernel(&config(None));
        let nothing = Reported::default();
        assert_eq!(
            sandbox.dropped(&nothing),
            [
                "memory",
                "cpus",
                "pids-limit",
                "ulimit nofile",
                "tmpfs /tmp",
                "user",
                "read-only root",
                "cap-drop",
                "no-new-privileges",
                "mount /workspace",
                "mount /run/kernel",
                "labels",
                "network",
            ]
        );
    }

    #[test]
    fn no_new_privileges_is_required_only_where_the_engine_can_set_it() {
        let unable = SandboxConfig {
            no_new_privileges: false,
            ..config(None)
        };
        let sandbox = kernel(&unable);
        let mut reported = faithful(&sandbox);
        reported.no_new_privileges = None;
        assert_eq!(sandbox.dropped(&reported), Vec::<&str>::new());
    }

    #[test]
    fn the_ca_bundle_is_mounted_and_named_only_when_configured() {
        let without = kernel(&config(None));
        assert!(
            without
                .mounts
                .iter()
                .all(|m| m.target != CA_BUNDLE_IN_CONTAINER)
        );
        assert!(!without.env.iter().any(|e| e.starts_with("SSL_CERT_FILE=")));
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let with = kernel(&config(Some(bundle)));
        assert!(
            with.env
                .contains(&format!("SSL_CERT_FILE={CA_BUNDLE_IN_CONTAINER}"))
        );
        assert!(
            with.env.iter().position(|e| e == "A=1")
                < with
                    .env
                    .iter()
                    .position(|e| e.starts_with("SSL_CERT_FILE="))
        );
    }

    #[test]
    fn a_kernel_over_ipc_binds_in_its_mounted_run_directory_and_one_over_tcp_on_its_ports() {
        let ipc = kernel(&config(None));
        let run_dir = ipc.mounts.iter().find(|m| m.target == RUN_DIR).unwrap();
        assert_eq!(run_dir.source, "/data/run/r1");
        assert!(!run_dir.read_only);
        let file = |sandbox: &Sandbox| -> serde_json::Value {
            let value = sandbox
                .env
                .iter()
                .find_map(|e| e.strip_prefix("KERNELBOX_CONNECTION="))
                .unwrap();
            serde_json::from_str(value).unwrap()
        };
        assert_eq!(file(&ipc)["transport"], "ipc");
        assert_eq!(file(&ipc)["ip"], "/run/kernel/k");
        let spec = KernelSpec {
            session_id: "s1".to_string(),
            owner: "acme".to_string(),
            workspace: "/w".into(),
            connection: crate::kernel::KernelConnection::generate(),
            env: Vec::new(),
            egress: KernelEgress::None,
            limits: Limits::default(),
            image: None,
            launch: KernelLaunch::IPyKernel { kernel_class: None },
        };
        let tcp = Sandbox::kernel(&spec, &config(None), "overlay", Listen::Tcp);
        assert!(tcp.mounts.iter().all(|m| m.target != RUN_DIR));
        assert_eq!(file(&tcp)["transport"], "tcp");
        assert_eq!(file(&tcp)["shell_port"], 5555);
    }

    #[test]
    fn only_a_proxied_kernel_over_ipc_gets_the_relay_and_proxy_variables() {
        let spec = |egress| KernelSpec {
            session_id: "s1".to_string(),
            owner: "acme".to_string(),
            workspace: "/w".into(),
            connection: crate::kernel::KernelConnection::generate(),
            env: Vec::new(),
            egress,
            limits: Limits::default(),
            image: None,
            launch: KernelLaunch::IPyKernel { kernel_class: None },
        };
        let ipc = Listen::Ipc {
            run_dir: Path::new("/data/run/r1"),
        };
        let has = |sandbox: &Sandbox, name: &str| {
            sandbox
                .env
                .iter()
                .any(|e| e.starts_with(&format!("{name}=")))
        };
        let proxied = Sandbox::kernel(&spec(KernelEgress::Proxy), &config(None), "none", ipc);
        assert!(
            proxied
                .env
                .contains(&"KERNELBOX_EGRESS_RELAY=3128 /run/kernel/egress.sock".to_string())
        );
        for variable in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert!(
                proxied
                    .env
                    .contains(&format!("{variable}=http://127.0.0.1:3128")),
                "{variable}"
            );
        }
        assert_eq!(
            NetworkPolicy::of(KernelEgress::Proxy),
            NetworkPolicy::Internal
        );
        let named = SandboxConfig {
            egress_proxy: Some("http://kernelbox-egress:3128"),
            ..config(None)
        };
        let over_tcp = Sandbox::kernel(&spec(KernelEgress::Proxy), &named, "overlay", Listen::Tcp);
        assert!(!has(&over_tcp, "KERNELBOX_EGRESS_RELAY"));
        assert!(
            over_tcp
                .env
                .contains(&"https_proxy=http://kernelbox-egress:3128".to_string())
        );
        for (egress, listen) in [
            (KernelEgress::None, ipc),
            (KernelEgress::Full, ipc),
            (KernelEgress::Proxy, Listen::Tcp),
        ] {
            let sandbox = Sandbox::kernel(&spec(egress), &config(None), "net", listen);
            assert!(!has(&sandbox, "KERNELBOX_EGRESS_RELAY"), "{egress:?}");
            assert!(!has(&sandbox, "HTTPS_PROXY"), "{egress:?}");
        }
    }

    #[test]
    fn a_job_runs_its_argv_under_a_kill_timeout_with_its_role_label() {
        let job = JobSpec {
            image: None,
            session_id: "s1".to_string(),
            owner: "acme".to_string(),
            workspace: "/w".into(),
            argv: vec!["pip".to_string(), "install".to_string()],
            env: Vec::new(),
            limits: Limits::default(),
            timeout: Duration::from_secs(5),
            max_output_bytes: 10,
            egress: JobEgress::Network,
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let sandbox = Sandbox::job(&job, &config(None), "installer", "egress");
        assert_eq!(
            sandbox.command,
            ["timeout", "--signal=KILL", "5.0", "pip", "install"]
        );
        assert_eq!(
            sandbox.labels[crate::runtime::labels::ROLE].as_str(),
            "installer"
        );
        assert_eq!(sandbox.network, "egress");
    }
}
