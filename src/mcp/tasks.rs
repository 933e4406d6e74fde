//! Tasks (the MCP Tasks extension, SEP-2663): a long tool call answered at once with a task
//! handle, run on without its request or its connection, polled, cancelled and fetched later.
//! This file owns the task store: whose each task is, its state and its output so far, the
//! cancel signal, the cap on open tasks per tenant, and dropping ended tasks past their
//! retention. It runs no code itself and never touches a kernel: the tool router hands it the
//! call's future, and a cancel only fires the call's stop token (a cell is stopped with the
//! timeout's interrupt ladder, so the kernel and its variables stay; a script is killed with
//! what it started; an installer's container is removed).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, DetailedTask, GetTaskResult, JsonObject, MetaObject,
    Task, TaskPayload, TaskStatus,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often clients are asked to poll a task.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The most of a task's output kept for `tasks/get` (the newest part): with the rest of a
/// `tasks/get` answer it stays under the 1 MiB a stock client accepts in one message.
const OUTPUT_KEPT: usize = 256 << 10;
/// The most of the newest output shown in a task's status message.
const STATUS_TAIL: usize = 200;
/// The `_meta` key under which `tasks/get` carries a task's output so far.
pub const OUTPUT_META_KEY: &str = "kernelbox/output";

/// Whether this call may run as a task: running code, scripts, installers and notebook cells,
/// the calls that can outlast a client's patience.
pub fn runs_as_task(request: &CallToolRequestParams) -> bool {
    match request.name.as_ref() {
        "run_python_code" | "run_script" | "install_dependencies" => true,
        "notebook" => request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("action"))
            .is_some_and(|action| action == "run"),
        _ => false,
    }
}

/// How long ended tasks are kept and how many may run at once per tenant.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// How long a task's result stays readable after the task ended.
    pub retention: Duration,
    /// How many tasks one tenant may have working at once.
    pub max_open_per_tenant: usize,
}

/// What a running call shares with its task: where its output so far goes, and the signal
/// that the task was cancelled. The tools find it in the request's extensions; a call that
/// is not a task has none.
#[derive(Clone, Default)]
pub struct TaskProgress {
    inner: Arc<Mutex<Progress>>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Progress {
    /// The newest output, at most `OUTPUT_KEPT` bytes of it.
    output: String,
    /// All output bytes the call produced.
    bytes: u64,
    /// What the call last said of itself, shown while it runs.
    note: Option<String>,
}

impl TaskProgress {
    /// Adds a piece of the call's output.
    pub fn record(&self, text: &str) {
        let mut progress = self.inner.lock().expect("task progress lock");
        progress.bytes += text.len() as u64;
        progress.output.push_str(text);
        if progress.output.len() > OUTPUT_KEPT {
            let cut = progress.output.len() - OUTPUT_KEPT;
            let cut = (cut..progress.output.len())
                .find(|&i| progress.output.is_char_boundary(i))
                .unwrap_or(progress.output.len());
            progress.output.drain(..cut);
        }
    }

    /// Says what the call is doing, for the task's status message.
    pub fn note(&self, note: impl Into<String>) {
        self.inner.lock().expect("task progress lock").note = Some(note.into());
    }

