//! Checking a run's chain record by record, and comparing a run as stored now with the leaf
//! a checkpoint committed to.

use crate::chain::{genesis, record_hash, Link};
use crate::ids::RunId;

use super::Leaf;

/// A place where a run's chain does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ChainBreak {
    /// Record 0 does not link to the run's genesis: replaced, or moved from another run.
    Genesis,
    /// Record `seq` is not the record `seq + 1` links to: one of them was altered, replaced
    /// or moved.
    Predecessor {
        /// The earlier record of the two.
        seq: u64,
    },
    /// Record `seq` has no link (format 1) but follows linked records: it was written by
    /// something other than this store's engine.
    UnchainedAfterChained {
        /// The record.
        seq: u64,
    },
}

impl ChainBreak {
    /// The seq the break is reported at.
    pub fn seq(&self) -> u64 {
        match *self {
            ChainBreak::Genesis => 0,
            ChainBreak::Predecessor { seq } | ChainBreak::UnchainedAfterChained { seq } => seq,
        }
    }

    /// The last seq of the records the break involves (a checkpoint covering fewer records
    /// is not affected by it).
    fn last_seq(&self) -> u64 {
        match *self {
            ChainBreak::Genesis => 0,
            ChainBreak::Predecessor { seq } => seq + 1,
            ChainBreak::UnchainedAfterChained { seq } => seq,
        }
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Genesis => f.write_str(
                "does not link to the run's genesis (replaced, or moved from another run)",
            ),
            ChainBreak::Predecessor { seq } => write!(
                f,
                "not the record seq {} was written after (altered, replaced or reordered)",
                seq + 1
            ),
            ChainBreak::UnchainedAfterChained { .. } => f.write_str(
                "unchained (format 1) after chained records: not written by annal (replaced)",
            ),
        }
    }
}

/// Walks one run's records in seq order and checks every link.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    run: RunId,
    /// The hash of the previous record, if it was readable.
    previous: Option<Link>,
    /// A linked record was seen.
    chained: bool,
    chain: RunChain,
}

/// What [`ChainCheck`] found in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunChain {
    /// The run.
    pub run: RunId,
    /// Records from seq 0 up to the last one seen (its seq + 1).
    pub events: u64,
    /// Leading records without links (written before chaining).
    pub unchained: u64,
    /// Each record's hash by seq; `None` where a record was missing or unreadable.
    pub hashes: Vec<Option<Link>>,
    /// Every break, in seq order.
    pub breaks: Vec<ChainBreak>,
}

impl ChainCheck {
    /// Starts at seq 0 of `run`.
    pub fn new(run: RunId) -> Self {
        Self {
            run,
            previous: None,
            chained: false,
            chain: RunChain {
                run,
                events: 0,
                unchained: 0,
                hashes: Vec::new(),
                breaks: Vec::new(),
            },
        }
    }

    /// Skips to `seq`: the records before it that were not handed in are missing.
    fn reach(&mut self, seq: u64) {
        while self.chain.events < seq {
            self.chain.hashes.push(None);
            self.chain.events += 1;
            self.previous = None;
        }
    }

    /// A readable record (its frame intact), in seq order: `link` is what it links to
    /// (`None` for format 1).
    pub fn record(&mut self, seq: u64, link: Option<&Link>, payload: &[u8]) {
        if seq < self.chain.events {
            return;
        }
        self.reach(seq);
        match link {
            Some(link) => {
                if seq == 0 {
                    if *link != genesis(self.run) {
                        self.chain.breaks.push(ChainBreak::Genesis);
                    }
                } else if let Some(previous) = self.previous {
                    if *link != previous {
                        self.chain
                            .breaks
                            .push(ChainBreak::Predecessor { seq: seq - 1 });
                    }
                }
                self.chained = true;
            }
            None if self.chained => {
                self.chain
                    .breaks
                    .push(ChainBreak::UnchainedAfterChained { seq });
            }
            None => self.chain.unchained += 1,
        }
        let hash = record_hash(self.run, seq, link, payload);
        self.chain.hashes.push(Some(hash));
        self.chain.events += 1;
        self.previous = Some(hash);
    }

    /// A record that is there but cannot be read (a damaged frame): the next record's link
    /// cannot be checked.
    pub fn unreadable(&mut self, seq: u64) {
        if seq < self.chain.events {
            return;
        }
        self.reach(seq + 1);
    }

    /// What was found so far.
    pub fn chain(&self) -> &RunChain {
        &self.chain
    }

