//! The MCP face of kernelbox: tool argument types in, result types out, served by rmcp over
//! stdio or streamable HTTP. Tools stay thin: validate, call `sessions`, map the outcome.
//! Wrong requests become `invalid_params` errors naming the field; work that ran and failed
//! (an exception, a timeout, a dead kernel) is a normal result with `status` and `isError`.
//! Nothing here touches Docker or ZeroMQ.

mod fit;
pub(crate) mod params;
pub(crate) mod resources;
mod results;
mod server;
mod tasks;

use std::sync::Arc;

pub use server::{KernelboxServer, ToolConfig};
pub use tasks::{TaskConfig, TaskStore};

use crate::sessions::Sessions;

/// What every MCP connection shares: the sessions, the bounds on tool calls, and the tasks,
/// which outlive the connection that started them.
#[derive(Clone)]
pub struct Services {
    pub sessions: Arc<Sessions>,
    pub tools: Arc<ToolConfig>,
    pub tasks: Arc<TaskStore>,
}
