//! A session's kernel lifecycle: starting one (container, connect, ready, all under one
//! deadline), adopting one an earlier server left running, handing a warm-pool kernel over,
//! the heartbeat watcher that declares a kernel dead with its cause, restarting, detaching and
//! closing. It reaches containers only through the `Runtime` trait and kernels only through
//! `KernelClient`; running cells is `run`'s business.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{HELPER_TIMEOUT, RestartReport, Session, SessionError};
use crate::egress::ProxyScope;
use crate::kernel::{KernelClient, KernelConnection, KernelError, ReaderTasks};
use crate::metrics::Metrics;
use crate::records::KernelRecord;
use crate::runtime::{
    ContainerExit, KernelContainer, KernelEgress, KernelEndpoint, KernelSpec, SharedRuntime,
};
use crate::snippets;

/// How long a kernel left by an earlier run may take to answer before it is replaced.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running kernel: its container, its client and whether it is still alive.
pub(super) struct Kernel {
    pub(super) client: KernelClient,
    pub(super) container_id: String,
    /// How to reach it again, for the session record.
    record: KernelRecord,
    container: tokio::sync::Mutex<Option<KernelContainer>>,
    pub(super) started_at: Instant,
    pub(super) death: CancellationToken,
    cause: OnceLock<String>,
    /// Stops the kernel's egress proxy, if it has one (the server's shutdown does too).
    egress: CancellationToken,
}

impl Kernel {
    fn declare_dead(&self, cause: impl Into<String>) {
        let _ = self.cause.set(cause.into());
        self.death.cancel();
        self.egress.cancel();
    }

    fn death_cause(&self) -> String {
        self.cause
            .get()
            .cloned()
            .unwrap_or_else(|| "the kernel stopped".to_string())
    }
}

/// A ready kernel handed from a warm-pool session to a new one.
pub struct WarmKernel {
    kernel: Arc<Kernel>,
}

impl WarmKernel {
    /// Removes a warm kernel nobody will use.
    pub async fn discard(self, runtime: &SharedRuntime) {
        self.kernel.declare_dead("discarded from the warm pool");
        if let Some(container) = self.kernel.container.lock().await.take()
            && let Err(error) = runtime.remove(container).await
        {
            tracing::warn!(%error, "could not remove a warm kernel");
        }
    }
}

