//! Tamper evidence on the command line: keys (`keygen`), signed checkpoints (`digest`), what
//! `verify` checks against tree heads and checkpoints, inclusion proofs (`prove`) and their
//! check without a database (`check-proof`). The bytes are in docs/checkpoints.md; the
//! tree, notes and checks are `annal::audit::transparency`'s.
//!
//! What `verify` compares with: the latest tree head the store holds (its leaf list must
//! hash to the root its note signs; its signature is checked when a public key is given),
//! and with `--against` the auditor's own checkpoint, whose leaf list is looked for among
//! the stored tree heads. Each run they committed to must still extend what they committed
//! to (`transparency::compare`). A run rewritten consistently (every link recomputed) is
//! located with the other stored tree heads (`transparency::locate`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use annal::audit::transparency::{
    compare, locate, Divergence, InclusionProof, Leaf, RunChain, SignedCheckpoint, SigningKey,
    StoredTreeHead, Tree, VerifierKey,
};
use annal::audit::utc;
use annal_storage::RunId;
use anyhow::{bail, Context as _};

use crate::db::{Database, Problem};

/// Reads a text file an auditor or operator hands in, with its path in errors.
fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// Loads a private key file (`annal keygen`'s FILE).
pub fn signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    SigningKey::parse(&read_text(path, "the key file")?)
        .with_context(|| format!("the key file {}", path.display()))
}

/// Loads a public key file (`annal keygen`'s FILE.pub).
pub fn verifier_key(path: &Path) -> anyhow::Result<VerifierKey> {
    VerifierKey::parse(&read_text(path, "the public key file")?)
        .with_context(|| format!("the public key file {}", path.display()))
}

/// Loads a checkpoint file (what `annal digest` printed).
pub fn checkpoint(path: &Path) -> anyhow::Result<SignedCheckpoint> {
    SignedCheckpoint::parse(&read_text(path, "the checkpoint")?)
        .with_context(|| format!("the checkpoint {}", path.display()))
}

/// Creates `path` for writing; it must not exist. `private` files get mode 0600.
fn create(path: &Path, private: bool) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// `annal keygen`: a new Ed25519 key named `name`; the private key to `out` (mode 0600), the
/// public key to `out.pub` and standard output.
pub fn keygen(out: &Path, name: &str, stdout: &mut dyn Write) -> anyhow::Result<u8> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    let key = SigningKey::from_seed(name, seed).context("--name")?;
    let public_path = {
        let mut name = out.as_os_str().to_os_string();
        name.push(".pub");
        std::path::PathBuf::from(name)
    };
    if public_path.exists() {
        bail!("{} already exists", public_path.display());
    }
    let mut private = create(out, true)?;
    writeln!(private, "{}", key.to_text())?;
    private.sync_all()?;
    let mut public = create(&public_path, false)?;
    writeln!(public, "{}", key.verifier().to_text())?;
    public.sync_all()?;
    writeln!(stdout, "{}", key.verifier().to_text())?;
    eprintln!(
        "private key in {} (keep it secret: it signs checkpoints); public key in {} (hand it to auditors)",
        out.display(),
        public_path.display()
    );
    Ok(0)
}

/// `annal digest`: computes every run's head, signs a checkpoint, stores it with its leaf
/// list, and prints the checkpoint.
pub fn digest(
    db: &Database,
    key: &Path,
    origin: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let key = signing_key(key)?;
    let origin = origin.unwrap_or(key.name());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let store = db.store();
    let written = db
        .runtime()
        .block_on(annal::write_tree_head(store.as_ref(), &key, origin, now_ms))
        .context("writing the tree head")?;
    out.write_all(written.head.note.as_bytes())?;
    eprintln!(
        "tree head #{} stored in {}: {} runs; keep the checkpoint above outside the database",
        written.index,
        db.location(),
        written.head.checkpoint.size
    );
    Ok(0)
}

/// A stored tree head as read and checked.
struct Head {
    index: u64,
    signed: SignedCheckpoint,
    tree: Tree,
}

/// Reads stored tree head `index`; `Err` says why it cannot be used.
fn read_head(db: &Database, index: u64) -> anyhow::Result<Result<Head, String>> {
    let body = match db.tree_head(index)? {
        None => return Ok(Err("missing".into())),
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(body)) => body,
    };
    Ok(StoredTreeHead::decode(&body)
        .and_then(|stored| stored.authenticate())
        .map(|(signed, tree)| Head {
            index,
            signed,
            tree,
        })
        .map_err(|e| e.to_string()))
}

/// What a checkpoint's note says, for messages.
fn describe(signed: &SignedCheckpoint) -> String {
    let c = &signed.checkpoint;
    let time = c
        .time_ms
        .map(|t| format!(", {}", utc(t)))
        .unwrap_or_default();
    format!("{}, {} runs{time}", c.origin, c.size)
}

