use std::time::Duration;

use billing::{
    Credits,
    summary::{Month, Movements},
};
use chrono::{DateTime, SecondsFormat, Utc};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use store::StoreError;
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

/// Summary settings for a test: its own workflow ids (they are global to the namespace), no
/// Schedule sync at worker start.
fn summaries_cfg(
    task_queue: &str,
    page_size: u32,
    pages_per_run: u32,
) -> workers::config::Summaries {
    workers::config::Summaries {
        sync_schedule_on_start: false,
        workflow_id_prefix: format!("{task_queue}-"),
        grace_hours: 6,
        page_size,
        pages_per_run,
        breakdown_max: store::DEFAULT_BREAKDOWN_MAX,
    }
}

async fn run_month(app: &TestApp, month: &str, page_size: u32, pages_per_run: u32) -> String {
    let cfg = summaries_cfg(&app.task_queue, page_size, pages_per_run);
    tokio::time::timeout(
        Duration::from_secs(60),
        workers::summaries::run_month(&app.temporal, &app.task_queue, &cfg, month),
    )
    .await
    .expect("the summaries finished")
    .unwrap()
}

/// Month edges and leap days land in the right months.
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

/// Generating a month twice stores one summary and a late event a new revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generating_a_month_twice_stores_one_summary_and_a_late_event_a_new_revision() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let org = app.create_org("gen").await;
    send(&app, &org, vec![event("a", "2024-05-10T10:00:00Z", 4000)]).await;

    let first = run_month(&app, "2024-05", 500, 40).await;
    let second = run_month(&app, "2024-05", 500, 40).await;
    let june_first = run_month(&app, "2024-06", 500, 40).await;
    let stored = summary(&app, &org, "2024-05").await;

    assert!(first.contains("1 summaries written"), "{first}");
    assert!(second.contains("0 summaries written"), "{second}");
    assert!(june_first.contains("1 summaries written"), "{june_first}");
    assert_eq!(stored["provisional"], false);
    assert_eq!(stored["revision"], 1);

    // Late usage for May: its transaction asks for a revision through the outbox, and the
    // dispatcher keeps revision 1 and stores revision 2; June, stored already, gets a revision 2
    // too, opening at May's new closing: the chain holds. Nobody has to run May again.
    send(
        &app,
        &org,
        vec![event("late", "2024-05-31T23:00:00Z", 8000)],
    )
    .await;
    let month: Month = "2024-05".parse().unwrap();
    tests::eventually("May revised", Duration::from_secs(30), || async {
        let revisions = app
            .store
            .summaries()
            .summary_revisions(org.id, month.next())
            .await
            .unwrap();
        (revisions.len() == 2).then_some(())
    })
    .await;
    let revised = summary(&app, &org, "2024-05").await;
    assert_eq!(revised["revision"], 2);
    assert_eq!(revised["used_credits"], "3.000000");
    assert_eq!(
        app.store
            .summaries()
            .summary_revisions(org.id, month)
            .await
            .unwrap(),
        [1, 2]
    );
    let june = summary(&app, &org, "2024-06").await;
    assert_eq!(june["provisional"], false);
    assert_eq!(june["revision"], 2);
    assert_eq!(june["opening_credits"], revised["closing_credits"]);
    assert_eq!(
        app.store
            .summaries()
            .summary_revisions(org.id, month.next())
            .await
            .unwrap(),
        [1, 2]
    );
    // A month never generated is not created by the revision, and running May once more
    // changes nothing anywhere.
    assert!(
        app.store
            .summaries()
            .summary_revisions(org.id, month.next().next())
            .await
            .unwrap()
            .is_empty()
    );
    let again = run_month(&app, "2024-05", 500, 40).await;
    assert!(again.contains("0 summaries written"), "{again}");
    assert!(!again.contains("later months"), "{again}");
}

