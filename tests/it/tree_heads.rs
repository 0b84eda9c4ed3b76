//! Tree heads written by the engine: on demand and at intervals, each a signed checkpoint
//! over every run's head with its leaf list, and none while nothing changed.

use std::sync::Arc;
use std::time::Duration;

use annal::audit::transparency::{compare, ChainCheck, SigningKey, StoredTreeHead};
use annal::{Ctx, StepClass, StepFailure, WorkflowError};
use annal_storage::{LogStore, SimStore};

use crate::support::on;

async fn steps(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    for i in 0..n {
        let _: u32 = ctx
            .step("s")
            .class(StepClass::Read)
            .run(move |_| async move { Ok::<_, StepFailure>(i) })
            .await?;
    }
    Ok(n)
}

fn key() -> SigningKey {
    SigningKey::from_seed("test.example/annal", [7; 32]).unwrap()
}

/// Reads every stored tree head, checks it holds together, and returns them.
async fn stored(store: &SimStore) -> Vec<StoredTreeHead> {
    let heads = store.tree_heads(0, usize::MAX).await.unwrap();
    heads
        .into_iter()
        .enumerate()
        .map(|(i, (index, body))| {
            assert_eq!(index, i as u64);
            let head = StoredTreeHead::decode(&body).unwrap();
            let (signed, _) = head.authenticate().unwrap();
            signed.verify(&key().verifier()).unwrap();
            head
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_engine_writes_signed_tree_heads_when_history_changed() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("steps", 1, steps)
        .tree_heads(key(), 60_000)
        .open()
        .await
        .unwrap();
    let first = engine.start::<_, u32>("steps", &3).await.unwrap();
    first.result().await.unwrap();

    // On demand: a checkpoint over the one run, its leaf the run's last record.
    let written = engine.write_tree_head(&key()).await.unwrap();
    assert_eq!(written.index, 0);
    assert_eq!(written.head.checkpoint.size, 1);
    assert_eq!(written.head.checkpoint.origin, "test.example/annal");
    assert_eq!(written.head.checkpoint.time_ms, Some(1_700_000_000_000));
    let records = annal_storage::read_all(store.as_ref(), first.run_id())
        .await
        .unwrap();
    let leaf = written.head.tree.leaves()[0];
    assert_eq!(leaf.events, records.len() as u64);
    assert_eq!(leaf.head, records.last().unwrap().hash(first.run_id()));

    // Nothing changed: the service writes nothing at its interval.
    tokio::time::sleep(Duration::from_millis(61_000)).await;
    assert_eq!(stored(&store).await.len(), 1);

    // A second run: the next interval writes a tree head over both, and the stored history
    // extends the first checkpoint.
    let second = engine.start::<_, u32>("steps", &2).await.unwrap();
    second.result().await.unwrap();
    tokio::time::sleep(Duration::from_millis(60_000)).await;
    let heads = stored(&store).await;
    assert_eq!(heads.len(), 2, "one more tree head once something changed");
    assert_eq!(heads[1].leaves.len(), 2);
    for leaf in &heads[0].leaves {
        let mut chain = ChainCheck::new(leaf.run);
        for r in annal_storage::read_all(store.as_ref(), leaf.run)
            .await
            .unwrap()
        {
            chain.record(r.seq, r.link.as_ref(), &r.payload);
        }
        assert_eq!(compare(leaf, Some(&chain.finish())), None);
    }
    engine.shutdown().await;
}
