//! Generated workflow programs for property tests (being written).
