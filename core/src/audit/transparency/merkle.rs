//! The Merkle tree over the runs' heads, in the shape of RFC 6962 §2.1 / RFC 9162 §2.1 with
//! BLAKE3 as the hash:
//!
//! ```text
//! MTH({})       = BLAKE3()                                   (the empty tree)
//! MTH({d0})     = BLAKE3(0x00 || d0)                         (a leaf)
//! MTH(D[n])     = BLAKE3(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k = the largest power of two < n
//! ```
//!
//! Inclusion proofs are RFC 9162's audit paths (§2.1.3.1) and are verified with its
//! algorithm (§2.1.3.2). Only the hash differs from the RFCs: BLAKE3 is what the run chains
//! already use (`crate::chain`), so one hash function covers the whole construction.

use super::Hash;

/// The hash of a leaf's bytes: `BLAKE3(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(leaf);
    *hasher.finalize().as_bytes()
}

/// The hash of an inner node: `BLAKE3(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// The largest power of two smaller than `n` (for `n >= 2`): where RFC 6962 splits a tree.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root of the tree over these leaf hashes (`MTH`).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => *blake3::hash(b"").as_bytes(),
        [only] => *only,
        _ => {
            let k = split(leaves.len());
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 9162 §2.1.3.1, `PATH(m, D[n])`): the sibling hashes
/// from the leaf's up to the root's children. `None` if `index` is not a leaf of the tree.
pub fn inclusion_path(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    collect_path(leaves, index, &mut path);
    Some(path)
}

fn collect_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if index < k {
        collect_path(&leaves[..k], index, path);
        path.push(root(&leaves[k..]));
    } else {
        collect_path(&leaves[k..], index - k, path);
        path.push(root(&leaves[..k]));
    }
}

/// Why an audit path does not prove a leaf under a root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The index is not a leaf of a tree of that size.
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    IndexOutOfRange {
        /// The index the proof names.
        index: u64,
        /// The tree size the checkpoint names.
        size: u64,
    },
    /// The path has the wrong number of hashes for that index and size.
    #[error("an audit path for leaf {index} of {size} has {expected} hashes, this one {found}")]
    WrongLength {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
        /// Hashes a path for that index and size has.
        expected: u64,
        /// Hashes this path has.
        found: u64,
    },
    /// The path is well-formed but leads to another root: the leaf, the index, a path hash
    /// or the root is not what the tree holds.
    #[error("the leaf and its audit path hash to {computed}, not to the checkpoint's root")]
    NotUnderRoot {
        /// The root the path leads to, in base64.
        computed: String,
    },
}

/// How many hashes the audit path of leaf `index` in a tree of `size` leaves has.
pub fn path_length(index: u64, size: u64) -> Option<u64> {
    if index >= size {
        return None;
    }
    // RFC 9162 §2.1.3.2: every step shifts `fn` and `sn` right once (more after a right
    // edge); the path ends when `sn` reaches 0.
    let (mut fn_, mut sn, mut length) = (index, size - 1, 0u64);
    while sn > 0 {
        // A right edge (`fn == sn`, even): the levels where the node has no sibling.
        if fn_ & 1 == 0 && fn_ == sn {
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        }
        length += 1;
        fn_ >>= 1;
        sn >>= 1;
    }
    Some(length)
}

/// Verifies that `leaf` (a leaf hash) is leaf `index` of the tree of `size` leaves whose root
/// is `root`, by the audit path `path` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), PathError> {
    let Some(expected) = path_length(index, size) else {
        return Err(PathError::IndexOutOfRange { index, size });
    };
    if expected != path.len() as u64 {
        return Err(PathError::WrongLength {
            index,
            size,
            expected,
            found: path.len() as u64,
        });
    }
    let (mut fn_, mut sn, mut r) = (index, size - 1, *leaf);
    for p in path {
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && r == *root {
        Ok(())
    } else {
        Err(PathError::NotUnderRoot {
            computed: super::b64(&r),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    /// RFC 6962's definition, written out for three and seven leaves.
    #[test]
    fn roots_follow_the_rfc_split_rule() {
        let l = leaves(7);
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node_hash(&l[0], &l[1]));
        assert_eq!(
            root(&l[..3]),
            node_hash(&node_hash(&l[0], &l[1]), &l[2]),
            "3 leaves split 2 + 1"
        );
        let left = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        let right = node_hash(&node_hash(&l[4], &l[5]), &l[6]);
        assert_eq!(root(&l), node_hash(&left, &right), "7 leaves split 4 + 3");
        assert_eq!(root(&[]), *blake3::hash(b"").as_bytes());
        // Domain separation: a leaf is never an inner node of the same bytes.
        let mut inner = vec![];
        inner.extend_from_slice(&l[0]);
        inner.extend_from_slice(&l[1]);
        assert_ne!(leaf_hash(&inner), node_hash(&l[0], &l[1]));
    }

    #[test]
    fn a_proof_of_seven_leaves_is_the_rfc_audit_path() {
        // RFC 9162 §2.1.5's example tree of 7 leaves: the path of leaf 3 (d) is [c, g, l].
        let l = leaves(7);
        let path = inclusion_path(&l, 3).unwrap();
        let g = node_hash(&l[0], &l[1]);
        let l_node = node_hash(&node_hash(&l[4], &l[5]), &l[6]);
        assert_eq!(path, vec![l[2], g, l_node]);
        assert_eq!(path_length(3, 7), Some(3));
        assert_eq!(path_length(6, 7), Some(2), "the right edge skips a level");
        verify_inclusion(&l[3], 3, 7, &path, &root(&l)).unwrap();
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_nothing_else_does(n in 1usize..70, pick in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
            let l = leaves(n);
            let r = root(&l);
            let i = pick.index(n);
            let path = inclusion_path(&l, i).unwrap();
            prop_assert_eq!(path.len() as u64, path_length(i as u64, n as u64).unwrap());
            prop_assert!(verify_inclusion(&l[i], i as u64, n as u64, &path, &r).is_ok());
            // Another leaf, another index, another size, a damaged path: all refused.
            if n > 1 {
                let other = (i + 1) % n;
                prop_assert!(verify_inclusion(&l[other], i as u64, n as u64, &path, &r).is_err());
                prop_assert!(verify_inclusion(&l[i], other as u64, n as u64, &path, &r).is_err());
            }
            // (A path can also fit another size under the same root, as in RFC 6962: the
            // checkpoint signs the size with the root.)
            prop_assert!(verify_inclusion(&l[i], n as u64, n as u64, &path, &r).is_err());
            if !path.is_empty() {
                let mut bad = path.clone();
                let at = flip.index(bad.len());
                bad[at][0] ^= 1;
                prop_assert!(
                    matches!(verify_inclusion(&l[i], i as u64, n as u64, &bad, &r), Err(PathError::NotUnderRoot { .. })),
                    "flipped hash {} of the path", at
                );
            }
        }
    }
}
