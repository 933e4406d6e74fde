//! A command run inside a kernel's container (`docker exec`), as the kernel's user: under
//! coreutils `timeout`, with its output collected up to a cap, and killed with everything it
//! started when its stop token fires. The engine cannot kill an exec'd process, so both ends
//! are done from inside the container; this file starts no container and removes none.

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;
use rand::distr::{Alphanumeric, SampleString};

use super::super::sandbox::killed_after;
use super::super::{ExecCommand, ExecOutput, RuntimeError};

/// How long a killed command's last output is waited for.
const KILLED_OUTPUT_WAIT: Duration = Duration::from_secs(10);

/// Runs `command` in `container` as `user` to its end, its timeout or its stop.
pub(super) async fn run(
    docker: &Docker,
    user: &str,
    container: &str,
    command: &ExecCommand,
) -> Result<ExecOutput, RuntimeError> {
    let engine_error = |action: &'static str| {
        let container = container.to_string();
        move |e: BollardError| RuntimeError::Engine {
            action,
            container,
            detail: e.to_string(),
        }
    };
    // `timeout` leads a process group of its own; the shell writes its pid down while it
    // runs, so a stop kills the whole group from a second exec.
    let pid_file = format!(
        "/tmp/.kernelbox-exec-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 12)
    );
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "\"$@\" & pid=$!; echo $pid > {pid_file}; wait $pid; status=$?; rm -f {pid_file}; exit $status"
        ),
        "sh".to_string(),
    ];
    argv.extend(killed_after(command.timeout, &command.argv));
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(argv),
                env: Some(command.env.clone()),
                working_dir: Some(command.working_dir.clone()),
                user: Some(user.to_string()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(engine_error("exec"))?;
    let started = docker
        .start_exec(&created.id, None)
        .await
        .map_err(engine_error("exec"))?;
    let mut result = ExecOutput::default();
    let mut stopped = false;
    if let StartExecResults::Attached { mut output, .. } = started {
        let limit = command.max_output_bytes;
        let (stdout, stderr, truncated) = (
            &mut result.stdout,
            &mut result.stderr,
            &mut result.truncated,
        );
        let collect = async {
            while let Some(chunk) = output.next().await {
                let (target, bytes) = match chunk {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        (&mut *stdout, message)
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        (&mut *stderr, message)
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let room = limit.saturating_sub(target.len());
                if bytes.len() > room {
                    *truncated = true;
                }
                target.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(room)]));
            }
        };
        tokio::pin!(collect);
        // The in-container timeout ends the command; this bounds a stuck engine.
        let bound = command.timeout + Duration::from_secs(10);
        stopped = tokio::select! {
            _ = tokio::time::timeout(bound, &mut collect) => false,
            _ = command.stop.cancelled() => true,
        };
        if stopped {
            kill_group(docker, user, container, &pid_file).await;
            let _ = tokio::time::timeout(KILLED_OUTPUT_WAIT, &mut collect).await;
        }
    }
    let inspect = docker
        .inspect_exec(&created.id)
        .await
        .map_err(engine_error("inspect exec"))?;
    result.exit_code = inspect.exit_code;
    // `timeout --signal=KILL` makes a timed-out command exit with 137.
    result.timed_out = !stopped && inspect.exit_code == Some(137);
    Ok(result)
}

/// Kills the process group whose leader's pid is in `pid_file`: the stopped command and
/// everything it started. A failure is logged; the command's own timeout still ends it.
async fn kill_group(docker: &Docker, user: &str, container: &str, pid_file: &str) {
    let killed = async {
        let created = docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(vec![
                        "sh".to_string(),
                        "-c".to_string(),
                        format!("kill -s KILL -- -$(cat {pid_file}); rm -f {pid_file}"),
                    ]),
                    user: Some(user.to_string()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&created.id, None).await?
        {
            while output.next().await.is_some() {}
        }
        Ok::<_, BollardError>(())
    };
    if let Err(error) = killed.await {
        tracing::warn!(container, %error, "killing a stopped command failed");
    }
}
