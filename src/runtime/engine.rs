//! What every engine of the runtime does the same way through bollard: connecting to this
//! host's engine and negotiating the API version, the labels of everything the server starts
//! and the filter that finds them again, resolving the kernel image to its id, a container's
//! usage from the engine's stats, and reading log streams (a kernel's last lines, a job's
//! bounded output). It knows no engine's way of running a kernel: `docker/` and `swarm/`
//! build on it and never on each other.

use std::collections::HashMap;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::ImageInspect;
use bollard::query_parameters::{LogsOptions, LogsOptionsBuilder, StatsOptionsBuilder};
use futures::{Stream, StreamExt};

use super::{ContainerUsage, ExecOutput, ManagedContainer, RuntimeError, labels};

/// This host's engine (socket or `DOCKER_HOST`), speaking the newest API version both sides
/// know: bollard's default is newer than many engines.
pub(super) async fn local_engine() -> Result<Docker, BollardError> {
    Docker::connect_with_defaults()?.negotiate_version().await
}

/// This host's engine, negotiated, and the API version both sides speak; logs the engine's
/// version for the `runtime` that connects.
pub(super) async fn connect_local(runtime: &'static str) -> Result<(Docker, String), RuntimeError> {
    let unreachable = |e: BollardError| RuntimeError::Unreachable(e.to_string());
    let docker = local_engine().await.map_err(unreachable)?;
    let version = docker.version().await.map_err(unreachable)?;
    let api_version = docker.client_version().to_string();
    tracing::info!(
        runtime,
        engine = version.version.as_deref().unwrap_or("unknown"),
        engine_api = version.api_version.as_deref().unwrap_or("unknown"),
        negotiated_api = %api_version,
        "connected to the container engine"
    );
    Ok((docker, api_version))
}

pub(super) fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The labels of every container or service this server starts.
pub(super) fn managed_labels(
    instance: &str,
    recipe: &str,
    session_id: &str,
    owner: &str,
    role: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::INSTANCE.to_string(), instance.to_string()),
        (labels::SESSION_ID.to_string(), session_id.to_string()),
        (labels::OWNER.to_string(), owner.to_string()),
        (labels::RECIPE.to_string(), recipe.to_string()),
        (labels::ROLE.to_string(), role.to_string()),
    ])
}

/// The `label` filter values that find what server `instance` started.
pub(super) fn instance_filter(instance: &str) -> Vec<String> {
    vec![
        format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
        format!("{}={instance}", labels::INSTANCE),
    ]
}

/// The containers or services an engine listed, each by the id `identify` finds in it (a
/// container id, a service name) with its labels.
pub(super) fn managed<T>(
    listed: Result<Vec<T>, BollardError>,
    identify: impl Fn(T) -> Option<(String, Option<HashMap<String, String>>)>,
) -> Result<Vec<ManagedContainer>, RuntimeError> {
    let listed = listed.map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
    Ok(listed
        .into_iter()
        .filter_map(identify)
        .map(|(id, labels)| ManagedContainer {
            id,
            labels: labels.unwrap_or_default(),
        })
        .collect())
}

/// The id of `image` on this engine.
pub(super) async fn resolve_image(docker: &Docker, image: &str) -> Result<String, RuntimeError> {
    inspect_image(docker, image)
        .await?
        .id
        .ok_or_else(|| RuntimeError::ImageMissing {
            image: image.to_string(),
            detail: "the engine reported no image id".to_string(),
        })
}

async fn inspect_image(docker: &Docker, image: &str) -> Result<ImageInspect, RuntimeError> {
    match docker.inspect_image(image).await {
        Ok(inspect) => Ok(inspect),
        Err(e) if is_not_found(&e) => Err(RuntimeError::ImageMissing {
            image: image.to_string(),
            detail: "build it with `kernelbox image build`, or load it into this engine"
                .to_string(),
        }),
        Err(e) => Err(RuntimeError::Unreachable(e.to_string())),
    }
}

/// Memory, CPU and process counts of a container on this engine.
pub(super) async fn container_usage(
    docker: &Docker,
    container: &str,
) -> Result<ContainerUsage, RuntimeError> {
    let stats_error = |detail: String| RuntimeError::Engine {
        action: "stats",
        container: container.to_string(),
        detail,
    };
    let options = StatsOptionsBuilder::new().stream(false).build();
    let stats = docker
        .stats(container, Some(options))
        .next()
        .await
        .ok_or_else(|| stats_error("the engine sent no statistics".to_string()))?
        .map_err(|e| stats_error(e.to_string()))?;
    let memory = stats.memory_stats.unwrap_or_default();
    let pids = stats.pids_stats.unwrap_or_default();
    let cpu_percent = match (stats.cpu_stats, stats.precpu_stats) {
        (Some(now), Some(before)) => {
            let total = |stats: &bollard::models::ContainerCpuStats| {
                stats
                    .cpu_usage
                    .as_ref()
                    .and_then(|u| u.total_usage)
                    .unwrap_or(0)
            };
            let used = total(&now).saturating_sub(total(&before));
            let system = now
                .system_cpu_usage
                .unwrap_or(0)
                .saturating_sub(before.system_cpu_usage.unwrap_or(0));
            let cpus = now.online_cpus.unwrap_or(1).max(1) as f64;
            (system > 0).then(|| used as f64 / system as f64 * cpus * 100.0)
        }
        _ => None,
    };
    Ok(ContainerUsage {
        memory_bytes: memory.usage,
        memory_limit_bytes: memory.limit,
        cpu_percent,
        pids: pids.current,
        pids_limit: pids.limit,
    })
}

/// What a finished job did: its exit code (`None` when it never ended; `timeout
/// --signal=KILL` makes one that ran out of time exit with 137), and its stdout and stderr
/// from `logs` (called once per stream), each kept to `limit` bytes.
pub(super) async fn job_output<S>(
    exit_code: Option<i64>,
    limit: usize,
    logs: impl Fn(LogsOptions) -> S,
) -> ExecOutput
where
    S: Stream<Item = Result<LogOutput, BollardError>>,
{
    let mut result = ExecOutput {
        exit_code,
        timed_out: exit_code == Some(137) || exit_code.is_none(),
        ..ExecOutput::default()
    };
    for (stdout, target) in [(true, &mut result.stdout), (false, &mut result.stderr)] {
        let options = LogsOptionsBuilder::new()
            .stdout(stdout)
            .stderr(!stdout)
            .build();
        let mut chunks = std::pin::pin!(logs(options));
        while let Some(Ok(chunk)) = chunks.next().await {
            result.truncated |= !append_bounded(target, &chunk.to_string(), limit);
        }
    }
    result
}

/// The options for the last lines a container or service printed.
pub(super) fn tail_options() -> LogsOptions {
    LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build()
}

/// The text of a log stream.
pub(super) async fn logs_tail<S>(logs: S) -> String
where
    S: Stream<Item = Result<LogOutput, BollardError>>,
{
    let mut chunks = std::pin::pin!(logs);
    let mut text = String::new();
    while let Some(Ok(chunk)) = chunks.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}

/// Appends as much of `text` as fits under `limit` bytes in all, cut at a character
/// boundary; false when some of it did not fit.
pub(super) fn append_bounded(target: &mut String, text: &str, limit: usize) -> bool {
    let room = limit.saturating_sub(target.len());
    let mut cut = room.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    target.push_str(&text[..cut]);
    cut == text.len()
}
