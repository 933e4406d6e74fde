//! Running a cell end to end: one at a time through the session's queue, output streamed as
//! events while it runs, the timeout escalation (interrupt request, then SIGINT, then a kernel
//! restart), and how the run ended mapped to a `RunStatus`. Code is sent to the kernel exactly
//! once and never re-run; what the kernel sends is data, folded by `kernel::ExecutionOutput`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::output::Spills;
use super::{Session, SessionError};
use crate::kernel::{ExecutionOutput, KernelError, OutputEvent};
use crate::snippets;

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    Error,
    Timeout,
    Interrupted,
    KernelDied,
    /// The workspace went past its quota: a write failed for want of space (`mount` mode),
    /// or the watchdog stopped the cell (`watchdog` mode).
    QuotaExceeded,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::Timeout => "timeout",
            RunStatus::Interrupted => "interrupted",
            RunStatus::KernelDied => "kernel_died",
            RunStatus::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// Everything a finished cell produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub output: ExecutionOutput,
    pub execution_count: Option<usize>,
    /// Workspace-relative paths of saved display outputs (PNG, SVG, JSON).
    pub outputs: Vec<String>,
    /// Base64 PNGs the cell displayed, to return inline.
    pub images: Vec<String>,
    pub new_files: Vec<String>,
    pub execution_time: Duration,
    /// What happened to the kernel beyond the cell itself (restarted, died and why), and
    /// where output past the cap went.
    pub kernel_note: Option<String>,
    /// Output went past the in-memory cap; `output_files` hold all of it.
    pub truncated: bool,
    /// Workspace-relative files with the full stdout and stderr, when they were too long.
    pub output_files: Vec<String>,
}

/// How one execute request ended.
struct Executed {
    status: RunStatus,
    output: ExecutionOutput,
    kernel_note: Option<String>,
    output_files: Vec<String>,
}

/// What a helper run printed and how it ended.
#[derive(Debug)]
pub struct HelperOutput {
    pub status: RunStatus,
    pub stdout: String,
    pub error: Option<String>,
    pub kernel_note: Option<String>,
}

impl HelperOutput {
    /// The helper's JSON line, or why there is none.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.status != RunStatus::Ok {
            let note = self.kernel_note.as_deref().unwrap_or("no detail");
            return Err(format!("it ended with status {:?}: {note}", self.status));
        }
        snippets::parse(&self.stdout)
    }
}

