//! Every kind of tampering, made the way someone with write access to the sled directory
//! would make it (through the raw tree, CRCs recomputed, metadata fixed to match), is caught
//! by `annal verify` with the run and the seq; a history that only grew extends its
//! checkpoint; proofs check without the database and forged ones are refused.

use std::path::{Path, PathBuf};

use annal::Event;
use annal_storage::chain::{genesis, record_hash};
use annal_storage::{frame, keys, LogStore, RunId};

use super::*;

/// A fixture database, a key pair and a checkpoint of the database taken with them.
struct Checkpointed {
    db: tempfile::TempDir,
    keys: tempfile::TempDir,
}

impl Checkpointed {
    fn new() -> Self {
        let this = Self::keys_for(fixture_db());
        this.digest("cp0");
        this
    }

    fn keys_for(db: tempfile::TempDir) -> Self {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("annal.key");
        let public = expect(
            db.path(),
            &[
                "keygen",
                "--out",
                key.to_str().unwrap(),
                "--name",
                "test.example/annal",
            ],
            0,
        );
        assert!(public.starts_with("test.example/annal+"), "{public}");
        Self { db, keys }
    }

    fn path(&self) -> &Path {
        self.db.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.file(name).to_str().unwrap().to_string()
    }

    /// `annal digest`, its checkpoint saved as `name`.
    fn digest(&self, name: &str) -> String {
        let note = expect(self.path(), &["digest", "--key", &self.arg("annal.key")], 0);
        std::fs::write(self.file(name), &note).unwrap();
        note
    }

    /// `annal verify --against NAME --public-key …`, expecting `code`.
    fn against(&self, name: &str, code: i32) -> String {
        expect(
            self.path(),
            &[
                "verify",
                "--against",
                &self.arg(name),
                "--public-key",
                &self.arg("annal.key.pub"),
            ],
            code,
        )
    }
}

/// The events of a fixture run as stored, decoded.
fn stored_events(tree: &sled::Tree, run: RunId) -> Vec<(Vec<u8>, Event)> {
    tree.scan_prefix(keys::event_prefix(run))
        .map(|item| {
            let (_, value) = item.unwrap();
            let payload = frame::decode(&value).unwrap();
            (value.to_vec(), annal::codec::decode_event(payload).unwrap())
        })
        .collect()
}

/// Sets the `next_seq` the run's metadata records, as someone covering a removal would.
fn set_next_seq(tree: &sled::Tree, run: RunId, next_seq: u64) {
    let raw = tree.get(keys::meta(run)).unwrap().unwrap();
    let mut meta = annal_storage::decode_meta(run, &raw).unwrap();
    meta.next_seq = next_seq;
    tree.insert(keys::meta(run), annal_storage::encode_meta(&meta))
        .unwrap();
}

/// Writes `events` as the run's whole log, every link recomputed from the genesis: a
/// consistent replacement, which no link can catch.
fn replace_log(tree: &sled::Tree, run: RunId, events: &[Event]) {
    for item in tree.scan_prefix(keys::event_prefix(run)).keys() {
        tree.remove(item.unwrap()).unwrap();
    }
    let mut link = genesis(run);
    for (seq, event) in events.iter().enumerate() {
        let payload = annal::codec::encode_event(event);
        tree.insert(
            keys::event(run, seq as u64),
            frame::encode_linked(&link, &payload),
        )
        .unwrap();
        link = record_hash(run, seq as u64, Some(&link), &payload);
    }
    set_next_seq(tree, run, events.len() as u64);
}

fn actor_to(event: &mut Event, to: &str) {
    let annal::EventKind::ApprovalDecided { actor, .. } = &mut event.kind else {
        panic!("fixture changed: {event:?}")
    };
    *actor = to.into();
}

/// The completed fixture run's approval (seq 7) given to another actor, the log replaced
/// consistently.
fn rewrite_approver(tree: &sled::Tree, run: RunId) {
    let mut events: Vec<Event> = stored_events(tree, run)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    actor_to(&mut events[7], "mallory");
    replace_log(tree, run, &events);
}

