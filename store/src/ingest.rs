//! The usage write path: coalesces concurrent requests into few transactions.
//!
//! Requests wait in one bounded queue. A free writer task takes every request waiting (up to
//! `batch_events_max` events) and records them in one transaction: one commit (one fsync) for
//! many requests, and one balance update per org per batch however many events it holds.
//! Several writers run at once; for a hot org they insert events in parallel and take turns
//! only for the balance row (see [`Store::record_usage`]).

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{
    Store, StoreError,
    usage::{JobResult, UsageJob},
};

/// Bounds of the write path.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Writer tasks, each with its own connection while it writes.
    pub writers: usize,
    /// Requests that may wait before submitters wait for room (backpressure).
    pub queue_jobs: usize,
    /// Events per transaction at most.
    pub batch_events_max: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            writers: 1,
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
    queue: mpsc::Sender<Pending>,
}

impl Ingestor {
    /// Starts the writers on a runtime of their own, in their own threads, with their own
    /// connections: building and encoding a batch of thousands of rows is CPU work, and it must
    /// not hold up the threads that answer light requests (balance reads). The writers stop
    /// when every `Ingestor` handle is dropped.
    pub fn start(store: Store, config: IngestConfig) -> Ingestor {
        let (queue, rx) = mpsc::channel(config.queue_jobs.max(1));
        let writers = config.writers.max(1);
        let batch_events_max = config.batch_events_max.max(1);
        let options = store.pool().connect_options();
        let spawned = std::thread::Builder::new()
            .name("usage-writers".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    // One thread: the writers mostly wait on Postgres, and every runnable thread
                    // competes for the same two cores.
                    .worker_threads(1)
                    .thread_name("usage-writer")
                    .on_thread_start(|| {
                        // Below the threads that answer reads: a batch may wait a moment, a
                        // balance read should not.
                        // SAFETY: setpriority only changes this thread's nice value.
                        unsafe {
                            libc::setpriority(libc::PRIO_PROCESS, 0, 5);
                        }
                    })
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "usage writers could not start");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let pool = PgPoolOptions::new()
                        .max_connections(writers as u32)
                        .connect_lazy_with((*options).clone());
                    let store = store.with_pool(pool);
                    let rx = Arc::new(Mutex::new(rx));
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| tokio::spawn(writer(store.clone(), rx.clone(), batch_events_max)))
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "usage writer thread could not start");
        }
        Ingestor { queue }
    }

    /// Records one request's events; resolves when they are committed.
    pub async fn submit(&self, job: UsageJob) -> Result<JobResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { job, reply })
            .await
            .map_err(|_| StoreError::Schema("the usage writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Schema("the usage writer dropped a request".into()))?
    }
}

async fn writer(store: Store, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, batch_events_max: usize) {
    loop {
        // One writer at a time drains the queue; the others are writing meanwhile.
        let mut batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
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
            batch
        };
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
