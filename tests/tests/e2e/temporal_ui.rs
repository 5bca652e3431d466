//! The Temporal Web UI for operators: headless Chromium opens the dev server's UI, filters the
//! workflow list by an org's id (search attribute `OrgId`) and sees that org's purchase workflow,
//! and not another org's. The screenshot of that page is kept under `.local/test-artifacts/`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tests::{GROWTH, TestApp, TestOrg, eventually, worker::TestWorker};
use uuid::Uuid;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The UI `scripts/up` serves (the dev server's `--ui-port`), unless the environment says else.
fn ui_url() -> String {
    std::env::var("CREDITFLOW_TEMPORAL_UI_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8233".into())
        .trim_end_matches('/')
        .to_string()
}

/// `path` under the UI with `query=OrgId="{org}"`, encoded the way the UI's own filter writes it.
fn filtered(path: &str, org: Uuid) -> String {
    reqwest::Url::parse_with_params(
        &format!("{}{path}", ui_url()),
        &[("query", format!("OrgId=\"{org}\""))],
    )
    .expect("UI URL")
    .to_string()
}

/// A fresh Chromium profile for one run, removed afterwards.
struct Profile(PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One headless Chromium run: loads `url`, lets the page run for 15 s of virtual time (the SPA
/// fetches its data; this takes about 3 s of real time), then writes a screenshot to
/// `screenshot` and returns the rendered DOM. `None` (after saying why) when the run failed.
async fn render(url: &str, screenshot: &Path) -> Option<String> {
    let profile =
        Profile(std::env::temp_dir().join(format!("creditflow-chromium-{}", Uuid::now_v7())));
    std::fs::create_dir_all(&profile.0).expect("chromium profile dir");
    let mut chromium = tokio::process::Command::new(CHROMIUM);
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,900",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(45), chromium.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("could not run {CHROMIUM}: {e}"),
        Err(_) => {
            eprintln!("chromium did not finish within 45 s on {url}");
            return None;
        }
    };
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || dom.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        eprintln!(
            "chromium on {url}: {}, {} bytes of DOM; stderr ends:\n{}",
            out.status,
            dom.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        return None;
    }
    Some(dom)
}

async fn buy(app: &TestApp, org: &TestOrg) -> String {
    let bought = app.buy_ready(org, GROWTH).await;
    let id = bought["id"].as_str().unwrap();
    workflows::purchase::workflow_id(id)
}

/// Temporal UI filters workflows by org and shows its purchase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_ui_filters_workflows_by_org_and_shows_its_purchase() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install (it installs Debian's chromium)"
    );
    let app = TestApp::spawn().await.unwrap();
    let _worker = TestWorker::start(&app).unwrap();
    let ours = app.create_org("ui-ours").await;
    let theirs = app.create_org("ui-theirs").await;
    let our_workflow = buy(&app, &ours).await;
    let their_workflow = buy(&app, &theirs).await;

    // The other org's workflow must be in visibility before its absence from our list means
    // anything: ask the UI server's own JSON API (what the page calls) for it.
    let their_list = filtered("/api/v1/namespaces/default/workflows", theirs.id);
    eventually(
        "the other org's purchase in visibility",
        Duration::from_secs(30),
        || async {
            let r = app.http.get(&their_list).send().await.ok()?;
            let text = r.text().await.ok()?;
            text.contains(&their_workflow).then_some(())
        },
    )
    .await;

    let dir = tests::workspace_root().join(".local/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let screenshot = dir.join(format!("temporal-ui-{}.png", ours.id));
    let page = filtered("/namespaces/default/workflows", ours.id);
    let started = Instant::now();
    // Each try writes the screenshot: the one kept is of the page the assertions below saw.
    let dom = eventually(
        "our purchase workflow in the Temporal UI",
        Duration::from_secs(60),
        || async {
            let dom = render(&page, &screenshot).await?;
            dom.contains(&our_workflow).then_some(dom)
        },
    )
    .await;
    eprintln!("the UI showed {our_workflow} after {:?}", started.elapsed());

    assert!(
        dom.contains(&format!("/namespaces/default/workflows/{our_workflow}/")),
        "the list links to our workflow's page"
    );
    assert!(
        !dom.contains(&their_workflow),
        "the list filtered by OrgId=\"{}\" shows the other org's {their_workflow}",
        ours.id
    );
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("screenshot {}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} is not a PNG ({} bytes)",
        screenshot.display(),
        png.len()
    );
}
