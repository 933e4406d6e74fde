//! Test harness: starts the real `kernelbox` binary against the real Docker engine, connects a
//! real MCP client, and removes every container the server started when the test ends, even
//! when it panics. One module per concern:
//! - `server`: the server under test over HTTP or stdio (in a container under Swarm);
//! - `docker`: containers, services and networks found by label, and their removal;
//! - `host`: this host's addresses, as kernels might try them;
//! - `mcp`: the recording client and the tool calls tests make through it;
//! - `metrics`: reading and checking `/metrics` samples;
//! - `wait`: waiting on a condition under a deadline;
//! - `package_index`: a PyPI-like index container for install tests;
//! - `cluster`, `registry`: a Swarm of Docker-in-Docker nodes and an image registry.
//!
//! Each test crate uses part of the harness, so unused items are allowed here.

#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod docker;
pub mod host;
pub mod mcp;
pub mod metrics;
pub mod package_index;
pub mod registry;
pub mod server;
pub mod wait;

pub use docker::{
    ContainerSweeper, containers_with_label, docker_lines, instance_of, kernel_image, mounts_under,
    r_kernel_image, remove_containers, remove_networks_labelled, swarm_mode,
};
pub use host::{host_address, host_addresses};
pub use mcp::{
    Client, Recorder, args, call, call_refused, create_session, create_session_refused, run,
    structured,
};
pub use metrics::{assert_metrics, metric_sample, metric_value};
pub use package_index::{PackageIndex, install_test_package};
pub use server::{BINARY, HttpServer, StdioServer, serve_args, serve_refused};
pub use wait::{wait_until, wait_until_running};
