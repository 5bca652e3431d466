//! A Temporal worker for one test, on its own task queue, in its own thread (the worker's
//! future is not `Send`, and a dedicated runtime lets a test stop it like a crashed process).

use std::{sync::mpsc, thread::JoinHandle, time::Duration};

pub struct TestWorker {
    pub task_queue: String,
    shutdown: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl TestWorker {
    /// Starts a worker against `database_url` polling a fresh task queue.
    pub fn start(database_url: &str) -> anyhow::Result<TestWorker> {
        let task_queue = format!("test-{}", uuid::Uuid::now_v7());
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Box<dyn FnOnce() + Send>>>();
        let url = database_url.to_string();
        let queue = task_queue.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("worker runtime");
            rt.block_on(async move {
                let setup = async {
                    let store = crate::connect_store(&url, 8).await?;
                    let temporal = crate::connect_temporal().await?;
                    workers::app::worker(store, temporal, &queue)
                };
                match setup.await {
                    Ok(mut worker) => {
                        let handle = worker.shutdown_handle();
                        let _ = ready_tx.send(Ok(Box::new(handle)));
                        if let Err(e) = worker.run().await {
                            eprintln!("test worker stopped with an error: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        let shutdown = ready_rx.recv_timeout(Duration::from_secs(30))??;
        Ok(TestWorker {
            task_queue,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
