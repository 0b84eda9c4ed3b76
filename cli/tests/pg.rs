//! The `annal` binary on a PostgreSQL database (`--pg`), run as a child process while an
//! engine in this process serves workflows on the same schema: reads and `verify` work on
//! a moving database, decisions and operator actions reach the service that executes the
//! run, damage to rows is named with run and seq. Against a real server (`ANNAL_PG_URL`;
//! see `annal_postgres::testing::url_from_env`), each test in a fresh schema.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal::{Ctx, Engine, Event, RunStatus, StepClass, StepFailure, WorkflowError};
use annal_postgres::{testing, PgConfig, PgStore};
use annal_storage::{LogStore, RunId};

/// A service: an engine on its own runtime, serving the test's workflows.
struct Service {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

impl Service {
    fn start(config: &PgConfig, park_after_ms: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let engine = runtime.block_on(async {
            let store = Arc::new(PgStore::connect(config.clone()).await.unwrap());
            let engine = Engine::builder()
                .store(Arc::clone(&store) as Arc<dyn LogStore>)
                .park_after_ms(park_after_ms)
                .checkpoint_after_events(6)
                .register("order", 1, order)
                .register("ticker", 1, ticker)
                .register("refund", 1, refund)
                .register("escalating_refund", 1, escalating_refund)
                .register("nap", 1, nap)
                .open()
                .await
                .unwrap();
            engine
        });
        Self { runtime, engine }
    }

    fn start_run(&self, workflow: &str, input: u64) -> RunId {
        self.runtime.block_on(async {
            self.engine
                .start::<_, String>(workflow, &input)
                .await
                .unwrap()
                .run_id()
        })
    }

