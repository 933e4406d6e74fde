//! The HTTP face, one axum router: MCP over streamable HTTP at `/mcp`, `/healthz`, `/metrics`,
//! and the file routes `POST /files/upload` and `GET /files/download/{path}` for a session named
//! by the `session_id` query parameter. Every route but `/healthz` and `/metrics` passes the
//! `auth` middleware, so each request carries its tenant; those two answer without a token and
//! say nothing about any one session. Each MCP session gets its own tool handler, so each
//! client has its own current session. File routes go through the workspace's confined
//! operations like the file tools; nothing here touches a path itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Authentication, Tenant};
use crate::mcp::{KernelboxServer, Services, ToolConfig};
use crate::runtime::{RuntimeHealth, SharedRuntime};
use crate::session::{Session, SessionId};
use crate::sessions::{RegistryError, Sessions, TemplateStatus, WorkspaceQuota};
use crate::workspace::WorkspaceError;

/// Room for base64 (4/3) and JSON around the largest file write.
fn mcp_body_limit(max_write_bytes: usize) -> usize {
    (max_write_bytes / 3 * 4 + (1 << 20)).max(8 << 20)
}

#[derive(Clone)]
struct AppState {
    sessions: Arc<Sessions>,
    limits: Arc<ToolConfig>,
    runtime: SharedRuntime,
}

pub fn router(
    services: Services,
    runtime: SharedRuntime,
    authentication: Authentication,
    allowed_hosts: Vec<String>,
    cancel: CancellationToken,
) -> axum::Router {
    let body_limit = mcp_body_limit(services.tools.max_write_bytes);
    let sessions = services.sessions.clone();
    let limits = services.tools.clone();
    let mcp = {
        StreamableHttpService::new(
            move || Ok(KernelboxServer::new(services.clone(), None)),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_allowed_hosts(allowed_hosts)
                .with_max_request_body_bytes(body_limit)
                .with_cancellation_token(cancel),
        )
    };
    let upload_limit = limits.max_write_bytes + (1 << 20);
    let mcp = axum::Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn(session_ended));
    let identified = axum::Router::new()
        .merge(mcp)
        .route(
            "/files/upload",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/files/download/{*path}", get(download))
        .layer(axum::middleware::from_fn_with_state(
            authentication,
            auth::identify,
        ));
    identified
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            sessions,
            limits,
            runtime,
        })
}

/// rmcp answers a `DELETE /mcp` that ended the MCP session with 202 Accepted, which the Python
/// SDK (and fastmcp) log as a failed termination: they expect 200 or 204. The session is gone
/// when the answer leaves, so it is 204 No Content. Other answers (a POSTed notification's
/// 202 among them) pass as they are.
async fn session_ended(request: Request, next: Next) -> Response {
    let delete = request.method() == Method::DELETE;
    let mut response = next.run(request).await;
    if delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
        *response.body_mut() = Body::empty();
    }
    response
}

/// `/healthz`: the engine's health, how workspace quotas are held, and each template's
/// start-time check. A broken template does not make the server unhealthy: the others serve.
#[derive(Debug, Serialize)]
struct Health {
    #[serde(flatten)]
    runtime: RuntimeHealth,
    workspace_quota: WorkspaceQuota,
    templates: BTreeMap<String, TemplateStatus>,
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let runtime = state.runtime.health().await;
    let status = if runtime.engine_reachable && runtime.image_present {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let workspace_quota = state.sessions.workspace_quota();
    (
        status,
        Json(Health {
            runtime,
            workspace_quota,
            templates: state.sessions.template_statuses(),
        }),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.sessions.render_metrics().await,
    )
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    session_id: Option<String>,
}

/// A refused or failed file request: a status and a message naming what was wrong.
struct FileError(StatusCode, String);

impl IntoResponse for FileError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<WorkspaceError> for FileError {
    fn from(error: WorkspaceError) -> Self {
        let status = match &error {
            WorkspaceError::NotFound { .. } => StatusCode::NOT_FOUND,
            WorkspaceError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WorkspaceError::QuotaExceeded { .. } => StatusCode::INSUFFICIENT_STORAGE,
            WorkspaceError::Unavailable { .. }
            | WorkspaceError::Io { .. }
            | WorkspaceError::Prepare { .. }
            | WorkspaceError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        FileError(status, error.to_string())
    }
}

fn session(
    state: &AppState,
    tenant: &Tenant,
    query: &SessionQuery,
) -> Result<Arc<Session>, FileError> {
    let id = query.session_id.as_deref().unwrap_or(SessionId::DEFAULT);
    let id = SessionId::parse(id).map_err(|e| FileError(StatusCode::BAD_REQUEST, e))?;
    state
        .sessions
        .get_or_default(&id, tenant)
        .map_err(|error| match error {
            RegistryError::Unknown(_) => FileError(StatusCode::NOT_FOUND, error.to_string()),
            other => FileError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })
}

async fn run_blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(operation)
        .await
        .map_err(|e| FileError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(FileError::from)
}

/// `POST /files/upload?session_id=...`, multipart field `file`: saved as `uploads/<name>`.
async fn upload(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Query(query): Query<SessionQuery>,
    mut form: Multipart,
) -> Result<Json<serde_json::Value>, FileError> {
    let session = session(&state, &tenant, &query)?;
    let bad_request = |message: String| FileError(StatusCode::BAD_REQUEST, message);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad_request(format!("the upload is not valid multipart data: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field
            .file_name()
            .and_then(|n| n.rsplit(['/', '\\']).next())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .ok_or_else(|| bad_request("the file field needs a file name".to_string()))?
            .to_string();
        let bytes = field.bytes().await.map_err(|e| {
            FileError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "reading the upload failed ({e}); files may be at most {} bytes",
                    state.limits.max_write_bytes
                ),
            )
        })?;
        let size = bytes.len();
        let workspace = session.workspace().clone();
        let limit = state.limits.max_write_bytes;
        let target = format!("uploads/{name}");
        let path = run_blocking(move || workspace.write(&target, &bytes, limit)).await?;
        return Ok(Json(json!({
            "filename": name,
            "path": path,
            "size": size,
            "session_id": session.id.to_string(),
        })));
    }
    Err(bad_request(
        "the form has no field named file; send the file as multipart field `file`".to_string(),
    ))
}

/// `GET /files/download/{path}?session_id=...`: the file's bytes, streamed.
async fn download(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(path): Path<String>,
    Query(query): Query<SessionQuery>,
) -> Result<Response, FileError> {
    let session = session(&state, &tenant, &query)?;
    let workspace = session.workspace().clone();
    let requested = path.clone();
    let (file, size) = run_blocking(move || workspace.open_read(&requested)).await?;
    let name = path
        .rsplit('/')
        .next()
        .unwrap_or("download")
        .replace('"', "");
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
