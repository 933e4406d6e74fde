//! Following a service's one task: its newest state, waiting for it to run (or to end, for a
//! job) under a deadline that allows for an image pull, failing fast with the shortfall when
//! no node can hold it, its address from Docker's DNS, and its container when it runs on
//! this node. It never changes a task.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{Task, TaskState};
use bollard::query_parameters::ListTasksOptionsBuilder;

use super::image::KernelImage;
use super::{SwarmRuntime, engine_error};
use crate::runtime::{Runtime, RuntimeError};

/// How long a task may take from create to running before it is given up.
const TASK_START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a task may take to get going while its node prepares it: a node's first task
/// from a registry pulls the whole image (1.4 GB).
const IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the task's name may take to appear in the network's DNS.
const DNS_TIMEOUT: Duration = Duration::from_secs(15);

const POLL: Duration = Duration::from_millis(100);

/// A task's state is final: it will never run again.
pub(super) fn is_final(state: &TaskState) -> bool {
    matches!(
        state,
        TaskState::COMPLETE
            | TaskState::SHUTDOWN
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::REMOVE
            | TaskState::ORPHANED
    )
}

/// What one task is doing, as far as kernelbox cares.
pub(super) enum TaskProgress {
    Waiting,
    /// On a node, getting ready: pulling the image when the node lacks it.
    Preparing,
    /// Pending with a scheduler complaint (no node fits).
    Unplaceable(String),
    Running(Task),
    Ended(Task),
}

impl SwarmRuntime {
    /// The newest task of `service`, if it has one.
    pub(super) async fn task(&self, service: &str) -> Result<Option<Task>, RuntimeError> {
        let filters = HashMap::from([("service", vec![service.to_string()])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        let tasks = self
            .docker
            .list_tasks(Some(options))
            .await
            .map_err(engine_error("list the tasks of", service))?;
        Ok(tasks
            .into_iter()
            .max_by_key(|t| t.version.as_ref().and_then(|v| v.index)))
    }

    pub(super) async fn progress(&self, service: &str) -> Result<TaskProgress, RuntimeError> {
        let Some(task) = self.task(service).await? else {
            return Ok(TaskProgress::Waiting);
        };
        let status = task.status.clone().unwrap_or_default();
        let state = status.state.unwrap_or(TaskState::NEW);
        Ok(match state {
            TaskState::RUNNING => TaskProgress::Running(task),
            state if is_final(&state) => TaskProgress::Ended(task),
            TaskState::PENDING => match status.err {
                Some(err) if !err.is_empty() => TaskProgress::Unplaceable(err),
                _ => TaskProgress::Waiting,
            },
            TaskState::PREPARING => TaskProgress::Preparing,
            _ => TaskProgress::Waiting,
        })
    }

    /// Waits for the service's task to run (or, with `to_end`, to finish), failing fast when
    /// no node can take it.
    pub(super) async fn wait_task(
        &self,
        service: &str,
        (session_id, owner): (&str, &str),
        (image, memory): (&KernelImage, i64),
        to_end: Option<Duration>,
    ) -> Result<Task, RuntimeError> {
        let started = tokio::time::Instant::now();
        let mut deadline = started + TASK_START_TIMEOUT + to_end.unwrap_or_default();
        loop {
            match self.progress(service).await? {
                TaskProgress::Running(task) if to_end.is_none() => return Ok(task),
                TaskProgress::Ended(task) if to_end.is_some() => return Ok(task),
                TaskProgress::Ended(task) => {
                    let status = task.status.unwrap_or_default();
                    let logs = self.logs_tail(service).await;
                    return Err(RuntimeError::Container {
                        action: "start",
                        session_id: session_id.to_string(),
                        detail: format!(
                            "its task ended as {}: {} {}{}",
                            status.state.map(|s| s.to_string()).unwrap_or_default(),
                            status.message.unwrap_or_default(),
                            status.err.unwrap_or_default(),
                            if logs.is_empty() {
                                String::new()
                            } else {
                                format!("; it printed: {logs}")
                            }
                        ),
                    });
                }
                TaskProgress::Unplaceable(err) => {
                    return Err(RuntimeError::NoNodeFits {
                        session_id: session_id.to_string(),
                        shortfall: self.shortfall(memory, owner, image, &err).await,
                    });
                }
                TaskProgress::Preparing => {
                    deadline = deadline.max(started + IMAGE_PULL_TIMEOUT);
                }
                TaskProgress::Waiting | TaskProgress::Running(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Container {
                    action: "wait for",
                    session_id: session_id.to_string(),
                    detail: format!("its task did not get going within {:?}", deadline - started),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The task's address on its network, from Docker's DNS inside the server's container.
    pub(super) async fn resolve_task(
        &self,
        service: &str,
        session_id: &str,
    ) -> Result<String, RuntimeError> {
        let deadline = tokio::time::Instant::now() + DNS_TIMEOUT;
        let name = format!("tasks.{service}");
        loop {
            if let Ok(mut addresses) = tokio::net::lookup_host((name.as_str(), 0)).await
                && let Some(address) = addresses.next()
            {
                return Ok(address.ip().to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Container {
                    action: "find the address of",
                    session_id: session_id.to_string(),
                    detail: format!(
                        "{name} did not resolve within {DNS_TIMEOUT:?} from the server's container"
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The container id of the service's running task, when it runs on this node.
    pub(super) async fn local_container(&self, service: &str) -> Result<String, RuntimeError> {
        let task = self
            .task(service)
            .await?
            .ok_or_else(|| RuntimeError::Engine {
                action: "find the task of",
                container: service.to_string(),
                detail: "the service has no task".to_string(),
            })?;
        let container = task
            .status
            .and_then(|s| s.container_status?.container_id)
            .unwrap_or_default();
        match self.docker.inspect_container(&container, None).await {
            Ok(_) if !container.is_empty() => Ok(container),
            _ => Err(RuntimeError::Engine {
                action: "reach the container of",
                container: service.to_string(),
                detail: format!(
                    "its task runs on another node ({}); only that node's engine reaches its container",
                    task.node_id.unwrap_or_default()
                ),
            }),
        }
    }
}
