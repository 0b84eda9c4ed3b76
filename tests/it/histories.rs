//! Stored histories (`tests/histories/*.jsonl`, one `annal::Event` per line) replayed with
//! `annal::testing::Replayer` against the current code of the workflows below: good ones must
//! replay, drifted ones must report their exact drift. And on-disk frame fixtures
//! (`tests/histories/frames/`), intact and damaged, decoded byte for byte.
//!
//! The files were written once by `regenerate_histories` and are checked in; run
//! `ANNAL_REGENERATE_HISTORIES=1 cargo test -p annal-tests --test it histories::regenerate`
//! to write them again (then update the expected drifts below if they moved).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use annal::testing::program::{register_program, Op, Program, StepSpec, ValueOp};
use annal::testing::{Replayer, Tools};
use annal::{
    Ctx, DriftError, Engine, EngineBuilder, Error, Event, FailureClass, StepClass, WorkflowError,
};
use annal_storage::frame::{self, FrameError};
use annal_storage::SimStore;
use serde_json::{json, Value};

use crate::support::on;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("histories")
}

// ---------------------------------------------------------------------------------------
// The workflows, as the current code has them.

async fn lookup(ctx: &Ctx, tools: &Tools, customer: &str) -> Result<Value, WorkflowError> {
    let crm = tools.tool("crm");
    Ok(ctx
        .step("lookup")
        .class(StepClass::Read)
        .tool("crm")
        .run(|a| {
            let crm = crm.clone();
            let customer = customer.to_string();
            async move { crm.call(&a, json!({ "customer": customer })).await }
        })
        .await?)
}

async fn write_step(
    ctx: &Ctx,
    tools: &Tools,
    name: &str,
    tool: &str,
) -> Result<Value, WorkflowError> {
    let target = tools.tool(tool);
    Ok(ctx
        .step(name)
        .class(StepClass::Write)
        .tool(tool)
        .run(|a| {
            let target = target.clone();
            let name = name.to_string();
            async move { target.call(&a, json!({ "did": name })).await }
        })
        .await?)
}

async fn send_welcome(ctx: &Ctx, tools: &Tools) -> Result<Value, WorkflowError> {
    let mail = tools.tool("mail");
    let ledger = mail.clone();
    Ok(ctx
        .step("send_welcome")
        .class(StepClass::Irreversible)
        .tool("mail")
        .reconcile(move |key| {
            let ledger = ledger.clone();
            async move { ledger.reconcile(&key) }
        })
        .run(|a| {
            let mail = mail.clone();
            async move { mail.call(&a, "welcome").await }
        })
        .await?)
}

/// Onboarding: look the customer up, wait an hour, wait for approval, create the account,
/// send the welcome mail (irreversible), record an id.
async fn onboard(ctx: Ctx, tools: Tools, customer: String) -> Result<Value, WorkflowError> {
    let found = lookup(&ctx, &tools, &customer).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let approver: String = ctx.signal("approve").await?;
    let account = write_step(&ctx, &tools, "create_account", "accounts").await?;
    let mail = send_welcome(&ctx, &tools).await?;
    let id = ctx.uuid().await;
    Ok(json!({ "found": found, "approver": approver, "account": account, "mail": mail, "id": id }))
}

/// A daily digest: two reads joined (one of them retried), a pause, a draft, a publish step
/// that declares its input.
async fn digest(ctx: Ctx, tools: Tools, day: u32) -> Result<Value, WorkflowError> {
    let edition = ctx.random_u64().await;
    let fetch = |name: &'static str| {
        let tool = tools.tool(name);
        ctx.step(name)
            .class(StepClass::Read)
            .tool(name)
            .run(move |a| {
                let tool = tool.clone();
                async move { tool.call(&a, json!({ "day": day })).await }
            })
    };
    let (news, weather) = futures::future::try_join(fetch("news"), fetch("weather")).await?;
    ctx.sleep(Duration::from_secs(600)).await?;
    let llm = tools.tool("llm");
    let summary: Value = ctx
        .step("summarize")
        .class(StepClass::Draft)
        .tool("llm")
        .run(|a| {
            let (llm, news, weather) = (llm.clone(), news.clone(), weather.clone());
            async move { llm.call(&a, json!([news, weather])).await }
        })
        .await?;
    let cms = tools.tool("cms");
    let published: Value = ctx
        .step("publish")
        .tool("cms")
        .input(&day)
        .run(|a| {
            let (cms, summary) = (cms.clone(), summary.clone());
            async move { cms.call(&a, summary).await }
        })
        .await?;
    Ok(json!({ "edition": edition % 1000, "published": published }))
}

