//! annal integration tests: one binary.