/// One checkpoint the history is compared with.
struct Source {
    /// How messages name it.
    label: String,
    /// Problems found against it.
    divergences: u64,
    /// What to say of it when nothing diverged.
    note: String,
}

/// The checkpoints `verify` compares with, and what each committed to, by run.
#[derive(Default)]
pub struct Commitments {
    sources: Vec<Source>,
    by_run: BTreeMap<RunId, Vec<(usize, Leaf)>>,
    key: Option<VerifierKey>,
    /// The auditor's checkpoint, when the store holds no usable leaf list for it.
    unlisted: Option<SignedCheckpoint>,
}

/// A run whose committed records hash to another head although every link holds.
pub struct Rewritten {
    source: usize,
    leaf: Leaf,
    chain: RunChain,
}

impl Commitments {
    /// Reads the latest stored tree head and, with `against`, finds the auditor's checkpoint
    /// among the stored ones; reports what is wrong with them into `problems`.
    pub fn read(
        db: &Database,
        key: Option<VerifierKey>,
        against: Option<&SignedCheckpoint>,
        problems: &mut Vec<Problem>,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut commitments = Self {
            key,
            ..Self::default()
        };
        let indexes = db.tree_head_indexes()?;
        let mut matched = None;
        if let Some(against) = against {
            let label = "the checkpoint".to_string();
            match &commitments.key {
                Some(key) => {
                    if let Err(e) = against.verify(key) {
                        problems.push(Problem::checkpoint(label.clone(), e.to_string()));
                        // A checkpoint that is not the operator's proves nothing.
                        return Ok(commitments);
                    }
                }
                None => bail!(
                    "--against needs --public-key: a checkpoint is worth what its signature is"
                ),
            }
            // Its leaf list: the stored tree head with the same signed text, newest first.
            let mut found = None;
            for &index in indexes.iter().rev() {
                match read_head(db, index)? {
                    Ok(head) if head.signed.text == against.text => {
                        found = Some(Ok(head));
                        break;
                    }
                    Ok(_) => {}
                    Err(why) => {
                        // A damaged or altered tree head might have been this one.
                        if let Some(body) = db.tree_head(index)?.and_then(Result::ok) {
                            if StoredTreeHead::decode(&body).is_ok_and(|s| {
                                SignedCheckpoint::parse(&s.note)
                                    .is_ok_and(|n| n.text == against.text)
                            }) {
                                found = Some(Err((index, why)));
                                break;
                            }
                        }
                    }
                }
            }
            match found {
                Some(Ok(head)) => {
                    let label = format!("the checkpoint (tree head #{})", head.index);
                    matched = Some(head.index);
                    let note = format!(
                        "checkpoint ({}): signature verified; tree head #{} holds its leaf list",
                        describe(against),
                        head.index
                    );
                    commitments.add(label, note, &head.tree);
                }
                Some(Err((index, why))) => {
                    problems.push(Problem::checkpoint(
                        label,
                        format!("its leaf list in tree head #{index} cannot be used: {why} (altered); only what can be proven without it is checked"),
                    ));
                    commitments.unlisted = Some(against.clone());
                }
                None => {
                    problems.push(Problem::checkpoint(
                        label,
                        format!(
                            "the store holds no tree head with this checkpoint ({}): its leaf list was deleted, or the checkpoint is of another store; only what can be proven without it is checked",
                            describe(against)
                        ),
                    ));
                    commitments.unlisted = Some(against.clone());
                }
            }
        }
        let Some(&latest) = indexes.last() else {
            notes.push("note: no tree head stored: a dropped run, a truncated tail or an edit of a run's last record shows only against a checkpoint (annal digest)".into());
            return Ok(commitments);
        };
        if matched == Some(latest) {
            return Ok(commitments);
        }
        let label = format!("tree head #{latest}");
        match read_head(db, latest)? {
            Err(why) => problems.push(Problem::checkpoint(label, why)),
            Ok(head) => {
                let signature = match &commitments.key {
                    Some(key) => match head.signed.verify(key) {
                        Ok(_) => format!("signature verified with {}", key.to_text()),
                        Err(e) => {
                            problems.push(Problem::checkpoint(label, e.to_string()));
                            return Ok(commitments);
                        }
                    },
                    None => "signature not checked (no --public-key)".to_string(),
                };
                let note = format!(
                    "tree head #{latest} ({}): its leaf list hashes to its root; {signature}",
                    describe(&head.signed)
                );
                commitments.add(label, note, &head.tree);
            }
        }
        Ok(commitments)
    }

