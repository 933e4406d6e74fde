//! The server's counters and histograms (executions and their latency, kernel starts and
//! deaths by cause, egress proxy connections by outcome, container start and kernel ready
//! latency) and their rendering in the
//! Prometheus text format for `/metrics`. Plain atomics and a mutex per labelled family;
//! nothing here knows about sessions, Docker or MCP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// A counter family with one label.
#[derive(Default)]
pub struct LabelledCounter {
    values: Mutex<BTreeMap<String, u64>>,
}

impl LabelledCounter {
    pub fn increment(&self, label: &str) {
        *self
            .values
            .lock()
            .expect("metrics lock")
            .entry(label.to_string())
            .or_default() += 1;
    }

    fn render(&self, name: &str, label: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (value, count) in self.values.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }
}

/// Everything `/metrics` reports besides the gauges read at scrape time.
#[derive(Default)]
pub struct Metrics {
    pub executions: LabelledCounter,
    pub execution_seconds: Histogram,
    pub kernel_starts: AtomicU64,
    pub kernel_deaths: LabelledCounter,
    pub container_start_seconds: Histogram,
    pub kernel_ready_seconds: Histogram,
    pub culled: LabelledCounter,
    pub egress_connections: LabelledCounter,
}

/// Values read when `/metrics` is scraped.
pub struct Gauges {
    pub active_sessions: usize,
    pub running_kernels: usize,
    pub pool_ready: usize,
    /// How workspace quotas are held: `mount` or `watchdog`.
    pub quota_mode: &'static str,
    pub quota_bytes: u64,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "kernelbox_sessions_active",
                "Sessions registered now.",
                gauges.active_sessions,
            ),
            (
                "kernelbox_kernels_running",
                "Sessions whose kernel runs now.",
                gauges.running_kernels,
            ),
            (
                "kernelbox_pool_ready",
                "Warm kernels waiting in the pool.",
                gauges.pool_ready,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kernelbox_workspace_quota_bytes What one workspace may hold, by how the cap is held (mount: its own filesystem of that size; watchdog: kernels are stopped past it).\n# TYPE kernelbox_workspace_quota_bytes gauge\nkernelbox_workspace_quota_bytes{{mode=\"{}\"}} {}",
            gauges.quota_mode, gauges.quota_bytes
        );
        self.executions.render(
            "kernelbox_executions_total",
            "status",
            "Cells run, by how they ended.",
            &mut out,
        );
        self.execution_seconds.render(
            "kernelbox_execution_seconds",
            "Wall time of cells.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP kernelbox_kernel_starts_total Kernels started.\n# TYPE kernelbox_kernel_starts_total counter\nkernelbox_kernel_starts_total {}",
            self.kernel_starts.load(Ordering::Relaxed)
        );
        self.kernel_deaths.render(
            "kernelbox_kernel_deaths_total",
            "cause",
            "Kernels that died, by cause.",
            &mut out,
        );
        self.culled.render(
            "kernelbox_sessions_ended_total",
            "reason",
            "Sessions ended by the lifecycle limits, by reason.",
            &mut out,
        );
        self.egress_connections.render(
            "kernelbox_egress_connections_total",
            "outcome",
            "Connections kernels asked the egress proxy for, by outcome (allowed, refused by the allowlist, failed on the way).",
            &mut out,
        );
        self.container_start_seconds.render(
            "kernelbox_container_start_seconds",
            "Time to create and start a kernel container.",
            &mut out,
        );
        self.kernel_ready_seconds.render(
            "kernelbox_kernel_ready_seconds",
            "Time from container create to a ready kernel.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let metrics = Metrics::default();
        metrics.execution_seconds.observe(Duration::from_millis(3));
        metrics
            .execution_seconds
            .observe(Duration::from_millis(700));
        metrics.executions.increment("ok");
        metrics.executions.increment("ok");
        metrics.kernel_deaths.increment("out_of_memory");
        let text = metrics.render(&Gauges {
            active_sessions: 2,
            running_kernels: 1,
            pool_ready: 0,
            quota_mode: "mount",
            quota_bytes: 1 << 30,
        });
        assert!(text.contains("kernelbox_execution_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("kernelbox_execution_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("kernelbox_execution_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("kernelbox_executions_total{status=\"ok\"} 2"));
        assert!(text.contains("kernelbox_kernel_deaths_total{cause=\"out_of_memory\"} 1"));
        assert!(text.contains("kernelbox_sessions_active 2"));
        assert!(text.contains("kernelbox_workspace_quota_bytes{mode=\"mount\"} 1073741824"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