/// The lines of `out` that name `run`.
fn lines_of(out: &str, run: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with(&format!("run {run}")))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_approvals_actor_changed_with_the_crc_fixed_is_named_by_the_chain() {
    let cp = Checkpointed::new();
    let run = run_id(RUN_COMPLETED);
    tamper(cp.path(), |tree| {
        let (_, mut event) = stored_events(tree, run).remove(7);
        actor_to(&mut event, "mallory");
        tree.insert(keys::event(run, 7), relinked(tree, run, 7, &event))
            .unwrap();
    });
    // The CRC is fine and the history folds: only the chain sees it, without a checkpoint.
    let out = expect(cp.path(), &["verify"], 1);
    assert_eq!(
        lines_of(&out, RUN_COMPLETED),
        [
            format!("run {RUN_COMPLETED} seq 7: differs from what tree head #0 committed to (its first 12 events; the chain breaks here)"),
            format!("run {RUN_COMPLETED} seq 7: not the record seq 8 was written after (altered, replaced or reordered)"),
        ],
        "{out}"
    );
    let out = cp.against("cp0", 1);
    assert!(
        out.contains(&format!("run {RUN_COMPLETED} seq 7: differs from what the checkpoint (tree head #0) committed to (its first 12 events; the chain breaks here)")),
        "{out}"
    );
    assert!(out.contains("FAILED: 2 problems, 1 runs affected"), "{out}");
}

#[test]
fn swapped_and_dropped_events_are_named_where_the_chain_breaks() {
    let cp = Checkpointed::new();
    let escalated = run_id(RUN_ESCALATED);
    let parked = run_id(RUN_PARKED);
    tamper(cp.path(), |tree| {
        // The escalation (seq 11) is dropped and the termination renumbered into its place;
        // seqs inside the events and the metadata fixed to match.
        let events = stored_events(tree, escalated);
        let (frame_12, mut terminated) = events[12].clone();
        terminated.seq = 11;
        let (link, _) = frame::decode_linked(&frame_12).unwrap();
        let payload = annal::codec::encode_event(&terminated);
        tree.insert(
            keys::event(escalated, 11),
            frame::encode_linked(link.unwrap(), &payload),
        )
        .unwrap();
        tree.remove(keys::event(escalated, 12)).unwrap();
        set_next_seq(tree, escalated, 12);
        // Seqs 5 and 6 of the parked run swapped, the seq inside each fixed.
        let events = stored_events(tree, parked);
        for (to, from) in [(5u64, 6usize), (6, 5)] {
            let (bytes, mut event) = events[from].clone();
            event.seq = to;
            let (link, _) = frame::decode_linked(&bytes).unwrap();
            let payload = annal::codec::encode_event(&event);
            tree.insert(
                keys::event(parked, to),
                frame::encode_linked(link.unwrap(), &payload),
            )
            .unwrap();
        }
    });
    let out = expect(cp.path(), &["verify"], 1);
    let chain = |run: &str, seq: u64| {
        format!(
            "run {run} seq {seq}: not the record seq {} was written after (altered, replaced or reordered)",
            seq + 1
        )
    };
    assert!(out.contains(&chain(RUN_ESCALATED, 10)), "{out}");
    assert!(out.contains(&chain(RUN_PARKED, 4)), "{out}");
    assert!(out.contains(&chain(RUN_PARKED, 5)), "{out}");
    // Against the checkpoint: the escalated run no longer has its 13 events.
    let out = cp.against("cp0", 1);
    assert!(
        out.contains(&format!("run {RUN_ESCALATED} seq 12: missing: the checkpoint (tree head #0) committed to 13 events (seq 12 gone: a truncated tail)")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "run {RUN_PARKED} seq 4: differs from what the checkpoint (tree head #0) committed to"
        )),
        "{out}"
    );
}