    fn add(&mut self, label: String, note: String, tree: &Tree) {
        let source = self.sources.len();
        self.sources.push(Source {
            label,
            divergences: 0,
            note,
        });
        for leaf in tree.leaves() {
            self.by_run
                .entry(leaf.run)
                .or_default()
                .push((source, *leaf));
        }
    }

    /// Every run some checkpoint committed to.
    pub fn runs(&self) -> impl Iterator<Item = RunId> + '_ {
        self.by_run.keys().copied()
    }

    /// Compares `run` as scanned now (`chain`; `None` if the run is gone) with what each
    /// checkpoint committed to: problems into `problems`, consistent rewrites returned for
    /// [`Commitments::locate`].
    pub fn check_run(
        &mut self,
        run: RunId,
        chain: Option<&RunChain>,
        problems: &mut Vec<Problem>,
    ) -> Vec<Rewritten> {
        let mut rewritten = Vec::new();
        for &(source, leaf) in self.by_run.get(&run).map(Vec::as_slice).unwrap_or_default() {
            let Some(divergence) = compare(&leaf, chain) else {
                continue;
            };
            self.sources[source].divergences += 1;
            let label = &self.sources[source].label;
            problems.push(match divergence {
                Divergence::Dropped { committed, .. } => Problem::run(
                    run,
                    format!("gone, but {label} committed to its {committed} events (dropped or purged)"),
                ),
                Divergence::Truncated { committed, now, .. } => {
                    let gone = if committed - now == 1 {
                        format!("seq {now} gone")
                    } else {
                        format!("seqs {now}..={} gone", committed - 1)
                    };
                    Problem::event(
                        run,
                        now,
                        format!("missing: {label} committed to {committed} events ({gone}: a truncated tail)"),
                    )
                }
                Divergence::Unreadable { seq, .. } => Problem::event(
                    run,
                    seq,
                    format!("missing or unreadable, so the run cannot be checked against {label}"),
                ),
                Divergence::Broken { committed, seq, .. } => Problem::event(
                    run,
                    seq,
                    format!("differs from what {label} committed to (its first {committed} events; the chain breaks here)"),
                ),
                Divergence::Rewritten { .. } => {
                    if let Some(chain) = chain {
                        rewritten.push(Rewritten {
                            source,
                            leaf,
                            chain: chain.clone(),
                        });
                    }
                    continue;
                }
                _ => Problem::run(run, format!("does not extend what {label} committed to")),
            });
        }
        rewritten
    }

    /// Names where each consistently rewritten run first differs, as closely as the stored
    /// tree heads allow (those whose leaf lists hash to their roots and, with a public key,
    /// whose signatures verify).
    pub fn locate(
        &mut self,
        db: &Database,
        rewritten: Vec<Rewritten>,
        problems: &mut Vec<Problem>,
    ) -> anyhow::Result<()> {
        if rewritten.is_empty() {
            return Ok(());
        }
        let runs: BTreeSet<RunId> = rewritten.iter().map(|r| r.leaf.run).collect();
        let mut samples: BTreeMap<RunId, Vec<(u64, annal_storage::chain::Link)>> = BTreeMap::new();
        for index in db.tree_head_indexes()? {
            let Ok(head) = read_head(db, index)? else {
                continue;
            };
            if self
                .key
                .as_ref()
                .is_some_and(|key| head.signed.verify(key).is_err())
            {
                continue;
            }
            for run in &runs {
                if let Some((_, leaf)) = head.tree.find(*run) {
                    samples
                        .entry(*run)
                        .or_default()
                        .push((leaf.events, leaf.head));
                }
            }
        }
        for Rewritten {
            source,
            leaf,
            chain,
        } in rewritten
        {
            self.sources[source].divergences += 1;
            let label = &self.sources[source].label;
            let mut known = samples.remove(&leaf.run).unwrap_or_default();
            known.push((leaf.events, leaf.head));
            let committed = leaf.events;
            let what = format!(
                "differs from what {label} committed to: its first {committed} events hash to another head, though every link holds (rewritten consistently, every later link recomputed)"
            );
            let problem = match locate(&chain, &known) {
                Some((low, high)) if low == high => Problem::event(
                    leaf.run,
                    low,
                    format!("{what}; the first altered record, by the stored tree heads"),
                ),
                Some((low, high)) => Problem::event(
                    leaf.run,
                    low,
                    format!("{what}; the first altered record is one of seqs {low}..={high} (tree heads after more events would say which)"),
                ),
                None => Problem::run(
                    leaf.run,
                    format!("{what}; the stored tree heads contradict each other about it"),
                ),
            };
            problems.push(problem);
        }
        Ok(())
    }

    /// Says what each checkpoint came to, and, for an auditor's checkpoint whose leaf list
    /// the store no longer holds, what can still be proven: whether the runs as they were at
    /// its time hash to its root.
    pub fn finish(
        &self,
        db: &Database,
        problems: &mut Vec<Problem>,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        for source in &self.sources {
            if source.divergences == 0 {
                notes.push(format!("{}; the history extends it", source.note));
            }
        }
        let Some(unlisted) = &self.unlisted else {
            return Ok(());
        };
        let checkpoint = &unlisted.checkpoint;
        let Some(time_ms) = checkpoint.time_ms else {
            problems.push(Problem::checkpoint(
                "the checkpoint",
                "it carries no time, so the history it committed to cannot be reconstructed: whether the history extends it cannot be proven",
            ));
            return Ok(());
        };
        let leaves = leaves_at(db, time_ms)?;
        let tree = Tree::new(leaves)?;
        if tree.size() == checkpoint.size && tree.root() == checkpoint.root {
            notes.push(format!(
                "checkpoint ({}): the runs as they were at {} hash to its signed root: the history extends it",
                describe(unlisted),
                utc(time_ms)
            ));
        } else {
            problems.push(Problem::checkpoint(
                "the checkpoint",
                format!(
                    "the runs as they were at {} ({} runs) do not hash to its root: something it committed to was altered, dropped or truncated (or runs moved while it was taken); without its leaf list the runs cannot be named",
                    utc(time_ms),
                    tree.size()
                ),
            ));
        }
        Ok(())
    }
}

