//! The usage write path: coalesces concurrent requests into few transactions, serving orgs
//! fairly.
//!
//! Each org has its own queue of at most `queue_jobs_per_org` requests; a submitter whose org's
//! queue is full waits for room (backpressure on that org alone). A free writer task takes
//! requests round-robin across the orgs waiting, one per org per turn, up to `batch_events_max`
//! events, and records them in one transaction: one commit (one fsync) for many requests, one
//! balance update per org per batch. So one org's flood fills only its own queue, and another
//! org's request waits at most for the batch being written and its own turn in the next, not
//! behind the flood. Several writers may run at once; for a hot org they insert events in
//! parallel and take turns only for the balance row (see [`crate::UsageEvents::record_usage`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex as StdMutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use uuid::Uuid;

use crate::{
    Store, StoreError,
    usage::{JobResult, UsageJob},
};

/// Bounds of the write path.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Writer tasks, each with its own connection while it writes.
    pub writers: usize,
    /// Requests of one org that may wait before its submitters wait for room (backpressure).
    pub queue_jobs_per_org: usize,
    /// Events per transaction at most.
    pub batch_events_max: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            writers: 1,
            queue_jobs_per_org: 64,
            batch_events_max: 5000,
        }
    }
}

enum Work {
    Job {
        job: UsageJob,
        reply: oneshot::Sender<Result<JobResult, StoreError>>,
        /// The org's queue slot, freed once the job is written.
        _slot: OwnedSemaphorePermit,
    },
    /// A readiness probe: answered once the writer's connection committed a transaction.
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

#[derive(Default)]
struct Queues {
    /// Waiting work per org (probes under the nil id).
    waiting: HashMap<Uuid, VecDeque<Work>>,
    /// Orgs with waiting work, in turn order.
    turns: VecDeque<Uuid>,
    /// Each org's queue slots.
    slots: HashMap<Uuid, Arc<Semaphore>>,
}

struct Shared {
    queues: StdMutex<Queues>,
    ready: Notify,
    handles: AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
    per_org: usize,
}

impl Shared {
    fn push(&self, org: Uuid, work: Work) {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = q.waiting.entry(org).or_default();
        let first = queue.is_empty();
        queue.push_back(work);
        if first {
            q.turns.push_back(org);
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Work for one transaction: round-robin over the orgs waiting, up to `events_max` events.
    fn take(&self, events_max: usize) -> Vec<Work> {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = Vec::new();
        let mut events = 0;
        while events < events_max {
            let Some(org) = q.turns.pop_front() else {
                break;
            };
            let Some(queue) = q.waiting.get_mut(&org) else {
                continue;
            };
            let Some(work) = queue.pop_front() else {
                continue;
            };
            let more = !queue.is_empty();
            if more {
                q.turns.push_back(org);
            } else {
                q.waiting.remove(&org);
            }
            if let Work::Job { job, .. } = &work {
                // A hold has no events; it counts as one, so a batch stays bounded.
                events += job.events.len().max(1);
            }
            batch.push(work);
        }
        let more = !q.turns.is_empty();
        drop(q);
        if more {
            // Another writer may start on the rest meanwhile.
            self.ready.notify_one();
        }
        batch
    }

    fn slots_of(&self, org: Uuid) -> Arc<Semaphore> {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if q.slots.len() >= SLOTS_KEPT_MAX {
            // Forget the orgs with nothing in flight; they get a fresh semaphore next time.
            let per_org = self.per_org;
            q.slots.retain(|_, s| s.available_permits() < per_org);
        }
        q.slots
            .entry(org)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_org)))
            .clone()
    }
}

/// Orgs whose queue slots are kept before idle ones are forgotten.
const SLOTS_KEPT_MAX: usize = 10_000;

/// Handle on the writer tasks; cheap to clone. The tasks stop when every handle is dropped.
pub struct Ingestor {
    shared: Arc<Shared>,
}

impl Clone for Ingestor {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::SeqCst);
        Ingestor {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Ingestor {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.closed.store(true, Ordering::SeqCst);
            self.shared.ready.notify_waiters();
        }
    }
}

