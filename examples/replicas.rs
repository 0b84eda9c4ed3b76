//! Three replicas of a service on one PostgreSQL database.
//!
//! A refund service runs as three replicas (three engines, each with its own `PgStore`
//! worker) on one database. Runs started on any replica are executed by one worker at a
//! time under a lease; a reviewer's decision taken through one replica reaches the run
//! another executes; when a replica dies holding runs, the others take them over once its
//! lease passed, and nothing runs twice.
//!
//! Needs a server: `bash .ci/pg start` prints a URL; `ANNAL_PG_URL=<it> cargo run --example
//! replicas`. Without one it says so and exits (and fails where `ANNAL_REQUIRE_PG` is set).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal::{
    Actor, ApprovalFilter, ApprovalRequest, Ctx, Decision, Engine, RiskTier, RunId, StepClass,
    Verdict, WorkflowError,
};
use annal_examples::{section, wait_for};
use annal_postgres::{PgConfig, PgStore};

/// Which replica issued each refund (the payment provider's ledger, by idempotency key).
type Ledger = Arc<Mutex<BTreeMap<String, &'static str>>>;

/// A refund: look the order up, wait for finance above 100 USD, then pay it out once.
async fn refund(
    ctx: Ctx,
    replica: &'static str,
    ledger: Ledger,
    cents: u64,
) -> Result<String, WorkflowError> {
    let order: String = ctx
        .step("lookup_order")
        .class(StepClass::Read)
        .run(move |_| async move { Ok(format!("order for {cents} cents")) })
        .await?;
    if cents > 10_000 {
        let mut request = ApprovalRequest::new(format!("refund {cents} cents: {order}"));
        request.risk = RiskTier::Medium;
        request.cost = Some(cents);
        request.approvers = vec!["role:finance".into()];
        if let Decision::Rejected { reason, .. } = ctx.approval(request).await? {
            return Ok(format!("rejected: {reason}"));
        }
    }
    // Long enough that some runs are in the middle of it when a replica dies.
    ctx.sleep(Duration::from_millis(300)).await?;
    let paid: String = ctx
        .step("pay_out")
        .class(StepClass::Write)
        .run(move |attempt| {
            let ledger = Arc::clone(&ledger);
            async move {
                // The provider deduplicates by key: a second request changes nothing.
                let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
                let by = *ledger.entry(attempt.idempotency_key).or_insert(replica);
                Ok(format!("paid by {by}"))
            }
        })
        .await?;
    Ok(paid)
}

async fn replica(config: &PgConfig, name: &'static str, ledger: &Ledger) -> Engine {
    let store = PgStore::connect(config.clone()).await.expect("connect");
    let ledger = Arc::clone(ledger);
    Engine::builder()
        .store(Arc::new(store))
        .register("refund", 1, move |ctx, cents| {
            refund(ctx, name, Arc::clone(&ledger), cents)
        })
        .open()
        .await
        .expect("open")
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("ANNAL_PG_URL") else {
        let hint = "set ANNAL_PG_URL: `bash .ci/pg start` starts a local server and prints it";
        if std::env::var_os("ANNAL_REQUIRE_PG").is_some() {
            eprintln!("replicas: no PostgreSQL server: {hint}");
            std::process::exit(1);
        }
        println!("replicas: skipped, {hint}");
        return;
    };
    let schema = format!("annal_example_{}", uuid::Uuid::new_v4().simple());
    // Short leases so that the takeover below is quick to watch.
    let config = PgConfig::new(&url)
        .schema(&schema)
        .lease_ms(1_000)
        .poll_ms(100);
    let ledger: Ledger = Arc::default();

    section("three replicas on one database");
    let a = replica(&config, "replica-a", &ledger).await;
    let b = replica(&config, "replica-b", &ledger).await;
    let c = replica(&config, "replica-c", &ledger).await;
    let mut runs: Vec<RunId> = Vec::new();
    for (i, cents) in [4_200u64, 25_000, 9_900, 31_000, 1_500, 12_000]
        .iter()
        .enumerate()
    {
        let on = [&a, &b, &c][i % 3];
        runs.push(
            on.start::<_, String>("refund", cents)
                .await
                .unwrap()
                .run_id(),
        );
    }
    println!("started {} refunds, two on each replica", runs.len());

    section("finance decides through replica c, whoever executes the runs");
    let decided = AtomicU32::new(0);
    let pending = wait_for("three gates", Duration::from_secs(10), || async {
        let pending = c
            .pending_approvals(&ApprovalFilter::default())
            .await
            .unwrap();
        (pending.len() == 3).then_some(pending)
    })
    .await;
    let dana = Actor::new("dana", &["finance"]);
    for gate in &pending {
        c.decide(
            gate.gate,
            &dana,
            Verdict::Approve { edits: None },
            "within policy",
        )
        .await
        .unwrap();
        decided.fetch_add(1, Ordering::SeqCst);
        println!("approved {:?} (run {})", gate.action, gate.run);
    }

    section("replica a dies with runs in flight");
    // No shutdown: its leases stay until its heartbeat expires, as after a crash.
    drop(a);
    let died = Instant::now();
    let mut outcomes = Vec::new();
    for run in &runs {
        let out = b.handle::<String>(*run).result().await.unwrap();
        outcomes.push(out);
    }
    println!(
        "all {} refunds finished {} ms after replica a died (lease 1000 ms)",
        outcomes.len(),
        died.elapsed().as_millis()
    );
    for (run, out) in runs.iter().zip(&outcomes) {
        println!("  {run}: {out}");
    }

    section("nothing ran twice");
    let paid = ledger.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(paid.len(), runs.len(), "one payout per refund: {paid:?}");
    assert_eq!(decided.load(Ordering::SeqCst), 3);
    let mut by_replica: BTreeMap<&str, usize> = BTreeMap::new();
    for replica in paid.values() {
        *by_replica.entry(replica).or_default() += 1;
    }
    println!("payouts by replica: {by_replica:?}");
    b.shutdown().await;
    c.shutdown().await;
    PgStore::drop_schema(&config).await.unwrap();
    println!("ok: three replicas shared the runs; a dead replica's runs were taken over once");
}