impl Session {
    /// Runs `code` once, waiting for it at most `timeout`, streaming output events to
    /// `events` as they arrive. When `stop` fires the cell is stopped as a timed-out one is
    /// (interrupt, SIGINT, restart) and ends `interrupted`; fired before its turn came, the
    /// code is never sent.
    pub async fn run(
        &self,
        code: &str,
        timeout: Duration,
        events: mpsc::UnboundedSender<OutputEvent>,
        stop: &CancellationToken,
    ) -> Result<RunOutcome, SessionError> {
        let _turn = tokio::select! {
            turn = self.queue.lock() => turn,
            _ = stop.cancelled() => return Ok(self.never_ran()),
        };
        self.touch();
        self.interrupt_requested.store(false, Ordering::SeqCst);
        let before = self.workspace.snapshot();
        let started = Instant::now();
        let Executed {
            mut status,
            output,
            mut kernel_note,
            output_files,
        } = self.execute(code, false, timeout, events, stop).await?;
        let execution_time = started.elapsed();
        self.touch();
        if status == RunStatus::Error && wrote_past_space(&output) && self.workspace.is_full() {
            status = RunStatus::QuotaExceeded;
            kernel_note = Some(format!(
                "the workspace is full: it is a filesystem of its quota's size ({} bytes) and a write past it failed with ENOSPC; the kernel, its variables and the files written before were kept; delete files to free space",
                self.workspace.quota_bytes()
            ));
        }
        self.metrics.executions.increment(status.as_str());
        self.metrics.execution_seconds.observe(execution_time);
        let used = self.workspace.usage();
        if used > self.workspace.quota_bytes() {
            let over = format!(
                "the workspace holds {used} bytes, over its quota of {} bytes: the server refuses to write into it until files are deleted",
                self.workspace.quota_bytes()
            );
            kernel_note = Some(match kernel_note {
                Some(note) => format!("{note}; {over}"),
                None => over,
            });
        }
        if !output_files.is_empty() {
            let spilled = format!(
                "output past {} bytes per stream was left out of this result; the full output is in {}",
                self.settings.max_output_bytes,
                output_files.join(" and ")
            );
            kernel_note = Some(match kernel_note {
                Some(note) => format!("{note}; {spilled}"),
                None => spilled,
            });
        }
        let (outputs, images) = self.save_displays(&output);
        let after = self.workspace.snapshot();
        let new_files = after.difference(&before).cloned().collect();
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.executions += 1;
            stats.total_execution_seconds += execution_time.as_secs_f64();
            stats.last_execution_seconds = Some(execution_time.as_secs_f64());
            if let Some(count) = output.execution_count {
                stats.execution_count = count;
            }
        }
        Ok(RunOutcome {
            status,
            truncated: !output_files.is_empty(),
            output_files,
            execution_count: output.execution_count,
            output,
            outputs,
            images,
            new_files,
            execution_time,
            kernel_note,
        })
    }

    /// The outcome of a cell stopped before its turn came: nothing was sent to the kernel.
    fn never_ran(&self) -> RunOutcome {
        RunOutcome {
            status: RunStatus::Interrupted,
            output: ExecutionOutput::with_stream_limit(self.settings.max_output_bytes),
            execution_count: None,
            outputs: Vec::new(),
            images: Vec::new(),
            new_files: Vec::new(),
            execution_time: Duration::ZERO,
            kernel_note: Some(
                "stopped before its turn came: the code was never sent to the kernel".to_string(),
            ),
            truncated: false,
            output_files: Vec::new(),
        }
    }

    /// Runs kernelbox's own helper code silently (no history, no execution count) in its turn,
    /// and returns what it printed. Helper code prints JSON; the server parses it as data.
    pub async fn run_helper(
        &self,
        code: &str,
        timeout: Duration,
    ) -> Result<HelperOutput, SessionError> {
        self.require_python()?;
        let _turn = self.queue.lock().await;
        let (events, _) = mpsc::unbounded_channel();
        let Executed {
            status,
            output,
            kernel_note,
            ..
        } = self
            .execute(code, true, timeout, events, &CancellationToken::new())
            .await?;
        Ok(HelperOutput {
            status,
            stdout: output.stdout,
            error: output.error.map(|e| format!("{}: {}", e.ename, e.evalue)),
            kernel_note,
        })
    }

    /// Sends one execute request and follows it to its end: idle and replied, dead kernel, or
    /// timeout or `stop` (interrupt request, then SIGINT, then a kernel restart). The caller
    /// holds the queue.
    async fn execute(
        &self,
        code: &str,
        silent: bool,
        timeout: Duration,
        events: mpsc::UnboundedSender<OutputEvent>,
        stop: &CancellationToken,
    ) -> Result<Executed, SessionError> {
        let kernel = self.current_kernel().await?;
        let mut handle = match kernel.client.start_execute(code, silent).await {
            Ok(handle) => handle,
            Err(source) => {
                // The connection is gone (a lost node resets it): the kernel's watcher says
                // whether the kernel is gone too, and why, within the runtime's grace.
                let verdict = self.runtime.unresponsive_grace() + Duration::from_secs(10);
                let lost = matches!(source, KernelError::Send { .. })
                    && tokio::time::timeout(verdict, kernel.death.cancelled())
                        .await
                        .is_ok();
                if !lost {
                    return Err(SessionError::Kernel {
                        session_id: self.id.to_string(),
                        source: Box::new(source),
                    });
                }
                return Ok(Executed {
                    status: RunStatus::KernelDied,
                    output: ExecutionOutput::with_stream_limit(self.settings.max_output_bytes),
                    kernel_note: Some(self.explain_death(&kernel).await),
                    output_files: Spills::default().finish(),
                });
            }
        };

        let mut output = ExecutionOutput::with_stream_limit(self.settings.max_output_bytes);
        let mut spills = Spills::default();
        let mut reply_pending = true;
        let mut escalation = Escalation::None;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut quota_stopped = false;
        let mut stopped = false;
        let ending = loop {
            if output.idle && !reply_pending {
                break Ending::Finished;
            }
            tokio::select! {
                message = handle.iopub.recv() => match message {
                    Some(message) => {
                        if let Some(event) = output.absorb(&message) {
                            for event in spills.take(event, &output, &self.workspace) {
                                let _ = events.send(event);
                            }
                        }
                    }
                    None => break Ending::KernelDied,
                },
                answer = &mut handle.reply, if reply_pending => {
                    reply_pending = false;
                    if let Ok(reply) = answer {
                        output.absorb_reply(&reply);
                    }
                }
                _ = kernel.death.cancelled() => break Ending::KernelDied,
                _ = self.quota_crossed.notified(), if escalation == Escalation::None => {
                    tracing::info!(session_id = %self.id, "the workspace went past its quota; stopping the cell");
                    quota_stopped = true;
                    deadline = tokio::time::Instant::now();
                }
                _ = stop.cancelled(), if escalation == Escalation::None && !stopped => {
                    tracing::info!(session_id = %self.id, "the cell's task was cancelled; stopping the cell");
                    stopped = true;
                    self.interrupt_requested.store(true, Ordering::SeqCst);
                    deadline = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    escalation = escalation.next();
                    deadline = tokio::time::Instant::now() + self.settings.interrupt_grace;
                    match escalation {
                        Escalation::InterruptRequested => {
                            tracing::info!(session_id = %self.id, "interrupting the cell");
                            if let Err(error) = kernel.client.interrupt().await {
                                tracing::warn!(session_id = %self.id, %error, "interrupt_request failed");
                            }
                        }
                        Escalation::Signalled => {
                            tracing::info!(session_id = %self.id, "kernel ignored the interrupt; sending SIGINT");
                            if let Err(error) = self.runtime.interrupt(&kernel.container_id).await {
                                tracing::warn!(session_id = %self.id, %error, "SIGINT failed");
                            }
                        }
                        Escalation::Restart | Escalation::None => break Ending::MustRestart,
                    }
                }
            }
        };
        drop(handle);

        let status = run_status(
            &ending,
            self.interrupt_requested.load(Ordering::SeqCst),
            escalation,
            quota_stopped,
            &output,
        );
        let why = if stopped {
            "its task was cancelled".to_string()
        } else if quota_stopped {
            format!(
                "the workspace went past its quota of {} bytes and the watchdog stopped the cell",
                self.workspace.quota_bytes()
            )
        } else {
            format!(
                "the cell ran past its {:.1} s timeout",
                timeout.as_secs_f64()
            )
        };
        let kernel_note = match ending {
            Ending::Finished
                if stopped || matches!(status, RunStatus::Timeout | RunStatus::QuotaExceeded) =>
            {
                Some(format!(
                    "{why}: it was interrupted; the kernel, its variables and the files written before were kept"
                ))
            }
            Ending::Finished => None,
            Ending::KernelDied => Some(self.explain_death(&kernel).await),
            Ending::MustRestart => {
                self.retire_kernel("the cell ignored interrupts and the kernel was restarted")
                    .await;
                let restarted = match self.ensure_kernel().await {
                    Ok(()) => "a fresh kernel was started; earlier variables are lost".to_string(),
                    Err(error) => format!("starting a fresh kernel failed: {error}"),
                };
                Some(format!(
                    "{why}; it ignored interrupts, so its kernel was restarted: {restarted}"
                ))
            }
        };
        Ok(Executed {
            status,
            output,
            kernel_note,
            output_files: spills.finish(),
        })
    }
}

