//! Engine core: steps, replay after crashes, drift, timers, signals, dedupe, recovery.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal::{Ctx, Engine, Error, RunStatus, StepClass, WorkflowError};
use annal_storage::SimStore;

use crate::support::{completed_steps, kinds, on};

#[derive(Default)]
struct Counters {
    a: AtomicU32,
    b: AtomicU32,
    c: AtomicU32,
}

fn three_steps(counters: Arc<Counters>) -> impl Fn(Ctx, u32) -> futures::future::BoxFuture<'static, Result<u32, WorkflowError>> + Send + Sync + 'static {
    move |ctx: Ctx, input: u32| {
        let counters = Arc::clone(&counters);
        Box::pin(async move {
            let c = Arc::clone(&counters);
            let a: u32 = ctx.step("a").run(move |_| { let c = Arc::clone(&c); async move { c.a.fetch_add(1, Ordering::SeqCst); Ok(input + 1) } }).await?;
            let c = Arc::clone(&counters);
            let b: u32 = ctx.step("b").run(move |_| { let c = Arc::clone(&c); async move { c.b.fetch_add(1, Ordering::SeqCst); Ok(a * 2) } }).await?;
            let c = Arc::clone(&counters);
            let out: u32 = ctx.step("c").run(move |_| { let c = Arc::clone(&c); async move { c.c.fetch_add(1, Ordering::SeqCst); Ok(b + 100) } }).await?;
            Ok(out)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_three_step_workflow_completes_and_records_each_step() {
    let store = Arc::new(SimStore::new());
    let counters = Arc::new(Counters::default());
    let engine = on(&store).register("three", 1, three_steps(Arc::clone(&counters))).open().await.unwrap();
    let handle = engine.start::<u32, u32>("three", &4).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), 110);
    let history = engine.history(handle.run_id()).await.unwrap();
    assert_eq!(completed_steps(&history), ["a", "b", "c"]);
    assert_eq!(kinds(&history).first(), Some(&"RunStarted"));
    assert_eq!(kinds(&history).last(), Some(&"RunCompleted"));
    assert_eq!(engine.status(handle.run_id()).await.unwrap().status, RunStatus::Completed);
}
