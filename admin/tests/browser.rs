//! The inbox in a real browser: headless Chromium driven through chromedriver (WebDriver)
//! with fantoccini. A service runs with a gated refund; a reviewer without the role is
//! refused in words with nothing written; a finance reviewer logs in, sees amount, risk
//! flags and rollback path on the card, approves with a reason, and the run completes; the
//! history shows who approved, under which role, and why.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test says how to
//! install them and passes, unless `CI` or `ANNAL_REQUIRE_BROWSER=1` is set: then it fails,
//! so CI can never skip it silently. `ANNAL_UPDATE_SCREENSHOT=1` also writes the inbox
//! screenshot to `docs/inbox.png` (the README shows it).

mod support;

use std::path::Path;
use std::time::Duration;

use annal::{DecideRequest, Engine, OnExpiry};
use fantoccini::{Client, ClientBuilder, Locator};
use support::{refund, DANA, LEE};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether the browser is there; if not, fail (CI) or explain and skip.
fn browser_available() -> bool {
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return true;
    }
    let hint = "the browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver";
    let required = std::env::var_os("CI").is_some()
        || std::env::var("ANNAL_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{hint} (CI or ANNAL_REQUIRE_BROWSER=1 is set, so this test may not be skipped)"
    );
    eprintln!("skipped: {hint}");
    false
}

/// A free loopback port (the listener is dropped before chromedriver binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver and waits until it accepts connections.
async fn chromedriver() -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on port {port} within 10 s");
}

/// A headless Chromium session with its own profile (so its own cookies).
async fn browser(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1500",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session")
}

async fn log_in(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/login")).await.unwrap();
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    client
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The inbox's header appears once the login's redirect has loaded.
    let landed = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("header.top"))
        .await;
    let url = client.current_url().await.unwrap();
    assert!(
        landed.is_ok() && url.path().ends_with("/inbox"),
        "not logged in: at {url}"
    );
}

/// Types `reason` into the card of `gate` and presses its `verdict` button.
async fn decide(client: &Client, gate: &str, verdict: &str, reason: &str) {
    let card = client
        .find(Locator::Css(&format!("article[data-gate='{gate}']")))
        .await
        .unwrap();
    card.find(Locator::Css("textarea[name=reason]"))
        .await
        .unwrap()
        .send_keys(reason)
        .await
        .unwrap();
    card.find(Locator::Css(&format!("button[value={verdict}]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The result banner of the page the last form led to, once that page has loaded.
async fn banner(client: &Client) -> String {
    let found = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("p.banner"))
        .await;
    match found {
        Ok(banner) => banner.text().await.unwrap(),
        Err(e) => {
            let url = client.current_url().await.map(|u| u.to_string());
            let page = client.source().await.unwrap_or_default();
            panic!("no result banner ({e}) at {url:?}:\n{page}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_approves_a_refund_in_a_real_browser_while_the_service_runs() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path().join("db"))
        .durability(annal::Durability::Buffered)
        .register("refund", 1, refund)
        .open()
        .await
        .unwrap();
    // A refund decided earlier, so the history section has a row, and the one to approve.
    let earlier = engine
        .start::<_, String>("refund", &(9_500u64, OnExpiry::Escalate))
        .await
        .unwrap();
    let handle = engine
        .start::<_, String>("refund", &(42_000u64, OnExpiry::Escalate))
        .await
        .unwrap();
    let run = handle.run_id();
    let mut pending = Vec::new();
    for _ in 0..200 {
        pending = engine
            .pending_approvals(&annal::ApprovalFilter::default())
            .await
            .unwrap();
        if pending.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let card_of = |r: annal::RunId| pending.iter().find(|p| p.run == r).unwrap().clone();
    let (old, card) = (card_of(earlier.run_id()), card_of(run));
    engine
        .decide_bound(
            old.gate,
            &annal::Actor::new("dana", &["finance"]),
            &DecideRequest::reject("duplicate of ticket T-70").bound_to(old.digest),
        )
        .await
        .unwrap();
    earlier.result().await.unwrap();
    let served = annal_admin::serve(engine.clone(), support::config())
        .await
        .unwrap();
    let base = served.url();
    let gate = card.gate.to_string();
    let (_driver, port) = chromedriver().await;

    // Lee (support) is not among the approvers: refused in words, nothing written.
    let before = engine.history(run).await.unwrap();
    let lee_profile = tempfile::tempdir().unwrap();
    let lee = browser(port, lee_profile.path()).await;
    log_in(&lee, &base, LEE).await;
    decide(&lee, &gate, "approve", "looks fine to me").await;
    let refused = banner(&lee).await;
    assert!(
        refused.contains("Not allowed: lee is not among this gate's approvers")
            && refused.contains("Nothing was recorded."),
        "{refused}"
    );
    assert_eq!(
        engine.history(run).await.unwrap(),
        before,
        "the refusal wrote nothing"
    );
    lee.close().await.unwrap();

    // Dana (finance) sees the card with amount, risk flags and rollback path.
    let dana_profile = tempfile::tempdir().unwrap();
    let dana = browser(port, dana_profile.path()).await;
    log_in(&dana, &base, DANA).await;
    let text = dana
        .find(Locator::Css(&format!("article[data-gate='{gate}']")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "Refund 42000 cents to order A-1001",
        "Amount USD 420.00",
        "under_auto_limit: above the 100 USD auto-approval limit",
        "void refund via payments API within 24h",
        "You decide as role:finance.",
    ] {
        assert!(
            text.contains(expected),
            "the card lacks {expected:?}:\n{text}"
        );
    }
    let shot = dana.screenshot().await.unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inbox.png");
    std::fs::write(&out, &shot).unwrap();
    if std::env::var("ANNAL_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/inbox.png");
        std::fs::write(docs, &shot).unwrap();
    }
    eprintln!("inbox screenshot: {}", out.display());

    // On a phone-sized window nothing overflows sideways.
    dana.set_window_size(375, 812).await.unwrap();
    let overflow = dana
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow.as_i64(), Some(0), "horizontal overflow at 375 px");
    dana.set_window_size(1280, 1500).await.unwrap();

    // Approve with a reason: durable before the page answers, the run completes at once.
    decide(
        &dana,
        &gate,
        "approve",
        "late delivery, within refund policy v3",
    )
    .await;
    let done = banner(&dana).await;
    assert!(
        done.contains("Approved: gate") && done.contains("by dana as role:finance"),
        "{done}"
    );
    let out = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .expect("the run completes")
        .unwrap();
    assert_eq!(out, "refunded 42000 (approved by dana)");

    // The history shows who approved, under which role, and why.
    dana.goto(&format!("{base}/inbox")).await.unwrap();
    let history = dana
        .find(Locator::Css("table.past tbody tr"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "approved",
        "dana",
        "role:finance",
        "late delivery, within refund policy v3",
    ] {
        assert!(
            history.contains(expected),
            "history row lacks {expected:?}: {history}"
        );
    }
    dana.close().await.unwrap();
    served.shutdown().await.unwrap();
    engine.shutdown().await;
}
