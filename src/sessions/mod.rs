//! The registry of live sessions: creating, finding, listing and deleting them, the lazily
//! created `default` session, and ending them all at shutdown. Sessions belong to an owner; a
//! session of another owner answers exactly like an unknown one.

mod checks;
mod lifecycle;
mod restore;

pub use checks::TemplateStatus;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tenant;
use crate::egress::{Allowlist, Wider};
use crate::metrics::{Gauges, Metrics};
use crate::pool::Pool;
use crate::records::{EndedSessions, RecordStore};
use crate::runtime::Limits;
use crate::runtime::SharedRuntime;
use crate::session::{
    Session, SessionError, SessionId, SessionOptions, SessionServices, SessionSettings,
};
use crate::templates::{self, Catalog, Template, TemplateError};
use crate::units::{ByteSize, Cpus, Pids, cpus_of_nano};
use crate::workspace::{Disk, QuotaMode, WorkspaceError};
use checks::{CheckContext, TemplateChecks};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown session_id {0:?}; list_sessions shows the sessions you can use")]
    Unknown(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(
        "the template {template:?} cannot run kernels on this server: {problem}; list_templates shows each template's status"
    )]
    TemplateBroken { template: String, problem: String },
    #[error("your token does not allow the template {template:?}; it allows: {allowed}")]
    TemplateRefused { template: String, allowed: String },
    #[error("session {0:?} already exists")]
    AlreadyExists(String),
    #[error("this server holds at most {max} sessions; delete one first")]
    TooMany { max: usize },
    #[error("your quota is {max} sessions; delete one first")]
    QuotaReached { max: usize },
    #[error("{field} must be greater than 0 and at most this server's {max}; got {requested}")]
    LimitOutOfRange {
        field: &'static str,
        requested: String,
        max: String,
    },
    #[error(
        "egress is not allowed here: this server's policy (--allow-egress) or your token does not permit sessions that reach the network; install_dependencies works without it"
    )]
    EgressRefused,
    #[error(transparent)]
    EgressWider(#[from] Wider),
    #[error(
        "egress: true already lets the kernel reach everything; give egress_allow or egress, not both"
    )]
    EgressBoth,
    #[error(
        "egress: true cannot be given here: kernels run under the OCI runtime {oci_runtime}, registered with no network; use egress_allow, which goes through the server's proxy"
    )]
    EgressWithoutNetwork { oci_runtime: String },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Session(#[from] Box<SessionError>),
    #[error("could not remove the workspace of session {session_id}: {source}")]
    RemoveWorkspace {
        session_id: String,
        #[source]
        source: WorkspaceError,
    },
}

/// Lowers `limits` to the caps `template` names.
fn template_caps(template: &Template, limits: &mut Limits) {
    if let Some(memory) = template.memory {
        limits.memory_bytes = limits.memory_bytes.min(memory.bytes());
    }
    if let Some(cpus) = template.cpus {
        limits.nano_cpus = limits.nano_cpus.min(cpus.nano());
    }
    if let Some(pids) = template.pids_limit {
        limits.pids = limits.pids.min(pids.get());
    }
}

/// How workspace quotas are held, as `/healthz` shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WorkspaceQuota {
    pub mode: QuotaMode,
    pub bytes: u64,
}

/// What a client asks of a new session; limits may only lower the server's (and tenant's).
#[derive(Debug, Clone, Default)]
pub struct SessionRequest {
    pub description: Option<String>,
    pub egress: bool,
    /// What the kernel may reach through the egress proxy.
    pub egress_allow: Allowlist,
    pub memory: Option<ByteSize>,
    pub cpus: Option<Cpus>,
    pub pids: Option<Pids>,
    /// The template's name; the default when `None`.
    pub template: Option<String>,
}

