//! `creditflow bench ingest`: ingestion and balance-read figures against the local stack;
//! `creditflow bench holds`: hold + settle pairs, and check latency beside ingestion.
//!
//! Starts `creditflow serve` as a child process on a fresh database, drives it over loopback
//! HTTP, and prints, in one run: events/s for one hot org and for 1,000 orgs (16 clients ×
//! batches of 100), events/s for batches of 1, balance-read latency while ingesting, the
//! server's peak RSS, the hot org with 10 active grants against one without (alternated,
//! twice each), and the yardstick: a plain one-transaction-per-event insert-and-update loop
//! against the same Postgres.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

use crate::config::Settings;

const OPERATOR_KEY: &str = "cf_op_bench_operator_key";
const BENCH_DB: &str = "creditflow_bench";

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Organizations in the many-orgs scenario.
    #[arg(long, default_value_t = 1000)]
    pub orgs: usize,
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn database_url(base: &str, name: &str) -> String {
    let (server, _) = base.rsplit_once('/').unwrap_or((base, ""));
    format!("{server}/{name}")
}

async fn fresh_database(settings: &Settings) -> anyhow::Result<String> {
    let url = settings.database.url.expose();
    let mut admin = PgConnection::connect(&database_url(url, "postgres")).await?;
    // FORCE ends the last run's sessions, but not an autovacuum worker (that takes a
    // superuser): poll until it has gone, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sqlx::query(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "the bench database is busy; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    sqlx::query(&format!("CREATE DATABASE {BENCH_DB}"))
        .execute(&mut admin)
        .await?;
    let bench_url = database_url(url, BENCH_DB);
    let pool = sqlx::PgPool::connect(&bench_url).await?;
    store::Store::migrate(&pool).await?;
    pool.close().await;
    Ok(bench_url)
}

