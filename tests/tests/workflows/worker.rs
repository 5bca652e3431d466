use std::time::Duration;

use temporalio_client::{WorkflowGetResultOptions, WorkflowStartOptions};
use tests::{TestApp, worker::TestWorker};
use workflows::health::PingWorkflow;

/// The worker polls its task queue and runs a workflow with an activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_polls_its_task_queue_and_runs_a_workflow_with_an_activity() {
    let app = TestApp::spawn().await.unwrap();
    let worker = TestWorker::start(&app).unwrap();
    let id = format!("ping-{}", uuid::Uuid::now_v7());

    let handle = app
        .temporal
        .start_workflow(
            PingWorkflow::run,
            "hello".to_string(),
            WorkflowStartOptions::new(worker.task_queue.clone(), id).build(),
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        handle.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    .expect("the worker answered within 30 s")
    .unwrap();

    assert_eq!(answer, "pong: hello");
}