/// Summaries run refuses the current and a future month.
#[tokio::test]
async fn summaries_run_refuses_the_current_and_a_future_month() {
    let app = TestApp::spawn().await.unwrap();
    let cfg = summaries_cfg(&app.task_queue, 500, 40);
    let current = Month::of(Utc::now());

    for month in [current, current.next()] {
        let refused =
            workers::summaries::run_month(&app.temporal, &app.task_queue, &cfg, &month.to_string())
                .await
                .expect_err("an open month is refused");
        assert!(
            refused.to_string().contains("is not over yet"),
            "{month}: {refused}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM monthly_summaries")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// Pages and continue as new cover every org once.
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
    // The last run of the generation (after two continue-as-new).
    let id = format!(
        "{}-{}",
        app.task_queue,
        workflows::summary::workflow_id("2024-07")
    );
    app.keep_history("monthly_summaries", &id).await;
}

/// Every month reconciles with the ledger.
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

/// Summaries are filtered by org year and month and exported as CSV.
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

/// Operators page through every org's summary of a month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_page_through_every_orgs_summary_of_a_month() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let mut orgs = Vec::new();
    for i in 0..5u64 {
        let org = app.create_org(&format!("paged-{i}")).await;
        send(
            &app,
            &org,
            vec![event(
                &format!("e{i}"),
                "2024-05-10T10:00:00Z",
                4000 * (i + 1),
            )],
        )
        .await;
        orgs.push(org);
    }
    let generated = run_month(&app, "2024-05", 500, 40).await;

    let mut pages: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounded: five orgs at two a page end on the third page; a cursor that never ends fails.
    for _ in 0..10 {
        let path = match &cursor {
            None => "/v1/summaries?year=2024&month=5&limit=2".to_string(),
            Some(c) => format!("/v1/summaries?year=2024&month=5&limit=2&cursor={c}"),
        };
        let page = app.get(&path, OPERATOR_KEY).await;
        assert_eq!(page.status, 200, "{}", page.text);
        cursor = page.body["next_cursor"].as_str().map(str::to_string);
        pages.push(page.body);
        if cursor.is_none() {
            break;
        }
    }
    let csv = app
        .get("/v1/summaries?year=2024&month=5&format=csv", OPERATOR_KEY)
        .await;

    assert!(generated.contains("5 summaries written"), "{generated}");
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p["data"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert!(pages.last().unwrap()["next_cursor"].is_null());
    let summaries: Vec<&Value> = pages
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap())
        .collect();
    let listed: Vec<&str> = summaries
        .iter()
        .map(|s| s["org_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<String> = orgs.iter().map(|o| o.id.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "every org once, in id order");
    assert!(
        summaries
            .iter()
            .all(|s| s["provisional"] == false && s["revision"] == 1),
        "the generated summaries: {summaries:?}"
    );
    assert_eq!(csv.text.lines().count(), 1 + 5, "{}", csv.text);
    app.get("/v1/summaries?year=2024&month=5&limit=0", OPERATOR_KEY)
        .await
        .assert_problem(400, "invalid_limit");
    app.get("/v1/summaries?year=2024&month=5&limit=1001", OPERATOR_KEY)
        .await
        .assert_problem(400, "invalid_limit");
    app.get("/v1/summaries?year=2024&month=5&cursor=nope", OPERATOR_KEY)
        .await
        .assert_problem(400, "invalid_cursor");
}

/// The schedule is created once and kept in sync.
#[tokio::test]
async fn the_schedule_is_created_once_and_kept_in_sync() {
    let app = TestApp::spawn().await.unwrap();
    let cfg = summaries_cfg(&app.task_queue, 500, 40);

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

/// A worker killed mid run finishes with no duplicate and no gap.
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
            let cfg = summaries_cfg(&queue, 1, 4);
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

/// The months the property test's movements fall in (a leap February among them), and the
/// months it generates: one before (all zero) and one after (only carried balances).
const PROP_MONTHS: [&str; 4] = ["2024-01", "2024-02", "2024-03", "2024-04"];
const GENERATED_MONTHS: [&str; 6] = [
    "2023-12", "2024-01", "2024-02", "2024-03", "2024-04", "2024-05",
];
const STARTER: &str = "01970000-0000-7000-8000-000000000001";
const GROWTH: &str = "01970000-0000-7000-8000-000000000002";

/// Where in its month a movement happens: the month's edges, or anywhere within it.
#[derive(Debug, Clone, Copy)]
enum When {
    First,
    Last,
    Within(u64),
}

fn instant(month: &str, when: When) -> DateTime<Utc> {
    let month: Month = month.parse().unwrap();
    let length_ms = (month.end() - month.start()).num_milliseconds();
    let offset_ms = match when {
        When::First => 0,
        When::Last => length_ms - 1,
        When::Within(r) => (r % length_ms as u64) as i64,
    };
    month.start() + chrono::TimeDelta::milliseconds(offset_ms)
}

/// One random movement of one org for the summaries property test.
#[derive(Debug, Clone)]
enum Movement {
    /// gpt-4o input tokens (4,000 tokens = 1 credit).
    Ai { tokens: u64 },
    /// Compute seconds (0.0012 credits each).
    Infra { vcpu_seconds: u32 },
    /// A paid checkout of Starter (1,000 credits) or Growth (5,000 + 250 bonus).
    Purchase { growth: bool },
    /// A refund of one of the org's earlier purchases (picked by index), in cents.
    Refund { purchase: usize, amount_minor: i64 },
    /// An operator adjustment, in micro-credits, either way.
    Adjust { micros: i64 },
}

#[derive(Debug, Clone)]
struct Step {
    org: usize,
    month: usize,
    when: When,
    movement: Movement,
}

/// A usage event that arrives after its month was generated.
#[derive(Debug, Clone)]
struct LateEvent {
    org: usize,
    month: usize,
    when: When,
    tokens: u64,
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        1 => Just(When::First),
        1 => Just(When::Last),
        4 => any::<u64>().prop_map(When::Within),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let movement = prop_oneof![
        3 => (1u64..=400_000).prop_map(|tokens| Movement::Ai { tokens }),
        2 => (1u32..=50_000).prop_map(|vcpu_seconds| Movement::Infra { vcpu_seconds }),
        2 => any::<bool>().prop_map(|growth| Movement::Purchase { growth }),
        2 => (any::<usize>(), 1i64..=6_000)
            .prop_map(|(purchase, amount_minor)| Movement::Refund { purchase, amount_minor }),
        2 => (1i64..=200_000_000, any::<bool>()).prop_map(|(m, negative)| Movement::Adjust {
            micros: if negative { -m } else { m }
        }),
    ];
    (0..2usize, 0..PROP_MONTHS.len(), when(), movement).prop_map(|(org, month, when, movement)| {
        Step {
            org,
            month,
            when,
            movement,
        }
    })
}

fn late_event() -> impl Strategy<Value = Option<LateEvent>> {
    proptest::option::of(
        (0..2usize, 0..PROP_MONTHS.len(), when(), 1u64..=400_000).prop_map(
            |(org, month, when, tokens)| LateEvent {
                org,
                month,
                when,
                tokens,
            },
        ),
    )
}

fn at_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Books one step's movement the way the service does (usage through the API; purchases,
/// refunds and adjustments through the store functions their workflows and routes call, with
/// the processor's part skipped), non-usage transfers at the step's time on a manual clock. Movements
/// the ledger refuses (a refund beyond what was paid, or anything but usage taking the balance
/// below zero) are left out: the expected figures come from the ledger, not from the steps.
async fn book_step(
    app: &TestApp,
    clock: &store::Clock,
    orgs: &[TestOrg],
    purchases: &mut [Vec<uuid::Uuid>],
    case: u32,
    i: usize,
    step: &Step,
) {
    let at = instant(PROP_MONTHS[step.month], step.when);
    clock.set(at);
    let booking = app.store.clone().with_clock(clock.clone());
    let org = &orgs[step.org];
    let user = format!("user-{}", i % 3);
    match step.movement {
        Movement::Ai { tokens } => {
            let e = json!({"id": format!("c{case}-s{i}"), "type": "ai_tokens",
                           "occurred_at": at_text(at), "model": "gpt-4o", "operation": "chat",
                           "user": user, "input_tokens": tokens});
            send(app, org, vec![e]).await;
        }
        Movement::Infra { vcpu_seconds } => {
            let e = json!({"id": format!("c{case}-s{i}"), "type": "infra",
                           "occurred_at": at_text(at), "resource": "compute", "user": user,
                           "quantity": vcpu_seconds.to_string(), "unit": "vcpu_seconds"});
            send(app, org, vec![e]).await;
        }
        Movement::Purchase { growth } => {
            let package = app
                .store
                .packages()
                .package((if growth { GROWTH } else { STARTER }).parse().unwrap())
                .await
                .unwrap();
            let (purchase, _) = booking
                .purchases()
                .create_purchase(
                    org.id,
                    &package,
                    "ana@acme.test",
                    None,
                    Utc::now() + chrono::TimeDelta::hours(1),
                    None,
                    None,
                )
                .await
                .unwrap();
            booking
                .purchases()
                .mark_purchase_paid(purchase.id, &format!("pi_c{case}s{i}"))
                .await
                .unwrap();
            booking
                .purchases()
                .grant_purchase(purchase.id)
                .await
                .unwrap();
            purchases[step.org].push(purchase.id);
        }
        Movement::Refund {
            purchase,
            amount_minor,
        } => {
            let bought = &purchases[step.org];
            if bought.is_empty() {
                return;
            }
            let purchase_id = bought[purchase % bought.len()];
            let requested = booking
                .refunds()
                .request_refund(
                    store::RefundOf::Purchase(purchase_id),
                    amount_minor,
                    "property test",
                    "operator:prop",
                    &format!("c{case}-s{i}"),
                )
                .await;
            let refund = match requested {
                Ok(r) => r,
                Err(
                    StoreError::RefundExceedsPayment { .. }
                    | StoreError::PaymentNotRefundable { .. }
                    | StoreError::InsufficientBalance { .. },
                ) => return,
                Err(e) => panic!("refund of {purchase_id}: {e}"),
            };
            booking
                .refunds()
                .refund_refunded(refund.id, &format!("re_c{case}s{i}"))
                .await
                .unwrap();
            booking.refunds().reverse_refund(refund.id).await.unwrap();
        }
        Movement::Adjust { micros } => {
            let key = format!("c{case}-s{i}");
            let adjusted = booking
                .ledger()
                .post_adjustment(
                    org.id,
                    Credits::from_stored(Decimal::new(micros, 6)),
                    "property test",
                    "operator:prop",
                    &key,
                )
                .await;
            match adjusted {
                Ok(_) => {}
                Err(StoreError::InsufficientBalance { .. }) => {}
                Err(e) => panic!("adjustment: {e}"),
            }
        }
    }
}

/// An org's movements in `month` computed straight from its transfers: each transfer signed
/// from the org's side, usage attributed to its event's `occurred_at` (through
/// `usage_events.transfer_id`), every other kind to the transfer's `created_at`.
/// A transfer as the org sees it: kind, signed amount, booked at, and its usage's time.
type SignedTransfer = (String, Decimal, DateTime<Utc>, Option<DateTime<Utc>>);

async fn ledger_movements(app: &TestApp, org: uuid::Uuid, month: Month) -> Movements {
    let rows: Vec<SignedTransfer> = sqlx::query_as(
        "SELECT t.kind,
                CASE WHEN t.credit_account_id = a.id THEN t.amount ELSE -t.amount END,
                t.created_at, u.occurred_at
           FROM transfers t
           JOIN accounts a ON a.org_id = t.org_id
           LEFT JOIN usage_events u ON u.transfer_id = t.id
          WHERE t.org_id = $1",
    )
    .bind(org)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let mut opening = Decimal::ZERO;
    let mut during = std::collections::HashMap::<String, Decimal>::new();
    for (kind, signed, created_at, occurred_at) in rows {
        let at = if kind == "usage" {
            occurred_at.expect("every usage transfer has its event")
        } else {
            created_at
        };
        if at < month.start() {
            opening += signed;
        } else if at < month.end() {
            *during.entry(kind).or_default() += signed;
        }
    }
    let of = |kind: &str| Credits::from_stored(during.get(kind).copied().unwrap_or_default());
    Movements {
        opening: Credits::from_stored(opening),
        purchased: of("purchase"),
        bonus: of("bonus"),
        topup: of("topup"),
        refunded: -of("refund"),
        adjusted: of("adjustment"),
        reversed: of("reversal"),
        used: -of("usage"),
        promo: of("promo"),
        expired: -of("expiry"),
    }
}

/// Checks every generated month of every org against the ledger and the chain.
async fn assert_summaries_reconcile(app: &TestApp, orgs: &[TestOrg], context: &str) {
    for org in orgs {
        let mut previous_closing: Option<Credits> = None;
        for m in GENERATED_MONTHS {
            let month: Month = m.parse().unwrap();
            let s = app
                .store
                .summaries()
                .latest_summaries(&[org.id], month)
                .await
                .unwrap()
                .remove(&org.id)
                .unwrap_or_else(|| panic!("{m}: no stored summary; {context}"));
            let mv = s.movements;
            let expected = ledger_movements(app, org.id, month).await;

            // (a) the usage lines (and the per-user lines) add up to the ledger's usage debits
            let sum = |lines: &Value| -> Decimal {
                lines
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| d(&l["cost_credits"]))
                    .sum()
            };
            assert_eq!(
                sum(&s.lines),
                expected.used.as_decimal(),
                "{m}: usage lines vs ledger; {context}"
            );
            assert_eq!(
                sum(&s.users),
                expected.used.as_decimal(),
                "{m}: user lines vs ledger; {context}"
            );
            // (b) closing = opening + in − out, in plain decimals
            let x = |c: Credits| c.as_decimal();
            assert_eq!(
                x(mv.opening) + x(mv.purchased) + x(mv.bonus) + x(mv.topup) - x(mv.refunded)
                    + x(mv.adjusted)
                    + x(mv.reversed)
                    - x(mv.used),
                x(s.closing),
                "{m}: closing; {context}"
            );
            // (c) each month opens at the previous month's closing
            if let Some(prev) = previous_closing {
                assert_eq!(mv.opening, prev, "{m}: opening vs last closing; {context}");
            }
            // (d) every figure (opening, purchased, bonus, refunded, adjusted, …) is the ledger's
            assert_eq!(mv, expected, "{m}: figures vs ledger; {context}");
            previous_closing = Some(s.closing);
        }
        // Everything in the ledger is attributed to the generated months, so the last one
        // closes at today's balance.
        let balance = app.store.ledger().balance(org.id).await.unwrap().balance;
        assert_eq!(
            previous_closing,
            Some(balance),
            "last closing vs balance; {context}"
        );
    }
}

/// Issue 6: for random usage (AI and infra, at month edges and within), purchases, refunds and
/// adjustments over four months, every stored summary reconciles with the ledger, the months
/// chain, and a late event's new revision keeps the chain (the later months are revised too).
#[test]
fn random_months_of_movements_reconcile_with_the_ledger() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::spawn()).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 10,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let months: Vec<Month> = GENERATED_MONTHS
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    runner
        .run(
            &(proptest::collection::vec(step(), 3..12), late_event()),
            |(steps, late)| {
                rt.block_on(async {
                    let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let orgs = vec![
                        app.create_org(&format!("sum-{n}-a")).await,
                        app.create_org(&format!("sum-{n}-b")).await,
                    ];
                    let mut purchases: Vec<Vec<uuid::Uuid>> = vec![Vec::new(), Vec::new()];
                    let clock = store::Clock::manual(Utc::now());
                    // In time order, so balances move as they would have.
                    let mut ordered: Vec<(usize, &Step)> = steps.iter().enumerate().collect();
                    ordered.sort_by_key(|(_, s)| instant(PROP_MONTHS[s.month], s.when));
                    for (i, s) in ordered {
                        book_step(&app, &clock, &orgs, &mut purchases, n, i, s).await;
                    }
                    for month in &months {
                        app.store
                            .summaries()
                            .generate_summaries(*month, None, 10_000)
                            .await
                            .unwrap();
                    }
                    let context = format!("case {n}: {steps:?}");
                    assert_summaries_reconcile(&app, &orgs, &context).await;

                    if let Some(late) = &late {
                        let at = instant(PROP_MONTHS[late.month], late.when);
                        let e = json!({"id": format!("c{n}-late"), "type": "ai_tokens",
                                       "occurred_at": at_text(at), "model": "gpt-4o",
                                       "operation": "chat", "input_tokens": late.tokens});
                        send(&app, &orgs[late.org], vec![e]).await;
                        let month: Month = PROP_MONTHS[late.month].parse().unwrap();
                        let page = app
                            .store
                            .summaries()
                            .generate_summaries(month, None, 10_000)
                            .await
                            .unwrap();
                        let later = months.iter().filter(|m| **m > month).count();
                        assert_eq!(page.revisions_written, 1, "{late:?}");
                        assert_eq!(page.later_revisions_written, later, "{late:?}");
                        let context = format!("{context}, then late {late:?}");
                        assert_summaries_reconcile(&app, &orgs, &context).await;
                    }
                    app.assert_invariants().await;
                });
                Ok(())
            },
        )
        .unwrap();
}

