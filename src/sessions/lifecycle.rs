//! The registry's background duties: ending sessions past their idle timeout or lifetime,
//! removing the workspaces of ended sessions past their retention, and, in `watchdog` quota
//! mode, stopping kernels whose workspace grows past its quota. Each runs until the
//! registry's cancellation token fires; none starts kernels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Sessions;
use crate::session::SessionId;
use crate::workspace::QuotaMode;

/// How often the watchdog looks at workspaces.
const QUOTA_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// How long after a cell the watchdog takes growth with no cell running for a background
/// writer.
const SETTLE: Duration = Duration::from_secs(2);

impl Sessions {
    /// Ends sessions past their idle timeout (when no cell runs) or their lifetime, and
    /// removes the workspaces of ended sessions past their retention. Runs until cancelled.
    pub async fn cull(self: Arc<Self>) {
        let limits = [self.config.idle_timeout, self.config.max_lifetime];
        let shortest = limits.iter().flatten().min().copied();
        let Some(shortest) = shortest.or(self.config.workspace_retention) else {
            return;
        };
        let interval = (shortest / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let sessions: Vec<_> = self
                .sessions
                .lock()
                .expect("sessions lock")
                .values()
                .cloned()
                .collect();
            for session in sessions {
                let idle = self
                    .config
                    .idle_timeout
                    .is_some_and(|limit| !session.is_busy() && session.idle_for() >= limit);
                let old = self.config.max_lifetime.is_some_and(|limit| {
                    (chrono::Utc::now() - session.created_at)
                        .to_std()
                        .is_ok_and(|age| age >= limit)
                });
                if idle || old {
                    let reason = if idle { "idle" } else { "lifetime" };
                    tracing::info!(session_id = %session.id, reason, "ending a session");
                    self.metrics.culled.increment(reason);
                    if let Err(error) = self.delete(&session.id, &session.owner, false).await {
                        tracing::warn!(session_id = %session.id, %error, "could not end a session");
                    }
                }
            }
            if let Some(retention) = self.config.workspace_retention {
                self.sweep_workspaces(retention);
            }
        }
    }

    /// In `watchdog` mode, looks at every running kernel's workspace four times a second and
    /// stops what grows past its quota (`Session::quota_crossed`). Runs until cancelled.
    pub async fn watch_quotas(self: Arc<Self>) {
        if self.config.disk.mode() != QuotaMode::Watchdog {
            return;
        }
        // What each workspace held at the last look, and whether a cell ran then.
        let mut seen: HashMap<(String, SessionId), (u64, bool)> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(QUOTA_WATCH_INTERVAL) => {}
            }
            let mut now_seen = HashMap::new();
            for session in self.all() {
                if session.kernel_uptime().await.is_none() {
                    continue;
                }
                let busy = session.is_busy();
                let workspace = session.workspace().clone();
                let Ok(used) = tokio::task::spawn_blocking(move || workspace.usage()).await else {
                    continue;
                };
                let key = (session.owner.clone(), session.id.clone());
                // Growth counts while a cell runs, or with none running once the last cell
                // has settled: between two looks with none running, at least `SETTLE` after
                // it (what a cell wrote may reach the host late, under gVisor by seconds).
                let settled = session.idle_for() >= SETTLE;
                let grew = match seen.get(&key) {
                    None => busy,
                    Some(&(before, was_busy)) => used > before && (busy || (!was_busy && settled)),
                };
                if grew && used > session.workspace().quota_bytes() {
                    session.quota_crossed(used).await;
                }
                now_seen.insert(key, (used, busy));
            }
            seen = now_seen;
        }
    }

    /// Removes the workspaces of ended sessions whose end is older than `retention`.
    fn sweep_workspaces(&self, retention: Duration) {
        for ended in self.ended.expired(retention) {
            let live = self
                .sessions
                .lock()
                .expect("sessions lock")
                .contains_key(&(ended.owner.clone(), ended.session_id.clone()));
            if !live {
                let path = self.workspace_path(&ended.owner, &ended.session_id);
                match self.config.disk.remove(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed the workspace of an ended session")
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "could not remove an old workspace");
                        continue;
                    }
                }
            }
            self.ended.forget(&ended.owner, &ended.session_id);
        }
    }
}
