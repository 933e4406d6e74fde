//! Bearer tokens and tenants over HTTP: no token, no service; another tenant's session is
//! indistinguishable from an unknown one on every tool and route; quotas hold; tokens stay
//! out of logs; unauthenticated HTTP is refused off loopback.

mod common;

use common::{
    HttpServer, call, call_refused, create_session, create_session_refused, run, structured,
};
use serde_json::json;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";

async fn server_with_tokens() -> (HttpServer, tempfile::NamedTempFile) {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tokens.path(),
        json!({"tokens": [
            {"token": ALICE, "tenant": "alice", "max_sessions": 2, "max_memory": "256m"},
            {"token": BOB, "tenant": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    let server = HttpServer::start_with(&["--tokens-file", tokens.path().to_str().unwrap()]).await;
    (server, tokens)
}

#[tokio::test]
async fn requests_without_a_valid_token_are_turned_away() {
    let (server, _tokens) = server_with_tokens().await;
    let http = reqwest::Client::new();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let mut request = http
            .post(&server.url)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "token {token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let download = http
        .get(format!(
            "{}/files/download/x?session_id=default",
            server.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 401);
    let health = http
        .get(format!("{}/healthz", server.base_url()))
        .send()
        .await
        .unwrap();
    assert!(
        health.status().is_success(),
        "healthz stays open for probes"
    );

    let client = server.client_with_token(ALICE).await;
    assert_eq!(
        run(&client, "1+1", json!({})).await["results"],
        json!(["2"])
    );
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains(ALICE) && !logs.contains(BOB),
        "a token reached the logs"
    );
}

#[tokio::test]
async fn another_tenants_session_answers_exactly_like_an_unknown_one() {
    let (server, _tokens) = server_with_tokens().await;
    let alice = server.client_with_token(ALICE).await;
    let bob = server.client_with_token(BOB).await;
    create_session(&alice, "private", json!({})).await;
    call(
        &alice,
        "write_file",
        json!({"path": "secret.txt", "content": "alice only", "session_id": "private"}),
    )
    .await;
    run(&alice, "x = 'alice'", json!({})).await;

    for (tool, arguments) in [
        ("run_python_code", json!({"code": "1"})),
        ("read_file", json!({"path": "secret.txt"})),
        ("list_files", json!({})),
        ("switch_session", json!({})),
        ("get_kernel_health", json!({})),
        ("restart_kernel", json!({})),
        ("delete_session", json!({})),
    ] {
        let mut theirs = arguments.clone();
        theirs["session_id"] = json!("private");
        let mut unknown = arguments.clone();
        unknown["session_id"] = json!("nosuch0");
        let hidden = call_refused(&bob, tool, theirs).await;
        let missing = call_refused(&bob, tool, unknown).await;
        assert_eq!(
            hidden.replace("private", "X"),
            missing.replace("nosuch0", "X"),
            "{tool}"
        );
    }
    let listed = structured(&call(&bob, "list_sessions", json!({})).await);
    assert!(listed["sessions"].get("private").is_none(), "{listed}");
    let own_default = run(&bob, "x", json!({})).await;
    assert_eq!(
        own_default["error"]["ename"], "NameError",
        "bob's default is his own"
    );

    let http = reqwest::Client::new();
    let hidden = http
        .get(format!(
            "{}/files/download/secret.txt?session_id=private",
            server.base_url()
        ))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    let missing = http
        .get(format!(
            "{}/files/download/secret.txt?session_id=nosuch0",
            server.base_url()
        ))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), missing.status());
    assert_eq!(
        hidden.text().await.unwrap().replace("private", "X"),
        missing.text().await.unwrap().replace("nosuch0", "X")
    );
    let created = create_session(&bob, "private", json!({})).await;
    assert_eq!(created["session_id"], "private", "names are per tenant");
    let mine = structured(
        &call(
            &alice,
            "read_file",
            json!({"path": "secret.txt", "session_id": "private"}),
        )
        .await,
    );
    assert_eq!(mine["text"], "alice only");
}

#[tokio::test]
async fn tenant_quotas_cap_sessions_and_memory() {
    let (server, _tokens) = server_with_tokens().await;
    let alice = server.client_with_token(ALICE).await;
    create_session(&alice, "one", json!({})).await;
    create_session(&alice, "two", json!({})).await;
    let error = create_session_refused(&alice, "three", json!({})).await;
    assert!(error.contains("quota is 2 sessions"), "{error}");
    let health = structured(&call(&alice, "get_kernel_health", json!({"session_id": "one"})).await);
    assert_eq!(health["limits"]["memory_mb"], 256.0, "{health}");
    assert_eq!(
        health["kernel_process"]["memory_limit_mb"], 256.0,
        "{health}"
    );
}

#[test]
fn unauthenticated_http_off_loopback_is_refused() {
    let stderr = common::serve_refused(&["--transport", "http", "--host", "0.0.0.0"]);
    assert!(
        stderr.contains("refusing to serve unauthenticated HTTP"),
        "{stderr}"
    );
}
