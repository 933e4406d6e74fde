//! A warm pool: a configured number of kernels of one template started ahead of demand,
//! each with its own fresh workspace under `<data-dir>/pool/<template>/`, under the
//! template's default caps and without egress. `create_session` takes one (its workspace becomes the session's) and a fill task
//! starts a replacement. A pooled kernel serves one session only and is never reused after it.
//! The pool owns no Docker calls of its own: it drives placeholder sessions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::egress::Allowlist;
use crate::runtime::Limits;
use crate::session::{Session, SessionId, SessionOptions, SessionServices, WarmKernel};
use crate::templates::Template;
use crate::workspace::Disk;

/// The owner label of pool kernels.
const POOL_OWNER: &str = "pool";

/// How long the fill task waits after a failed start before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(5);

/// A ready kernel and the workspace directory it has mounted.
pub struct Warm {
    pub kernel: WarmKernel,
    pub workspace: PathBuf,
}

pub struct Pool {
    target: usize,
    dir: PathBuf,
    disk: Disk,
    /// The template whose kernels the pool holds, and the caps they get.
    template: (String, Arc<Template>),
    limits: Limits,
    services: SessionServices,
    ready: Mutex<Vec<Arc<Session>>>,
    wake: Notify,
    cancel: CancellationToken,
}

impl Pool {
    /// A pool of `target` kernels of `template` with `limits`, in `dir`; its fill task runs
    /// on the services' tracker until `cancel`.
    pub fn start(
        target: usize,
        dir: PathBuf,
        disk: Disk,
        (template, limits): ((String, Arc<Template>), Limits),
        services: SessionServices,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            target,
            dir,
            disk,
            template,
            limits,
            services: services.clone(),
            ready: Mutex::new(Vec::new()),
            wake: Notify::new(),
            cancel,
        });
        if target > 0 {
            services.tasks.spawn(fill(pool.clone()));
        }
        pool
    }

    /// Kernels ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().expect("pool lock").len()
    }

    /// The caps its kernels have.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A ready kernel, if one waits; a replacement starts behind it.
    pub async fn take(&self) -> Option<Warm> {
        loop {
            let session = self.ready.lock().expect("pool lock").pop()?;
            self.wake.notify_one();
            let workspace = session.workspace().root().to_path_buf();
            if let Some(kernel) = session.surrender().await {
                return Some(Warm { kernel, workspace });
            }
            pool_remove(&self.disk, &workspace);
        }
    }

    /// Stops filling and removes every waiting kernel: pool kernels never outlive the server.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let sessions: Vec<_> = self.ready.lock().expect("pool lock").drain(..).collect();
        for session in sessions {
            session.close().await;
            self.remove(&session);
        }
    }

    /// Removes a pool session's workspace once its kernel is gone.
    fn remove(&self, session: &Session) {
        pool_remove(&self.disk, session.workspace().root());
    }

    /// Starts one pool kernel in a fresh workspace.
    async fn start_one(&self) -> Result<Arc<Session>, String> {
        let placeholder = Placeholder {
            owner: POOL_OWNER,
            dir: &self.dir,
            disk: &self.disk,
            template: &self.template,
            limits: &self.limits,
        };
        placeholder
            .start(&self.services, self.cancel.child_token())
            .await
    }
}

/// A session no client owns, started only to hold a kernel: a pool's, or a template's check.
pub struct Placeholder<'a> {
    pub owner: &'a str,
    /// Where its workspace is made.
    pub dir: &'a Path,
    pub disk: &'a Disk,
    pub template: &'a (String, Arc<Template>),
    pub limits: &'a Limits,
}

impl Placeholder<'_> {
    /// Starts the session's kernel, without egress, in a fresh workspace; on failure
    /// nothing is left.
    pub async fn start(
        &self,
        services: &SessionServices,
        cancel: CancellationToken,
    ) -> Result<Arc<Session>, String> {
        let id = SessionId::parse(&format!(
            "{}-{}",
            self.owner,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))?;
        let workspace = self
            .disk
            .prepare(self.dir.join(id.as_str()))
            .map_err(|e| e.to_string())?;
        let session = Arc::new(Session::new(
            id,
            self.owner.to_string(),
            SessionOptions {
                description: None,
                created_at: chrono::Utc::now(),
                limits: self.limits.clone(),
                egress: false,
                egress_allow: Allowlist::default(),
                persistent: false,
                template: self.template.clone(),
            },
            workspace,
            services.clone(),
            cancel,
        ));
        if let Err(error) = session.ensure_kernel().await {
            self.end(&session).await;
            return Err(error.to_string());
        }
        Ok(session)
    }

    /// Ends a placeholder session: its kernel and its workspace go.
    pub async fn end(&self, session: &Session) {
        session.close().await;
        pool_remove(self.disk, session.workspace().root());
    }
}

/// Removes a pool workspace, saying so when that fails.
fn pool_remove(disk: &Disk, root: &Path) {
    if let Err(error) = disk.remove(root) {
        tracing::warn!(path = %root.display(), %error, "could not remove a warm kernel's workspace");
    }
}

/// Keeps the pool at its target until cancelled.
async fn fill(pool: Arc<Pool>) {
    loop {
        while pool.ready() < pool.target && !pool.cancel.is_cancelled() {
            match pool.start_one().await {
                Ok(session) if pool.cancel.is_cancelled() => {
                    session.close().await;
                    pool.remove(&session);
                }
                Ok(session) => pool.ready.lock().expect("pool lock").push(session),
                Err(error) => {
                    tracing::warn!(%error, "could not start a warm kernel; retrying");
                    tokio::select! {
                        _ = pool.cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
        tokio::select! {
            _ = pool.cancel.cancelled() => return,
            _ = pool.wake.notified() => {}
        }
    }
}
