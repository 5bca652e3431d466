//! The usage write path: coalesces concurrent requests into few transactions.
//!
//! Each org is owned by one writer task (chosen by hashing its id), so an org's events are
//! recorded by one writer in arrival order and writers never wait on each other's org rows.
//! A writer takes every request waiting in its queue (up to `batch_events_max` events) and
//! records them in one transaction: one commit (one fsync) for many requests, and one
//! balance update per org per batch however many events it holds.

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    Store, StoreError,
    usage::{JobResult, UsageJob},
};

/// Bounds of the write path.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Writer tasks, each with its own connection while it writes.
    pub writers: usize,
    /// Requests that may wait per writer before submitters wait for room (backpressure).
    pub queue_jobs: usize,
    /// Events per transaction at most.
    pub batch_events_max: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            writers: 4,
            queue_jobs: 1024,
            batch_events_max: 5000,
        }
    }
}

struct Pending {
    job: UsageJob,
    reply: oneshot::Sender<Result<JobResult, StoreError>>,
}

/// Handle on the writer tasks; cheap to clone. The tasks stop when every handle is dropped.
#[derive(Clone)]
pub struct Ingestor {
    queues: Arc<Vec<mpsc::Sender<Pending>>>,
}

impl Ingestor {
    /// Starts the writers on the current runtime.
    pub fn start(store: Store, config: IngestConfig) -> Ingestor {
        let queues = (0..config.writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(config.queue_jobs.max(1));
                tokio::spawn(writer(store.clone(), rx, config.batch_events_max.max(1)));
                tx
            })
            .collect();
        Ingestor {
            queues: Arc::new(queues),
        }
    }

    /// Records one request's events; resolves when they are committed.
    pub async fn submit(&self, job: UsageJob) -> Result<JobResult, StoreError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        job.org_id.hash(&mut h);
        let queue = &self.queues[(h.finish() % self.queues.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { job, reply })
            .await
            .map_err(|_| StoreError::Schema("the usage writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Schema("the usage writer dropped a request".into()))?
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Pending>, batch_events_max: usize) {
    while let Some(first) = rx.recv().await {
        let mut events = first.job.events.len();
        let mut batch = vec![first];
        while events < batch_events_max {
            match rx.try_recv() {
                Ok(p) => {
                    events += p.job.events.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let jobs: Vec<UsageJob> = batch.iter().map(|p| p.job.clone()).collect();
        match store.record_usage(&jobs).await {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(Ok(r));
                }
            }
            Err(e) if batch.len() == 1 => {
                let _ = batch.pop().map(|p| p.reply.send(Err(e)));
            }
            Err(e) => {
                // One request's failure must not fail the others: retry each on its own.
                tracing::warn!(error = %e, requests = batch.len(), "usage batch failed; retrying one by one");
                for p in batch {
                    let r = store
                        .record_usage(std::slice::from_ref(&p.job))
                        .await
                        .map(|mut v| v.remove(0));
                    let _ = p.reply.send(r);
                }
            }
        }
    }
}
