//! The bodies of annal's fuzz targets, one function per target.
//!
//! Each body takes arbitrary bytes and must return normally: damaged or hostile input is
//! reported as a typed error by the code under test, never as a panic or a hang. The bodies
//! use only `annal`, `annal-storage` and `tokio`, so the integration tests include this file
//! (`tests/it/props.rs`) and run every body over thousands of inputs on stable Rust, without
//! libFuzzer.

use std::time::Duration;

use annal::codec::{decode_event, encode_event};
use annal::replay::ReplayState;
use annal::testing::program::register_program;
use annal::testing::{Replayer, Tools};
use annal::{Engine, EngineBuilder, Event};
use annal_storage::frame;

/// Most events `replay_history` replays; longer inputs are cut, so one input stays fast.
pub const MAX_EVENTS: usize = 256;

/// `frame::decode` on arbitrary bytes: a typed `FrameError`, or a payload whose frame is
/// exactly the input (decoding accepts only what encoding produces).
pub fn frame_decode(data: &[u8]) {
    if let Ok(payload) = frame::decode(data) {
        assert_eq!(
            frame::encode(payload),
            data,
            "a frame that decodes re-encodes to itself"
        );
    }
}

/// `codec::decode_event` on arbitrary bytes: a typed `CodecError`, or an event that
/// survives an encode/decode round trip and whose JSON export does not panic.
pub fn event_decode(data: &[u8]) {
    if let Ok(event) = decode_event(data) {
        let again = decode_event(&encode_event(&event));
        assert_eq!(again.as_ref(), Ok(&event), "a decoded event round-trips");
        // Payloads that are not JSON make the export fail, with an error.
        let _ = serde_json::to_string(&event);
        let _ = (
            event.kind.name(),
            event.kind.command_position(),
            event.kind.is_terminal(),
        );
    }
}

/// Splits `data` into events: after one flags byte, a sequence of `[len: u16 LE][len bytes]`
/// chunks, each decoded with `codec::decode_event`. Stops at the first chunk that does not
/// decode (or at [`MAX_EVENTS`]). Flag bit 0 renumbers the events' seqs 0, 1, 2, … so the
/// fuzzer need not guess them.
pub fn split_events(data: &[u8]) -> Vec<Event> {
    let Some((&flags, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut events = Vec::new();
    while events.len() < MAX_EVENTS {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len));
        let Some((chunk, tail)) = tail.split_at_checked(len) else {
            break;
        };
        let Ok(mut event) = decode_event(chunk) else {
            break;
        };
        if flags & 1 == 1 {
            event.seq = events.len() as u64;
        }
        events.push(event);
        rest = tail;
    }
    events
}

/// The inverse of [`split_events`] (flags 0): what a history looks like to that target.
pub fn join_events(events: &[Event]) -> Vec<u8> {
    let mut out = vec![0u8];
    for event in events {
        let bytes = encode_event(event);
        let Ok(len) = u16::try_from(bytes.len()) else {
            break;
        };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Arbitrary bytes as a history ([`split_events`]); if it folds
/// (`ReplayState::from_events`), replay it against the program interpreter.
pub fn replay_history(data: &[u8]) {
    let events = split_events(data);
    if events.is_empty() {
        return;
    }
    let _ = replay_events(&events);
}

/// Folds `events` and, if they are a consistent history, replays them with
/// `annal::testing::Replayer` against the program interpreter (`annal::testing::program`),
/// in a current-thread runtime with paused time. Returns the replayer's typed result, or
/// `None` when the history does not fold. Panics only if the replay hangs.
pub fn replay_events(events: &[Event]) -> Option<Result<(), annal::Error>> {
    replay_events_with(
        || register_program(Engine::builder(), &Tools::new()),
        events,
    )
}

/// [`replay_events`] against the workflows `code` registers.
pub fn replay_events_with(
    code: impl FnOnce() -> EngineBuilder,
    events: &[Event],
) -> Option<Result<(), annal::Error>> {
    let state = ReplayState::from_events(events).ok()?;
    let _ = annal::replay::escalation_context(
        &state,
        annal::RunId([0; 16]),
        state.commands().next().map(|(p, _)| p),
        "fuzz",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    Some(runtime.block_on(async {
        let replayer = Replayer::new(code());
        // Virtual time: a replay that waits on nothing runs out this year at once.
        match tokio::time::timeout(
            Duration::from_secs(365 * 24 * 3600),
            replayer.replay(events),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => panic!("replay did not settle: {events:?}"),
        }
    }))
}
