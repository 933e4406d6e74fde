//! `cargo bench --bench latency`: starts the real server (release build) with real kernel
//! containers and prints, with p50/p95: cold `create_session` to the first `1+1` result, and
//! the warm round trip of `1+1` through MCP over HTTP.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{HttpServer, call, run};
use serde_json::json;

const COLD_RUNS: usize = 10;
const WARM_RUNS: usize = 200;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank]
}

fn row(name: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.5);
    let p95 = percentile(samples, 0.95);
    println!(
        "| {name:<44} | {:>4} | {:>10.1} | {:>10.1} |",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let server = HttpServer::start().await;
    let client = server.client().await;

    let mut cold = Vec::new();
    for i in 0..COLD_RUNS {
        let id = format!("cold-{i}");
        let started = Instant::now();
        call(&client, "create_session", json!({ "session_id": id })).await;
        let result = run(&client, "1+1", json!({ "session_id": id })).await;
        cold.push(started.elapsed());
        assert_eq!(result["results"], json!(["2"]));
        call(
            &client,
            "delete_session",
            json!({ "session_id": id, "remove_workspace": true }),
        )
        .await;
    }

    run(&client, "1+1", json!({})).await;
    let mut warm = Vec::new();
    for _ in 0..WARM_RUNS {
        let started = Instant::now();
        let result = run(&client, "1+1", json!({})).await;
        warm.push(started.elapsed());
        assert_eq!(result["status"], "ok");
    }

    println!(
        "| {:<44} | {:>4} | {:>10} | {:>10} |",
        "measure", "runs", "p50 ms", "p95 ms"
    );
    println!("|{:-<46}|{:-<6}|{:-<12}|{:-<12}|", "", "", "", "");
    row("create_session to first `1+1` result (cold)", &mut cold);
    row("`1+1` round trip, MCP over HTTP (warm)", &mut warm);
}
