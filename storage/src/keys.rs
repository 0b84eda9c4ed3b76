//! Key layout of the single keyspace. The first byte names the keyspace; every integer is
//! big-endian so that the byte order of keys is the numeric order of their fields, and a
//! prefix scan returns events by sequence and timers by due time.
//!
//! | key                                   | value                    |
//! |---------------------------------------|--------------------------|
//! | `E` run(16) seq(u64)                  | framed event payload     |
//! | `R` run(16)                           | framed [`crate::RunMeta`]|
//! | `S` status(u8) run(16)                | empty (status < 10 only) |
//! | `T` fire_at_ms(u64) run(16) id(u32)   | empty                    |
//! | `D` dedupe key bytes                  | run(16)                  |
//! | `A` gate(16)                          | run(16) step(u32)        |
//! | `C` run(16)                           | framed fold checkpoint   |
//! | `H` index(u64)                        | framed tree head         |

use crate::{GateId, RunId};

/// Keyspace tag of event records.
pub const EVENT: u8 = b'E';
/// Keyspace tag of run metadata.
pub const META: u8 = b'R';
/// Keyspace tag of the status index.
pub const STATUS: u8 = b'S';
/// Keyspace tag of the due-time index.
pub const TIMER: u8 = b'T';
/// Keyspace tag of start dedupe keys.
pub const DEDUPE: u8 = b'D';
/// Keyspace tag of approval gates.
pub const GATE: u8 = b'A';
/// Keyspace tag of fold checkpoints (the engine's, opaque to storage).
pub const CHECKPOINT: u8 = b'C';
/// Keyspace tag of tree heads (store-wide checkpoints of history; the engine's, opaque to
/// storage).
pub const TREE_HEAD: u8 = b'H';

/// `H index`.
pub fn tree_head(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(TREE_HEAD);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The index of a tree head key; `None` if it is not one.
pub fn parse_tree_head(key: &[u8]) -> Option<u64> {
    if key.len() != 9 || key[0] != TREE_HEAD {
        return None;
    }
    Some(u64::from_be_bytes(key[1..9].try_into().ok()?))
}

/// `E run seq`.
pub fn event(run: RunId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(EVENT);
    k.extend_from_slice(&run.0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `E run`: the prefix of all events of one run.
pub fn event_prefix(run: RunId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(EVENT);
    k.extend_from_slice(&run.0);
    k
}

/// Splits an event key into run and seq; `None` if it is not one.
pub fn parse_event(key: &[u8]) -> Option<(RunId, u64)> {
    if key.len() != 25 || key[0] != EVENT {
        return None;
    }
    let run = RunId(key[1..17].try_into().ok()?);
    let seq = u64::from_be_bytes(key[17..25].try_into().ok()?);
    Some((run, seq))
}

/// `R run`.
pub fn meta(run: RunId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(META);
    k.extend_from_slice(&run.0);
    k
}

/// Run id of a meta key; `None` if it is not one.
pub fn parse_meta(key: &[u8]) -> Option<RunId> {
    if key.len() != 17 || key[0] != META {
        return None;
    }
    Some(RunId(key[1..17].try_into().ok()?))
}

/// `S status run`.
pub fn status(status: u8, run: RunId) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.push(STATUS);
    k.push(status);
    k.extend_from_slice(&run.0);
    k
}

/// The lowest status code of a run that can never change again (the engine's `Completed`,
/// `Failed`, …). Such statuses are not indexed: nothing needs to find finished runs quickly,
/// and an entry per finished run would cost every run one more write at its end and a key
/// for as long as it is kept. A run's metadata still holds its status.
pub const FINAL_STATUS_MIN: u8 = 10;

/// Whether runs in `status` are listed in the status index (every status below
/// [`FINAL_STATUS_MIN`]).
pub fn status_is_indexed(status: u8) -> bool {
    status < FINAL_STATUS_MIN
}

/// `S status`: the prefix of all runs in one status.
pub fn status_prefix(status: u8) -> Vec<u8> {
    vec![STATUS, status]
}

/// Run id of a status key; `None` if it is not one.
pub fn parse_status(key: &[u8]) -> Option<(u8, RunId)> {
    if key.len() != 18 || key[0] != STATUS {
        return None;
    }
    Some((key[1], RunId(key[2..18].try_into().ok()?)))
}

/// `T fire_at_ms run id`.
pub fn timer(fire_at_ms: u64, run: RunId, id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(29);
    k.push(TIMER);
    k.extend_from_slice(&fire_at_ms.to_be_bytes());
    k.extend_from_slice(&run.0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Fields of a timer key; `None` if it is not one.
pub fn parse_timer(key: &[u8]) -> Option<crate::TimerEntry> {
    if key.len() != 29 || key[0] != TIMER {
        return None;
    }
    Some(crate::TimerEntry {
        fire_at_ms: u64::from_be_bytes(key[1..9].try_into().ok()?),
        run: RunId(key[9..25].try_into().ok()?),
        id: u32::from_be_bytes(key[25..29].try_into().ok()?),
    })
}

/// `D key`. Dedupe keys are stored verbatim (not hashed), so two keys can never collide.
pub fn dedupe(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(DEDUPE);
    k.extend_from_slice(key);
    k
}

/// `C run`.
pub fn checkpoint(run: RunId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(CHECKPOINT);
    k.extend_from_slice(&run.0);
    k
}

/// `A gate`.
pub fn gate(gate: GateId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(GATE);
    k.extend_from_slice(&gate.0);
    k
}

/// Gate id of a gate key; `None` if it is not one.
pub fn parse_gate(key: &[u8]) -> Option<GateId> {
    if key.len() != 17 || key[0] != GATE {
        return None;
    }
    Some(GateId(key[1..17].try_into().ok()?))
}

/// Value of a gate entry: run(16) step(u32 BE).
pub fn gate_value(run: RunId, step: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&run.0);
    v.extend_from_slice(&step.to_be_bytes());
    v
}

/// Decodes a gate value; `None` if malformed.
pub fn parse_gate_value(value: &[u8]) -> Option<(RunId, u32)> {
    if value.len() != 20 {
        return None;
    }
    Some((
        RunId(value[..16].try_into().ok()?),
        u32::from_be_bytes(value[16..20].try_into().ok()?),
    ))
}

/// Decodes a dedupe value (a run id); `None` if malformed.
pub fn parse_run_value(value: &[u8]) -> Option<RunId> {
    Some(RunId(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn event_keys_sort_by_seq(a in any::<u64>(), b in any::<u64>(), run in any::<[u8; 16]>()) {
            let run = RunId(run);
            prop_assert_eq!(a.cmp(&b), event(run, a).cmp(&event(run, b)));
            prop_assert_eq!(parse_event(&event(run, a)), Some((run, a)));
        }

        #[test]
        fn timer_keys_sort_by_due_time(a in any::<u64>(), b in any::<u64>(), r1 in any::<[u8; 16]>(), r2 in any::<[u8; 16]>()) {
            prop_assume!(a != b);
            prop_assert_eq!(a.cmp(&b), timer(a, RunId(r1), 1).cmp(&timer(b, RunId(r2), 0)));
            let parsed = parse_timer(&timer(a, RunId(r1), 9)).unwrap();
            prop_assert_eq!((parsed.fire_at_ms, parsed.run, parsed.id), (a, RunId(r1), 9));
        }
    }
}