#[test]
fn a_dropped_run_and_a_truncated_tail_show_against_the_checkpoint() {
    let cp = Checkpointed::new();
    let completed = run_id(RUN_COMPLETED);
    let parked = run_id(RUN_PARKED);
    // The completed run purged whole, the parked run's last two events removed and its
    // metadata made to agree: every check but the checkpoint's passes.
    let store = open_store(cp.path());
    runtime().block_on(store.purge(completed)).unwrap();
    for seq in [9, 10] {
        store.raw_tree().remove(keys::event(parked, seq)).unwrap();
    }
    set_next_seq(store.raw_tree(), parked, 9);
    store.close().unwrap();
    let out = cp.against("cp0", 1);
    assert_eq!(
        [lines_of(&out, RUN_COMPLETED), lines_of(&out, RUN_PARKED)].concat(),
        [
            format!("run {RUN_COMPLETED}: gone, but the checkpoint (tree head #0) committed to its 12 events (dropped or purged)"),
            format!("run {RUN_PARKED} seq 9: missing: the checkpoint (tree head #0) committed to 11 events (seqs 9..=10 gone: a truncated tail)"),
        ],
        "{out}"
    );
    assert!(out.contains("FAILED: 2 problems, 2 runs affected"), "{out}");
    // Without the checkpoint only the stored tree head tells, and it says the same.
    let out = expect(cp.path(), &["verify"], 1);
    assert!(
        out.contains(&format!(
            "run {RUN_COMPLETED}: gone, but tree head #0 committed to its 12 events"
        )),
        "{out}"
    );
    // And someone who also deleted the stored tree head is left with the auditor's copy.
    tamper(cp.path(), |tree| {
        tree.remove(keys::tree_head(0)).unwrap();
    });
    let out = expect(cp.path(), &["verify"], 0);
    assert!(out.contains(NO_TREE_HEAD), "{out}");
    let out = cp.against("cp0", 1);
    assert!(
        out.contains("the checkpoint: the store holds no tree head with this checkpoint (test.example/annal, 3 runs, "),
        "{out}"
    );
    assert!(
        out.contains(
            "do not hash to its root: something it committed to was altered, dropped or truncated"
        ),
        "{out}"
    );
}

#[test]
fn a_consistently_replaced_log_is_located_by_the_tree_heads() {
    // Tree heads after every append, as a service writing them often leaves them.
    let key =
        annal::audit::transparency::SigningKey::from_seed("test.example/annal", [3; 32]).unwrap();
    let db = tempfile::tempdir().unwrap();
    build_fixture_db_with(db.path(), Some(&key));
    let cp = Checkpointed::keys_for(db);
    // The test's own key signed the stored tree heads; the auditor holds its public key.
    std::fs::write(
        cp.file("dense.pub"),
        format!("{}\n", key.verifier().to_text()),
    )
    .unwrap();
    let latest = expect(
        cp.path(),
        &["verify", "--public-key", &cp.arg("dense.pub")],
        0,
    );
    assert!(
        latest.contains("tree head #35 (test.example/annal, 3 runs, "),
        "{latest}"
    );
    assert!(
        latest.contains("signature verified with test.example/annal+"),
        "{latest}"
    );
    assert!(latest.contains("; the history extends it"), "{latest}");

    let completed = run_id(RUN_COMPLETED);
    let escalated = run_id(RUN_ESCALATED);
    tamper(cp.path(), |tree| {
        // The completed run's approval moved to another actor, every later link recomputed.
        rewrite_approver(tree, completed);
        // The escalated run's whole log replaced, from its start.
        let mut events: Vec<Event> = stored_events(tree, escalated)
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        for event in &mut events {
            event.at_ms += 1;
        }
        replace_log(tree, escalated, &events);
    });
    let out = expect(
        cp.path(),
        &["verify", "--public-key", &cp.arg("dense.pub")],
        1,
    );
    let rewritten = "differs from what tree head #35 committed to: its first";
    assert_eq!(
        [lines_of(&out, RUN_COMPLETED), lines_of(&out, RUN_ESCALATED)].concat(),
        [
            format!("run {RUN_COMPLETED} seq 7: {rewritten} 12 events hash to another head, though every link holds (rewritten consistently, every later link recomputed); the first altered record, by the stored tree heads"),
            format!("run {RUN_ESCALATED} seq 0: {rewritten} 13 events hash to another head, though every link holds (rewritten consistently, every later link recomputed); the first altered record, by the stored tree heads"),
        ],
        "{out}"
    );

    // With a single checkpoint, the same rewrite is named with the range it can be in.
    let sparse = Checkpointed::new();
    tamper(sparse.path(), |tree| rewrite_approver(tree, completed));
    let out = sparse.against("cp0", 1);
    assert!(
        out.contains(&format!("run {RUN_COMPLETED} seq 0: differs from what the checkpoint (tree head #0) committed to: its first 12 events hash to another head")),
        "{out}"
    );
    assert!(out.contains("the first altered record is one of seqs 0..=11 (tree heads after more events would say which)"), "{out}");
}

