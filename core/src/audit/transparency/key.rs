//! Ed25519 keys for signed notes, in the text forms of the C2SP signed-note ecosystem (the
//! same as Go's `golang.org/x/mod/sumdb/note`):
//!
//! ```text
//! private key   PRIVATE+KEY+<name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte seed)>
//! public key    <name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte public key)>
//! key id        first 4 bytes, big-endian, of SHA-256(name || 0x0A || 0x01 || public key)
//! ```
//!
//! `0x01` is the signed-note signature type of Ed25519. A name is non-empty and holds no
//! Unicode space and no `+`; a URL without scheme (`example.com/annal`) is recommended, and
//! checkpoints name the key in their origin line by default.

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use sha2::Digest as _;

use super::b64;

/// The signed-note signature type of Ed25519.
const ED25519: u8 = 0x01;

/// Why a key text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not of the form `[PRIVATE+KEY+]<name>+<id>+<base64>`.
    #[error("not a {expected} key: {why}")]
    Malformed {
        /// "private" or "public".
        expected: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The key name is empty or holds a space or a `+`.
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    BadName(String),
    /// The key data is not standard base64.
    #[error("the key data is not base64: {0}")]
    BadEncoding(String),
    /// The key data has the wrong length.
    #[error("the key data has {found} bytes; an Ed25519 key has {expected} (type byte and 32 key bytes)")]
    BadLength {
        /// Bytes an Ed25519 key has.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// The key is of a signature type other than Ed25519.
    #[error("signature type {0:#04x} is not supported (only Ed25519, 0x01)")]
    UnknownAlgorithm(u8),
    /// The key id in the text is not the one its name and key give.
    #[error("the key id {stated} does not match the key (its name and key give {computed}): altered or mistyped")]
    IdMismatch {
        /// The id written in the text.
        stated: String,
        /// The id the name and public key give.
        computed: String,
    },
    /// The public key is not a usable Ed25519 point (a weak or invalid key).
    #[error("the public key is not a valid Ed25519 key")]
    InvalidKey,
}

/// Checks a key name against the signed-note rules.
pub fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(KeyError::BadName(name.to_string()));
    }
    Ok(())
}

/// The key id of an Ed25519 public key under `name`.
pub fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut sha = sha2::Sha256::new();
    sha.update(name.as_bytes());
    sha.update([0x0a, ED25519]);
    sha.update(public);
    let digest = sha.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A signing key with its name. Its `Debug` shows the name and id only.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id()))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key whose 32-byte Ed25519 seed is `seed` (generating one is the caller's: this
    /// module draws no randomness).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Reads the private key text (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let malformed = |why: &str| KeyError::Malformed {
            expected: "private",
            why: why.to_string(),
        };
        let rest = text.strip_prefix("PRIVATE+KEY+").ok_or_else(|| {
            malformed(if parse_parts(text, "public").is_ok() {
                "this is a public key (a private key starts with PRIVATE+KEY+)"
            } else {
                "it does not start with PRIVATE+KEY+"
            })
        })?;
        let (name, id, data) = parse_parts(rest, "private")?;
        let key = Self::from_seed(name, key_bytes(&data)?)?;
        check_id(id, key.id())?;
        Ok(key)
    }

    /// The private key text: `PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>`.
    pub fn to_text(&self) -> String {
        format!(
            "PRIVATE+KEY+{}",
            key_text(&self.name, self.id(), self.key.as_bytes())
        )
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        key_id(&self.name, self.key.verifying_key().as_bytes())
    }

    /// The public half, for verifiers.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The Ed25519 signature of `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// A public key with its name: what an auditor holds.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl VerifierKey {
    /// Reads the public key text (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with("PRIVATE+KEY+") {
            return Err(KeyError::Malformed {
                expected: "public",
                why: "this is a private key; give the public key (the .pub file)".into(),
            });
        }
        let (name, id, data) = parse_parts(text, "public")?;
        check_name(name)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes(&data)?)
            .map_err(|_| KeyError::InvalidKey)?;
        if key.is_weak() {
            return Err(KeyError::InvalidKey);
        }
        let key = Self {
            name: name.to_string(),
            key,
        };
        check_id(id, key.id())?;
        Ok(key)
    }

    /// The public key text: `<name>+<id>+<base64(0x01 || public key)>`.
    pub fn to_text(&self) -> String {
        key_text(&self.name, self.id(), self.key.as_bytes())
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        key_id(&self.name, self.key.as_bytes())
    }

    /// Whether `signature` is this key's signature of `message` (strict verification: no
    /// malleable or small-order forms).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }
}