/// Every run's leaf as it was at `time_ms`: its leading events stamped at or before then.
fn leaves_at(db: &Database, time_ms: u64) -> anyhow::Result<Vec<Leaf>> {
    let mut leaves = Vec::new();
    for run in db.run_ids()? {
        let meta = db.meta(run)?.ok().flatten();
        let scan = db.scan_events(run, meta.as_ref())?;
        let events = scan
            .events
            .iter()
            .take_while(|e| e.at_ms <= time_ms)
            .count() as u64;
        if let Some(head) = scan.chain.chain().head_at(events) {
            leaves.push(Leaf { run, events, head });
        }
    }
    Ok(leaves)
}

/// The leaf list of `checkpoint`: from the stored tree head with its text if that one
/// holds together, else the runs as they were at its time if they hash to its root.
fn leaves_of(db: &Database, checkpoint: &SignedCheckpoint) -> anyhow::Result<Tree> {
    for index in db.tree_head_indexes()?.into_iter().rev() {
        if let Ok(head) = read_head(db, index)? {
            if head.signed.text == checkpoint.text {
                return Ok(head.tree);
            }
        }
    }
    if let Some(time_ms) = checkpoint.checkpoint.time_ms {
        let tree = Tree::new(leaves_at(db, time_ms)?)?;
        if tree.size() == checkpoint.checkpoint.size && tree.root() == checkpoint.checkpoint.root {
            return Ok(tree);
        }
    }
    bail!(
        "the store holds no leaf list for this checkpoint ({}), and the runs as they were at its time do not hash to its root: run `annal verify --against` on it",
        describe(checkpoint)
    )
}

/// `annal prove`: the inclusion proof of `run`'s leaf under the checkpoint.
pub fn prove(
    db: &Database,
    run: RunId,
    against: &Path,
    key: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let checkpoint = self::checkpoint(against)?;
    if let Some(key) = key {
        checkpoint
            .verify(&verifier_key(key)?)
            .with_context(|| format!("the checkpoint {}", against.display()))?;
    }
    let tree = leaves_of(db, &checkpoint)?;
    let note = read_text(against, "the checkpoint")?;
    let Some(proof) = tree.prove(run, &note) else {
        bail!(
            "run {run} is not in the checkpoint ({}): it had no events when the checkpoint was made",
            describe(&checkpoint)
        );
    };
    out.write_all(proof.to_text().as_bytes())?;
    Ok(0)
}

/// `annal check-proof`: verifies a proof with the public key alone.
pub fn check_proof(proof: &Path, key: &Path, out: &mut dyn Write) -> anyhow::Result<u8> {
    let key = verifier_key(key)?;
    let proof = InclusionProof::parse(&read_text(proof, "the proof")?)?;
    match proof.verify(&key) {
        Ok(checkpoint) => {
            let time = checkpoint
                .time_ms
                .map(|t| format!(" at {}", utc(t)))
                .unwrap_or_default();
            writeln!(
                out,
                "ok: run {} had {} events, head {}, in checkpoint {} of {} runs{time}, signed by {}",
                proof.leaf.run,
                proof.leaf.events,
                annal::audit::transparency::b64(&proof.leaf.head),
                checkpoint.origin,
                checkpoint.size,
                key.to_text()
            )?;
            Ok(0)
        }
        Err(e) => {
            writeln!(out, "REFUSED: {e}")?;
            Ok(1)
        }
    }
}
