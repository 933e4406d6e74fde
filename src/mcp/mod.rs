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

pub use server::{KernelboxServer, ToolConfig};