/// How far a timed-out cell has been pushed: each deadline past the timeout takes one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escalation {
    None,
    InterruptRequested,
    Signalled,
    Restart,
}

impl Escalation {
    fn next(self) -> Self {
        match self {
            Escalation::None => Escalation::InterruptRequested,
            Escalation::InterruptRequested => Escalation::Signalled,
            Escalation::Signalled | Escalation::Restart => Escalation::Restart,
        }
    }
}

/// Why the wait for a cell's end stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The kernel went idle and replied.
    Finished,
    /// The kernel died under the cell.
    KernelDied,
    /// The cell ignored the interrupt request and SIGINT: its kernel must be replaced.
    MustRestart,
}

/// How a run ended, as the client sees it. A cell that finished after an interrupt the user
/// asked for was interrupted, even if it had also timed out; one the watchdog stopped
/// exceeded the quota; one that finished only because of the escalation timed out; otherwise
/// it failed when it raised or its reply did.
fn run_status(
    ending: &Ending,
    interrupt_requested: bool,
    escalation: Escalation,
    quota_stopped: bool,
    output: &ExecutionOutput,
) -> RunStatus {
    match ending {
        Ending::Finished if interrupt_requested => RunStatus::Interrupted,
        Ending::Finished | Ending::MustRestart if quota_stopped => RunStatus::QuotaExceeded,
        Ending::Finished if escalation != Escalation::None => RunStatus::Timeout,
        Ending::Finished if output.reply_failed || output.error.is_some() => RunStatus::Error,
        Ending::Finished => RunStatus::Ok,
        Ending::KernelDied => RunStatus::KernelDied,
        Ending::MustRestart => RunStatus::Timeout,
    }
}

