//! Sensitive values in history: [`Secret<T>`] is recorded as a keyed hash, never in clear.
//!
//! History is kept for years and read by auditors, exported as JSON Lines, copied for
//! debugging. A card number, an API token or a password that a step returns must therefore
//! never reach the log. Wrap it in a [`Secret`]: whenever it is serialised (a step output, a
//! workflow input or output, a signal payload) it becomes
//!
//! ```json
//! {"$secret": "<64 hex digits: BLAKE3 keyed hash of the value's JSON>"}
//! ```
//!
//! and `Debug`/`Display` print `Secret(<redacted>)`, so it does not leak through logs either.
//!
//! # What a workflow sees
//!
//! Whatever comes back through history carries only the reference, and [`Secret::expose`]
//! gives `None`: a step's output (the engine hands step outputs back in their recorded form,
//! live and on replay alike, so a workflow behaves the same either way), a workflow's input,
//! a signal's payload. Use the clear value inside the step body that needs it (fetch it from
//! the vault there); returning a `Secret` from a step records which value was used without
//! recording the value.
//!
//! # The key
//!
//! The hash is keyed so that whoever reads the database cannot test guesses (a 16-digit card
//! number is easy to enumerate) without also holding the key. Set the key once per process,
//! before the first secret is serialised, with [`set_key`]. References stay comparable across
//! runs and processes that share a key ("was the same card used twice?"), and whoever holds
//! the key can check a candidate value with [`reference_of`].
//!
//! **Production must set its own key.** Without one, the public [`DEVELOPMENT_KEY`] is used
//! (and a warning is logged once); references made with it protect nothing against someone
//! who can guess the value.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The key used when [`set_key`] was not called: public, written in this source file, fit
/// for tests and demos only.
pub const DEVELOPMENT_KEY: [u8; 32] = *b"annal-development-key-NOT-SECRET";

/// The field name of a recorded secret reference in JSON.
pub const SECRET_FIELD: &str = "$secret";

/// What readers (the CLI, timelines) show in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The process-wide key, fixed at first use.
static KEY: OnceLock<[u8; 32]> = OnceLock::new();

/// [`set_key`] was called after a different key was already in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the secret key is already fixed (set earlier, or the development key was used by a secret \
     serialised before set_key): call annal::secret::set_key once, at startup"
)]
pub struct KeyAlreadySet;

/// Sets the process-wide key for secret references. Call it once at startup, before any
/// [`Secret`] is serialised.
///
/// Setting the same key again is allowed. A different key after the first one (or after the
/// development key was used) is refused: references made with two keys could no longer be
/// compared.
pub fn set_key(key: [u8; 32]) -> Result<(), KeyAlreadySet> {
    let stored = KEY.get_or_init(|| key);
    if *stored == key {
        Ok(())
    } else {
        Err(KeyAlreadySet)
    }
}

/// Whether references in this process are made with the public [`DEVELOPMENT_KEY`] (because
/// [`set_key`] was not called in time). A service can refuse to start in production if so.
pub fn using_development_key() -> bool {
    *key() == DEVELOPMENT_KEY
}

fn key() -> &'static [u8; 32] {
    KEY.get_or_init(|| {
        tracing::warn!(
            "annal::secret: no key set, secrets are hashed with the public development key; \
             call annal::secret::set_key in production"
        );
        DEVELOPMENT_KEY
    })
}

/// The reference a [`Secret`] holding `value` is recorded as: the BLAKE3 keyed hash of the
/// value's JSON, in lower-case hex. Lets a key holder check a candidate value against history.
pub fn reference_of<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    reference_with(key(), value)
}

fn reference_with<T: Serialize + ?Sized>(
    key: &[u8; 32],
    value: &T,
) -> Result<String, serde_json::Error> {
    // JSON, because that is how the value would otherwise have been recorded: the same
    // value gives the same reference whatever Rust type carried it.
    let bytes = serde_json::to_vec(value)?;
    Ok(blake3::keyed_hash(key, &bytes).to_hex().to_string())
}

/// Whether `s` has the shape of a reference: 64 lower-case hex digits.
fn is_reference(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A sensitive value that history records only as a keyed hash (see the module docs).
pub struct Secret<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    /// Created in this process: the value is here.
    Live(T),
    /// Decoded from history: only the reference survived.
    Redacted(String),
}

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self {
            inner: Inner::Live(value),
        }
    }

    /// The value, if this secret was created here with [`Secret::new`]; `None` if it was
    /// decoded from its recorded form, which never held the value.
    pub fn expose(&self) -> Option<&T> {
        match &self.inner {
            Inner::Live(value) => Some(value),
            Inner::Redacted(_) => None,
        }
    }

    /// The value, as [`expose`](Self::expose) but by value.
    pub fn into_exposed(self) -> Option<T> {
        match self.inner {
            Inner::Live(value) => Some(value),
            Inner::Redacted(_) => None,
        }
    }

    /// True when only the reference is left (decoded from history).
    pub fn is_redacted(&self) -> bool {
        matches!(self.inner, Inner::Redacted(_))
    }

    /// The reference this secret is recorded as.
    pub fn reference(&self) -> Result<String, serde_json::Error>
    where
        T: Serialize,
    {
        match &self.inner {
            Inner::Live(value) => reference_of(value),
            Inner::Redacted(reference) => Ok(reference.clone()),
        }
    }
}

