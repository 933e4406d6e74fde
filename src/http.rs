//! The HTTP face: MCP over streamable HTTP at `/mcp` and `/healthz`, in one axum router.
//! Each MCP session gets its own tool handler, so each client has its own current session.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::mcp::{KernelboxServer, ToolConfig};
use crate::runtime::{RuntimeHealth, SharedRuntime};
use crate::sessions::Sessions;

/// The owner of every session until authentication names tenants.
pub const LOCAL_OWNER: &str = "local";

/// Largest MCP request body accepted.
const MAX_REQUEST_BYTES: usize = 8 << 20;

pub fn router(
    sessions: Arc<Sessions>,
    limits: Arc<ToolConfig>,
    runtime: SharedRuntime,
    allowed_hosts: Vec<String>,
    cancel: CancellationToken,
) -> axum::Router {
    let mcp = StreamableHttpService::new(
        move || {
            Ok(KernelboxServer::new(
                sessions.clone(),
                limits.clone(),
                LOCAL_OWNER.to_string(),
            ))
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(allowed_hosts)
            .with_max_request_body_bytes(MAX_REQUEST_BYTES)
            .with_cancellation_token(cancel),
    );
    axum::Router::new()
        .nest_service("/mcp", mcp)
        .route("/healthz", get(healthz))
        .with_state(runtime)
}

async fn healthz(State(runtime): State<SharedRuntime>) -> (StatusCode, Json<RuntimeHealth>) {
    let health = runtime.health().await;
    let status = if health.engine_reachable && health.image_present {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}
