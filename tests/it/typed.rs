//! Workflow input and output types: a typed `Workflow` is checked by the compiler; the string
//! API refuses a wrong input at `start` (no run written) and names the run and the registered
//! type when a handle asks for the wrong output type.

use std::sync::Arc;

use annal::{Ctx, Error, RunStatus, WorkflowError};
use annal_storage::SimStore;
use serde::{Deserialize, Serialize};

use crate::support::on;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Refund {
    order: String,
    amount_cents: u64,
}

async fn refund(_ctx: Ctx, refund: Refund) -> Result<String, WorkflowError> {
    Ok(format!(
        "refunded {} on {}",
        refund.amount_cents, refund.order
    ))
}

/// An engine with `refund` registered under the string API.
async fn refund_engine() -> annal::Engine {
    let store = Arc::new(SimStore::new());
    on(&store)
        .register("refund", 1, refund)
        .open()
        .await
        .unwrap()
}

fn order(order: &str, amount_cents: u64) -> Refund {
    Refund {
        order: order.into(),
        amount_cents,
    }
}

#[tokio::test(start_paused = true)]
async fn a_wrong_input_type_is_refused_by_start_and_writes_no_run() {
    let engine = refund_engine().await;
    let wrong = engine.start::<_, String>("refund", &"A-1041").await;
    assert!(
        wrong.is_err(),
        "a string is no Refund: the run would block for good"
    );
    let message = wrong.unwrap_err().to_string();
    assert!(message.contains("refund"), "{message}");
    assert!(
        message.contains("Refund"),
        "names the expected type: {message}"
    );
    assert!(engine.runs().await.unwrap().is_empty(), "no run written");
    // The right type starts as before.
    let ok = order("A-1041", 4_200);
    let run = engine.start::<_, String>("refund", &ok).await.unwrap();
    assert_eq!(run.result().await.unwrap(), "refunded 4200 on A-1041");
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_input_refusal_is_a_typed_error() {
    let engine = refund_engine().await;
    match engine.start::<_, String>("refund", &42u32).await {
        Err(Error::InputType {
            workflow,
            version,
            expected,
            ..
        }) => {
            assert_eq!((workflow.as_str(), version), ("refund", 1));
            assert!(expected.ends_with("Refund"), "{expected}");
        }
        other => panic!("{other:?}"),
    }
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_wrong_output_type_names_the_run_and_the_registered_type() {
    let engine = refund_engine().await;
    let input = order("A-7", 1);
    let handle = engine.start::<_, u64>("refund", &input).await.unwrap();
    let run = handle.run_id();
    let message = handle.result().await.unwrap_err().to_string();
    assert!(
        message.contains(&run.to_string()),
        "names the run: {message}"
    );
    assert!(
        message.contains("registered with output type alloc::string::String"),
        "hints at the right type: {message}"
    );
    // The run itself completed; only the handle's type was wrong.
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Completed
    );
    assert_eq!(
        engine.handle::<String>(run).result().await.unwrap(),
        "refunded 1 on A-7"
    );
    engine.shutdown().await;
}

struct RefundFlow;

impl annal::Workflow for RefundFlow {
    const NAME: &'static str = "refund_flow";
    const VERSION: u32 = 2;
    type Input = Refund;
    type Output = String;

    async fn run(&self, ctx: Ctx, input: Refund) -> Result<String, WorkflowError> {
        let receipt: String = ctx
            .step("pay_back")
            .run(|_| {
                let input = input.clone();
                async move { Ok(format!("receipt for {}", input.order)) }
            })
            .await?;
        Ok(receipt)
    }
}

#[tokio::test(start_paused = true)]
async fn a_typed_workflow_starts_and_ends_with_its_own_types() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store).workflow(RefundFlow).open().await.unwrap();
    let input = order("A-9", 100);
    let handle: annal::RunHandle<String> =
        engine.start_workflow::<RefundFlow>(&input).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "receipt for A-9");
    let info = engine.status(handle.run_id()).await.unwrap();
    assert_eq!((info.workflow.as_str(), info.version), ("refund_flow", 2));
    engine.shutdown().await;
}
