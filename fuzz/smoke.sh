#!/usr/bin/env bash
# Runs every fuzz target briefly. With cargo-fuzz installed: FUZZ_RUNS (default 20000)
# coverage-guided libFuzzer executions per target, seeded from tests/histories, on the stable
# toolchain (-s none; set FUZZ_SANITIZER=address on nightly). Without it: builds the targets
# and runs the same target bodies as the stable proptest loops of the integration tests.
set -euo pipefail
cd "$(dirname "$0")"

runs="${FUZZ_RUNS:-20000}"
if cargo fuzz --version > /dev/null 2>&1; then
  cargo run --quiet --manifest-path Cargo.toml --example seed_corpus
  for target in frame_decode event_decode replay_history; do
    echo "== fuzz $target ($runs runs)"
    cargo fuzz run -s "${FUZZ_SANITIZER:-none}" "$target" -- -runs="$runs" -rss_limit_mb=4096 2>&1 | tail -n 2
  done
else
  echo "cargo-fuzz is not installed (cargo install cargo-fuzz); running the stable loops instead"
  cargo build --quiet --manifest-path Cargo.toml
  (cd .. && cargo test --quiet -p annal-tests --test it props::fuzz_)
fi
echo "== fuzz smoke ok"