impl Session {
    /// Where this session's kernel clients run their socket readers.
    fn readers(&self) -> ReaderTasks {
        ReaderTasks {
            tracker: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Starts the kernel if none runs (or the last one died) and returns it.
    pub async fn ensure_kernel(&self) -> Result<(), SessionError> {
        self.current_kernel().await.map(|_| ())
    }

    pub(super) async fn current_kernel(&self) -> Result<Arc<Kernel>, SessionError> {
        if self.closed.is_cancelled() {
            return Err(SessionError::Closed(self.id.to_string()));
        }
        let mut slot = self.kernel.lock().await;
        if let Some(kernel) = slot.as_ref()
            && !kernel.death.is_cancelled()
        {
            return Ok(kernel.clone());
        }
        if let Some(dead) = slot.take() {
            self.remove_container(&dead).await;
        }
        let kernel = self.start_kernel().await?;
        *slot = Some(kernel.clone());
        Ok(kernel)
    }

    async fn start_kernel(&self) -> Result<Arc<Kernel>, SessionError> {
        // Held until the kernel answers (or fails): the expensive part of a start is the
        // kernel's own import, CPU-bound.
        let _turn = self
            .starts
            .acquire()
            .await
            .map_err(|_| SessionError::Closed(self.id.to_string()))?;
        let started = Instant::now();
        let connection = KernelConnection::generate();
        let spec = KernelSpec {
            session_id: self.id.to_string(),
            owner: self.owner.clone(),
            workspace: self.workspace.root().to_path_buf(),
            connection: connection.clone(),
            env: vec![format!("PYTHONPATH={}", snippets::PACKAGES_DIR)],
            egress: self.kernel_egress(),
            limits: self.limits.clone(),
            image: self.kind.image.clone(),
            launch: self.kind.launch(),
        };
        let container = self.runtime.start_kernel(&spec).await?;
        let egress = match self.serve_egress(&container).await {
            Ok(egress) => egress,
            Err(detail) => {
                let _ = self.runtime.remove(container).await;
                return Err(SessionError::KernelStart {
                    session_id: self.id.to_string(),
                    detail,
                });
            }
        };
        let container_started = started.elapsed();
        self.metrics
            .container_start_seconds
            .observe(container_started);
        let ready = connect(
            &connection,
            &container.endpoint,
            self.settings.ready_timeout,
            self.readers(),
        );
        let outcome = tokio::select! {
            ready = ready => ready.map_err(|e| e.to_string()),
            exit = wait_for_exit(&self.runtime, &container.id) => Err(exit.to_string()),
        };
        let outcome = match outcome {
            Ok(client) => match self.runtime.kernel_ready(&container).await {
                Ok(()) => Ok(client),
                Err(error) => Err(error.to_string()),
            },
            Err(detail) => Err(detail),
        };
        let endpoint = container.endpoint.clone();
        let client = match outcome {
            Ok(client) => client,
            Err(detail) => {
                egress.cancel();
                let logs = self.runtime.logs_tail(&container.id).await;
                let _ = self.runtime.remove(container).await;
                return Err(SessionError::KernelStart {
                    session_id: self.id.to_string(),
                    detail: format!("{detail}; last output of the container: {}", logs.trim()),
                });
            }
        };
        tracing::info!(
            session_id = %self.id,
            container = %container.id,
            container_ms = container_started.as_millis() as u64,
            ready_ms = started.elapsed().as_millis() as u64,
            "kernel ready"
        );
        let record = KernelRecord {
            container_id: container.id.clone(),
            endpoint,
            key: connection.key().to_string(),
        };
        let kernel = Arc::new(Kernel {
            client,
            container_id: container.id.clone(),
            record,
            container: tokio::sync::Mutex::new(Some(container)),
            started_at: Instant::now(),
            death: CancellationToken::new(),
            cause: OnceLock::new(),
            egress,
        });
        self.stats.lock().expect("stats lock").kernel_starts += 1;
        self.metrics.kernel_ready_seconds.observe(started.elapsed());
        self.metrics
            .kernel_starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.watch(&kernel);
        self.save_record(Some(kernel.record.clone()));
        Ok(kernel)
    }

    /// Gives up this (warm-pool) session's ready kernel for another session to install.
    pub async fn surrender(&self) -> Option<WarmKernel> {
        self.closed.cancel();
        let kernel = self.kernel.lock().await.take()?;
        (!kernel.death.is_cancelled()).then_some(WarmKernel { kernel })
    }

    /// Makes a warm kernel this session's kernel.
    pub async fn install_kernel(&self, warm: WarmKernel) {
        let kernel = warm.kernel;
        self.watch(&kernel);
        self.save_record(Some(kernel.record.clone()));
        *self.kernel.lock().await = Some(kernel);
    }

    fn watch(&self, kernel: &Arc<Kernel>) {
        self.tasks.spawn(watch_kernel(
            kernel.clone(),
            self.runtime.clone(),
            self.metrics.clone(),
            self.settings.heartbeat_interval,
            self.closed.clone(),
        ));
    }

    /// Takes over the kernel an earlier run of the server left running, if it still answers
    /// (its variables are then intact). On failure the container is removed and the next call
    /// starts a fresh kernel.
    pub async fn adopt(&self, record: &KernelRecord) -> Result<(), String> {
        match self.runtime.exit_status(&record.container_id).await {
            Ok(ContainerExit::Running) => {}
            Ok(exit) => {
                let _ = self.runtime.remove_by_id(&record.container_id).await;
                return Err(format!("its container stopped: {exit}"));
            }
            Err(error) => return Err(error.to_string()),
        }
        let adopted = self
            .runtime
            .adopt(record.container_id.clone(), record.endpoint.clone())
            .await;
        let container = match adopted {
            Ok(container) => container,
            Err(error) => {
                let _ = self.runtime.remove_by_id(&record.container_id).await;
                return Err(error.to_string());
            }
        };
        let egress = match self.serve_egress(&container).await {
            Ok(egress) => egress,
            Err(detail) => {
                let _ = self.runtime.remove(container).await;
                return Err(detail);
            }
        };
        let connection = KernelConnection::from_key(record.key.clone());
        let ready = connect(&connection, &record.endpoint, ADOPT_TIMEOUT, self.readers());
        let failure = match tokio::time::timeout(ADOPT_TIMEOUT, ready).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("it did not answer within {ADOPT_TIMEOUT:?}")),
        };
        let client = match failure {
            Ok(client) => client,
            Err(detail) => {
                egress.cancel();
                let _ = self.runtime.remove(container).await;
                return Err(detail);
            }
        };
        let kernel = Arc::new(Kernel {
            client,
            container_id: record.container_id.clone(),
            record: record.clone(),
            container: tokio::sync::Mutex::new(Some(container)),
            started_at: Instant::now(),
            death: CancellationToken::new(),
            cause: OnceLock::new(),
            egress,
        });
        self.watch(&kernel);
        *self.kernel.lock().await = Some(kernel);
        Ok(())
    }

