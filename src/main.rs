//! The binary's edge: parses flags, wires the runtime, the session registry and a transport
//! together, and shuts down gracefully: running cells get `--shutdown-grace` to finish, then
//! sessions are left running for the next start to adopt (or ended, with
//! `--stop-sessions-on-exit` or when the stdio client goes away), and every task is joined.
//! `anyhow` lives here and nowhere else.

mod auth;
mod cli;
mod egress;
#[cfg(test)]
mod fuzz;
mod http;
mod ids;
mod image;
mod kernel;
mod mcp;
mod metrics;
mod notebook;
mod packages;
mod pool;
mod records;
mod runtime;
mod session;
mod sessions;
mod snippets;
mod templates;
mod units;
mod workspace;

use std::future::IntoFuture;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::TryFutureExt;
use rmcp::ServiceExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authentication, Tenant};
use crate::cli::{
    Cli, Command, Deployment, HttpArgs, ImageCommand, KernelImageName, LogFormat, RuntimeConfig,
    ServeArgs, Transport, registry_credentials,
};
use crate::mcp::{KernelboxServer, Services, TaskStore};
use crate::runtime::{DockerRuntime, SharedRuntime, SwarmRuntime};
use crate::sessions::Sessions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Image { command } => match command {
            ImageCommand::Name { kernel } => {
                let recipe = match kernel {
                    KernelImageName::Python => &image::KERNEL,
                    KernelImageName::R => &image::R_KERNEL,
                };
                println!("{}", recipe.tag());
                Ok(())
            }
            ImageCommand::Build { kernel_only } => {
                tokio::task::spawn_blocking(move || {
                    for recipe in image::KERNEL_RECIPES {
                        recipe.build()?;
                    }
                    if !kernel_only {
                        image::build_server(&image::KERNEL.tag())?;
                    }
                    Ok::<_, image::ImageError>(())
                })
                .await??;
                Ok(())
            }
            ImageCommand::Distribute {
                node,
                manager,
                image,
            } => {
                let image = image.unwrap_or_else(|| image::KERNEL.tag());
                let deliveries = runtime::distribute(&image, manager.as_deref(), &node).await?;
                for delivery in deliveries {
                    println!(
                        "{}: node {} {} in {:.1} s",
                        delivery.engine,
                        delivery.node,
                        if delivery.copied {
                            "loaded and labelled"
                        } else {
                            "already held it; labelled"
                        },
                        delivery.seconds
                    );
                }
                Ok(())
            }
            ImageCommand::Push {
                registry,
                registry_username,
                image,
            } => {
                let image = image.unwrap_or_else(|| image::KERNEL.tag());
                let credentials = registry_credentials(registry_username);
                let pinned = runtime::push_from_this_engine(
                    &image,
                    &registry,
                    &image::KERNEL.hash(),
                    credentials.as_ref(),
                )
                .await?;
                println!("{pinned}");
                Ok(())
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("kernelbox");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/kernelbox"),
        None => PathBuf::from("/var/lib/kernelbox"),
    }
}

/// Containers are tagged with this so that servers with different data directories on one
/// engine never touch each other's kernels.
fn instance_id(data_dir: &std::path::Path) -> String {
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    hex::encode(digest)[..12].to_string()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tools = Arc::new(args.tools.config()?);
    let authentication = args.http.authentication()?;
    args.check()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving the data directory {}", data_dir.display()))?;
    let instance = instance_id(&data_dir);

    let image = match &args.image {
        Some(image) => image.clone(),
        None => {
            let tag = image::KERNEL.tag();
            if !args.no_build {
                tokio::task::spawn_blocking(|| image::KERNEL.build())
                    .await?
                    .context("building the kernel image")?;
            }
            tag
        }
    };

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let deployment = Deployment {
        image,
        recipe: image::KERNEL.hash(),
        instance: instance.clone(),
        data_dir: data_dir.clone(),
    };
    if let Some(network) = &args.docker.network {
        tracing::warn!(
            network = %network,
            "--network (KERNELBOX_NETWORK) is ignored: kernels without egress have no network at all, and the server reaches them over IPC"
        );
    }
    let runtime: SharedRuntime = match args.runtime_config(deployment)? {
        RuntimeConfig::Docker(config) => DockerRuntime::connect(config, cancel.clone(), &tasks)
            .await
            .context("starting the Docker runtime")?,
        RuntimeConfig::Swarm(config) => SwarmRuntime::connect(config, cancel.clone(), &tasks)
            .await
            .context("starting the Swarm runtime")?,
    };

    let catalog = args
        .lifecycle
        .catalog()
        .context("loading the kernel templates")?;
    tracing::info!(templates = %catalog.names().join(", "), "kernel templates");
    let (disk, why) = args
        .sandbox
        .disk(runtime.on_server_host(), &data_dir)
        .context("choosing how workspace quotas are held")?;
    tracing::info!(
        mode = disk.mode().as_str(),
        quota_bytes = disk.quota_bytes(),
        reason = %why,
        "workspace quota"
    );
    let sessions = Arc::new(Sessions::new(
        runtime.clone(),
        args.lifecycle
            .registry_config(data_dir.clone(), &args.sandbox, disk, catalog),
        tasks.clone(),
        cancel.child_token(),
        Arc::new(metrics::Metrics::default()),
    ));
    tasks.spawn(sessions.clone().cull());
    tasks.spawn(sessions.clone().watch_quotas());
    let task_store = Arc::new(TaskStore::new(
        args.tools.task_config(),
        tasks.clone(),
        cancel.child_token(),
    ));
    tasks.spawn(task_store.clone().sweep());
    let services = Services {
        sessions: sessions.clone(),
        tools,
        tasks: task_store,
    };
    let restored = sessions
        .restore()
        .await
        .context("restoring the sessions of an earlier run")?;
    tracing::info!(
        data_dir = %data_dir.display(),
        instance = %instance,
        adopted = restored.adopted,
        restored_without_kernel = restored.fresh,
        removed_containers = restored.removed,
        unmounted_workspaces = restored.unmounted,
        "kernelbox ready"
    );

    let served = match args.http.transport {
        Transport::Stdio => serve_stdio(services).await,
        Transport::Http => {
            serve_http(
                &args.http,
                args.lifecycle.shutdown_grace.duration(),
                services,
                runtime,
                authentication,
                cancel.child_token(),
            )
            .await
        }
    };
    let stop_sessions =
        args.lifecycle.stop_sessions_on_exit || matches!(served, Ok(Exit::ClientGone));
    if stop_sessions {
        tracing::info!("shutting down; ending every session");
        sessions.shutdown().await;
    } else {
        tracing::info!("shutting down; sessions keep running for the next start");
        sessions.detach_all().await;
    }
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    served.map(|_| ())
}

