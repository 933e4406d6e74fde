//! Kernel templates: the built-in bash template runs shell cells through the same tool and
//! refuses the Python-only tools clearly; the built-in r template (IRkernel in an image of
//! its own, started by its argv) returns output, errors and plots; an unknown template is
//! refused naming the known ones; a templates file sets a template's caps; a token limits
//! which templates its tenant may use; a bad templates file stops the server at start; an
//! operator's broken image is reported at start while the other templates serve.

mod common;

use common::{
    HttpServer, call, call_refused, create_session, create_session_refused, run, serve_refused,
    structured,
};
use serde_json::json;

#[tokio::test]
async fn the_bash_template_runs_shell_cells_and_refuses_python_only_tools() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let listed = structured(&call(&client, "list_templates", json!({})).await);
    assert_eq!(listed["default_template"], "python");
    let names: Vec<&str> = listed["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bash", "python", "r"], "{listed}");
    assert_eq!(listed["templates"][0]["language"], "bash");

    let created = create_session(&client, "sh", json!({"template": "bash"})).await;
    assert_eq!(created["metadata"]["template"], "bash", "{created}");
    assert_eq!(created["metadata"]["language"], "bash");
    let shell = json!({"session_id": "sh"});
    let echoed = run(&client, "x=5\necho hello from $(whoami)", shell.clone()).await;
    assert_eq!(echoed["status"], "ok", "{echoed}");
    assert_eq!(echoed["stdout"], "hello from kernel\n", "{echoed}");
    let kept = run(
        &client,
        "echo $x > /workspace/x.txt && cat /workspace/x.txt",
        shell.clone(),
    )
    .await;
    assert_eq!(kept["stdout"], "5\n", "one persistent shell: {kept}");
    let failed = run(&client, "ls /no/such/place", shell.clone()).await;
    assert_eq!(failed["status"], "error", "{failed}");

    for (tool, arguments) in [
        ("list_variables", json!({"session_id": "sh"})),
        (
            "install_dependencies",
            json!({"session_id": "sh", "packages": ["six"]}),
        ),
        (
            "restart_kernel",
            json!({"session_id": "sh", "preserve_state": true}),
        ),
    ] {
        let refused = call_refused(&client, tool, arguments).await;
        assert!(
            refused.contains("Python kernels only") && refused.contains("\"bash\""),
            "{tool}: {refused}"
        );
    }
    let health = structured(&call(&client, "get_kernel_health", shell.clone()).await);
    assert_eq!(health["metadata"]["template"], "bash");
    let after = run(&client, "echo $x", shell).await;
    assert_eq!(after["stdout"], "5\n", "the refusals left the kernel alone");

    let python = run(&client, "print(1 + 1)", json!({})).await;
    assert_eq!(python["stdout"], "2\n", "the default is python");
    let unknown = create_session_refused(&client, "jl", json!({"template": "julia"})).await;
    assert!(
        unknown.contains("there is no template \"julia\"; the templates are: bash, python, r"),
        "{unknown}"
    );
}

#[tokio::test]
async fn the_r_template_returns_output_errors_and_plots() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let created = create_session(&client, "stats", json!({"template": "r"})).await;
    assert_eq!(created["metadata"]["language"], "r", "{created}");
    let r = json!({"session_id": "stats"});
    let printed = run(&client, "x <- c(1, 2, 3)\ncat(mean(x), '\\n')", r.clone()).await;
    assert_eq!(printed["status"], "ok", "{printed}");
    assert_eq!(printed["stdout"], "2 \n", "{printed}");
    let kept = run(&client, "sum(x) * 2", r.clone()).await;
    assert_eq!(kept["results"][0], "[1] 12", "variables persist: {kept}");
    let failed = run(&client, "stop('no such thing')", r.clone()).await;
    assert_eq!(failed["status"], "error", "{failed}");
    assert!(
        failed.to_string().contains("no such thing"),
        "the error names itself: {failed}"
    );
    let plotted = run(&client, "plot(1:10)", r.clone()).await;
    assert_eq!(plotted["status"], "ok", "{plotted}");
    assert!(
        plotted["displays"][0]["data"]["image/png"].is_string(),
        "a plot comes back as an image: {plotted}"
    );
    let files = run(
        &client,
        "writeLines('from R', '/workspace/r.txt'); readLines('/workspace/r.txt')",
        r.clone(),
    )
    .await;
    assert!(files.to_string().contains("from R"), "{files}");
    let refused = call_refused(&client, "list_variables", r.clone()).await;
    assert!(refused.contains("\"r\""), "{refused}");
    let health = structured(&call(&client, "get_kernel_health", r).await);
    assert_eq!(health["metadata"]["template"], "r", "{health}");
}