/// The interpreter program stored as `program-completed.jsonl`.
fn stored_program() -> Program {
    Program::new([
        Op::Step(StepSpec::new("fetch", StepClass::Read, "crm").failing([FailureClass::Transient])),
        Op::Value {
            kind: ValueOp::Uuid,
        },
        Op::Join(
            StepSpec::new("draft", StepClass::Draft, "mail"),
            StepSpec::new("note", StepClass::Write, "crm"),
        ),
        Op::Sleep { secs: 120 },
        Op::Signal { name: "go".into() },
        Op::Step(
            StepSpec::new("charge", StepClass::Irreversible, "payments")
                .failing([FailureClass::Ambiguous])
                .reconciled(),
        ),
    ])
}

/// The current code of every stored workflow.
pub(crate) fn current(builder: EngineBuilder, tools: &Tools) -> EngineBuilder {
    let (a, b) = (tools.clone(), tools.clone());
    let builder = builder
        .register("onboard", 1, move |ctx, customer| {
            onboard(ctx, a.clone(), customer)
        })
        .register("digest", 1, move |ctx, day| digest(ctx, b.clone(), day));
    register_program(builder, tools)
}

// ---------------------------------------------------------------------------------------
// Older code that wrote the drifted histories (only the generator runs it).

/// `create_account` was called `open_account`.
async fn onboard_renamed(ctx: Ctx, tools: Tools, customer: String) -> Result<Value, WorkflowError> {
    lookup(&ctx, &tools, &customer).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let _: String = ctx.signal("approve").await?;
    write_step(&ctx, &tools, "open_account", "accounts").await?;
    send_welcome(&ctx, &tools).await?;
    ctx.uuid().await;
    Ok(json!("old"))
}

/// The account was created before the approval.
async fn onboard_reordered(
    ctx: Ctx,
    tools: Tools,
    customer: String,
) -> Result<Value, WorkflowError> {
    lookup(&ctx, &tools, &customer).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    write_step(&ctx, &tools, "create_account", "accounts").await?;
    let _: String = ctx.signal("approve").await?;
    send_welcome(&ctx, &tools).await?;
    ctx.uuid().await;
    Ok(json!("old"))
}

/// A `credit_check` step the current code removed.
async fn onboard_with_credit_check(
    ctx: Ctx,
    tools: Tools,
    customer: String,
) -> Result<Value, WorkflowError> {
    lookup(&ctx, &tools, &customer).await?;
    write_step(&ctx, &tools, "credit_check", "bureau").await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let _: String = ctx.signal("approve").await?;
    write_step(&ctx, &tools, "create_account", "accounts").await?;
    send_welcome(&ctx, &tools).await?;
    ctx.uuid().await;
    Ok(json!("old"))
}

/// Before `create_account` was inserted.
async fn onboard_without_account(
    ctx: Ctx,
    tools: Tools,
    customer: String,
) -> Result<Value, WorkflowError> {
    lookup(&ctx, &tools, &customer).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let _: String = ctx.signal("approve").await?;
    send_welcome(&ctx, &tools).await?;
    ctx.uuid().await;
    Ok(json!("old"))
}

/// A final `survey` step the current code no longer reaches.
async fn onboard_with_survey(
    ctx: Ctx,
    tools: Tools,
    customer: String,
) -> Result<Value, WorkflowError> {
    lookup(&ctx, &tools, &customer).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let _: String = ctx.signal("approve").await?;
    write_step(&ctx, &tools, "create_account", "accounts").await?;
    send_welcome(&ctx, &tools).await?;
    ctx.uuid().await;
    write_step(&ctx, &tools, "survey", "mail").await?;
    Ok(json!("old"))
}

