//! The schema, created and migrated by the crate: versioned migrations applied in order
//! under an advisory lock (several replicas may start at once), and a refusal to open a
//! schema newer than this code.
//!
//! Every statement is written for one schema (`annal` unless configured), so several
//! stores — or test cases — can share a database.

use annal_storage::{Error, Result};

/// The newest schema version this code knows.
pub const VERSION: i32 = 3;

/// Quotes a schema name as an SQL identifier.
pub fn quote(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// Migration `n` (from 1) for schema `s` (quoted).
fn migration(n: i32, s: &str) -> Option<String> {
    match n {
        1 => Some(
            format!(
                r#"
CREATE TABLE {s}.workers (
    id uuid PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
-- One row per run: its framed metadata (as sled stores it), the status it holds (indexed for
-- the statuses that may still change), and its lease.
CREATE TABLE {s}.runs (
    run uuid PRIMARY KEY,
    meta bytea NOT NULL,
    status smallint NOT NULL,
    owner uuid,
    epoch bigint NOT NULL DEFAULT 0
);
CREATE INDEX runs_waiting ON {s}.runs (status) WHERE status < 10;
CREATE INDEX runs_owner ON {s}.runs (owner) WHERE owner IS NOT NULL;
-- The log: the same CRC-framed records as sled's `E` keys; (run, seq) is the expected-seq
-- check.
CREATE TABLE {s}.events (
    run uuid NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE {s}.due (
    fire_at_ms bigint NOT NULL,
    run uuid NOT NULL,
    id integer NOT NULL,
    PRIMARY KEY (fire_at_ms, run, id)
);
CREATE INDEX due_run ON {s}.due (run);
CREATE TABLE {s}.dedupe (key bytea PRIMARY KEY, run uuid NOT NULL);
CREATE TABLE {s}.gates (gate uuid PRIMARY KEY, run uuid NOT NULL, position integer NOT NULL);
CREATE INDEX gates_run ON {s}.gates (run);
CREATE TABLE {s}.checkpoints (run uuid PRIMARY KEY, record bytea NOT NULL);
-- Acts on a run forwarded to the worker that executes it; answered in the same transaction
-- as the events they cause.
CREATE TABLE {s}.requests (
    id bigserial PRIMARY KEY,
    run uuid NOT NULL,
    body bytea NOT NULL,
    answer bytea,
    posted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_open ON {s}.requests (run) WHERE answer IS NULL;

"#
            ) + &append_function(s),
        ),
        // Version 1's append function accepted an append without events at a stale seq (a
        // status change made after an event it had not seen): it checked only that the
        // event before the expected seq was there.
        2 => Some(append_function(s)),
        // Store-wide checkpoints of history (signed tree heads; the engine's encoding),
        // framed like every record.
        3 => Some(format!(
            r#"
CREATE TABLE {s}.tree_heads (
    n bigint PRIMARY KEY,
    body bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
"#
        )),
        _ => None,
    }
}

/// The schema's `append` function (created by version 1, replaced by version 2).
fn append_function(s: &str) -> String {
    format!(
        r#"
-- One fenced, seq-checked append with its index changes, all or nothing. Returns 'ok',
-- 'fenced' (the caller's lease is gone), 'conflict' (the log does not end where expected),
-- 'unknown' (no such run) or 'dedupe:<run>' (the key is another run's).
CREATE OR REPLACE FUNCTION {s}.append(
    p_run uuid, p_worker uuid, p_epoch bigint, p_expected bigint,
    p_events bytea[], p_meta bytea, p_status smallint,
    p_timer_put_at bigint[], p_timer_put_id integer[],
    p_timer_del_at bigint[], p_timer_del_id integer[],
    p_dedupe bytea[],
    p_gate_put uuid[], p_gate_put_pos integer[], p_gate_del uuid[],
    p_checkpoint bytea,
    p_answer_id bigint[], p_answer bytea[]
) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    v_owner uuid;
    v_epoch bigint;
    v_holder uuid;
    v_key bytea;
BEGIN
    SELECT owner, epoch INTO v_owner, v_epoch FROM {s}.runs WHERE run = p_run;
    IF NOT FOUND THEN
        -- Only a first append with metadata creates a run.
        IF p_expected <> 0 THEN
            RETURN 'conflict';
        END IF;
        IF p_meta IS NULL THEN
            RETURN 'unknown';
        END IF;
        INSERT INTO {s}.runs (run, meta, status, owner, epoch)
            VALUES (p_run, p_meta, p_status, p_worker, p_epoch);
    ELSE
        IF v_owner IS DISTINCT FROM p_worker OR v_epoch <> p_epoch THEN
            RETURN 'fenced';
        END IF;
        -- The log must end exactly at p_expected: the event before it present (the primary
        -- key refuses the one at it).
        IF p_expected > 0 AND NOT EXISTS (
            SELECT 1 FROM {s}.events WHERE run = p_run AND seq = p_expected - 1
        ) THEN
            RETURN 'conflict';
        END IF;
        IF p_expected = 0 AND EXISTS (SELECT 1 FROM {s}.events WHERE run = p_run) THEN
            RETURN 'conflict';
        END IF;
        -- The primary key refuses an event at p_expected, but an append without events
        -- inserts none: it checks that the log does not go on past p_expected.
        IF cardinality(p_events) = 0 AND EXISTS (
            SELECT 1 FROM {s}.events WHERE run = p_run AND seq = p_expected
        ) THEN
            RETURN 'conflict';
        END IF;
        IF p_meta IS NOT NULL THEN
            UPDATE {s}.runs SET meta = p_meta, status = p_status WHERE run = p_run;
        END IF;
    END IF;
    INSERT INTO {s}.events (run, seq, record)
        SELECT p_run, p_expected + t.i - 1, t.e
        FROM unnest(p_events) WITH ORDINALITY AS t(e, i);
    -- Index changes are rare: a step writes its events and nothing else, so the statements
    -- for them run only when there is something to do.
    IF cardinality(p_timer_put_at) > 0 THEN
        INSERT INTO {s}.due (fire_at_ms, run, id)
            SELECT t.at, p_run, t.id FROM unnest(p_timer_put_at, p_timer_put_id) AS t(at, id)
            ON CONFLICT DO NOTHING;
    END IF;
    IF cardinality(p_timer_del_at) > 0 THEN
        DELETE FROM {s}.due d USING unnest(p_timer_del_at, p_timer_del_id) AS t(at, id)
            WHERE d.fire_at_ms = t.at AND d.run = p_run AND d.id = t.id;
    END IF;
    FOREACH v_key IN ARRAY p_dedupe LOOP
        INSERT INTO {s}.dedupe (key, run) VALUES (v_key, p_run) ON CONFLICT (key) DO NOTHING;
        SELECT run INTO v_holder FROM {s}.dedupe WHERE key = v_key;
        IF v_holder <> p_run THEN
            RAISE EXCEPTION USING ERRCODE = 'AN001', MESSAGE = v_holder::text;
        END IF;
    END LOOP;
    IF cardinality(p_gate_put) > 0 THEN
        INSERT INTO {s}.gates (gate, run, position)
            SELECT t.g, p_run, t.pos FROM unnest(p_gate_put, p_gate_put_pos) AS t(g, pos)
            ON CONFLICT (gate) DO UPDATE SET run = excluded.run, position = excluded.position;
    END IF;
    IF cardinality(p_gate_del) > 0 THEN
        DELETE FROM {s}.gates WHERE gate = ANY (p_gate_del);
    END IF;
    IF p_checkpoint IS NOT NULL THEN
        INSERT INTO {s}.checkpoints (run, record) VALUES (p_run, p_checkpoint)
            ON CONFLICT (run) DO UPDATE SET record = excluded.record;
    END IF;
    IF cardinality(p_answer_id) > 0 THEN
        UPDATE {s}.requests q SET answer = t.a
            FROM unnest(p_answer_id, p_answer) AS t(id, a)
            WHERE q.id = t.id AND q.answer IS NULL;
    END IF;
    RETURN 'ok';
EXCEPTION
    WHEN unique_violation THEN
        RETURN 'conflict';
    WHEN SQLSTATE 'AN001' THEN
        RETURN 'dedupe:' || SQLERRM;
END
$fn$;
"#
    )
}

/// Creates the schema or brings it up to [`VERSION`], in one transaction under an advisory
/// lock so that replicas starting together do not race; refuses a schema newer than this
/// code with [`Error::SchemaTooNew`], changing nothing.
pub async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<()> {
    let s = quote(schema);
    let tx = client.transaction().await.map_err(crate::unavailable)?;
    // One lock id per schema name, so that different schemas migrate independently.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
        &[&format!("annal schema {schema}")],
    )
    .await
    .map_err(crate::unavailable)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version integer NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(crate::unavailable)?;
    let row = tx
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM {s}.schema_version"),
            &[],
        )
        .await
        .map_err(crate::unavailable)?;
    let found: i32 = row.get(0);
    if found > VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    for n in found + 1..=VERSION {
        let Some(sql) = migration(n, &s) else {
            unreachable!("every version up to VERSION has a migration");
        };
        tx.batch_execute(&sql).await.map_err(crate::unavailable)?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[&n],
        )
        .await
        .map_err(crate::unavailable)?;
        tracing::info!(schema, version = n, "annal schema migrated");
    }
    tx.commit().await.map_err(crate::unavailable)
}