pub struct RegistryConfig {
    pub data_dir: PathBuf,
    /// Where workspaces are made and how their quota is held.
    pub disk: Disk,
    pub max_sessions: usize,
    pub settings: Arc<SessionSettings>,
    /// Sessions may be created with egress (the tenant must allow it too).
    pub allow_egress: bool,
    /// The widest `egress_allow` a session may have (a tenant's token may narrow it).
    pub egress_allow: Allowlist,
    /// Kernels kept started ahead of demand.
    pub pool_size: usize,
    /// Kernels started at once; more wait their turn.
    pub max_concurrent_starts: usize,
    /// The templates sessions may be made from.
    pub catalog: Catalog,
    /// The tags of the images this version of kernelbox builds (and checks as it builds
    /// them): the built-in templates in those images skip the start-time kernel check.
    pub own_images: Vec<String>,
    /// Sessions idle (no cell) this long are ended; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    /// Sessions older than this are ended; `None` keeps them.
    pub max_lifetime: Option<Duration>,
    /// How long the workspace of an ended session is kept; `None` keeps it forever.
    pub workspace_retention: Option<Duration>,
}

pub struct Sessions {
    runtime: SharedRuntime,
    config: RegistryConfig,
    /// Keyed by owner and id: two tenants may both have a session called `default`.
    sessions: Mutex<HashMap<(String, SessionId), Arc<Session>>>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    records: RecordStore,
    ended: EndedSessions,
    /// A warm pool per template with a pool size, by template name.
    pools: BTreeMap<String, Arc<Pool>>,
    /// Each template's start-time check.
    checks: Arc<TemplateChecks>,
    /// The current session of each identity whose requests have no connection (MCP
    /// 2026-07-28), by owner.
    currents: Mutex<HashMap<String, Arc<Mutex<SessionId>>>>,
    services: SessionServices,
}