/// `<name>+<id>+<base64(0x01 || key)>`.
fn key_text(name: &str, id: u32, key: &[u8; 32]) -> String {
    let mut data = vec![ED25519];
    data.extend_from_slice(key);
    format!("{name}+{id:08x}+{}", b64(&data))
}

/// Splits `<name>+<id>+<base64>` into its parts, the data decoded.
fn parse_parts<'t>(
    text: &'t str,
    expected: &'static str,
) -> Result<(&'t str, &'t str, Vec<u8>), KeyError> {
    let malformed = |why: &str| KeyError::Malformed {
        expected,
        why: why.to_string(),
    };
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("expected <name>+<key id>+<key data>"));
    };
    check_name(name)?;
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("the key id is not 8 hex digits"));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| KeyError::BadEncoding(e.to_string()))?;
    Ok((name, id, data))
}

/// The 32 key bytes of `0x01 || key`.
fn key_bytes(data: &[u8]) -> Result<[u8; 32], KeyError> {
    match data.split_first() {
        Some((&ED25519, key)) => <[u8; 32]>::try_from(key).map_err(|_| KeyError::BadLength {
            expected: 33,
            found: data.len(),
        }),
        Some((&other, _)) => Err(KeyError::UnknownAlgorithm(other)),
        None => Err(KeyError::BadLength {
            expected: 33,
            found: 0,
        }),
    }
}

fn check_id(stated: &str, computed: u32) -> Result<(), KeyError> {
    let computed = format!("{computed:08x}");
    if !stated.eq_ignore_ascii_case(&computed) {
        return Err(KeyError::IdMismatch {
            stated: stated.to_string(),
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key pair of Go's `golang.org/x/mod/sumdb/note` documentation: the same
    /// text forms read the same keys.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn keys_read_and_write_the_signed_note_text_forms() {
        let key = SigningKey::parse(GO_SKEY).unwrap();
        assert_eq!(key.name(), "PeterNeumann");
        assert_eq!(key.id(), 0xc74f20a3);
        assert_eq!(key.to_text(), GO_SKEY);
        assert_eq!(key.verifier().to_text(), GO_VKEY);
        assert_eq!(
            VerifierKey::parse(&format!("  {GO_VKEY}\n")).unwrap(),
            key.verifier()
        );
        assert!(
            !format!("{key:?}").contains("AYEK"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn bad_key_texts_get_typed_errors() {
        let public = |t: &str| VerifierKey::parse(t).unwrap_err();
        let private = |t: &str| SigningKey::parse(t).unwrap_err();
        assert!(matches!(
            public(GO_SKEY),
            KeyError::Malformed {
                expected: "public",
                ..
            }
        ));
        assert!(matches!(
            private(GO_VKEY),
            KeyError::Malformed {
                expected: "private",
                ..
            }
        ));
        assert!(matches!(
            public("PeterNeumann+c74f20a3"),
            KeyError::Malformed { .. }
        ));
        assert!(matches!(
            public("PeterNeumann+c74f20+AAAA"),
            KeyError::Malformed { .. }
        ));
        assert!(matches!(
            public("Peter Neumann+c74f20a3+AAAA"),
            KeyError::BadName(_)
        ));
        assert!(matches!(
            public("PeterNeumann+c74f20a3+not*base64"),
            KeyError::BadEncoding(_)
        ));
        // A byte short, a byte long, no bytes, another signature type.
        assert!(matches!(
            public("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10Q="),
            KeyError::BadLength {
                expected: 33,
                found: 32
            }
        ));
        assert!(matches!(
            public("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWAA=="),
            KeyError::BadLength {
                expected: 33,
                found: 34
            }
        ));
        assert!(matches!(
            public("PeterNeumann+c74f20a3+"),
            KeyError::BadLength { found: 0, .. }
        ));
        assert!(matches!(
            public("PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            KeyError::UnknownAlgorithm(2)
        ));
        // Another id, another name with the same id: the id no longer matches.
        assert!(matches!(
            public("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            KeyError::IdMismatch { .. }
        ));
        assert!(matches!(
            private("PRIVATE+KEY+Peter+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"),
            KeyError::IdMismatch { .. }
        ));
        // The identity point is a weak key.
        let weak = format!(
            "w+{:08x}+{}",
            key_id("w", &identity()),
            b64(&[&[1u8][..], &identity()].concat())
        );
        assert_eq!(public(&weak), KeyError::InvalidKey);
    }

    fn identity() -> [u8; 32] {
        let mut point = [0u8; 32];
        point[0] = 1;
        point
    }
}