#[test]
fn the_last_record_edited_shows_only_against_a_checkpoint() {
    let cp = Checkpointed::new();
    let completed = run_id(RUN_COMPLETED);
    tamper(cp.path(), |tree| {
        let (_, mut last) = stored_events(tree, completed).remove(11);
        last.at_ms += 1;
        tree.insert(
            keys::event(completed, 11),
            relinked(tree, completed, 11, &last),
        )
        .unwrap();
    });
    // No record links to the last one: only a checkpoint sees the edit.
    let out = cp.against("cp0", 1);
    assert_eq!(
        lines_of(&out, RUN_COMPLETED),
        [format!("run {RUN_COMPLETED} seq 0: differs from what the checkpoint (tree head #0) committed to: its first 12 events hash to another head, though every link holds (rewritten consistently, every later link recomputed); the first altered record is one of seqs 0..=11 (tree heads after more events would say which)")],
        "{out}"
    );
    // Without the stored tree heads, the auditor's checkpoint still shows that something
    // changed.
    tamper(cp.path(), |tree| {
        tree.remove(keys::tree_head(0)).unwrap();
    });
    let out = expect(cp.path(), &["verify"], 0);
    assert!(out.contains(NO_TREE_HEAD), "{out}");
    let out = cp.against("cp0", 1);
    assert!(
        out.contains("the store holds no tree head with this checkpoint"),
        "{out}"
    );
    assert!(out.contains("do not hash to its root"), "{out}");
}

#[test]
fn an_altered_leaf_list_or_signature_is_reported() {
    let cp = Checkpointed::new();
    // Someone truncates a run and rewrites the stored tree head's leaf list to match.
    tamper(cp.path(), |tree| {
        let raw = tree.get(keys::tree_head(0)).unwrap().unwrap();
        let mut stored =
            annal::audit::transparency::StoredTreeHead::decode(frame::decode(&raw).unwrap())
                .unwrap();
        stored.leaves[0].events -= 1;
        tree.insert(keys::tree_head(0), frame::encode(&stored.encode()))
            .unwrap();
    });
    let out = expect(cp.path(), &["verify"], 1);
    assert!(
        out.contains("tree head #0: its 3 leaves hash to root "),
        "{out}"
    );
    assert!(
        out.contains("but its checkpoint says 3 leaves with root"),
        "{out}"
    );
    // The auditor's checkpoint still proves the history: from its time.
    let out = cp.against("cp0", 1);
    assert!(
        out.contains("its leaf list in tree head #0 cannot be used"),
        "{out}"
    );
    assert!(
        out.contains("hash to its signed root: the history extends it"),
        "{out}"
    );

    // A checkpoint signed by another key, or altered, is refused before anything else.
    let other = Checkpointed::keys_for(fixture_db());
    let out = expect(
        cp.path(),
        &[
            "verify",
            "--against",
            &cp.arg("cp0"),
            "--public-key",
            &other.arg("annal.key.pub"),
        ],
        1,
    );
    assert!(
        out.contains("the checkpoint: the note has no signature by key test.example/annal+"),
        "{out}"
    );
    let note = std::fs::read_to_string(cp.file("cp0")).unwrap();
    std::fs::write(cp.file("cp0-edited"), note.replacen("\n3\n", "\n2\n", 1)).unwrap();
    let out = cp.against("cp0-edited", 1);
    assert!(
        out.contains("the checkpoint: the signature by key test.example/annal+"),
        "{out}"
    );
    assert!(out.contains("does not verify"), "{out}");
}

#[test]
fn a_history_that_grew_extends_its_checkpoint() {
    let cp = Checkpointed::keys_for(tempfile::tempdir().unwrap());
    let engine_at = || {
        Engine::builder()
            .path(cp.path())
            .park_after_ms(50)
            .register("refund", 1, awaits_refund_approval)
    };
    let rt = runtime();
    let first = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        let run = start_parked_refund(&engine, 4_200).await;
        engine.shutdown().await;
        run
    });
    cp.digest("cp0");
    // The run is decided and finishes; another run starts and finishes.
    let gate = expect(cp.path(), &["approvals"], 0)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    expect(
        cp.path(),
        &[
            "approve", &gate, "--by", "dana", "--role", "finance", "--reason", "ok",
        ],
        0,
    );
    let second = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        engine.handle::<String>(first).result().await.unwrap();
        let second = start_parked_refund(&engine, 10).await;
        engine.shutdown().await;
        second
    });
    let out = cp.against("cp0", 0);
    assert!(
        out.contains("checkpoint (test.example/annal, 1 runs, ")
            && out.contains(
                "signature verified; tree head #0 holds its leaf list; the history extends it"
            ),
        "{out}"
    );
    assert!(out.contains("ok: verified 2 runs"), "{out}");
    // A later checkpoint covers both runs; a proof of each checks without the database.
    cp.digest("cp1");
    for run in [first, second] {
        let proof = expect(
            cp.path(),
            &["prove", &run.to_string(), "--against", &cp.arg("cp1")],
            0,
        );
        std::fs::write(cp.file("run.proof"), &proof).unwrap();
        let checked = expect(
            Path::new("/nonexistent"),
            &[
                "check-proof",
                &cp.arg("run.proof"),
                "--public-key",
                &cp.arg("annal.key.pub"),
            ],
            0,
        );
        assert!(
            checked.starts_with(&format!("ok: run {run} had "))
                && checked.contains(" events, head "),
            "{checked}"
        );
        assert!(
            checked.contains("in checkpoint test.example/annal of 2 runs"),
            "{checked}"
        );
    }
}