/// Whether the cell failed on a write for want of space (ENOSPC, errno 28).
fn wrote_past_space(output: &ExecutionOutput) -> bool {
    output.error.as_ref().is_some_and(|error| {
        error.evalue.contains("[Errno 28]") || error.evalue.contains("No space left on device")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ErrorInfo;

    #[test]
    fn escalation_goes_interrupt_then_signal_then_restart() {
        let steps: Vec<_> = std::iter::successors(Some(Escalation::None), |s| Some(s.next()))
            .take(5)
            .collect();
        assert_eq!(
            steps,
            [
                Escalation::None,
                Escalation::InterruptRequested,
                Escalation::Signalled,
                Escalation::Restart,
                Escalation::Restart
            ]
        );
    }

    #[test]
    fn status_follows_how_the_run_ended() {
        let clean = ExecutionOutput::with_stream_limit(64);
        let mut raised = ExecutionOutput::with_stream_limit(64);
        raised.reply_failed = true;
        let status = |ending, interrupted, escalation, output| {
            run_status(&ending, interrupted, escalation, false, output)
        };
        let none = Escalation::None;
        assert_eq!(status(Ending::Finished, false, none, &clean), RunStatus::Ok);
        assert_eq!(
            status(Ending::Finished, false, none, &raised),
            RunStatus::Error
        );
        assert_eq!(
            status(Ending::Finished, true, Escalation::Signalled, &raised),
            RunStatus::Interrupted
        );
        assert_eq!(
            status(
                Ending::Finished,
                false,
                Escalation::InterruptRequested,
                &raised
            ),
            RunStatus::Timeout
        );
        assert_eq!(
            status(Ending::KernelDied, true, none, &clean),
            RunStatus::KernelDied
        );
        assert_eq!(
            status(Ending::MustRestart, false, Escalation::Restart, &clean),
            RunStatus::Timeout
        );
        let stopped = Escalation::InterruptRequested;
        for ending in [Ending::Finished, Ending::MustRestart] {
            assert_eq!(
                run_status(&ending, false, stopped, true, &raised),
                RunStatus::QuotaExceeded
            );
        }
        assert_eq!(
            run_status(&Ending::Finished, true, stopped, true, &raised),
            RunStatus::Interrupted
        );
    }

    #[test]
    fn only_enospc_errors_are_writes_past_space() {
        let mut output = ExecutionOutput::with_stream_limit(64);
        assert!(!wrote_past_space(&output));
        output.error = Some(ErrorInfo {
            ename: "OSError".to_string(),
            evalue: "[Errno 28] No space left on device".to_string(),
            traceback: Vec::new(),
        });
        assert!(wrote_past_space(&output));
        output.error = Some(ErrorInfo {
            ename: "OSError".to_string(),
            evalue: "[Errno 2] No such file or directory".to_string(),
            traceback: Vec::new(),
        });
        assert!(!wrote_past_space(&output));
    }
}