    fn result(&self, run: RunId) -> String {
        self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                self.engine.handle::<String>(run).result(),
            )
            .await
            .unwrap_or_else(|_| panic!("run {run} did not end within 30 s"))
            .unwrap()
        })
    }

    fn wait_for(&self, run: RunId, status: RunStatus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status(run) != status {
            assert!(Instant::now() < deadline, "run {run} never became {status}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status(&self, run: RunId) -> RunStatus {
        self.runtime
            .block_on(self.engine.status(run))
            .unwrap()
            .status
    }

    fn history(&self, run: RunId) -> Vec<Event> {
        self.runtime.block_on(self.engine.history(run)).unwrap()
    }

    fn stop(self) {
        self.runtime.block_on(self.engine.shutdown());
    }
}

async fn order(ctx: Ctx, n: u64) -> Result<String, WorkflowError> {
    let looked: u64 = ctx
        .step("lookup")
        .class(StepClass::Read)
        .run(move |_| async move { Ok::<_, StepFailure>(n * 2) })
        .await?;
    let sent: String = ctx
        .step("send")
        .class(StepClass::Write)
        .run(move |_| async move { Ok::<_, StepFailure>(format!("sent {looked}")) })
        .await?;
    Ok(sent)
}

/// Steps and short sleeps: parks and wakes over and over while the CLI reads.
async fn ticker(ctx: Ctx, rounds: u64) -> Result<String, WorkflowError> {
    for round in 0..rounds {
        let _: u64 = ctx
            .step("tick")
            .class(StepClass::Read)
            .run(move |_| async move { Ok::<_, StepFailure>(round) })
            .await?;
        ctx.sleep(Duration::from_millis(40)).await?;
    }
    Ok(format!("ticked {rounds}"))
}

/// Sleeps an hour: parked with a due time.
async fn nap(ctx: Ctx, _: u64) -> Result<String, WorkflowError> {
    ctx.sleep(Duration::from_secs(3_600)).await?;
    Ok("rested".into())
}

async fn refund(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let mut request = annal::ApprovalRequest::new(format!("refund {amount} cents"));
    request.approvers = vec!["role:finance".into()];
    let approved = match ctx.approval(request).await? {
        annal::Decision::Approved { actor, .. } => actor,
        annal::Decision::Rejected { actor, reason } => {
            return Ok(format!("rejected by {actor}: {reason}"))
        }
        annal::Decision::Expired => return Ok("expired".into()),
    };
    let done: String = ctx
        .step("refund")
        .class(StepClass::Write)
        .run(move |_| async move { Ok::<_, StepFailure>(format!("refunded {amount}")) })
        .await?;
    Ok(format!("{done} by {approved}"))
}

/// A refund whose approval expires at once and escalates.
async fn escalating_refund(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let mut request = annal::ApprovalRequest::new(format!("refund {amount} cents"));
    request.approvers = vec!["role:finance".into()];
    request.deadline_ms = Some(1);
    match ctx.approval(request).await? {
        annal::Decision::Approved { actor, .. } => Ok(format!("refunded by {actor}")),
        annal::Decision::Rejected { actor, .. } => Ok(format!("rejected by {actor}")),
        annal::Decision::Expired => Ok("expired".into()),
    }
}

fn config() -> Option<PgConfig> {
    let url = testing::url_from_env()?;
    Some(testing::fresh(&url))
}

/// Runs `annal --pg URL --pg-schema SCHEMA ARGS…` once.
fn annal(config: &PgConfig, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annal"))
        .arg("--pg")
        .arg(&config.url)
        .arg("--pg-schema")
        .arg(&config.schema)
        .args(args)
        .output()
        .unwrap()
}

/// Runs the command, expects `code`, returns stdout and stderr.
fn expect(config: &PgConfig, args: &[&str], code: i32) -> (String, String) {
    let output = annal(config, args);
    let (out, err) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert_eq!(
        output.status.code(),
        Some(code),
        "annal --pg {args:?}\n--- stdout\n{out}--- stderr\n{err}"
    );
    (out, err)
}

/// The only approval gate `annal approvals` lists for `run`.
fn gate_of(config: &PgConfig, run: RunId) -> String {
    let (listed, _) = expect(config, &["approvals"], 0);
    listed
        .lines()
        .find(|l| l.contains(&run.to_string()))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no gate of {run} in\n{listed}"))
        .to_string()
}

/// A plain SQL connection to the test's schema, to damage rows as a disk or a careless
/// operator would.
struct Sql {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    schema: String,
}

impl Sql {
    fn connect(config: &PgConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        });
        Self {
            runtime,
            client,
            schema: format!("\"{}\"", config.schema),
        }
    }

    /// Runs `sql`, with `{s}` standing for the schema; returns the rows changed (or
    /// returned).
    fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
        let sql = sql.replace("{s}", &self.schema);
        self.runtime
            .block_on(self.client.execute(&sql, params))
            .unwrap()
    }

    /// The stored bytes of `run`'s record `seq`.
    fn record(&self, run: RunId, seq: u64) -> Vec<u8> {
        let sql = format!(
            "SELECT record FROM {}.events WHERE run = $1 AND seq = $2",
            self.schema
        );
        let row = self
            .runtime
            .block_on(self.client.query_one(
                &sql,
                &[&uuid::Uuid::from_bytes(run.0), &i64::try_from(seq).unwrap()],
            ))
            .unwrap();
        row.get(0)
    }

    /// Replaces `run`'s record `seq` with `bytes`.
    fn set_record(&self, run: RunId, seq: u64, bytes: &[u8]) {
        assert_eq!(
            self.exec(
                "UPDATE {s}.events SET record = $3 WHERE run = $1 AND seq = $2",
                &[
                    &uuid::Uuid::from_bytes(run.0),
                    &i64::try_from(seq).unwrap(),
                    &bytes
                ],
            ),
            1
        );
    }

    /// [`Sql::exec`] with `$1` standing for `run`.
    fn run(&self, sql: &str, run: RunId) -> u64 {
        self.exec(sql, &[&uuid::Uuid::from_bytes(run.0)])
    }
}

fn drop_schema(config: &PgConfig) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(PgStore::drop_schema(config)).unwrap();
}

