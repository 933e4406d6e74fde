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

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartKernelParams {
    /// Session to restart; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Carry picklable variables over to the new kernel (default false).
    #[serde(default)]
    pub preserve_state: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionParams {
    /// The code to complete in.
    pub code: String,
    /// Cursor position in `code`, in characters.
    pub cursor_pos: usize,
    /// Session to ask; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectParams {
    /// The code containing the object to inspect.
    pub code: String,
    /// Cursor position in `code`, in characters.
    pub cursor_pos: usize,
    /// 0 for the signature and docstring, 1 to add the source.
    #[serde(default)]
    pub detail_level: usize,
    /// Session to ask; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsivenessParams {
    /// Seconds to wait for the kernel's answer (default 5).
    #[serde(default = "default_responsiveness_timeout")]
    pub timeout: f64,
    /// Session to check; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

fn default_responsiveness_timeout() -> f64 {
    5.0
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunScriptParams {
    /// Workspace-relative path of the Python script, for example scripts/job.py.
    pub path: String,
    /// Command-line arguments for the script.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Seconds before the script is killed (default 120).
    #[serde(default = "default_script_timeout")]
    pub timeout: f64,
    /// Session whose container runs the script; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

fn default_script_timeout() -> f64 {
    120.0
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallParams {
    /// Package specifiers such as requests or pandas>=2,<3 (no pip options, URLs or paths).
    pub packages: Vec<String>,
    /// Session to install into; defaults to this client's current session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Tool arguments, parsed so that an error names the offending field (`code: invalid type:
/// integer, expected a string`), which serde alone does not. Named `Parameters` so rmcp's
/// `#[tool]` macro derives the input schema from `T`. The message keeps rmcp's prefix, so the
/// router reports it as a tool error the model can read and correct.
pub struct Parameters<T>(pub T);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T>
    rmcp::handler::server::common::FromContextPart<
        rmcp::handler::server::tool::ToolCallContext<'_, S>,
    > for Parameters<T>
where
    T: serde::de::DeserializeOwned,
{
    fn from_context_part(
        context: &mut rmcp::handler::server::tool::ToolCallContext<'_, S>,
    ) -> Result<Self, rmcp::ErrorData> {
        let arguments = serde_json::Value::Object(context.arguments.take().unwrap_or_default());
        serde_path_to_error::deserialize(arguments)
            .map(Parameters)
            .map_err(|error| {
                let field = error.path().to_string();
                let message = if field == "." {
                    format!("failed to deserialize parameters: {}", error.inner())
                } else {
                    format!(
                        "failed to deserialize parameters: {field}: {}",
                        error.inner()
                    )
                };
                rmcp::ErrorData::invalid_params(message, None)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
        serde_path_to_error::deserialize::<_, T>(value)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    #[test]
    fn wrong_types_name_the_field() {
        let error = parse::<RunPythonCodeParams>(serde_json::json!({"code": 5})).unwrap_err();
        assert!(error.starts_with("code:"), "{error}");
        let error =
            parse::<RunPythonCodeParams>(serde_json::json!({"code": "1", "timeout": "soon"}))
                .unwrap_err();
        assert!(error.starts_with("timeout:"), "{error}");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let error = parse::<RunPythonCodeParams>(serde_json::json!({})).unwrap_err();
        assert!(error.contains("missing field `code`"), "{error}");
        let error =
            parse::<RunPythonCodeParams>(serde_json::json!({"code": "1", "sesion_id": "x"}))
                .unwrap_err();
        assert!(error.contains("unknown field `sesion_id`"), "{error}");
    }
}
