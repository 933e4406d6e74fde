//! Tool arguments as the agent sends them. Field docs are what the agent reads.

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunPythonCodeParams {
    /// Python source to execute in the session's persistent kernel.
    pub code: String,
    /// Session to run in; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Seconds to wait before interrupting the cell (default 30; the server sets the maximum).
    #[serde(default)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionParams {
    /// Id for the new session (1-64 of A-Z a-z 0-9 _ -); generated when omitted.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Free text kept with the session and shown by list_sessions.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchSessionParams {
    /// Session that later calls without a session_id use.
    pub session_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteSessionParams {
    /// Session to end; its container is removed.
    pub session_id: String,
    /// Also delete the session's workspace files (default false: they are kept).
    #[serde(default)]
    pub remove_workspace: bool,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionParams {
    /// Session to act on; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}