/// Why serving ended.
enum Exit {
    /// SIGINT or SIGTERM.
    Signal,
    /// The stdio client closed its end: nobody will come back for its sessions.
    ClientGone,
}

async fn serve_stdio(services: Services) -> anyhow::Result<Exit> {
    let server = KernelboxServer::new(services, Some(Tenant::local()))
        .serve(rmcp::transport::stdio())
        .await
        .context("starting MCP over stdio")?;
    tokio::select! {
        ended = server.waiting() => {
            ended.context("serving MCP over stdio")?;
            Ok(Exit::ClientGone)
        }
        _ = shutdown_signal() => Ok(Exit::Signal),
    }
}

async fn serve_http(
    args: &HttpArgs,
    grace: Duration,
    services: Services,
    runtime: SharedRuntime,
    authentication: Authentication,
    cancel: CancellationToken,
) -> anyhow::Result<Exit> {
    let listeners = bind_http(&args.host, args.port, &runtime).await?;
    let sessions = services.sessions.clone();
    let router = http::router(
        services,
        runtime,
        authentication,
        args.allowed_hosts.clone(),
        cancel.clone(),
    );
    // On a signal: stop taking connections, let running cells finish within the grace
    // period, then end the MCP streams so the server can exit.
    let stopping = CancellationToken::new();
    let serve = futures::future::try_join_all(listeners.into_iter().map(|listener| {
        axum::serve(listener, router.clone())
            .with_graceful_shutdown(stopping.clone().cancelled_owned())
            .into_future()
    }))
    .map_ok(|_| ());
    let drain = async {
        shutdown_signal().await;
        stopping.cancel();
        if !sessions.wait_idle(grace).await {
            tracing::warn!(?grace, "cells still running after the grace period");
        }
        cancel.cancel();
    };
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => served.context("serving HTTP")?,
        () = drain => serve.await.context("serving HTTP")?,
    }
    Ok(Exit::Signal)
}

/// The HTTP listeners for `--host` and `--port`. A wildcard host listens where the runtime
/// says no kernel reaches (on Swarm, not on the kernels' overlays); every listener shares the
/// port the first one got.
async fn bind_http(
    host: &str,
    port: u16,
    runtime: &SharedRuntime,
) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let addresses = match host.parse::<IpAddr>() {
        Ok(wildcard) if wildcard.is_unspecified() => {
            let addresses = runtime
                .listen_addresses(wildcard)
                .await
                .context("choosing the HTTP listener's addresses")?;
            if addresses != [wildcard] {
                tracing::info!(
                    ?addresses,
                    "--host {host} listens only on these addresses: none is on a kernel's network"
                );
            }
            addresses
        }
        _ => {
            let listener = tokio::net::TcpListener::bind((host, port))
                .await
                .with_context(|| format!("binding {host}:{port}"))?;
            let address = listener.local_addr()?;
            tracing::info!(%address, "serving MCP at http://{address}/mcp");
            return Ok(vec![listener]);
        }
    };
    let mut listeners = Vec::new();
    let mut port = port;
    for ip in addresses {
        let listener = tokio::net::TcpListener::bind((ip, port))
            .await
            .with_context(|| format!("binding {ip}:{port}"))?;
        port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    // Said once every listener is bound: whoever waits for this line (a proxy publishing the
    // port, a test) can connect to any of them.
    for listener in &listeners {
        let address = listener.local_addr()?;
        tracing::info!(%address, "serving MCP at http://{address}/mcp");
    }
    Ok(listeners)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
