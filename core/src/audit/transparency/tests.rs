use super::*;
use crate::chain::{genesis, record_hash};
use proptest::prelude::*;

/// The key of the examples in docs/checkpoints.md (seed: 32 bytes of 0x01).
fn example_key() -> SigningKey {
    SigningKey::from_seed("example.com/annal", [1; 32]).unwrap()
}

/// The examples' store: run `00112233-…` with two events `a`, `b`, run `a1a1…` with one `c`.
fn example_leaves() -> Vec<Leaf> {
    let leaf = |run: RunId, payloads: &[&[u8]]| {
        let mut link = genesis(run);
        for (seq, payload) in payloads.iter().enumerate() {
            link = record_hash(run, seq as u64, Some(&link), payload);
        }
        Leaf {
            run,
            events: payloads.len() as u64,
            head: link,
        }
    };
    let first = RunId([
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ]);
    vec![leaf(RunId([0xa1; 16]), &[b"c"]), leaf(first, &[b"a", b"b"])]
}

fn example_head() -> SignedTreeHead {
    SignedTreeHead::sign(
        "example.com/annal",
        example_leaves(),
        1_700_000_000_000,
        &example_key(),
    )
    .unwrap()
}

/// The fenced block after `<!-- example: NAME -->` in docs/checkpoints.md.
fn doc_example(name: &str) -> String {
    let doc = include_str!("../../../../docs/checkpoints.md");
    let marker = format!("<!-- example: {name} -->");
    let after = &doc[doc.find(&marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len()..];
    let start = after.find("```text\n").expect("a text block") + "```text\n".len();
    let end = after[start..].find("```").expect("its end");
    after[start..start + end].to_string()
}

/// Every example in docs/checkpoints.md is what this code writes, byte for byte.
#[test]
fn checkpoints_md_examples_are_what_the_code_writes() {
    let key = example_key();
    let head = example_head();
    let proof = head
        .tree
        .prove(example_leaves()[1].run, &head.note)
        .unwrap();
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let leaf_lines = |leaf: &Leaf, label: &str| {
        let bytes = leaf.encode();
        format!(
            "{:<48} {label}run\n{:<48} {:width$}events\n{:<48} {:width$}head\n{}\n",
            hex(&bytes[..16]),
            hex(&bytes[16..24]),
            "",
            hex(&bytes[24..40]),
            "",
            hex(&bytes[40..]),
            width = label.len()
        )
    };
    let stored = head.stored();
    let mut stored_text = format!(
        "{:<48} format\n{:<48} note length ({})\n[the {} bytes of the checkpoint above]\n{:<48} leaf count ({})\n",
        "01",
        hex(&u32::try_from(stored.note.len()).unwrap().to_le_bytes()),
        stored.note.len(),
        stored.note.len(),
        hex(&(stored.leaves.len() as u64).to_le_bytes()),
        stored.leaves.len()
    );
    for (i, leaf) in stored.leaves.iter().enumerate() {
        stored_text.push_str(&leaf_lines(leaf, &format!("leaf {i}: ")));
    }
    let mut rebuilt = vec![1u8];
    rebuilt.extend_from_slice(&u32::try_from(stored.note.len()).unwrap().to_le_bytes());
    rebuilt.extend_from_slice(stored.note.as_bytes());
    rebuilt.extend_from_slice(&(stored.leaves.len() as u64).to_le_bytes());
    for leaf in &stored.leaves {
        rebuilt.extend_from_slice(&leaf.encode());
    }
    assert_eq!(stored.encode(), rebuilt, "the layout the example describes");
    let examples = [
        ("private key", format!("{}\n", key.to_text())),
        ("public key", format!("{}\n", key.verifier().to_text())),
        ("checkpoint", head.note.clone()),
        ("leaf", leaf_lines(&example_leaves()[1], "")),
        ("proof", proof.to_text()),
        ("stored tree head", stored_text),
    ];
    if std::env::var_os("PRINT_CHECKPOINT_EXAMPLES").is_some() {
        for (name, text) in &examples {
            println!("<!-- example: {name} -->\n```text\n{text}```\n");
        }
    }
    for (name, text) in examples {
        assert_eq!(
            doc_example(name),
            text,
            "example {name:?} in docs/checkpoints.md"
        );
    }
    // The documented proof verifies with the documented public key alone.
    let verifier = VerifierKey::parse(&doc_example("public key")).unwrap();
    let read = InclusionProof::parse(&doc_example("proof")).unwrap();
    assert_eq!(read.verify(&verifier).unwrap(), head.checkpoint);
    assert_eq!(read.leaf, example_leaves()[1]);
}

#[test]
fn a_stored_tree_head_reads_back_and_authenticates() {
    let head = example_head();
    let stored = head.stored();
    let read = StoredTreeHead::decode(&stored.encode()).unwrap();
    assert_eq!(read, stored);
    let (signed, tree) = read.authenticate().unwrap();
    assert_eq!(
        signed.verify(&example_key().verifier()).unwrap(),
        &head.checkpoint
    );
    assert_eq!(tree.root(), head.checkpoint.root);
    // An altered leaf list no longer hashes to the signed root; reordered leaves are refused.
    let mut altered = stored.clone();
    altered.leaves[0].events += 1;
    assert!(matches!(
        altered.authenticate(),
        Err(TreeHeadError::LeavesDoNotMatch {
            leaves: 2,
            size: 2,
            ..
        })
    ));
    let mut dropped = stored.clone();
    dropped.leaves.pop();
    assert!(matches!(
        dropped.authenticate(),
        Err(TreeHeadError::LeavesDoNotMatch {
            leaves: 1,
            size: 2,
            ..
        })
    ));
    let mut swapped = stored;
    swapped.leaves.swap(0, 1);
    assert!(matches!(
        swapped.authenticate(),
        Err(TreeHeadError::Unsorted { index: 1, .. })
    ));
    // Truncated and padded bodies.
    let bytes = head.stored().encode();
    assert!(StoredTreeHead::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(StoredTreeHead::decode(&longer).is_err());
    assert!(StoredTreeHead::decode(&[2]).is_err());
}

#[test]
fn leaves_must_be_one_per_run_with_events() {
    let mut leaves = example_leaves();
    leaves.push(leaves[0]);
    assert!(matches!(
        Tree::new(leaves),
        Err(TreeHeadError::Unsorted { .. })
    ));
    let mut empty = example_leaves();
    empty[0].events = 0;
    assert!(matches!(
        Tree::new(empty),
        Err(TreeHeadError::EmptyRun { .. })
    ));
    assert!(matches!(
        SignedTreeHead::sign("two\nlines", example_leaves(), 0, &example_key()),
        Err(TreeHeadError::BadOrigin(_))
    ));
    // No runs yet: the empty tree.
    let empty = SignedTreeHead::sign("o", Vec::new(), 0, &example_key()).unwrap();
    assert_eq!(empty.checkpoint.size, 0);
    assert_eq!(empty.checkpoint.root, merkle::root(&[]));
}

/// A proof with any part changed is refused, each with its reason.
#[test]
fn forged_proofs_are_refused() {
    let head = example_head();
    let verifier = example_key().verifier();
    let runs: Vec<RunId> = head.tree.leaves().iter().map(|l| l.run).collect();
    let proof = head.tree.prove(runs[0], &head.note).unwrap();
    assert!(proof.verify(&verifier).is_ok());
    let refused = |p: &InclusionProof| p.verify(&verifier).unwrap_err();

    // Another leaf: more events, another head, another run.
    let mut more = proof.clone();
    more.leaf.events += 1;
    assert!(matches!(
        refused(&more),
        ProofError::Path(PathError::NotUnderRoot { .. })
    ));
    let mut head_flipped = proof.clone();
    head_flipped.leaf.head[0] ^= 1;
    assert!(matches!(
        refused(&head_flipped),
        ProofError::Path(PathError::NotUnderRoot { .. })
    ));
    // The other run's leaf at this run's index, or this run's proof at the other's index.
    let other = head.tree.prove(runs[1], &head.note).unwrap();
    let mut swapped = proof.clone();
    swapped.leaf = other.leaf;
    assert!(matches!(
        refused(&swapped),
        ProofError::Path(PathError::NotUnderRoot { .. })
    ));
    let mut moved = proof.clone();
    moved.index = other.index;
    assert!(matches!(
        refused(&moved),
        ProofError::Path(PathError::NotUnderRoot { .. })
    ));
    // A flipped path hash, a path too long or too short, an index past the tree.
    let mut path = proof.clone();
    path.path[0][31] ^= 0x80;
    assert!(matches!(
        refused(&path),
        ProofError::Path(PathError::NotUnderRoot { .. })
    ));
    let mut long = proof.clone();
    long.path.push([0; 32]);
    assert!(matches!(
        refused(&long),
        ProofError::Path(PathError::WrongLength { .. })
    ));
    let mut short = proof.clone();
    short.path.clear();
    assert!(matches!(
        refused(&short),
        ProofError::Path(PathError::WrongLength { .. })
    ));
    let mut past = proof.clone();
    past.index = 2;
    assert!(matches!(
        refused(&past),
        ProofError::Path(PathError::IndexOutOfRange { index: 2, size: 2 })
    ));
    // Another root or size in the checkpoint: its signature fails.
    let root = b64(&head.checkpoint.root);
    let mut other_root = proof.clone();
    other_root.note = proof.note.replacen(&root, &b64(&[0; 32]), 1);
    assert!(matches!(
        refused(&other_root),
        ProofError::Note(NoteError::BadSignature { .. })
    ));
    let mut other_size = proof.clone();
    other_size.note = proof.note.replacen("\n2\n", "\n3\n", 1);
    assert!(matches!(
        refused(&other_size),
        ProofError::Note(NoteError::BadSignature { .. })
    ));
    // A flipped byte of the signature; a key that did not sign.
    let text = proof.to_text();
    let signature = text.lines().last().unwrap().rsplit(' ').next().unwrap();
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .unwrap();
    bytes[40] ^= 1;
    let forged = InclusionProof::parse(&text.replacen(signature, &b64(&bytes), 1)).unwrap();
    assert!(matches!(
        refused(&forged),
        ProofError::Note(NoteError::BadSignature { .. })
    ));
    let stranger = SigningKey::from_seed("example.com/annal", [2; 32])
        .unwrap()
        .verifier();
    assert!(matches!(
        proof.verify(&stranger),
        Err(ProofError::Note(NoteError::NotSignedBy { .. }))
    ));
    // Text damage: every line of the proof's own part.
    assert_eq!(InclusionProof::parse(&text).unwrap(), proof);
    for (from, to) in [
        (PROOF_HEADER, "c2sp.org/tlog-proof@v1"),
        ("extra ", "extra x"),
        ("index 0", "index 00"),
        ("index 0", "index -1"),
        ("index ", "indx "),
    ] {
        assert!(
            matches!(
                InclusionProof::parse(&text.replacen(from, to, 1)),
                Err(ProofError::Malformed(_))
            ),
            "{from} -> {to}"
        );
    }
    let path_line = b64(&proof.path[0]);
    assert!(matches!(
        InclusionProof::parse(&text.replacen(&path_line, "AAAA", 1)),
        Err(ProofError::Malformed(_))
    ));
}

proptest! {
    #[test]
    fn stored_tree_heads_never_panic_on_bad_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = StoredTreeHead::decode(&bytes);
    }

    #[test]
    fn notes_and_proofs_never_panic_on_bad_text(text in "(\\PC|\n){0,300}") {
        let _ = SignedCheckpoint::parse(&text);
        let _ = InclusionProof::parse(&text);
        let _ = VerifierKey::parse(&text);
        let _ = SigningKey::parse(&text);
    }

}

proptest! {
    // Fewer cases: each checks a signature per leaf, slow in debug builds.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every run of a random store has a proof that verifies, and only for its own leaf.
    #[test]
    fn every_run_proves_its_leaf(runs in proptest::collection::btree_map(any::<[u8; 16]>(), (1u64..100, any::<[u8; 32]>()), 1..40)) {
        let leaves: Vec<Leaf> = runs.iter().map(|(run, (events, head))| Leaf { run: RunId(*run), events: *events, head: *head }).collect();
        let head = SignedTreeHead::sign("o", leaves.clone(), 5, &example_key()).unwrap();
        let verifier = example_key().verifier();
        for leaf in &leaves {
            let proof = head.tree.prove(leaf.run, &head.note).unwrap();
            let read = InclusionProof::parse(&proof.to_text()).unwrap();
            prop_assert_eq!(&read, &proof);
            prop_assert!(read.verify(&verifier).is_ok());
            let mut other = read.clone();
            other.leaf.events += 1;
            prop_assert!(other.verify(&verifier).is_err());
        }
    }
}