impl Ingestor {
    /// Starts the writers on a runtime of their own, in their own threads, with their own
    /// connections: building and encoding a batch of thousands of rows is CPU work, and it must
    /// not hold up the threads that answer light requests (balance reads). The writers stop
    /// when every `Ingestor` handle is dropped.
    pub fn start(store: Store, config: IngestConfig) -> Ingestor {
        let shared = Arc::new(Shared {
            queues: StdMutex::new(Queues::default()),
            ready: Notify::new(),
            handles: AtomicUsize::new(1),
            closed: false.into(),
            per_org: config.queue_jobs_per_org.max(1),
        });
        let writers = config.writers.max(1);
        let batch_events_max = config.batch_events_max.max(1);
        let options = store.pool().connect_options();
        let acquire_timeout = store.pool().options().get_acquire_timeout();
        let for_writers = shared.clone();
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
                        #[allow(unsafe_code, reason = "the one FFI call: a thread's nice value")]
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
                        .acquire_timeout(acquire_timeout)
                        .connect_lazy_with((*options).clone());
                    let store = store.with_pool(pool);
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| {
                            tokio::spawn(writer(
                                store.clone(),
                                for_writers.clone(),
                                batch_events_max,
                            ))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "usage writer thread could not start");
        }
        Ingestor { shared }
    }

    /// Records one request's events; resolves when they are committed. Waits while the org
    /// already has `queue_jobs_per_org` requests waiting.
    pub async fn submit(&self, job: UsageJob) -> Result<JobResult, StoreError> {
        let slot = self
            .shared
            .slots_of(job.org_id)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WriterUnavailable("it has stopped"))?;
        let (reply, answer) = oneshot::channel();
        self.shared.push(
            job.org_id,
            Work::Job {
                job,
                reply,
                _slot: slot,
            },
        );
        answer
            .await
            .map_err(|_| StoreError::WriterUnavailable("it dropped the request"))?
    }

    /// Whether the writers can commit now: a transaction that takes a transaction id, on a
    /// writer's own connection, in turn with the usage batches.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.shared.push(Uuid::nil(), Work::Probe(reply));
        answer
            .await
            .map_err(|_| StoreError::WriterUnavailable("it dropped a probe"))?
    }
}

async fn writer(store: Store, shared: Arc<Shared>, batch_events_max: usize) {
    loop {
        let notified = shared.ready.notified();
        let work = shared.take(batch_events_max);
        if work.is_empty() {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
            continue;
        }
        let mut batch = Vec::with_capacity(work.len());
        for w in work {
            match w {
                Work::Probe(reply) => {
                    let _ = reply.send(store.probe_commit().await);
                }
                Work::Job { job, reply, _slot } => batch.push((job, reply, _slot)),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let jobs: Vec<UsageJob> = batch.iter().map(|(j, _, _)| j.clone()).collect();
        match store.usage().record_usage(&jobs).await {
            Ok(results) => {
                for ((_, reply, _), r) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) if batch.len() == 1 => {
                let _ = batch.pop().map(|(_, reply, _)| reply.send(Err(e)));
            }
            Err(e) if e.is_unavailable() => {
                // The database is not answering: every request of the batch gets that answer
                // now, rather than each waiting for the database again one by one.
                tracing::warn!(error = %e, requests = batch.len(), "usage batch failed: database unavailable");
                for (_, reply, _) in batch {
                    let _ = reply.send(Err(StoreError::Db(sqlx::Error::PoolTimedOut)));
                }
            }
            Err(e) => {
                // One request's failure must not fail the others: retry each on its own.
                tracing::warn!(error = %e, requests = batch.len(), "usage batch failed; retrying one by one");
                for (job, reply, _) in batch {
                    let r = store
                        .usage()
                        .record_usage(std::slice::from_ref(&job))
                        .await
                        .map(|mut v| v.remove(0));
                    let _ = reply.send(r);
                }
            }
        }
    }
}
