//! The start-time check of each template's image, run in the background once the server is
//! up: the image is there, and, unless it is one of kernelbox's own templates (one of the
//! images this version builds, whose build checked the same, started as a built-in template
//! starts), a kernel of the template answers within the ready timeout, runs as uid 1000, and
//! finds no setuid or setgid file. A broken template
//! is reported (`list_templates`, `/healthz`, the log) and refused by `create_session`
//! naming why; the others are not held up. It only reads: it must not change a template.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::pool::Placeholder;
use crate::runtime::{KernelLaunch, Limits};
use crate::session::SessionServices;
use crate::templates::Template;
use crate::workspace::Disk;

/// The owner label of the kernels the checks start.
const CHECK_OWNER: &str = "check";
/// How long the look for uid and setuid files may take in a checked kernel.
const SCAN_TIMEOUT: Duration = Duration::from_secs(120);
/// Setuid files named in a report, at most.
const NAMED_FILES: usize = 5;
/// The look inside a checked kernel's container: its uid, then every setuid or setgid file
/// it can see.
const SCAN: &str = "id -u && find / -xdev -perm /6000 -type f 2>/dev/null; true";

/// Where a template's check stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "problem", rename_all = "snake_case")]
pub enum TemplateStatus {
    /// Not checked yet: sessions may be created, and fail clearly if it is broken.
    Checking,
    Ready,
    /// Why its kernels cannot run.
    Broken(String),
}

/// Every template's status, by name.
#[derive(Debug, Default)]
pub struct TemplateChecks {
    statuses: Mutex<BTreeMap<String, TemplateStatus>>,
}

/// What checking a template needs.
pub struct CheckContext {
    pub services: SessionServices,
    /// The tags of the images this version of kernelbox builds (and checks as it builds).
    pub own_images: Vec<String>,
    /// How kernelbox's own templates start their kernels: a template in one of its images
    /// that starts another way gets its kernel checked.
    pub builtin_launches: Vec<KernelLaunch>,
    /// Where the checked kernels' workspaces are made.
    pub dir: PathBuf,
    pub disk: Disk,
    pub cancel: CancellationToken,
}

impl TemplateChecks {
    /// Starts checking `templates` (each with the caps its kernels get) on the services'
    /// tracker; every one is `Checking` until its check ends.
    pub fn start(
        templates: Vec<(String, Arc<Template>, Limits)>,
        context: CheckContext,
    ) -> Arc<Self> {
        let checks = Arc::new(Self::default());
        let context = Arc::new(context);
        for (name, template, limits) in templates {
            checks.set(&name, TemplateStatus::Checking);
            let checks = checks.clone();
            let context = context.clone();
            context.services.tasks.clone().spawn(async move {
                let status = tokio::select! {
                    _ = context.cancel.cancelled() => return,
                    status = check(&context, (name.clone(), template), &limits) => status,
                };
                match &status {
                    TemplateStatus::Broken(problem) => {
                        tracing::error!(template = %name, %problem, "template cannot run kernels");
                    }
                    _ => tracing::info!(template = %name, "template checked"),
                }
                checks.set(&name, status);
            });
        }
        checks
    }

    fn set(&self, name: &str, status: TemplateStatus) {
        self.statuses
            .lock()
            .expect("checks lock")
            .insert(name.to_string(), status);
    }

    /// The status of the template `name`.
    pub fn status(&self, name: &str) -> TemplateStatus {
        self.statuses
            .lock()
            .expect("checks lock")
            .get(name)
            .cloned()
            .unwrap_or(TemplateStatus::Checking)
    }

    /// Every template's status.
    pub fn all(&self) -> BTreeMap<String, TemplateStatus> {
        self.statuses.lock().expect("checks lock").clone()
    }
}

/// Checks one template: its image, then (for an image kernelbox did not build) a kernel.
async fn check(
    context: &CheckContext,
    template: (String, Arc<Template>),
    limits: &Limits,
) -> TemplateStatus {
    let runtime = &context.services.runtime;
    let id = match runtime.image_id(template.1.image.as_deref()).await {
        Ok(id) => id,
        Err(error) => return TemplateStatus::Broken(error.to_string()),
    };
    if context.builtin_launches.contains(&template.1.launch()) {
        for own in &context.own_images {
            if runtime.image_id(Some(own)).await.is_ok_and(|own| own == id) {
                return TemplateStatus::Ready;
            }
        }
    }
    let placeholder = Placeholder {
        owner: CHECK_OWNER,
        dir: &context.dir,
        disk: &context.disk,
        template: &template,
        limits,
    };
    let session = match placeholder
        .start(&context.services, context.cancel.child_token())
        .await
    {
        Ok(session) => session,
        Err(error) => return TemplateStatus::Broken(format!("its kernel did not start: {error}")),
    };
    let scan = session
        .exec(
            ["/bin/sh", "-c", SCAN].map(str::to_string).to_vec(),
            SCAN_TIMEOUT,
            &context.cancel,
        )
        .await;
    placeholder.end(&session).await;
    match scan {
        Ok(output) if output.timed_out => TemplateStatus::Broken(format!(
            "looking for setuid files in its image took longer than {} s",
            SCAN_TIMEOUT.as_secs()
        )),
        Ok(output) => judge(&output.stdout),
        Err(error) => TemplateStatus::Broken(format!(
            "could not look inside its kernel's container: {error}"
        )),
    }
}

/// The verdict on what [`SCAN`] printed.
fn judge(scan: &str) -> TemplateStatus {
    let mut lines = scan.lines();
    match lines.next().map(str::trim) {
        Some("1000") => {}
        Some(uid) => {
            return TemplateStatus::Broken(format!("its kernel runs as uid {uid}, not 1000"));
        }
        None => {
            return TemplateStatus::Broken(
                "its image has no `id` and `find` to check it with".to_string(),
            );
        }
    }
    let setuid: Vec<&str> = lines.filter(|line| !line.is_empty()).collect();
    if setuid.is_empty() {
        return TemplateStatus::Ready;
    }
    let named = setuid
        .iter()
        .take(NAMED_FILES)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = setuid.len().saturating_sub(NAMED_FILES);
    TemplateStatus::Broken(format!(
        "its image has {} setuid or setgid file(s): {named}{}; strip them (chmod a-s)",
        setuid.len(),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_is_judged_by_uid_and_setuid_files() {
        assert_eq!(judge("1000\n"), TemplateStatus::Ready);
        assert_eq!(
            judge("0\n"),
            TemplateStatus::Broken("its kernel runs as uid 0, not 1000".to_string())
        );
        let TemplateStatus::Broken(problem) = judge("1000\n/usr/bin/su\n/usr/bin/passwd\n") else {
            panic!("setuid files must break a template");
        };
        assert!(problem.contains("2 setuid or setgid file(s): /usr/bin/su, /usr/bin/passwd"));
        assert!(matches!(judge(""), TemplateStatus::Broken(_)));
    }

    #[test]
    fn statuses_serialize_with_their_problem() {
        let broken = serde_json::to_value(TemplateStatus::Broken("x".to_string())).unwrap();
        assert_eq!(
            broken,
            serde_json::json!({"status": "broken", "problem": "x"})
        );
        let ready = serde_json::to_value(TemplateStatus::Ready).unwrap();
        assert_eq!(ready, serde_json::json!({"status": "ready"}));
    }
}