    /// Starts the egress proxy of a kernel reached at `endpoint` when this session's kernels
    /// go out through one; the token stops it (the server's shutdown stops it too).
    async fn serve_egress(&self, container: &KernelContainer) -> Result<CancellationToken, String> {
        let stop = self.shutdown.child_token();
        if self.kernel_egress() != KernelEgress::Proxy {
            return Ok(stop);
        }
        let at = self
            .runtime
            .egress_listener(container)
            .await
            .map_err(|error| error.to_string())?;
        let scope = ProxyScope {
            session_id: self.id.to_string(),
            tenant: self.owner.clone(),
            allowlist: self.egress_allow.clone(),
            names_resolve_anywhere: false,
        };
        crate::egress::serve(&at, scope, self.metrics.clone(), &self.tasks, stop.clone())
            .await
            .map_err(|error| error.to_string())?;
        Ok(stop)
    }

    /// Stops watching the kernel and lets go of it without removing it: the next start of
    /// the server adopts it from the record.
    pub async fn detach(&self) {
        self.closed.cancel();
        if let Some(kernel) = self.kernel.lock().await.take()
            && let Some(container) = kernel.container.lock().await.take()
        {
            container.leave_running();
        }
    }

    async fn remove_container(&self, kernel: &Kernel) {
        kernel.egress.cancel();
        let container = kernel.container.lock().await.take();
        if let Some(container) = container
            && let Err(error) = self.runtime.remove(container).await
        {
            tracing::warn!(session_id = %self.id, %error, "could not remove a kernel container");
        }
    }

    /// Stops the current kernel (any running cell reports `kernel_died` with `cause`) and
    /// removes its container.
    pub(super) async fn retire_kernel(&self, cause: &str) {
        let kernel = self.kernel.lock().await.take();
        if let Some(kernel) = kernel {
            kernel.declare_dead(cause);
            self.remove_container(&kernel).await;
            self.save_record(None);
        }
    }

    /// Replaces the kernel with a fresh one; variables are lost, the workspace stays.
    pub async fn restart(&self, preserve_state: bool) -> Result<RestartReport, SessionError> {
        let mut report = RestartReport::default();
        if preserve_state {
            let saved = self
                .run_helper(&snippets::save_state(), HELPER_TIMEOUT)
                .await?;
            match saved.parse::<snippets::SavedState>() {
                Ok(state) => {
                    report.preserved_vars = state.saved;
                    report.skipped_vars = state.skipped;
                }
                Err(error) => report.note = Some(format!("saving state failed: {error}")),
            }
        }
        self.retire_kernel("the kernel was restarted by request")
            .await;
        self.ensure_kernel().await?;
        if preserve_state && report.note.is_none() {
            let restored = self
                .run_helper(&snippets::restore_state(), HELPER_TIMEOUT)
                .await?;
            match restored.parse::<snippets::RestoredState>() {
                Ok(state) => report.restored_vars = state.restored,
                Err(error) => report.note = Some(format!("restoring state failed: {error}")),
            }
        }
        Ok(report)
    }

