//! Checkpoints: the tree's size and root in the C2SP `tlog-checkpoint` text, signed as a C2SP
//! `signed-note`.
//!
//! ```text
//! <origin>\n                 the store's name (by default the signing key's name)
//! <tree size>\n              decimal, no leading zeros: the number of runs with events
//! <root>\n                   base64 of the 32-byte tree root
//! time_ms <ms>\n             extension line: when it was computed (ms since the Unix epoch)
//! \n
//! — <key name> <base64(key id (4, BE) || Ed25519 signature (64))>\n
//! ```
//!
//! The signature covers the text up to and including the newline of the last line before
//! the blank line. Unknown extension lines are kept and signed over; signatures by keys other
//! than the one asked for are ignored, as the signed-note spec requires.

use base64::Engine as _;

use super::key::{check_name, SigningKey, VerifierKey};
use super::{b64, Hash};

/// Longest note accepted: a checkpoint is a few hundred bytes; this leaves room for many
/// cosignatures (the spec asks for at least 16) and refuses nonsense early.
pub const NOTE_BYTES_MAX: usize = 1 << 20;

/// The extension line that carries the time a checkpoint was computed.
const TIME_PREFIX: &str = "time_ms ";

/// A tree head: what a checkpoint's text says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The store's name.
    pub origin: String,
    /// Leaves in the tree: runs that had events.
    pub size: u64,
    /// The tree's root.
    pub root: Hash,
    /// When it was computed (ms since the Unix epoch), if the note says.
    pub time_ms: Option<u64>,
    /// Extension lines other than the time, verbatim.
    pub extensions: Vec<String>,
}

/// Why a note or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Larger than [`NOTE_BYTES_MAX`].
    #[error("the note has {0} bytes, more than a checkpoint can have")]
    TooLarge(usize),
    /// A control character other than newline.
    #[error("the note holds a control character (U+{0:04X}) other than newline")]
    ControlCharacter(u32),
    /// No blank line before signature lines, or none at all.
    #[error("not a signed note: {0}")]
    Malformed(String),
    /// The text is not a checkpoint.
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(String),
    /// No signature by the key asked for (by name and key id).
    #[error("the note has no signature by key {key} (signed by: {found})")]
    NotSignedBy {
        /// The key asked for, `name+id`.
        key: String,
        /// Keys that did sign, `name+id` each.
        found: String,
    },
    /// A signature by the key asked for that does not verify: the text or the signature was
    /// altered.
    #[error(
        "the signature by key {key} does not verify: the checkpoint or its signature was altered"
    )]
    BadSignature {
        /// The key, `name+id`.
        key: String,
    },
}

impl Checkpoint {
    /// The note text this checkpoint is: origin, size, root, the time and the other
    /// extension lines, each ending in a newline.
    pub fn text(&self) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.origin, self.size, b64(&self.root));
        if let Some(time_ms) = self.time_ms {
            text.push_str(&format!("{TIME_PREFIX}{time_ms}\n"));
        }
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Reads a checkpoint text (what a note's signatures cover).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: String| NoteError::NotACheckpoint(why);
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("the text does not end in a newline".into()))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad(
                "fewer than three lines (origin, tree size, root)".into()
            ));
        };
        if origin.is_empty() {
            return Err(bad("the origin line is empty".into()));
        }
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        let size: u64 = match size.parse() {
            Ok(n) if canonical && size.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(bad(format!(
                    "the tree size {size:?} is not a decimal number"
                )))
            }
        };
        let root = base64::engine::general_purpose::STANDARD
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or_else(|| bad(format!("the root {root:?} is not 32 bytes in base64")))?;
        let mut time_ms = None;
        let mut extensions = Vec::new();
        for line in lines {
            if line.is_empty() {
                return Err(bad("an empty extension line".into()));
            }
            match line.strip_prefix(TIME_PREFIX) {
                Some(ms) if time_ms.is_none() => {
                    time_ms = Some(
                        ms.parse()
                            .map_err(|_| bad(format!("the time line {line:?} is not a number")))?,
                    )
                }
                _ => extensions.push(line.to_string()),
            }
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            time_ms,
            extensions,
        })
    }

    /// The signed note: the text, a blank line, the signature line of `key`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let text = self.text();
        let mut signature = key.id().to_be_bytes().to_vec();
        signature.extend_from_slice(&key.sign(text.as_bytes()));
        format!("{text}\n\u{2014} {} {}\n", key.name(), b64(&signature))
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key id.
    pub id: u32,
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