/// `publish` declared the edition, not the day, as its input.
async fn digest_other_input(ctx: Ctx, tools: Tools, day: u32) -> Result<Value, WorkflowError> {
    let edition = ctx.random_u64().await;
    let fetch = |name: &'static str| {
        let tool = tools.tool(name);
        ctx.step(name)
            .class(StepClass::Read)
            .tool(name)
            .run(move |a| {
                let tool = tool.clone();
                async move { tool.call(&a, json!({ "day": day })).await }
            })
    };
    futures::future::try_join(fetch("news"), fetch("weather")).await?;
    ctx.sleep(Duration::from_secs(600)).await?;
    let summary: Value = ctx
        .step("summarize")
        .class(StepClass::Draft)
        .tool("llm")
        .run(|_| async { Ok(json!("s")) })
        .await?;
    let cms = tools.tool("cms");
    ctx.step("publish")
        .tool("cms")
        .input(&edition)
        .run(|a| {
            let (cms, summary) = (cms.clone(), summary.clone());
            async move { cms.call(&a, summary).await }
        })
        .await?;
    Ok(json!("old"))
}

// ---------------------------------------------------------------------------------------
// Replaying the stored histories.

async fn replay(file: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    Replayer::new(current(Engine::builder(), &Tools::new()))
        .replay_json_lines(&text)
        .await
}

