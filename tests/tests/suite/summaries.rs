use std::time::Duration;

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tests::{OPERATOR_KEY, TestApp, TestOrg, worker::TestWorker};

fn event(id: &str, at: &str, tokens: u64) -> Value {
    // gpt-4o input: 4,000 tokens = 1 credit.
    json!({"id": id, "type": "ai_tokens", "occurred_at": at, "model": "gpt-4o", "operation": "chat",
           "user": "ana", "input_tokens": tokens})
}

async fn send(app: &TestApp, org: &TestOrg, events: Vec<Value>) {
    let a = app
        .call(
            Method::POST,
            "/v1/usage",
            Some(&org.key),
            Some(&json!({ "events": events })),
            &[],
        )
        .await;
    assert_eq!(a.body["rejected"], 0, "{}", a.text);
}

async fn summary(app: &TestApp, org: &TestOrg, month: &str) -> Value {
    let s = app
        .get(&format!("/v1/orgs/{}/summaries/{month}", org.id), &org.key)
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    s.body
}

fn d(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

async fn run_month(app: &TestApp, month: &str, page_size: u32, pages_per_run: u32) -> String {
    let cfg = workers::config::Summaries {
        sync_schedule_on_start: false,
        workflow_id_prefix: format!("{}-", app.task_queue),
        grace_hours: 6,
        page_size,
        pages_per_run,
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        workers::summaries::run_month(&app.temporal, &app.task_queue, &cfg, month),
    )
    .await
    .expect("the summaries finished")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_edges_and_leap_days_land_in_the_right_months() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("edges").await;
    send(
        &app,
        &org,
        vec![
            event("feb-last", "2024-02-29T23:59:59.999Z", 4000),
            event("mar-first", "2024-03-01T00:00:00Z", 8000),
            event("feb-2023", "2023-02-28T23:59:59.999Z", 12000),
            event("mar-2023", "2023-03-01T00:00:00.000Z", 16000),
        ],
    )
    .await;

    let feb = summary(&app, &org, "2024-02").await;
    let mar = summary(&app, &org, "2024-03").await;
    let feb23 = summary(&app, &org, "2023-02").await;
    let mar23 = summary(&app, &org, "2023-03").await;

    assert_eq!(feb["used_credits"], "1.000000");
    assert_eq!(mar["used_credits"], "2.000000");
    assert_eq!(feb23["used_credits"], "3.000000");
    assert_eq!(mar23["used_credits"], "4.000000");
    assert_eq!(feb["provisional"], true);
    assert_eq!(feb["closing_credits"], mar["opening_credits"]);
    assert_eq!(feb["opening_credits"], "-7.000000");
    assert_eq!(feb["usage"][0]["input_tokens"], 4000);
    assert_eq!(feb["users"][0]["user"], "ana");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generating_a_month_twice_stores_one_summary_and_a_late_event_a_new_revision() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("gen").await;
    send(&app, &org, vec![event("a", "2024-05-10T10:00:00Z", 4000)]).await;

    let first = run_month(&app, "2024-05", 500, 40).await;
    let second = run_month(&app, "2024-05", 500, 40).await;
    let stored = summary(&app, &org, "2024-05").await;

    assert!(first.contains("1 summaries written"), "{first}");
    assert!(second.contains("0 summaries written"), "{second}");
    assert_eq!(stored["provisional"], false);
    assert_eq!(stored["revision"], 1);

    // Late usage for May: the next run keeps revision 1 and stores revision 2.
    send(
        &app,
        &org,
        vec![event("late", "2024-05-31T23:00:00Z", 8000)],
    )
    .await;
    run_month(&app, "2024-05", 500, 40).await;
    let revised = summary(&app, &org, "2024-05").await;
    assert_eq!(revised["revision"], 2);
    assert_eq!(revised["used_credits"], "3.000000");
    let month: billing::summary::Month = "2024-05".parse().unwrap();
    assert_eq!(
        app.store.summary_revisions(org.id, month).await.unwrap(),
        [1, 2]
    );
    let june = summary(&app, &org, "2024-06").await;
    assert_eq!(june["opening_credits"], revised["closing_credits"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_continue_as_new_cover_every_org_once() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let mut orgs = Vec::new();
    for i in 0..5 {
        let org = app.create_org(&format!("p{i}")).await;
        send(
            &app,
            &org,
            vec![event("e", "2024-07-01T12:00:00Z", 4000 * (i + 1))],
        )
        .await;
        orgs.push(org);
    }

    // Pages of 2 orgs, 1 page per run: the workflow continues as new twice.
    let done = run_month(&app, "2024-07", 2, 1).await;

    assert!(done.contains("5 orgs, 5 summaries written"), "{done}");
    for (i, org) in orgs.iter().enumerate() {
        let s = summary(&app, org, "2024-07").await;
        assert_eq!(s["revision"], 1);
        assert_eq!(d(&s["used_credits"]), Decimal::from(i as i64 + 1));
    }
}

#[tokio::test]
async fn every_month_reconciles_with_the_ledger() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("reconcile").await;
    // Usage spread over four past months, and purchases-like movements booked now.
    let mut events = Vec::new();
    for i in 0..120u64 {
        let month = 3 + i % 4;
        let day = 1 + (i * 7) % 28;
        events.push(event(
            &format!("e{i}"),
            &format!("2025-{month:02}-{day:02}T{:02}:00:00Z", i % 24),
            1000 + i * 37,
        ));
    }
    send(&app, &org, events).await;
    app.adjust(org.id, "500", "grant", "g1").await;
    app.adjust(org.id, "-20.5", "fix", "g2").await;

    let months = [
        "2025-02", "2025-03", "2025-04", "2025-05", "2025-06", "2025-07",
    ];
    let mut previous_closing: Option<Value> = None;
    let mut used_total = Decimal::ZERO;
    for m in months {
        let s = summary(&app, &org, m).await;
        if let Some(prev) = &previous_closing {
            assert_eq!(
                &s["opening_credits"], prev,
                "{m}: opening is the previous closing"
            );
        }
        let lines: Decimal = s["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| d(&l["cost_credits"]))
            .sum();
        assert_eq!(lines, d(&s["used_credits"]), "{m}: lines sum to used");
        let users: Decimal = s["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| d(&l["cost_credits"]))
            .sum();
        assert_eq!(users, d(&s["used_credits"]), "{m}: users sum to used");
        used_total += d(&s["used_credits"]);
        previous_closing = Some(s["closing_credits"].clone());
    }
    let now = chrono::Utc::now().format("%Y-%m").to_string();
    let current = summary(&app, &org, &now).await;
    let b = app
        .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
        .await;
    assert_eq!(
        current["closing_credits"], b.body["balance_credits"],
        "this month closes at today's balance"
    );
    assert_eq!(
        d(&current["adjusted_credits"]),
        "479.5".parse::<Decimal>().unwrap()
    );
    assert_eq!(used_total, d(&b.body["totals"]["used_credits"]));
}

#[tokio::test]
async fn summaries_are_filtered_by_org_year_and_month_and_exported_as_csv() {
    let app = TestApp::spawn().await.unwrap();
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;
    send(&app, &a, vec![event("x", "2025-01-15T00:00:00Z", 4000)]).await;

    let own = app.get("/v1/summaries?year=2025&month=1", &a.key).await;
    let year = app.get("/v1/summaries?year=2025", &a.key).await;
    let all = app
        .get("/v1/summaries?year=2025&month=1", OPERATOR_KEY)
        .await;
    let csv = app
        .get("/v1/summaries?year=2025&month=1&format=csv", &a.key)
        .await;

    assert_eq!(own.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(own.body["data"][0]["used_credits"], "1.000000");
    assert!(year.body["data"].as_array().unwrap().len() >= 10);
    assert_eq!(all.body["data"].as_array().unwrap().len(), 2);
    assert!(csv.text.starts_with("org_id,month,revision,provisional"));
    assert!(csv.text.contains(",2025-01,0,true,"));
    app.get(&format!("/v1/summaries?org={}", b.id), &a.key)
        .await
        .assert_problem(403, "wrong_org");
    app.get("/v1/summaries?month=3", &a.key)
        .await
        .assert_problem(400, "invalid_month");
    app.get(&format!("/v1/orgs/{}/summaries/2025-13", a.id), &a.key)
        .await
        .assert_problem(400, "invalid_month");
}

#[tokio::test]
async fn the_schedule_is_created_once_and_kept_in_sync() {
    let app = TestApp::spawn().await.unwrap();
    let cfg = workers::config::Summaries {
        sync_schedule_on_start: false,
        workflow_id_prefix: format!("{}-", app.task_queue),
        grace_hours: 6,
        page_size: 500,
        pages_per_run: 40,
    };

    workers::summaries::sync_schedule(&app.temporal, &app.task_queue, &cfg)
        .await
        .unwrap();
    let cfg = workers::config::Summaries {
        sync_schedule_on_start: false,
        workflow_id_prefix: format!("{}-", app.task_queue),
        grace_hours: 7,
        ..cfg
    };
    workers::summaries::sync_schedule(&app.temporal, &app.task_queue, &cfg)
        .await
        .unwrap();

    let described = app
        .temporal
        .get_schedule_handle(workflows::summary::SCHEDULE_ID)
        .describe(Default::default())
        .await
        .unwrap();
    let raw = described.raw().schedule.clone().unwrap();
    let spec = raw.spec.unwrap();
    assert!(format!("{:?}", raw.action).contains("monthly_summaries"));
    // The server keeps the cron as a structured calendar: day 1, hour 7 after the update.
    let calendar = format!("{:?}{:?}", spec.structured_calendar, spec.cron_string);
    assert!(
        calendar.contains("start: 7") || calendar.contains("0 7 1 * *"),
        "{calendar}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_finishes_with_no_duplicate_and_no_gap() {
    let app = TestApp::spawn().await.unwrap();
    let mut worker = tests::worker::ProcessWorker::start(&app).unwrap();
    let mut orgs = Vec::new();
    for i in 0..24 {
        let org = app.create_org(&format!("k{i}")).await;
        send(&app, &org, vec![event("e", "2024-09-09T09:00:00Z", 4000)]).await;
        orgs.push(org);
    }
    let run = {
        let (temporal, queue) = (app.temporal.clone(), app.task_queue.clone());
        tokio::spawn(async move {
            let cfg = workers::config::Summaries {
                sync_schedule_on_start: false,
                workflow_id_prefix: format!("{queue}-"),
                grace_hours: 6,
                page_size: 1,
                pages_per_run: 4,
            };
            workers::summaries::run_month(&temporal, &queue, &cfg, "2024-09").await
        })
    };
    tests::eventually("a few summaries", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM monthly_summaries")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        (n >= 3).then_some(())
    })
    .await;
    worker.kill();
    let _restarted = tests::worker::ProcessWorker::start(&app).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert!(done.starts_with("2024-09"), "{done}");
    let rows: Vec<(uuid::Uuid, i32)> =
        sqlx::query_as("SELECT org_id, revision FROM monthly_summaries ORDER BY org_id")
            .fetch_all(app.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 24, "one summary per org");
    assert!(
        rows.iter().all(|(_, r)| *r == 1),
        "no second revision: {rows:?}"
    );
}
