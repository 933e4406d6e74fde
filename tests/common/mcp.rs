//! The MCP client side: a real rmcp client that records the notifications it receives, and
//! the calls tests make through it (a tool call, a refused call, running code, creating a
//! session), each returning what a user of the tool would see.

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Map, Value, json};

/// Notifications a client received: log messages and progress messages, as text. A recorder
/// `with_tasks` declares the MCP tasks extension, so long calls come back as tasks.
#[derive(Clone, Default)]
pub struct Recorder {
    pub logs: Arc<Mutex<Vec<Value>>>,
    pub progress: Arc<Mutex<Vec<String>>>,
    tasks: bool,
}

impl Recorder {
    pub fn with_tasks() -> Self {
        Self {
            tasks: true,
            ..Self::default()
        }
    }
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        if self.tasks {
            ClientConfig::new(
                ClientCapabilities::builder().enable_tasks().build(),
                Implementation::new("kernelbox-tests", "1"),
            )
        } else {
            ClientConfig::default()
        }
    }

    #[allow(deprecated)]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.logs.lock().unwrap().push(params.data);
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(message) = params.message {
            self.progress.lock().unwrap().push(message);
        }
    }
}

pub type Client = RunningService<RoleClient, Recorder>;

pub fn args(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("tool arguments must be an object"),
    }
}

/// Calls a tool and returns its result, panicking on a protocol error.
pub async fn call(client: &Client, tool: &str, arguments: Value) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments)))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed: {e}"))
}

/// Calls a tool that must be refused before doing anything: an `isError` result with no
/// structured content (as rmcp reports bad arguments). Returns the message.
pub async fn call_refused(client: &Client, tool: &str, arguments: Value) -> String {
    let result = call(client, tool, arguments).await;
    assert_eq!(
        result.is_error,
        Some(true),
        "{tool} should be refused: {result:?}"
    );
    assert!(result.structured_content.is_none(), "{result:?}");
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The structured content of a tool result.
pub fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .unwrap_or_else(|| panic!("no structured content in {result:?}"))
}

/// Runs code and returns the structured result.
pub async fn run(client: &Client, code: &str, extra: Value) -> Value {
    let mut arguments = json!({ "code": code });
    if let Value::Object(extra) = extra {
        arguments.as_object_mut().unwrap().extend(extra);
    }
    structured(&call(client, "run_python_code", arguments).await)
}

/// `{"session_id": id}` with the fields of `extra` (an object) added.
fn session_arguments(id: &str, extra: Value) -> Value {
    let mut arguments = json!({ "session_id": id });
    arguments.as_object_mut().unwrap().extend(args(extra));
    arguments
}

/// Creates session `id` with the `extra` arguments (limits, description, egress) and returns
/// the structured result, which must say it was created.
pub async fn create_session(client: &Client, id: &str, extra: Value) -> Value {
    let arguments = session_arguments(id, extra);
    let created = structured(&call(client, "create_session", arguments).await);
    assert_eq!(created["status"], "created", "{created}");
    created
}

/// Asks to create session `id` with the `extra` arguments; it must be refused before anything
/// starts. Returns the message.
pub async fn create_session_refused(client: &Client, id: &str, extra: Value) -> String {
    call_refused(client, "create_session", session_arguments(id, extra)).await
}
