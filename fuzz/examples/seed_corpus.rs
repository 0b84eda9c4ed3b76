//! Writes a seed corpus for the fuzz targets from the stored histories in `tests/histories`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`. Starting from real
//! frames, events and histories, libFuzzer reaches deep replay paths in seconds instead of
//! hours.

use std::path::Path;

use annal::Event;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let histories = root.join("../tests/histories");
    let corpus = root.join("corpus");
    for target in ["frame_decode", "event_decode", "replay_history"] {
        std::fs::create_dir_all(corpus.join(target)).expect("create corpus directory");
    }
    let mut files: Vec<_> = std::fs::read_dir(&histories)
        .expect("tests/histories exists")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut written = 0;
    for path in files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("history")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read history");
        let events: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event per line"))
            .collect();
        std::fs::write(
            corpus.join("replay_history").join(&name),
            annal_fuzz::join_events(&events),
        )
        .expect("write seed");
        for (i, event) in events.iter().enumerate() {
            let encoded = annal::codec::encode_event(event);
            std::fs::write(
                corpus.join("event_decode").join(format!("{name}-{i}")),
                &encoded,
            )
            .expect("write seed");
            let framed = annal_storage::frame::encode(&encoded);
            std::fs::write(
                corpus.join("frame_decode").join(format!("{name}-{i}")),
                framed,
            )
            .expect("write seed");
            written += 2;
        }
        written += 1;
    }
    println!("wrote {written} seeds under {}", corpus.display());
}
