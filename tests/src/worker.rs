//! Temporal workers for tests: in-process (its own thread and runtime, since the worker's future
//! is not `Send`), or the real `creditflow worker` binary as a child process a test can SIGKILL.

use std::{
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use crate::TestApp;

pub struct TestWorker {
    pub task_queue: String,
    shutdown: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl TestWorker {
    /// Starts an in-process worker for `app` (its database, emulator, SMTP server, task queue).
    pub fn start(app: &TestApp) -> anyhow::Result<TestWorker> {
        let task_queue = app.task_queue.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Box<dyn FnOnce() + Send>>>();
        let (url, queue, settings, temporal_url) = (
            app.database_url.clone(),
            task_queue.clone(),
            app.settings.clone(),
            app.temporal_url.clone(),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("worker runtime");
            rt.block_on(async move {
                let setup = async {
                    let store = crate::connect_store(&url, 8).await?;
                    let temporal = crate::connect_temporal_at(&temporal_url).await?;
                    // The production wiring, from the app's settings.
                    let deps = workers::app::activity_deps(&settings, store)?;
                    anyhow::Ok((deps, temporal))
                };
                match setup.await {
                    Ok((deps, temporal)) => {
                        let ready = ready_tx.clone();
                        let ran = workers::app::run_worker(
                            deps,
                            temporal,
                            &queue,
                            test_topup_policy(),
                            None,
                            move |stop| {
                                let _ = ready.send(Ok(stop));
                            },
                        )
                        .await;
                        if let Err(e) = ran {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("{e}")));
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

/// Soft declines retried after 1 s, then 2 s: tests do not wait minutes.
pub fn test_topup_policy() -> workers::dispatch::TopupPolicy {
    workers::dispatch::TopupPolicy {
        attempts_max: 4,
        backoff_initial_secs: 1,
        backoff_max_secs: 2,
        daily_max: 10,
        settle_recheck_secs: 3600,
        alert_repeat_after_secs: 3600,
    }
}

/// The `creditflow worker` binary (built by `scripts/up`) as a child process.
pub struct ProcessWorker {
    child: Child,
}

impl ProcessWorker {
    pub fn start(app: &TestApp) -> anyhow::Result<ProcessWorker> {
        ProcessWorker::start_with(app, &[])
    }

    /// Starts the binary with extra settings over the app's (e.g. a `/metrics` port).
    pub fn start_with(app: &TestApp, extra_env: &[(&str, &str)]) -> anyhow::Result<ProcessWorker> {
        let root = crate::workspace_root();
        let bin = root.join("target/debug/creditflow");
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run scripts/up (it builds it)",
            bin.display()
        );
        // Its log goes next to the other test artifacts, for when a test fails.
        let log_dir = root.join(".local/test-workers");
        std::fs::create_dir_all(&log_dir)?;
        let log = std::fs::File::create(log_dir.join(format!(
            "{}-{}.log",
            app.task_queue,
            uuid::Uuid::now_v7()
        )))?;
        let child = Command::new(bin)
            .arg("worker")
            .current_dir(&root)
            .env("CREDITFLOW_ENV", "test")
            .envs(app.worker_env())
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(ProcessWorker { child })
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        self.kill();
    }
}