/// A generation started for an open month stores nothing however it was started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_started_for_an_open_month_stores_nothing_however_it_was_started() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    app.create_org("open-month").await;
    let this_month = Month::of(Utc::now()).to_string();
    let options = temporalio_client::WorkflowStartOptions::new(
        app.task_queue.clone(),
        format!(
            "{}-{}",
            app.task_queue,
            workflows::summary::workflow_id(&this_month)
        ),
    )
    .build();

    // Straight to Temporal, as an operator starting it from the UI would, not through the CLI.
    let handle = app
        .temporal
        .start_workflow(
            workflows::summary::MonthlySummaryWorkflow::run,
            workflows::summary::SummaryInput {
                month: this_month.clone(),
                page_size: 500,
                pages_per_run: 40,
                ..Default::default()
            },
            options,
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        handle.get_result(Default::default()),
    )
    .await
    .expect("the workflow ended");

    let failure = ended.expect_err("an open month is refused");
    assert!(
        format!("{failure:?}").contains("not over yet"),
        "{failure:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM monthly_summaries")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// One org that cannot be summarised never stalls the month: the rest of its page is stored,
/// it is reported (`summary_failures`) and retried alone until it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_org_is_reported_and_retried_alone_while_the_month_goes_on() {
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let mut orgs = Vec::new();
    for i in 0..5 {
        let org = app.create_org(&format!("iso-{i}")).await;
        send(
            &app,
            &org,
            vec![event(&format!("e-{i}"), "2024-09-10T10:00:00Z", 4000)],
        )
        .await;
        orgs.push(org);
    }
    let bad = orgs[2].id;
    // The fault: storing this org's summary fails, as a corrupt row or a bug would.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure for %', NEW.org_id; END $$;
         CREATE TRIGGER refuse_one BEFORE INSERT ON monthly_summaries
           FOR EACH ROW WHEN (NEW.org_id = '{bad}') EXECUTE FUNCTION refuse_one();"
    ))
    .execute(app.store.pool())
    .await
    .unwrap();

    // Pages of 2: the failing org's page is stored without it, and later pages go on.
    let done = run_month(&app, "2024-09", 2, 40).await;
    assert!(done.contains("5 orgs, 4 summaries written"), "{done}");
    let month: Month = "2024-09".parse().unwrap();
    for org in &orgs {
        let revisions = app
            .store
            .summaries()
            .summary_revisions(org.id, month)
            .await
            .unwrap();
        assert_eq!(revisions.is_empty(), org.id == bad, "{}", org.id);
    }
    let failures = app.store.summaries().summary_failures(month).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, bad);
    assert!(failures[0].1.contains("injected failure"), "{failures:?}");

    // The fault goes: the retry, alone, stores it and clears the failure.
    sqlx::raw_sql("DROP TRIGGER refuse_one ON monthly_summaries")
        .execute(app.store.pool())
        .await
        .unwrap();
    tests::eventually("the failed org stored", Duration::from_secs(60), || async {
        let r = app
            .store
            .summaries()
            .summary_revisions(bad, month)
            .await
            .unwrap();
        (r == [1]).then_some(())
    })
    .await;
    assert!(
        app.store
            .summaries()
            .summary_failures(month)
            .await
            .unwrap()
            .is_empty()
    );
    app.assert_invariants().await;
}

