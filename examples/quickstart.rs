//! Quick start: a three-step workflow survives a real crash.
//!
//! The example runs itself twice. The child process starts a run on the embedded store in
//! `./annal-data` and is killed (`abort`, no clean shutdown) while step 3 is running, after
//! steps 1 and 2 completed. The parent then opens the same store: the engine resumes the
//! run, hands back the recorded outputs of steps 1 and 2 without running them, runs step 3,
//! and prints the run's history.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::process::Command;

use annal::{Ctx, Engine, RunId, StepClass, WorkflowError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: String,
    amount_cents: u64,
}

/// The workflow: fetch the customer, reserve stock, send the confirmation.
async fn fulfil(ctx: Ctx, order: Order) -> Result<String, WorkflowError> {
    let customer: String = ctx
        .step("fetch_customer")
        .class(StepClass::Read)
        .run(|_| async {
            println!("  [pid {}] step 1: fetch_customer runs", std::process::id());
            Ok("ada@example.com".to_string())
        })
        .await?;
    let reservation: String = ctx
        .step("reserve_stock")
        .class(StepClass::Write)
        .run(|attempt| async move {
            println!(
                "  [pid {}] step 2: reserve_stock runs (idempotency key {})",
                std::process::id(),
                attempt.idempotency_key
            );
            Ok(format!("rsv-{}", &attempt.idempotency_key[..8]))
        })
        .await?;
    let amount = order.amount_cents;
    let sent: String = ctx
        .step("send_confirmation")
        .class(StepClass::Write)
        .run(|_| {
            let customer = customer.clone();
            async move {
                println!(
                    "  [pid {}] step 3: send_confirmation runs",
                    std::process::id()
                );
                if std::env::var_os("QUICKSTART_CRASH").is_some() {
                    println!(
                        "  [pid {}] *** crash: the process dies in the middle of step 3 ***",
                        std::process::id()
                    );
                    std::process::abort();
                }
                Ok(format!(
                    "confirmation for {amount} cents sent to {customer}"
                ))
            }
        })
        .await?;
    Ok(format!("order {}: {reservation}; {sent}", order.id))
}

fn engine() -> annal::EngineBuilder {
    Engine::builder()
        .path("annal-data")
        .register("fulfil", 1, fulfil)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("QUICKSTART_CRASH").is_some() {
        // Child: start the run and die inside step 3.
        let engine = engine().open().await?;
        let order = Order {
            id: "A-1001".into(),
            amount_cents: 4_200,
        };
        let handle = engine.start::<_, String>("fulfil", &order).await?;
        println!("RUN {}", handle.run_id());
        handle.result().await?;
        unreachable!("the child aborts in step 3");
    }

    println!("1. A child process starts the run and crashes in step 3:");
    let child = Command::new(std::env::current_exe()?)
        .env("QUICKSTART_CRASH", "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&child.stdout);
    for line in stdout.lines().filter(|l| !l.starts_with("RUN ")) {
        println!("{line}");
    }
    println!("  child exited: {}", child.status);
    let run: RunId = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RUN "))
        .and_then(|id| uuid::Uuid::parse_str(id.trim()).ok())
        .map(|u| RunId(*u.as_bytes()))
        .ok_or("the child did not report its run")?;

    println!("\n2. This process opens the same store; the engine resumes the run:");
    let engine = engine().open().await?;
    let output: String = engine.handle(run).result().await?;
    println!("  result: {output}");

    let history = engine.history(run).await?;
    let completions = history
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                annal::EventKind::StepCompleted { .. } | annal::EventKind::StepRan { .. }
            )
        })
        .count();
    println!("\n3. Steps 1 and 2 ran once, before the crash; only step 3 ran again. History of run {run}:");
    print!("{}", annal::audit::timeline(&history));
    assert_eq!(
        completions, 3,
        "each step completed exactly once in the history"
    );
    engine.shutdown().await;
    println!("\nInspect it with the auditor CLI: cargo run -p annal-cli -- history {run}");
    Ok(())
}
