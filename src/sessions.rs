//! The registry of live sessions: creating, finding, listing and deleting them, the lazily
//! created `default` session, and ending them all at shutdown. Sessions belong to an owner; a
//! session of another owner answers exactly like an unknown one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::{SharedRuntime, labels};
use crate::session::{Session, SessionError, SessionId, SessionServices, SessionSettings};
use crate::workspace::{KernelUser, Workspace, WorkspaceError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown session_id {0:?}; list_sessions shows the sessions you can use")]
    Unknown(String),
    #[error("session {0:?} already exists")]
    AlreadyExists(String),
    #[error("this server holds at most {max} sessions; delete one first")]
    TooMany { max: usize },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Session(#[from] Box<SessionError>),
    #[error("could not remove the workspace of session {session_id}: {source}")]
    RemoveWorkspace {
        session_id: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct RegistryConfig {
    pub data_dir: PathBuf,
    pub kernel_user: KernelUser,
    pub max_sessions: usize,
    pub settings: Arc<SessionSettings>,
}

pub struct Sessions {
    runtime: SharedRuntime,
    config: RegistryConfig,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Sessions {
    pub fn new(
        runtime: SharedRuntime,
        config: RegistryConfig,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            runtime,
            config,
            sessions: Mutex::new(HashMap::new()),
            tasks,
            cancel,
        }
    }

    pub fn max_sessions(&self) -> usize {
        self.config.max_sessions
    }

    /// Removes containers a previous run of this server left behind.
    pub async fn reap_orphans(&self) -> Result<usize, SessionError> {
        let orphans = self.runtime.list_managed().await?;
        for orphan in &orphans {
            tracing::info!(
                container = %orphan.id,
                session_id = orphan.labels.get(labels::SESSION_ID).map(String::as_str).unwrap_or("?"),
                "removing a kernel container left by an earlier run"
            );
            self.runtime.remove_by_id(&orphan.id).await?;
        }
        Ok(orphans.len())
    }

    fn workspace_path(&self, id: &SessionId) -> PathBuf {
        self.config.data_dir.join("workspaces").join(id.as_str())
    }

    /// Registers a session without starting its kernel.
    fn register(
        &self,
        id: SessionId,
        owner: &str,
        description: Option<String>,
    ) -> Result<Arc<Session>, RegistryError> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.contains_key(&id) {
            return Err(RegistryError::AlreadyExists(id.to_string()));
        }
        if sessions.len() >= self.config.max_sessions {
            return Err(RegistryError::TooMany {
                max: self.config.max_sessions,
            });
        }
        let workspace = Workspace::prepare(self.workspace_path(&id), self.config.kernel_user)?;
        let session = Arc::new(Session::new(
            id.clone(),
            owner.to_string(),
            description,
            workspace,
            SessionServices {
                runtime: self.runtime.clone(),
                settings: self.config.settings.clone(),
                tasks: self.tasks.clone(),
            },
            self.cancel.child_token(),
        ));
        sessions.insert(id, session.clone());
        Ok(session)
    }

    /// Creates a session and starts its kernel; on failure nothing stays registered.
    pub async fn create(
        &self,
        id: Option<SessionId>,
        owner: &str,
        description: Option<String>,
    ) -> Result<Arc<Session>, RegistryError> {
        let id = id.unwrap_or_else(SessionId::generate);
        let session = self.register(id.clone(), owner, description)?;
        if let Err(error) = session.ensure_kernel().await {
            self.sessions.lock().expect("sessions lock").remove(&id);
            session.close().await;
            return Err(Box::new(error).into());
        }
        Ok(session)
    }

    /// The session `id` of `owner`.
    pub fn get(&self, id: &SessionId, owner: &str) -> Result<Arc<Session>, RegistryError> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(id)
            .filter(|s| s.owner == owner)
            .cloned()
            .ok_or_else(|| RegistryError::Unknown(id.to_string()))
    }

    /// The session `id`, or, for the default id only, a new one made on first use.
    pub fn get_or_default(
        &self,
        id: &SessionId,
        owner: &str,
    ) -> Result<Arc<Session>, RegistryError> {
        match self.get(id, owner) {
            Err(RegistryError::Unknown(_)) if id.as_str() == SessionId::DEFAULT => {
                match self.register(id.clone(), owner, None) {
                    Err(RegistryError::AlreadyExists(_)) => self.get(id, owner),
                    other => other,
                }
            }
            other => other,
        }
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
        let session = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            match sessions.get(id) {
                Some(s) if s.owner == owner => sessions.remove(id),
                _ => None,
            }
        }
        .ok_or_else(|| RegistryError::Unknown(id.to_string()))?;
        session.close().await;
        if remove_workspace {
            std::fs::remove_dir_all(session.workspace().root()).map_err(|source| {
                RegistryError::RemoveWorkspace {
                    session_id: id.to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Ends every session; workspaces stay on disk.
    pub async fn shutdown(&self) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        futures::future::join_all(sessions.iter().map(|s| s.close())).await;
        tracing::info!(count = sessions.len(), "all sessions ended");
    }
}