impl<T: Clone> Clone for Secret<T> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            Inner::Live(value) => Inner::Live(value.clone()),
            Inner::Redacted(reference) => Inner::Redacted(reference.clone()),
        };
        Self { inner }
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<T> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a secret is written: a struct with one field, so that self-describing formats show
/// `{"$secret": "…"}` and bincode a plain string, and both decode with the same derive.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Secret", deny_unknown_fields)]
struct Wire {
    #[serde(rename = "$secret")]
    reference: String,
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let reference = self.reference().map_err(serde::ser::Error::custom)?;
        Wire { reference }.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        if !is_reference(&wire.reference) {
            return Err(serde::de::Error::custom(
                "a secret reference is 64 lower-case hex digits",
            ));
        }
        Ok(Self {
            inner: Inner::Redacted(wire.reference),
        })
    }
}

/// Whether a JSON value is a recorded secret: `{"$secret": "<reference>"}`.
pub fn is_secret_json(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            map.len() == 1
                && map
                    .get(SECRET_FIELD)
                    .and_then(|v| v.as_str())
                    .is_some_and(is_reference)
        }
        _ => false,
    }
}

/// Replaces every recorded secret inside a JSON value with the string `"<redacted>"`, for
/// display. (The reference is no leak, but it is noise to a reader.)
pub fn redact_json(value: &mut serde_json::Value) {
    if is_secret_json(value) {
        *value = serde_json::Value::String(REDACTED.to_string());
        return;
    }
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Card {
        holder: String,
        number: Secret<String>,
    }

    #[test]
    fn serialises_as_a_reference_never_the_value() {
        let card = Card {
            holder: "Ada".into(),
            number: Secret::new("4111-1111-1111-1111".into()),
        };
        let json = serde_json::to_string(&card).unwrap();
        assert!(!json.contains("4111"), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let reference = value["number"][SECRET_FIELD].as_str().unwrap();
        assert!(is_reference(reference), "{reference}");
        assert_eq!(reference, reference_of("4111-1111-1111-1111").unwrap());
        assert!(is_secret_json(&value["number"]));
    }

    #[test]
    fn decoding_keeps_the_reference_and_loses_the_value() {
        let live = Secret::new(String::from("hunter2"));
        assert_eq!(live.expose().map(String::as_str), Some("hunter2"));
        let json = serde_json::to_string(&live).unwrap();
        let decoded: Secret<String> = serde_json::from_str(&json).unwrap();
        assert!(decoded.is_redacted());
        assert_eq!(decoded.expose(), None);
        // Re-recording a decoded secret (replay, continue-as-new) yields the same reference.
        assert_eq!(serde_json::to_string(&decoded).unwrap(), json);
        // bincode (the log's own format) round-trips the same way.
        let bytes = bincode::serialize(&live).unwrap();
        let decoded: Secret<String> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(decoded.reference().unwrap(), live.reference().unwrap());
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            r#"{"$secret": "abc"}"#,
            r#"{"$secret": 7}"#,
            r#"{"$secret": "0000000000000000000000000000000000000000000000000000000000000000", "x": 1}"#,
            r#""hunter2""#,
        ] {
            assert!(
                serde_json::from_str::<Secret<String>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s}"), "Secret(<redacted>)");
        let card = Card {
            holder: "Ada".into(),
            number: Secret::new("4111".into()),
        };
        assert!(!format!("{card:?}").contains("4111"));
    }

    #[test]
    fn references_depend_on_value_and_key() {
        let a = reference_with(&DEVELOPMENT_KEY, "a").unwrap();
        assert_eq!(a, reference_with(&DEVELOPMENT_KEY, "a").unwrap());
        assert_ne!(a, reference_with(&DEVELOPMENT_KEY, "b").unwrap());
        assert_ne!(a, reference_with(&[7; 32], "a").unwrap());
    }

    #[test]
    fn the_key_is_fixed_once() {
        // Tests in this process never set another key, so the development key is in force.
        assert_eq!(set_key(DEVELOPMENT_KEY), Ok(()));
        assert_eq!(set_key([7; 32]), Err(KeyAlreadySet));
        assert!(using_development_key());
    }

    #[test]
    fn redaction_for_display_reaches_nested_values() {
        let mut value = serde_json::json!({
            "cards": [Secret::new("4111"), Secret::new("5500")],
            "meta": {"token": Secret::new("t0k3n"), "plain": {"$secret": "not-a-reference"}},
        });
        redact_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "cards": [REDACTED, REDACTED],
                "meta": {"token": REDACTED, "plain": {"$secret": "not-a-reference"}},
            })
        );
    }
}