    /// Ends the session: the kernel container is removed; the workspace stays on disk.
    pub async fn close(&self) {
        self.closed.cancel();
        self.retire_kernel("the session was deleted").await;
        if let Err(error) = self.records.remove(&self.owner, self.id.as_str()) {
            tracing::warn!(session_id = %self.id, %error, "could not remove the session record");
        }
    }

    /// Finds out why a kernel died, and makes sure the next call starts a fresh one.
    pub(super) async fn explain_death(&self, kernel: &Kernel) -> String {
        if kernel.cause.get().is_none() {
            let (category, cause) = match self.runtime.exit_status(&kernel.container_id).await {
                Ok(ContainerExit::Running) => {
                    ("unresponsive", "the kernel stopped answering".to_string())
                }
                Ok(exit) => (exit.category(), exit.to_string()),
                Err(error) => ("unknown", error.to_string()),
            };
            self.metrics.kernel_deaths.increment(category);
            kernel.declare_dead(cause);
        }
        format!(
            "{}; a fresh kernel starts on the next call (variables are lost, the workspace is kept)",
            kernel.death_cause()
        )
    }
}

/// Connects to the kernel at `endpoint` with `connection`'s key, its socket readers on
/// `readers`, and waits until it is ready.
async fn connect(
    connection: &KernelConnection,
    endpoint: &KernelEndpoint,
    timeout: Duration,
    readers: ReaderTasks,
) -> Result<KernelClient, KernelError> {
    let info = match endpoint {
        KernelEndpoint::Ipc { run_dir } => {
            connection.ipc_info(&KernelEndpoint::ipc_prefix(run_dir))
        }
        KernelEndpoint::Tcp { host, ports } => connection.info(host, *ports),
    };
    let client = KernelClient::connect(info, timeout, &readers).await?;
    client.wait_ready(timeout).await?;
    Ok(client)
}

/// Resolves when the container stops running, with the reason.
async fn wait_for_exit(runtime: &SharedRuntime, container: &str) -> ContainerExit {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match runtime.exit_status(container).await {
            Ok(ContainerExit::Running) | Err(_) => {}
            Ok(exit) => return exit,
        }
    }
}

/// Watches one kernel until it dies or its session closes: a missed heartbeat makes it look
/// at the container; a stopped container, or heartbeats missed for long, is a death. "Long" is
/// at least the runtime's own grace for noticing a lost machine, so a lost node is reported as
/// such rather than as silence.
async fn watch_kernel(
    kernel: Arc<Kernel>,
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    interval: Duration,
    closed: CancellationToken,
) {
    const MISSES_BEFORE_DEAD: u32 = 5;
    let grace = runtime.unresponsive_grace();
    let mut misses = 0;
    let mut first_miss = Instant::now();
    loop {
        tokio::select! {
            _ = kernel.death.cancelled() => return,
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if kernel
            .client
            .heartbeat(interval.max(Duration::from_secs(1)))
            .await
        {
            misses = 0;
            continue;
        }
        if misses == 0 {
            first_miss = Instant::now();
        }
        misses += 1;
        let given_up = misses >= MISSES_BEFORE_DEAD && first_miss.elapsed() >= grace;
        match runtime.exit_status(&kernel.container_id).await {
            Ok(ContainerExit::Running) if !given_up => {}
            Ok(ContainerExit::Running) => {
                metrics.kernel_deaths.increment("heartbeat_lost");
                kernel.declare_dead(format!(
                    "the kernel missed {misses} heartbeats in a row and was given up"
                ));
                return;
            }
            Ok(exit) => {
                tracing::warn!(container = %kernel.container_id, cause = %exit, "kernel died");
                metrics.kernel_deaths.increment(exit.category());
                kernel.declare_dead(exit.to_string());
                return;
            }
            Err(error) => tracing::warn!(%error, "could not inspect a kernel container"),
        }
    }
}