impl Sessions {
    pub fn new(
        runtime: SharedRuntime,
        config: RegistryConfig,
        tasks: TaskTracker,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let records = RecordStore::new(&config.data_dir);
        let ended = EndedSessions::new(&config.data_dir);
        let services = SessionServices {
            runtime: runtime.clone(),
            settings: config.settings.clone(),
            tasks: tasks.clone(),
            shutdown: cancel.clone(),
            metrics: metrics.clone(),
            records: records.clone(),
            starts: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_starts)),
        };
        // Pool kernels never outlive their server: what an earlier run left goes.
        let pool_root = config.data_dir.join("pool");
        config.disk.clear(&pool_root);
        let mut pools = BTreeMap::new();
        for (name, template) in config.catalog.iter() {
            let size = match template.pool_size {
                _ if name == templates::DEFAULT && config.pool_size > 0 => config.pool_size,
                Some(size) => size,
                None => 0,
            };
            if size == 0 {
                continue;
            }
            let mut limits = config.settings.limits.clone();
            template_caps(template, &mut limits);
            let pool = Pool::start(
                size,
                pool_root.join(name),
                config.disk.clone(),
                ((name.to_string(), template.clone()), limits),
                services.clone(),
                cancel.child_token(),
            );
            pools.insert(name.to_string(), pool);
        }
        let check_root = config.data_dir.join("checks");
        config.disk.clear(&check_root);
        let checks = TemplateChecks::start(
            config
                .catalog
                .iter()
                .map(|(name, template)| {
                    let mut limits = config.settings.limits.clone();
                    template_caps(template, &mut limits);
                    (name.to_string(), template.clone(), limits)
                })
                .collect(),
            CheckContext {
                services: services.clone(),
                own_images: config.own_images.clone(),
                builtin_launches: Catalog::builtin("")
                    .iter()
                    .map(|(_, template)| template.launch())
                    .collect(),
                dir: check_root,
                disk: config.disk.clone(),
                cancel: cancel.child_token(),
            },
        );
        Self {
            runtime,
            config,
            sessions: Mutex::new(HashMap::new()),
            cancel,
            metrics,
            records,
            ended,
            pools,
            checks,
            currents: Mutex::new(HashMap::new()),
            services,
        }
    }

    /// Where `owner`'s connectionless clients keep their current session (`default` until
    /// one switches).
    pub fn current_of(&self, owner: &str) -> Arc<Mutex<SessionId>> {
        self.currents
            .lock()
            .expect("currents lock")
            .entry(owner.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(SessionId::default_id())))
            .clone()
    }

    /// Where the template `name`'s start-time check stands.
    pub fn template_status(&self, name: &str) -> TemplateStatus {
        self.checks.status(name)
    }

    /// Every template's start-time check.
    pub fn template_statuses(&self) -> BTreeMap<String, TemplateStatus> {
        self.checks.all()
    }

    /// When the session will be ended, if a lifecycle limit applies to it.
    pub fn expires_in(&self, session: &Session) -> Option<Duration> {
        let idle = self
            .config
            .idle_timeout
            .map(|limit| limit.saturating_sub(session.idle_for()));
        let lifetime = self.config.max_lifetime.map(|limit| {
            let age = (chrono::Utc::now() - session.created_at)
                .to_std()
                .unwrap_or_default();
            limit.saturating_sub(age)
        });
        match (idle, lifetime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The metrics text with the gauges read now.
    pub async fn render_metrics(&self) -> String {
        let sessions = self.all();
        let mut running = 0;
        for session in &sessions {
            if session.kernel_uptime().await.is_some() {
                running += 1;
            }
        }
        self.metrics.render(&Gauges {
            active_sessions: sessions.len(),
            running_kernels: running,
            pool_ready: self.pools.values().map(|pool| pool.ready()).sum(),
            quota_mode: self.config.disk.mode().as_str(),
            quota_bytes: self.config.disk.quota_bytes(),
        })
    }

    /// How workspace quotas are held, and at what size.
    pub fn workspace_quota(&self) -> WorkspaceQuota {
        WorkspaceQuota {
            mode: self.config.disk.mode(),
            bytes: self.config.disk.quota_bytes(),
        }
    }

    pub fn max_sessions(&self) -> usize {
        self.config.max_sessions
    }

    /// The templates `tenant` may use, each with the caps its kernels get by default.
    pub fn templates(&self, tenant: &Tenant) -> Vec<(String, Arc<Template>, Limits)> {
        self.config
            .catalog
            .iter()
            .filter(|(name, _)| {
                tenant
                    .templates
                    .as_ref()
                    .is_none_or(|allowed| allowed.iter().any(|a| a == name))
            })
            .map(|(name, template)| {
                let mut limits = self.config.settings.limits.clone();
                template_caps(template, &mut limits);
                (name.to_string(), template.clone(), limits)
            })
            .collect()
    }

    /// The OCI runtime kernels run under, where the runtime knows it.
    pub fn oci_runtime(&self) -> Option<String> {
        self.runtime.oci_runtime().map(str::to_string)
    }

    fn services(&self) -> SessionServices {
        self.services.clone()
    }

    fn workspace_path(&self, owner: &str, id: &SessionId) -> PathBuf {
        self.config
            .data_dir
            .join("workspaces")
            .join(owner)
            .join(id.as_str())
    }

    /// Registers a session without starting its kernel. A session id another tenant holds
    /// answers like any taken id: it reveals nothing about whose it is.
    /// A `warm` workspace (a pool kernel's) becomes the session's; else its own is prepared.
    fn register(
        &self,
        id: SessionId,
        tenant: &Tenant,
        request: SessionRequest,
        warm: Option<&Path>,
    ) -> Result<Arc<Session>, RegistryError> {
        if request.egress && !request.egress_allow.is_empty() {
            return Err(RegistryError::EgressBoth);
        }
        if request.egress && !(self.config.allow_egress && tenant.egress) {
            return Err(RegistryError::EgressRefused);
        }
        if request.egress && !self.runtime.full_egress() {
            return Err(RegistryError::EgressWithoutNetwork {
                oci_runtime: self.runtime.oci_runtime().unwrap_or_default().to_string(),
            });
        }
        if !request.egress_allow.is_empty() {
            self.config
                .egress_allow
                .narrow(&request.egress_allow, "this server's --egress-allow")?;
            if let Some(allowed) = &tenant.egress_allow {
                allowed.narrow(&request.egress_allow, "your token")?;
            }
        }
        let template_name = request
            .template
            .clone()
            .unwrap_or_else(|| templates::DEFAULT.to_string());
        let template = self.config.catalog.get(&template_name)?;
        if let Some(allowed) = &tenant.templates
            && !allowed.contains(&template_name)
        {
            return Err(RegistryError::TemplateRefused {
                template: template_name,
                allowed: allowed.join(", "),
            });
        }
        if let TemplateStatus::Broken(problem) = self.checks.status(&template_name) {
            return Err(RegistryError::TemplateBroken {
                template: template_name,
                problem,
            });
        }
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let key = (tenant.name.clone(), id.clone());
        if sessions.contains_key(&key) {
            return Err(RegistryError::AlreadyExists(id.to_string()));
        }
        if sessions.len() >= self.config.max_sessions {
            return Err(RegistryError::TooMany {
                max: self.config.max_sessions,
            });
        }
        if let Some(max) = tenant.max_sessions {
            let held = sessions
                .keys()
                .filter(|(owner, _)| *owner == tenant.name)
                .count();
            if held >= max {
                return Err(RegistryError::QuotaReached { max });
            }
        }
        let mut limits = self.config.settings.limits.clone();
        if let Some(cap) = tenant.max_memory_bytes {
            limits.memory_bytes = limits.memory_bytes.min(cap);
        }
        // The template's caps lower the server's; a request may lower them further.
        template_caps(&template, &mut limits);
        let lower = |field: &'static str,
                     requested: Option<i64>,
                     current: &mut i64,
                     show: fn(i64) -> String| {
            match requested {
                None => Ok(()),
                Some(value) if value > 0 && value <= *current => {
                    *current = value;
                    Ok(())
                }
                Some(value) => Err(RegistryError::LimitOutOfRange {
                    field,
                    requested: show(value),
                    max: show(*current),
                }),
            }
        };
        lower(
            "memory",
            request.memory.map(ByteSize::bytes),
            &mut limits.memory_bytes,
            |b| format!("{} MiB", b >> 20),
        )?;
        lower(
            "cpus",
            request.cpus.map(Cpus::nano),
            &mut limits.nano_cpus,
            |n| cpus_of_nano(n).to_string(),
        )?;
        lower(
            "pids_limit",
            request.pids.map(Pids::get),
            &mut limits.pids,
            |p| p.to_string(),
        )?;
        let root = self.workspace_path(&tenant.name, &id);
        if let Some(warm) = warm {
            self.config
                .disk
                .hand_over(warm, &root)
                .map_err(WorkspaceError::from)?;
        }
        let workspace = self.config.disk.prepare(root)?;
        let session = Arc::new(Session::new(
            id.clone(),
            tenant.name.clone(),
            SessionOptions {
                description: request.description,
                created_at: chrono::Utc::now(),
                limits,
                egress: request.egress,
                egress_allow: request.egress_allow,
                persistent: true,
                template: (template_name, template),
            },
            workspace,
            self.services(),
            self.cancel.child_token(),
        ));
        sessions.insert(key, session.clone());
        session.save_record(None);
        self.ended.forget(&tenant.name, &id);
        Ok(session)
    }

    /// Creates a session and starts its kernel; on failure nothing stays registered.
    pub async fn create(
        &self,
        id: Option<SessionId>,
        tenant: &Tenant,
        request: SessionRequest,
    ) -> Result<Arc<Session>, RegistryError> {
        let id = id.unwrap_or_else(SessionId::generate);
        let target = self.workspace_path(&tenant.name, &id);
        // A template's pool holds kernels with its caps, without egress.
        let template = request.template.as_deref().unwrap_or(templates::DEFAULT);
        let pool = self.pools.get(template).filter(|pool| {
            !request.egress
                && request.egress_allow.is_empty()
                && request.memory.is_none()
                && request.cpus.is_none()
                && request.pids.is_none()
                && tenant
                    .max_memory_bytes
                    .is_none_or(|cap| cap >= pool.limits().memory_bytes)
                && tenant
                    .templates
                    .as_ref()
                    .is_none_or(|allowed| allowed.iter().any(|t| t == template))
        });
        let warm = match pool {
            Some(pool) if !target.exists() => pool.take().await,
            _ => None,
        };
        if let Some(warm) = warm {
            // The pool kernel has its own fresh workspace mounted: it becomes this one.
            match self.register(id.clone(), tenant, request.clone(), Some(&warm.workspace)) {
                Ok(session) => {
                    session.install_kernel(warm.kernel).await;
                    return Ok(session);
                }
                Err(error) => {
                    warm.kernel.discard(&self.runtime).await;
                    self.remove_workspace(&warm.workspace);
                    match error {
                        RegistryError::Workspace(error) => {
                            tracing::warn!(%error, "could not hand a warm workspace over; starting cold");
                        }
                        error => return Err(error),
                    }
                }
            }
        }
        let session = self.register(id.clone(), tenant, request, None)?;
        self.start_registered(session, tenant, id).await
    }

    /// Starts the kernel of a just-registered session; on failure nothing stays registered.
    async fn start_registered(
        &self,
        session: Arc<Session>,
        tenant: &Tenant,
        id: SessionId,
    ) -> Result<Arc<Session>, RegistryError> {
        if let Err(error) = session.ensure_kernel().await {
            self.sessions
                .lock()
                .expect("sessions lock")
                .remove(&(tenant.name.clone(), id));
            session.close().await;
            self.release_workspace(&session);
            return Err(Box::new(error).into());
        }
        Ok(session)
    }

    /// The session `id` of `owner`.
    pub fn get(&self, id: &SessionId, owner: &str) -> Result<Arc<Session>, RegistryError> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(&(owner.to_string(), id.clone()))
            .cloned()
            .ok_or_else(|| RegistryError::Unknown(id.to_string()))
    }

    /// The session `id`, or, for the default id only, a new one made on first use.
    pub fn get_or_default(
        &self,
        id: &SessionId,
        tenant: &Tenant,
    ) -> Result<Arc<Session>, RegistryError> {
        match self.get(id, &tenant.name) {
            Err(RegistryError::Unknown(_)) if id.as_str() == SessionId::DEFAULT => {
                match self.register(id.clone(), tenant, SessionRequest::default(), None) {
                    Err(RegistryError::AlreadyExists(_)) => self.get(id, &tenant.name),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Every registered session, of every owner.
    fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .values()
            .cloned()
            .collect()
    }

    /// The sessions of `owner`, sorted by id.
    pub fn list(&self, owner: &str) -> Vec<Arc<Session>> {
        let mut sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        sessions
    }

    /// Ends a session: its container is removed; its workspace too when asked.
    pub async fn delete(
        &self,
        id: &SessionId,
        owner: &str,
        remove_workspace: bool,
    ) -> Result<(), RegistryError> {
        let session = self
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&(owner.to_string(), id.clone()))
            .ok_or_else(|| RegistryError::Unknown(id.to_string()))?;
        session.close().await;
        if !remove_workspace {
            self.ended.mark(owner, id);
            self.release_workspace(&session);
            return Ok(());
        }
        self.config
            .disk
            .remove(session.workspace().root())
            .map_err(|source| RegistryError::RemoveWorkspace {
                session_id: id.to_string(),
                source,
            })
    }

    /// Unmounts an ended session's workspace; its files stay for a session of the same id.
    fn release_workspace(&self, session: &Session) {
        if let Err(error) = self.config.disk.release(session.workspace().root()) {
            tracing::warn!(session_id = %session.id, %error, "could not unmount a workspace");
        }
    }

    /// Removes a workspace nobody uses, saying so when that fails.
    fn remove_workspace(&self, root: &Path) {
        if let Err(error) = self.config.disk.remove(root) {
            tracing::warn!(path = %root.display(), %error, "could not remove a workspace");
        }
    }

    /// Waits until no cell runs in any session, at most `grace`; says whether they all ended.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let busy = self
                .sessions
                .lock()
                .expect("sessions lock")
                .values()
                .any(|s| s.is_busy());
            if !busy {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the warm pool and empties the registry, for shutdown.
    async fn take_all(&self) -> Vec<Arc<Session>> {
        for pool in self.pools.values() {
            pool.stop().await;
        }
        self.sessions
            .lock()
            .expect("sessions lock")
            .drain()
            .map(|(_, s)| s)
            .collect()
    }

    /// Lets go of every session without stopping it: kernels keep running and their records
    /// stay, for the next start to adopt. Warm-pool kernels are removed.
    pub async fn detach_all(&self) {
        let sessions = self.take_all().await;
        futures::future::join_all(sessions.iter().map(|s| s.detach())).await;
        tracing::info!(
            count = sessions.len(),
            "sessions left running for the next start"
        );
    }

    /// Ends every session; workspaces stay on disk. Warm-pool kernels are removed.
    pub async fn shutdown(&self) {
        let sessions = self.take_all().await;
        futures::future::join_all(sessions.iter().map(|s| s.close())).await;
        for session in &sessions {
            self.release_workspace(session);
        }
        tracing::info!(count = sessions.len(), "all sessions ended");
    }
}
