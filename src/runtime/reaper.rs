//! The reaper behind [`KernelContainer`](super::KernelContainer): one task per runtime that
//! removes what a dropped owner left behind, by the id the owner handed it. Each engine says
//! how an id is removed; the reaper only queues, logs what could not be removed, and on
//! cancel removes what is still queued before it stops.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RuntimeError;

/// Removes every id that arrives on `ids` with `remove`, until `cancel`, then what is queued.
pub(super) async fn reap<F, Fut>(
    mut ids: mpsc::UnboundedReceiver<String>,
    cancel: CancellationToken,
    remove: F,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), RuntimeError>>,
{
    loop {
        let id = tokio::select! {
            id = ids.recv() => id,
            _ = cancel.cancelled() => break,
        };
        let Some(id) = id else { return };
        if let Err(error) = remove(id).await {
            tracing::warn!(%error, "could not reap a kernel container");
        }
    }
    while let Ok(id) = ids.try_recv() {
        if let Err(error) = remove(id).await {
            tracing::warn!(%error, "could not reap a kernel container");
        }
    }
}