/// Breakdowns are bounded: the costliest `breakdown_max` users (or lines), then one `other`
/// entry adding up the rest, so the sums are unchanged.
#[tokio::test]
async fn breakdowns_keep_the_costliest_entries_and_add_up_the_rest() {
    let app = TestApp::spawn().await.unwrap();
    let org = app.create_org("many-users").await;
    let events: Vec<Value> = (1..=5u64)
        .map(|i| {
            json!({"id": format!("u-{i}"), "type": "ai_tokens", "occurred_at": "2024-04-10T10:00:00Z",
                   "model": "gpt-4o", "user": format!("user-{i}"), "input_tokens": 4000 * i})
        })
        .collect();
    send(&app, &org, events).await;
    let month: Month = "2024-04".parse().unwrap();

    let bounded = app.store.clone().with_breakdown_max(2);
    let s = bounded
        .summaries()
        .compute_summaries(&[org.id], month)
        .await
        .unwrap()
        .remove(0);

    let users = s.users.as_array().unwrap();
    assert_eq!(users.len(), 3, "{users:?}");
    assert_eq!(users[0]["user"], "user-4");
    assert_eq!(users[1]["user"], "user-5");
    assert_eq!(users[2]["other"], true);
    assert_eq!(users[2]["users"], 3);
    assert_eq!(users[2]["events"], 3);
    assert_eq!(users[2]["cost_credits"], "6.000000");
    assert_eq!(s.movements.used.to_string(), "15.000000");
}
