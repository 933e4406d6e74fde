//! The tool router. One `KernelboxServer` exists per MCP client connection, so each client has
//! its own current session; the session registry behind it is shared. This file holds the
//! connection's state, what every tool shares (the caller's tenant and session, the timeout
//! rule, refusals) and the MCP handler; the tools sit beside it by concern: `server/sessions.rs`
//! (create, switch, list, delete), `server/kernel.rs` (run code, restart, inspect, health,
//! install, interrupt), `server/files.rs` (workspace files and scripts) and
//! `server/notebook.rs`. Tools stay thin: parse, call `sessions` or a service, map the result.

mod files;
mod kernel;
mod notebook;
mod sessions;

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::{Implementation, ProtocolVersion, ServerCapabilities, ServerConfig};
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};

use super::Services;
use super::results::{PingResult, SessionMetadata};
use super::tasks::{TaskStore, runs_as_task};
use crate::auth::Tenant;
use crate::egress::Allowlist;
use crate::notebook::{NotebookLimits, NotebookService};
use crate::packages::PackageIndex;
use crate::session::{Session, SessionId};
use crate::sessions::{RegistryError, Sessions};

/// Bounds on what a tool call may ask for, and where packages come from.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_code_bytes: usize,
    pub package_index: PackageIndex,
    /// What the installer may reach through the egress proxy (the index's host).
    pub installer_hosts: Allowlist,
    pub install_timeout: Duration,
    /// Largest file read returned by read_file.
    pub max_read_bytes: usize,
    /// Largest file write_file, save_script and uploads may write.
    pub max_write_bytes: usize,
}

#[derive(Clone)]
pub struct KernelboxServer {
    sessions: Arc<Sessions>,
    limits: Arc<ToolConfig>,
    /// Who this MCP connection belongs to: fixed at construction over stdio, taken from the
    /// authenticated `initialize` request over HTTP. Every later request must carry it.
    tenant: Arc<OnceLock<Tenant>>,
    /// This client's current session: the connection's own (MCP before 2026-07-28), or,
    /// for requests without a connection (2026-07-28), the one its identity shares.
    current: Arc<OnceLock<Arc<Mutex<SessionId>>>>,
    notebooks: Arc<NotebookService>,
    /// Every connection's tasks: a task outlives the connection that started it.
    tasks: Arc<TaskStore>,
    tool_router: ToolRouter<Self>,
}

fn now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// A call that was refused or failed before any code ran. rmcp reports unparsable arguments
/// as an `isError` result (MCP SEP-1303: the model sees the message and corrects itself);
/// every other refusal takes the same form, so a client handles them all alike. The message
/// names the field and what is allowed.
type Refusal = String;

fn registry_error(error: RegistryError) -> Refusal {
    error.to_string()
}

fn parse_session_id(value: &str) -> Result<SessionId, Refusal> {
    SessionId::parse(value)
}

fn metadata(session: &Session) -> SessionMetadata {
    SessionMetadata {
        template: session.template.clone(),
        language: session.language().to_string(),
        description: session.description.clone(),
        created_at: session.created_at.timestamp_micros() as f64 / 1e6,
    }
}

#[tool_router(router = server_tools)]
impl KernelboxServer {
    /// A handler for one MCP connection; `tenant` is `None` when the first (authenticated)
    /// request will say who it is.
    pub fn new(services: Services, tenant: Option<Tenant>) -> Self {
        let Services {
            sessions,
            tools: limits,
            tasks,
        } = services;
        let owner = OnceLock::new();
        if let Some(tenant) = tenant {
            let _ = owner.set(tenant);
        }
        Self {
            sessions,
            tenant: Arc::new(owner),
            current: Arc::new(OnceLock::new()),
            tasks,
            notebooks: Arc::new(NotebookService::new(NotebookLimits {
                cell_timeout: limits.default_timeout,
                dataset_timeout: limits.max_timeout,
                max_code_bytes: limits.max_code_bytes,
                max_export_bytes: limits.max_write_bytes,
            })),
            tool_router: Self::server_tools()
                + Self::session_tools()
                + Self::kernel_tools()
                + Self::file_tools()
                + Self::notebook_tools(),
            limits,
        }
    }

    fn tenant(&self) -> Result<&Tenant, Refusal> {
        self.tenant.get().ok_or_else(|| {
            "this MCP connection has not said who it is; initialize first".to_string()
        })
    }

    /// Where this client's current session is kept.
    fn current(&self) -> &Mutex<SessionId> {
        self.current
            .get_or_init(|| Arc::new(Mutex::new(SessionId::default_id())))
    }

    fn current_session_id(&self) -> SessionId {
        self.current().lock().expect("current session lock").clone()
    }

    /// The named session, or the client's current one.
    fn session(&self, id: Option<&str>) -> Result<Arc<Session>, Refusal> {
        let id = match id {
            Some(id) => parse_session_id(id)?,
            None => self.current_session_id(),
        };
        self.sessions
            .get_or_default(&id, self.tenant()?)
            .map_err(registry_error)
    }