#[tokio::test]
async fn a_broken_operator_image_is_reported_at_start_and_the_others_serve() {
    // An operator's image with a setuid file, built from the kernel image without a registry.
    let image = format!("kernelbox-test-setuid:{}", std::process::id());
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {}\nUSER 0:0\nRUN cp /bin/true /usr/local/bin/escalate && chmod u+s /usr/local/bin/escalate\nUSER 1000:1000\n",
            common::kernel_image()
        ),
    )
    .unwrap();
    let built = std::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &image])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let _image = RemoveImage(image.clone());
    let (server, _dir) = serve_templates(
        json!({
            "python": {"language": "python", "description": "Python"},
            "escalating": {"language": "python", "description": "has a setuid file",
                           "image": image},
            "missing": {"language": "python", "description": "no such image",
                        "image": "kernelbox-test-no-such-image:1"},
            "silent": {"language": "python", "description": "its kernel never answers",
                       "image": common::kernel_image(), "argv": ["sh", "-c", "sleep 600", "{connection_file}"]},
        }),
        &["--ready-timeout", "10"],
    )
    .await;
    let client = server.client().await;
    let status = || async {
        let listed = structured(&call(&client, "list_templates", json!({})).await);
        listed["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let settled = common::wait_until(std::time::Duration::from_secs(120), || async {
        status().await.values().all(|t| t["status"] != "checking")
    })
    .await;
    let statuses = status().await;
    assert!(settled, "every check ends: {statuses:?}");
    assert_eq!(statuses["python"]["status"], "ready", "{statuses:?}");
    let problem = |name: &str| {
        statuses[name]["problem"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        problem("escalating").contains("setuid or setgid file(s): /usr/local/bin/escalate"),
        "{statuses:?}"
    );
    assert!(
        problem("missing").contains("kernelbox-test-no-such-image:1 is not present"),
        "{statuses:?}"
    );
    assert!(
        problem("silent").contains("its kernel did not start"),
        "{statuses:?}"
    );
    let refused = create_session_refused(&client, "esc", json!({"template": "escalating"})).await;
    assert!(
        refused.contains("the template \"escalating\" cannot run kernels on this server"),
        "{refused}"
    );
    let ran = run(&client, "print(6 * 7)", json!({})).await;
    assert_eq!(ran["stdout"], "42\n", "the other templates serve: {ran}");
    let health = server.healthz().await;
    assert_eq!(
        health["templates"]["missing"]["status"], "broken",
        "{health}"
    );
    assert_eq!(health["templates"]["python"]["status"], "ready", "{health}");
}

#[tokio::test]
async fn a_templates_file_sets_caps_and_a_token_limits_templates() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates.toml");
    std::fs::write(
        &templates,
        "[python]\nlanguage = \"python\"\ndescription = \"Python, small\"\nmemory = \"256m\"\n\n\
         [shell]\nlanguage = \"bash\"\ndescription = \"a shell\"\n\
         kernel_class = \"bash_kernel.kernel.BashKernel\"\npids_limit = 64\n",
    )
    .unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"token": "shell-only-0123456789abcdef", "tenant": "carol", "templates": ["shell"]},
        ]})
        .to_string(),
    )
    .unwrap();
    let server = HttpServer::start_with(&[
        "--templates",
        templates.to_str().unwrap(),
        "--tokens-file",
        tokens.to_str().unwrap(),
    ])
    .await;
    let client = server
        .client_with_token("shell-only-0123456789abcdef")
        .await;
    let listed = structured(&call(&client, "list_templates", json!({})).await);
    assert_eq!(listed["templates"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["templates"][0]["name"], "shell");
    assert_eq!(listed["templates"][0]["pids_limit"], 64);

    let refused = create_session_refused(&client, "py", json!({"template": "python"})).await;
    assert!(
        refused.contains("your token does not allow the template \"python\"; it allows: shell"),
        "{refused}"
    );
    create_session(&client, "sh", json!({"template": "shell"})).await;
    let ran = run(&client, "echo ok", json!({"session_id": "sh"})).await;
    assert_eq!(ran["stdout"], "ok\n", "{ran}");
    let health = structured(&call(&client, "get_kernel_health", json!({"session_id": "sh"})).await);
    assert_eq!(health["limits"]["pids"], 64, "{health}");
}

#[tokio::test]
async fn a_bad_templates_file_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates.toml");
    std::fs::write(
        &templates,
        "[shell]\nlanguage = \"bash\"\ndescription = \"a shell\"\n",
    )
    .unwrap();
    let error = serve_refused(&["--templates", templates.to_str().unwrap()]);
    assert!(error.contains("no template named \"python\""), "{error}");
}

#[tokio::test]
async fn pools_are_kept_per_template_and_refill() {
    let (server, _dir) = serve_templates(
        json!({
            "python": {"language": "python", "description": "Python"},
            "bash": {"language": "bash", "description": "a shell",
                     "kernel_class": "bash_kernel.kernel.BashKernel", "pool_size": 1},
        }),
        &["--pool-size", "1"],
    )
    .await;
    let ready =
        || async { common::metric_value(&server.metrics_text().await, "kernelbox_pool_ready") };
    let filled = common::wait_until(std::time::Duration::from_secs(90), || async {
        ready().await >= 2.0
    })
    .await;
    assert!(filled, "a warm kernel for each of python and bash");
    let client = server.client().await;
    for (session, template, code, expected) in [
        ("warm-sh", "bash", "echo $BASH_VERSINFO warm", "5 warm\n"),
        ("warm-py", "python", "print('warm')", "warm\n"),
    ] {
        create_session(&client, session, json!({"template": template})).await;
        let ran = run(&client, code, json!({"session_id": session})).await;
        assert_eq!(ran["stdout"], expected, "{ran}");
        let logs = server.logs.lock().unwrap().join("\n");
        assert!(
            !logs.contains(&format!("session_id={session} container_ms")),
            "{session} came from its template's pool"
        );
    }
    let refilled = common::wait_until(std::time::Duration::from_secs(90), || async {
        ready().await >= 2.0
    })
    .await;
    assert!(refilled, "both pools refill");
}

/// Removes a test's image when the test ends, passed or not.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// A server whose templates file holds `templates` (JSON), started with `extra` flags; the
/// file's directory lives as long as the server should.
async fn serve_templates(
    templates: serde_json::Value,
    extra: &[&str],
) -> (HttpServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("templates.json");
    std::fs::write(&file, templates.to_string()).unwrap();
    let mut flags = vec!["--templates", file.to_str().unwrap()];
    flags.extend_from_slice(extra);
    (HttpServer::start_with(&flags).await, dir)
}
