//! Bringing back what an earlier run of the server left: its recorded sessions (each kernel
//! adopted when it still runs and answers, else a fresh one on the next call), and the
//! removal of containers and mounts no record claims. It never creates sessions a record
//! does not name.

use std::collections::HashSet;
use std::sync::Arc;

use super::Sessions;
use crate::egress::Allowlist;
use crate::runtime::labels;
use crate::session::{Session, SessionError, SessionId, SessionOptions};

/// What `restore` found.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Sessions whose kernel was adopted, variables intact.
    pub adopted: usize,
    /// Sessions restored without a kernel: one starts on the next call.
    pub fresh: usize,
    /// Containers no record claimed, removed.
    pub removed: usize,
    /// Workspaces left mounted without a session record, unmounted.
    pub unmounted: usize,
}

impl Sessions {
    /// Brings back the sessions an earlier run left: each recorded session is registered
    /// again and its kernel adopted when it still runs and answers (variables intact), else
    /// it gets a fresh kernel on its next call. Containers of this server without a record
    /// (installers, kernels of deleted sessions) are removed.
    pub async fn restore(&self) -> Result<RestoreReport, SessionError> {
        let mut report = RestoreReport::default();
        // Installer proxy directories live only as long as their install: any left are a
        // crashed run's.
        let egress_dir = &self.config.settings.egress_dir;
        if let Err(error) = std::fs::remove_dir_all(egress_dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %egress_dir.display(), %error, "could not clear the installer proxy directories");
        }
        let mut containers = self.runtime.list_managed().await?;
        let mut restored = HashSet::new();
        for record in self.records.load_all() {
            let Ok(id) = SessionId::parse(&record.session_id) else {
                tracing::warn!(session_id = %record.session_id, "skipping a session record with an invalid id");
                continue;
            };
            let template = match self.config.catalog.get(&record.template) {
                Ok(template) => template,
                Err(error) => {
                    tracing::warn!(session_id = %id, %error, "skipping a session whose template this server does not have");
                    continue;
                }
            };
            let root = self.workspace_path(&record.owner, &id);
            // A kernel keeps the directory it was given: one whose workspace is mounted only
            // now (made before `mount` mode) would write under the mount, uncapped.
            let mounted_now = self.config.disk.needs_mount(&root);
            let workspace = match self.config.disk.prepare(root.clone()) {
                Ok(workspace) => workspace,
                Err(error) => {
                    tracing::warn!(session_id = %id, %error, "skipping a session whose workspace cannot be prepared");
                    continue;
                }
            };
            let session = Arc::new(Session::new(
                id.clone(),
                record.owner.clone(),
                SessionOptions {
                    description: record.description.clone(),
                    created_at: chrono::DateTime::from_timestamp(record.created_at, 0)
                        .unwrap_or_else(chrono::Utc::now),
                    limits: record.limits.clone(),
                    egress: record.egress,
                    egress_allow: self.still_allowed(&id, &record.egress_allow),
                    persistent: true,
                    template: (record.template.clone(), template),
                },
                workspace,
                self.services(),
                self.cancel.child_token(),
            ));
            match &record.kernel {
                Some(_) if mounted_now => {
                    // Its container, claimed by no record now, is removed below.
                    tracing::info!(session_id = %id, "its workspace was mounted anew, so its kernel, which sees the directory under the mount, is replaced; the next call starts a fresh one");
                    session.save_record(None);
                    report.fresh += 1;
                }
                Some(kernel) => {
                    containers.retain(|c| c.id != kernel.container_id);
                    match session.adopt(kernel).await {
                        Ok(()) => report.adopted += 1,
                        Err(reason) => {
                            tracing::info!(session_id = %id, %reason, "could not adopt the kernel; the next call starts a fresh one");
                            session.save_record(None);
                            report.fresh += 1;
                        }
                    }
                }
                None => report.fresh += 1,
            }
            self.sessions
                .lock()
                .expect("sessions lock")
                .insert((record.owner.clone(), id), session);
            restored.insert(root);
        }
        report.unmounted = self
            .config
            .disk
            .sweep(&self.config.data_dir.join("workspaces"), &restored);
        for orphan in &containers {
            tracing::info!(
                container = %orphan.id,
                session_id = orphan.labels.get(labels::SESSION_ID).map(String::as_str).unwrap_or("?"),
                "removing a container no session record claims"
            );
            self.runtime.remove_by_id(&orphan.id).await?;
            report.removed += 1;
        }
        Ok(report)
    }

    /// The part of a restored session's allowlist this server still allows; what it no
    /// longer allows is dropped, and said.
    fn still_allowed(&self, id: &SessionId, recorded: &Allowlist) -> Allowlist {
        let (kept, dropped) = recorded.within(&self.config.egress_allow);
        if !dropped.is_empty() {
            tracing::warn!(
                session_id = %id,
                dropped = %dropped,
                "this server's --egress-allow no longer allows part of a restored session's egress_allow"
            );
        }
        kept
    }
}