/// A signed checkpoint as read, its signatures not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What the text says.
    pub checkpoint: Checkpoint,
    /// The text the signatures cover.
    pub text: String,
    /// The signature lines.
    pub signatures: Vec<NoteSignature>,
}

impl SignedCheckpoint {
    /// Reads a signed note holding a checkpoint. Signatures are parsed, not verified: see
    /// [`SignedCheckpoint::verify`].
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        if note.len() > NOTE_BYTES_MAX {
            return Err(NoteError::TooLarge(note.len()));
        }
        if let Some(c) = note.chars().find(|&c| c < ' ' && c != '\n') {
            return Err(NoteError::ControlCharacter(u32::from(c)));
        }
        let malformed = |why: &str| NoteError::Malformed(why.to_string());
        // The text ends at the last blank line; the signatures follow it.
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| malformed("no blank line between the text and its signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        let lines = signatures
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the last signature line does not end in a newline"))?;
        if lines.is_empty() {
            return Err(malformed("no signature lines"));
        }
        let signatures = lines
            .split('\n')
            .map(parse_signature_line)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            checkpoint: Checkpoint::parse(text)?,
            text: text.to_string(),
            signatures,
        })
    }

    /// Checks the signature of `key` (found by its name and id): the checkpoint is
    /// authentic if it verifies. Other signatures are ignored.
    pub fn verify(&self, key: &VerifierKey) -> Result<&Checkpoint, NoteError> {
        let named = format!("{}+{:08x}", key.name(), key.id());
        let mut by_key = self
            .signatures
            .iter()
            .filter(|s| s.name == key.name() && s.id == key.id())
            .peekable();
        if by_key.peek().is_none() {
            let found: Vec<String> = self
                .signatures
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.id))
                .collect();
            return Err(NoteError::NotSignedBy {
                key: named,
                found: found.join(", "),
            });
        }
        // Every signature by a known key must verify (a second, failing one is an
        // alteration too).
        for signature in by_key {
            let verified = <[u8; 64]>::try_from(signature.signature.as_slice())
                .is_ok_and(|sig| key.verifies(self.text.as_bytes(), &sig));
            if !verified {
                return Err(NoteError::BadSignature { key: named });
            }
        }
        Ok(&self.checkpoint)
    }
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, NoteError> {
    let malformed = |why: String| NoteError::Malformed(why);
    let rest = line.strip_prefix("\u{2014} ").ok_or_else(|| {
        malformed(format!(
            "signature line {line:?} does not start with an em dash and a space"
        ))
    })?;
    let (name, data) = rest
        .split_once(' ')
        .ok_or_else(|| malformed(format!("signature line {line:?} has no signature")))?;
    check_name(name).map_err(|e| malformed(e.to_string()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| malformed(format!("the signature of {name} is not base64: {e}")))?;
    let Some((id, signature)) = bytes.split_first_chunk::<4>() else {
        return Err(malformed(format!(
            "the signature of {name} is shorter than its key id"
        )));
    };
    Ok(NoteSignature {
        name: name.to_string(),
        id: u32::from_be_bytes(*id),
        signature: signature.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `sumdb/note` documentation signs this text with its example key: Ed25519 is
    /// deterministic, so the same signature line must come out, and verify.
    #[test]
    fn signatures_match_the_signed_note_reference() {
        let key = SigningKey::parse(
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        )
        .unwrap();
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        let mut signature = key.id().to_be_bytes().to_vec();
        signature.extend_from_slice(&key.sign(text.as_bytes()));
        assert_eq!(
            b64(&signature),
            "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        );
    }

    fn key(name: &str, seed: u8) -> SigningKey {
        SigningKey::from_seed(name, [seed; 32]).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "example.com/annal".into(),
            size: 3,
            root: [7; 32],
            time_ms: Some(1_700_000_000_000),
            extensions: vec![],
        }
    }

    #[test]
    fn a_signed_checkpoint_reads_back_and_verifies() {
        let key = key("example.com/annal", 1);
        let note = checkpoint().sign(&key);
        let read = SignedCheckpoint::parse(&note).unwrap();
        assert_eq!(read.checkpoint, checkpoint());
        assert_eq!(read.verify(&key.verifier()).unwrap(), &checkpoint());
        // A cosignature by another key is ignored, and can be checked on its own.
        let other = self::key("witness.example", 2);
        let mut cosigned = note.clone();
        cosigned.push_str(checkpoint().sign(&other).lines().last().unwrap());
        cosigned.push('\n');
        let read = SignedCheckpoint::parse(&cosigned).unwrap();
        assert!(read.verify(&key.verifier()).is_ok());
        assert!(read.verify(&other.verifier()).is_ok());
    }

    #[test]
    fn altered_notes_are_refused() {
        let key = key("example.com/annal", 1);
        let verifier = key.verifier();
        let note = checkpoint().sign(&key);
        let verify =
            |note: &str| SignedCheckpoint::parse(note).and_then(|n| n.verify(&verifier).cloned());
        // Any other size or root: the signature no longer verifies.
        let bigger = note.replacen("\n3\n", "\n4\n", 1);
        assert!(matches!(
            verify(&bigger),
            Err(NoteError::BadSignature { .. })
        ));
        let root = b64(&[7; 32]);
        let other_root = note.replacen(&root, &b64(&[8; 32]), 1);
        assert!(matches!(
            verify(&other_root),
            Err(NoteError::BadSignature { .. })
        ));
        // Another key, or a signature line for the right key with a flipped byte.
        let stranger = self::key("example.com/annal", 9).verifier();
        assert!(matches!(
            SignedCheckpoint::parse(&note).unwrap().verify(&stranger),
            Err(NoteError::NotSignedBy { .. })
        ));
        let sig_line = note.lines().last().unwrap();
        let data = sig_line.rsplit(' ').next().unwrap();
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        bytes[10] ^= 1;
        let flipped = note.replacen(data, &b64(&bytes), 1);
        assert!(matches!(
            verify(&flipped),
            Err(NoteError::BadSignature { .. })
        ));
        // Malformed notes.
        assert!(matches!(
            verify("no signatures\n"),
            Err(NoteError::Malformed(_))
        ));
        assert!(matches!(
            verify(&note.replace('\u{2014}', "-")),
            Err(NoteError::Malformed(_))
        ));
        assert!(matches!(
            verify(&note.replacen('\n', "\r\n", 1)),
            Err(NoteError::ControlCharacter(0x0d))
        ));
        assert!(matches!(
            verify(&note.replacen("\n3\n", "\n03\n", 1)),
            Err(NoteError::NotACheckpoint(_))
        ));
        assert!(matches!(
            verify(&note.replacen(&root, "AAAA", 1)),
            Err(NoteError::NotACheckpoint(_))
        ));
        assert!(matches!(
            verify(&note[..note.len() - 1]),
            Err(NoteError::Malformed(_))
        ));
        assert!(matches!(
            verify(&"x".repeat(NOTE_BYTES_MAX + 1)),
            Err(NoteError::TooLarge(_))
        ));
    }

    #[test]
    fn extension_lines_are_kept_and_signed() {
        let mut with = checkpoint();
        with.extensions.push("witnessed-by example.org".into());
        let key = key("example.com/annal", 1);
        let read = SignedCheckpoint::parse(&with.sign(&key)).unwrap();
        assert_eq!(read.verify(&key.verifier()).unwrap(), &with);
        let without_time = Checkpoint {
            time_ms: None,
            ..checkpoint()
        };
        assert_eq!(
            Checkpoint::parse(&without_time.text()).unwrap(),
            without_time
        );
    }
}