    /// Fired when the task is cancelled.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// The output so far as `tasks/get` shows it, and a one-line summary.
    fn snapshot(&self, running_for: Duration) -> (Value, String) {
        let progress = self.inner.lock().expect("task progress lock");
        let kept = progress.output.len() as u64;
        let meta = json!({
            "text": progress.output,
            "bytes": progress.bytes,
            "omitted_bytes": progress.bytes - kept,
        });
        let mut summary = format!(
            "running for {} s; {} bytes of output so far",
            running_for.as_secs(),
            progress.bytes
        );
        if let Some(note) = &progress.note {
            summary.push_str("; ");
            summary.push_str(note);
        }
        let tail = last_chars(progress.output.trim_end(), STATUS_TAIL);
        if !tail.is_empty() {
            summary.push_str("; last output: ");
            summary.push_str(tail);
        }
        (meta, summary)
    }
}

fn last_chars(text: &str, max: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .nth(max.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    &text[start..]
}

/// How a task ended.
enum Ended {
    Completed(JsonObject),
    Failed(JsonObject),
    Cancelled,
}

struct Entry {
    owner: String,
    tool: String,
    created_at: DateTime<Utc>,
    created: Instant,
    updated_at: DateTime<Utc>,
    progress: TaskProgress,
    ended: Option<(Ended, Instant)>,
}

impl Entry {
    fn status(&self) -> TaskStatus {
        match &self.ended {
            None => TaskStatus::Working,
            Some((Ended::Completed(_), _)) => TaskStatus::Completed,
            Some((Ended::Failed(_), _)) => TaskStatus::Failed,
            Some((Ended::Cancelled, _)) => TaskStatus::Cancelled,
        }
    }

    /// Milliseconds from creation the task may be kept: while it works, retention past now;
    /// once it ended, retention past its end.
    fn ttl_ms(&self, retention: Duration) -> u64 {
        let end = self.ended.as_ref().map_or_else(Instant::now, |(_, at)| *at);
        (end.duration_since(self.created) + retention).as_millis() as u64
    }

    fn task(&self, id: &str, retention: Duration) -> Task {
        let mut task = Task::new(
            id,
            self.status(),
            self.created_at.to_rfc3339(),
            self.updated_at.to_rfc3339(),
        )
        .with_ttl_ms(self.ttl_ms(retention))
        .with_poll_interval_ms(POLL_INTERVAL.as_millis() as u64);
        let (_, summary) = self.progress.snapshot(self.created.elapsed());
        task.status_message = Some(match &self.ended {
            None if self.progress.stop.is_cancelled() => {
                format!("cancel requested; {} is stopping: {summary}", self.tool)
            }
            None => format!("{}: {summary}", self.tool),
            Some((Ended::Cancelled, _)) => format!("{} was cancelled", self.tool),
            Some((Ended::Failed(_), _)) => format!("{} failed", self.tool),
            Some((Ended::Completed(_), _)) => format!("{} finished", self.tool),
        });
        task
    }
}

/// Every task of this server, whatever connection started it.
pub struct TaskStore {
    config: TaskConfig,
    entries: Mutex<HashMap<String, Entry>>,
    tracker: TaskTracker,
    /// Stops every task still working when the server shuts down.
    shutdown: CancellationToken,
}

impl TaskStore {
    /// A store whose tasks run on `tracker` and are stopped when `shutdown` fires.
    pub fn new(config: TaskConfig, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            config,
            entries: Mutex::new(HashMap::new()),
            tracker,
            shutdown,
        }
    }

    /// What a call about to run as a task reports to; a cancel or the server's shutdown
    /// stops it.
    pub fn progress(&self) -> TaskProgress {
        TaskProgress {
            inner: Arc::default(),
            stop: self.shutdown.child_token(),
        }
    }

    /// Starts `call` as a task of `owner` and returns its handle; `progress` is what the call
    /// reports to. Refused when the owner has as many open tasks as allowed.
    pub fn start<F>(
        self: &Arc<Self>,
        owner: &str,
        tool: &str,
        progress: TaskProgress,
        call: F,
    ) -> Result<Task, ErrorData>
    where
        F: Future<Output = Result<CallToolResponse, ErrorData>> + Send + 'static,
    {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = Utc::now();
        let task = {
            let mut entries = self.entries.lock().expect("task store lock");
            self.drop_expired(&mut entries);
            let open = entries
                .values()
                .filter(|entry| entry.owner == owner && entry.ended.is_none())
                .count();
            if open >= self.config.max_open_per_tenant {
                return Err(ErrorData::invalid_request(
                    format!(
                        "{open} tasks of this tenant are still working, the most allowed (--max-tasks-per-tenant {}); wait for one to end or cancel one with tasks/cancel",
                        self.config.max_open_per_tenant
                    ),
                    None,
                ));
            }
            let entry = Entry {
                owner: owner.to_string(),
                tool: tool.to_string(),
                created_at: now,
                created: Instant::now(),
                updated_at: now,
                progress,
                ended: None,
            };
            let task = entry.task(&id, self.config.retention);
            entries.insert(id.clone(), entry);
            task
        };
        tracing::info!(task_id = %id, tool, owner, "task started");
        let store = self.clone();
        self.tracker.spawn(async move {
            let ended = match call.await {
                Ok(CallToolResponse::Complete(result)) => match serde_json::to_value(result) {
                    Ok(Value::Object(result)) => Ended::Completed(result),
                    _ => Ended::Failed(error_object(&ErrorData::internal_error(
                        "the tool's result could not be encoded",
                        None,
                    ))),
                },
                Ok(_) => Ended::Failed(error_object(&ErrorData::internal_error(
                    "the tool asked for input, which a task cannot give it",
                    None,
                ))),
                Err(error) => Ended::Failed(error_object(&error)),
            };
            store.finish(&id, ended);
        });
        Ok(task)
    }

    fn finish(&self, id: &str, ended: Ended) {
        let mut entries = self.entries.lock().expect("task store lock");
        if let Some(entry) = entries.get_mut(id) {
            // A cancelled task ends cancelled, however its call ended; its output so far stays.
            let ended = match ended {
                Ended::Completed(_) if entry.progress.stop.is_cancelled() => Ended::Cancelled,
                ended => ended,
            };
            entry.updated_at = Utc::now();
            entry.ended = Some((ended, Instant::now()));
            tracing::info!(task_id = %id, status = ?entry.status(), "task ended");
        }
    }

    /// `tasks/get`: the task's state, its output so far under `_meta`, and its result once
    /// it ended.
    pub fn get(&self, owner: &str, id: &str) -> Result<GetTaskResult, ErrorData> {
        let mut entries = self.entries.lock().expect("task store lock");
        self.drop_expired(&mut entries);
        let entry = self.owned(&entries, owner, id)?;
        let task = entry.task(id, self.config.retention);
        let payload = match &entry.ended {
            None => TaskPayload::Working,
            Some((Ended::Completed(result), _)) => TaskPayload::Completed {
                result: result.clone(),
            },
            Some((Ended::Failed(error), _)) => TaskPayload::Failed {
                error: error.clone(),
            },
            Some((Ended::Cancelled, _)) => TaskPayload::Cancelled,
        };
        // A completed task's result holds its output (cut to fit); beside it, the output so
        // far would only take room from the 1 MiB a stock client accepts.
        let completed = matches!(payload, TaskPayload::Completed { .. });
        let mut result = GetTaskResult::new(DetailedTask::new(task, payload));
        if !completed {
            let (output, _) = entry.progress.snapshot(entry.created.elapsed());
            let mut meta = JsonObject::new();
            meta.insert(OUTPUT_META_KEY.to_string(), output);
            result.meta = Some(MetaObject(meta));
        }
        Ok(result)
    }

    /// `tasks/update`: kernelbox's tasks never ask for input, so there is nothing to take;
    /// the task must still be the caller's.
    pub fn update(&self, owner: &str, id: &str) -> Result<(), ErrorData> {
        let mut entries = self.entries.lock().expect("task store lock");
        self.drop_expired(&mut entries);
        self.owned(&entries, owner, id).map(drop)
    }

    /// `tasks/cancel`: stops a working task (its cell is interrupted; the kernel stays).
    pub fn cancel(&self, owner: &str, id: &str) -> Result<(), ErrorData> {
        let mut entries = self.entries.lock().expect("task store lock");
        self.drop_expired(&mut entries);
        let entry = self.owned(&entries, owner, id)?;
        if entry.ended.is_some() {
            return Err(ErrorData::invalid_params(
                format!(
                    "task {id} already ended ({:?}); only a working task can be cancelled",
                    entry.status()
                ),
                None,
            ));
        }
        entry.progress.stop.cancel();
        tracing::info!(task_id = %id, tool = %entry.tool, "task cancel requested");
        Ok(())
    }

    /// The task, if it exists and belongs to `owner`: another tenant's task is as unknown as
    /// one that never existed.
    fn owned<'a>(
        &self,
        entries: &'a HashMap<String, Entry>,
        owner: &str,
        id: &str,
    ) -> Result<&'a Entry, ErrorData> {
        entries
            .get(id)
            .filter(|entry| entry.owner == owner)
            .ok_or_else(|| {
                let shown: String = id.chars().take(80).collect();
                ErrorData::invalid_params(
                    format!(
                        "no task {shown:?} here: it never existed, belongs to another tenant, or ended more than {} s ago (--task-retention)",
                        self.config.retention.as_secs()
                    ),
                    None,
                )
            })
    }

    fn drop_expired(&self, entries: &mut HashMap<String, Entry>) {
        let retention = self.config.retention;
        entries.retain(|_, entry| {
            entry
                .ended
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() < retention)
        });
    }

    /// Drops ended tasks past their retention until `cancel` fires, so their results do not
    /// stay in memory waiting for a client to ask.
    pub async fn sweep(self: Arc<Self>) {
        let every =
            (self.config.retention / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    let mut entries = self.entries.lock().expect("task store lock");
                    self.drop_expired(&mut entries);
                }
            }
        }
    }
}

