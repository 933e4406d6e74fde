//! Waiting on a condition under a deadline, instead of sleeping and hoping.

use std::future::Future;
use std::time::Duration;

use serde_json::json;

use super::mcp::{Client, call, structured};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(100);

/// Checks `condition` until it holds, at most `within`; says whether it held. The caller
/// asserts on the answer, with a message naming what it waited for.
pub async fn wait_until<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the server holds a cell of `session_id` as running (`list_sessions` shows it
/// `busy`: the session's queue is taken), at most 30 s.
pub async fn wait_until_running(client: &Client, session_id: &str) {
    let running = wait_until(Duration::from_secs(30), || async {
        let listed = structured(&call(client, "list_sessions", json!({})).await);
        listed["sessions"][session_id]["busy"] == true
    })
    .await;
    assert!(running, "no cell of {session_id} ever showed as running");
}
