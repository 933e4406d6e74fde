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
    CallToolRequestParams, CallToolResponse, DetailedTask, Extensions, GetTaskResult, JsonObject,
    MetaObject, Task, TaskPayload, TaskStatus,
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
/// Ended tasks kept per tenant: past this, the oldest results go before their retention
/// ends, so a tenant ending tasks in a loop cannot fill the server's memory.
const ENDED_KEPT_PER_TENANT: usize = 100;
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

/// The task a tool call runs as, if it is one, and the token that stops the call (one that
/// never fires when the call is not a task).
pub fn running_task(extensions: &Extensions) -> (Option<&TaskProgress>, CancellationToken) {
    let task = extensions.get::<TaskProgress>();
    let stop = task.map(|task| task.stop().clone()).unwrap_or_default();
    (task, stop)
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

    /// The output so far as `tasks/get` shows it under `_meta`.
    fn output(&self) -> Value {
        let progress = self.inner.lock().expect("task progress lock");
        json!({
            "text": progress.output,
            "bytes": progress.bytes,
            "omitted_bytes": progress.bytes - progress.output.len() as u64,
        })
    }

    /// A line saying how long the call has run, what it said of itself, and its newest output.
    fn summary(&self, running_for: Duration) -> String {
        let progress = self.inner.lock().expect("task progress lock");
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
        summary
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
        let summary = self.progress.summary(self.created.elapsed());
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
            let owner = entry.owner.clone();
            drop_oldest_ended(&mut entries, &owner);
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
            let mut meta = JsonObject::new();
            meta.insert(OUTPUT_META_KEY.to_string(), entry.progress.output());
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

/// Drops `owner`'s oldest ended tasks past [`ENDED_KEPT_PER_TENANT`].
fn drop_oldest_ended(entries: &mut HashMap<String, Entry>, owner: &str) {
    let mut ended: Vec<(Instant, String)> = entries
        .iter()
        .filter(|(_, entry)| entry.owner == owner)
        .filter_map(|(id, entry)| Some((entry.ended.as_ref()?.1, id.clone())))
        .collect();
    if ended.len() <= ENDED_KEPT_PER_TENANT {
        return;
    }
    ended.sort();
    for (_, id) in &ended[..ended.len() - ENDED_KEPT_PER_TENANT] {
        entries.remove(id);
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
        let (meta, summary) = (progress.output(), progress.summary(Duration::from_secs(3)));
        let text = meta["text"].as_str().unwrap();
        assert!(text.len() <= OUTPUT_KEPT && text.ends_with("end"));
        assert_eq!(meta["bytes"], json!(2 * OUTPUT_KEPT as u64 + 3));
        assert!(summary.starts_with("running for 3 s;"), "{summary}");
        assert!(summary.ends_with("end"), "{summary}");
    }

    fn store(retention: Duration, max_open: usize) -> Arc<TaskStore> {
        Arc::new(TaskStore::new(
            TaskConfig {
                retention,
                max_open_per_tenant: max_open,
            },
            TaskTracker::new(),
            CancellationToken::new(),
        ))
    }

    fn done(text: &'static str) -> impl Future<Output = Result<CallToolResponse, ErrorData>> {
        std::future::ready(Ok(CallToolResponse::Complete(
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(text)]),
        )))
    }

    async fn wait_ended(store: &TaskStore, owner: &str, id: &str) -> GetTaskResult {
        for _ in 0..200 {
            let task = store.get(owner, id).unwrap();
            if task.task.status().is_terminal() {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("task {id} did not end");
    }

    #[tokio::test]
    async fn a_task_is_its_owners_alone_and_ends_with_its_result() {
        let store = store(Duration::from_secs(60), 4);
        let task = store
            .start("alice", "run_python_code", store.progress(), done("2"))
            .unwrap();
        let ended = wait_ended(&store, "alice", &task.task_id).await;
        assert!(
            matches!(&ended.task.payload, TaskPayload::Completed { result } if result["content"][0]["text"] == "2")
        );
        assert!(
            ended.meta.is_none(),
            "a completed task's output is its result"
        );
        for refused in [
            store.get("bob", &task.task_id).map(drop),
            store.cancel("bob", &task.task_id),
            store.update("bob", &task.task_id),
        ] {
            assert!(refused.unwrap_err().message.contains("no task"));
        }
        let again = store.cancel("alice", &task.task_id).unwrap_err();
        assert!(again.message.contains("already ended"), "{again:?}");
    }

    #[tokio::test]
    async fn a_cancelled_task_ends_cancelled_with_its_output_so_far() {
        let store = store(Duration::from_secs(60), 4);
        let progress = store.progress();
        let stop = progress.stop().clone();
        let seen = progress.clone();
        let call = async move {
            seen.record("partial\n");
            stop.cancelled().await;
            Ok(CallToolResponse::Complete(
                rmcp::model::CallToolResult::success(vec![]),
            ))
        };
        let task = store.start("alice", "notebook", progress, call).unwrap();
        let working = store.get("alice", &task.task_id).unwrap();
        assert_eq!(working.task.status(), TaskStatus::Working);
        store.cancel("alice", &task.task_id).unwrap();
        let ended = wait_ended(&store, "alice", &task.task_id).await;
        assert_eq!(ended.task.status(), TaskStatus::Cancelled);
        let meta = ended.meta.unwrap();
        assert_eq!(meta.0[OUTPUT_META_KEY]["text"], "partial\n");
    }

    #[tokio::test]
    async fn working_tasks_are_capped_per_owner_and_ended_ones_expire() {
        let store = store(Duration::from_millis(50), 1);
        let blocked = store.progress();
        let stop = blocked.stop().clone();
        let waiting = async move {
            stop.cancelled().await;
            Err(ErrorData::internal_error("stopped", None))
        };
        let first = store
            .start("alice", "run_script", blocked, waiting)
            .unwrap();
        let refused = store
            .start("alice", "run_script", store.progress(), done("x"))
            .unwrap_err();
        assert!(
            refused.message.contains("--max-tasks-per-tenant 1"),
            "{refused:?}"
        );
        let other = store
            .start("bob", "run_script", store.progress(), done("x"))
            .unwrap();
        store.cancel("alice", &first.task_id).unwrap();
        let failed = wait_ended(&store, "alice", &first.task_id).await;
        assert_eq!(
            failed.task.status(),
            TaskStatus::Failed,
            "a real failure is not masked"
        );
        wait_ended(&store, "bob", &other.task_id).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(store.get("bob", &other.task_id).is_err(), "expired");
    }

    #[tokio::test]
    async fn a_tenant_keeps_only_its_newest_ended_tasks() {
        let store = store(Duration::from_secs(60), 4);
        let mut ids = Vec::new();
        for _ in 0..ENDED_KEPT_PER_TENANT + 3 {
            let task = store
                .start("alice", "run_python_code", store.progress(), done("1"))
                .unwrap();
            wait_ended(&store, "alice", &task.task_id).await;
            ids.push(task.task_id);
        }
        let kept = ids
            .iter()
            .filter(|id| store.get("alice", id).is_ok())
            .count();
        assert_eq!(kept, ENDED_KEPT_PER_TENANT);
        assert!(
            store.get("alice", &ids[0]).is_err(),
            "the oldest went first"
        );
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
