//! A lead-capture workflow that fails halfway: the lead was created, the note did not sync.
//!
//! Most workflow failures are partial. One step worked, the next did not, and a "rerun"
//! button that replays the whole workflow creates a duplicate lead. This example walks
//! through what a retry layer has to know to avoid that:
//!
//! 1. the lead is created in the CRM (a `Write` step carrying its idempotency key), then the
//!    process dies while the note sync is in flight;
//! 2. on restart the run resumes from its checkpoint: the recorded lead is handed back and
//!    `create_lead` is not called again (the fake CRM counts creations per idempotency key);
//! 3. the web form re-delivers its webhook; the start dedupe key (`StartOptions::dedupe_key`)
//!    makes the second trigger join the same run instead of starting another;
//! 4. the note sync keeps failing: three attempts, capped, with exponential backoff and jitter,
//!    then the run escalates (`OnExhaust::Escalate`) with the last good step, the failing
//!    step, its errors and a suggested next move;
//! 5. an operator retries the step once the notes API is back (`engine.operate`), and the run
//!    completes with one lead and one note.
//!
//! The "crash" is in-process: the engine is shut down in the middle of a step body, which
//! stops the run exactly as a process death would (nothing more is written); the fake CRM
//! stands for the remote system and survives it. `examples/quickstart.rs` shows a real
//! `abort` of a child process.
//!
//! ```text
//! cargo run --example crm_lead
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal::audit::StepEnd;
use annal::{
    Backoff, Ctx, Engine, EngineBuilder, Error, OnExhaust, OperatorActionKind, RetryPolicy,
    RunStatus, StartOptions, StepClass, StepFailure, WorkflowError,
};
use annal_examples::{
    escalation, kinds, open_store, print_history, record, section, step, wait_for,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeadForm {
    submission: String,
    company: String,
    contact: String,
    message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Captured {
    lead_id: String,
    note_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotesApi {
    /// The next call hangs (the process dies during it).
    HangOnce,
    /// Every call fails with a 503.
    Down,
    /// Calls succeed.
    Up,
}

/// The CRM. Both endpoints deduplicate by idempotency key, as a CRM that supports
/// `Idempotency-Key` headers does.
struct Crm {
    create_calls: AtomicU32,
    leads: Mutex<BTreeMap<String, String>>,
    note_calls: AtomicU32,
    notes: Mutex<BTreeMap<String, (String, String)>>,
    notes_api: Mutex<NotesApi>,
    note_call_in_flight: AtomicU32,
}

impl Crm {
    fn create_lead(&self, key: &str, form: &LeadForm) -> String {
        self.create_calls.fetch_add(1, Ordering::SeqCst);
        let mut leads = self.leads.lock().unwrap();
        let next = leads.len() + 1;
        let id = leads
            .entry(key.to_string())
            .or_insert_with(|| format!("lead-{next:04} ({})", form.company));
        id.clone()
    }

    async fn add_note(&self, key: &str, lead_id: &str, text: &str) -> Result<String, StepFailure> {
        self.note_calls.fetch_add(1, Ordering::SeqCst);
        let mode = *self.notes_api.lock().unwrap();
        match mode {
            NotesApi::HangOnce => {
                *self.notes_api.lock().unwrap() = NotesApi::Down;
                self.note_call_in_flight.fetch_add(1, Ordering::SeqCst);
                std::future::pending().await
            }
            NotesApi::Down => Err(StepFailure::transient("503 notes service unavailable")),
            NotesApi::Up => {
                let mut notes = self.notes.lock().unwrap();
                let next = notes.len() + 1;
                let (id, _) = notes
                    .entry(key.to_string())
                    .or_insert_with(|| (format!("note-{next}"), format!("{lead_id}: {text}")));
                Ok(id.clone())
            }
        }
    }
}

/// Capture a lead: create it, then attach the form's message as a note.
async fn capture_lead(ctx: Ctx, form: LeadForm, crm: Arc<Crm>) -> Result<Captured, WorkflowError> {
    let (crm, form) = (&*crm, &form);
    let lead_id: String = ctx
        .step("create_lead")
        .tool("crm_leads")
        .class(StepClass::Write)
        .run(move |attempt| async move { Ok(crm.create_lead(&attempt.idempotency_key, form)) })
        .await?;

    // Three attempts in all, 40 ms then 80 ms apart (jittered, capped at 80 ms); then a
    // human decides instead of the loop.
    let lead = &lead_id;
    let note_id: String = ctx
        .step("sync_note")
        .tool("crm_notes")
        .class(StepClass::Write)
        .retry(RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential {
                initial_ms: 40,
                factor: 2,
                max_ms: 80,
            },
            jitter: true,
            attempt_timeout_ms: Some(2_000),
            max_total_ms: None,
        })
        .on_exhaust(OnExhaust::Escalate)
        .run(move |attempt| async move {
            crm.add_note(&attempt.idempotency_key, lead, &form.message)
                .await
        })
        .await?;

    Ok(Captured { lead_id, note_id })
}

fn engine_at(dir: &std::path::Path, crm: &Arc<Crm>) -> EngineBuilder {
    let crm = Arc::clone(crm);
    Engine::builder()
        .path(dir)
        .register("capture_lead", 1, move |ctx, form| {
            capture_lead(ctx, form, Arc::clone(&crm))
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    annal_examples::trace_from_env();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let crm = Arc::new(Crm {
        create_calls: AtomicU32::new(0),
        leads: Mutex::default(),
        note_calls: AtomicU32::new(0),
        notes: Mutex::default(),
        notes_api: Mutex::new(NotesApi::HangOnce),
        note_call_in_flight: AtomicU32::new(0),
    });
    let form = LeadForm {
        submission: "webform/8812".into(),
        company: "Acme Fasteners".into(),
        contact: "ops@acme.example".into(),
        message: "Need a quote for 40k M6 bolts by March".into(),
    };
    // The trigger's own id makes the dedupe key: the same submission is the same run.
    let trigger = || StartOptions {
        dedupe_key: Some(format!("lead:{}", form.submission)),
        ..StartOptions::default()
    };

    section("1. The web form triggers the workflow; the process dies during the note sync");
    let engine = engine_at(dir.path(), &crm).open().await?;
    let handle = engine
        .start_with::<_, Captured>("capture_lead", &form, trigger())
        .await?;
    let run = handle.run_id();
    wait_for("the note sync call", Duration::from_secs(5), || async {
        (crm.note_call_in_flight.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    println!(
        "  lead created: {:?}; note sync in flight...",
        crm.leads.lock().unwrap().values().collect::<Vec<_>>()
    );
    engine.shutdown().await;
    drop((handle, engine));
    println!(
        "  *** crash: the engine stops in the middle of sync_note; nothing more is recorded ***"
    );
    // What the log holds at the crash, read straight from the store: the lead's step is
    // complete; of sync_note nothing was recorded.
    let store = open_store(dir.path())?;
    let at_crash = annal::read_history(&store, run).await?;
    drop(store);
    println!("  the log at the crash:");
    print!("{}", annal::audit::timeline(&at_crash));
    assert_eq!(
        kinds(&at_crash),
        ["RunStarted", "StepRan"],
        "the checkpoint: create_lead done"
    );

    section("2. Restart: the run resumes from its checkpoint");
    let engine = engine_at(dir.path(), &crm).open().await?;
    println!("  reopened {}", dir.path().display());

    section("3. The form provider re-delivers the webhook");
    let again = engine
        .start_with::<_, Captured>("capture_lead", &form, trigger())
        .await?;
    println!(
        "  second trigger with dedupe key {:?} -> run {}",
        trigger().dedupe_key.unwrap_or_default(),
        again.run_id()
    );
    assert_eq!(
        again.run_id(),
        run,
        "the second trigger joined the same run"
    );
    assert_eq!(engine.runs().await?.len(), 1, "no second run was started");

    section("4. The notes API stays down: three backed-off attempts, then escalation");
    let err = again.result().await.expect_err("the run escalates");
    println!("  run {run}: {err}");
    assert!(matches!(err, Error::Escalated { .. }));
    assert_eq!(engine.status(run).await?.status, RunStatus::Escalated);
    let history = engine.history(run).await?;
    let ctx = escalation(&history).expect("an Escalated event with its context");
    println!("  escalation context for the operator:");
    println!(
        "    last good step  {}",
        ctx.last_successful_step.as_deref().unwrap_or("-")
    );
    println!(
        "    failing step    {} (idempotency key {})",
        ctx.failing_step.as_deref().unwrap_or("-"),
        ctx.idempotency_key.as_deref().unwrap_or("-")
    );
    for (attempt, class, message) in &ctx.errors {
        println!("    error           attempt {attempt}: {class}: {message}");
    }
    println!("    attempts/tool   {:?}", ctx.attempts_per_tool);
    println!("    suggested next  {}", ctx.suggested_next);

    let rec = record(run, &history);
    let create = step(&rec, "create_lead");
    let sync = step(&rec, "sync_note");
    assert_eq!(ctx.last_successful_step.as_deref(), Some("create_lead"));
    assert_eq!(ctx.failing_step.as_deref(), Some("sync_note"));
    assert_eq!(ctx.errors.len(), 3, "three attempts, capped");
    assert!(ctx.errors.iter().all(|(_, class, _)| class == "transient"));
    assert!(!ctx.suggested_next.is_empty());
    assert!(matches!(
        &sync.outcome,
        StepEnd::Exhausted {
            action: OnExhaust::Escalate,
            ..
        }
    ));
    // The backoff between attempts was recorded: within [d/2, d] of 40 ms, then of 80 ms.
    let waits: Vec<u64> = sync
        .failures
        .iter()
        .filter_map(|f| f.retry_at_ms.map(|at| at.saturating_sub(f.at_ms)))
        .collect();
    println!("  recorded backoff before attempts 2 and 3: {waits:?} ms (exponential 40 -> 80 ms cap, jittered)");
    assert_eq!(waits.len(), 2);
    assert!(
        (15..=40).contains(&waits[0]) && (35..=80).contains(&waits[1]),
        "{waits:?}"
    );
    // The checkpoint held: one lead, created by one call, before the crash.
    assert_eq!(create.attempts, 1);
    assert_eq!(
        crm.create_calls.load(Ordering::SeqCst),
        1,
        "create_lead did not run again after the restart"
    );
    assert_eq!(crm.leads.lock().unwrap().len(), 1);
    println!(
        "  CRM so far: {} lead(s) from {} create call(s); {} note call(s) (1 lost in the crash, 3 after), {} note(s)",
        crm.leads.lock().unwrap().len(),
        crm.create_calls.load(Ordering::SeqCst),
        crm.note_calls.load(Ordering::SeqCst),
        crm.notes.lock().unwrap().len()
    );

    section("5. The notes API is back; an operator retries the step");
    *crm.notes_api.lock().unwrap() = NotesApi::Up;
    engine
        .operate(
            run,
            "olga@ops",
            OperatorActionKind::RetryStep,
            "notes API restored after INC-2231",
        )
        .await?;
    let captured = again.result().await?;
    println!(
        "  completed: {} with {}",
        captured.lead_id, captured.note_id
    );
    assert_eq!(engine.status(run).await?.status, RunStatus::Completed);
    assert_eq!(crm.leads.lock().unwrap().len(), 1, "still one lead");
    assert_eq!(crm.create_calls.load(Ordering::SeqCst), 1);
    assert_eq!(crm.notes.lock().unwrap().len(), 1, "one note");
    println!("  (the other operator moves: skip the step with a value, or abort the run)");

    section("6. The run's history");
    let history = print_history(&engine, run).await?;
    let rec = record(run, &history);
    assert_eq!(rec.operator_actions.len(), 1);
    assert_eq!(rec.dedupe_key.as_deref(), Some("lead:webform/8812"));
    println!();
    print!("{}", rec.render());

    drop(again);
    engine.shutdown().await;
    println!("\ndone in {:.2?}", started.elapsed());
    Ok(())
}