    /// What was found.
    pub fn finish(self) -> RunChain {
        self.chain
    }
}

impl RunChain {
    /// The run's leaf as stored now: its head is the hash of its last record, if readable.
    pub fn leaf(&self) -> Option<Leaf> {
        let last = self.hashes.last().copied().flatten()?;
        Some(Leaf {
            run: self.run,
            events: self.events,
            head: last,
        })
    }

    /// The hash of the first `events` records' last one, if readable.
    pub fn head_at(&self, events: u64) -> Option<Link> {
        let last = usize::try_from(events.checked_sub(1)?).ok()?;
        self.hashes.get(last).copied().flatten()
    }
}

/// How a run as stored now fails to extend what a checkpoint committed to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Divergence {
    /// The run is gone.
    Dropped {
        /// The run.
        run: RunId,
        /// Events the checkpoint committed to.
        committed: u64,
    },
    /// Its log ends before the committed events: seq `now` is the first missing one.
    Truncated {
        /// The run.
        run: RunId,
        /// Events the checkpoint committed to.
        committed: u64,
        /// Events there now.
        now: u64,
    },
    /// A committed record is missing or unreadable, so the chain cannot be followed: seq is
    /// the first one.
    Unreadable {
        /// The run.
        run: RunId,
        /// The record.
        seq: u64,
    },
    /// The chain breaks inside the committed records: seq is where (see [`ChainBreak`]).
    Broken {
        /// The run.
        run: RunId,
        /// Events the checkpoint committed to.
        committed: u64,
        /// The first break.
        seq: u64,
    },
    /// Every link holds, but the committed records hash to another head: the log was
    /// rewritten consistently from some seq on (every later link recomputed), or its last
    /// committed record was edited.
    Rewritten {
        /// The run.
        run: RunId,
        /// Events the checkpoint committed to.
        committed: u64,
    },
}

impl Divergence {
    /// The run.
    pub fn run(&self) -> RunId {
        match *self {
            Divergence::Dropped { run, .. }
            | Divergence::Truncated { run, .. }
            | Divergence::Unreadable { run, .. }
            | Divergence::Broken { run, .. }
            | Divergence::Rewritten { run, .. } => run,
        }
    }
}

/// Whether the run as stored now (`now`: its chain, `None` if it is gone) extends the leaf a
/// checkpoint committed to: its first `leaf.events` records are still there, readable,
/// linked from the genesis, and hash to `leaf.head`.
pub fn compare(leaf: &Leaf, now: Option<&RunChain>) -> Option<Divergence> {
    let run = leaf.run;
    let committed = leaf.events;
    let now = match now {
        Some(now) if now.events > 0 => now,
        _ => return Some(Divergence::Dropped { run, committed }),
    };
    if now.events < committed {
        return Some(Divergence::Truncated {
            run,
            committed,
            now: now.events,
        });
    }
    let covered = usize::try_from(committed).unwrap_or(usize::MAX);
    if let Some(seq) = now.hashes.iter().take(covered).position(Option::is_none) {
        return Some(Divergence::Unreadable {
            run,
            seq: seq as u64,
        });
    }
    if let Some(seq) = now
        .breaks
        .iter()
        .filter(|b| b.last_seq() < committed)
        .map(ChainBreak::seq)
        .min()
    {
        return Some(Divergence::Broken {
            run,
            committed,
            seq,
        });
    }
    if now.head_at(committed) != Some(leaf.head) {
        return Some(Divergence::Rewritten { run, committed });
    }
    None
}

