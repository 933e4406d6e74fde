//! Session tools: create, switch, list and delete sessions. They call the registry and report
//! what it did; a client's current session is state of its connection.

use std::collections::BTreeMap;

use rmcp::handler::server::wrapper::Json;
use rmcp::{tool, tool_router};

use super::{KernelboxServer, Refusal, metadata, now, parse_session_id, registry_error};
use crate::egress::Allowlist;
use crate::mcp::params::{
    CreateSessionParams, DeleteSessionParams, Parameters, SwitchSessionParams,
};
use crate::mcp::results::{
    CreateSessionResult, DeleteSessionResult, ListSessionsResult, ListTemplatesResult,
    SessionSummary, SwitchSessionResult, TemplateSummary,
};
use crate::session::SessionId;
use crate::sessions::{SessionRequest, TemplateStatus};
use crate::templates;
use crate::units::cpus_of_nano;

#[tool_router(router = session_tools, vis = "pub(super)")]
impl KernelboxServer {
    #[tool(
        description = "Create a new isolated session: its own kernel in its own container, with its own workspace. It does not become the current session; pass its id or call switch_session."
    )]
    async fn create_session(
        &self,
        Parameters(params): Parameters<CreateSessionParams>,
    ) -> Result<Json<CreateSessionResult>, Refusal> {
        let id = params
            .session_id
            .as_deref()
            .map(parse_session_id)
            .transpose()?;
        let session = self
            .sessions
            .create(
                id,
                self.tenant()?,
                SessionRequest {
                    description: params.description,
                    egress: params.egress,
                    egress_allow: Allowlist::new(params.egress_allow),
                    memory: params.memory,
                    cpus: params.cpus,
                    pids: params.pids_limit,
                    template: params.template,
                },
            )
            .await
            .map_err(registry_error)?;
        Ok(Json(CreateSessionResult {
            session_id: session.id.to_string(),
            status: "created".to_string(),
            metadata: metadata(&session),
            timestamp: now(),
        }))
    }

    #[tool(
        description = "Make a session this client's current one: later calls without session_id use it. Over MCP 2026-07-28 (no connections) the current session belongs to your identity (your token's tenant, or the one local identity without tokens), shared by all its clients; before 2026-07-28 it belongs to the connection."
    )]
    async fn switch_session(
        &self,
        Parameters(params): Parameters<SwitchSessionParams>,
    ) -> Result<Json<SwitchSessionResult>, Refusal> {
        let session = self.session(Some(&params.session_id))?;
        let previous = std::mem::replace(
            &mut *self.current().lock().expect("current session lock"),
            session.id.clone(),
        );
        Ok(Json(SwitchSessionResult {
            previous_session: previous.to_string(),
            current_session: session.id.to_string(),
            status: "switched".to_string(),
            timestamp: now(),
        }))
    }

    #[tool(
        description = "List the kernel templates you may create sessions from (create_session's template): name, language, description, the caps their kernels get, and status (ready, checking, or broken with the problem: the server checks each template's image at start). run_python_code runs a cell in any template's language; list_variables, install_dependencies, restart_kernel with preserve_state and notebook datasets need a Python template."
    )]
    async fn list_templates(&self) -> Result<Json<ListTemplatesResult>, Refusal> {
        let templates = self
            .sessions
            .templates(self.tenant()?)
            .into_iter()
            .map(|(name, template, limits)| {
                let (status, problem) = match self.sessions.template_status(&name) {
                    TemplateStatus::Checking => ("checking", None),
                    TemplateStatus::Ready => ("ready", None),
                    TemplateStatus::Broken(problem) => ("broken", Some(problem)),
                };
                TemplateSummary {
                    name,
                    language: template.language.clone(),
                    description: template.description.clone(),
                    memory_mb: (limits.memory_bytes >> 20) as f64,
                    cpus: cpus_of_nano(limits.nano_cpus),
                    pids_limit: limits.pids,
                    status: status.to_string(),
                    problem,
                }
            })
            .collect();
        Ok(Json(ListTemplatesResult {
            templates,
            default_template: templates::DEFAULT.to_string(),
        }))
    }

    #[tool(description = "List your sessions with their state, execution counts and metadata.")]
    async fn list_sessions(&self) -> Result<Json<ListSessionsResult>, Refusal> {
        let current = self.current_session_id();
        let mut sessions = BTreeMap::new();
        for session in self.sessions.list(&self.tenant()?.name) {
            let uptime = session.kernel_uptime().await;
            let stats = session.stats();
            sessions.insert(
                session.id.to_string(),
                SessionSummary {
                    active: uptime.is_some(),
                    current: session.id == current,
                    busy: session.is_busy(),
                    egress: session.egress,
                    egress_allow: session
                        .egress_allow
                        .rules()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    execution_count: stats.execution_count,
                    uptime: uptime.unwrap_or(0.0),
                    metadata: metadata(&session),
                    executions: stats.executions,
                    kernel_starts: stats.kernel_starts,
                    idle_seconds: (session.idle_for().as_secs_f64() * 10.0).round() / 10.0,
                    expires_in_seconds: self
                        .sessions
                        .expires_in(&session)
                        .map(|left| left.as_secs_f64().round()),
                },
            );
        }
        Ok(Json(ListSessionsResult {
            total_sessions: sessions.len(),
            sessions,
            active_session: current.to_string(),
            max_sessions: self.sessions.max_sessions(),
            timestamp: now(),
        }))
    }

    #[tool(
        description = "Delete a session: its kernel container is removed. Its workspace is kept unless remove_workspace is true. Deleting your current session makes 'default' current again."
    )]
    async fn delete_session(
        &self,
        Parameters(params): Parameters<DeleteSessionParams>,
    ) -> Result<Json<DeleteSessionResult>, Refusal> {
        let id = parse_session_id(&params.session_id)?;
        self.sessions
            .delete(&id, &self.tenant()?.name, params.remove_workspace)
            .await
            .map_err(registry_error)?;
        let mut current = self.current().lock().expect("current session lock");
        let was_active = *current == id;
        if was_active {
            *current = SessionId::default_id();
        }
        Ok(Json(DeleteSessionResult {
            session_id: id.to_string(),
            status: "deleted".to_string(),
            was_active,
            workspace_removed: params.remove_workspace,
            new_active_session: was_active.then(|| current.to_string()),
            timestamp: now(),
        }))
    }
}