/// Replays `file` and returns its drift, failing on any other result.
async fn drift(file: &str) -> (u32, Option<u64>, String, String, Vec<String>) {
    match replay(file).await {
        Err(Error::Drift(DriftError {
            position,
            seq,
            expected,
            got,
            fields,
            ..
        })) => (position, seq, expected, got, fields),
        other => panic!("{file}: expected a drift, got {other:?}"),
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Every stored history with its expected result (`None`: replays without drift).
type Expected = Option<(u32, Option<u64>, String, String, Vec<String>)>;

fn corpus() -> Vec<(&'static str, Expected)> {
    vec![
        ("onboard-completed.jsonl", None),
        ("onboard-waiting-for-approval.jsonl", None),
        ("digest-completed.jsonl", None),
        ("program-completed.jsonl", None),
        (
            "onboard-drift-renamed.jsonl",
            Some((
                3,
                Some(7),
                s("step 'open_account' (tool accounts, Write)"),
                s("step 'create_account' (tool accounts, Write)"),
                vec![s("name")],
            )),
        ),
        (
            "onboard-drift-reordered.jsonl",
            Some((
                2,
                Some(5),
                s("step 'create_account' (tool accounts, Write)"),
                s("signal 'approve'"),
                vec![s("kind")],
            )),
        ),
        (
            "onboard-drift-removed.jsonl",
            Some((
                1,
                Some(3),
                s("step 'credit_check' (tool bureau, Write)"),
                s("timer"),
                vec![s("kind")],
            )),
        ),
        (
            "onboard-drift-inserted.jsonl",
            Some((
                3,
                Some(7),
                s("step 'send_welcome' (tool mail, Irreversible)"),
                s("step 'create_account' (tool accounts, Write)"),
                vec![s("name"), s("tool"), s("class")],
            )),
        ),
        (
            "onboard-drift-code-ends-early.jsonl",
            Some((
                6,
                Some(13),
                s("step 'survey' (tool mail, Write)"),
                s("workflow returned before reaching it"),
                vec![s("kind")],
            )),
        ),
        (
            "digest-drift-input.jsonl",
            Some((
                5,
                Some(10),
                s("step 'publish' (tool cms, Write)"),
                s("step 'publish' (tool cms, Write)"),
                vec![s("input_hash")],
            )),
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn good_histories_replay_against_the_current_code() {
    for (file, expected) in corpus() {
        if expected.is_none() {
            if let Err(e) = replay(file).await {
                panic!("{file}: {e}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn drifted_histories_report_their_exact_drift() {
    for (file, expected) in corpus() {
        if let Some(expected) = expected {
            assert_eq!(drift(file).await, expected, "{file}");
        }
    }
}

#[test]
fn every_stored_history_is_checked() {
    let known: Vec<&str> = corpus().into_iter().map(|(f, _)| f).collect();
    let mut stored: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".jsonl"))
        .collect();
    stored.sort();
    for name in &stored {
        assert!(
            known.contains(&name.as_str()),
            "{name} is stored but not in corpus()"
        );
    }
    assert_eq!(
        stored.len(),
        known.len(),
        "corpus() names a history that is not stored: {known:?} vs {stored:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_history_of_an_unregistered_workflow_is_not_replayed() {
    let text = std::fs::read_to_string(dir().join("onboard-completed.jsonl")).unwrap();
    let replayer = Replayer::new(register_program(Engine::builder(), &Tools::new()));
    match replayer.replay_json_lines(&text).await {
        Err(Error::Blocked { reason, .. }) => assert_eq!(
            reason,
            "workflow 'onboard' version 1 is not registered in this engine"
        ),
        other => panic!("expected a blocked replay, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// On-disk frame fixtures.

fn frame_fixture(name: &str) -> Vec<u8> {
    std::fs::read(dir().join("frames").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn stored_events(file: &str) -> Vec<Event> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Splits concatenated frames by their length headers.
fn split_frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
        let (one, rest) = bytes.split_at(frame::HEADER_LEN + len);
        out.push(one);
        bytes = rest;
    }
    out
}

#[test]
fn a_stored_event_frame_decodes_to_its_event() {
    let bytes = frame_fixture("step-completed.frame");
    let payload = frame::decode(&bytes).unwrap();
    let event = annal::codec::decode_event(payload).unwrap();
    assert_eq!(event, stored_events("onboard-completed.jsonl")[2]);
}

#[test]
fn a_stored_frame_with_a_flipped_byte_is_a_crc_error() {
    let bytes = frame_fixture("step-completed-flipped.frame");
    assert_eq!(
        frame::decode(&bytes),
        Err(FrameError::BadCrc {
            expected: 0x483b_cb8c,
            actual: 0xc0a1_982e
        })
    );
}

#[test]
fn a_stored_torn_frame_is_truncated() {
    let bytes = frame_fixture("step-completed-torn.frame");
    assert_eq!(
        frame::decode(&bytes),
        Err(FrameError::Truncated {
            needed: 47,
            available: 40
        })
    );
}

/// The whole onboarding history as the log stores it: schema v1 must decode forever.
#[test]
fn a_stored_binary_history_decodes_to_the_same_events_as_its_json() {
    let bytes = frame_fixture("onboard-completed.frames");
    let events: Vec<Event> = split_frames(&bytes)
        .into_iter()
        .map(|f| annal::codec::decode_event(frame::decode(f).unwrap()).unwrap())
        .collect();
    assert_eq!(events, stored_events("onboard-completed.jsonl"));
}

// ---------------------------------------------------------------------------------------
// The generator.

type Setup = fn(EngineBuilder, &Tools) -> EngineBuilder;

/// Runs `workflow` on fresh tools (scripted by `script`) for two virtual hours, sends
/// `signals` (if `Some`) and waits for the end; returns the history.
async fn record(
    setup: impl Fn(EngineBuilder, &Tools) -> EngineBuilder,
    workflow: &str,
    input: Value,
    script: impl Fn(&Tools),
    signals: Option<&[&str]>,
) -> Vec<Event> {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    script(&tools);
    let engine = setup(on(&store), &tools).open().await.unwrap();
    let run = engine
        .start::<_, Value>(workflow, &input)
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    if let Some(signals) = signals {
        for name in signals {
            engine.signal(run, name, &"ops@example.com").await.unwrap();
        }
        engine.handle::<Value>(run).result().await.unwrap();
    }
    engine.shutdown().await;
    annal::read_history(store.as_ref(), run).await.unwrap()
}

fn write_jsonl(file: &str, events: &[Event]) {
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(dir().join(file), text).unwrap();
}

/// An onboarding workflow of older code, boxed.
type OnboardCode =
    fn(Ctx, Tools, String) -> futures::future::BoxFuture<'static, Result<Value, WorkflowError>>;

fn with_onboard(f: OnboardCode) -> impl Fn(EngineBuilder, &Tools) -> EngineBuilder {
    move |builder, tools| {
        let tools = tools.clone();
        builder.register("onboard", 1, move |ctx, customer| {
            f(ctx, tools.clone(), customer)
        })
    }
}

/// Writes every stored history and frame fixture again. Only with
/// `ANNAL_REGENERATE_HISTORIES=1`; the files are checked in.
#[tokio::test(start_paused = true)]
async fn regenerate_histories() {
    if std::env::var_os("ANNAL_REGENERATE_HISTORIES").is_none() {
        return;
    }
    std::fs::create_dir_all(dir().join("frames")).unwrap();
    let customer = json!("c-1042");
    let onboard_done = record(
        current,
        "onboard",
        customer.clone(),
        |_| {},
        Some(&["approve"]),
    )
    .await;
    write_jsonl("onboard-completed.jsonl", &onboard_done);
    write_jsonl(
        "onboard-waiting-for-approval.jsonl",
        &record(current, "onboard", customer.clone(), |_| {}, None).await,
    );
    let news_fails = |tools: &Tools| {
        tools.tool("news").fail_times(2, FailureClass::Transient);
    };
    write_jsonl(
        "digest-completed.jsonl",
        &record(current, "digest", json!(17), news_fails, Some(&[])).await,
    );
    let program = serde_json::to_value(stored_program()).unwrap();
    write_jsonl(
        "program-completed.jsonl",
        &record(current, "program", program, |_| {}, Some(&["go"])).await,
    );

    let variants: [(&str, OnboardCode); 5] = [
        ("onboard-drift-renamed.jsonl", |c, t, i| {
            Box::pin(onboard_renamed(c, t, i))
        }),
        ("onboard-drift-reordered.jsonl", |c, t, i| {
            Box::pin(onboard_reordered(c, t, i))
        }),
        ("onboard-drift-removed.jsonl", |c, t, i| {
            Box::pin(onboard_with_credit_check(c, t, i))
        }),
        ("onboard-drift-inserted.jsonl", |c, t, i| {
            Box::pin(onboard_without_account(c, t, i))
        }),
        ("onboard-drift-code-ends-early.jsonl", |c, t, i| {
            Box::pin(onboard_with_survey(c, t, i))
        }),
    ];
    for (file, code) in variants {
        write_jsonl(
            file,
            &record(
                with_onboard(code),
                "onboard",
                customer.clone(),
                |_| {},
                Some(&["approve"]),
            )
            .await,
        );
    }
    let old_digest: Setup = |builder, tools| {
        let tools = tools.clone();
        builder.register("digest", 1, move |ctx, day| {
            digest_other_input(ctx, tools.clone(), day)
        })
    };
    write_jsonl(
        "digest-drift-input.jsonl",
        &record(old_digest, "digest", json!(17), |_| {}, Some(&[])).await,
    );

    // Frames exactly as the log stores them.
    let framed: Vec<Vec<u8>> = onboard_done
        .iter()
        .map(|e| frame::encode(&annal::codec::encode_event(e)))
        .collect();
    std::fs::write(
        dir().join("frames/onboard-completed.frames"),
        framed.concat(),
    )
    .unwrap();
    let one = framed[2].clone();
    std::fs::write(dir().join("frames/step-completed.frame"), &one).unwrap();
    let mut flipped = one.clone();
    flipped[frame::HEADER_LEN + 3] ^= 0x04;
    std::fs::write(dir().join("frames/step-completed-flipped.frame"), &flipped).unwrap();
    std::fs::write(dir().join("frames/step-completed-torn.frame"), &one[..40]).unwrap();
    eprintln!(
        "flipped: {:?}; torn: {:?}",
        frame::decode(&flipped),
        frame::decode(&one[..40])
    );
}