fn error_object(error: &ErrorData) -> JsonObject {
    match serde_json::to_value(error) {
        Ok(Value::Object(object)) => object,
        _ => JsonObject::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_kept_size_keeps_its_newest_part_and_counts_all() {
        let progress = TaskProgress::default();
        progress.record(&"é".repeat(OUTPUT_KEPT));
        progress.record("end");
        let (meta, summary) = progress.snapshot(Duration::from_secs(3));
        let text = meta["text"].as_str().unwrap();
        assert!(text.len() <= OUTPUT_KEPT && text.ends_with("end"));
        assert_eq!(meta["bytes"], json!(2 * OUTPUT_KEPT as u64 + 3));
        assert!(summary.starts_with("running for 3 s;"), "{summary}");
        assert!(summary.ends_with("end"), "{summary}");
    }

    #[test]
    fn only_code_running_calls_are_tasks() {
        let call = |name: &'static str, arguments: Value| {
            CallToolRequestParams::new(name).with_arguments(arguments.as_object().unwrap().clone())
        };
        assert!(runs_as_task(&call("run_python_code", json!({"code": "1"}))));
        assert!(runs_as_task(&call("notebook", json!({"action": "run"}))));
        assert!(!runs_as_task(&call("notebook", json!({"action": "cells"}))));
        assert!(!runs_as_task(&call("list_files", json!({}))));
    }
}
