//! Event encoding: serde + bincode 1.3.3, behind two functions so the codec can be swapped.
//!
//! Payload layout inside a storage frame: `[schema version u8][bincode(Event)]`. bincode runs
//! with explicit options (varint integers, little endian, a size limit, no trailing bytes) so
//! that arbitrary input is rejected with an error instead of a huge allocation or a panic.

use bincode::Options;

use crate::event::Event;

/// The event schema version this build writes. Older versions stay decodable forever.
pub const SCHEMA_V1: u8 = 1;

pub use crate::encoding::MAX_EVENT_BYTES;

use crate::encoding::options;

/// Why bytes did not decode into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload is empty.
    #[error("empty event payload")]
    Empty,
    /// The schema byte names a version this build cannot read.
    #[error("unknown event schema version {0}")]
    UnknownSchema(u8),
    /// bincode rejected the bytes.
    #[error("undecodable event: {0}")]
    Invalid(String),
}

/// Encodes an event (schema v1).
pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = vec![SCHEMA_V1];
    // Serialising our own plain data types into a Vec cannot fail short of the size limit,
    // which no event the engine builds reaches.
    options()
        .serialize_into(&mut out, event)
        .expect("event encodes");
    out
}

pub use crate::encoding::canonical_bytes;

/// Decodes an event; never panics on arbitrary input.
pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    let (&schema, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match schema {
        SCHEMA_V1 => options()
            .deserialize(body)
            .map_err(|e| CodecError::Invalid(e.to_string())),
        other => Err(CodecError::UnknownSchema(other)),
    }
}

/// The checkpoint format this build writes and reads. A checkpoint in any other format is
/// ignored and the fold rebuilt from the log, so bump it whenever a type the fold is made of
/// (`replay::ReplayState` and what it holds) changes shape. 2: step records no longer carry
/// their idempotency key (it is derived from run and position). 3: a decided gate keeps the
/// role it was decided under, and an approval record its editable fields. 4: budget use
/// counts attempts and cost per tool, and the fold keeps the latest run ceiling reached.
pub const CHECKPOINT_FORMAT: u8 = 4;

/// Upper bound on one encoded checkpoint; decoding refuses anything claiming more.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

fn checkpoint_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(MAX_CHECKPOINT_BYTES)
        .reject_trailing_bytes()
}

/// Encodes a fold as a checkpoint: `[format u8][bincode(ReplayState)]`.
pub fn encode_checkpoint(state: &crate::replay::ReplayState) -> Vec<u8> {
    let mut out = vec![CHECKPOINT_FORMAT];
    checkpoint_options()
        .serialize_into(&mut out, state)
        .expect("a fold encodes");
    out
}

/// Decodes a checkpoint; never panics on arbitrary input.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<crate::replay::ReplayState, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match format {
        CHECKPOINT_FORMAT => checkpoint_options()
            .deserialize(body)
            .map_err(|e| CodecError::Invalid(e.to_string())),
        other => Err(CodecError::UnknownSchema(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Payload};
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_rejections() {
        let event = Event {
            seq: 3,
            at_ms: 1_700_000_000_000,
            kind: EventKind::RunCompleted {
                output: Payload(b"{\"ok\":true}".to_vec()),
            },
        };
        let bytes = encode_event(&event);
        assert_eq!(decode_event(&bytes), Ok(event));
        assert_eq!(decode_event(&[]), Err(CodecError::Empty));
        assert_eq!(decode_event(&[9, 0]), Err(CodecError::UnknownSchema(9)));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode_event(&trailing),
            Err(CodecError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_event(&bytes);
        }
    }
}