    fn timeout(&self, requested: Option<f64>) -> Result<Duration, Refusal> {
        let max = self.limits.max_timeout.as_secs_f64();
        match requested {
            None => Ok(self.limits.default_timeout),
            Some(t) if t.is_finite() && t > 0.0 && t <= max => Ok(Duration::from_secs_f64(t)),
            Some(t) => Err(format!(
                "timeout must be a number of seconds greater than 0 and at most {max}; got {t}"
            )),
        }
    }

    #[tool(description = "Health check of the MCP server.")]
    async fn ping(&self) -> Json<PingResult> {
        Json(PingResult { ok: true })
    }
}

/// The tenant the HTTP layer authenticated for this request; `None` over stdio.
fn tenant_of(context: &rmcp::service::RequestContext<RoleServer>) -> Option<&Tenant> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Tenant>())
}

impl KernelboxServer {
    /// Calls the tool, and keeps its result within one message (`fit::guard_result`).
    async fn call_guarded(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let tool = request.name.clone();
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        Ok(match self.tool_router.call(call).await? {
            rmcp::model::CallToolResponse::Complete(result) => {
                rmcp::model::CallToolResponse::Complete(super::fit::guard_result(&tool, result))
            }
            other => other,
        })
    }

    /// The connection's tenant, checked against the request's own when it has one. A
    /// request of MCP 2026-07-28 or later has no connection: it belongs to its identity (the
    /// tenant its token names, or the one local identity), and so does its current session.
    fn request_tenant(
        &self,
        context: &rmcp::service::RequestContext<RoleServer>,
    ) -> Result<&Tenant, rmcp::ErrorData> {
        let connectionless = context
            .protocol_version()
            .is_some_and(|version| version.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        if connectionless {
            if let Some(caller) = tenant_of(context) {
                let _ = self.tenant.set(caller.clone());
            }
            if let Some(tenant) = self.tenant.get() {
                let _ = self.current.set(self.sessions.current_of(&tenant.name));
            }
        }
        let owner = self.tenant.get().ok_or_else(|| {
            rmcp::ErrorData::invalid_request("initialize this MCP connection first", None)
        })?;
        match tenant_of(context) {
            Some(caller) if caller != owner => Err(rmcp::ErrorData::invalid_request(
                "this MCP session belongs to another token",
                None,
            )),
            _ => Ok(owner),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for KernelboxServer {
    #[allow(deprecated)] // logging: see `log_output`
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("kernelbox", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "A Python kernel in a sandboxed container per session. run_python_code executes code; \
             variables persist per session. Each client has its own current session ('default' \
             until switch_session); every session tool also takes session_id.",
        )
    }

    /// Binds the connection to the tenant of its authenticated `initialize` request.
    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, rmcp::ErrorData> {
        if let Some(tenant) = tenant_of(&context) {
            let _ = self.tenant.set(tenant.clone());
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    /// Every tool call must come from the connection's own tenant. A client that declared
    /// the tasks extension gets a task for a call that runs code (see `tasks::runs_as_task`):
    /// the call runs on after this answer, whatever becomes of the connection.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        mut context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let owner = self.request_tenant(&context)?.name.clone();
        let wants_task = context
            .client_capabilities()
            .is_some_and(|capabilities| capabilities.supports_tasks());
        if wants_task && runs_as_task(&request) {
            let progress = self.tasks.progress();
            context.extensions.insert(progress.clone());
            let tool = request.name.to_string();
            let server = self.clone();
            let call = async move { server.call_guarded(request, context).await };
            let task = self.tasks.start(&owner, &tool, progress, call)?;
            return Ok(rmcp::model::CreateTaskResult::new(task).into());
        }
        self.call_guarded(request, context).await
    }

    /// `tasks/get`: only the tenant that started a task sees it.
    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        self.tasks.get(&tenant.name, &request.task_id)
    }

    /// `tasks/update`: accepted from the task's tenant and ignored (no task asks for input).
    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        self.tasks.update(&tenant.name, &request.task_id)
    }

    /// `tasks/cancel`: stops the task's cell by the timeout's interrupt ladder.
    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        self.tasks.cancel(&tenant.name, &request.task_id)
    }

    /// Up to 2025-11-25 a client's current session is state of its connection; from
    /// 2026-07-28 on, of its identity (see `request_tenant`).
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(&[
            ProtocolVersion::V_2025_03_26,
            ProtocolVersion::V_2025_06_18,
            ProtocolVersion::V_2025_11_25,
            ProtocolVersion::V_2026_07_28,
        ])
    }

    async fn list_resources(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        Ok(super::resources::list(&self.sessions, &tenant.name).await)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, rmcp::ErrorData> {
        Ok(super::resources::templates())
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, rmcp::ErrorData> {
        let tenant = self.request_tenant(&context)?;
        super::resources::read(
            &self.sessions,
            &tenant.name,
            &request.uri,
            self.limits.max_read_bytes,
        )
        .await
        .map(Into::into)
    }
}