#[test]
fn forged_proofs_and_bad_key_files_are_refused() {
    let cp = Checkpointed::new();
    let proof = expect(
        cp.path(),
        &["prove", RUN_PARKED, "--against", &cp.arg("cp0")],
        0,
    );
    let check = |text: &str, code: i32| {
        std::fs::write(cp.file("p"), text).unwrap();
        expect(
            Path::new("/nonexistent"),
            &[
                "check-proof",
                &cp.arg("p"),
                "--public-key",
                &cp.arg("annal.key.pub"),
            ],
            code,
        )
    };
    assert!(check(&proof, 0).starts_with(&format!("ok: run {RUN_PARKED} had 11 events")));
    let lines: Vec<&str> = proof.lines().collect();
    let replace_line = |at: usize, with: String| {
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edited[at] = with;
        edited.join("\n") + "\n"
    };
    let flip_at = |b64: &str, at: usize| {
        let mut chars: Vec<char> = b64.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let flip = |b64: &str| flip_at(b64, 2);
    // The leaf (its events), a path hash, the root, the signature; another index.
    let leaf = lines[1].strip_prefix("extra ").unwrap();
    assert!(check(&replace_line(1, format!("extra {}", flip(leaf))), 1)
        .contains("REFUSED: the run's leaf is not in the signed tree"));
    assert!(check(&replace_line(3, flip(lines[3])), 1)
        .contains("REFUSED: the run's leaf is not in the signed tree"));
    let root_line = lines.iter().position(|l| *l == "3").unwrap() + 1;
    assert!(check(&replace_line(root_line, flip(lines[root_line])), 1)
        .contains("REFUSED: the proof's checkpoint: the signature by key"));
    let signature = lines.len() - 1;
    let (dash, data) = lines[signature].rsplit_once(' ').unwrap();
    assert!(check(
        &replace_line(signature, format!("{dash} {}", flip_at(data, 20))),
        1
    )
    .contains("does not verify"));
    assert!(check(&replace_line(2, "index 7".into()), 1).contains("is not in a tree of 3 leaves"));
    // Another run's proof presented as this one's: its leaf names the other run.
    let other = expect(
        cp.path(),
        &["prove", RUN_COMPLETED, "--against", &cp.arg("cp0")],
        0,
    );
    let other_leaf = other.lines().nth(1).unwrap().to_string();
    assert!(check(&replace_line(1, other_leaf), 1).contains("REFUSED"));

    // Key files: the private key was created 0600; damaged files get their own errors.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cp.file("annal.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let public = std::fs::read_to_string(cp.file("annal.key.pub")).unwrap();
    for (text, error) in [
        (
            format!(
                "test.example/annal+00000000+{}",
                annal::audit::transparency::b64(&[1; 34])
            ),
            "the key data has 34 bytes",
        ),
        (public.replace('+', "+x"), "not a public key"),
        (
            format!("{}*", public.trim_end()),
            "the key data is not base64",
        ),
        (
            std::fs::read_to_string(cp.file("annal.key")).unwrap(),
            "this is a private key",
        ),
    ] {
        std::fs::write(cp.file("bad.pub"), text).unwrap();
        let out = annal(cp.path(), &["verify", "--public-key", &cp.arg("bad.pub")]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(error), "{error}: {}", stderr(&out));
    }
    let taken = annal(cp.path(), &["keygen", "--out", &cp.arg("annal.key")]);
    assert_eq!(
        taken.status.code(),
        Some(1),
        "an existing key is never overwritten"
    );
}