/// While the service runs workflows — runs parking and waking, checkpoints being written,
/// new runs starting — every reading command works and `verify` finds nothing wrong.
#[test]
fn reads_and_verify_work_while_a_service_runs_workflows() {
    let Some(config) = config() else { return };
    let service = Arc::new(Service::start(&config, 20));
    let orders: Vec<RunId> = (0..5).map(|n| service.start_run("order", n)).collect();
    for (n, run) in orders.iter().enumerate() {
        assert_eq!(service.result(*run), format!("sent {}", 2 * n));
    }
    let gated = service.start_run("refund", 4_200);
    service.wait_for(gated, RunStatus::Parked);
    // Tickers start and run while the CLI reads.
    let stop = Arc::new(AtomicBool::new(false));
    let starter = {
        let (service, stop) = (Arc::clone(&service), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut started = Vec::new();
            while !stop.load(Ordering::Acquire) && started.len() < 40 {
                started.push(service.start_run("ticker", 8));
                std::thread::sleep(Duration::from_millis(25));
            }
            started
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let (runs, _) = expect(&config, &["runs"], 0);
    assert!(runs.starts_with("RUN "), "{runs}");
    for run in orders.iter().chain([&gated]) {
        assert!(runs.contains(&run.to_string()), "{runs}");
    }
    let (completed, _) = expect(
        &config,
        &["runs", "--status", "completed", "--workflow", "order"],
        0,
    );
    assert_eq!(completed.lines().count(), 1 + orders.len(), "{completed}");
    let (history, _) = expect(&config, &["history", &gated.to_string()[..13]], 0);
    assert!(
        history.contains("refund v1") && history.contains("ApprovalRequested"),
        "{history}"
    );
    let (json, _) = expect(&config, &["history", &orders[0].to_string(), "--json"], 0);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["events"].as_array().unwrap().len(), 4, "{json}");
    assert_eq!(doc["problems"], serde_json::json!([]));
    let (report, _) = expect(&config, &["report"], 0);
    assert!(
        report.contains("approvals    1 requested") && report.contains("success      "),
        "{report}"
    );
    let (approvals, _) = expect(&config, &["approvals"], 0);
    assert!(
        approvals.contains(&gated.to_string()) && approvals.contains("pending"),
        "{approvals}"
    );
    let (export, _) = expect(&config, &["export", &orders[1].to_string()], 0);
    assert_eq!(export.lines().count(), 4, "{export}");
    for _ in 0..3 {
        // A run that moved during every re-check of a suspicion is noted, not reported.
        let (verified, _) = expect(&config, &["verify"], 0);
        let last = verified.lines().last().unwrap_or_default();
        assert!(last.starts_with("ok: verified "), "{verified}");
    }

    stop.store(true, Ordering::Release);
    let tickers = starter.join().unwrap();
    assert!(!tickers.is_empty());
    for run in &tickers {
        assert_eq!(service.result(*run), "ticked 8");
    }
    let (verified, _) = expect(&config, &["verify"], 0);
    let total = orders.len() + 1 + tickers.len();
    assert!(
        verified.contains(&format!("\nok: verified {total} runs, ")),
        "{verified}"
    );
    let (verified, _) = expect(&config, &["verify", &gated.to_string()], 0);
    assert!(verified.contains("\nok: verified 1 runs"), "{verified}");
    match Arc::try_unwrap(service) {
        Ok(service) => service.stop(),
        Err(_) => panic!("the starter thread still holds the service"),
    }
    drop_schema(&config);
}

/// A decision from the CLI on a run the service holds in memory is forwarded to the
/// service, durable when the CLI exits 0, and the run completes there; a decision on a run
/// that parked (no worker holds it) is recorded by the CLI and the service resumes the run
/// at once. Refusals exit 1 with the typed reason and write nothing.
#[test]
fn decisions_reach_the_service_that_executes_the_run() {
    let Some(config) = config() else { return };
    // Runs stay resident while they wait: the service holds their leases.
    let service = Service::start(&config, 600_000);
    let run = service.start_run("refund", 4_200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !service
        .history(run)
        .iter()
        .any(|e| e.kind.approval_request().is_some())
    {
        assert!(Instant::now() < deadline, "the run never asked");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        service.engine.runs_in_memory(),
        1,
        "the service holds the run"
    );
    let gate = gate_of(&config, run);
    let before = service.history(run).len();

    // Not an approver: the service refuses, nothing is written.
    let (_, refused) = expect(
        &config,
        &[
            "approve", &gate, "--by", "sam", "--role", "support", "--reason", "lgtm",
        ],
        1,
    );
    assert!(
        refused.contains("sam (roles support) may not decide it; it needs one of: role:finance")
            && refused.contains("nothing was written"),
        "{refused}"
    );
    assert_eq!(service.history(run).len(), before, "nothing written");

    let (approved, _) = expect(
        &config,
        &[
            "approve",
            &gate[..8],
            "--by",
            "dana",
            "--role",
            "finance",
            "--reason",
            "within policy",
        ],
        0,
    );
    assert!(
        approved.contains("approved by dana as role:finance")
            && approved.contains("at once if one runs"),
        "{approved}"
    );
    // Durable when the CLI exited: the service's store reads it back at once.
    assert!(service
        .history(run)
        .iter()
        .any(|e| e.kind.decision().is_some_and(|d| d.actor == "dana")));
    assert_eq!(service.result(run), "refunded 4200 by dana");
    // Both decisions went to the service as requests, and both were answered.
    let sql = Sql::connect(&config);
    assert_eq!(
        sql.run(
            "SELECT 1 FROM {s}.requests WHERE run = $1 AND answer IS NOT NULL",
            run
        ),
        2
    );
    // A second decision: history says the gate is closed; nothing is written.
    let after = service.history(run).len();
    let (_, again) = expect(
        &config,
        &[
            "reject", &gate, "--by", "lee", "--role", "finance", "--reason", "no",
        ],
        1,
    );
    assert!(
        again.contains("was already approved by dana") && again.contains("nothing was written"),
        "{again}"
    );
    assert_eq!(service.history(run).len(), after);
    service.stop();

    // A service that parks waiting runs: the CLI finds the run free, records the decision
    // itself and gives the run up at once; the service takes it over and finishes it.
    let service = Service::start(&config, 20);
    let parked = service.start_run("refund", 7);
    service.wait_for(parked, RunStatus::Parked);
    let gate = gate_of(&config, parked);
    let (approved, _) = expect(
        &config,
        &[
            "approve", &gate, "--by", "dana", "--role", "finance", "--reason", "ok",
        ],
        0,
    );
    assert!(approved.contains("approved by dana"), "{approved}");
    let decided = Instant::now();
    assert_eq!(service.result(parked), "refunded 7 by dana");
    // The CLI's lease lasts 5 s; the run was taken over well before: it was given up.
    assert!(
        decided.elapsed() < Duration::from_secs(4),
        "{:?}",
        decided.elapsed()
    );
    let (verified, _) = expect(&config, &["verify"], 0);
    assert!(verified.contains("\nok: verified 2 runs"), "{verified}");
    service.stop();
    drop_schema(&config);
}

/// `operate` on a run that escalated while the service runs: recorded, and the service
/// carries on with the run (here: the reopened approval, then a decision).
#[test]
fn operate_acts_on_an_escalated_run_while_the_service_runs() {
    let Some(config) = config() else { return };
    let service = Service::start(&config, 600_000);
    let run = service.start_run("escalating_refund", 0);
    service.wait_for(run, RunStatus::Escalated);
    let id = run.to_string();
    let before = service.history(run).len();
    let (_, misfit) = expect(
        &config,
        &[
            "operate", &id, "resolve", "done", "--output", "\"x\"", "--by", "olga", "--reason", "x",
        ],
        1,
    );
    assert!(misfit.contains("nothing was written"), "{misfit}");
    assert_eq!(service.history(run).len(), before);
    let (done, _) = expect(
        &config,
        &[
            "operate",
            &id[..8],
            "retry",
            "--by",
            "olga",
            "--reason",
            "reviewer back from leave",
        ],
        0,
    );
    assert!(done.contains("retry by olga"), "{done}");
    let (history, _) = expect(&config, &["history", &id], 0);
    assert!(
        history.contains("retry-step [0] by olga: \"reviewer back from leave\""),
        "{history}"
    );
    // The reopened approval expires at once again: the service escalates the run again.
    service.wait_for(run, RunStatus::Escalated);
    let (aborted, _) = expect(
        &config,
        &["operate", &id, "abort", "--by", "omar", "--reason", "x"],
        0,
    );
    assert!(aborted.contains("the run is failed"), "{aborted}");
    assert_eq!(service.status(run), RunStatus::Failed);
    let (_, again) = expect(
        &config,
        &["operate", &id, "abort", "--by", "omar", "--reason", "x"],
        1,
    );
    assert!(
        again.contains("not escalated") && again.contains("nothing was written"),
        "{again}"
    );
    service.stop();
    drop_schema(&config);
}

/// Damage to rows — a flipped byte in an event record, a deleted row, a lost wake-up, a
/// status that disagrees with the metadata, a due time deleted, damaged metadata — is
/// named with run and seq, every problem at once, and verify exits 1.
#[test]
fn verify_names_damaged_rows_holes_and_lost_wake_ups() {
    let Some(config) = config() else { return };
    let service = Service::start(&config, 20);
    let orders: Vec<RunId> = (0..3).map(|n| service.start_run("ticker", 4 + n)).collect();
    for run in &orders {
        service.result(*run);
    }
    let napping = service.start_run("nap", 0);
    let gated = service.start_run("refund", 1);
    service.wait_for(napping, RunStatus::Parked);
    service.wait_for(gated, RunStatus::Parked);
    service.stop();
    let (verified, _) = expect(&config, &["verify"], 0);
    assert!(verified.contains("\nok: verified 5 runs"), "{verified}");
    let sql = Sql::connect(&config);
    let [flipped, holed, meta_damaged] = [orders[0], orders[1], orders[2]];

    // A flipped byte in seq 2's record, and seq 6 gone from another run.
    assert_eq!(
        sql.run(
            "UPDATE {s}.events SET record = set_byte(record, length(record) - 1, get_byte(record, length(record) - 1) # 1) WHERE run = $1 AND seq = 2",
            flipped
        ),
        1
    );
    assert_eq!(
        sql.run("DELETE FROM {s}.events WHERE run = $1 AND seq = 6", holed),
        1
    );
    let (out, _) = expect(&config, &["verify"], 1);
    assert!(
        out.contains(&format!("run {flipped} seq 2: corrupt frame: ")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "run {holed} seq 6: missing: the log jumps from seq 5 to seq 7"
        )),
        "{out}"
    );
    assert!(out.contains("FAILED: 2 problems, 2 runs affected"), "{out}");
    // The history shows what is readable and says where it stops.
    let (history, _) = expect(&config, &["history", &flipped.to_string()], 1);
    assert!(
        history.contains(&format!("run {flipped} seq 2: corrupt frame")),
        "{history}"
    );
    let (_, not_exported) = expect(&config, &["export", &holed.to_string()], 1);
    assert!(not_exported.contains("not exported"), "{not_exported}");

    // A lost wake-up: a decision behind the parked status, as if its status change had
    // been lost. The status column says blocked while the metadata says parked. The
    // napping run's due time is gone. One run's metadata is damaged.
    let seq = sql.run("SELECT 1 FROM {s}.events WHERE run = $1", gated);
    let gate = {
        let store = service_store(&config);
        let history = store
            .runtime
            .block_on(annal_storage::read_all(store.store.as_ref(), gated))
            .unwrap();
        let requested = history
            .iter()
            .map(|r| annal::codec::decode_event(&r.payload).unwrap())
            .find_map(|e| e.kind.approval_request().map(|(gate, _, _)| *gate))
            .unwrap();
        drop(store);
        requested
    };
    let decided = Event {
        seq,
        at_ms: 1_700_000_000_000,
        kind: annal::EventKind::ApprovalDecided {
            gate,
            approved: true,
            actor: "dana".into(),
            reason: "ok".into(),
            edits: None,
        },
    };
    // Framed as the store frames it: linked to the record before it.
    let previous = sql.record(gated, seq - 1);
    let link = annal_storage::chain::frame_hash(gated, seq - 1, &previous).unwrap();
    let record = annal_storage::frame::encode_linked(&link, &annal::codec::encode_event(&decided));
    sql.exec(
        "INSERT INTO {s}.events (run, seq, record) VALUES ($1, $2, $3)",
        &[
            &uuid::Uuid::from_bytes(gated.0),
            &i64::try_from(seq).unwrap(),
            &record,
        ],
    );
    assert_eq!(
        sql.run("UPDATE {s}.runs SET status = 3 WHERE run = $1", napping),
        1
    );
    assert_eq!(sql.run("DELETE FROM {s}.due WHERE run = $1", napping), 1);
    assert_eq!(
        sql.run(
            "UPDATE {s}.runs SET meta = set_byte(meta, 6, get_byte(meta, 6) # 1) WHERE run = $1",
            meta_damaged
        ),
        1
    );
    let (out, _) = expect(&config, &["verify"], 1);
    for wanted in [
        format!(
            "run {gated}: parked since seq {seq}, but ApprovalDecided arrived at seq {seq} and no driver has seen it (a lost wake-up)"
        ),
        format!("index: status index lists run {napping} as blocked, its metadata says parked"),
        format!(
            "run {napping} meta: status is parked but the status index has no entry for the run"
        ),
        format!("run {napping}: parked until "),
        "but the due-time index has no entry for it".to_string(),
        format!("run {meta_damaged} meta: corrupt metadata: "),
        format!("run {flipped} seq 2: corrupt frame: "),
    ] {
        assert!(out.contains(&wanted), "{wanted}\nnot in\n{out}");
    }
    // `runs` lists every other run and warns of the damaged one.
    let (runs, warning) = expect(&config, &["runs"], 0);
    assert_eq!(runs.lines().count(), 5, "{runs}");
    assert!(!runs.contains(&meta_damaged.to_string()), "{runs}");
    assert!(
        warning.contains("1 runs have missing or corrupt metadata"),
        "{warning}"
    );
    // Verifying one run checks that run only.
    let (one, _) = expect(&config, &["verify", &holed.to_string()], 1);
    assert!(
        one.contains("FAILED: 1 problems, 1 runs affected; verified 1 runs"),
        "{one}"
    );
    drop_schema(&config);
}

/// A store on the test's schema without a service: reads for the test.
struct StoreOnly {
    runtime: tokio::runtime::Runtime,
    store: Arc<PgStore>,
}

fn service_store(config: &PgConfig) -> StoreOnly {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(runtime.block_on(PgStore::connect(config.clone())).unwrap());
    StoreOnly { runtime, store }
}

/// `purge` deletes ended runs while the service runs, with everything that points at them.
#[test]
fn purge_deletes_ended_runs_while_the_service_runs() {
    let Some(config) = config() else { return };
    let service = Service::start(&config, 20);
    let done = service.start_run("order", 1);
    service.result(done);
    let waiting = service.start_run("nap", 0);
    service.wait_for(waiting, RunStatus::Parked);
    let (dry, _) = expect(&config, &["purge", "--older-than", "0d", "--dry-run"], 0);
    assert!(dry.contains(&format!("would purge run {done}")), "{dry}");
    assert!(dry.contains("would purge 1 runs (4 events)"), "{dry}");
    let (purged, _) = expect(&config, &["purge", "--older-than", "0d"], 0);
    assert!(purged.contains("purged 1 runs (4 events)"), "{purged}");
    let (runs, _) = expect(&config, &["runs"], 0);
    assert!(!runs.contains(&done.to_string()) && runs.contains(&waiting.to_string()));
    let (verified, _) = expect(&config, &["verify"], 0);
    assert!(verified.contains("\nok: verified 1 runs"), "{verified}");
    service.stop();
    drop_schema(&config);
}

/// An unreachable server, a URL that does not parse, a schema that does not exist and
/// options that exclude each other are explained; a password in the URL never shows.
#[test]
fn connection_problems_are_explained_without_the_password() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_annal"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8(output.stderr).unwrap();
        assert!(!err.contains("s3cret"), "the password shows: {err}");
        assert!(!String::from_utf8(output.stdout).unwrap().contains("s3cret"));
        (output.status.code(), err)
    };
    // Port 1 on loopback: nothing listens.
    let unreachable = "postgresql://annal:s3cret@127.0.0.1:1/annal";
    for command in [
        &["runs"][..],
        &["verify"],
        &["approve", "00", "--by", "x", "--reason", "y"],
    ] {
        let (code, err) = run(&[&["--pg", unreachable][..], command].concat());
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("cannot use the PostgreSQL database at 127.0.0.1:1/annal")
                && err.contains("Connection refused"),
            "{err}"
        );
    }
    let (code, err) = run(&["--pg", "postgresql://annal:s3cret@[::1/annal", "runs"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid connection string"), "{err}");
    let (code, err) = run(&["--pg", unreachable, "--db", "somewhere", "runs"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, err) = run(&["--pg-schema", "x", "runs"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let help = Command::new(env!("CARGO_BIN_EXE_annal"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--pg <URL>") && help.contains("Works while services run on it"),
        "{help}"
    );

    let Some(config) = config() else { return };
    // A schema that does not exist is refused, and not created.
    let (code, err) = run(&["--pg", &config.url, "--pg-schema", &config.schema, "runs"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("no annal schema '{}'", config.schema)),
        "{err}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        runtime.block_on(PgStore::schema_version(&config)).unwrap(),
        None,
        "the schema was created"
    );
    // A schema older than the CLI is left to the services to migrate.
    drop(runtime.block_on(PgStore::connect(config.clone())).unwrap());
    let sql = Sql::connect(&config);
    let latest = annal_postgres::SCHEMA_VERSION;
    sql.exec(
        "DELETE FROM {s}.schema_version WHERE version = $1",
        &[&latest],
    );
    let (code, err) = run(&["--pg", &config.url, "--pg-schema", &config.schema, "runs"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "is version {}, older than this CLI's ({latest}); upgrade the services first",
            latest - 1
        )),
        "{err}"
    );
    assert_eq!(
        runtime.block_on(PgStore::schema_version(&config)).unwrap(),
        Some(latest - 1),
        "the CLI migrated the schema"
    );
    drop_schema(&config);
}

/// Each kind of tampering with the rows — a record rewritten with its CRC fixed, a run's rows
/// deleted, a tail deleted, a log replaced consistently — is named with run and seq against
/// a checkpoint taken while the service ran; before that, the history that grew (more runs,
/// while the service runs) extends the checkpoint.
#[test]
fn tampering_with_rows_is_named_against_a_checkpoint() {
    let Some(config) = config() else { return };
    let service = Service::start(&config, 20);
    let runs: Vec<RunId> = (0..4).map(|n| service.start_run("order", n)).collect();
    for run in &runs {
        service.result(*run);
    }
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("annal.key");
    let file = |name: &str| keys.path().join(name).to_str().unwrap().to_string();
    expect(
        &config,
        &[
            "keygen",
            "--out",
            &file("annal.key"),
            "--name",
            "test.example/annal",
        ],
        0,
    );
    assert!(key.exists());
    let (note, stored) = expect(&config, &["digest", "--key", &file("annal.key")], 0);
    assert!(
        stored.contains("tree head #0 stored in PostgreSQL"),
        "{stored}"
    );
    std::fs::write(file("cp0"), &note).unwrap();
    let against = |code: i32| {
        expect(
            &config,
            &[
                "verify",
                "--against",
                &file("cp0"),
                "--public-key",
                &file("annal.key.pub"),
            ],
            code,
        )
        .0
    };
    // More runs after the checkpoint, while the service runs them.
    let later: Vec<RunId> = (0..3).map(|n| service.start_run("ticker", 2 + n)).collect();
    let out = against(0);
    assert!(
        out.contains(
            "signature verified; tree head #0 holds its leaf list; the history extends it"
        ),
        "{out}"
    );
    for run in &later {
        service.result(*run);
    }
    service.stop();

    let sql = Sql::connect(&config);
    let [altered, dropped, truncated, replaced] = [runs[0], runs[1], runs[2], runs[3]];
    let events = |run: RunId| sql.run("SELECT 1 FROM {s}.events WHERE run = $1", run);
    let relinked = |run: RunId, seq: u64, change: &dyn Fn(&mut Event)| {
        let stored = sql.record(run, seq);
        let (link, payload) = annal_storage::frame::decode_linked(&stored).unwrap();
        let mut event = annal::codec::decode_event(payload).unwrap();
        change(&mut event);
        annal_storage::frame::encode_linked(link.unwrap(), &annal::codec::encode_event(&event))
    };
    // Record 1 of one run rewritten, CRC fixed.
    sql.set_record(altered, 1, &relinked(altered, 1, &|e| e.at_ms += 1));
    // One run's rows gone.
    let dropped_events = events(dropped);
    sql.run("DELETE FROM {s}.events WHERE run = $1", dropped);
    sql.run("DELETE FROM {s}.runs WHERE run = $1", dropped);
    // The last record of another gone.
    let truncated_events = events(truncated);
    sql.exec(
        "DELETE FROM {s}.events WHERE run = $1 AND seq = $2",
        &[
            &uuid::Uuid::from_bytes(truncated.0),
            &i64::try_from(truncated_events - 1).unwrap(),
        ],
    );
    // A whole log replaced with every link recomputed.
    let replaced_events = events(replaced);
    let mut link = annal_storage::chain::genesis(replaced);
    for seq in 0..replaced_events {
        let stored = sql.record(replaced, seq);
        let payload = annal_storage::frame::decode(&stored).unwrap();
        let mut event = annal::codec::decode_event(payload).unwrap();
        event.at_ms += 1;
        let payload = annal::codec::encode_event(&event);
        sql.set_record(
            replaced,
            seq,
            &annal_storage::frame::encode_linked(&link, &payload),
        );
        link = annal_storage::chain::record_hash(replaced, seq, Some(&link), &payload);
    }

    let out = against(1);
    let label = "the checkpoint (tree head #0)";
    for wanted in [
        format!("run {altered} seq 1: not the record seq 2 was written after (altered, replaced or reordered)"),
        format!("run {altered} seq 1: differs from what {label} committed to (its first {} events; the chain breaks here)", events(altered)),
        format!("run {dropped}: gone, but {label} committed to its {dropped_events} events (dropped or purged)"),
        format!(
            "run {truncated} seq {}: missing: {label} committed to {truncated_events} events (seq {} gone: a truncated tail)",
            truncated_events - 1,
            truncated_events - 1
        ),
        format!("run {replaced} seq 0: differs from what {label} committed to: its first {replaced_events} events hash to another head, though every link holds"),
    ] {
        assert!(out.contains(&wanted), "{wanted}\nnot in\n{out}");
    }
    // The later runs were not touched and are not named.
    for run in &later {
        assert!(!out.contains(&run.to_string()), "{out}");
    }
    // A proof of an untouched run checks without the database.
    let (proof, _) = expect(
        &config,
        &["prove", &later[0].to_string(), "--against", &file("cp0")],
        1,
    );
    assert!(
        proof.is_empty(),
        "a run the checkpoint did not cover has no proof"
    );
    drop_schema(&config);
}