async fn start_server(db_url: &str) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("CREDITFLOW__DATABASE__URL", db_url)
        .env("CREDITFLOW__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("CREDITFLOW__AUTH__OPERATOR_KEYS", OPERATOR_KEY)
        .env("CREDITFLOW__LOG__FILTER", "warn")
        .env("CREDITFLOW__METRICS__BIND", "")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting creditflow serve")?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", server.base)).send().await
            && r.status().is_success()
        {
            return Ok(server);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not become ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Creates `n` orgs; returns their (id, API key).
async fn create_orgs(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut orgs = Vec::with_capacity(n);
    for i in 0..n {
        let r: Value = http
            .post(format!("{base}/v1/orgs"))
            .bearer_auth(OPERATOR_KEY)
            .json(&json!({ "name": format!("bench-{i}") }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        orgs.push((
            r["org"]["id"].as_str().context("org id")?.to_string(),
            r["api_key"]["secret"].as_str().context("key")?.to_string(),
        ));
    }
    Ok(orgs)
}

/// Grants an org 10 promotional grants that the run cannot use up, with every term the
/// burn-down order reads: priorities, expiries (half of them), restrictions (one to the
/// bench's model, one to its usage type, one to a model it never uses).
async fn grant_ten(http: &reqwest::Client, base: &str, org: &str) -> anyhow::Result<()> {
    for i in 0..10u32 {
        let mut body = json!({"amount_credits": "100000000", "priority": 10 * i,
                              "reason": format!("bench grant {i}")});
        if i % 2 == 0 {
            body["expires_at"] =
                json!(chrono::Utc::now() + chrono::Duration::days(1 + i64::from(i)));
        }
        match i {
            3 => body["applies_to"] = json!({"models": ["gpt-4o-mini"]}),
            5 => body["applies_to"] = json!({"usage_types": ["ai_tokens"]}),
            7 => body["applies_to"] = json!({"models": ["gpt-4o"]}),
            _ => {}
        }
        http.post(format!("{base}/v1/orgs/{org}/grants"))
            .bearer_auth(OPERATOR_KEY)
            .header("idempotency-key", format!("bench-grant-{i}"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// A batch's JSON, written as text: the load generator shares the two cores with the server
/// and Postgres, so it must cost as little as possible.
fn batch_body(prefix: &str, seq: u64, size: usize) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut body = String::with_capacity(64 + size * 220);
    body.push_str("{\"events\":[");
    for i in 0..size {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"id\":\"{prefix}-{seq}-{i}\",\"type\":\"ai_tokens\",\"occurred_at\":\"{now}\",\
             \"model\":\"gpt-4o-mini\",\"operation\":\"chat\",\"user\":\"bench\",\
             \"input_tokens\":{},\"output_tokens\":300,\"cached_input_tokens\":100}}",
            1200 + i
        ));
    }
    body.push_str("]}");
    body
}

/// The `accepted` count of a usage reply, read without parsing the per-event results.
fn accepted_count(reply: &str) -> u64 {
    reply
        .split_once("\"accepted\":")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Lowers the calling thread's CPU priority (Linux: `setpriority` on a thread id is per thread).
/// The load clients stand in for services on other machines; on this shared 2-core box they
/// must not outrank the server and Postgres they measure.
fn lower_priority() {
    // SAFETY: setpriority only changes this thread's nice value.
    #[allow(unsafe_code, reason = "the one FFI call: a thread's nice value")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Sends batches from `clients` tasks for `seconds`, on a runtime of its own with lowered
/// priority; returns events accepted per second.
fn drive(
    base: &str,
    keys: &[String],
    clients: usize,
    batch: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<f64> {
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(lower_priority)
        .build()?;
    let http = load.block_on(async {
        reqwest::Client::builder()
            .pool_max_idle_per_host(clients * 2)
            .build()
    })?;
    let rate = load.block_on(drive_on(&http, base, keys, clients, batch, seconds, label));
    load.shutdown_background();
    rate
}

async fn drive_on(
    http: &reqwest::Client,
    base: &str,
    keys: &[String],
    clients: usize,
    batch: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<f64> {
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, keys) = (http.clone(), base.to_string(), keys.to_vec());
        let (accepted, errors, label) = (accepted.clone(), errors.clone(), label.to_string());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < end {
                let key = &keys[(c + seq as usize * clients) % keys.len()];
                let body = batch_body(&format!("{label}-{c}"), seq, batch);
                seq += 1;
                match http
                    .post(format!("{base}/v1/usage"))
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let text = r.text().await.unwrap_or_default();
                        accepted.fetch_add(accepted_count(&text), Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let errors = errors.load(Ordering::Relaxed);
    anyhow::ensure!(errors == 0, "{errors} requests failed in {label}");
    Ok(accepted.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Reads the balance in a loop until `stop`; returns the latencies in microseconds.
async fn read_balances(
    http: reqwest::Client,
    url: String,
    key: String,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ok = http
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            lat.push(t.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat
}

/// Posts a batch of 10 events for one org every 20 ms until `stop`; returns the latencies in
/// microseconds (the quiet org of the fairness scenario).
async fn post_usage(
    http: reqwest::Client,
    base: String,
    key: String,
    label: String,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let body = batch_body(&label, seq, 10);
        seq += 1;
        let t = Instant::now();
        let ok = http
            .post(format!("{base}/v1/usage"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            lat.push(t.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lat
}

/// The quiet org's usage latencies over `seconds`, on a thread and runtime of its own.
fn quiet_org(
    base: &str,
    key: &str,
    label: &str,
    seconds: u64,
) -> std::thread::JoinHandle<anyhow::Result<Vec<u64>>> {
    let (base, key, label) = (base.to_string(), key.to_string(), label.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let timer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(seconds));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let mut lat = rt.block_on(post_usage(reqwest::Client::new(), base, key, label, stop));
        let _ = timer.join();
        lat.sort_unstable();
        anyhow::Ok(lat)
    })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The yardstick: one transaction per event (insert a row, update one balance row), from
/// `clients` connections, against the same Postgres.
async fn yardstick(db_url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let mut setup = PgConnection::connect(db_url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_yardstick_events (id uuid PRIMARY KEY, amount numeric NOT NULL);
         CREATE TABLE IF NOT EXISTS bench_yardstick_balance (id int PRIMARY KEY, balance numeric NOT NULL);
         INSERT INTO bench_yardstick_balance VALUES (1, 0) ON CONFLICT DO NOTHING;",
    )
    .execute(&mut setup)
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, done) = (db_url.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            while Instant::now() < end {
                let mut tx = conn.begin().await?;
                sqlx::query("INSERT INTO bench_yardstick_events VALUES ($1, 0.001275)")
                    .bind(uuid::Uuid::now_v7())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE bench_yardstick_balance SET balance = balance - 0.001275 WHERE id = 1",
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

pub async fn ingest(settings: &Settings, args: &IngestArgs) -> anyhow::Result<()> {
    let db_url = fresh_database(settings).await?;
    let server = start_server(&db_url).await?;
    let pid = server.child.id().context("server pid")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .build()?;
    let base = server.base.clone();
    println!(
        "creditflow bench ingest: {} s per scenario, {} clients, server pid {pid}",
        args.seconds, args.clients
    );

    let hot_org = create_orgs(&http, &base, 1).await?.remove(0);
    let hot = vec![hot_org.1.clone()];
    let many: Vec<String> = create_orgs(&http, &base, args.orgs)
        .await?
        .into_iter()
        .map(|(_, key)| key)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    // The reader runs on its own thread and runtime, so the 16 load clients in this process
    // cannot delay it: its figures are the server's latency, not the load generator's.
    let reader = {
        let (url, key, stop) = (
            format!("{base}/v1/orgs/{}/balance", hot_org.0),
            hot[0].clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            anyhow::Ok(rt.block_on(read_balances(reqwest::Client::new(), url, key, stop)))
        })
    };
    let (b, c, sec) = (base.clone(), args.clients, args.seconds);
    let hot_keys = hot.clone();
    let hot_rate =
        tokio::task::spawn_blocking(move || drive(&b, &hot_keys, c, 100, sec, "hot")).await??;
    stop.store(true, Ordering::Relaxed);
    let mut reads = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the balance reader panicked"))??;
    reads.sort_unstable();

    let b = base.clone();
    let many_rate =
        tokio::task::spawn_blocking(move || drive(&b, &many, c, 100, sec, "many")).await??;
    let b = base.clone();
    let single_rate =
        tokio::task::spawn_blocking(move || drive(&b, &hot, c, 1, sec, "single")).await??;
    // Fairness: a quiet org's usage latency alone, then while another org floods the writer
    // with 8 clients (the per-org queues and round-robin batches are what keep it flat).
    let quiet = create_orgs(&http, &base, 2).await?;
    let alone = quiet_org(&base, &quiet[0].1, "quiet-alone", sec)
        .join()
        .map_err(|_| anyhow::anyhow!("the quiet client panicked"))??;
    let flooded = quiet_org(&base, &quiet[1].1, "quiet-flooded", sec);
    let (b, flood_key) = (base.clone(), vec![hot_org.1.clone()]);
    let flood_rate =
        tokio::task::spawn_blocking(move || drive(&b, &flood_key, 8, 100, sec, "flood")).await??;
    let flooded = flooded
        .join()
        .map_err(|_| anyhow::anyhow!("the quiet client panicked"))??;
    // Grants on the hot path: the same hot-org load on an org holding 10 active grants and on
    // one holding none, alternated so drift on the shared machine falls on both.
    let pair = create_orgs(&http, &base, 2).await?;
    grant_ten(&http, &base, &pair[1].0).await?;
    let (mut plain, mut granted) = (Vec::new(), Vec::new());
    for round in 0..2 {
        for (org, rates) in [(&pair[0], &mut plain), (&pair[1], &mut granted)] {
            let (b, keys) = (base.clone(), vec![org.1.clone()]);
            let label = format!("grants-{round}-{}", rates.len());
            rates.push(
                tokio::task::spawn_blocking(move || drive(&b, &keys, c, 100, sec, &label))
                    .await??,
            );
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (plain_rate, granted_rate) = (mean(&plain), mean(&granted));
    let rss = peak_rss_mb(pid).unwrap_or(f64::NAN);
    drop(server);
    let yard = yardstick(&db_url, args.clients, args.seconds).await?;

    println!();
    println!("{:<58} {:>12}", "scenario", "figure");
    println!(
        "{:<58} {:>9.0} ev/s",
        format!("1 org x {} clients x batches of 100", args.clients),
        hot_rate
    );
    println!(
        "{:<58} {:>9.0} ev/s",
        format!(
            "{} orgs x {} clients x batches of 100",
            args.orgs, args.clients
        ),
        many_rate
    );
    println!(
        "{:<58} {:>9.0} ev/s",
        format!("1 org x {} clients x batches of 1", args.clients),
        single_rate
    );
    println!(
        "{:<58} {:>9.2} ms",
        format!("balance read p50 while ingesting ({} reads)", reads.len()),
        percentile(&reads, 0.50)
    );
    println!(
        "{:<58} {:>9.2} ms",
        "balance read p99 while ingesting",
        percentile(&reads, 0.99)
    );
    println!(
        "{:<58} {:>9.2} ms",
        format!(
            "quiet org usage p50 alone (batches of 10, {} requests)",
            alone.len()
        ),
        percentile(&alone, 0.50)
    );
    println!(
        "{:<58} {:>9.2} ms",
        "quiet org usage p99 alone",
        percentile(&alone, 0.99)
    );
    println!(
        "{:<58} {:>9.2} ms",
        format!(
            "quiet org usage p50 beside a flood ({} requests)",
            flooded.len()
        ),
        percentile(&flooded, 0.50)
    );
    println!(
        "{:<58} {:>9.2} ms",
        "quiet org usage p99 beside a flood",
        percentile(&flooded, 0.99)
    );
    println!(
        "{:<58} {:>9.0} ev/s",
        "the flood: 1 org x 8 clients x batches of 100", flood_rate
    );
    println!(
        "{:<58} {:>9.0} ev/s",
        "1 org, no grants (mean of 2, alternated)", plain_rate
    );
    println!(
        "{:<58} {:>9.0} ev/s",
        "1 org, 10 active grants (mean of 2, alternated)", granted_rate
    );
    println!(
        "{:<58} {:>9.0} %",
        "10 grants vs none",
        100.0 * granted_rate / plain_rate
    );
    println!("{:<58} {:>9.1} MB", "server peak RSS", rss);
    println!(
        "{:<58} {:>9.0} ev/s",
        format!("yardstick: 1 tx per event, {} connections", args.clients),
        yard
    );
    println!("{:<58} {:>9.1} x", "hot org vs yardstick", hot_rate / yard);
    println!(
        "{:<58} {:>9.0} %",
        "hot org vs 1,000 orgs",
        100.0 * hot_rate / many_rate
    );
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct HoldsArgs {
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent callers, each holding then settling in a loop (an AI call in flight each).
    #[arg(long, default_value_t = 64)]
    pub callers: usize,
    /// Organizations in the many-orgs scenario.
    #[arg(long, default_value_t = 1000)]
    pub orgs: usize,
    /// Usage clients beside the check and balance readers.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
}

/// Hold-then-settle loops from `callers` tasks over `orgs` (round-robin) for `seconds`; returns
/// pairs per second. Each pair is a hold of 1 credit and a settle by amount of 0.5.
fn drive_holds(
    base: &str,
    orgs: &[(String, String)],
    callers: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<f64> {
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(lower_priority)
        .build()?;
    let rate = load.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(callers * 2)
            .build()?;
        let pairs = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..callers {
            let (http, base, orgs) = (http.clone(), base.to_string(), orgs.to_vec());
            let (pairs, errors, label) = (pairs.clone(), errors.clone(), label.to_string());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0usize;
                while Instant::now() < end {
                    let (org, key) = &orgs[(c + seq * callers) % orgs.len()];
                    let hold_id = format!("{label}-{c}-{seq}");
                    seq += 1;
                    let held = http
                        .post(format!("{base}/v1/orgs/{org}/holds"))
                        .bearer_auth(key)
                        .header("content-type", "application/json")
                        .body(format!(
                            "{{\"hold_id\":\"{hold_id}\",\"amount_credits\":\"1\",\"user\":\"bench\"}}"
                        ))
                        .send()
                        .await;
                    if !held.is_ok_and(|r| r.status().as_u16() == 201) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let settled = http
                        .post(format!("{base}/v1/holds/{hold_id}/settle"))
                        .bearer_auth(key)
                        .header("content-type", "application/json")
                        .body("{\"settle_id\":\"s\",\"amount_credits\":\"0.5\"}")
                        .send()
                        .await;
                    if settled.is_ok_and(|r| r.status().is_success()) {
                        pairs.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let errors = errors.load(Ordering::Relaxed);
        anyhow::ensure!(errors == 0, "{errors} hold or settle requests failed in {label}");
        anyhow::Ok(pairs.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
    });
    load.shutdown_background();
    rate
}

/// Alternates a check and a balance read every 5 ms until `stop`; returns both latencies in
/// microseconds.
async fn read_checks(
    http: reqwest::Client,
    base: String,
    org: String,
    key: String,
    stop: Arc<AtomicBool>,
) -> (Vec<u64>, Vec<u64>) {
    let (mut checks, mut balances) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ok = http
            .post(format!("{base}/v1/check"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{\"amount_credits\":\"2\",\"user\":\"bench\"}")
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            checks.push(t.elapsed().as_micros() as u64);
        }
        let t = Instant::now();
        let ok = http
            .get(format!("{base}/v1/orgs/{org}/balance"))
            .bearer_auth(&key)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            balances.push(t.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (checks, balances)
}

async fn fund(http: &reqwest::Client, base: &str, org: &str) -> anyhow::Result<()> {
    http.post(format!("{base}/v1/orgs/{org}/adjustments"))
        .bearer_auth(OPERATOR_KEY)
        .header("idempotency-key", format!("bench-fund-{org}"))
        .json(&json!({"amount_credits": "1000000000", "reason": "bench"}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

pub async fn holds(settings: &Settings, args: &HoldsArgs) -> anyhow::Result<()> {
    let db_url = fresh_database(settings).await?;
    let server = start_server(&db_url).await?;
    let pid = server.child.id().context("server pid")?;
    let http = reqwest::Client::new();
    let base = server.base.clone();
    println!(
        "creditflow bench holds: {} s per scenario, {} callers, server pid {pid}",
        args.seconds, args.callers
    );
    let hot = create_orgs(&http, &base, 1).await?;
    fund(&http, &base, &hot[0].0).await?;
    let many = create_orgs(&http, &base, args.orgs).await?;
    for (org, _) in &many {
        fund(&http, &base, org).await?;
    }
    // The hot org carries a budget on the bench user, so every hold is decided on both layers.
    http.put(format!("{base}/v1/orgs/{}/budgets/bench-day", hot[0].0))
        .bearer_auth(OPERATOR_KEY)
        .json(
            &json!({"scope": {"user": "bench"}, "limit_credits": "1000000000",
                      "period": "day", "enforcement": "hard"}),
        )
        .send()
        .await?
        .error_for_status()?;
    let (b, c, sec) = (base.clone(), args.callers, args.seconds);
    let hot_orgs = hot.clone();
    let hot_rate =
        tokio::task::spawn_blocking(move || drive_holds(&b, &hot_orgs, c, sec, "hot")).await??;
    let (b, many_orgs) = (base.clone(), many.clone());
    let many_rate =
        tokio::task::spawn_blocking(move || drive_holds(&b, &many_orgs, c, sec, "many")).await??;

    // Checks and balance reads on an org without budgets (so its checks are answered from what
    // the writer committed) while usage ingestion runs at full speed on it.
    let plain = create_orgs(&http, &base, 1).await?;
    fund(&http, &base, &plain[0].0).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, org, key, stop) = (
            base.clone(),
            plain[0].0.clone(),
            plain[0].1.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            anyhow::Ok(rt.block_on(read_checks(reqwest::Client::new(), b, org, key, stop)))
        })
    };
    let (b, keys, clients) = (base.clone(), vec![plain[0].1.clone()], args.clients);
    let usage_rate =
        tokio::task::spawn_blocking(move || drive(&b, &keys, clients, 100, sec, "beside"))
            .await??;
    stop.store(true, Ordering::Relaxed);
    let (mut checks, mut balances) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the check reader panicked"))??;
    checks.sort_unstable();
    balances.sort_unstable();
    let rss = peak_rss_mb(pid).unwrap_or(f64::NAN);
    drop(server);
    let yard = yardstick(&db_url, args.clients, args.seconds).await?;

    println!();
    println!("{:<58} {:>12}", "scenario", "figure");
    println!(
        "{:<58} {:>7.0} pairs/s",
        format!(
            "hold + settle, 1 org (with a budget) x {} callers",
            args.callers
        ),
        hot_rate
    );
    println!(
        "{:<58} {:>7.0} pairs/s",
        format!(
            "hold + settle, {} orgs x {} callers",
            args.orgs, args.callers
        ),
        many_rate
    );
    println!(
        "{:<58} {:>9.0} ev/s",
        format!(
            "usage beside the readers: 1 org x {} clients x 100",
            args.clients
        ),
        usage_rate
    );
    println!(
        "{:<58} {:>9.2} ms",
        format!("check p50 while ingesting ({} checks)", checks.len()),
        percentile(&checks, 0.50)
    );
    println!(
        "{:<58} {:>9.2} ms",
        "check p99 while ingesting",
        percentile(&checks, 0.99)
    );
    println!(
        "{:<58} {:>9.2} ms",
        format!("balance p50 while ingesting ({} reads)", balances.len()),
        percentile(&balances, 0.50)
    );
    println!(
        "{:<58} {:>9.2} ms",
        "balance p99 while ingesting",
        percentile(&balances, 0.99)
    );
    println!("{:<58} {:>9.1} MB", "server peak RSS", rss);
    println!(
        "{:<58} {:>9.0} tx/s",
        format!("yardstick: 1 tx per event, {} connections", args.clients),
        yard
    );
    println!(
        "{:<58} {:>9.1} x",
        "hot-org pairs (2 bookings each) vs yardstick",
        2.0 * hot_rate / yard
    );
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct SummariesArgs {
    #[arg(long, default_value_t = 10_000)]
    pub orgs: i64,
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// The month the events fall in.
    #[arg(long, default_value = "2026-10")]
    pub month: String,
}

/// `creditflow bench summaries`: seeds a fresh database with `orgs` orgs and `events` usage
/// events in one month, then times the real monthly-summary workflow (a `creditflow worker`
/// child process, the Temporal dev server) over them.
pub async fn summaries(settings: &Settings, args: &SummariesArgs) -> anyhow::Result<()> {
    let month: billing::summary::Month = args
        .month
        .parse()
        .map_err(|_| anyhow::anyhow!("--month YYYY-MM"))?;
    let db_url = fresh_database(settings).await?;
    let mut conn = PgConnection::connect(&db_url).await?;
    let seeding = Instant::now();
    sqlx::query("INSERT INTO orgs (id, name) SELECT gen_random_uuid(), 'bench-' || i FROM generate_series(1, $1) i")
        .bind(args.orgs)
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO accounts (code, org_id) SELECT 'org:' || id, id FROM orgs")
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "INSERT INTO usage_events (id, org_id, event_id, payload_hash, type, occurred_at, user_id, model,
                                   operation, input_tokens, output_tokens, cached_input_tokens, cost,
                                   price_version)
         SELECT gen_random_uuid(), o.id, 'e' || g, '\\x00', 'ai_tokens',
                $3::timestamptz + (g % (28 * 86400)) * interval '1 second', 'user-' || (g % 7),
                (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-sonnet-4'])[1 + g % 3], 'chat',
                1000 + g % 500, 200, g % 50, 0.250000 + (g % 100) / 1000.0, 1
           FROM generate_series(1, $2) g
           JOIN (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM orgs) o ON o.rn = 1 + g % $1",
    )
    .bind(args.orgs)
    .bind(args.events)
    .bind(month.start())
    .execute(&mut conn)
    .await?;
    // Seeded around the API: the rollups summaries read are built from the events here.
    store::rollups::rebuild(&mut conn).await?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    let seeded = seeding.elapsed();

    let task_queue = format!("bench-summaries-{}", std::process::id());
    let mut worker = Command::new(std::env::current_exe()?)
        .arg("worker")
        .env("CREDITFLOW__DATABASE__URL", &db_url)
        .env("CREDITFLOW__TEMPORAL__TASK_QUEUE", &task_queue)
        .env("CREDITFLOW__LOG__FILTER", "warn")
        .env("CREDITFLOW__METRICS__BIND", "")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting creditflow worker")?;
    let temporal = crate::app::connect_temporal(&settings.temporal).await?;
    let started = Instant::now();
    let done = crate::summaries::run_month(
        &temporal,
        &task_queue,
        &settings.summaries,
        &month.to_string(),
    )
    .await?;
    let took = started.elapsed();
    let described = temporal
        .get_workflow_handle::<workflows::summary::MonthlySummaryWorkflow>(
            workflows::summary::workflow_id(&month.to_string()),
        )
        .describe(Default::default())
        .await?;
    let _ = worker.start_kill();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM monthly_summaries")
        .fetch_one(&mut conn)
        .await?;
    println!(
        "creditflow bench summaries: {} orgs, {} usage events in {month}",
        args.orgs, args.events
    );
    println!(
        "{:<52} {:>10.1} s",
        "seeding (not part of the figure)",
        seeded.as_secs_f64()
    );
    println!(
        "{:<52} {:>10.1} s",
        "generation (workflow start to result)",
        took.as_secs_f64()
    );
    println!("{:<52} {:>10}", "summaries stored", stored);
    println!("{:<52} {:>10}", "result", done);
    println!(
        "{:<52} {:>10}",
        format!(
            "history events of the last run (pages of {}, {} per run)",
            settings.summaries.page_size, settings.summaries.pages_per_run
        ),
        described.history_length()
    );
    Ok(())
}