/// Where a rewritten run first differs, from other commitments to it (`(events, head)` from
/// other checkpoints): the first differing seq is at least the largest count that still
/// matches and below the smallest that does not. `None` if the commitments contradict each
/// other.
pub fn locate(now: &RunChain, commitments: &[(u64, Link)]) -> Option<(u64, u64)> {
    let mut low = 0u64;
    let mut high = now.events;
    for &(events, head) in commitments {
        if events == 0 {
            continue;
        }
        if events <= now.events && now.head_at(events) == Some(head) {
            low = low.max(events);
        } else {
            high = high.min(events);
        }
    }
    (low < high).then(|| (low, high - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Records as these tests store them: a format byte, the link (format 2), the payload.
    /// The store's CRC framing plays no part here: whoever edits records fixes the CRCs.
    mod frame {
        use crate::chain::{Link, LINK_LEN};

        pub fn encode(payload: &[u8]) -> Vec<u8> {
            [&[1u8][..], payload].concat()
        }

        pub fn encode_linked(link: &Link, payload: &[u8]) -> Vec<u8> {
            [&[2u8][..], link, payload].concat()
        }

        pub fn decode_linked(bytes: &[u8]) -> Result<(Option<&Link>, &[u8]), ()> {
            match bytes.split_first() {
                Some((1, payload)) => Ok((None, payload)),
                Some((2, rest)) if rest.len() >= LINK_LEN => {
                    let (link, payload) = rest.split_at(LINK_LEN);
                    Ok((Some(link.try_into().map_err(drop)?), payload))
                }
                _ => Err(()),
            }
        }

        pub fn decode(bytes: &[u8]) -> Result<&[u8], ()> {
            decode_linked(bytes).map(|(_, payload)| payload)
        }
    }

    /// A store's event records, as framed bytes by run and seq.
    type Records = BTreeMap<RunId, Vec<Vec<u8>>>;

    fn write(runs: &[(RunId, Vec<Vec<u8>>)]) -> Records {
        runs.iter()
            .map(|(run, payloads)| {
                let mut link = genesis(*run);
                let frames = payloads
                    .iter()
                    .enumerate()
                    .map(|(seq, p)| {
                        let framed = frame::encode_linked(&link, p);
                        link = record_hash(*run, seq as u64, Some(&link), p);
                        framed
                    })
                    .collect();
                (*run, frames)
            })
            .collect()
    }

    fn chain_of(run: RunId, frames: &[Vec<u8>]) -> RunChain {
        let mut check = ChainCheck::new(run);
        for (seq, bytes) in frames.iter().enumerate() {
            match frame::decode_linked(bytes) {
                Ok((link, payload)) => check.record(seq as u64, link, payload),
                Err(_) => check.unreadable(seq as u64),
            }
        }
        check.finish()
    }

    /// What `annal verify` does with the records: chain each run, compare with the leaves.
    fn check(records: &Records, leaves: &[Leaf]) -> (Vec<(RunId, ChainBreak)>, Vec<Divergence>) {
        let chains: BTreeMap<RunId, RunChain> = records
            .iter()
            .map(|(run, frames)| (*run, chain_of(*run, frames)))
            .collect();
        let breaks = chains
            .iter()
            .flat_map(|(run, chain)| chain.breaks.iter().map(|b| (*run, *b)))
            .collect();
        let divergences = leaves
            .iter()
            .filter_map(|leaf| compare(leaf, chains.get(&leaf.run)))
            .collect();
        (breaks, divergences)
    }

    fn leaves_of(records: &Records) -> Vec<Leaf> {
        records
            .iter()
            .filter_map(|(run, frames)| chain_of(*run, frames).leaf())
            .collect()
    }

    /// An edit an attacker with write access makes, CRCs fixed where it rewrites a record.
    #[derive(Debug, Clone)]
    enum Edit {
        /// Change one byte of a record's payload.
        Alter { run: usize, seq: usize, at: usize },
        /// Swap two neighbouring records.
        Swap { run: usize, seq: usize },
        /// Remove a record and renumber the ones after it.
        Drop { run: usize, seq: usize },
        /// Remove a run.
        DropRun { run: usize },
        /// Cut the run's tail from `seq` on.
        Truncate { run: usize, seq: usize },
        /// Rewrite the run from `seq` on with other payloads, every link recomputed.
        Rewrite { run: usize, seq: usize },
    }

    /// Applies the edit; returns the run and the first seq it changed, or `None` if it
    /// changed nothing (a swap of two equal records, an edit of a run already dropped).
    fn apply(records: &mut Records, edit: &Edit) -> Option<(RunId, u64)> {
        let runs: Vec<RunId> = records.keys().copied().collect();
        if runs.is_empty() {
            return None;
        }
        let pick = |i: usize| runs[i % runs.len()];
        match *edit {
            Edit::Alter { run, seq, at } => {
                let run = pick(run);
                let frames = records.get_mut(&run).filter(|f| !f.is_empty())?;
                let seq = seq % frames.len();
                let (link, payload) = frame::decode_linked(&frames[seq]).ok()?;
                let (link, mut payload) = (*link?, payload.to_vec());
                match payload.len() {
                    0 => payload.push(0),
                    n => payload[at % n] ^= 0x5a,
                }
                frames[seq] = frame::encode_linked(&link, &payload);
                Some((run, seq as u64))
            }
            Edit::Swap { run, seq } => {
                let run = pick(run);
                let frames = records.get_mut(&run).filter(|f| f.len() >= 2)?;
                let seq = seq % (frames.len() - 1);
                if frames[seq] == frames[seq + 1] {
                    return None;
                }
                frames.swap(seq, seq + 1);
                Some((run, seq as u64))
            }
            Edit::Drop { run, seq } => {
                let run = pick(run);
                let frames = records.get_mut(&run).filter(|f| !f.is_empty())?;
                let seq = seq % frames.len();
                frames.remove(seq);
                Some((run, seq as u64))
            }
            Edit::DropRun { run } => {
                let run = pick(run);
                records.remove(&run);
                Some((run, 0))
            }
            Edit::Truncate { run, seq } => {
                let run = pick(run);
                let frames = records.get_mut(&run).filter(|f| !f.is_empty())?;
                let seq = seq % frames.len();
                frames.truncate(seq);
                Some((run, seq as u64))
            }
            Edit::Rewrite { run, seq } => {
                let run = pick(run);
                let frames = records.get(&run).filter(|f| !f.is_empty())?;
                let seq = seq % frames.len();
                let mut payloads: Vec<Vec<u8>> = frames
                    .iter()
                    .map(|f| frame::decode(f).map(<[u8]>::to_vec))
                    .collect::<Result<_, _>>()
                    .ok()?;
                for p in &mut payloads[seq..] {
                    p.push(0xee);
                }
                records.extend(write(&[(run, payloads)]));
                Some((run, seq as u64))
            }
        }
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let i = || 0usize..64;
        prop_oneof![
            (i(), i(), i()).prop_map(|(run, seq, at)| Edit::Alter { run, seq, at }),
            (i(), i()).prop_map(|(run, seq)| Edit::Swap { run, seq }),
            (i(), i()).prop_map(|(run, seq)| Edit::Drop { run, seq }),
            i().prop_map(|run| Edit::DropRun { run }),
            (i(), i()).prop_map(|(run, seq)| Edit::Truncate { run, seq }),
            (i(), i()).prop_map(|(run, seq)| Edit::Rewrite { run, seq }),
        ]
    }

    fn history() -> impl Strategy<Value = Vec<(RunId, Vec<Vec<u8>>)>> {
        proptest::collection::btree_map(
            any::<[u8; 16]>().prop_map(RunId),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..12),
            1..6,
        )
        .prop_map(|runs| runs.into_iter().collect())
    }

    /// The seq a finding names for its run.
    fn named_seq(divergence: &Divergence) -> u64 {
        match *divergence {
            Divergence::Truncated { now, .. } => now,
            Divergence::Unreadable { seq, .. } | Divergence::Broken { seq, .. } => seq,
            Divergence::Dropped { .. } | Divergence::Rewritten { .. } => 0,
        }
    }

    proptest! {
        /// Every edit of a checkpointed history is found in the run it was made in, named
        /// no later than the first seq it changed; the untouched history, grown after the
        /// checkpoint, passes.
        #[test]
        fn every_edit_of_a_checkpointed_history_is_detected(
            runs in history(),
            edits in proptest::collection::vec(edit(), 1..4),
            more in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut records = write(&runs);
            let leaves = leaves_of(&records);
            let mut grown = runs.clone();
            grown[0].1.extend(more.iter().map(|b| vec![*b]));
            grown.push((RunId([0xff; 16]), vec![b"later".to_vec()]));
            let (breaks, divergences) = check(&write(&grown), &leaves);
            prop_assert!(breaks.is_empty() && divergences.is_empty(), "{:?} {:?}", breaks, divergences);

            let original = records.clone();
            let mut changed: Vec<(RunId, u64)> = Vec::new();
            for edit in &edits {
                changed.extend(apply(&mut records, edit));
            }
            let (breaks, divergences) = check(&records, &leaves);
            for run in original.keys() {
                if records.get(run) == original.get(run) {
                    continue;
                }
                let named: Vec<u64> = breaks
                    .iter()
                    .filter(|(r, _)| r == run)
                    .map(|(_, b)| b.seq())
                    .chain(divergences.iter().filter(|d| d.run() == *run).map(named_seq))
                    .collect();
                prop_assert!(!named.is_empty(), "an edit of run {} was not detected: {:?}", run, edits);
                // One edit in the run: named at or before the first seq it changed (a swap
                // or a drop at seq n breaks the link from seq n - 1 to seq n).
                if let [(_, first)] = changed.iter().filter(|(r, _)| r == run).collect::<Vec<_>>()[..] {
                    prop_assert!(
                        named.iter().any(|seq| seq <= first),
                        "run {} named at {:?}, first changed at seq {}", run, named, first
                    );
                }
            }
        }
    }

    #[test]
    fn each_kind_of_edit_is_named_precisely() {
        let run = RunId([1; 16]);
        let base: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 3]).collect();
        let records = write(&[(run, base.clone())]);
        let leaves = leaves_of(&records);
        let found = |edit: Edit| {
            let mut edited = records.clone();
            apply(&mut edited, &edit).unwrap();
            check(&edited, &leaves)
        };
        // An altered middle record breaks its successor's link: named at its own seq.
        let (breaks, div) = found(Edit::Alter {
            run: 0,
            seq: 2,
            at: 0,
        });
        assert_eq!(breaks, [(run, ChainBreak::Predecessor { seq: 2 })]);
        assert_eq!(
            div,
            [Divergence::Broken {
                run,
                committed: 6,
                seq: 2
            }]
        );
        // The last record has no successor: only the checkpoint sees it.
        let (breaks, div) = found(Edit::Alter {
            run: 0,
            seq: 5,
            at: 0,
        });
        assert!(breaks.is_empty());
        assert_eq!(div, [Divergence::Rewritten { run, committed: 6 }]);
        // Swapped, dropped (renumbered), truncated, dropped run.
        let (breaks, _) = found(Edit::Swap { run: 0, seq: 3 });
        assert_eq!(breaks[0], (run, ChainBreak::Predecessor { seq: 2 }));
        let (breaks, _) = found(Edit::Drop { run: 0, seq: 1 });
        assert_eq!(breaks[0], (run, ChainBreak::Predecessor { seq: 0 }));
        let (_, div) = found(Edit::Truncate { run: 0, seq: 4 });
        assert_eq!(
            div,
            [Divergence::Truncated {
                run,
                committed: 6,
                now: 4
            }]
        );
        let (_, div) = found(Edit::DropRun { run: 0 });
        assert_eq!(div, [Divergence::Dropped { run, committed: 6 }]);
        // Rewritten consistently from seq 3: every link holds; checkpoints at other counts
        // locate the first difference.
        let mut rewritten = records.clone();
        apply(&mut rewritten, &Edit::Rewrite { run: 0, seq: 3 }).unwrap();
        let (breaks, div) = check(&rewritten, &leaves);
        assert!(breaks.is_empty());
        assert_eq!(div, [Divergence::Rewritten { run, committed: 6 }]);
        let chain = chain_of(run, &rewritten[&run]);
        let earlier: Vec<(u64, Link)> = (1..=6usize)
            .map(|n| {
                (
                    n as u64,
                    leaves_of(&write(&[(run, base[..n].to_vec())]))[0].head,
                )
            })
            .collect();
        assert_eq!(
            locate(&chain, &earlier),
            Some((3, 3)),
            "precise with a checkpoint per event"
        );
        assert_eq!(
            locate(&chain, &[earlier[1], earlier[5]]),
            Some((2, 5)),
            "else a range"
        );
        assert_eq!(locate(&chain, &[earlier[5]]), Some((0, 5)));
    }

    #[test]
    fn unchained_prefixes_are_counted_not_broken() {
        let run = RunId([2; 16]);
        let last = record_hash(run, 1, None, b"b");
        let frames = vec![
            frame::encode(b"a"),
            frame::encode(b"b"),
            frame::encode_linked(&last, b"c"),
        ];
        let chain = chain_of(run, &frames);
        assert_eq!((chain.unchained, chain.breaks.len()), (2, 0));
        // A format-1 record after a linked one is a break.
        let mut check = ChainCheck::new(run);
        check.record(0, Some(&genesis(run)), b"a");
        check.record(1, None, b"b");
        assert_eq!(
            check.finish().breaks,
            [ChainBreak::UnchainedAfterChained { seq: 1 }]
        );
        // A record moved from another run does not link to this run's genesis.
        let mut check = ChainCheck::new(run);
        check.record(0, Some(&genesis(RunId([3; 16]))), b"a");
        assert_eq!(check.finish().breaks, [ChainBreak::Genesis]);
        // A damaged record: the next link cannot be checked, and no break is invented.
        let mut check = ChainCheck::new(run);
        check.record(0, Some(&genesis(run)), b"a");
        check.unreadable(1);
        check.record(2, Some(&[9; 32]), b"c");
        let chain = check.finish();
        assert!(chain.breaks.is_empty());
        assert_eq!(chain.hashes[1], None);
    }
}
