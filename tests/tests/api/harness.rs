//! The harness's own guarantees: the template database every test clones is built once per run,
//! whatever races for it.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tests::{admin_database_url, ensure_template};
use uuid::Uuid;

/// Builder processes started at once, and tasks (each on its own connection) in each of them.
const PROCESSES: usize = 8;
const TASKS_PER_PROCESS: usize = 4;
/// Templates each builder process then builds for itself.
const OWN_BUILDS: usize = 3;

/// Many test binaries (and threads in each) asking for one new template at the same moment, as
/// at the start of a run: every one of them gets it and can clone it at once, it is built once,
/// and no scratch database is left behind.
#[tokio::test]
async fn many_processes_racing_for_a_new_template_all_get_one_built_once() -> anyhow::Result<()> {
    // A name of its own (the `cft_` prefix makes scripts/test drop it on the next run).
    let name = format!("cft_race_{}", Uuid::now_v7().simple());
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["--exact", "harness::template_race_child", "--nocapture"])
                .env("CREDITFLOW_TEST_TEMPLATE_RACE", &name)
                .kill_on_drop(true)
                .output()
        })
        .collect();
    let outputs = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join_all(children),
    )
    .await?;
    let mut pids = Vec::new();
    for output in outputs {
        let output = output?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "a builder failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let pid = stdout
            .lines()
            .find_map(|l| l.strip_prefix("builder pid "))
            .expect("the child ran the builder");
        pids.push(pid.trim().to_string());
    }

    let mut admin = PgConnection::connect(&admin_database_url()?).await?;
    let (templates, allows_connections): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_or(datallowconn) FROM pg_database WHERE datname = $1",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(templates, 1);
    assert_eq!(allows_connections, Some(false), "nobody can connect to it");
    for pid in pids {
        let scratch: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1")
                .bind(format!("cft\\_build\\_{pid}\\_%"))
                .fetch_one(&mut admin)
                .await?;
        assert_eq!(scratch, 0, "builder {pid} left a scratch database");
    }
    sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// One builder process of the race above (does nothing when run as part of the suite). On a
/// multi-threaded runtime, as here, round 1's build (a `PgPool` migrated, closed, then a 30 s
/// wait for its sessions to leave) failed within a few builds: `Pool::close` (sqlx 0.8.6) can
/// return while the migration's connection is still being handed back on another thread (its
/// on-release ping in flight), and that connection then sits idle and open in the pool, so the
/// scratch database kept "1 sessions after 30 s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_race_child() -> anyhow::Result<()> {
    let Ok(name) = std::env::var("CREDITFLOW_TEST_TEMPLATE_RACE") else {
        return Ok(());
    };
    println!("builder pid {}", std::process::id());
    let admin_url = admin_database_url()?;
    let tasks = (0..TASKS_PER_PROCESS).map(|_| {
        let (name, admin_url) = (name.clone(), admin_url.clone());
        async move {
            let mut admin = PgConnection::connect(&admin_url).await?;
            ensure_template(&mut admin, &name).await?;
            // Usable at once: a clone succeeds (it fails while anyone is still in the template).
            let clone = format!("cft_{}", Uuid::now_v7().simple());
            sqlx::query(&format!("CREATE DATABASE {clone} TEMPLATE {name}"))
                .execute(&mut admin)
                .await?;
            sqlx::query(&format!("DROP DATABASE {clone}"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
            anyhow::Ok(())
        }
    });
    // Concurrent on separate connections (the point of the race), in one task.
    for task in futures::future::join_all(tasks).await {
        task?;
    }
    // Then templates of its own, one after another, while the other builders do the same: each
    // is built, so every build's scratch database must be left empty every time.
    let mut admin = PgConnection::connect(&admin_url).await?;
    for round in 0..OWN_BUILDS {
        let own = format!("{name}_{}_{round}", std::process::id());
        ensure_template(&mut admin, &own).await?;
        sqlx::query(&format!("DROP DATABASE {own}"))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    Ok(())
}
